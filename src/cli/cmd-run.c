/*
 * cmd-run: `kiln run -f job.yaml` and `kiln run [OPTIONS] -- CMD ARGS` —
 * submit, follow the log to the terminal, exit with the job's exit code.
 *
 * With a server configured (--server, KILN_ADDR, the config `kiln up`
 * writes, or a server answering on the default address) the job goes there.
 * Otherwise it runs embedded: a server and an agent in this process on a
 * temporary state directory, the workspace seeded with the current
 * directory (the files git does not ignore, in a git work tree), and the
 * artifacts downloaded into ./kiln-artifacts — as `act` runs a workflow
 * locally, but in a sandbox.
 */
#include "local.h"
#include "output.h"

#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

enum {
	RUN_EXIT_TIMED_OUT = 124,
	RUN_EXIT_KILN = 125,
	RUN_EXIT_CANCELLED = 130,
};

const char cmd_run_help[] =
	"usage: kiln run -f FILE [OPTIONS]\n"
	"       kiln run [OPTIONS] [JOB OPTIONS] -- CMD [ARGS...]\n"
	"\n"
	"Submits a job (a spec file, or CMD as a one-step job), follows its log to the\n"
	"terminal and exits with the job's exit code. Ctrl-C cancels the job.\n"
	"\n"
	"Where it runs: the configured server (--server, $KILN_ADDR, the config file\n"
	"kiln up writes, or a server answering on 127.0.0.1:7700); if there is none,\n"
	"embedded: a server and an agent in this process on a temporary state\n"
	"directory, with the current directory copied into the job's workspace (in a\n"
	"git work tree: the files git does not ignore) and the artifacts downloaded\n"
	"into ./kiln-artifacts.\n"
	"\n"
	"options:\n"
	"  -f, --file FILE        the job spec (YAML or JSON; '-' reads stdin)\n"
	"  --server URL           the server (else $KILN_ADDR, the config file)\n"
	"  --token TOKEN          API token (else $KILN_TOKEN or the config file)\n"
	"  --embedded             run embedded even if a server is configured\n"
	"  --workdir DIR          embedded: the directory copied into the workspace (.)\n"
	"  --artifacts-dir DIR    embedded: where artifacts are saved (./kiln-artifacts)\n"
	"\n"
	"job options (with CMD):\n"
	"  --name NAME            the job's name (default: the command line)\n"
	"  --image IMAGE          root filesystem (default: the agent host's)\n"
	"  --labels L1,L2         runs-on labels\n"
	"  --cpus N, --memory SIZE, --disk SIZE, --pids N   resource limits\n"
	"  --timeout DURATION     the job's time limit (default 1h)\n"
	"  --network MODE         none (default), egress or host\n"
	"  --env KEY=VALUE        an environment variable (repeatable)\n"
	"  --artifact PATH        keep PATH (a file, directory or glob; repeatable)\n"
	"\n"
	"exit codes: 0 the job succeeded; N the exit status of the step that failed\n"
	"(128+S when killed by signal S); 124 timed out; 125 kiln could not run it to\n"
	"an end (server unreachable, the job could not start, lost); 130 cancelled;\n"
	"2 usage error or invalid spec. docs/cli.md explains the choice.\n";

enum {
	OPT_SERVER = 256,
	OPT_TOKEN,
	OPT_EMBEDDED,
	OPT_WORKDIR,
	OPT_ARTS_DIR,
	OPT_NAME,
	OPT_IMAGE,
	OPT_LABELS,
	OPT_CPUS,
	OPT_MEMORY,
	OPT_DISK,
	OPT_PIDS,
	OPT_TIMEOUT,
	OPT_NETWORK,
	OPT_ENV,
	OPT_ARTIFACT,
};

struct run_opts {
	const char *file, *server, *token, *workdir, *arts_dir;
	bool embedded;
	json_t *job; /* job options given on the command line */
	bool job_opts;
	char **cmd;
	int n_cmd;
};

/* ---- building a spec from a command --------------------------------------- */

static void shell_quote(struct buf *b, const char *s)
{
	buf_putc(b, '\'');
	for (; *s; s++) {
		if (*s == '\'')
			buf_puts(b, "'\\''");
		else
			buf_putc(b, *s);
	}
	buf_putc(b, '\'');
}

