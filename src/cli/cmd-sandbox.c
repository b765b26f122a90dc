/*
 * cmd-sandbox: `kiln sandbox run|probe|cleanup` — drive the sandbox engine
 * by hand (the agent drives it through src/sandbox/sandbox.h).
 *
 * `run` passes kiln's own stdin/stdout/stderr to the command, waits for it
 * (with --timeout, or until SIGINT/SIGTERM/SIGHUP cancels it: the whole
 * sandbox is killed either way), destroys the sandbox and reports the result
 * (-o json: one JSON object on stdout after the command's own output).
 */
#include "cli.h"
#include "sandbox/remote.h"

#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <time.h>

enum {
	EXIT_TIMEOUT = 124,
	EXIT_SETUP = 125,
	EXIT_NOEXEC = 126,
	EXIT_NOTFOUND = 127,
};

const char cmd_sandbox_help[] =
	"usage: kiln sandbox run [OPTIONS] [--] CMD [ARGS...]\n"
	"       kiln sandbox serve [--warm N] [SHAPE OPTIONS] [--state-dir DIR]\n"
	"       kiln sandbox status [-o json] [--state-dir DIR] [--wait DURATION]\n"
	"       kiln sandbox probe [-o json] [--state-dir DIR] [--rootfs host|DIR]\n"
	"       kiln sandbox cleanup [--state-dir DIR]\n"
	"\n"
	"Runs CMD in a fresh sandbox: new user, pid, mount, net, uts, ipc and cgroup\n"
	"namespaces, a throw-away overlay root, a cgroup with limits, seccomp, no\n"
	"capabilities beyond a small documented set, kiln-init as PID 1. CMD gets kiln's\n"
	"stdin, stdout and stderr. When CMD exits (or times out, or kiln is interrupted)\n"
	"every process of the sandbox is killed and everything it used is removed.\n"
	"\n"
	"When a `kiln sandbox serve` runs for the same state dir, run hands CMD to it\n"
	"(over <state-dir>/serve.sock, with kiln's stdin/stdout/stderr) and it runs CMD in\n"
	"a sandbox it made ahead of time: the same isolation and limits, without the wait\n"
	"for the sandbox to be made (--workspace and --bind are added to it before CMD\n"
	"starts). --keep, --cgroup-parent, --cgroup-root, --init and --local always run\n"
	"in this process.\n"
	"\n"
	"options of run:\n"
	"  --rootfs host|DIR     root filesystem: the host's /usr, /etc (secrets hidden)\n"
	"                        and /bin, /lib* read-only (default), or a rootfs directory\n"
	"  --workspace DIR       bind DIR read-write at /workspace (and start there)\n"
	"  --bind SRC:DST[:ro]   bind a host path (repeatable)\n"
	"  --cwd DIR             working directory inside (default /workspace or /)\n"
	"  --env KEY=VALUE       set a variable; --env KEY copies kiln's (repeatable);\n"
	"                        the environment is otherwise PATH and HOME only\n"
	"  --user UID[:GID]      run as this user inside (default 0, root of the sandbox)\n"
	"  --hostname NAME       default 'sandbox'\n"
	"  --net none|host       none: only loopback (default); host: the host's network\n"
	"  --cpus N              CPU limit, e.g. 1.5 or 500m\n"
	"  --memory SIZE         memory limit, e.g. 512Mi (swap off)\n"
	"  --pids N              process limit (kiln-init counts as one)\n"
	"  --disk SIZE           size of the writable layer (root changes, /tmp, /dev/shm)\n"
	"  --timeout DURATION    kill the sandbox after e.g. 30s, 10m\n"
	"  --keep                keep the writable layer (on disk; its path is printed)\n"
	"  --state-dir DIR       default /var/lib/kiln/sandbox (root) or\n"
	"                        $XDG_RUNTIME_DIR/kiln/sandbox\n"
	"  --cgroup-parent PATH  /abs: under each hierarchy's root (default /kiln as root);\n"
	"                        rel: under kiln's own cgroup (default rootless)\n"
	"  --init PATH           the kiln-init binary (default $KILN_INIT, next to kiln)\n"
	"  --local               do not hand CMD to a running kiln sandbox serve\n"
	"  -o, --output FORMAT   text (default) or json: the result on stdout at the end\n"
	"\n"
	"options of serve (it runs until SIGINT or SIGTERM; running commands are then\n"
	"killed):\n"
	"  --warm N              sandboxes kept ready (default 2, at most 64; 0: none)\n"
	"  --rootfs, --net, --hostname, --cpus, --memory, --pids, --disk\n"
	"                        the shape of the first warm sandboxes (default: host root,\n"
	"                        no network, no limits); afterwards the shape of the last\n"
	"                        request. A request of another shape gets a sandbox made\n"
	"                        for it.\n"
	"  --state-dir, --cgroup-parent, --cgroup-root, --init   as for run\n"
	"  --log-level LEVEL     error, warn, info (default) or debug\n"
	"\n"
	"status prints what the server of the state dir holds (exit 1 if none runs);\n"
	"with --wait DURATION it first waits until the server is settled: its warm\n"
	"sandboxes ready, no teardown pending, nothing running.\n"
	"\n"
	"exit codes: CMD's exit code, or 128+N if a signal N killed it; 124 timed out;\n"
	"125 the sandbox could not be set up; 126 CMD not executable; 127 CMD not found;\n"
	"2 usage error.\n";

