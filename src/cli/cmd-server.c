/* cmd-server: `kiln server` — run the control plane in the foreground. */
#include "cli.h"
#include "server/server.h"

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>

const char cmd_server_help[] =
	"usage: kiln server [--listen HOST:PORT] [--state-dir DIR] [OPTIONS]\n"
	"\n"
	"Runs kiln's control plane in the foreground: the HTTP/JSON API under /v1,\n"
	"the scheduler and the store (SQLite in the state directory). Stops on\n"
	"SIGINT or SIGTERM. Every accepted job is durable before its 2xx answer\n"
	"(SQLite WAL, synchronous=FULL).\n"
	"\n"
	"options:\n"
	"  --listen HOST:PORT     address to serve (default 127.0.0.1:7700; port 0 picks one)\n"
	"  --state-dir DIR        database, logs and artifacts (default\n"
	"                         $XDG_STATE_HOME/kiln, else ~/.local/state/kiln)\n"
	"  --addr-file FILE       write the address actually bound to FILE once serving\n"
	"  --lease-ttl DURATION   a lease not renewed for this long expires (default 30s)\n"
	"  --timeout-grace DURATION  the server ends a job at its timeout plus this (30s)\n"
	"  --max-wait DURATION    longest lease long-poll (default 60s)\n"
	"  --log-cap SIZE         log bytes kept per job attempt, head + tail (default 64Mi)\n"
	"  --artifact-max SIZE    largest artifact (default 1Gi)\n"
	"  --body-max SIZE        largest JSON/YAML request body (default 1Mi)\n"
	"  --max-connections N    connections beyond N are refused (default 1000)\n"
	"  --per-ip-connections N connections per client address (default: no limit)\n"
	"  --header-timeout DURATION  request headers must arrive within (default 10s)\n"
	"  --body-timeout DURATION    a JSON body must arrive within (default 30s)\n"
	"  --idle-timeout DURATION    idle keep-alive connections are closed (default 60s)\n"
	"  --threads N            HTTP threads (default 1)\n"
	"  --master-key-file FILE the master key that wraps every org's data key (64 hex\n"
	"                         or base64 of 32 bytes); else $KILN_MASTER_KEY, else\n"
	"                         DIR/master.key, generated on first start (mode 0600)\n"
	"  --max-running-per-org N  leased + running jobs per org (default: no cap)\n"
	"  --github-runner-command CMD  what a queued GitHub workflow job runs: a shell\n"
	"                         step reading GH_JOB_ID, GH_REPOSITORY, GH_LABELS,\n"
	"                         GH_RUNNER_NAME... (docs/github.md)\n"
	"  --github-runner-secrets NAMES  secrets that step gets (A,B: e.g. an app token\n"
	"                         for a just-in-time runner config)\n"
	"  --webhook-retention DURATION  delivery ids kept against replays (default 8d,\n"
	"                         at least 8d)\n"
	"  --webhook-body-max SIZE  largest webhook delivery (default 25Mi)\n"
	"  --org-api-rate N       API calls per second per org, of people and scripts\n"
	"                         (default 200; 0: no limit; admins and agents are not\n"
	"                         limited)\n"
	"  --org-submit-rate N    jobs submitted per second per org (default 100)\n"
	"  --org-webhook-rate N   webhook deliveries per second per org (default 50)\n"
	"  --org-burst SECONDS    a bucket holds this many seconds of its rate (default 10)\n"
	"  --unsafe-no-fsync      commit without fsync (synchronous=NORMAL): a machine\n"
	"                         crash may lose acknowledged jobs; for benchmarks only\n"
	"  --list-routes          print every route (METHOD PATH) and exit\n"
	"\n"
	"\n"
	"Every endpoint but /healthz needs a token. On the first start of an empty\n"
	"state directory the server writes an admin token to DIR/admin.token (mode\n"
	"0600); 'kiln admin token' mints another; 'kiln token create' makes the rest.\n"
	"\n"
	"exit codes: 0 stopped by a signal, 1 could not start, 2 usage error.\n";

static int duration_opt(const char *name, const char *v, uint64_t *ret)
{
	if (parse_duration_ms(v, ret) < 0)
		return cli_usage_error("server", "%s: '%s' is not a duration (e.g. 500ms, 30s, 5m)",
				       name, v);
	return 0;
}

static int size_opt(const char *name, const char *v, uint64_t *ret)
{
	if (parse_size(v, ret) < 0)
		return cli_usage_error("server", "%s: '%s' is not a size (e.g. 64Mi, 1Gi)", name, v);
	return 0;
}

static int uint_opt(const char *name, const char *v, int64_t min, int64_t max, unsigned *ret)
{
	int64_t x;
	if (parse_int64(v, min, max, &x) < 0)
		return cli_usage_error("server", "%s: '%s' is not a number in %" PRId64 "..%" PRId64,
				       name, v, min, max);
	*ret = (unsigned)x;
	return 0;
}

