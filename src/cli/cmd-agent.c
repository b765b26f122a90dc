/* cmd-agent: `kiln agent` — run a host agent in the foreground. */
#include "agent/agent.h"
#include "cli.h"

#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>

const char cmd_agent_help[] =
	"usage: kiln agent --server URL [--token TOKEN] [OPTIONS]\n"
	"\n"
	"Runs a host agent in the foreground: registers with the server with this\n"
	"host's labels and capacity, long-polls for jobs, and runs each in a fresh\n"
	"sandbox (namespaces, overlay root, cgroup limits, seccomp), shipping its log\n"
	"live and its artifacts at the end. SIGTERM or SIGINT drains: no new jobs,\n"
	"running jobs finish (until --drain-timeout; then they are killed and handed\n"
	"back to the server), then exit 0. A second signal stops at once.\n"
	"\n"
	"options:\n"
	"  --server URL           the server (http://HOST:PORT or HOST:PORT; default\n"
	"                         $KILN_ADDR)\n"
	"  --token TOKEN          bearer token (default $KILN_TOKEN)\n"
	"  --name NAME            unique agent name (default: the host name)\n"
	"  --labels L1,L2,...     extra labels (plain or key:value), added to the ones\n"
	"                         detected (os, arch, GPUs, sandbox, cgroup-v1|v2|hybrid)\n"
	"  --slots N              jobs at once (default: the number of CPUs)\n"
	"  --image NAME=DIR       run jobs with `image: NAME` on the root filesystem in DIR\n"
	"                         and advertise the label image:NAME (repeatable)\n"
	"  --state-dir DIR        spool, workspaces, sandbox state (default\n"
	"                         $XDG_STATE_HOME/kiln/agent, else ~/.local/state/kiln/agent)\n"
	"  --drain-timeout DURATION  how long a drain waits for running jobs (default 10m)\n"
	"  --warm N               sandboxes kept ready ahead of jobs, of the shape of the\n"
	"                         last job (default 1; 0: none)\n"
	"  --cgroup-parent PATH   cgroup parent of the job sandboxes (default /kiln as root)\n"
	"  --init PATH            the kiln-init binary (default $KILN_INIT, next to kiln)\n"
	"  --metrics-listen HOST:PORT  serve Prometheus metrics (GET /metrics) there, with\n"
	"                         no authentication: bind to localhost or a private\n"
	"                         network (port 0 picks one; the log says which)\n"
	"\n"
	"exit codes: 0 stopped (drained), 1 could not start, 2 usage error.\n";

enum {
	OPT_SERVER = 256,
	OPT_TOKEN,
	OPT_NAME,
	OPT_LABELS,
	OPT_SLOTS,
	OPT_IMAGE,
	OPT_STATE,
	OPT_DRAIN,
	OPT_CGROUP,
	OPT_INIT,
	OPT_LEASE_WAIT,
	OPT_WARM,
	OPT_METRICS,
};

char *cli_default_state_dir(const char *sub)
{
	const char *x = getenv("XDG_STATE_HOME");
	_cleanup_free_ char *base = NULL;
	if (x && *x) {
		base = path_join(x, "kiln");
	} else {
		const char *home = getenv("HOME");
		base = xasprintf("%s/.local/state/kiln", home && *home ? home : "/tmp");
	}
	return sub ? path_join(base, sub) : TAKE_PTR(base);
}

struct strlist {
	char **v;
	size_t n, cap;
};

static void strlist_push(struct strlist *l, char *s)
{
	l->v = xgrow(l->v, &l->cap, l->n + 1, sizeof(char *));
	l->v[l->n++] = s;
}

static void strlist_free(struct strlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
}

/* Signals: the first SIGTERM/SIGINT drains, the next stops at once. */
struct sigctx {
	struct agent *agent;
	sigset_t set;
};

static void *signal_main(void *p)
{
	struct sigctx *c = p;
	for (int n = 0;; n++) {
		int sig = 0;
		if (sigwait(&c->set, &sig) != 0)
			continue;
		if (sig == SIGUSR1) /* agent_run() returned: nothing to stop */
			return NULL;
		log_info("%s signal=%s", n == 0 ? "draining" : "stopping now",
			 sig == SIGINT ? "SIGINT" : "SIGTERM");
		agent_stop(c->agent, n == 0);
	}
}

