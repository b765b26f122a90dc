/*
 * cmd-up: `kiln up` — a server and an agent in one process, the one-machine
 * default. Writes the client config so that every kiln command on this
 * machine finds the server without flags (as kind and minikube do for
 * kubectl), and puts the previous config back when it stops.
 */
#include "client/client.h"
#include "local.h"

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>

const char cmd_up_help[] =
	"usage: kiln up [--state-dir DIR] [--listen HOST:PORT] [OPTIONS]\n"
	"\n"
	"Runs a kiln server and an agent in one process: the one-machine setup. The\n"
	"database, logs, artifacts and the agent's state live in the state directory.\n"
	"Prints the server's address and writes it, with the admin token of\n"
	"DIR/admin.token, to the client config ($XDG_CONFIG_HOME/kiln/config, mode\n"
	"0600), so kiln commands on this machine use it with\n"
	"no flags; the previous config is put back when kiln up stops. SIGTERM or\n"
	"SIGINT drains the agent (running jobs finish), then stops; a second signal\n"
	"stops at once.\n"
	"\n"
	"options:\n"
	"  --state-dir DIR        default $XDG_STATE_HOME/kiln, else ~/.local/state/kiln\n"
	"  --listen HOST:PORT     the API address (default 127.0.0.1:7700; port 0 picks one)\n"
	"  --addr-file FILE       write the address actually bound to FILE once up\n"
	"  --no-config            do not write the client config\n"
	"  --slots N              jobs at once (default: the number of CPUs)\n"
	"  --labels L1,L2         extra agent labels\n"
	"  --image NAME=DIR       map a job image name to a root filesystem (repeatable)\n"
	"  --name NAME            the agent's name (default: the host name)\n"
	"  --drain-timeout DURATION  how long a stop waits for running jobs (default 10m)\n"
	"  --warm N               sandboxes kept ready ahead of jobs (default 1; 0: none)\n"
	"  --cgroup-parent PATH   cgroup parent of the job sandboxes\n"
	"  --init PATH            the kiln-init binary\n"
	"\n"
	"exit codes: 0 stopped by a signal, 1 could not start, 2 usage error.\n";

enum {
	OPT_STATE = 256,
	OPT_LISTEN,
	OPT_ADDR_FILE,
	OPT_NO_CONFIG,
	OPT_SLOTS,
	OPT_LABELS,
	OPT_IMAGE,
	OPT_NAME,
	OPT_DRAIN,
	OPT_CGROUP,
	OPT_INIT,
	OPT_WARM,
};

/* ---- the client config ---------------------------------------------------- */

struct config_swap {
	char *path;
	struct buf before; /* the file's previous content */
	bool existed;
	struct buf written;
};

/* Is this config line "KEY = ..."? */
static bool is_key_line(const char *q, size_t len, const char *key)
{
	size_t k = strlen(key);
	if (len < k || strncmp(q, key, k) != 0)
		return false;
	const char *after = q + k + strspn(q + k, " \t");
	return *after == '=';
}

/*
 * Writes "server = URL" and "token = TOKEN" into the config (mode 0600),
 * keeping its other lines.
 */
static int config_write(struct config_swap *cs, const char *url, const char *token,
			struct kiln_err *err)
{
	cs->path = client_config_path();
	int r = read_file(cs->path, 1 << 20, &cs->before);
	if (r < 0 && r != -ENOENT)
		return kiln_err_set(err, r, "cannot read '%s': %s", cs->path, strerror(-r));
	cs->existed = r >= 0;
	struct buf *w = &cs->written;
	buf_puts(w, "");
	bool header = false;
	if (cs->existed) {
		for (char *p = cs->before.data; p && *p;) {
			char *nl = strchr(p, '\n');
			size_t len = nl ? (size_t)(nl - p) : strlen(p);
			const char *q = p;
			while (*q == ' ' || *q == '\t')
				q++;
			size_t rest = len - (size_t)(q - p);
			bool ours = (size_t)(q - p) < len &&
				    (is_key_line(q, rest, "server") || is_key_line(q, rest, "token"));
			if (!ours) {
				buf_append(w, p, len);
				buf_putc(w, '\n');
			}
			header |= startswith(q, "# written by kiln up");
			p = nl ? nl + 1 : NULL;
		}
	}
	if (!header && !cs->existed)
		buf_puts(w, "# written by kiln up; put back as it was when kiln up stops\n");
	buf_printf(w, "server = %s\n", url);
	if (token)
		buf_printf(w, "token = %s\n", token);
	_cleanup_free_ char *dir = xstrdup(cs->path);
	char *slash = strrchr(dir, '/');
	if (slash) {
		*slash = '\0';
		r = mkdir_p(dir, 0700);
		if (r < 0)
			return kiln_err_set(err, r, "cannot create '%s': %s", dir, strerror(-r));
	}
	r = write_file_atomic(cs->path, w->data, w->len, 0600);
	if (r < 0)
		return kiln_err_set(err, r, "cannot write '%s': %s", cs->path, strerror(-r));
	return 0;
}

