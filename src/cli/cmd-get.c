/* cmd-get: `kiln get jobs|agents` and `kiln describe job|agent ID`. */
#include "output.h"

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>

const char cmd_get_help[] =
	"usage: kiln get jobs [ID...] [--state S[,S]] [--label L] [--name N] [--limit N]\n"
	"       kiln get agents\n"
	"       [-o table|wide|json|yaml] [--watch] [--server URL] [--token TOKEN]\n"
	"\n"
	"Lists jobs (newest first) or agents.\n"
	"\n"
	"options:\n"
	"  --state S[,S]     only jobs in these states (queued, leased, running,\n"
	"                    succeeded, failed, cancelled, timed_out, lost)\n"
	"  --label L         only jobs whose runs-on has label L\n"
	"  --name N          only jobs named N\n"
	"  --limit N         at most N jobs (default 50, at most 1000)\n"
	"  -o, --output FMT  table (default), wide, json or yaml\n"
	"  -w, --watch       redraw every second when something changed (Ctrl-C ends)\n"
	"  --server URL, --token TOKEN   as for every client command\n"
	"\n"
	"exit codes: 0 listed, 1 server error or unknown job, 2 usage error.\n";

const char cmd_describe_help[] =
	"usage: kiln describe job ID | agent ID [-o text|json|yaml] [--server URL] [--token TOKEN]\n"
	"\n"
	"Shows everything about one job (spec, attempts with their agents, fences\n"
	"and results, artifacts) or one agent (labels, capacity, leases).\n"
	"\n"
	"exit codes: 0 shown, 1 not found or server error, 2 usage error.\n";

/* ---- jobs ----------------------------------------------------------------- */

static void agent_names(struct kiln_client *c, json_t **ret)
{
	json_t *ans = NULL;
	struct kiln_err err = {0};
	*ret = json_object();
	if (client_json(c, "GET", "/v1/agents", NULL, NULL, &ans, &err) < 0)
		return;
	size_t i;
	json_t *a;
	json_array_foreach(json_object_get(ans, "agents"), i, a)
	{
		char b[64];
		json_object_set(*ret, cli_str(json_object_get(a, "id"), b), json_object_get(a, "name"));
	}
	json_decref(ans);
}

static void render_jobs(const json_t *jobs, const json_t *names, enum cli_output fmt,
			struct buf *out)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (fmt == OUT_JSON) {
		cli_print_json(f, jobs);
	} else if (fmt == OUT_YAML) {
		cli_print_yaml(f, jobs);
	} else {
		struct table t;
		if (fmt == OUT_WIDE)
			table_init(&t, 10, "ID", "NAME", "STATE", "ATTEMPT", "AGENT", "AGE", "PRIORITY",
				   "RUNS-ON", "EXIT", "MESSAGE");
		else
			table_init(&t, 6, "ID", "NAME", "STATE", "ATTEMPT", "AGENT", "AGE");
		size_t i;
		json_t *j;
		json_array_foreach(jobs, i, j)
		{
			char id[64], agent_id[64], prio[64], exitc[64], age[32], att[64];
			cli_str(json_object_get(j, "agent_id"), agent_id);
			const char *agent = json_string_value(json_object_get(names, agent_id));
			snprintf(att, sizeof(att), "%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
				 json_integer_value(json_object_get(j, "attempt")),
				 json_integer_value(json_object_get(j, "max_attempts")));
			cli_age(json_object_get(j, "submitted_at"), age);
			const char *state = json_string_value(json_object_get(j, "state"));
			_cleanup_free_ char *st = NULL;
			if (state && streq(state, "queued") &&
			    json_is_false(json_object_get(j, "schedulable")))
				st = xstrdup("queued (unschedulable)");
			const char *msg = json_string_value(json_object_get(j, "reason"));
			if (!msg)
				msg = json_string_value(json_object_get(j, "message"));
			if (fmt == OUT_WIDE) {
				struct buf ro = BUF_INIT;
				size_t k;
				json_t *l;
				json_array_foreach(json_object_get(j, "runs_on"), k, l)
				{
					if (k)
						buf_putc(&ro, ',');
					buf_puts(&ro, json_string_value(l));
				}
				table_add(&t, cli_str(json_object_get(j, "id"), id),
					  json_string_value(json_object_get(j, "name")),
					  st ? st : state, att, agent ? agent : NULL, age,
					  cli_str(json_object_get(j, "priority"), prio), ro.data,
					  json_is_null(json_object_get(j, "exit_code"))
						  ? NULL
						  : cli_str(json_object_get(j, "exit_code"), exitc),
					  msg);
				buf_release(&ro);
			} else {
				table_add(&t, cli_str(json_object_get(j, "id"), id),
					  json_string_value(json_object_get(j, "name")),
					  st ? st : state, att, agent ? agent : NULL, age);
			}
		}
		if (json_array_size(jobs))
			table_print(&t, f);
		else
			fputs("no jobs\n", f);
		table_release(&t);
	}
	fclose(f);
	buf_append(out, text, len);
	free(text);
}