static char *default_state_dir(void)
{
	const char *x = getenv("XDG_STATE_HOME");
	if (x && *x)
		return path_join(x, "kiln");
	const char *home = getenv("HOME");
	return xasprintf("%s/.local/state/kiln", home && *home ? home : "/tmp");
}

enum {
	OPT_LISTEN = 256,
	OPT_STATE,
	OPT_ADDR_FILE,
	OPT_TTL,
	OPT_GRACE,
	OPT_WAIT,
	OPT_LOG_CAP,
	OPT_ART_MAX,
	OPT_BODY_MAX,
	OPT_MAX_CONN,
	OPT_PER_IP,
	OPT_HDR_TO,
	OPT_BODY_TO,
	OPT_IDLE_TO,
	OPT_THREADS,
	OPT_NO_FSYNC,
	OPT_ROUTES,
	OPT_MASTER_KEY,
	OPT_MAX_RUNNING,
	OPT_GH_CMD,
	OPT_GH_SECRETS,
	OPT_WH_RETENTION,
	OPT_WH_BODY,
	OPT_API_RATE,
	OPT_SUBMIT_RATE,
	OPT_WH_RATE,
	OPT_BURST,
};

static int rate_opt(const char *name, const char *v, double *ret)
{
	char *end = NULL;
	double x = strtod(v, &end);
	if (!*v || *end || !(x >= 0) || x > 1e9)
		return cli_usage_error("server", "%s: '%s' is not a rate (a number >= 0)", name, v);
	*ret = x;
	return 0;
}

