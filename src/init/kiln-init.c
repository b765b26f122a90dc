/*
 * kiln-init: PID 1 inside every sandbox.
 *
 *   kiln-init [--] CMD [ARGS...]
 *
 * Starts CMD as its child, forwards the signals a supervisor sends (TERM,
 * INT, HUP, QUIT, USR1, USR2) to it, reaps every orphan that is re-parented
 * to it, and exits with CMD's status: its exit code, or 128 + the signal that
 * killed it. It is linked statically and uses no allocation, so it works in
 * any root filesystem. Invariant: it never exits while CMD is alive.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT};

static void fail(const char *what, int err)
{
	char msg[256];
	int n = snprintf(msg, sizeof(msg), "kiln-init: %s: %s\n", what, strerror(err));
	if (n > 0)
		(void)!write(STDERR_FILENO, msg, (size_t)n);
}

int main(int argc, char **argv)
{
	int first = 1;
	if (first < argc && strcmp(argv[first], "--") == 0)
		first++;
	if (first >= argc) {
		fail("usage: kiln-init [--] CMD [ARGS...]", EINVAL);
		return 2;
	}

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