/* ---- run ------------------------------------------------------------------ */

struct run_opts {
	struct sandbox_config cfg;
	struct sandbox_bind binds[SANDBOX_MAX_BINDS];
	char *bind_copies[SANDBOX_MAX_BINDS]; /* storage of binds[i] (sandbox_bind_parse) */
	char **env;
	size_t n_env;
	const char *cwd;
	uid_t uid;
	gid_t gid;
	uint64_t timeout_ms;
	bool json;
	bool local;       /* --local */
	char *rootfs_abs; /* --rootfs made absolute (it names the client's path) */
	char *workspace_abs;               /* ditto --workspace */
	char *bind_abs[SANDBOX_MAX_BINDS]; /* ditto each --bind's source */
	char *state_abs;  /* the state dir, absolute (argv requests) */
};

/*
 * A server parsing a client's command line (an argv request, remote-argv.h)
 * does so under parse_lock (getopt's state is global): usage errors and
 * --help are not printed (the client runs the full kiln, which prints
 * them), and --env KEY reads the client's environment.
 */
static pthread_mutex_t parse_lock = PTHREAD_MUTEX_INITIALIZER;
static bool parse_quiet;
static char **parse_env;
static const char *parse_cwd;

/* KEY's value in envp (NULL-terminated), or NULL. */
static const char *env_lookup(char **envp, const char *key)
{
	size_t kl = strlen(key);
	for (char **e = envp; *e; e++)
		if (strncmp(*e, key, kl) == 0 && (*e)[kl] == '=')
			return *e + kl + 1;
	return NULL;
}

static const char *run_getenv(const char *key)
{
	return parse_env ? env_lookup(parse_env, key) : getenv(key);
}

static int parse_user(const char *s, uid_t *uid, gid_t *gid)
{
	char buf[64];
	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	snprintf(buf, sizeof(buf), "%s", s);
	char *colon = strchr(buf, ':');
	if (colon)
		*colon = '\0';
	int64_t u, g;
	if (parse_int64(buf, 0, 65535, &u) < 0)
		return -EINVAL;
	g = u;
	if (colon && parse_int64(colon + 1, 0, 65535, &g) < 0)
		return -EINVAL;
	*uid = (uid_t)u;
	*gid = (gid_t)g;
	return 0;
}

static bool env_has(char **env, size_t n, const char *key)
{
	size_t kl = strlen(key);
	for (size_t i = 0; i < n; i++)
		if (strncmp(env[i], key, kl) == 0 && env[i][kl] == '=')
			return true;
	return false;
}

/* Prints a usage error; returns -2 (parse_run: < 0 means "exit now"). */
#define usage(cmd, ...) (parse_quiet ? -2 : ((void)cli_usage_error(cmd, __VA_ARGS__), -2))

/* The usage error for the option getopt_long() just refused; EXIT_USAGE. */
static int bad_option(const char *cmd, char **argv)
{
	if (parse_quiet)
		return EXIT_USAGE;
	if (optopt)
		return cli_usage_error(cmd, "option '%s' needs a value or is unknown",
				       argv[optind - 1]);
	return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
}

/*
 * The options that make a sandbox's shape (run and serve share them):
 * 0 if c was one and is set in cfg, -2 after a usage error.
 */
static int shape_opt(int c, const char *arg, struct sandbox_config *cfg, const char *cmd)
{
	int64_t v;
	switch (c) {
	case 'H':
		cfg->hostname = arg;
		return 0;
	case 'n':
		if (streq(arg, "none"))
			cfg->net = SANDBOX_NET_NONE;
		else if (streq(arg, "host"))
			cfg->net = SANDBOX_NET_HOST;
		else
			return usage(cmd, "--net '%s': use none or host", arg);
		return 0;
	case 'c':
		if (sandbox_cpus_parse(arg, &cfg->limits.cpu_millis) < 0)
			return usage(cmd,
					       "--cpus '%s': expected a number of CPUs like 1.5 "
					       "or 500m (0.01 to 1024)",
					       arg);
		return 0;
	case 'm':
		if (parse_size(arg, &cfg->limits.memory_bytes) < 0 ||
		    cfg->limits.memory_bytes < (4 << 20))
			return usage(cmd, "--memory '%s': expected a size like 512Mi "
						    "(at least 4Mi)",
					       arg);
		return 0;
	case 'p':
		if (parse_int64(arg, 2, 4194304, &v) < 0)
			return usage(cmd, "--pids '%s': expected 2 to 4194304", arg);
		cfg->limits.pids = (uint32_t)v;
		return 0;
	case 'd':
		if (parse_size(arg, &cfg->limits.disk_bytes) < 0 ||
		    cfg->limits.disk_bytes < (1 << 20))
			return usage(cmd, "--disk '%s': expected a size like 2Gi (at "
						    "least 1Mi)",
					       arg);
		return 0;
	}
	return 0;
}

