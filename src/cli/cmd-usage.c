/*
 * cmd-usage: `kiln usage` — what jobs used, summed per org over a period
 * (GET /v1/usage), as a table, CSV or JSON: the basis for chargeback. Also
 * the "Usage:" section of `kiln describe job`.
 */
#include "cli.h"
#include "human.h"
#include "output.h"

#include <getopt.h>
#include <inttypes.h>

const char cmd_usage_help[] =
    "usage: kiln usage [--org ORG] [--since WHEN] [--until WHEN] [-o table|csv|json]\n"
    "                  [--server URL] [--token TOKEN]\n"
    "\n"
    "Sums what jobs used per org over a period: attempts that finished in\n"
    "[since, until). Each attempt counts once, retries and cancelled attempts\n"
    "included (they used resources too).\n"
    "\n"
    "Columns: jobs and attempts; queue wait; wall time; CPU (user + system);\n"
    "the largest memory peak and memory-time (peak x wall, GiB-hours); bytes\n"
    "read and written; GPU-time (GPUs held x wall). -o csv and -o json carry\n"
    "the raw numbers in base units (seconds, bytes) for billing scripts.\n"
    "\n"
    "options:\n"
    "  --org ORG        only this org (default: every org)\n"
    "  --since WHEN     start: a duration ago (30d, 12h) or an RFC 3339 time\n"
    "                   (2026-11-01T00:00:00Z); default 30d\n"
    "  --until WHEN     end, the same way; default now\n"
    "  -o, --output FMT table (default), csv or json\n"
    "  --server URL     the kiln server (default: $KILN_ADDR, the config file, or\n"
    "                   http://127.0.0.1:7700)\n"
    "  --token TOKEN    API token (default: $KILN_TOKEN or the config file)\n"
    "\n"
    "exit codes: 0 success, 1 server error, 2 usage error.\n";

static double num(const json_t *o, const char *key)
{
	return json_number_value(json_object_get(o, key));
}

/* The CSV columns: each a field of a GET /v1/usage row. */
static const char *const csv_fields[] = {
    "jobs",
    "attempts",
    "queue_wait_seconds",
    "wall_seconds",
    "cpu_user_seconds",
    "cpu_system_seconds",
    "cpu_seconds",
    "memory_peak_bytes_max",
    "memory_byte_seconds",
    "io_read_bytes",
    "io_write_bytes",
    "oom_kills",
    "gpu_seconds",
};