static char *spec_for_command(struct run_opts *o)
{
	struct buf run = BUF_INIT, name = BUF_INIT;
	buf_puts(&run, "exec");
	for (int i = 0; i < o->n_cmd; i++) {
		buf_putc(&run, ' ');
		shell_quote(&run, o->cmd[i]);
		if (name.len < 100)
			buf_printf(&name, "%s%s", i ? " " : "", o->cmd[i]);
	}
	for (size_t i = 0; i < name.len; i++)
		if ((unsigned char)name.data[i] < 0x20)
			name.data[i] = ' ';
	if (name.len > 100) {
		name.data[100] = '\0';
		name.len = 100;
	}
	json_t *job = o->job;
	if (!json_object_get(job, "name"))
		json_object_set_new(job, "name", json_stringn(name.data, name.len));
	json_object_set_new(job, "steps",
			    json_pack("[{s:s,s:s%,s:s}]", "name", "run", "run", run.data, run.len,
				      "shell", "sh"));
	buf_release(&run);
	buf_release(&name);
	return json_dumps(job, JSON_COMPACT);
}

static int job_opt(struct run_opts *o, int c, const char *arg)
{
	json_t *job = o->job;
	json_t *res = json_object_get(job, "resources");
	if (!res && (c == OPT_CPUS || c == OPT_MEMORY || c == OPT_DISK || c == OPT_PIDS)) {
		res = json_object();
		json_object_set_new(job, "resources", res);
	}
	int64_t v;
	char *end = NULL;
	o->job_opts = true;
	switch (c) {
	case OPT_NAME: json_object_set_new(job, "name", json_string(arg)); break;
	case OPT_IMAGE: json_object_set_new(job, "image", json_string(arg)); break;
	case OPT_LABELS: {
		json_t *l = json_array();
		_cleanup_free_ char *copy = xstrdup(arg);
		char *save = NULL;
		for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
			json_array_append_new(l, json_string(t));
		json_object_set_new(job, "runs-on", l);
		break;
	}
	case OPT_CPUS: {
		double d = strtod(arg, &end);
		if (!end || *end || end == arg)
			return cli_usage_error("run", "--cpus: '%s' is not a number (e.g. 2 or 0.5)", arg);
		json_object_set_new(res, "cpus", json_real(d));
		break;
	}
	case OPT_MEMORY: json_object_set_new(res, "memory", json_string(arg)); break;
	case OPT_DISK: json_object_set_new(res, "disk", json_string(arg)); break;
	case OPT_PIDS:
		if (parse_int64(arg, 0, 4194304, &v) < 0)
			return cli_usage_error("run", "--pids: '%s' is not a number", arg);
		json_object_set_new(res, "pids", json_integer(v));
		break;
	case OPT_TIMEOUT: json_object_set_new(job, "timeout", json_string(arg)); break;
	case OPT_NETWORK: json_object_set_new(job, "network", json_string(arg)); break;
	case OPT_ENV: {
		const char *eq = strchr(arg, '=');
		if (!eq || eq == arg)
			return cli_usage_error("run", "--env: expected KEY=VALUE, got '%s'", arg);
		json_t *env = json_object_get(job, "env");
		if (!env) {
			env = json_object();
			json_object_set_new(job, "env", env);
		}
		_cleanup_free_ char *key = xstrndup(arg, (size_t)(eq - arg));
		json_object_set_new(env, key, json_string(eq + 1));
		break;
	}
	case OPT_ARTIFACT: {
		json_t *a = json_object_get(job, "artifacts");
		if (!a) {
			a = json_array();
			json_object_set_new(job, "artifacts", a);
		}
		json_array_append_new(a, json_string(arg));
		break;
	}
	}
	return 0;
}