static int parse_run(int argc, char **argv, struct run_opts *o)
{
	static const struct option opts[] = {
		{"rootfs", required_argument, NULL, 'r'},
		{"workspace", required_argument, NULL, 'w'},
		{"bind", required_argument, NULL, 'b'},
		{"cwd", required_argument, NULL, 'C'},
		{"env", required_argument, NULL, 'e'},
		{"user", required_argument, NULL, 'u'},
		{"hostname", required_argument, NULL, 'H'},
		{"net", required_argument, NULL, 'n'},
		{"cpus", required_argument, NULL, 'c'},
		{"memory", required_argument, NULL, 'm'},
		{"pids", required_argument, NULL, 'p'},
		{"disk", required_argument, NULL, 'd'},
		{"timeout", required_argument, NULL, 't'},
		{"keep", no_argument, NULL, 'k'},
		{"state-dir", required_argument, NULL, 's'},
		{"cgroup-parent", required_argument, NULL, 'g'},
		{"cgroup-root", required_argument, NULL, 'G'},
		{"init", required_argument, NULL, 'i'},
		{"output", required_argument, NULL, 'o'},
		{"local", no_argument, NULL, 'L'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	const char *cmd = "sandbox run";
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+o:h", opts, NULL)) != -1) {
		struct kiln_err err = {0};
		switch (c) {
		case 'h':
			if (parse_quiet)
				return -2;
			fputs(cmd_sandbox_help, stdout);
			return -1;
		case 'r':
			o->cfg.rootfs = optarg;
			break;
		case 'w':
			o->cfg.workspace = optarg;
			break;
		case 'b':
			if (o->cfg.n_binds >= SANDBOX_MAX_BINDS)
				return usage(cmd, "at most %d --bind", SANDBOX_MAX_BINDS);
			if (sandbox_bind_parse(optarg, &o->binds[o->cfg.n_binds], &err) < 0)
				return usage(cmd, "%s", err.msg);
			o->bind_copies[o->cfg.n_binds] = o->binds[o->cfg.n_binds].storage;
			o->cfg.n_binds++;
			break;
		case 'C':
			if (optarg[0] != '/')
				return usage(cmd, "--cwd '%s' must be an absolute path", optarg);
			o->cwd = optarg;
			break;
		case 'e': {
			if (!optarg[0] || optarg[0] == '=')
				return usage(cmd, "--env '%s': expected KEY=VALUE or KEY", optarg);
			char *entry;
			if (strchr(optarg, '=')) {
				entry = xstrdup(optarg);
			} else {
				const char *val = run_getenv(optarg);
				if (!val)
					return usage(cmd, "--env '%s': not set in kiln's environment",
							       optarg);
				entry = xasprintf("%s=%s", optarg, val);
			}
			o->env = xrealloc(o->env, (o->n_env + 2) * sizeof(char *));
			o->env[o->n_env++] = entry;
			o->env[o->n_env] = NULL;
			break;
		}
		case 'u':
			if (parse_user(optarg, &o->uid, &o->gid) < 0)
				return usage(cmd, "--user '%s': expected UID[:GID] (0-65535)",
						       optarg);
			break;
		case 'H':
		case 'n':
		case 'c':
		case 'm':
		case 'p':
		case 'd':
			if (shape_opt(c, optarg, &o->cfg, cmd) < 0)
				return -2;
			break;
		case 't':
			if (parse_duration_ms(optarg, &o->timeout_ms) < 0 || o->timeout_ms == 0)
				return usage(cmd, "--timeout '%s': expected a duration like 30s "
							    "or 10m",
						       optarg);
			break;
		case 'k':
			o->cfg.keep = true;
			break;
		case 'L':
			o->local = true;
			break;
		case 's':
			o->cfg.state_dir = optarg;
			break;
		case 'g':
			o->cfg.cgroup_parent = optarg;
			break;
		case 'G':
			o->cfg.cgroup_root = optarg;
			break;
		case 'i':
			o->cfg.init_path = optarg;
			break;
		case 'o':
			if (streq(optarg, "json"))
				o->json = true;
			else if (!streq(optarg, "text"))
				return usage(cmd, "-o '%s': use text or json", optarg);
			break;
		default:
			(void)bad_option(cmd, argv);
			return -2;
		}
	}
	if (optind >= argc)
		return usage(cmd, "no command given (kiln sandbox run [OPTIONS] -- CMD)");
	o->cfg.binds = o->binds;
	if (o->cfg.keep && o->cfg.limits.disk_bytes)
		return usage(cmd, "--keep puts the writable layer on disk, where --disk "
					    "cannot limit it; use one or the other");
	/* Relative host paths are the caller's: a server must get them
	 * absolute. */
	char here[PATH_MAX];
	const char *base = parse_cwd ? parse_cwd : getcwd(here, sizeof(here));
	const char *r = o->cfg.rootfs;
	if (base && r && !streq(r, "host") && r[0] != '/') {
		o->rootfs_abs = path_join(base, r);
		o->cfg.rootfs = o->rootfs_abs;
	}
	if (base && o->cfg.workspace && o->cfg.workspace[0] != '/') {
		o->workspace_abs = path_join(base, o->cfg.workspace);
		o->cfg.workspace = o->workspace_abs;
	}
	for (size_t i = 0; base && i < o->cfg.n_binds; i++)
		if (o->binds[i].src[0] != '/') {
			o->bind_abs[i] = path_join(base, o->binds[i].src);
			o->binds[i].src = o->bind_abs[i];
		}
	return optind;
}

static void json_u64_or_null(struct buf *b, const char *key, bool have, uint64_t v)
{
	if (have)
		buf_printf(b, ",\"%s\":%" PRIu64, key, v);
	else
		buf_printf(b, ",\"%s\":null", key);
}

static void print_json(int fd, const struct sandbox_result *r, const char *upper, bool served)
{
	struct buf b = BUF_INIT;
	const struct sandbox_exit *e = &r->exit;
	buf_puts(&b, "{\"id\":");
	buf_put_json_string(&b, r->id, strlen(r->id));
	if (r->started && e->exit_code >= 0)
		buf_printf(&b, ",\"exit_code\":%d,\"signal\":null", e->exit_code);
	else if (r->started)
		buf_printf(&b, ",\"exit_code\":null,\"signal\":\"SIG%s\"",
			   sigabbrev_np(e->signal) ? sigabbrev_np(e->signal) : "?");
	else
		buf_puts(&b, ",\"exit_code\":null,\"signal\":null");
	buf_printf(&b,
		   ",\"status\":%d,\"oom_killed\":%s,\"timed_out\":%s,\"cancelled\":%s,"
		   "\"wall_ms\":%.3f",
		   r->started ? sandbox_exit_status(e) : EXIT_SETUP, e->oom_killed ? "true" : "false",
		   e->timed_out ? "true" : "false", r->cancelled ? "true" : "false",
		   (double)e->wall_ns / 1e6);
	/* cpu: the whole sandbox from the cgroup where there is one. */
	const struct sandbox_stats *st = &r->stats;
	bool cg_cpu = r->have_stats && st->have_cpu;
	uint64_t cu = cg_cpu ? st->cpu_user_ns : e->cpu_user_ns;
	uint64_t cs = cg_cpu ? st->cpu_system_ns : e->cpu_system_ns;
	buf_printf(&b, ",\"cpu_user_ms\":%.3f,\"cpu_system_ms\":%.3f", (double)cu / 1e6,
		   (double)cs / 1e6);
	json_u64_or_null(&b, "memory_peak_bytes", r->have_stats && st->have_memory,
			 st->memory_peak_bytes);
	json_u64_or_null(&b, "pids_peak", r->have_stats && st->have_pids, st->pids_peak);
	json_u64_or_null(&b, "io_read_bytes", r->have_stats && st->have_io, st->io_read_bytes);
	json_u64_or_null(&b, "io_write_bytes", r->have_stats && st->have_io, st->io_write_bytes);
	json_u64_or_null(&b, "oom_kills", r->have_stats && st->have_memory, st->oom_kills);
	buf_printf(&b, ",\"cgroup\":\"%s\",\"rootless\":%s,\"idmap\":%s,\"served\":%s,\"warm\":%s",
		   r->cgroup ? sandbox_cgroup_layout_name(r->layout) : "none",
		   r->rootless ? "true" : "false", r->idmap ? "true" : "false",
		   served ? "true" : "false", r->warm ? "true" : "false");
	buf_puts(&b, ",\"upper_dir\":");
	if (upper)
		buf_put_json_string(&b, upper, strlen(upper));
	else
		buf_puts(&b, "null");
	buf_puts(&b, ",\"warnings\":[");
	if (r->warning)
		buf_put_json_string(&b, r->warning, strlen(r->warning));
	buf_puts(&b, "]}\n");
	if (fd == STDOUT_FILENO)
		fflush(stdout);
	if (fd >= 0)
		(void)write_all(fd, b.data, b.len);
	buf_release(&b);
}

/* A cancelling signal from the signalfd: its number, or 0. */
static int read_signal(int sfd, void *arg)
{
	(void)arg;
	struct signalfd_siginfo si;
	return read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si) ? (int)si.ssi_signo : 0;
}

