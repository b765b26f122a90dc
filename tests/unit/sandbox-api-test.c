/*
 * The sandbox library API as the agent uses it: one sandbox, several
 * processes in order with their own pipes, environment, cwd, exit status
 * and timeout; kill of one process group; sandboxes made concurrently from
 * several threads; errors with a sentence. Needs root and $KILN_INIT (meson
 * sets it); skipped otherwise.
 */
#include "tap.h"

#include "sandbox/sandbox-internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* A modifiable string (argv and envp are char *const *). */
#define S(lit) ((char[]){lit})

static char state_dir[] = "/tmp/kiln-api-test-XXXXXX";
static char cg_parent[64];

static void config(struct sandbox_config *cfg)
{
	*cfg = (struct sandbox_config){.state_dir = state_dir, .cgroup_parent = cg_parent};
}

/* Runs argv in sb; returns its exit with stdout/stderr collected. */
static int run(struct sandbox *sb, char **argv, char **env, const char *cwd, uint64_t timeout_ms,
	       struct buf *out, struct buf *errb, struct sandbox_exit *ret, struct kiln_err *err)
{
	int po[2], pe[2];
	if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0)
		return -errno;
	struct sandbox_exec ex = SANDBOX_EXEC_INIT;
	ex.argv = argv;
	ex.envp = env;
	ex.cwd = cwd;
	ex.stdout_fd = po[1];
	ex.stderr_fd = pe[1];
	ex.timeout_ms = timeout_ms;
	struct sandbox_process *p = NULL;
	int r = sandbox_exec(sb, &ex, &p, err);
	close(po[1]);
	close(pe[1]);
	if (r >= 0) {
		/* The agent streams; here: read both to EOF, then wait. */
		struct buf tmp = BUF_INIT;
		if (read_fd_all(po[0], 1 << 20, out ? out : &tmp) >= 0 && !out)
			buf_release(&tmp);
		if (read_fd_all(pe[0], 1 << 20, errb ? errb : &tmp) >= 0 && !errb)
			buf_release(&tmp);
		r = sandbox_process_wait(p, -1, ret);
		sandbox_process_free(p);
	}
	close(po[0]);
	close(pe[0]);
	return r;
}

static bool prereqs(void)
{
	return geteuid() == 0 && getenv("KILN_INIT");
}

TEST(steps_share_one_sandbox)
{
	if (!prereqs())
		return;
	struct sandbox_config cfg;
	config(&cfg);
	char ws[] = "/tmp/kiln-api-ws-XXXXXX";
	CHECK(mkdtemp(ws) != NULL);
	cfg.workspace = ws;
	struct sandbox *sb = NULL;
	struct kiln_err err = {0};
	int r = sandbox_create(&cfg, &sb, &err);
	CHECK_EQ(r, 0);
	if (r < 0) {
		printf("# %s\n", err.msg);
		return;
	}
	char *s1[] = {S("sh"), S("-c"), S("echo one; echo two >&2; mkdir -p sub; echo x > /tmp/state; exit 3"),
		      NULL};
	struct buf out = BUF_INIT, eb = BUF_INIT;
	struct sandbox_exit e;
	CHECK_EQ(run(sb, s1, NULL, NULL, 0, &out, &eb, &e, &err), 0);
	CHECK_EQ(e.exit_code, 3);
	CHECK_EQ(e.signal, 0);
	CHECK_STREQ(out.data, "one\n");
	CHECK_STREQ(eb.data, "two\n");
	CHECK(e.wall_ns > 0);
	buf_release(&out);
	buf_release(&eb);

	/* Step 2: same sandbox (sees /tmp/state), own env and cwd. */
	char *s2[] = {S("sh"), S("-c"), S("cat /tmp/state; pwd; echo $FOO; echo $$"), NULL};
	char *env[] = {S("FOO=bar"), S("PATH=/usr/bin:/bin"), NULL};
	CHECK_EQ(run(sb, s2, env, "/workspace/sub", 0, &out, NULL, &e, &err), 0);
	CHECK_EQ(e.exit_code, 0);
	CHECK(out.data && strncmp(out.data, "x\n/workspace/sub\nbar\n", 21) == 0);
	buf_release(&out);
	struct stat st;
	char sub[128];
	snprintf(sub, sizeof(sub), "%s/sub", ws);
	CHECK_EQ(stat(sub, &st), 0); /* the workspace is the host directory */

	/* Step 3: a timeout kills just that step; the sandbox lives on. */
	char *s3[] = {S("sh"), S("-c"), S("sleep 100 & sleep 100"), NULL};
	CHECK_EQ(run(sb, s3, NULL, NULL, 200, NULL, NULL, &e, &err), 0);
	CHECK(e.timed_out);
	CHECK_EQ(e.signal, SIGKILL);
	CHECK(e.wall_ns >= 200 * NSEC_PER_MSEC);
	char *s4[] = {S("true"), NULL};
	CHECK_EQ(run(sb, s4, NULL, NULL, 0, NULL, NULL, &e, &err), 0);
	CHECK_EQ(e.exit_code, 0);

	struct sandbox_stats stats;
	CHECK_EQ(sandbox_stats(sb, &stats), 0);
	CHECK(stats.have_memory && stats.memory_peak_bytes > 0);
	CHECK(stats.have_pids && stats.pids_peak >= 2);
	CHECK(stats.have_cpu);
	CHECK_EQ(sandbox_destroy(sb, &stats), 0);
	CHECK_EQ(stats.pids_current, 0);
	(void)unlink(sub), (void)rmdir(sub), (void)rmdir(ws);
}