static void render_agents(const json_t *agents, enum cli_output fmt, struct buf *out)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (fmt == OUT_JSON) {
		cli_print_json(f, agents);
	} else if (fmt == OUT_YAML) {
		cli_print_yaml(f, agents);
	} else {
		struct table t;
		if (fmt == OUT_WIDE)
			table_init(&t, 9, "ID", "NAME", "STATUS", "SLOTS", "LABELS", "SEEN", "CPUS",
				   "MEMORY", "GPUS");
		else
			table_init(&t, 6, "ID", "NAME", "STATUS", "SLOTS", "LABELS", "SEEN");
		size_t i;
		json_t *a;
		json_array_foreach(agents, i, a)
		{
			char id[64], slots[64], seen[32], cpus[64], mem[32], gpus[64];
			json_t *cap = json_object_get(a, "capacity"), *used = json_object_get(a, "used");
			snprintf(slots, sizeof(slots), "%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
				 json_integer_value(json_object_get(used, "slots")),
				 json_integer_value(json_object_get(cap, "slots")));
			const char *status = json_is_true(json_object_get(a, "draining")) ? "draining"
					     : json_is_true(json_object_get(a, "online"))  ? "online"
											    : "offline";
			struct buf lb = BUF_INIT;
			size_t k;
			json_t *l;
			json_array_foreach(json_object_get(a, "labels"), k, l)
			{
				if (k)
					buf_putc(&lb, ',');
				buf_puts(&lb, json_string_value(l));
			}
			cli_age(json_object_get(a, "last_seen_at"), seen);
			if (fmt == OUT_WIDE) {
				format_size((uint64_t)json_integer_value(json_object_get(cap, "memory")), mem);
				table_add(&t, cli_str(json_object_get(a, "id"), id),
					  json_string_value(json_object_get(a, "name")), status, slots,
					  lb.data, seen, cli_str(json_object_get(cap, "cpus"), cpus),
					  mem, cli_str(json_object_get(cap, "gpus"), gpus));
			} else {
				table_add(&t, cli_str(json_object_get(a, "id"), id),
					  json_string_value(json_object_get(a, "name")), status, slots,
					  lb.data, seen);
			}
			buf_release(&lb);
		}
		if (json_array_size(agents))
			table_print(&t, f);
		else
			fputs("no agents\n", f);
		table_release(&t);
	}
	fclose(f);
	buf_append(out, text, len);
	free(text);
}

struct get_args {
	bool agents;
	char **ids;
	size_t n_ids;
	const char *state, *label, *name;
	long limit;
	enum cli_output fmt;
};