/* Runs the command in a sandbox of this process; *upper: the kept layer. */
static void run_local(const struct run_opts *o, char **argv, int sfd, struct sandbox_result *r,
		      char **upper)
{
	struct kiln_err err = {0};
	struct sandbox *sb = NULL;
	if (sandbox_create(&o->cfg, &sb, &err) < 0) {
		r->setup_failed = true;
		r->err_code = err.code;
		r->err_msg = xstrdup(err.msg);
		return;
	}
	sandbox_result_set_info(r, sb);
	struct sandbox_info info;
	sandbox_info(sb, &info);
	/* sandbox_destroy() frees what info points to. */
	*upper = info.upper_dir ? xstrdup(info.upper_dir) : NULL;

	struct sandbox_exec ex = {.argv = argv, .envp = o->env, .cwd = o->cwd,
				  .stdin_fd = STDIN_FILENO, .stdout_fd = STDOUT_FILENO,
				  .stderr_fd = STDERR_FILENO, .uid = o->uid, .gid = o->gid};
	struct sandbox_process *p = NULL;
	int er = sandbox_exec(sb, &ex, &p, &err);
	if (er >= 0) {
		r->started = true;
		sandbox_run_wait(sb, p, o->timeout_ms, sfd, read_signal, NULL, r);
		sandbox_process_free(p);
	} else {
		r->err_code = er;
		r->err_msg = xstrdup(err.msg);
	}
	/* The final accounting is only shown with -o json (reading it costs
	 * a dozen cgroup files). */
	int dr = sandbox_destroy(sb, o->json ? &r->stats : NULL);
	r->have_stats = o->json;
	if (dr < 0)
		log_warn("sandbox teardown incomplete (the next run cleans up) id=%s error=\"%s\"",
			 r->id, strerror(-dr));
}