TEST(start_errors_have_sentences)
{
	if (!prereqs())
		return;
	struct sandbox_config cfg;
	config(&cfg);
	struct sandbox *sb = NULL;
	struct kiln_err err = {0};
	CHECK_EQ(sandbox_create(&cfg, &sb, &err), 0);
	if (!sb)
		return;
	struct sandbox_exit e;
	char *nf[] = {S("no-such-command-xyz"), NULL};
	CHECK_EQ(run(sb, nf, NULL, NULL, 0, NULL, NULL, &e, &err), -ENOENT);
	CHECK(strstr(err.msg, "no-such-command-xyz") && strstr(err.msg, "command not found"));
	char *t[] = {S("true"), NULL};
	CHECK_EQ(run(sb, t, NULL, "/no/such/dir", 0, NULL, NULL, &e, &err), -ENOENT);
	CHECK(strstr(err.msg, "working directory /no/such/dir") != NULL);
	/* uid 70000 is outside the 65536 mapped ids. */
	struct sandbox_exec ex = SANDBOX_EXEC_INIT;
	ex.argv = t;
	ex.uid = 70000;
	struct sandbox_process *p = NULL;
	CHECK(sandbox_exec(sb, &ex, &p, &err) < 0);
	CHECK(strstr(err.msg, "switch user") != NULL);
	CHECK_EQ(sandbox_destroy(sb, NULL), 0);

	cfg.rootfs = "/nonexistent-rootfs";
	CHECK_EQ(sandbox_create(&cfg, &sb, &err), -ENOENT);
	CHECK(strstr(err.msg, "/nonexistent-rootfs") != NULL);
}

TEST(kill_group_and_sandbox)
{
	if (!prereqs())
		return;
	struct sandbox_config cfg;
	config(&cfg);
	struct sandbox *sb = NULL;
	struct kiln_err err = {0};
	CHECK_EQ(sandbox_create(&cfg, &sb, &err), 0);
	if (!sb)
		return;
	int po[2];
	CHECK_EQ(pipe2(po, O_CLOEXEC), 0);
	char *argv[] = {S("sh"), S("-c"), S("trap 'exit 7' TERM; echo ready; sleep 100 & wait"), NULL};
	struct sandbox_exec ex = SANDBOX_EXEC_INIT;
	ex.argv = argv;
	ex.stdout_fd = po[1];
	struct sandbox_process *p = NULL;
	CHECK_EQ(sandbox_exec(sb, &ex, &p, &err), 0);
	close(po[1]);
	char line[16] = "";
	CHECK(read(po[0], line, 6) == 6);
	struct sandbox_exit e;
	CHECK_EQ(sandbox_process_wait(p, 0, &e), -ETIMEDOUT);
	struct pollfd pfd = {.fd = sandbox_process_fd(p), .events = POLLIN};
	CHECK_EQ(poll(&pfd, 1, 0), 0); /* not readable while it runs */
	CHECK_EQ(sandbox_process_kill(p, SIGTERM, true), 0);
	CHECK_EQ(poll(&pfd, 1, 10000), 1);
	CHECK_EQ(sandbox_process_wait(p, -1, &e), 0);
	CHECK_EQ(e.exit_code, 7);
	sandbox_process_free(p);
	close(po[0]);

	/* A process still running when the whole sandbox is killed. */
	char *argv2[] = {S("sleep"), S("100"), NULL};
	ex = (struct sandbox_exec)SANDBOX_EXEC_INIT;
	ex.argv = argv2;
	CHECK_EQ(sandbox_exec(sb, &ex, &p, &err), 0);
	CHECK_EQ(sandbox_kill(sb), 0);
	CHECK_EQ(sandbox_process_wait(p, 10000, &e), 0);
	CHECK_EQ(e.signal, SIGKILL);
	sandbox_process_free(p);
	CHECK(sandbox_exec(sb, &ex, &p, &err) < 0);
	CHECK(strstr(err.msg, "gone") != NULL);
	CHECK_EQ(sandbox_destroy(sb, NULL), 0);
}

