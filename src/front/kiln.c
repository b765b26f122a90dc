/*
 * kiln, the front: the `kiln` that users run. A small static binary (musl,
 * like kiln-init) that starts in ~0.6 ms where the full kiln (glibc, SQLite,
 * libsodium, ...) takes ~2.4 ms on the same machine; decision 0025.
 *
 * It does one thing itself: `kiln sandbox run ...` while a `kiln sandbox
 * serve` listens for this user. It hands the server the arguments, its
 * environment, working directory and stdin/stdout/stderr (the argv request,
 * src/sandbox/remote-argv.h), forwards SIGINT/SIGTERM/SIGHUP as cancels and
 * exits with the status the server sends. The server parses the arguments
 * with the full kiln's own code and reports on the client's stdout/stderr
 * exactly as the full kiln would. What the server does not take ("local")
 * and every other command run the full kiln, exec'd with the same argv.
 *
 * The full kiln: $KILN_CORE, else kiln-core beside this binary (the build
 * tree), else ../libexec/kiln/kiln-core from its directory (installed under
 * any prefix), else KILN_CORE_PATH (the configured libexec dir).
 */
#include "sandbox/remote-argv.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef KILN_CORE_PATH
#define KILN_CORE_PATH "/usr/local/libexec/kiln/kiln-core"
#endif

/* The status `kiln sandbox run` exits with when the sandbox cannot be had. */
#define EXIT_SETUP 125

extern char **environ;

/* "WHAT: DETAIL" on stderr (WHAT begins with "kiln"). */
static void say(const char *what, const char *detail)
{
	char msg[PATH_MAX + 256];
	int n = snprintf(msg, sizeof(msg), "%s%s%s\n", what, detail ? ": " : "",
			 detail ? detail : "");
	if (n > (int)sizeof(msg) - 1)
		n = (int)sizeof(msg) - 1;
	(void)!write(STDERR_FILENO, msg, (size_t)n);
}

static int executable(const char *dir, const char *rel, char *out, size_t size)
{
	int n = snprintf(out, size, "%s/%s", dir, rel);
	return n > 0 && (size_t)n < size && access(out, X_OK) == 0;
}

static void exec_core(char **argv)
{
	char path[PATH_MAX], self[PATH_MAX];
	const char *env = getenv("KILN_CORE");
	if (env && *env) {
		execv(env, argv);
		say("kiln: cannot run the full kiln ($KILN_CORE)", strerror(errno));
		exit(EXIT_SETUP);
	}
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			if (executable(self, "kiln-core", path, sizeof(path)) ||
			    executable(self, "../libexec/kiln/kiln-core", path, sizeof(path)))
				execv(path, argv);
		}
	}
	execv(KILN_CORE_PATH, argv);
	say("kiln: cannot run the full kiln (" KILN_CORE_PATH "; set KILN_CORE)", strerror(errno));
	exit(EXIT_SETUP);
}

/*
 * The state dir the command names (--state-dir), or NULL for the default.
 * Only a guess at the socket to try: the server checks the arguments with
 * the full parser and answers "local" when they are not its own.
 */
static const char *state_dir_arg(int argc, char **argv)
{
	/* Options of `sandbox run` without an argument; all others take one. */
	static const char *const flags[] = {"--keep", "--local", "--help", "-h", NULL};
	for (int i = 3; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] != '-' || !strcmp(a, "--"))
			return NULL;
		if (!strncmp(a, "--state-dir=", 12))
			return a + 12;
		if (!strcmp(a, "--state-dir"))
			return i + 1 < argc ? argv[i + 1] : NULL;
		int flag = 0;
		for (const char *const *f = flags; *f; f++)
			flag |= !strcmp(a, *f);
		/* "--opt=value" and "-oVALUE" carry their value. */
		if (!flag && !strchr(a, '=') && !(a[1] && a[1] != '-' && a[2]))
			i++;
	}
	return NULL;
}

static int socket_path(const char *dir, char *out, size_t size)
{
	char def[PATH_MAX];
	if (!dir) {
		if (sandbox_state_dir_into(def, sizeof(def), geteuid(), getenv("XDG_RUNTIME_DIR")) < 0)
			return -1;
		dir = def;
	}
	int n = snprintf(out, size, "%s/" SANDBOX_ARGV_SOCKET, dir);
	return n > 0 && (size_t)n < size ? 0 : -1;
}

struct payload {
	char *data;
	size_t len, cap;
	int bad;
};

static void put(struct payload *p, const char *s)
{
	size_t n = strlen(s) + 1;
	if (p->bad)
		return;
	if (p->len + n > SANDBOX_ARGV_MAX_FRAME) {
		p->bad = 1;
		return;
	}
	if (p->len + n > p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 4096;
		while (cap < p->len + n)
			cap *= 2;
		char *d = realloc(p->data, cap);
		if (!d) {
			p->bad = 1;
			return;
		}
		p->data = d;
		p->cap = cap;
	}
	memcpy(p->data + p->len, s, n);
	p->len += n;
}