/* Whether the options leave the run to a server (see the help text). */
static bool servable(const struct run_opts *o)
{
	const struct sandbox_config *c = &o->cfg;
	return !o->local && !c->keep && !c->cgroup_parent && !c->cgroup_root && !c->init_path;
}

static int send_cancel(int sock, int sig)
{
	char msg[32];
	int n = snprintf(msg, sizeof(msg), "{\"cancel\":%d}", sig);
	return sandbox_frame_send(sock, msg, (size_t)n, NULL, 0);
}

/* What a server is asked to run for o (stdio: the caller's). */
static struct sandbox_request request_of(const struct run_opts *o, char **argv)
{
	return (struct sandbox_request){.cfg = o->cfg, .argv = argv, .envp = o->env,
					.cwd = o->cwd, .uid = o->uid, .gid = o->gid,
					.timeout_ms = o->timeout_ms, .want_stats = o->json};
}

/* Hands the command to the server on sock and waits for its result. */
static void run_remote(int sock, const struct run_opts *o, char **argv, int sfd,
		       struct sandbox_result *r)
{
	struct sandbox_request req = request_of(o, argv);
	int fds[3];
	size_t nfds = 0;
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) >= 0) {
			req.stdio |= 1u << fd;
			fds[nfds++] = fd;
		}
	struct buf b = BUF_INIT;
	struct kiln_err err = {0};
	sandbox_request_encode(&req, &b);
	int rr = sandbox_frame_send(sock, b.data, b.len, fds, nfds);
	if (rr < 0) {
		kiln_err_set(&err, rr, "sending the command to kiln sandbox serve: %s", strerror(-rr));
		goto fail;
	}
	for (;;) {
		struct pollfd pfd[2] = {{.fd = sock, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
		int n = poll(pfd, sfd >= 0 ? 2 : 1, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			kiln_err_set(&err, -errno, "poll: %s", strerror(errno));
			goto fail;
		}
		if (sfd >= 0 && pfd[1].revents) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
				(void)send_cancel(sock, (int)si.ssi_signo);
		}
		if (pfd[0].revents) {
			size_t nf;
			rr = sandbox_frame_recv(sock, &b, NULL, 0, &nf);
			if (rr <= 0) {
				kiln_err_set(&err, rr ? rr : -ECONNRESET,
					     "kiln sandbox serve closed the connection without a result");
				goto fail;
			}
			if (sandbox_result_decode(b.data, b.len, r, &err) < 0) {
				kiln_err_prefix(&err, "the result from kiln sandbox serve");
				goto fail;
			}
			break;
		}
	}
	buf_release(&b);
	return;
fail:
	buf_release(&b);
	*r = (struct sandbox_result){.exit = {.exit_code = -1}, .setup_failed = true,
				     .err_code = err.code, .err_msg = xstrdup(err.msg)};
}

/*
 * Reports r as `kiln sandbox run` does: -o json on out_fd, failures on
 * err_fd (-1: none). Returns the exit status.
 */
static int report(const struct run_opts *o, const struct sandbox_result *r, const char *upper,
		  bool served, int out_fd, int err_fd)
{
	const char *cmd = "sandbox run";
	if (r->setup_failed) {
		cli_fail_fd(err_fd, cmd, "%s",
			    r->err_msg ? r->err_msg : "the sandbox could not be set up");
		return EXIT_SETUP;
	}
	if (!r->started) {
		int er = r->err_code;
		cli_fail_fd(err_fd, cmd, "%s", r->err_msg ? r->err_msg : strerror(-er));
		if (o->json)
			print_json(out_fd, r, upper, served);
		return er == -ENOENT ? EXIT_NOTFOUND : er == -EACCES || er == -ENOEXEC ? EXIT_NOEXEC
										: EXIT_SETUP;
	}
	if (o->json)
		print_json(out_fd, r, upper, served);
	if (r->exit.timed_out) {
		char d[32];
		format_duration_ms(o->timeout_ms, d);
		if (!o->json)
			cli_fail_fd(err_fd, cmd, "timed out after %s; the sandbox was killed", d);
		return EXIT_TIMEOUT;
	}
	if (r->cancelled) {
		if (!o->json)
			cli_fail_fd(err_fd, cmd, "interrupted by SIG%s; the sandbox was killed",
				    sigabbrev_np(r->cancel_signal) ? sigabbrev_np(r->cancel_signal)
								   : "?");
		return 128 + r->cancel_signal;
	}
	if (r->exit.oom_killed && !o->json)
		cli_fail_fd(err_fd, cmd, "killed: out of memory (the sandbox's memory limit)");
	return sandbox_exit_status(&r->exit);
}