/* Puts the previous config back, unless someone changed the file since. */
static void config_restore(struct config_swap *cs)
{
	if (!cs->path)
		return;
	struct buf now = BUF_INIT;
	if (read_file(cs->path, 1 << 20, &now) >= 0 && now.len == cs->written.len &&
	    memcmp(now.data, cs->written.data, now.len) == 0) {
		if (cs->existed)
			(void)write_file_atomic(cs->path, cs->before.data ? cs->before.data : "",
						cs->before.len, 0600);
		else
			(void)unlink(cs->path);
	}
	buf_release(&now);
	buf_release(&cs->before);
	buf_release(&cs->written);
	free(cs->path);
	cs->path = NULL;
}

/* ---- the command ---------------------------------------------------------- */

struct up_opts {
	struct local_options lo;
	char *state_dir;
	const char *addr_file;
	bool no_config;
	char **labels, **images;
	size_t n_labels, n_images, cap_labels, cap_images;
	struct agent_image *image_v;
};

static void push(char ***v, size_t *n, size_t *cap, char *s)
{
	*v = xgrow(*v, cap, *n + 1, sizeof(char *));
	(*v)[(*n)++] = s;
}

static void up_opts_release(struct up_opts *o)
{
	for (size_t i = 0; i < o->n_labels; i++)
		free(o->labels[i]);
	for (size_t i = 0; i < o->n_images; i++)
		free(o->images[i]);
	free(o->labels);
	free(o->images);
	free(o->image_v);
	free(o->state_dir);
}

static int parse(int argc, char **argv, struct up_opts *o)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"state-dir", required_argument, NULL, OPT_STATE},
		{"listen", required_argument, NULL, OPT_LISTEN},
		{"addr-file", required_argument, NULL, OPT_ADDR_FILE},
		{"no-config", no_argument, NULL, OPT_NO_CONFIG},
		{"slots", required_argument, NULL, OPT_SLOTS},
		{"labels", required_argument, NULL, OPT_LABELS},
		{"image", required_argument, NULL, OPT_IMAGE},
		{"name", required_argument, NULL, OPT_NAME},
		{"drain-timeout", required_argument, NULL, OPT_DRAIN},
		{"cgroup-parent", required_argument, NULL, OPT_CGROUP},
		{"init", required_argument, NULL, OPT_INIT},
		{"warm", required_argument, NULL, OPT_WARM},
		{0},
	};
	struct agent_config *ac = &o->lo.agent;
	int c;
	int64_t v;
	uint64_t ms;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'h': cli_print_help(cli_find_command("up")); return -1;
		case OPT_STATE:
			free(o->state_dir);
			o->state_dir = xstrdup(optarg);
			break;
		case OPT_LISTEN: o->lo.listen = optarg; break;
		case OPT_ADDR_FILE: o->addr_file = optarg; break;
		case OPT_NO_CONFIG: o->no_config = true; break;
		case OPT_SLOTS:
			if (parse_int64(optarg, 1, 4096, &v) < 0)
				return cli_usage_error("up", "--slots: '%s' is not a number in 1..4096",
						       optarg);
			ac->slots = (unsigned)v;
			break;
		case OPT_LABELS: {
			_cleanup_free_ char *copy = xstrdup(optarg);
			char *save = NULL;
			for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
				if (*t)
					push(&o->labels, &o->n_labels, &o->cap_labels, xstrdup(t));
			break;
		}
		case OPT_IMAGE:
			if (!strchr(optarg, '=') || optarg[0] == '=')
				return cli_usage_error("up", "--image: expected NAME=DIR, got '%s'",
						       optarg);
			push(&o->images, &o->n_images, &o->cap_images, xstrdup(optarg));
			break;
		case OPT_NAME: ac->name = optarg; break;
		case OPT_DRAIN:
			if (parse_duration_ms(optarg, &ms) < 0 || ms == 0)
				return cli_usage_error("up", "--drain-timeout: '%s' is not a duration",
						       optarg);
			ac->drain_timeout_ms = ms;
			break;
		case OPT_CGROUP: ac->cgroup_parent = optarg; break;
		case OPT_INIT: ac->init_path = optarg; break;
		case OPT_WARM:
			if (parse_int64(optarg, 0, 64, &v) < 0)
				return cli_usage_error("up", "--warm: '%s' is not a number in 0..64",
						       optarg);
			ac->warm = (unsigned)v;
			break;
		default: return cli_usage_error("up", "unknown option");
		}
	}
	if (optind < argc)
		return cli_usage_error("up", "unexpected argument '%s'", argv[optind]);
	ac->labels = o->labels;
	ac->n_labels = o->n_labels;
	o->image_v = xcalloc(o->n_images + 1, sizeof(*o->image_v));
	for (size_t i = 0; i < o->n_images; i++) {
		char *eq = strchr(o->images[i], '=');
		*eq = '\0';
		o->image_v[i] = (struct agent_image){.name = o->images[i], .dir = eq + 1};
	}
	ac->images = o->image_v;
	ac->n_images = o->n_images;
	return 0;
}