static int fetch(struct kiln_client *c, const struct get_args *a, struct buf *out,
		 struct kiln_err *err)
{
	if (a->agents) {
		json_t *ans = NULL;
		int r = client_json(c, "GET", "/v1/agents", NULL, NULL, &ans, err);
		if (r < 0)
			return r;
		render_agents(json_object_get(ans, "agents"), a->fmt, out);
		json_decref(ans);
		return 0;
	}
	json_t *jobs = NULL;
	if (a->n_ids) {
		jobs = json_array();
		for (size_t i = 0; i < a->n_ids; i++) {
			_cleanup_free_ char *esc = client_escape(a->ids[i], false);
			_cleanup_free_ char *path = xasprintf("/v1/jobs/%s", esc);
			json_t *j = NULL;
			int r = client_json(c, "GET", path, NULL, NULL, &j, err);
			if (r < 0) {
				json_decref(j);
				json_decref(jobs);
				return r;
			}
			json_object_del(j, "spec");
			json_object_del(j, "attempts");
			json_array_append_new(jobs, j);
		}
	} else {
		struct buf q = BUF_INIT;
		buf_printf(&q, "/v1/jobs?limit=%ld", a->limit);
		const char *keys[] = {"state", "label", "name"};
		const char *vals[] = {a->state, a->label, a->name};
		for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
			if (vals[i]) {
				_cleanup_free_ char *e = client_escape(vals[i], false);
				buf_printf(&q, "&%s=%s", keys[i], e);
			}
		json_t *ans = NULL;
		int r = client_json(c, "GET", q.data, NULL, NULL, &ans, err);
		buf_release(&q);
		if (r < 0)
			return r;
		jobs = json_incref(json_object_get(ans, "jobs"));
		json_decref(ans);
	}
	json_t *names = NULL;
	if (a->fmt == OUT_TABLE || a->fmt == OUT_WIDE)
		agent_names(c, &names);
	render_jobs(jobs, names, a->fmt, out);
	json_decref(names);
	json_decref(jobs);
	return 0;
}

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig)
{
	(void)sig;
	interrupted = 1;
}

int cmd_get(int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},	  {"output", required_argument, NULL, 'o'},
		{"watch", no_argument, NULL, 'w'},	  {"state", required_argument, NULL, 'S'},
		{"label", required_argument, NULL, 'L'},  {"name", required_argument, NULL, 'N'},
		{"limit", required_argument, NULL, 'l'},  {"server", required_argument, NULL, 's'},
		{"token", required_argument, NULL, 't'},  {0},
	};
	struct get_args a = {.limit = 50};
	const char *server = NULL, *token = NULL;
	bool watch = false;
	int c;
	int64_t v;
	while ((c = getopt_long(argc, argv, "ho:w", opts, NULL)) != -1) {
		switch (c) {
		case 'h': return cli_print_help(cli_find_command("get"));
		case 'o':
			if (cli_output_parse(optarg, &a.fmt) < 0)
				return cli_usage_error("get", "unknown output format '%s' (use table, wide, json or yaml)", optarg);
			break;
		case 'w': watch = true; break;
		case 'S': a.state = optarg; break;
		case 'L': a.label = optarg; break;
		case 'N': a.name = optarg; break;
		case 'l':
			if (parse_int64(optarg, 1, 1000, &v) < 0)
				return cli_usage_error("get", "--limit: '%s' is not a number in 1..1000", optarg);
			a.limit = (long)v;
			break;
		case 's': server = optarg; break;
		case 't': token = optarg; break;
		default: return cli_usage_error("get", "unknown option");
		}
	}
	if (optind >= argc)
		return cli_usage_error("get", "what? 'kiln get jobs' or 'kiln get agents'");
	const char *what = argv[optind++];
	if (streq(what, "jobs") || streq(what, "job")) {
		a.agents = false;
	} else if (streq(what, "agents") || streq(what, "agent")) {
		a.agents = true;
		if (optind < argc)
			return cli_usage_error("get", "unexpected argument '%s'", argv[optind]);
	} else {
		return cli_usage_error("get", "unknown resource '%s' (use jobs or agents)", what);
	}
	a.ids = argv + optind;
	a.n_ids = (size_t)(argc - optind);
	struct kiln_client *cl = cli_connect("get", server, token);
	if (!cl)
		return EXIT_FAIL;
	struct kiln_err err = {0};
	int rc = EXIT_OK;
	if (!watch) {
		struct buf out = BUF_INIT;
		if (fetch(cl, &a, &out, &err) < 0)
			rc = cli_client_fail("get", &err);
		else
			fwrite(out.data, 1, out.len, stdout);
		buf_release(&out);
		client_free(cl);
		return rc;
	}
	signal(SIGINT, on_sigint);
	signal(SIGTERM, on_sigint);
	bool tty = isatty(STDOUT_FILENO);
	struct buf last = BUF_INIT;
	while (!interrupted) {
		struct buf out = BUF_INIT;
		if (fetch(cl, &a, &out, &err) < 0) {
			buf_release(&out);
			buf_printf(&out, "kiln get: %s\n", err.msg);
		}
		if (!last.data || last.len != out.len || memcmp(last.data, out.data, out.len) != 0) {
			if (tty)
				fputs("\033[H\033[2J", stdout);
			else if (last.data)
				fputs("\n", stdout);
			fwrite(out.data, 1, out.len, stdout);
			fflush(stdout);
			buf_release(&last);
			last = out;
		} else {
			buf_release(&out);
		}
		for (int i = 0; i < 10 && !interrupted; i++)
			usleep(100 * 1000);
	}
	buf_release(&last);
	client_free(cl);
	return EXIT_OK;
}

