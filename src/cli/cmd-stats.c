/*
 * cmd-stats: `kiln stats` — the performance report of GET /v1/stats as text
 * (or -o json): percentiles, success rate, lease expiries, agent
 * utilisation, the queue now, and recommendations with the rule behind each
 * (docs/stats.md).
 */
#include "cli.h"
#include "human.h"
#include "output.h"

#include <getopt.h>
#include <inttypes.h>
#include <math.h>

const char cmd_stats_help[] =
    "usage: kiln stats [--since WHEN] [--until WHEN] [--org ORG] [-o text|json]\n"
    "                  [--wait-threshold DURATION] [--min-attempts N]\n"
    "                  [--server URL] [--token TOKEN]\n"
    "\n"
    "A performance report over a window (attempts that finished in it): job\n"
    "duration p50/p95/p99 per label set and executor, queue wait p50/p95,\n"
    "success rate, lease expiries, agent utilisation and failures, the queue\n"
    "now, and recommendations, each with the rule that produced it (the rules:\n"
    "docs/stats.md).\n"
    "\n"
    "options:\n"
    "  --since WHEN            a duration ago (24h, 7d) or an RFC 3339 time; default 24h\n"
    "  --until WHEN            the same way; default now\n"
    "  --org ORG               only this org's jobs\n"
    "  --wait-threshold DURATION  a queue wait this long counts as long (default 60s)\n"
    "  --min-attempts N        rates need at least N attempts (default 5)\n"
    "  -o, --output FMT        text (default) or json\n"
    "  --server URL, --token TOKEN  as for every client command\n"
    "\n"
    "exit codes: 0 success (with or without recommendations), 1 server error,\n"
    "2 usage error.\n";

static double num(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);
	return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *secs(const json_t *o, const char *key, char out[32])
{
	human_secs(num(o, key), out);
	return out;
}

static void print_overview(const json_t *r)
{
	const json_t *jobs = json_object_get(r, "jobs"), *att = json_object_get(r, "attempts");
	char a[32], b[32], c[32];
	human_pct(num(jobs, "success_rate"), 1, a);
	printf("%-12s %.0f finished: %.0f succeeded, %.0f failed, %.0f timed out, %.0f lost, %.0f "
	       "cancelled; success %s\n",
	       "Jobs", num(jobs, "finished"), num(jobs, "succeeded"), num(jobs, "failed"),
	       num(jobs, "timed_out"), num(jobs, "lost"), num(jobs, "cancelled"),
	       isnan(num(jobs, "success_rate")) ? "-" : a);
	printf("%-12s %.0f (%.0f retries), lease expiries %.0f\n", "Attempts", num(att, "attempts"),
	       num(r, "retried_attempts"), num(att, "lease_expiries"));
	const json_t *d = json_object_get(r, "duration_seconds");
	printf("%-12s p50 %s  p95 %s  p99 %s  (%.0f attempts)\n", "Duration", secs(d, "p50", a),
	       secs(d, "p95", b), secs(d, "p99", c), num(d, "count"));
	const json_t *w = json_object_get(r, "queue_wait_seconds");
	printf("%-12s p50 %s  p95 %s  p99 %s\n", "Queue wait", secs(w, "p50", a), secs(w, "p95", b),
	       secs(w, "p99", c));
	human_pct(num(r, "utilisation"), 1, a);
	printf("%-12s %s of the slots' time was leased\n", "Utilisation",
	       isnan(num(r, "utilisation")) ? "-" : a);
}

static void print_groups(const json_t *r)
{
	const json_t *groups = json_object_get(r, "groups");
	if (!json_array_size(groups))
		return;
	printf("\nBy label set and executor:\n");
	struct table t;
	table_init(&t, 9, "  LABELS", "EXECUTOR", "ATTEMPTS", "P50", "P95", "P99", "WAIT-P50",
	           "WAIT-P95", "SUCCESS");
	size_t i;
	json_t *g;
	json_array_foreach(groups, i, g)
	{
		const json_t *d = json_object_get(g, "duration_seconds");
		const json_t *w = json_object_get(g, "queue_wait_seconds");
		const json_t *o = json_object_get(g, "outcome");
		const char *l = json_string_value(json_object_get(g, "labels"));
		char n[32], p50[32], p95[32], p99[32], w50[32], w95[32], ok[32];
		_cleanup_free_ char *labels = xasprintf("  %s", l && *l ? l : "(any)");
		snprintf(n, sizeof(n), "%.0f", num(o, "attempts"));
		human_pct(num(o, "success_rate"), isnan(num(o, "success_rate")) ? 0 : 1, ok);
		table_add(&t, labels, json_string_value(json_object_get(g, "executor")), n,
		          secs(d, "p50", p50), secs(d, "p95", p95), secs(d, "p99", p99),
		          secs(w, "p50", w50), secs(w, "p95", w95), ok);
	}
	table_print(&t, stdout);
	table_release(&t);
}