static void *worker(void *arg)
{
	int *failures = arg;
	for (int round = 0; round < 3; round++) {
		struct sandbox_config cfg;
		config(&cfg);
		struct sandbox *sb = NULL;
		struct kiln_err err = {0};
		if (sandbox_create(&cfg, &sb, &err) < 0) {
			printf("# create: %s\n", err.msg);
			(*failures)++;
			continue;
		}
		for (int i = 0; i < 3; i++) {
			char code[8];
			snprintf(code, sizeof(code), "exit %d", i + round);
			char *argv[] = {S("sh"), S("-c"), code, NULL};
			struct sandbox_exit e = {0};
			if (run(sb, argv, NULL, NULL, 0, NULL, NULL, &e, &err) < 0 ||
			    e.exit_code != i + round)
				(*failures)++;
		}
		if (sandbox_destroy(sb, NULL) < 0)
			(*failures)++;
	}
	return NULL;
}

TEST(concurrent_sandboxes_from_threads)
{
	if (!prereqs())
		return;
	pthread_t t[4];
	int failures[4] = {0};
	for (int i = 0; i < 4; i++)
		CHECK_EQ(pthread_create(&t[i], NULL, worker, &failures[i]), 0);
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		CHECK_EQ(failures[i], 0);
	}
	/* Nothing left in the state dir but its journal and /etc mask layer. */
	CHECK_EQ(sandbox_cleanup_leftovers(state_dir, NULL), 0);
	DIR *d = opendir(state_dir);
	CHECK(d != NULL);
	for (struct dirent *de; d && (de = readdir(d));)
		if (!streq(de->d_name, ".") && !streq(de->d_name, "..") &&
		    !startswith(de->d_name, ".etc-mask-") && !streq(de->d_name, "sandboxes")) {
			printf("# left in the state dir: %s\n", de->d_name);
			tap_failed = 1;
		}
	if (d)
		closedir(d);
}

/* The v1 path of a cgroup kill (used where no cgroup2 is mounted, and by
 * the leftover cleanup): freeze, SIGKILL every task, thaw, rmdir — against
 * processes that keep forking. */
TEST(v1_freezer_kill)
{
	if (!prereqs())
		return;
	if (access("/sys/fs/cgroup/freezer/cgroup.procs", F_OK) < 0) {
		printf("# no v1 freezer hierarchy here\n");
		return;
	}
	char dir[128];
	snprintf(dir, sizeof(dir), "/sys/fs/cgroup/freezer/kiln-unit-freeze-%d", (int)getpid());
	CHECK_EQ(mkdir(dir, 0755), 0);
	pid_t kids[3];
	for (int i = 0; i < 3; i++) {
		kids[i] = fork();
		if (kids[i] == 0) {
			char procs[160], me[16];
			snprintf(procs, sizeof(procs), "%s/cgroup.procs", dir);
			snprintf(me, sizeof(me), "%d", (int)getpid());
			int fd = open(procs, O_WRONLY | O_CLOEXEC);
			if (fd < 0 || write(fd, me, strlen(me)) < 0)
				_exit(1);
			close(fd);
			for (;;) { /* a small fork loop: children come and go */
				pid_t c = fork();
				if (c == 0)
					_exit(0);
				if (c > 0)
					waitpid(c, NULL, 0);
			}
		}
	}
	/* Wait until all three are in the cgroup. */
	for (int tries = 0; tries < 1000; tries++) {
		struct buf b = BUF_INIT;
		char procs[160];
		snprintf(procs, sizeof(procs), "%s/cgroup.procs", dir);
		int lines = 0;
		if (read_file(procs, 1 << 16, &b) >= 0)
			for (size_t i = 0; i < b.len; i++)
				lines += b.data[i] == '\n';
		buf_release(&b);
		if (lines >= 3)
			break;
		usleep(1000);
	}
	CHECK_EQ(cg_dir_kill_and_remove(dir, false), 0);
	for (int i = 0; i < 3; i++) {
		int st = 0;
		CHECK_EQ(waitpid(kids[i], &st, 0), kids[i]);
		CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
	}
	CHECK(access(dir, F_OK) < 0);
}

int main(void)
{
	if (!prereqs()) {
		printf("1..0 # SKIP needs root and KILN_INIT (meson test sets it)\n");
		return 0;
	}
	if (!mkdtemp(state_dir))
		return 1;
	snprintf(cg_parent, sizeof(cg_parent), "/kiln-unit-%d", (int)getpid());
	int r = tap_run();
	(void)rm_rf(state_dir);
	/* Remove the cgroup parent from every hierarchy. */
	static const char *const h[] = {"unified", "memory", "pids", "blkio", "cpu", "cpuacct",
					"freezer", ""};
	for (size_t i = 0; i < ARRAY_SIZE(h); i++) {
		char p[256];
		snprintf(p, sizeof(p), "/sys/fs/cgroup/%s%s", h[i], cg_parent);
		(void)rmdir(p);
	}
	return r;
}