static int parse(int argc, char **argv, struct run_opts *o)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"file", required_argument, NULL, 'f'},
		{"server", required_argument, NULL, OPT_SERVER},
		{"token", required_argument, NULL, OPT_TOKEN},
		{"embedded", no_argument, NULL, OPT_EMBEDDED},
		{"workdir", required_argument, NULL, OPT_WORKDIR},
		{"artifacts-dir", required_argument, NULL, OPT_ARTS_DIR},
		{"name", required_argument, NULL, OPT_NAME},
		{"image", required_argument, NULL, OPT_IMAGE},
		{"labels", required_argument, NULL, OPT_LABELS},
		{"cpus", required_argument, NULL, OPT_CPUS},
		{"memory", required_argument, NULL, OPT_MEMORY},
		{"disk", required_argument, NULL, OPT_DISK},
		{"pids", required_argument, NULL, OPT_PIDS},
		{"timeout", required_argument, NULL, OPT_TIMEOUT},
		{"network", required_argument, NULL, OPT_NETWORK},
		{"env", required_argument, NULL, OPT_ENV},
		{"artifact", required_argument, NULL, OPT_ARTIFACT},
		{0},
	};
	int c, r;
	/* '+': options stop at the command (its own options are its own). */
	while ((c = getopt_long(argc, argv, "+hf:", opts, NULL)) != -1) {
		switch (c) {
		case 'h': cli_print_help(cli_find_command("run")); return -1;
		case 'f': o->file = optarg; break;
		case OPT_SERVER: o->server = optarg; break;
		case OPT_TOKEN: o->token = optarg; break;
		case OPT_EMBEDDED: o->embedded = true; break;
		case OPT_WORKDIR: o->workdir = optarg; break;
		case OPT_ARTS_DIR: o->arts_dir = optarg; break;
		case '?': return cli_usage_error("run", "unknown option");
		default:
			if ((r = job_opt(o, c, optarg)))
				return r;
		}
	}
	o->cmd = argv + optind;
	o->n_cmd = argc - optind;
	if (o->file && o->n_cmd)
		return cli_usage_error("run", "give either -f FILE or a command, not both");
	if (!o->file && !o->n_cmd)
		return cli_usage_error("run", "what to run? -f FILE, or a command after --");
	if (o->file && o->job_opts)
		return cli_usage_error("run", "job options (--image, --cpus, ...) go with a command; "
					      "with -f they are in the spec");
	if (o->server && o->embedded)
		return cli_usage_error("run", "--server and --embedded exclude each other");
	return 0;
}

/* ---- the workspace seed (embedded) ----------------------------------------- */

/* The files git would keep in dir (tracked or untracked, not ignored), or
 * NULL when dir is not a git work tree (then everything is copied). */
