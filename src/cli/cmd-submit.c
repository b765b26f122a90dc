/* cmd-submit: `kiln submit -f FILE [--wait] [--follow]` and the log follower. */
#include "output.h"

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>

const char cmd_submit_help[] =
	"usage: kiln submit -f FILE [--wait] [--follow] [-o table|json|yaml]\n"
	"                   [--server URL] [--token TOKEN]\n"
	"\n"
	"Submits a job spec (YAML or JSON, docs/job-spec.md; '-' reads stdin) to the\n"
	"kiln server. The server validates it with the same messages as 'kiln\n"
	"validate'; a matrix makes one job per combination. Prints the new jobs.\n"
	"\n"
	"options:\n"
	"  -f, --file FILE     the spec to submit (required)\n"
	"  --wait              wait until every job has ended; print their results\n"
	"  --follow            stream the jobs' logs while they run (implies --wait)\n"
	"  -o, --output FMT    table (default), json or yaml\n"
	"  --server URL        the server (else $KILN_ADDR, the config file, or\n"
	"                      http://127.0.0.1:7700)\n"
	"  --token TOKEN       API token (else $KILN_TOKEN or the config file)\n"
	"\n"
	"exit codes: 0 submitted (with --wait: every job succeeded), 1 invalid spec,\n"
	"server error, or (with --wait) a job that did not succeed, 2 usage error.\n";

/* ---- following a log ------------------------------------------------------ */

struct log_out {
	FILE *f;
	uint64_t *offset; /* advanced by what was written */
};

static int write_out(const void *data, size_t len, void *ud)
{
	struct log_out *o = ud;
	if (fwrite(data, 1, len, o->f) != len)
		return -EIO;
	fflush(o->f);
	*o->offset += len;
	return 0;
}

static int get_job(struct kiln_client *c, int64_t id, json_t **ret, struct kiln_err *err)
{
	_cleanup_free_ char *path = xasprintf("/v1/jobs/%" PRId64, id);
	return client_json(c, "GET", path, NULL, NULL, ret, err);
}

int cli_follow_log(struct kiln_client *c, int64_t id, int64_t attempt, uint64_t offset,
		   bool follow, FILE *out, struct kiln_err *err)
{
	for (;;) {
		json_t *job = NULL;
		int r = get_job(c, id, &job, err);
		if (r < 0)
			return r;
		const char *state = json_string_value(json_object_get(job, "state"));
		int64_t cur = json_integer_value(json_object_get(job, "attempt"));
		bool queued = state && streq(state, "queued");
		bool ended = !state || (!queued && !streq(state, "leased") && !streq(state, "running"));
		json_decref(job);
		if (!attempt)
			attempt = queued && follow ? cur + 1 : cur;
		if (attempt <= 0)
			return 0; /* never ran, and not following: no log */
		_cleanup_free_ char *path = xasprintf("/v1/jobs/%" PRId64 "/log?attempt=%" PRId64
						      "&offset=%" PRIu64 "%s",
						      id, attempt, offset, follow ? "&follow=1" : "");
		struct log_out lo = {out, &offset};
		r = client_stream(c, path, NULL, write_out, &lo, NULL, err);
		if (r < 0)
			return r;
		if (!follow || ended)
			return 0;
		/* The attempt ended: the job finished, or was queued again. */
		r = get_job(c, id, &job, err);
		if (r < 0)
			return r;
		state = json_string_value(json_object_get(job, "state"));
		cur = json_integer_value(json_object_get(job, "attempt"));
		queued = state && streq(state, "queued");
		ended = !state || (!queued && !streq(state, "leased") && !streq(state, "running"));
		json_decref(job);
		if (ended)
			return 0;
		int64_t next = queued ? cur + 1 : cur;
		if (next == attempt)
			continue; /* same attempt still running: resume where we are */
		fprintf(stderr, "kiln: job %" PRId64 ": attempt %" PRId64 " ended; following attempt %" PRId64 "\n",
			id, attempt, next);
		attempt = next;
		offset = 0;
	}
}

/* ---- waiting -------------------------------------------------------------- */

static bool is_terminal(const char *state)
{
	enum job_state s;
	return state && job_state_from_string(state, &s) == 0 && job_state_is_terminal(s);
}

/* Waits for job id to end; returns its final JSON (new reference). */
static int wait_job(struct kiln_client *c, int64_t id, json_t **ret, struct kiln_err *err)
{
	unsigned delay_ms = 100;
	for (;;) {
		json_t *job = NULL;
		int r = get_job(c, id, &job, err);
		if (r < 0)
			return r;
		if (is_terminal(json_string_value(json_object_get(job, "state")))) {
			*ret = job;
			return 0;
		}
		json_decref(job);
		usleep(delay_ms * 1000);
		delay_ms = MIN(delay_ms * 2, 1000u);
	}
}

static void print_result(const json_t *job)
{
	char b1[64], b2[64];
	const char *state = json_string_value(json_object_get(job, "state"));
	const json_t *msg = json_object_get(job, "message");
	printf("job %s %s: %s", cli_str(json_object_get(job, "id"), b1),
	       json_string_value(json_object_get(job, "name")), state ? state : "?");
	if (json_is_integer(json_object_get(job, "exit_code")))
		printf(" (exit code %s)", cli_str(json_object_get(job, "exit_code"), b2));
	if (json_is_string(msg) && state && !streq(state, "succeeded"))
		printf(": %s", json_string_value(msg));
	putchar('\n');
}