int cmd_up(int argc, char **argv)
{
	struct up_opts o = {0};
	agent_config_init(&o.lo.agent);
	o.lo.durable = true;
	int r = parse(argc, argv, &o);
	if (r) {
		up_opts_release(&o);
		return r < 0 ? EXIT_OK : r;
	}
	if (!o.state_dir)
		o.state_dir = cli_default_state_dir(NULL);
	o.lo.state_dir = o.state_dir;

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct local l;
	struct kiln_err err = {0};
	if (local_start(&l, &o.lo, &err) < 0) {
		up_opts_release(&o);
		return cli_fail("up", "%s", err.msg);
	}
	struct config_swap cs = {0};
	int rc = EXIT_OK;
	if (!o.no_config && config_write(&cs, l.url, l.token, &err) < 0) {
		rc = cli_fail("up", "%s", err.msg);
		goto stop;
	}
	if (o.addr_file) {
		const char *a = server_address(l.server);
		if (write_file_atomic(o.addr_file, a, strlen(a), 0644) < 0) {
			rc = cli_fail("up", "cannot write '%s': %s", o.addr_file, strerror(errno));
			goto stop;
		}
	}
	char *const *labels;
	size_t n_labels;
	agent_labels(l.agent, &labels, &n_labels);
	struct buf lb = BUF_INIT;
	for (size_t i = 0; i < n_labels; i++)
		buf_printf(&lb, "%s%s", i ? "," : "", labels[i]);
	printf("kiln is up\n"
	       "  server  %s   (state: %s)\n"
	       "  agent   id %" PRId64 ", labels %s\n",
	       l.url, o.state_dir, l.agent_id, lb.data ? lb.data : "-");
	/* Where the admin token is, never the token itself (stdout ends up in logs). */
	printf("  token   admin: %s/admin.token%s\n", o.state_dir, cs.path ? " (and the config)" : "");
	if (cs.path)
		printf("  config  %s (kiln commands on this machine use this server)\n", cs.path);
	printf("try: kiln run -- uname -a\n");
	fflush(stdout);
	buf_release(&lb);

	int sig = 0;
	sigwait(&set, &sig);
	log_info("stopping: draining the agent signal=%s", sig == SIGINT ? "SIGINT" : "SIGTERM");
	/* A second signal while draining stops at once. */
	agent_stop(l.agent, true);
	for (;;) {
		pthread_mutex_lock(&l.lock);
		bool done = l.agent_done;
		pthread_mutex_unlock(&l.lock);
		if (done)
			break;
		struct timespec ts = {0, 100 * 1000 * 1000};
		siginfo_t si;
		if (sigtimedwait(&set, &si, &ts) > 0) {
			log_info("stopping now");
			agent_stop(l.agent, false);
		}
	}
stop:
	config_restore(&cs);
	local_stop(&l, true);
	up_opts_release(&o);
	return rc;
}