static void put_num(struct payload *p, unsigned long v)
{
	char s[24];
	snprintf(s, sizeof(s), "%lu", v);
	put(p, s);
}

static int read_full(int fd, void *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, (char *)buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

/*
 * The server's answer: 0 "local", 1 "exit N" (*status); -1 none (EOF),
 * -2 one this front does not know (a server of another kiln version).
 */
static int read_answer(int sock, int *status)
{
	uint32_t len;
	char msg[64];
	if (read_full(sock, &len, sizeof(len)) < 0)
		return -1;
	if (len >= sizeof(msg))
		return -2;
	if (read_full(sock, msg, len) < 0)
		return -1;
	msg[len] = '\0';
	if (!strcmp(msg, "local"))
		return 0;
	char *end;
	if (strncmp(msg, "exit ", 5) != 0)
		return -2;
	errno = 0;
	long v = strtol(msg + 5, &end, 10);
	if (errno || *end || end == msg + 5 || v < 0 || v > 255)
		return -2;
	*status = (int)v;
	return 1;
}

/*
 * `kiln sandbox run` through a server. Returns when the server is not
 * there or answers "local" (the caller runs the full kiln); else exits.
 */
static void served_run(int argc, char **argv)
{
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	if (socket_path(state_dir_arg(argc, argv), path, sizeof(path)) < 0)
		return;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, path, strlen(path) + 1);

	/* The cancelling signals are held from before the server can start
	 * anything until the answer (or the exec, which gets the old mask). */
	sigset_t mask, old;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, &old);

	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0 || connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto local;

	char cwd[PATH_MAX];
	if (!getcwd(cwd, sizeof(cwd)) || cwd[0] != '/')
		goto local; /* the full kiln says what is wrong */
	int fds[3];
	unsigned stdio = 0;
	size_t nfds = 0;
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) >= 0) {
			stdio |= 1u << fd;
			fds[nfds++] = fd;
		}
	struct payload p = {0};
	size_t envc = 0;
	while (environ[envc])
		envc++;
	put(&p, SANDBOX_ARGV_MAGIC);
	put_num(&p, stdio);
	put(&p, cwd);
	put_num(&p, (unsigned long)(argc - 2));
	for (int i = 2; i < argc; i++)
		put(&p, argv[i]);
	put_num(&p, envc);
	for (size_t i = 0; i < envc; i++)
		put(&p, environ[i]);
	if (p.bad || argc - 2 > SANDBOX_ARGV_MAX_STRINGS || envc > SANDBOX_ARGV_MAX_STRINGS) {
		free(p.data);
		goto local; /* too big for a frame: the full kiln runs it itself */
	}
	int r = sandbox_frame_sendmsg(sock, p.data, p.len, fds, nfds);
	free(p.data);
	if (r < 0)
		goto local; /* the server went away before reading it */

	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sfd < 0)
		sigprocmask(SIG_SETMASK, &old, NULL); /* a signal kills us: the server
							 sees EOF, which cancels */
	int cancelled = 0;
	for (;;) {
		struct pollfd pfd[2] = {{.fd = sock, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
		int n = poll(pfd, sfd >= 0 ? 2 : 1, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		if (sfd >= 0 && pfd[1].revents) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				char msg[32];
				int len = snprintf(msg, sizeof(msg), "{\"cancel\":%d}",
						   (int)si.ssi_signo);
				cancelled = (int)si.ssi_signo;
				(void)sandbox_frame_sendmsg(sock, msg, (size_t)len, NULL, 0);
			}
		}
		if (pfd[0].revents) {
			int status;
			r = read_answer(sock, &status);
			if (r == 1)
				exit(status);
			if (r == 0) {
				close(sfd);
				close(sock);
				if (cancelled) {
					/* Interrupted before anything ran: as if the
					 * signal had come before we did anything. */
					signal(cancelled, SIG_DFL);
					sigprocmask(SIG_SETMASK, &old, NULL);
					raise(cancelled);
				}
				sigprocmask(SIG_SETMASK, &old, NULL);
				return;
			}
			if (r == -2) {
				say("kiln sandbox run",
				    "kiln sandbox serve gave an answer this kiln does not know "
				    "(a server of another kiln version? restart it)");
				exit(EXIT_SETUP);
			}
			break;
		}
	}
	say("kiln sandbox run", "kiln sandbox serve closed the connection without a result");
	exit(EXIT_SETUP);
local:
	if (sock >= 0)
		close(sock);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "sandbox") && !strcmp(argv[2], "run"))
		served_run(argc, argv);
	exec_core(argv);
	return EXIT_SETUP;
}