/* ---- describe ------------------------------------------------------------- */

static void line(const char *k, const char *v) { printf("%-12s %s\n", k, v && *v ? v : "-"); }

static void time_line(const char *k, const json_t *ts)
{
	char age[32];
	if (!json_is_string(ts)) {
		line(k, "-");
		return;
	}
	cli_age(ts, age);
	_cleanup_free_ char *v = xasprintf("%s (%s ago)", json_string_value(ts), age);
	line(k, v);
}

static void describe_job(struct kiln_client *c, const json_t *j)
{
	char b[64], b2[64];
	line("Job:", cli_str(json_object_get(j, "id"), b));
	line("Name:", json_string_value(json_object_get(j, "name")));
	const char *state = json_string_value(json_object_get(j, "state"));
	_cleanup_free_ char *st = NULL;
	if (json_is_integer(json_object_get(j, "exit_code")))
		st = xasprintf("%s (exit code %s)", state, cli_str(json_object_get(j, "exit_code"), b));
	line("State:", st ? st : state);
	if (json_is_string(json_object_get(j, "reason")))
		line("Waiting:", json_string_value(json_object_get(j, "reason")));
	if (json_is_string(json_object_get(j, "message")))
		line("Message:", json_string_value(json_object_get(j, "message")));
	struct buf ro = BUF_INIT;
	size_t i;
	json_t *l;
	json_array_foreach(json_object_get(j, "runs_on"), i, l)
	{
		if (i)
			buf_puts(&ro, ", ");
		buf_puts(&ro, json_string_value(l));
	}
	line("Runs on:", ro.data);
	buf_release(&ro);
	json_t *needs = json_object_get(j, "needs");
	char mem[32];
	format_size((uint64_t)json_integer_value(json_object_get(needs, "memory")), mem);
	_cleanup_free_ char *nd = xasprintf("cpus %s, memory %s, gpus %s",
					    cli_str(json_object_get(needs, "cpus"), b), mem,
					    cli_str(json_object_get(needs, "gpus"), b2));
	line("Needs:", nd);
	line("Priority:", cli_str(json_object_get(j, "priority"), b));
	char tmo[32];
	format_duration_ms((uint64_t)json_integer_value(json_object_get(j, "timeout_ms")), tmo);
	line("Timeout:", tmo);
	_cleanup_free_ char *att = xasprintf("%s of at most %s",
					     cli_str(json_object_get(j, "attempt"), b),
					     cli_str(json_object_get(j, "max_attempts"), b2));
	line("Attempts:", att);
	if (json_is_integer(json_object_get(j, "retry_of")))
		line("Retry of:", cli_str(json_object_get(j, "retry_of"), b));
	time_line("Submitted:", json_object_get(j, "submitted_at"));
	time_line("Leased:", json_object_get(j, "leased_at"));
	time_line("Started:", json_object_get(j, "started_at"));
	time_line("Finished:", json_object_get(j, "finished_at"));

	json_t *atts = json_object_get(j, "attempts");
	if (json_array_size(atts)) {
		printf("\nAttempts:\n");
		struct table t;
		table_init(&t, 7, "  #", "STATE", "AGENT", "FENCE", "LEASED", "EXIT", "MESSAGE");
		json_t *a;
		json_array_foreach(atts, i, a)
		{
			char n[64], fence[64], exitc[64], age[32];
			_cleanup_free_ char *num = xasprintf("  %s", cli_str(json_object_get(a, "attempt"), n));
			cli_age(json_object_get(a, "leased_at"), age);
			_cleanup_free_ char *ago = xasprintf("%s ago", age);
			table_add(&t, num, json_string_value(json_object_get(a, "state")),
				  json_string_value(json_object_get(a, "agent")),
				  cli_str(json_object_get(a, "fence"), fence), ago,
				  json_is_null(json_object_get(a, "exit_code"))
					  ? NULL
					  : cli_str(json_object_get(a, "exit_code"), exitc),
				  json_string_value(json_object_get(a, "message")));
		}
		table_print(&t, stdout);
		table_release(&t);
	}
	cli_describe_usage(j);
	_cleanup_free_ char *path = xasprintf("/v1/jobs/%s/artifacts", cli_str(json_object_get(j, "id"), b));
	json_t *ans = NULL;
	struct kiln_err err = {0};
	if (client_json(c, "GET", path, NULL, NULL, &ans, &err) >= 0 &&
	    json_array_size(json_object_get(ans, "artifacts"))) {
		printf("\nArtifacts:\n");
		struct table t;
		table_init(&t, 3, "  PATH", "SIZE", "SHA256");
		json_t *a;
		json_array_foreach(json_object_get(ans, "artifacts"), i, a)
		{
			char size[32];
			format_size((uint64_t)json_integer_value(json_object_get(a, "size")), size);
			_cleanup_free_ char *p = xasprintf("  %s", json_string_value(json_object_get(a, "path")));
			table_add(&t, p, size, json_string_value(json_object_get(a, "sha256")));
		}
		table_print(&t, stdout);
		table_release(&t);
	}
	json_decref(ans);
	json_t *spec = json_object_get(j, "spec");
	if (spec) {
		printf("\nSpec:\n");
		char *text = NULL;
		size_t len = 0;
		FILE *f = open_memstream(&text, &len);
		cli_print_yaml(f, spec);
		fclose(f);
		for (char *p = text; p && *p;) {
			char *nl = strchr(p, '\n');
			printf("  %.*s\n", nl ? (int)(nl - p) : (int)strlen(p), p);
			p = nl ? nl + 1 : NULL;
		}
		free(text);
	}
}