/* ---- the command ---------------------------------------------------------- */

static void print_jobs(const json_t *jobs, enum cli_output fmt)
{
	if (fmt == OUT_JSON) {
		cli_print_json(stdout, jobs);
		return;
	}
	if (fmt == OUT_YAML) {
		cli_print_yaml(stdout, jobs);
		return;
	}
	struct table t;
	table_init(&t, 4, "ID", "NAME", "STATE", "REASON");
	size_t i;
	json_t *j;
	json_array_foreach(jobs, i, j)
	{
		char b[64];
		table_add(&t, cli_str(json_object_get(j, "id"), b),
			  json_string_value(json_object_get(j, "name")),
			  json_string_value(json_object_get(j, "state")),
			  json_string_value(json_object_get(j, "reason")));
	}
	table_print(&t, stdout);
	table_release(&t);
}

int cmd_submit(int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},	  {"file", required_argument, NULL, 'f'},
		{"wait", no_argument, NULL, 'w'},	  {"follow", no_argument, NULL, 'F'},
		{"output", required_argument, NULL, 'o'}, {"server", required_argument, NULL, 's'},
		{"token", required_argument, NULL, 't'},  {0},
	};
	const char *file = NULL, *server = NULL, *token = NULL;
	bool wait = false, follow = false;
	enum cli_output fmt = OUT_TABLE;
	int c;
	while ((c = getopt_long(argc, argv, "hf:o:", opts, NULL)) != -1) {
		switch (c) {
		case 'h': return cli_print_help(cli_find_command("submit"));
		case 'f': file = optarg; break;
		case 'w': wait = true; break;
		case 'F': follow = wait = true; break;
		case 'o':
			if (cli_output_parse(optarg, &fmt) < 0 || fmt == OUT_WIDE)
				return cli_usage_error("submit", "unknown output format '%s' (use table, json or yaml)", optarg);
			break;
		case 's': server = optarg; break;
		case 't': token = optarg; break;
		default: return cli_usage_error("submit", "unknown option");
		}
	}
	if (!file)
		return cli_usage_error("submit", "which spec? use -f FILE ('-' for stdin)");
	if (optind < argc)
		return cli_usage_error("submit", "unexpected argument '%s' (the spec is given with -f)", argv[optind]);

	struct buf text = BUF_INIT;
	int r = read_file(file, (1 << 20) + 1, &text);
	if (r == -EFBIG)
		return cli_fail("submit", "'%s' is larger than 1 MiB (the limit of a job spec)", file);
	if (r < 0)
		return cli_fail("submit", "cannot read '%s': %s", file, strerror(-r));
	struct kiln_client *cl = cli_connect("submit", server, token);
	if (!cl) {
		buf_release(&text);
		return EXIT_FAIL;
	}
	_cleanup_free_ char *name = client_escape(streq(file, "-") ? "<stdin>" : file, true);
	_cleanup_free_ char *path = xasprintf("/v1/jobs?file=%s", name);
	struct kiln_err err = {0};
	json_t *ans = NULL;
	r = client_request(cl, "POST", path,
			   endswith(file, ".json") ? "application/json" : "application/yaml",
			   text.data ? text.data : "", text.len, NULL, &ans, &err);
	buf_release(&text);
	if (r < 0) {
		const char *code = json_string_value(json_object_get(json_object_get(ans, "error"), "code"));
		if (code && streq(code, "invalid_spec")) {
			/* file:line:col lines, as kiln validate prints them. */
			fflush(stdout);
			fprintf(stderr, "%s\n", err.msg);
		} else {
			cli_client_fail("submit", &err);
		}
		json_decref(ans);
		client_free(cl);
		return EXIT_FAIL;
	}
	json_t *jobs = json_object_get(ans, "jobs");
	if (!wait || fmt != OUT_TABLE)
		print_jobs(jobs, fmt);
	int rc = EXIT_OK;
	if (wait) {
		size_t i;
		json_t *j;
		json_array_foreach(jobs, i, j)
		{
			int64_t id = json_integer_value(json_object_get(j, "id"));
			if (follow) {
				if (json_array_size(jobs) > 1)
					printf("==> job %" PRId64 " (%s) <==\n", id,
					       json_string_value(json_object_get(j, "name")));
				fflush(stdout);
				if (cli_follow_log(cl, id, 0, 0, true, stdout, &err) < 0) {
					rc = cli_client_fail("submit", &err);
					break;
				}
			}
			json_t *done = NULL;
			if (wait_job(cl, id, &done, &err) < 0) {
				rc = cli_client_fail("submit", &err);
				break;
			}
			fflush(stdout);
			if (follow)
				fflush(stdout);
			print_result(done);
			const char *st = json_string_value(json_object_get(done, "state"));
			if (!st || !streq(st, "succeeded"))
				rc = EXIT_FAIL;
			json_decref(done);
		}
	}
	json_decref(ans);
	client_free(cl);
	return rc;
}