/* Frees what parse_run() and add_default_env() put in o. */
static void run_opts_free(struct run_opts *o)
{
	for (size_t i = 0; i < o->cfg.n_binds; i++)
		free(o->bind_copies[i]);
	for (size_t i = 0; i < o->n_env; i++)
		free(o->env[i]);
	free(o->env);
	free(o->rootfs_abs);
	free(o->workspace_abs);
	for (size_t i = 0; i < SANDBOX_MAX_BINDS; i++)
		free(o->bind_abs[i]);
	free(o->state_abs);
}

/* Default environment entries the caller did not set. */
static void add_default_env(struct run_opts *o)
{
	if (!env_has(o->env, o->n_env, "PATH")) {
		o->env = xrealloc(o->env, (o->n_env + 2) * sizeof(char *));
		o->env[o->n_env++] =
			xstrdup("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
		o->env[o->n_env] = NULL;
	}
	if (!env_has(o->env, o->n_env, "HOME")) {
		o->env = xrealloc(o->env, (o->n_env + 2) * sizeof(char *));
		o->env[o->n_env++] = xstrdup(o->uid == 0 ? "HOME=/root" : "HOME=/");
		o->env[o->n_env] = NULL;
	}
}

static int run_main(int argc, char **argv)
{
	struct run_opts o = {.cfg = {.net = SANDBOX_NET_NONE}};
	struct sandbox_result r = {.exit = {.exit_code = -1}};
	char *upper = NULL;
	int first = parse_run(argc, argv, &o);
	int ret;
	if (first < 0) {
		ret = first == -1 ? EXIT_OK : EXIT_USAGE;
		goto out;
	}
	add_default_env(&o);

	/* Block the cancelling signals before anything runs, then watch them. */
	sigset_t mask, oldmask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &mask, &oldmask);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

	int sock = servable(&o) ? sandbox_remote_connect(o.cfg.state_dir) : -1;
	bool served = sock >= 0;
	if (sock >= 0) {
		run_remote(sock, &o, argv + first, sfd, &r);
		close(sock);
	} else {
		run_local(&o, argv + first, sfd, &r, &upper);
	}

	ret = report(&o, &r, upper, served, STDOUT_FILENO, STDERR_FILENO);
	if (sfd >= 0)
		close(sfd);
	pthread_sigmask(SIG_SETMASK, &oldmask, NULL);
out:
	sandbox_result_free(&r);
	free(upper);
	run_opts_free(&o);
	return ret;
}

/* ---- argv requests: a server parsing and reporting for the front ---------- */

/* parse of sandbox_argv_handler: the same parser, the client's env and cwd. */
static int served_parse(void *arg, char **argv, size_t argc, char **envp, const char *cwd,
			struct sandbox_request *req, void **ctx)
{
	(void)arg;
	struct run_opts *o = xcalloc(1, sizeof(*o));
	o->cfg.net = SANDBOX_NET_NONE;
	pthread_mutex_lock(&parse_lock);
	parse_quiet = true;
	parse_env = envp;
	parse_cwd = cwd;
	optind = 0;
	int first = argc <= INT_MAX ? parse_run((int)argc, argv, o) : -2;
	parse_quiet = false;
	parse_env = NULL;
	parse_cwd = NULL;
	pthread_mutex_unlock(&parse_lock);
	if (first < 0 || !servable(o)) {
		run_opts_free(o);
		free(o);
		return 0;
	}
	add_default_env(o);
	/* The state dir it names, for the server to compare with its own. */
	const char *sd = o->cfg.state_dir;
	if (!sd)
		o->state_abs = sandbox_state_dir_for(geteuid(), env_lookup(envp, "XDG_RUNTIME_DIR"));
	else
		o->state_abs = sd[0] == '/' ? xstrdup(sd) : path_join(cwd, sd);
	o->cfg.state_dir = o->state_abs;
	*req = request_of(o, argv + first);
	*ctx = o;
	return 1;
}

/* finish of sandbox_argv_handler. */
static int served_finish(void *arg, void *ctx, const struct sandbox_result *r, int out_fd,
			 int err_fd)
{
	(void)arg;
	struct run_opts *o = ctx;
	int status = r ? report(o, r, NULL, true, out_fd, err_fd) : EXIT_SETUP;
	run_opts_free(o);
	free(o);
	return status;
}

/* ---- serve ------------------------------------------------------------------ */

static void serve_ready(const char *path, void *arg)
{
	const struct sandbox_server_config *c = arg;
	char b[256];
	log_info("kiln sandbox serve listening socket=%s warm=%u", log_field(path, b, sizeof(b)),
		 c->warm);
}

