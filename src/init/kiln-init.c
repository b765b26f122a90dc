/*
 * kiln-init: PID 1 inside every sandbox.
 *
 *   kiln-init [--] CMD [ARGS...]     one command (by hand, and the old mode)
 *   kiln-init --control              started by the sandbox library
 *
 * One command: starts CMD as its child, forwards the signals a supervisor
 * sends (TERM, INT, HUP, QUIT, USR1, USR2, CONT), reaps every orphan that is
 * re-parented to it, and exits with CMD's status: its exit code, or 128 +
 * the signal that killed it. Invariant: it never exits while CMD is alive.
 *
 * --control: speaks src/sandbox/init-proto.h on fd 3. It says READY, then
 * starts one process per EXEC request (each in its own session, with the
 * stdio fds that came with the request, the requested uid/gid, cwd and
 * environment), sends STARTED with a pidfd, and EXITED with the wait status
 * and rusage when it ends; it kills a process group whose timeout passes,
 * forwards signals sent to it to every process group it started, and reaps
 * orphans. EOF on fd 3 (the parent is gone, or destroys the sandbox): it
 * SIGKILLs every process of the pid namespace and exits 0.
 *
 * Security: PR_SET_DUMPABLE 0 first thing, so processes of the sandbox
 * (same uid) can neither ptrace it nor open /proc/1/fd or /proc/1/exe; its
 * fds are CLOEXEC, and every started process gets only 0/1/2 (close_range
 * before exec) and a cwd verified to be inside the root (CVE-2024-21626).
 *
 * Linked statically (it runs in any rootfs), no sanitizers.
 */
#include "sandbox/init-proto.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT};

static void fail(const char *what, int err)
{
	char msg[256];
	int n = snprintf(msg, sizeof(msg), "kiln-init: %s: %s\n", what, strerror(err));
	if (n > 0)
		(void)!write(STDERR_FILENO, msg, (size_t)n);
}

static int one_command(int argc, char **argv, int first)
{
	sigset_t all, old;
	sigemptyset(&all);
	for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++)
		sigaddset(&all, forwarded[i]);
	sigaddset(&all, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &all, &old) < 0) {
		fail("sigprocmask", errno);
		return 127;
	}
	/* Outside a pid namespace (tests), still adopt orphans. */
	if (getpid() != 1)
		(void)prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

	pid_t child = fork();
	if (child < 0) {
		fail("fork", errno);
		return 127;
	}
	if (child == 0) {
		sigprocmask(SIG_SETMASK, &old, NULL);
		execvp(argv[first], argv + first);
		int e = errno;
		fail(argv[first], e);
		_exit(e == ENOENT ? 127 : 126);
	}
	(void)argc;

	int status = 0;
	for (;;) {
		siginfo_t si;
		if (sigwaitinfo(&all, &si) < 0) {
			if (errno == EINTR)
				continue;
			fail("sigwaitinfo", errno);
			return 127;
		}
		if (si.si_signo != SIGCHLD) {
			kill(child, si.si_signo);
			continue;
		}
		/* Reap everything that has exited; note the main child's status. */
		for (;;) {
			int st;
			pid_t p = waitpid(-1, &st, WNOHANG);
			if (p <= 0)
				break;
			if (p == child) {
				status = st;
				child = -1;
			}
		}
		if (child == -1)
			break;
	}
	/* Orphans still running are killed with the sandbox's cgroup by the caller. */
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return 127;
}

/* ---- control mode --------------------------------------------------------- */

struct proc {
	pid_t pid; /* 0: free slot */
	int sock;  /* -1 once the parent dropped its handle */
	uint64_t start_ns, deadline_ns;
	bool timed_out;
	bool sole; /* KILN_INIT_SOLE */
};