int cmd_server(int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"listen", required_argument, NULL, OPT_LISTEN},
		{"state-dir", required_argument, NULL, OPT_STATE},
		{"addr-file", required_argument, NULL, OPT_ADDR_FILE},
		{"lease-ttl", required_argument, NULL, OPT_TTL},
		{"timeout-grace", required_argument, NULL, OPT_GRACE},
		{"max-wait", required_argument, NULL, OPT_WAIT},
		{"log-cap", required_argument, NULL, OPT_LOG_CAP},
		{"artifact-max", required_argument, NULL, OPT_ART_MAX},
		{"body-max", required_argument, NULL, OPT_BODY_MAX},
		{"max-connections", required_argument, NULL, OPT_MAX_CONN},
		{"per-ip-connections", required_argument, NULL, OPT_PER_IP},
		{"header-timeout", required_argument, NULL, OPT_HDR_TO},
		{"body-timeout", required_argument, NULL, OPT_BODY_TO},
		{"idle-timeout", required_argument, NULL, OPT_IDLE_TO},
		{"threads", required_argument, NULL, OPT_THREADS},
		{"unsafe-no-fsync", no_argument, NULL, OPT_NO_FSYNC},
		{"list-routes", no_argument, NULL, OPT_ROUTES},
		{"master-key-file", required_argument, NULL, OPT_MASTER_KEY},
		{"max-running-per-org", required_argument, NULL, OPT_MAX_RUNNING},
		{"github-runner-command", required_argument, NULL, OPT_GH_CMD},
		{"github-runner-secrets", required_argument, NULL, OPT_GH_SECRETS},
		{"webhook-retention", required_argument, NULL, OPT_WH_RETENTION},
		{"webhook-body-max", required_argument, NULL, OPT_WH_BODY},
		{"org-api-rate", required_argument, NULL, OPT_API_RATE},
		{"org-submit-rate", required_argument, NULL, OPT_SUBMIT_RATE},
		{"org-webhook-rate", required_argument, NULL, OPT_WH_RATE},
		{"org-burst", required_argument, NULL, OPT_BURST},
		{0},
	};
	struct server_config cfg;
	server_config_init(&cfg);
	_cleanup_free_ char *state_dir = NULL;
	const char *addr_file = NULL;
	uint64_t ms, v;
	int c, r = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'h': return cli_print_help(cli_find_command("server"));
		case OPT_LISTEN: cfg.listen = optarg; break;
		case OPT_STATE:
			free(state_dir);
			state_dir = xstrdup(optarg);
			break;
		case OPT_ADDR_FILE: addr_file = optarg; break;
		case OPT_TTL:
			if ((r = duration_opt("--lease-ttl", optarg, &ms)))
				return r;
			cfg.lease_ttl_ms = ms;
			break;
		case OPT_GRACE:
			if ((r = duration_opt("--timeout-grace", optarg, &ms)))
				return r;
			cfg.timeout_grace_ms = ms;
			break;
		case OPT_WAIT:
			if ((r = duration_opt("--max-wait", optarg, &ms)))
				return r;
			cfg.max_wait_ms = ms;
			break;
		case OPT_LOG_CAP:
			if ((r = size_opt("--log-cap", optarg, &v)))
				return r;
			cfg.log_cap = v;
			break;
		case OPT_ART_MAX:
			if ((r = size_opt("--artifact-max", optarg, &v)))
				return r;
			cfg.artifact_max = v;
			break;
		case OPT_BODY_MAX:
			if ((r = size_opt("--body-max", optarg, &v)))
				return r;
			cfg.body_max = v;
			break;
		case OPT_MAX_CONN:
			if ((r = uint_opt("--max-connections", optarg, 4, 1000000, &cfg.max_connections)))
				return r;
			break;
		case OPT_PER_IP:
			if ((r = uint_opt("--per-ip-connections", optarg, 0, 1000000,
					  &cfg.per_ip_connections)))
				return r;
			break;
		case OPT_HDR_TO:
			if ((r = duration_opt("--header-timeout", optarg, &ms)))
				return r;
			cfg.header_timeout_ms = (unsigned)ms;
			break;
		case OPT_BODY_TO:
			if ((r = duration_opt("--body-timeout", optarg, &ms)))
				return r;
			cfg.body_timeout_ms = (unsigned)ms;
			break;
		case OPT_IDLE_TO:
			if ((r = duration_opt("--idle-timeout", optarg, &ms)))
				return r;
			cfg.idle_timeout_s = (unsigned)((ms + 999) / 1000);
			break;
		case OPT_THREADS:
			if ((r = uint_opt("--threads", optarg, 1, 64, &cfg.threads)))
				return r;
			break;
		case OPT_NO_FSYNC: cfg.durable = false; break;
		case OPT_ROUTES: server_print_routes(stdout); return EXIT_OK;
		case OPT_MASTER_KEY: cfg.master_key_file = optarg; break;
		case OPT_GH_CMD: cfg.github_runner_command = optarg; break;
		case OPT_API_RATE:
			if ((r = rate_opt("--org-api-rate", optarg, &cfg.org_api_rate)))
				return r;
			break;
		case OPT_SUBMIT_RATE:
			if ((r = rate_opt("--org-submit-rate", optarg, &cfg.org_submit_rate)))
				return r;
			break;
		case OPT_WH_RATE:
			if ((r = rate_opt("--org-webhook-rate", optarg, &cfg.org_webhook_rate)))
				return r;
			break;
		case OPT_BURST:
			if ((r = rate_opt("--org-burst", optarg, &cfg.org_burst_s)))
				return r;
			break;
		case OPT_GH_SECRETS: cfg.github_runner_secrets = optarg; break;
		case OPT_WH_RETENTION:
			if ((r = duration_opt("--webhook-retention", optarg, &ms)))
				return r;
			cfg.webhook_retention_ms = ms;
			break;
		case OPT_WH_BODY:
			if ((r = size_opt("--webhook-body-max", optarg, &v)))
				return r;
			cfg.webhook_body_max = v;
			break;
		case OPT_MAX_RUNNING: {
			unsigned n = 0;
			if ((r = uint_opt("--max-running-per-org", optarg, 0, 1000000, &n)))
				return r;
			cfg.max_running_per_org = n;
			break;
		}
		default: return cli_usage_error("server", "unknown option");
		}
	}
	if (optind < argc)
		return cli_usage_error("server", "unexpected argument '%s'", argv[optind]);
	if (!state_dir)
		state_dir = default_state_dir();
	cfg.state_dir = state_dir;
	cfg.master_key = getenv("KILN_MASTER_KEY");

	/* Signals are taken synchronously by this thread; every other thread
	 * inherits the mask. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct kiln_err err = {0};
	struct server *s = NULL;
	if (server_new(&cfg, &s, &err) < 0)
		return cli_fail("server", "%s", err.msg);
	/* The key must not stay in the environment: neither for anything started
	 * later nor in /proc/PID/environ (the initial block, wiped in place). */
	char *mk = getenv("KILN_MASTER_KEY");
	if (mk)
		explicit_bzero(mk, strlen(mk));
	unsetenv("KILN_MASTER_KEY");
	if (server_start(s, &err) < 0) {
		server_free(s);
		return cli_fail("server", "%s", err.msg);
	}
	if (addr_file) {
		const char *a = server_address(s);
		if (write_file_atomic(addr_file, a, strlen(a), 0644) < 0) {
			server_free(s);
			return cli_fail("server", "cannot write '%s': %s", addr_file, strerror(errno));
		}
	}
	int sig = 0;
	sigwait(&set, &sig);
	log_info("stopping signal=%s", sig == SIGINT ? "SIGINT" : "SIGTERM");
	server_free(s);
	return EXIT_OK;
}