static int serve_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"warm", required_argument, NULL, 'W'},
		{"rootfs", required_argument, NULL, 'r'},
		{"hostname", required_argument, NULL, 'H'},
		{"net", required_argument, NULL, 'n'},
		{"cpus", required_argument, NULL, 'c'},
		{"memory", required_argument, NULL, 'm'},
		{"pids", required_argument, NULL, 'p'},
		{"disk", required_argument, NULL, 'd'},
		{"state-dir", required_argument, NULL, 's'},
		{"cgroup-parent", required_argument, NULL, 'g'},
		{"cgroup-root", required_argument, NULL, 'G'},
		{"init", required_argument, NULL, 'i'},
		{"log-level", required_argument, NULL, 'l'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	const char *cmd = "sandbox serve";
	struct sandbox_server_config cfg = {.warm = 2, .shape = {.net = SANDBOX_NET_NONE},
					    .argv = {.parse = served_parse,
						     .finish = served_finish}};
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		int64_t v;
		enum log_level lvl;
		switch (c) {
		case 'h':
			fputs(cmd_sandbox_help, stdout);
			return EXIT_OK;
		case 'W':
			if (parse_int64(optarg, 0, 64, &v) < 0)
				return cli_usage_error(cmd, "--warm '%s': expected 0 to 64", optarg);
			cfg.warm = (unsigned)v;
			break;
		case 'r':
			cfg.shape.rootfs = optarg;
			break;
		case 'H':
		case 'n':
		case 'c':
		case 'm':
		case 'p':
		case 'd':
			if (shape_opt(c, optarg, &cfg.shape, cmd) < 0)
				return EXIT_USAGE;
			break;
		case 's':
			cfg.state_dir = optarg;
			break;
		case 'g':
			cfg.cgroup_parent = optarg;
			break;
		case 'G':
			cfg.cgroup_root = optarg;
			break;
		case 'i':
			cfg.init_path = optarg;
			break;
		case 'l':
			if (log_level_from_string(optarg, &lvl) < 0)
				return cli_usage_error(cmd, "--log-level '%s': use error, warn, info or "
							    "debug",
						       optarg);
			log_set_level(lvl);
			break;
		default:
			return bad_option(cmd, argv);
		}
	}
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	if (cfg.shape.rootfs && !streq(cfg.shape.rootfs, "host") && cfg.shape.rootfs[0] != '/')
		return cli_usage_error(cmd, "--rootfs '%s' must be host or an absolute path",
				       cfg.shape.rootfs);
	sigset_t mask, oldmask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &mask, &oldmask);
	sigdelset(&mask, SIGPIPE);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		return cli_fail(cmd, "signalfd: %s", strerror(errno));
	struct kiln_err err = {0};
	int r = sandbox_serve(&cfg, sfd, serve_ready, &cfg, &err);
	/* Take the signal that stopped us, or unblocking would deliver it. */
	struct signalfd_siginfo si;
	while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		;
	close(sfd);
	pthread_sigmask(SIG_SETMASK, &oldmask, NULL);
	if (r < 0)
		return cli_fail(cmd, "%s", err.msg);
	log_info("kiln sandbox serve stopped");
	return EXIT_OK;
}

/* ---- status ----------------------------------------------------------------- */