static void print_agents(const json_t *r)
{
	const json_t *agents = json_object_get(r, "agents");
	if (!json_array_size(agents))
		return;
	printf("\nAgents:\n");
	struct table t;
	table_init(&t, 8, "  AGENT", "STATE", "SLOTS", "BUSY", "UTIL", "ATTEMPTS", "FAILED",
	           "EXPIRED");
	size_t i;
	json_t *a;
	json_array_foreach(agents, i, a)
	{
		const json_t *o = json_object_get(a, "outcome");
		char slots[32], busy[32], util[32], att[32], failed[32], exp[32];
		_cleanup_free_ char *name =
		    xasprintf("  %s", json_string_value(json_object_get(a, "name")));
		snprintf(slots, sizeof(slots), "%.0f", num(a, "slots"));
		snprintf(busy, sizeof(busy), "%.0f", num(a, "busy_slots"));
		human_pct(num(a, "utilisation"), isnan(num(a, "utilisation")) ? 0 : 1, util);
		snprintf(att, sizeof(att), "%.0f", num(o, "attempts"));
		snprintf(failed, sizeof(failed), "%.0f",
		         num(o, "failed") + num(o, "timed_out") + num(o, "lost"));
		snprintf(exp, sizeof(exp), "%.0f", num(o, "lease_expiries"));
		table_add(&t, name, json_string_value(json_object_get(a, "state")), slots, busy,
		          util, att, failed, exp);
	}
	table_print(&t, stdout);
	table_release(&t);
}

static void print_now(const json_t *r)
{
	const json_t *n = json_object_get(r, "now");
	printf("\nNow: %.0f queued (%.0f unschedulable), %.0f running, %.0f/%.0f slots busy, %.0f "
	       "agents ready, %.0f draining, %.0f offline\n",
	       num(n, "queued"), num(n, "unschedulable"), num(n, "running") + num(n, "leased"),
	       num(n, "busy_slots"), num(n, "slots"), num(n, "agents_ready"),
	       num(n, "agents_draining"), num(n, "agents_offline"));
	size_t i;
	json_t *q;
	json_array_foreach(json_object_get(n, "queue"), i, q)
	{
		char w[32];
		const char *l = json_string_value(json_object_get(q, "labels"));
		printf("  [%s] %.0f queued, oldest %s%s\n", l && *l ? l : "(any)", num(q, "queued"),
		       secs(q, "oldest_wait_seconds", w),
		       json_is_true(json_object_get(q, "schedulable")) ? "" : " — unschedulable");
	}
}

static void print_recommendations(const json_t *r)
{
	const json_t *recs = json_object_get(r, "recommendations");
	printf("\nRecommendations:\n");
	if (!json_array_size(recs)) {
		printf("  none: no rule fired.\n");
		return;
	}
	size_t i;
	json_t *x;
	json_array_foreach(recs, i, x)
	{
		printf("  [%s] %s: %s\n", json_string_value(json_object_get(x, "severity")),
		       json_string_value(json_object_get(x, "rule")),
		       json_string_value(json_object_get(x, "message")));
		printf("      rule: %s\n", json_string_value(json_object_get(x, "why")));
	}
}

static void print_report(const json_t *r)
{
	const char *since = json_string_value(json_object_get(r, "since"));
	const char *until = json_string_value(json_object_get(r, "until"));
	printf("kiln performance report, %s .. %s%s\n\n", since ? since : "-", until ? until : "-",
	       json_is_true(json_object_get(r, "truncated")) ? " (the newest attempts only)" : "");
	print_overview(r);
	print_groups(r);
	print_agents(r);
	print_now(r);
	print_recommendations(r);
}

static void add_query(struct buf *b, const char *key, const char *v)
{
	if (!v)
		return;
	_cleanup_free_ char *e = client_escape(v, false);
	buf_printf(b, "%c%s=%s", strchr(b->data, '?') ? '&' : '?', key, e);
}

int cmd_stats(int argc, char **argv)
{
	enum { OPT_WAIT = 256, OPT_MIN };
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},
	    {"output", required_argument, NULL, 'o'},
	    {"server", required_argument, NULL, 's'},
	    {"token", required_argument, NULL, 't'},
	    {"org", required_argument, NULL, 'g'},
	    {"since", required_argument, NULL, 'S'},
	    {"until", required_argument, NULL, 'U'},
	    {"wait-threshold", required_argument, NULL, OPT_WAIT},
	    {"min-attempts", required_argument, NULL, OPT_MIN},
	    {0},
	};
	const char *server = NULL, *token = NULL, *fmt = "text";
	const char *org = NULL, *since = NULL, *until = NULL, *wait = NULL, *min = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		switch (c) {
		case 'h': return cli_print_help(cli_find_command("stats"));
		case 'o':
			if (!streq(optarg, "text") && !streq(optarg, "json"))
				return cli_usage_error(
				    "stats", "unknown output format '%s' (use text or json)",
				    optarg);
			fmt = optarg;
			break;
		case 's': server = optarg; break;
		case 't': token = optarg; break;
		case 'g': org = optarg; break;
		case 'S': since = optarg; break;
		case 'U': until = optarg; break;
		case OPT_WAIT: wait = optarg; break;
		case OPT_MIN: min = optarg; break;
		default: return cli_usage_error("stats", "unknown option");
		}
	}
	if (optind < argc)
		return cli_usage_error("stats", "unexpected argument '%s'", argv[optind]);
	struct kiln_client *cl = cli_connect("stats", server, token);
	if (!cl)
		return EXIT_FAIL;
	struct buf path = BUF_INIT;
	buf_puts(&path, "/v1/stats");
	add_query(&path, "since", since);
	add_query(&path, "until", until);
	add_query(&path, "org", org);
	add_query(&path, "wait_threshold", wait);
	add_query(&path, "min_attempts", min);
	json_t *ans = NULL;
	struct kiln_err err = {0};
	int rc = EXIT_OK;
	if (client_json(cl, "GET", path.data, NULL, NULL, &ans, &err) < 0)
		rc = cli_client_fail("stats", &err);
	else if (streq(fmt, "json"))
		cli_print_json(stdout, ans);
	else
		print_report(ans);
	json_decref(ans);
	buf_release(&path);
	client_free(cl);
	return rc;
}