static void describe_agent(const json_t *a)
{
	char b[64], b2[64];
	line("Agent:", cli_str(json_object_get(a, "id"), b));
	line("Name:", json_string_value(json_object_get(a, "name")));
	line("Status:", json_is_true(json_object_get(a, "draining")) ? "draining"
			: json_is_true(json_object_get(a, "online")) ? "online"
								      : "offline");
	struct buf lb = BUF_INIT;
	size_t i;
	json_t *l;
	json_array_foreach(json_object_get(a, "labels"), i, l)
	{
		if (i)
			buf_puts(&lb, ", ");
		buf_puts(&lb, json_string_value(l));
	}
	line("Labels:", lb.data);
	buf_release(&lb);
	json_t *cap = json_object_get(a, "capacity"), *used = json_object_get(a, "used");
	char m1[32], m2[32];
	format_size((uint64_t)json_integer_value(json_object_get(used, "memory")), m1);
	format_size((uint64_t)json_integer_value(json_object_get(cap, "memory")), m2);
	_cleanup_free_ char *s1 = xasprintf("%s of %s", cli_str(json_object_get(used, "slots"), b),
					    cli_str(json_object_get(cap, "slots"), b2));
	line("Slots:", s1);
	_cleanup_free_ char *s2 = xasprintf("%s of %s", cli_str(json_object_get(used, "cpus"), b),
					    cli_str(json_object_get(cap, "cpus"), b2));
	line("CPUs:", s2);
	_cleanup_free_ char *s3 = xasprintf("%s of %s", m1, m2);
	line("Memory:", s3);
	_cleanup_free_ char *s4 = xasprintf("%s of %s", cli_str(json_object_get(used, "gpus"), b),
					    cli_str(json_object_get(cap, "gpus"), b2));
	line("GPUs:", s4);
	time_line("Registered:", json_object_get(a, "registered_at"));
	time_line("Last seen:", json_object_get(a, "last_seen_at"));
	json_t *leases = json_object_get(a, "leases");
	if (json_array_size(leases)) {
		printf("\nLeases:\n");
		struct table t;
		table_init(&t, 6, "  JOB", "NAME", "STATE", "FENCE", "ATTEMPT", "EXPIRES IN");
		json_t *x;
		json_array_foreach(leases, i, x)
		{
			char id[64], f[64], at[64], exp[32];
			format_duration_ms((uint64_t)json_integer_value(json_object_get(x, "expires_in_ms")), exp);
			_cleanup_free_ char *jid = xasprintf("  %s", cli_str(json_object_get(x, "job_id"), id));
			table_add(&t, jid, json_string_value(json_object_get(x, "name")),
				  json_string_value(json_object_get(x, "state")),
				  cli_str(json_object_get(x, "fence"), f),
				  cli_str(json_object_get(x, "attempt"), at), exp);
		}
		table_print(&t, stdout);
		table_release(&t);
	}
}