static int status_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"state-dir", required_argument, NULL, 's'},
		{"output", required_argument, NULL, 'o'},
		{"wait", required_argument, NULL, 'w'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	const char *cmd = "sandbox status", *dir = NULL;
	bool json = false;
	uint64_t wait_ms = 0;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(cmd_sandbox_help, stdout);
			return EXIT_OK;
		case 's':
			dir = optarg;
			break;
		case 'o':
			if (!streq(optarg, "json") && !streq(optarg, "text"))
				return cli_usage_error(cmd, "-o '%s': use text or json", optarg);
			json = streq(optarg, "json");
			break;
		case 'w':
			if (parse_duration_ms(optarg, &wait_ms) < 0 || wait_ms == 0)
				return cli_usage_error(cmd, "--wait '%s': expected a duration like 10s",
						       optarg);
			break;
		default:
			return bad_option(cmd, argv);
		}
	}
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	uint64_t deadline = now_mono_ns() + wait_ms * NSEC_PER_MSEC;
	struct sandbox_server_status st;
	for (;;) {
		int sock = sandbox_remote_connect(dir);
		if (sock < 0) {
			_cleanup_free_ char *def = dir ? NULL : sandbox_default_state_dir();
			return cli_fail(cmd, "no kiln sandbox serve runs for the state dir '%s' (%s)",
					dir ? dir : def, strerror(-sock));
		}
		struct kiln_err err = {0};
		int r = sandbox_remote_status(sock, &st, &err);
		close(sock);
		if (r < 0)
			return cli_fail(cmd, "%s", err.msg);
		bool settled = st.warm_ready >= st.warm_want && !st.teardowns && !st.active;
		if (!wait_ms || settled)
			break;
		if (now_mono_ns() >= deadline)
			return cli_fail(cmd, "the server did not settle within the --wait time "
					     "(%u of %u warm, %u teardowns, %u running)",
					st.warm_ready, st.warm_want, st.teardowns, st.active);
		struct timespec ts = {0, 2 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	if (json)
		printf("{\"warm_ready\":%u,\"warm_want\":%u,\"teardowns\":%u,\"running\":%u}\n",
		       st.warm_ready, st.warm_want, st.teardowns, st.active);
	else
		printf("warm sandboxes   %u of %u ready\nteardowns        %u pending\n"
		       "running          %u\n",
		       st.warm_ready, st.warm_want, st.teardowns, st.active);
	return EXIT_OK;
}

/* ---- probe, cleanup --------------------------------------------------------- */

static const char *provider(int p)
{
	return p == 2 ? "v2" : p == 1 ? "v1" : "none";
}

static int probe_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"output", required_argument, NULL, 'o'}, {"state-dir", required_argument, NULL, 's'},
		{"rootfs", required_argument, NULL, 'r'}, {"init", required_argument, NULL, 'i'},
		{"help", no_argument, NULL, 'h'},         {0},
	};
	struct sandbox_config cfg = {0};
	bool json = false;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(cmd_sandbox_help, stdout);
			return EXIT_OK;
		case 'o':
			if (!streq(optarg, "json") && !streq(optarg, "text"))
				return cli_usage_error("sandbox probe", "-o '%s': use text or json", optarg);
			json = streq(optarg, "json");
			break;
		case 's':
			cfg.state_dir = optarg;
			break;
		case 'r':
			cfg.rootfs = optarg;
			break;
		case 'i':
			cfg.init_path = optarg;
			break;
		default:
			return cli_usage_error("sandbox probe", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error("sandbox probe", "unexpected argument '%s'", argv[optind]);
	struct sandbox_probe p;
	sandbox_probe(&cfg, &p);
	if (json) {
		struct buf b = BUF_INIT;
		buf_printf(&b,
			   "{\"cgroup\":\"%s\",\"cpu\":\"%s\",\"memory\":\"%s\",\"pids\":\"%s\","
			   "\"io\":\"%s\",\"cgroup_writable\":%s,\"rootless\":%s,\"userns\":%s,"
			   "\"overlay\":%s,\"idmap\":%s,\"error\":",
			   sandbox_cgroup_layout_name(p.layout), provider(p.cpu), provider(p.memory),
			   provider(p.pids), provider(p.io), p.cgroup_writable ? "true" : "false",
			   p.rootless ? "true" : "false", p.userns ? "true" : "false",
			   p.overlay ? "true" : "false", p.idmap ? "true" : "false");
		if (p.error[0])
			buf_put_json_string(&b, p.error, strlen(p.error));
		else
			buf_puts(&b, "null");
		buf_puts(&b, "}\n");
		fputs(b.data, stdout);
		buf_release(&b);
	} else {
		printf("cgroup layout    %s (cpu %s, memory %s, pids %s, io %s)\n",
		       sandbox_cgroup_layout_name(p.layout), provider(p.cpu), provider(p.memory),
		       provider(p.pids), provider(p.io));
		printf("cgroup writable  %s\n", p.cgroup_writable ? "yes" : "no");
		printf("rootless         %s\n", p.rootless ? "yes" : "no");
		printf("sandbox works    %s%s%s\n", p.userns ? "yes" : "no", p.error[0] ? ": " : "",
		       p.error);
		printf("overlay root     %s\n", p.overlay ? "yes" : "no");
		printf("idmapped mounts  %s\n", p.idmap ? "yes" : "no");
	}
	return p.userns ? EXIT_OK : EXIT_FAIL;
}

static int cleanup_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"state-dir", required_argument, NULL, 's'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	const char *dir = NULL;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(cmd_sandbox_help, stdout);
			return EXIT_OK;
		}
		if (c != 's')
			return cli_usage_error("sandbox cleanup", "unknown option '%s'",
					       argv[optind - 1]);
		dir = optarg;
	}
	if (optind < argc)
		return cli_usage_error("sandbox cleanup", "unexpected argument '%s'", argv[optind]);
	int n = sandbox_cleanup_leftovers(dir, NULL);
	if (n < 0)
		return cli_fail("sandbox cleanup", "%s", strerror(-n));
	printf("removed %d leftover sandbox%s\n", n, n == 1 ? "" : "es");
	return EXIT_OK;
}

int cmd_sandbox(int argc, char **argv)
{
	if (argc < 2)
		return cli_usage_error("sandbox", "expected a subcommand: run, serve, status, probe or cleanup");
	if (cli_is_help(argv[1])) {
		fputs(cmd_sandbox_help, stdout);
		return EXIT_OK;
	}
	if (streq(argv[1], "run"))
		return run_main(argc - 1, argv + 1);
	if (streq(argv[1], "serve"))
		return serve_main(argc - 1, argv + 1);
	if (streq(argv[1], "status"))
		return status_main(argc - 1, argv + 1);
	if (streq(argv[1], "probe"))
		return probe_main(argc - 1, argv + 1);
	if (streq(argv[1], "cleanup"))
		return cleanup_main(argc - 1, argv + 1);
	return cli_usage_error("sandbox", "unknown subcommand '%s' (use run, serve, status, probe or cleanup)",
			       argv[1]);
}