static void csv_value(FILE *f, const json_t *v)
{
	if (json_is_integer(v))
		fprintf(f, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
	else if (json_is_real(v))
		fprintf(f, "%.3f", json_real_value(v));
	else
		fputs("", f);
}

static void print_csv(const json_t *ans)
{
	const char *since = json_string_value(json_object_get(ans, "since"));
	const char *until = json_string_value(json_object_get(ans, "until"));
	fputs("org,since,until", stdout);
	for (size_t k = 0; k < ARRAY_SIZE(csv_fields); k++)
		printf(",%s", csv_fields[k]);
	fputc('\n', stdout);
	size_t i;
	json_t *row;
	json_array_foreach(json_object_get(ans, "orgs"), i, row)
	{
		/* Org names are [a-z0-9._-]: no quoting needed. */
		printf("%s,%s,%s", json_string_value(json_object_get(row, "org")),
		       since ? since : "", until ? until : "");
		for (size_t k = 0; k < ARRAY_SIZE(csv_fields); k++) {
			fputc(',', stdout);
			csv_value(stdout, json_object_get(row, csv_fields[k]));
		}
		fputc('\n', stdout);
	}
}

static void add_row(struct table *t, const char *org, const json_t *row)
{
	char jobs[32], atts[32], wait[32], wall[32], cpu[32], mem[32], memh[32], rd[32], wr[32],
	    gpu[32];
	snprintf(jobs, sizeof(jobs), "%.0f", num(row, "jobs"));
	snprintf(atts, sizeof(atts), "%.0f", num(row, "attempts"));
	human_secs(num(row, "queue_wait_seconds"), wait);
	human_secs(num(row, "wall_seconds"), wall);
	human_secs(num(row, "cpu_seconds"), cpu);
	human_bytes(num(row, "memory_peak_bytes_max"), mem);
	snprintf(memh, sizeof(memh), "%.2f",
	         num(row, "memory_byte_seconds") / 3600.0 / 1073741824.0);
	human_bytes(num(row, "io_read_bytes"), rd);
	human_bytes(num(row, "io_write_bytes"), wr);
	human_secs(num(row, "gpu_seconds"), gpu);
	table_add(t, org, jobs, atts, wait, wall, cpu, mem, memh, rd, wr, gpu);
}

static void print_table(const json_t *ans)
{
	const char *since = json_string_value(json_object_get(ans, "since"));
	const char *until = json_string_value(json_object_get(ans, "until"));
	printf("Usage of attempts that finished from %s to %s\n\n", since ? since : "the start",
	       until ? until : "now");
	struct table t;
	table_init(&t, 11, "ORG", "JOBS", "ATTEMPTS", "QUEUE-WAIT", "WALL", "CPU", "MEM-PEAK",
	           "MEM-GIB-H", "READ", "WRITTEN", "GPU-TIME");
	size_t i;
	json_t *row;
	json_t *orgs = json_object_get(ans, "orgs");
	json_array_foreach(orgs, i, row)
	    add_row(&t, json_string_value(json_object_get(row, "org")), row);
	if (json_array_size(orgs) > 1)
		add_row(&t, "(total)", json_object_get(ans, "total"));
	if (json_array_size(orgs) == 0)
		printf("No attempt finished in this period.\n");
	else
		table_print(&t, stdout);
	table_release(&t);
}

int cmd_usage(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},         {"output", required_argument, NULL, 'o'},
	    {"server", required_argument, NULL, 's'}, {"token", required_argument, NULL, 't'},
	    {"org", required_argument, NULL, 'g'},    {"since", required_argument, NULL, 'S'},
	    {"until", required_argument, NULL, 'U'},  {0},
	};
	const char *server = NULL, *token = NULL, *fmt = "table";
	const char *org = NULL, *since = "30d", *until = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		switch (c) {
		case 'h': return cli_print_help(cli_find_command("usage"));
		case 'o':
			if (!streq(optarg, "table") && !streq(optarg, "csv") &&
			    !streq(optarg, "json"))
				return cli_usage_error(
				    "usage",
				    "unknown output format '%s' (use table, csv or "
				    "json)",
				    optarg);
			fmt = optarg;
			break;
		case 's': server = optarg; break;
		case 't': token = optarg; break;
		case 'g': org = optarg; break;
		case 'S': since = optarg; break;
		case 'U': until = optarg; break;
		default: return cli_usage_error("usage", "unknown option");
		}
	}
	if (optind < argc)
		return cli_usage_error("usage", "unexpected argument '%s'", argv[optind]);
	struct kiln_client *cl = cli_connect("usage", server, token);
	if (!cl)
		return EXIT_FAIL;
	struct buf path = BUF_INIT;
	_cleanup_free_ char *s_esc = client_escape(since, false);
	buf_printf(&path, "/v1/usage?since=%s", s_esc);
	if (until) {
		_cleanup_free_ char *e = client_escape(until, false);
		buf_printf(&path, "&until=%s", e);
	}
	if (org) {
		_cleanup_free_ char *e = client_escape(org, false);
		buf_printf(&path, "&org=%s", e);
	}
	json_t *ans = NULL;
	struct kiln_err err = {0};
	int rc = EXIT_OK;
	if (client_json(cl, "GET", path.data, NULL, NULL, &ans, &err) < 0)
		rc = cli_client_fail("usage", &err);
	else if (streq(fmt, "json"))
		cli_print_json(stdout, ans);
	else if (streq(fmt, "csv"))
		print_csv(ans);
	else
		print_table(ans);
	json_decref(ans);
	buf_release(&path);
	client_free(cl);
	return rc;
}

/* ---- kiln describe job: the Usage section --------------------------------- */

void cli_describe_usage(const json_t *job)
{
	const json_t *u = json_object_get(job, "usage");
	if (!json_is_object(u) || json_array_size(json_object_get(job, "attempts")) == 0)
		return;
	char a[32], b[32], c[32];
	printf("\nUsage:\n");
	human_secs(num(u, "queue_wait_ms") / 1e3, a);
	printf("  %-12s %s\n", "Queue wait:", a);
	if (!json_is_true(json_object_get(u, "reported"))) {
		printf("  %-12s %s\n", "Measures:", "not reported by the agent (yet)");
		return;
	}
	human_secs(num(u, "wall_ms") / 1e3, a);
	printf("  %-12s %s\n", "Wall:", a);
	human_secs(num(u, "cpu_ms") / 1e3, a);
	human_secs(num(u, "cpu_user_ms") / 1e3, b);
	human_secs(num(u, "cpu_system_ms") / 1e3, c);
	printf("  %-12s %s (%s user, %s system)\n", "CPU:", a, b, c);
	human_bytes(num(u, "memory_peak_bytes"), a);
	printf("  %-12s %s\n", "Memory peak:", a);
	human_bytes(num(u, "io_read_bytes"), a);
	human_bytes(num(u, "io_write_bytes"), b);
	printf("  %-12s %s read, %s written\n", "I/O:", a, b);
	if (num(u, "gpus") > 0) {
		human_secs(num(u, "gpu_ms") / 1e3, a);
		printf("  %-12s %.0f held, %s GPU-time\n", "GPUs:", num(u, "gpus"), a);
	}
	if (num(u, "oom_kills") > 0)
		printf("  %-12s %.0f processes\n", "OOM kills:", num(u, "oom_kills"));
	const char *ex = json_string_value(json_object_get(u, "executor"));
	if (ex)
		printf("  %-12s %s\n", "Executor:", ex);
}