int cmd_describe(int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},	 {"output", required_argument, NULL, 'o'},
		{"server", required_argument, NULL, 's'}, {"token", required_argument, NULL, 't'},
		{0},
	};
	const char *server = NULL, *token = NULL, *fmt = "text";
	int c;
	while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		switch (c) {
		case 'h': return cli_print_help(cli_find_command("describe"));
		case 'o':
			if (!streq(optarg, "text") && !streq(optarg, "json") && !streq(optarg, "yaml"))
				return cli_usage_error("describe", "unknown output format '%s' (use text, json or yaml)", optarg);
			fmt = optarg;
			break;
		case 's': server = optarg; break;
		case 't': token = optarg; break;
		default: return cli_usage_error("describe", "unknown option");
		}
	}
	if (argc - optind != 2)
		return cli_usage_error("describe", "expected 'job ID' or 'agent ID'");
	const char *what = argv[optind], *id = argv[optind + 1];
	bool job = streq(what, "job") || streq(what, "jobs");
	if (!job && !streq(what, "agent") && !streq(what, "agents"))
		return cli_usage_error("describe", "unknown resource '%s' (use job or agent)", what);
	struct kiln_client *cl = cli_connect("describe", server, token);
	if (!cl)
		return EXIT_FAIL;
	_cleanup_free_ char *esc = client_escape(id, false);
	_cleanup_free_ char *path = xasprintf("/v1/%s/%s", job ? "jobs" : "agents", esc);
	json_t *ans = NULL;
	struct kiln_err err = {0};
	int rc = EXIT_OK;
	if (client_json(cl, "GET", path, NULL, NULL, &ans, &err) < 0)
		rc = cli_client_fail("describe", &err);
	else if (streq(fmt, "json"))
		cli_print_json(stdout, ans);
	else if (streq(fmt, "yaml"))
		cli_print_yaml(stdout, ans);
	else if (job)
		describe_job(cl, ans);
	else
		describe_agent(ans);
	json_decref(ans);
	client_free(cl);
	return rc;
}