static char **git_files(const char *dir, size_t *ret_n)
{
	*ret_n = 0;
	int fds[2];
	if (pipe2(fds, O_CLOEXEC) < 0)
		return NULL;
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
	posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
	const char *args[] = {"git", "-C", dir, "ls-files", "-z", "--cached", "--others",
			      "--exclude-standard"};
	char *argv[ARRAY_SIZE(args) + 1];
	for (size_t i = 0; i < ARRAY_SIZE(args); i++)
		argv[i] = xstrdup(args[i]);
	argv[ARRAY_SIZE(args)] = NULL;
	pid_t pid;
	int r = posix_spawnp(&pid, "git", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	for (size_t i = 0; i < ARRAY_SIZE(args); i++)
		free(argv[i]);
	close(fds[1]);
	if (r != 0) {
		close(fds[0]);
		return NULL;
	}
	struct buf out = BUF_INIT;
	int rr = read_fd_all(fds[0], 256u << 20, &out);
	close(fds[0]);
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (rr < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		buf_release(&out);
		return NULL;
	}
	size_t n = 0, cap = 0;
	char **v = NULL;
	for (size_t i = 0; i < out.len;) {
		size_t len = strnlen(out.data + i, out.len - i);
		if (len) {
			v = xgrow(v, &cap, n + 2, sizeof(char *));
			v[n++] = xstrndup(out.data + i, len);
		}
		i += len + 1;
	}
	buf_release(&out);
	if (!v)
		v = xcalloc(1, sizeof(char *)); /* an empty work tree: copy nothing */
	v[n] = NULL;
	*ret_n = n;
	return v;
}

/* ---- following the job ----------------------------------------------------- */

struct sigwatch {
	sigset_t set;
	struct kiln_client *cl; /* its own connection */
	json_t *ids;
	pthread_mutex_t lock;
	int count;
	bool done;
};

static void *sig_main(void *p)
{
	struct sigwatch *w = p;
	for (;;) {
		int sig = 0;
		if (sigwait(&w->set, &sig) != 0)
			continue;
		if (sig == SIGUSR1)
			return NULL;
		pthread_mutex_lock(&w->lock);
		int n = ++w->count;
		pthread_mutex_unlock(&w->lock);
		if (n >= 3)
			_exit(RUN_EXIT_CANCELLED);
		if (n == 2) {
			fprintf(stderr, "kiln run: still cancelling; once more to quit now\n");
			continue;
		}
		size_t i;
		json_t *id;
		json_array_foreach(w->ids, i, id)
		{
			_cleanup_free_ char *path =
				xasprintf("/v1/jobs/%" JSON_INTEGER_FORMAT "/cancel", json_integer_value(id));
			struct kiln_err err = {0};
			fprintf(stderr, "kiln run: cancelling job %" JSON_INTEGER_FORMAT "\n",
				json_integer_value(id));
			if (client_json(w->cl, "POST", path, NULL, NULL, NULL, &err) < 0 &&
			    err.code != -ESTALE)
				fprintf(stderr, "kiln run: %s\n", err.msg);
		}
	}
}

static int wait_terminal(struct kiln_client *cl, int64_t id, json_t **ret, struct kiln_err *err)
{
	_cleanup_free_ char *path = xasprintf("/v1/jobs/%" PRId64, id);
	for (unsigned delay = 20;; delay = MIN(delay * 2, 500u)) {
		json_t *j = NULL;
		int r = client_json(cl, "GET", path, NULL, NULL, &j, err);
		if (r < 0)
			return r;
		enum job_state st;
		const char *s = json_string_value(json_object_get(j, "state"));
		if (s && job_state_from_string(s, &st) == 0 && job_state_is_terminal(st)) {
			*ret = j;
			return 0;
		}
		json_decref(j);
		usleep(delay * 1000);
	}
}

static int exit_code_of(const json_t *job)
{
	const char *s = json_string_value(json_object_get(job, "state"));
	const json_t *ec = json_object_get(job, "exit_code");
	if (!s)
		return RUN_EXIT_KILN;
	if (streq(s, "succeeded"))
		return EXIT_OK;
	if (streq(s, "timed_out"))
		return RUN_EXIT_TIMED_OUT;
	if (streq(s, "cancelled"))
		return RUN_EXIT_CANCELLED;
	if (streq(s, "failed") && json_is_integer(ec) && json_integer_value(ec) > 0 &&
	    json_integer_value(ec) <= 255)
		return (int)json_integer_value(ec);
	return RUN_EXIT_KILN; /* failed before a step ran, or lost */
}

static void report(const json_t *job)
{
	char b[64];
	const char *s = json_string_value(json_object_get(job, "state"));
	const char *msg = json_string_value(json_object_get(job, "message"));
	fprintf(stderr, "kiln run: job %s %s", cli_str(json_object_get(job, "id"), b),
		s ? s : "?");
	if (json_is_integer(json_object_get(job, "exit_code")) && s && !streq(s, "succeeded"))
		fprintf(stderr, " (exit code %s)", cli_str(json_object_get(job, "exit_code"), b));
	if (msg && s && !streq(s, "succeeded"))
		fprintf(stderr, ": %s", msg);
	fputc('\n', stderr);
}

static void save_artifacts(struct kiln_client *cl, int64_t id, const char *dir)
{
	_cleanup_free_ char *path = xasprintf("/v1/jobs/%" PRId64 "/artifacts", id);
	json_t *ans = NULL;
	struct kiln_err err = {0};
	if (client_json(cl, "GET", path, NULL, NULL, &ans, &err) < 0) {
		fprintf(stderr, "kiln run: cannot list the artifacts: %s\n", err.msg);
		return;
	}
	size_t i;
	json_t *a;
	json_array_foreach(json_object_get(ans, "artifacts"), i, a)
	{
		const char *p = json_string_value(json_object_get(a, "path"));
		_cleanup_free_ char *out = path_join(dir, p);
		_cleanup_free_ char *parent = xstrdup(out);
		char *slash = strrchr(parent, '/');
		if (slash)
			*slash = '\0';
		if (mkdir_p(parent, 0755) < 0) {
			fprintf(stderr, "kiln run: cannot create '%s': %s\n", parent, strerror(errno));
			continue;
		}
		_cleanup_free_ char *job = xasprintf("%" PRId64, id);
		(void)cli_download_artifact(cl, job, a, out);
	}
	json_decref(ans);
}

/* Submits, follows, waits; returns the exit code. */
static int run_jobs(struct kiln_client *cl, const char *token, const char *name,
		    const char *text, bool embedded, const char *arts_dir)
{
	_cleanup_free_ char *esc = client_escape(name, true);
	_cleanup_free_ char *path = xasprintf("/v1/jobs?file=%s", esc);
	json_t *ans = NULL;
	struct kiln_err err = {0};
	int r = client_request(cl, "POST", path, "application/yaml", text, strlen(text), NULL, &ans,
			       &err);
	if (r < 0) {
		const char *code =
			json_string_value(json_object_get(json_object_get(ans, "error"), "code"));
		bool invalid = code && streq(code, "invalid_spec");
		json_decref(ans);
		if (invalid) {
			fprintf(stderr, "%s\n", err.msg);
			return EXIT_USAGE;
		}
		fprintf(stderr, "kiln run: %s\n", err.msg);
		return RUN_EXIT_KILN;
	}
	json_t *ids = json_array();
	size_t i;
	json_t *j;
	json_array_foreach(json_object_get(ans, "jobs"), i, j)
		json_array_append(ids, json_object_get(j, "id"));
	json_decref(ans);

	struct sigwatch w = {.ids = ids};
	pthread_mutex_init(&w.lock, NULL);
	sigemptyset(&w.set);
	sigaddset(&w.set, SIGINT);
	sigaddset(&w.set, SIGTERM);
	sigaddset(&w.set, SIGUSR1);
	pthread_t sig_thread;
	bool watching = client_new(client_server(cl), token, &w.cl, &err) >= 0 &&
			pthread_create(&sig_thread, NULL, sig_main, &w) == 0;

	int rc = EXIT_OK;
	json_t *id;
	json_array_foreach(ids, i, id)
	{
		int64_t jid = json_integer_value(id);
		if (json_array_size(ids) > 1)
			fprintf(stderr, "==> job %" PRId64 " <==\n", jid);
		if (cli_follow_log(cl, jid, 0, 0, true, stdout, &err) < 0) {
			fprintf(stderr, "kiln run: %s\n", err.msg);
			rc = rc ? rc : RUN_EXIT_KILN;
			continue;
		}
		fflush(stdout);
		json_t *job = NULL;
		if (wait_terminal(cl, jid, &job, &err) < 0) {
			fprintf(stderr, "kiln run: %s\n", err.msg);
			rc = rc ? rc : RUN_EXIT_KILN;
			continue;
		}
		report(job);
		int code = exit_code_of(job);
		if (!rc)
			rc = code;
		json_decref(job);
		if (embedded)
			save_artifacts(cl, jid, arts_dir);
		else
			fprintf(stderr, "kiln run: its log and artifacts: kiln logs %" PRId64
					", kiln artifacts %" PRId64 "\n",
				jid, jid);
	}
	if (watching) {
		pthread_kill(sig_thread, SIGUSR1);
		pthread_join(sig_thread, NULL);
	}
	client_free(w.cl);
	pthread_mutex_destroy(&w.lock);
	json_decref(ids);
	return rc;
}

/* Is a server answering on the default address? */
static bool default_server_up(const char *url)
{
	struct kiln_client *c = NULL;
	struct kiln_err err = {0};
	if (client_new(url, NULL, &c, &err) < 0)
		return false;
	client_set_timeout(c, 1000);
	bool up = client_json(c, "GET", "/healthz", NULL, NULL, NULL, &err) == 0;
	client_free(c);
	return up;
}

static int run_embedded(struct run_opts *o, const char *name, const char *text)
{
	/* kiln's own log stays quiet unless asked for: the job's output is
	 * what the terminal is for. */
	if (log_max_level == LOG_INFO)
		log_set_level(LOG_WARN);
	const char *base = getenv("TMPDIR");
	_cleanup_free_ char *tmpl = xasprintf("%s/kiln-run-XXXXXX", base && *base ? base : "/tmp");
	if (!mkdtemp(tmpl)) {
		fprintf(stderr, "kiln run: cannot create a temporary directory: %s\n",
			strerror(errno));
		return RUN_EXIT_KILN;
	}
	_cleanup_free_ char *workdir = realpath(o->workdir ? o->workdir : ".", NULL);
	size_t n_files = 0;
	char **files = workdir ? git_files(workdir, &n_files) : NULL;
	struct local_options lo = {.state_dir = tmpl, .listen = "127.0.0.1:0", .durable = false};
	agent_config_init(&lo.agent);
	lo.agent.name = "embedded";
	lo.agent.seed_dir = workdir;
	lo.agent.seed_files = files;
	lo.agent.n_seed_files = n_files;
	lo.agent.drain_timeout_ms = 1000;
	lo.agent.warm = 0; /* one job: nothing to get ready ahead of it */
	struct local l;
	struct kiln_err err = {0};
	int rc;
	if (!workdir) {
		fprintf(stderr, "kiln run: --workdir '%s': %s\n", o->workdir ? o->workdir : ".",
			strerror(errno));
		rc = RUN_EXIT_KILN;
	} else if (local_start(&l, &lo, &err) < 0) {
		fprintf(stderr, "kiln run: cannot run embedded: %s\n", err.msg);
		rc = RUN_EXIT_KILN;
	} else {
		struct kiln_client *cl = NULL;
		if (client_new(l.url, l.token, &cl, &err) < 0) {
			fprintf(stderr, "kiln run: %s\n", err.msg);
			rc = RUN_EXIT_KILN;
		} else {
			rc = run_jobs(cl, l.token, name, text, true,
				      o->arts_dir ? o->arts_dir : "kiln-artifacts");
			client_free(cl);
		}
		local_stop(&l, false);
	}
	for (size_t i = 0; files && files[i]; i++)
		free(files[i]);
	free(files);
	int r = rm_rf(tmpl);
	if (r < 0)
		fprintf(stderr, "kiln run: cannot remove '%s': %s\n", tmpl, strerror(-r));
	return rc;
}

int cmd_run(int argc, char **argv)
{
	struct run_opts o = {.job = json_object()};
	int r = parse(argc, argv, &o);
	if (r) {
		json_decref(o.job);
		return r < 0 ? EXIT_OK : r;
	}
	/* Signals: one thread takes them (cancel on the first). */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	char *text = NULL;
	const char *name = "kiln run";
	if (o.file) {
		struct buf b = BUF_INIT;
		r = read_file(o.file, (1 << 20) + 1, &b);
		if (r == -EFBIG) {
			json_decref(o.job);
			return cli_fail("run", "'%s' is larger than 1 MiB (the limit of a job spec)",
					o.file);
		}
		if (r < 0) {
			json_decref(o.job);
			return cli_fail("run", "cannot read '%s': %s", o.file, strerror(-r));
		}
		buf_puts(&b, "");
		text = buf_steal(&b);
		name = streq(o.file, "-") ? "<stdin>" : o.file;
	} else {
		text = spec_for_command(&o);
	}
	json_decref(o.job);

	int rc;
	bool embedded = o.embedded;
	struct client_config cfg = {0};
	struct kiln_err err = {0};
	if (!embedded) {
		if (client_config_load(o.server, o.token, &cfg, &err) < 0) {
			free(text);
			return cli_fail("run", "%s", err.msg);
		}
		embedded = streq(cfg.source, "default") && !default_server_up(cfg.server);
	}
	if (embedded) {
		rc = run_embedded(&o, name, text);
	} else {
		struct kiln_client *cl = NULL;
		if (client_new(cfg.server, cfg.token, &cl, &err) < 0) {
			rc = cli_fail("run", "%s (from %s)", err.msg, cfg.source);
		} else {
			rc = run_jobs(cl, cfg.token, name, text, false, NULL);
			client_free(cl);
		}
	}
	client_config_release(&cfg);
	free(text);
	return rc;
}