int cmd_agent(int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"server", required_argument, NULL, OPT_SERVER},
		{"token", required_argument, NULL, OPT_TOKEN},
		{"name", required_argument, NULL, OPT_NAME},
		{"labels", required_argument, NULL, OPT_LABELS},
		{"slots", required_argument, NULL, OPT_SLOTS},
		{"image", required_argument, NULL, OPT_IMAGE},
		{"state-dir", required_argument, NULL, OPT_STATE},
		{"drain-timeout", required_argument, NULL, OPT_DRAIN},
		{"cgroup-parent", required_argument, NULL, OPT_CGROUP},
		{"init", required_argument, NULL, OPT_INIT},
		{"lease-wait", required_argument, NULL, OPT_LEASE_WAIT},
		{"warm", required_argument, NULL, OPT_WARM},
		{"metrics-listen", required_argument, NULL, OPT_METRICS},
		{0},
	};
	struct agent_config cfg;
	agent_config_init(&cfg);
	cfg.server = getenv("KILN_ADDR");
	cfg.token = getenv("KILN_TOKEN");
	_cleanup_free_ char *state_dir = NULL;
	struct strlist labels = {0}, image_specs = {0};
	int c, rc = EXIT_OK;
	int64_t v;
	uint64_t ms;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'h': rc = cli_print_help(cli_find_command("agent")); goto out;
		case OPT_SERVER: cfg.server = optarg; break;
		case OPT_TOKEN: cfg.token = optarg; break;
		case OPT_NAME: cfg.name = optarg; break;
		case OPT_LABELS: {
			_cleanup_free_ char *copy = xstrdup(optarg);
			char *save = NULL;
			for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
				if (*t)
					strlist_push(&labels, xstrdup(t));
			break;
		}
		case OPT_SLOTS:
			if (parse_int64(optarg, 1, 4096, &v) < 0) {
				rc = cli_usage_error("agent", "--slots: '%s' is not a number in 1..4096",
						     optarg);
				goto out;
			}
			cfg.slots = (unsigned)v;
			break;
		case OPT_IMAGE:
			if (!strchr(optarg, '=') || optarg[0] == '=') {
				rc = cli_usage_error("agent", "--image: expected NAME=DIR, got '%s'",
						     optarg);
				goto out;
			}
			strlist_push(&image_specs, xstrdup(optarg));
			break;
		case OPT_STATE:
			free(state_dir);
			state_dir = xstrdup(optarg);
			break;
		case OPT_DRAIN:
		case OPT_LEASE_WAIT:
			if (parse_duration_ms(optarg, &ms) < 0 || ms == 0) {
				rc = cli_usage_error("agent", "%s: '%s' is not a duration (e.g. 30s, 10m)",
						     c == OPT_DRAIN ? "--drain-timeout" : "--lease-wait",
						     optarg);
				goto out;
			}
			if (c == OPT_DRAIN)
				cfg.drain_timeout_ms = ms;
			else
				cfg.lease_wait_ms = ms;
			break;
		case OPT_WARM:
			if (parse_int64(optarg, 0, 64, &v) < 0) {
				rc = cli_usage_error("agent", "--warm: '%s' is not a number in 0..64",
						     optarg);
				goto out;
			}
			cfg.warm = (unsigned)v;
			break;
		case OPT_CGROUP: cfg.cgroup_parent = optarg; break;
		case OPT_INIT: cfg.init_path = optarg; break;
		case OPT_METRICS: cfg.metrics_listen = optarg; break;
		default: rc = cli_usage_error("agent", "unknown option"); goto out;
		}
	}
	if (optind < argc) {
		rc = cli_usage_error("agent", "unexpected argument '%s'", argv[optind]);
		goto out;
	}
	if (!cfg.server || !*cfg.server) {
		rc = cli_usage_error("agent", "which server? give --server URL (or set KILN_ADDR)");
		goto out;
	}
	if (!state_dir)
		state_dir = cli_default_state_dir("agent");
	cfg.state_dir = state_dir;
	cfg.labels = labels.v;
	cfg.n_labels = labels.n;
	struct agent_image *images = xcalloc(image_specs.n + 1, sizeof(*images));
	for (size_t i = 0; i < image_specs.n; i++) {
		char *eq = strchr(image_specs.v[i], '=');
		*eq = '\0';
		images[i] = (struct agent_image){.name = image_specs.v[i], .dir = eq + 1};
	}
	cfg.images = images;
	cfg.n_images = image_specs.n;

	/* Signals are taken by one thread; every other thread inherits the mask. */
	struct sigctx sc = {0};
	sigemptyset(&sc.set);
	sigaddset(&sc.set, SIGINT);
	sigaddset(&sc.set, SIGTERM);
	sigaddset(&sc.set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sc.set, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct kiln_err err = {0};
	struct agent *a = NULL;
	if (agent_new(&cfg, &a, &err) < 0) {
		free(images);
		rc = cli_fail("agent", "%s", err.msg);
		goto out;
	}
	sc.agent = a;
	pthread_t sig_thread;
	pthread_create(&sig_thread, NULL, signal_main, &sc);
	int r = agent_run(a, &err);
	pthread_kill(sig_thread, SIGUSR1);
	pthread_join(sig_thread, NULL);
	agent_free(a);
	free(images);
	rc = r < 0 ? cli_fail("agent", "%s", err.msg) : EXIT_OK;
out:
	strlist_free(&labels);
	strlist_free(&image_specs);
	return rc;
}