static struct proc procs[KILN_INIT_MAX_PROCS];
static unsigned char msgbuf[KILN_INIT_MAX_MSG];
static char *argvbuf[KILN_INIT_MAX_MSG / 2 + 2];

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void send_msg(int sock, const void *m, size_t len, int fd)
{
	if (sock < 0)
		return;
	struct iovec iov = {.iov_base = (void *)(uintptr_t)m, .iov_len = len};
	char cbuf[CMSG_SPACE(sizeof(int))];
	memset(cbuf, 0, sizeof(cbuf));
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (fd >= 0) {
		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	while (sendmsg(sock, &mh, MSG_NOSIGNAL) < 0 && errno == EINTR)
		;
}

static void send_failed(int sock, int err, uint32_t step)
{
	struct kiln_init_failed f = {.type = KILN_INIT_FAILED, .err = err, .step = step};
	send_msg(sock, &f, sizeof(f), -1);
}

/* execvpe() searches the PATH of kiln-init's own environment; this searches
 * the PATH the request carries. */
static void exec_path(char **argv, char **envp)
{
	const char *file = argv[0];
	if (strchr(file, '/')) {
		execve(file, argv, envp);
		return;
	}
	const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	for (char **e = envp; *e; e++)
		if (strncmp(*e, "PATH=", 5) == 0)
			path = *e + 5;
	int saved = ENOENT;
	size_t fl = strlen(file);
	for (const char *p = path;;) {
		const char *c = strchr(p, ':');
		size_t dl = c ? (size_t)(c - p) : strlen(p);
		char full[4096];
		if (dl + 1 + fl + 1 <= sizeof(full)) {
			/* An empty PATH entry is the current directory. */
			snprintf(full, sizeof(full), "%.*s%s%s", (int)dl, p, dl ? "/" : "", file);
			execve(full, argv, envp);
			if (errno == EACCES)
				saved = EACCES;
			else if (errno != ENOENT && errno != ENOTDIR)
				saved = errno;
		}
		if (!c)
			break;
		p = c + 1;
	}
	errno = saved;
}

struct child_fail {
	int32_t err;
	uint32_t step;
};

/* What a starting process gets, and where it reports failure. */
struct spawn {
	const struct kiln_init_exec *req;
	char **argv, **envp;
	const char *cwd;
	const int *stdio;
	const sigset_t *mask;
	struct child_fail fail; /* written by the child before it exits */
};

/*
 * In the new process (CLONE_VM | CLONE_VFORK, as posix_spawn does: no copy
 * of our page tables, no copy-on-write faults afterwards, and we sleep
 * until it has exec'd or exited, so sharing our memory is safe): set up
 * and exec; on failure record why in sp->fail and exit.
 */
static int start_child(void *arg)
{
	struct spawn *sp = arg;
	const struct kiln_init_exec *req = sp->req;
	const int *stdio = sp->stdio;
	const char *cwd = sp->cwd;
	struct child_fail f = {0, 0};
	sigprocmask(SIG_SETMASK, sp->mask, NULL);
	setsid();
	for (int i = 0; i < 3; i++) {
		int fd = stdio[i];
		if (fd < 0)
			fd = open("/dev/null", i == 0 ? O_RDONLY : O_WRONLY);
		if (fd < 0 || dup2(fd, i) < 0) {
			f = (struct child_fail){errno, KILN_INIT_STEP_STDIO};
			goto out;
		}
	}
	if (req->uid != 0 || req->gid != 0) {
		/* Raw system calls: libc's set*id functions synchronise every
		 * thread of the process, and this one shares our memory. */
		gid_t g = req->gid;
		if ((syscall(SYS_setgroups, 1, &g) < 0 && errno != EPERM) ||
		    syscall(SYS_setresgid, g, g, g) < 0 ||
		    syscall(SYS_setresuid, req->uid, req->uid, req->uid) < 0) {
			f = (struct child_fail){errno, KILN_INIT_STEP_USER};
			goto out;
		}
	}
	if (chdir(cwd) < 0) {
		f = (struct child_fail){errno, KILN_INIT_STEP_CWD};
		goto out;
	}
	/* CVE-2024-21626: a cwd outside the root reads "(unreachable)/..." or fails. */
	char real[4096];
	if (!getcwd(real, sizeof(real)) || real[0] != '/') {
		f = (struct child_fail){EPERM, KILN_INIT_STEP_CWD};
		goto out;
	}
	/* Only 0, 1, 2 survive exec. */
	if (syscall(SYS_close_range, 3, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */) < 0) {
		for (int fd = 3; fd < 65536; fd++)
			close(fd);
	}
	exec_path(sp->argv, sp->envp);
	f = (struct child_fail){errno, KILN_INIT_STEP_EXEC};
out:
	sp->fail = f;
	_exit(127);
}

/* The stack the starting process runs on until it execs (we sleep meanwhile). */
static _Alignas(64) unsigned char spawn_stack[256 * 1024];

static void handle_exec(ssize_t len, const int *fds, size_t nfds, const sigset_t *mask)
{
	int sock = nfds > 0 ? fds[0] : -1;
	int stdio[3] = {-1, -1, -1};
	struct kiln_init_exec req;
	if (sock < 0 || (size_t)len < sizeof(req))
		goto bad;
	memcpy(&req, msgbuf, sizeof(req));
	size_t k = 1;
	for (int i = 0; i < 3; i++)
		if (req.flags & (1u << i)) {
			if (k >= nfds)
				goto bad;
			stdio[i] = fds[k++];
		}
	if (req.strings_len != (size_t)len - sizeof(req) || req.argc == 0 ||
	    (size_t)req.argc + req.envc + 2 > sizeof(argvbuf) / sizeof(argvbuf[0]))
		goto bad;
	/* Split the strings: argc + envc + 1 (cwd), each NUL-terminated. */
	char *s = (char *)msgbuf + sizeof(req), *end = (char *)msgbuf + len;
	size_t want = (size_t)req.argc + req.envc + 1, got = 0;
	char *strs[3] = {0};
	for (char *p = s; p < end && got < want; got++) {
		char *z = memchr(p, '\0', (size_t)(end - p));
		if (!z)
			goto bad;
		if (got < req.argc)
			argvbuf[got] = p;
		else if (got < (size_t)req.argc + req.envc)
			argvbuf[got + 1] = p;
		else
			strs[0] = p;
		p = z + 1;
	}
	if (got != want || !strs[0])
		goto bad;
	argvbuf[req.argc] = NULL;
	argvbuf[req.argc + 1 + req.envc] = NULL;
	char **argv = argvbuf, **envp = argvbuf + req.argc + 1;

	size_t slot = KILN_INIT_MAX_PROCS;
	for (size_t i = 0; i < KILN_INIT_MAX_PROCS; i++)
		if (!procs[i].pid) {
			slot = i;
			break;
		}
	if (slot == KILN_INIT_MAX_PROCS) {
		send_failed(sock, EAGAIN, KILN_INIT_STEP_LIMIT);
		goto done;
	}
	struct spawn sp = {.req = &req, .argv = argv, .envp = envp, .cwd = strs[0],
			   .stdio = stdio, .mask = mask};
	uint64_t start = now_ns();
	pid_t pid = clone(start_child, spawn_stack + sizeof(spawn_stack),
			  CLONE_VM | CLONE_VFORK | SIGCHLD, &sp);
	if (pid < 0) {
		send_failed(sock, errno, KILN_INIT_STEP_FORK);
		goto done;
	}
	if (sp.fail.step) {
		/* It never ran: reap it now and report why. */
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		send_failed(sock, sp.fail.err, sp.fail.step);
		goto done;
	}
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	struct kiln_init_started st = {.type = KILN_INIT_STARTED, .pid = pid};
	send_msg(sock, &st, sizeof(st), pidfd);
	if (pidfd >= 0)
		close(pidfd);
	procs[slot] = (struct proc){.pid = pid, .sock = sock, .start_ns = start,
				    .deadline_ns = req.timeout_ms ? start + req.timeout_ms * 1000000ULL : 0,
				    .sole = (req.flags & KILN_INIT_SOLE) != 0};
	sock = -1; /* owned by the slot */
	goto done;
bad:
	send_failed(sock, EPROTO, KILN_INIT_STEP_REQUEST);
done:
	for (int i = 0; i < 3; i++)
		if (stdio[i] >= 0)
			close(stdio[i]);
	if (sock >= 0)
		close(sock);
	for (size_t i = 1 + (size_t)(stdio[0] >= 0) + (stdio[1] >= 0) + (stdio[2] >= 0); i < nfds; i++)
		close(fds[i]);
}

static void send_exited(struct proc *p, int st, const struct rusage *ru)
{
	struct kiln_init_exited ex = {
		.type = KILN_INIT_EXITED,
		.status = st,
		.timed_out = p->timed_out,
		.wall_ns = now_ns() - p->start_ns,
		.utime_ns = (uint64_t)ru->ru_utime.tv_sec * 1000000000ULL +
			    (uint64_t)ru->ru_utime.tv_usec * 1000ULL,
		.stime_ns = (uint64_t)ru->ru_stime.tv_sec * 1000000000ULL +
			    (uint64_t)ru->ru_stime.tv_usec * 1000ULL,
		.maxrss_kb = (uint64_t)ru->ru_maxrss,
	};
	send_msg(p->sock, &ex, sizeof(ex), -1);
	if (p->sock >= 0)
		close(p->sock);
	*p = (struct proc){0};
}

static struct proc *proc_of(pid_t pid)
{
	for (size_t i = 0; i < KILN_INIT_MAX_PROCS; i++)
		if (procs[i].pid == pid)
			return &procs[i];
	return NULL;
}

/*
 * A KILN_INIT_SOLE process exited: kill everything else in the pid
 * namespace (daemons it left, other processes) and reap it all, then report
 * it. Only as PID 1, where kill(-1) reaches the whole namespace and every
 * process in it is our descendant, so that ECHILD means none is left.
 */
static void drain(struct proc *sole, int st, const struct rusage *ru)
{
	if (getpid() == 1) {
		(void)kill(-1, SIGKILL);
		for (;;) {
			int ost;
			struct rusage oru;
			pid_t pid = wait4(-1, &ost, 0, &oru);
			if (pid < 0 && errno == EINTR)
				continue;
			if (pid < 0)
				break;
			struct proc *p = proc_of(pid);
			if (p)
				send_exited(p, ost, &oru);
		}
	}
	send_exited(sole, st, ru);
}

static void reap(void)
{
	for (;;) {
		int st;
		struct rusage ru;
		pid_t pid = wait4(-1, &st, WNOHANG, &ru);
		if (pid <= 0)
			return;
		struct proc *p = proc_of(pid);
		if (p && p->sole)
			drain(p, st, &ru);
		else if (p)
			send_exited(p, st, &ru);
	}
}

static void handle_proc_msg(struct proc *p)
{
	struct kiln_init_signal m;
	ssize_t n = recv(p->sock, &m, sizeof(m), MSG_DONTWAIT);
	if (n == (ssize_t)sizeof(m) && m.type == KILN_INIT_SIGNAL) {
		(void)kill(m.group ? -p->pid : p->pid, m.sig);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	/* EOF or garbage: the parent dropped its handle; keep the process. */
	close(p->sock);
	p->sock = -1;
}

static int control(void)
{
	int ctl = KILN_INIT_CONTROL_FD;
	/* Nobody inside may ptrace us or reach our fds through /proc/1. */
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	if (fcntl(ctl, F_SETFD, FD_CLOEXEC) < 0)
		return 127;
	if (getpid() != 1)
		(void)prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

	sigset_t mask, old;
	sigemptyset(&mask);
	for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++)
		sigaddset(&mask, forwarded[i]);
	sigaddset(&mask, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &mask, &old) < 0)
		return 127;
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		return 127;

	struct kiln_init_ready ready = {.type = KILN_INIT_READY, .version = KILN_INIT_PROTO_VERSION};
	send_msg(ctl, &ready, sizeof(ready), -1);

	static struct pollfd pfds[KILN_INIT_MAX_PROCS + 2];
	static size_t map[KILN_INIT_MAX_PROCS + 2];
	for (;;) {
		size_t n = 0;
		pfds[n++] = (struct pollfd){.fd = ctl, .events = POLLIN};
		pfds[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
		uint64_t now = now_ns(), next = 0;
		for (size_t i = 0; i < KILN_INIT_MAX_PROCS; i++) {
			struct proc *p = &procs[i];
			if (!p->pid)
				continue;
			if (p->deadline_ns && !p->timed_out) {
				if (p->deadline_ns <= now) {
					p->timed_out = true;
					(void)kill(-p->pid, SIGKILL);
					(void)kill(p->pid, SIGKILL);
				} else if (!next || p->deadline_ns < next) {
					next = p->deadline_ns;
				}
			}
			if (p->sock >= 0) {
				map[n] = i;
				pfds[n++] = (struct pollfd){.fd = p->sock, .events = POLLIN};
			}
		}
		struct timespec ts, *tsp = NULL;
		if (next) {
			uint64_t d = next - now;
			ts.tv_sec = (time_t)(d / 1000000000ULL);
			ts.tv_nsec = (long)(d % 1000000000ULL);
			tsp = &ts;
		}
		int r = ppoll(pfds, n, tsp, NULL);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfds[1].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				if (si.ssi_signo == SIGCHLD)
					continue;
				for (size_t i = 0; i < KILN_INIT_MAX_PROCS; i++)
					if (procs[i].pid)
						(void)kill(-procs[i].pid, (int)si.ssi_signo);
			}
			reap();
		}
		for (size_t k = 2; k < n; k++)
			if (pfds[k].revents && procs[map[k]].pid && procs[map[k]].sock == pfds[k].fd)
				handle_proc_msg(&procs[map[k]]);
		if (pfds[0].revents) {
			char cbuf[CMSG_SPACE(sizeof(int) * 4)];
			struct iovec iov = {.iov_base = msgbuf, .iov_len = sizeof(msgbuf)};
			struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
					    .msg_controllen = sizeof(cbuf)};
			ssize_t len = recvmsg(ctl, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
			if (len == 0 || (len < 0 && errno != EAGAIN && errno != EINTR))
				break; /* the parent is gone */
			if (len > 0) {
				int fds[4];
				size_t nfds = 0;
				for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm;
				     cm = CMSG_NXTHDR(&mh, cm)) {
					if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
						continue;
					size_t cnt = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
					for (size_t i = 0; i < cnt && nfds < 4; i++)
						memcpy(&fds[nfds++], CMSG_DATA(cm) + i * sizeof(int),
						       sizeof(int));
				}
				uint32_t type = 0;
				if ((size_t)len >= sizeof(type))
					memcpy(&type, msgbuf, sizeof(type));
				if (type == KILN_INIT_EXEC && !(mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
					handle_exec(len, fds, nfds, &old);
				} else {
					if (nfds)
						send_failed(fds[0], EPROTO, KILN_INIT_STEP_REQUEST);
					for (size_t i = 0; i < nfds; i++)
						close(fds[i]);
				}
			}
		}
	}
	/* Shut down: everything in our pid namespace dies with us. */
	if (getpid() == 1) {
		(void)kill(-1, SIGKILL);
	} else {
		for (size_t i = 0; i < KILN_INIT_MAX_PROCS; i++)
			if (procs[i].pid)
				(void)kill(-procs[i].pid, SIGKILL);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--control") == 0)
		return control();
	int first = 1;
	if (first < argc && strcmp(argv[first], "--") == 0)
		first++;
	if (first >= argc) {
		fail("usage: kiln-init [--] CMD [ARGS...] | kiln-init --control", EINVAL);
		return 2;
	}
	return one_command(argc, argv, first);
}
