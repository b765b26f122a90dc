/*
 * proto: JSON form of the API's types. Writers never fail (allocation
 * failure aborts); readers validate every field they take and name it in the
 * error.
 */
#include "proto.h"

#include <ctype.h>
#include <inttypes.h>
#include <time.h>

static const char *const state_names[JOB_STATE_MAX] = {
	[JOB_QUEUED] = "queued",       [JOB_LEASED] = "leased",   [JOB_RUNNING] = "running",
	[JOB_SUCCEEDED] = "succeeded", [JOB_FAILED] = "failed",   [JOB_CANCELLED] = "cancelled",
	[JOB_TIMED_OUT] = "timed_out", [JOB_LOST] = "lost",
};

const char *job_state_to_string(enum job_state s)
{
	if ((unsigned)s >= JOB_STATE_MAX)
		return "unknown";
	return state_names[s];
}

int job_state_from_string(const char *s, enum job_state *ret)
{
	for (int i = 0; i < JOB_STATE_MAX; i++)
		if (streq(s, state_names[i])) {
			*ret = (enum job_state)i;
			return 0;
		}
	return -EINVAL;
}

/* ---- time ----------------------------------------------------------------- */

uint64_t proto_now_ms(void) { return now_real_ns() / NSEC_PER_MSEC; }

void proto_set_time(json_t *o, const char *key, uint64_t ms)
{
	if (!ms) {
		json_object_set_new(o, key, json_null());
		return;
	}
	char t[32];
	format_rfc3339(ms * NSEC_PER_MSEC, t);
	json_object_set_new(o, key, json_string(t));
}

static int scan_digits(const char **p, int n, int *ret)
{
	int v = 0;
	for (int i = 0; i < n; i++, (*p)++) {
		if (!isdigit((unsigned char)**p))
			return -EINVAL;
		v = v * 10 + (**p - '0');
	}
	*ret = v;
	return 0;
}

int proto_parse_time(const char *s, uint64_t *ret_ms)
{
	int y, mo, d, h, mi, sec, ms = 0;
	const char *p = s;
	if (scan_digits(&p, 4, &y) < 0 || *p++ != '-' || scan_digits(&p, 2, &mo) < 0 ||
	    *p++ != '-' || scan_digits(&p, 2, &d) < 0 || (*p != 'T' && *p != 't'))
		return -EINVAL;
	p++;
	if (scan_digits(&p, 2, &h) < 0 || *p++ != ':' || scan_digits(&p, 2, &mi) < 0 ||
	    *p++ != ':' || scan_digits(&p, 2, &sec) < 0)
		return -EINVAL;
	if (*p == '.') {
		p++;
		int digits = 0;
		while (isdigit((unsigned char)*p)) {
			if (digits < 3)
				ms = ms * 10 + (*p - '0');
			digits++;
			p++;
		}
		if (!digits)
			return -EINVAL;
		for (; digits < 3; digits++)
			ms *= 10;
	}
	if ((*p != 'Z' && *p != 'z') || p[1])
		return -EINVAL;
	/* Years past 2500 would overflow the nanosecond clocks times end up in. */
	if (y < 1970 || y > 2500 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 ||
	    sec > 60)
		return -EINVAL;
	struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d,
			.tm_hour = h, .tm_min = mi, .tm_sec = sec};
	time_t t = timegm(&tm);
	if (t < 0)
		return -EINVAL;
	*ret_ms = (uint64_t)t * 1000 + (uint64_t)ms;
	return 0;
}

/* ---- helpers -------------------------------------------------------------- */

json_t *proto_error(const char *code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	_cleanup_free_ char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	return json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
}

char *proto_labels_join(char *const *labels, size_t n)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "");
	for (size_t i = 0; i < n; i++) {
		if (i)
			buf_putc(&b, ',');
		for (const char *p = labels[i]; *p; p++)
			buf_putc(&b, (char)tolower((unsigned char)*p));
	}
	return buf_steal(&b);
}

char **proto_labels_split(const char *s, size_t *ret_n)
{
	size_t n = 0, cap = 0;
	char **v = NULL;
	v = xgrow(v, &cap, 1, sizeof(*v));
	if (s && *s) {
		const char *p = s;
		for (;;) {
			const char *e = strchr(p, ',');
			size_t len = e ? (size_t)(e - p) : strlen(p);
			if (len) {
				v = xgrow(v, &cap, n + 2, sizeof(*v));
				v[n++] = xstrndup(p, len);
			}
			if (!e)
				break;
			p = e + 1;
		}
	}
	v[n] = NULL;
	*ret_n = n;
	return v;
}

void proto_strv_free(char **v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static json_t *labels_json(const char *joined)
{
	json_t *a = json_array();
	size_t n;
	char **v = proto_labels_split(joined, &n);
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_string(v[i]));
	proto_strv_free(v, n);
	return a;
}

/* ---- capacity ------------------------------------------------------------- */

json_t *proto_capacity_to_json(const struct proto_capacity *c)
{
	return json_pack("{s:I,s:f,s:I,s:I}", "slots", (json_int_t)c->slots, "cpus", c->cpus,
			 "memory", (json_int_t)c->memory, "gpus", (json_int_t)c->gpus);
}

static int int_field(const json_t *o, const char *what, const char *key, int64_t max,
		     int64_t *ret, struct kiln_err *err)
{
	const json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v)) {
		*ret = 0;
		return 0;
	}
	if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > max)
		return kiln_err_set(err, -EINVAL, "%s.%s: expected an integer in 0..%" PRId64, what,
				    key, max);
	*ret = json_integer_value(v);
	return 0;
}

int proto_capacity_from_json(json_t *o, const char *what, struct proto_capacity *ret,
			     struct kiln_err *err)
{
	struct proto_capacity c = {0};
	if (!o || json_is_null(o)) {
		*ret = c;
		return 0;
	}
	if (!json_is_object(o))
		return kiln_err_set(err, -EINVAL, "%s: expected an object", what);
	const char *key;
	const json_t *v;
	json_object_foreach(o, key, v)
	{
		if (!streq(key, "slots") && !streq(key, "cpus") && !streq(key, "memory") &&
		    !streq(key, "gpus"))
			return kiln_err_set(err, -EINVAL,
					    "%s: unknown field '%s' (expected slots, cpus, memory, gpus)",
					    what, key);
	}
	int r = int_field(o, what, "slots", 1 << 20, &c.slots, err);
	if (r < 0)
		return r;
	r = int_field(o, what, "gpus", 1024, &c.gpus, err);
	if (r < 0)
		return r;
	v = json_object_get(o, "cpus");
	if (v && !json_is_null(v)) {
		if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1e6)
			return kiln_err_set(err, -EINVAL, "%s.cpus: expected a number >= 0", what);
		c.cpus = json_number_value(v);
	}
	v = json_object_get(o, "memory");
	if (json_is_string(v)) {
		if (parse_size(json_string_value(v), &c.memory) < 0)
			return kiln_err_set(err, -EINVAL,
					    "%s.memory: '%s' is not a size (use e.g. 512Mi, 4Gi)",
					    what, json_string_value(v));
	} else if (v && !json_is_null(v)) {
		if (!json_is_integer(v) || json_integer_value(v) < 0)
			return kiln_err_set(err, -EINVAL,
					    "%s.memory: expected bytes or a size string", what);
		c.memory = (uint64_t)json_integer_value(v);
	}
	*ret = c;
	return 0;
}

/* ---- usage ---------------------------------------------------------------- */

json_t *proto_usage_to_json(const struct proto_usage *u)
{
	json_t *o = json_object();
	json_object_set_new(o, "reported", json_boolean(u->reported));
	json_object_set_new(o, "queue_wait_ms", json_integer((json_int_t)u->queue_wait_ms));
	json_object_set_new(o, "wall_ms", json_integer((json_int_t)u->wall_ms));
	json_object_set_new(o, "cpu_user_ms", json_integer((json_int_t)u->cpu_user_ms));
	json_object_set_new(o, "cpu_system_ms", json_integer((json_int_t)u->cpu_system_ms));
	uint64_t cpu_ms = u->cpu_user_ms + u->cpu_system_ms;
	uint64_t gpu_ms = (uint64_t)u->gpus * u->wall_ms;
	json_object_set_new(o, "cpu_ms", json_integer((json_int_t)cpu_ms));
	json_object_set_new(o, "memory_peak_bytes", json_integer((json_int_t)u->memory_peak_bytes));
	json_object_set_new(o, "io_read_bytes", json_integer((json_int_t)u->io_read_bytes));
	json_object_set_new(o, "io_write_bytes", json_integer((json_int_t)u->io_write_bytes));
	json_object_set_new(o, "oom_kills", json_integer((json_int_t)u->oom_kills));
	json_object_set_new(o, "gpus", json_integer((json_int_t)u->gpus));
	json_object_set_new(o, "gpu_ms", json_integer((json_int_t)gpu_ms));
	json_object_set_new(o, "executor", u->executor[0] ? json_string(u->executor) : json_null());
	return o;
}

#define USAGE_MAX (1LL << 53)

int proto_usage_from_json(const json_t *o, struct proto_usage *ret, struct kiln_err *err)
{
	static const struct {
		const char *key;
		size_t off;
	} fields[] = {
		{"wall_ms", offsetof(struct proto_usage, wall_ms)},
		{"cpu_user_ms", offsetof(struct proto_usage, cpu_user_ms)},
		{"cpu_system_ms", offsetof(struct proto_usage, cpu_system_ms)},
		{"memory_peak_bytes", offsetof(struct proto_usage, memory_peak_bytes)},
		{"io_read_bytes", offsetof(struct proto_usage, io_read_bytes)},
		{"io_write_bytes", offsetof(struct proto_usage, io_write_bytes)},
		{"oom_kills", offsetof(struct proto_usage, oom_kills)},
	};
	struct proto_usage u = {.reported = true};
	if (!json_is_object(o))
		return kiln_err_set(err, -EINVAL, "usage: expected an object");
	for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
		const json_t *v = json_object_get(o, fields[i].key);
		if (!v || json_is_null(v))
			continue;
		if (!json_is_integer(v) || json_integer_value(v) < 0 ||
		    json_integer_value(v) > USAGE_MAX)
			return kiln_err_set(err, -EINVAL,
					    "usage.%s: expected an integer in 0..2^53", fields[i].key);
		uint64_t x = (uint64_t)json_integer_value(v);
		memcpy((char *)&u + fields[i].off, &x, sizeof(x));
	}
	const json_t *ex = json_object_get(o, "executor");
	if (ex && !json_is_null(ex)) {
		const char *s = json_string_value(ex);
		size_t n = s ? strlen(s) : 0;
		bool ok = s && n > 0 && n < PROTO_EXECUTOR_MAX;
		for (size_t i = 0; ok && i < n; i++)
			ok = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
			     s[i] == '-';
		if (!ok)
			return kiln_err_set(err, -EINVAL,
					    "usage.executor: expected a name of 1..%d lower-case "
					    "letters, digits or '-'",
					    PROTO_EXECUTOR_MAX - 1);
		memcpy(u.executor, s, n + 1);
	}
	*ret = u;
	return 0;
}

void proto_usage_add(struct proto_usage *sum, const struct proto_usage *u)
{
	sum->reported = sum->reported || u->reported;
	sum->queue_wait_ms += u->queue_wait_ms;
	sum->wall_ms += u->wall_ms;
	sum->cpu_user_ms += u->cpu_user_ms;
	sum->cpu_system_ms += u->cpu_system_ms;
	sum->memory_peak_bytes = MAX(sum->memory_peak_bytes, u->memory_peak_bytes);
	sum->io_read_bytes += u->io_read_bytes;
	sum->io_write_bytes += u->io_write_bytes;
	sum->oom_kills += u->oom_kills;
	sum->gpus = MAX(sum->gpus, u->gpus);
	if (u->executor[0])
		memcpy(sum->executor, u->executor, sizeof(sum->executor));
}

/* ---- jobs ----------------------------------------------------------------- */

static void attempt_release(struct proto_attempt *a)
{
	free(a->agent_name);
	free(a->message);
}

void proto_job_release(struct proto_job *j)
{
	if (!j)
		return;
	free(j->name);
	free(j->runs_on);
	free(j->message);
	free(j->reason);
	free(j->org);
	json_decref(j->spec);
	for (size_t i = 0; i < j->n_attempts; i++)
		attempt_release(&j->attempts[i]);
	free(j->attempts);
	memset(j, 0, sizeof(*j));
}

void proto_jobs_free(struct proto_job *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		proto_job_release(&v[i]);
	free(v);
}

static json_t *attempt_to_json(const struct proto_attempt *a)
{
	json_t *o = json_pack("{s:I,s:I,s:I,s:s}", "attempt", (json_int_t)a->attempt, "fence",
			      (json_int_t)a->fence, "agent_id", (json_int_t)a->agent_id, "state",
			      job_state_to_string(a->state));
	if (a->agent_name)
		json_object_set_new(o, "agent", json_string(a->agent_name));
	proto_set_time(o, "leased_at", a->leased_at);
	proto_set_time(o, "started_at", a->started_at);
	proto_set_time(o, "finished_at", a->finished_at);
	json_object_set_new(o, "exit_code",
			    a->has_exit_code ? json_integer(a->exit_code) : json_null());
	json_object_set_new(o, "message", a->message ? json_string(a->message) : json_null());
	json_object_set_new(o, "usage", proto_usage_to_json(&a->usage));
	return o;
}

json_t *proto_job_to_json(const struct proto_job *j, unsigned flags)
{
	json_t *o = json_pack("{s:I,s:s,s:s,s:I,s:I,s:I,s:I}", "id", (json_int_t)j->id, "name",
			      j->name ? j->name : "", "state", job_state_to_string(j->state),
			      "priority", (json_int_t)j->priority, "attempt", (json_int_t)j->attempt,
			      "max_attempts", (json_int_t)j->max_attempts, "fence",
			      (json_int_t)j->fence);
	json_object_set_new(o, "agent_id", j->agent_id ? json_integer(j->agent_id) : json_null());
	json_object_set_new(o, "runs_on", labels_json(j->runs_on));
	json_object_set_new(o, "needs", proto_capacity_to_json(&j->needs));
	json_object_set_new(o, "timeout_ms", json_integer((json_int_t)j->timeout_ms));
	proto_set_time(o, "submitted_at", j->submitted_at);
	proto_set_time(o, "leased_at", j->leased_at);
	proto_set_time(o, "started_at", j->started_at);
	proto_set_time(o, "finished_at", j->finished_at);
	json_object_set_new(o, "exit_code",
			    j->has_exit_code ? json_integer(j->exit_code) : json_null());
	json_object_set_new(o, "message", j->message ? json_string(j->message) : json_null());
	json_object_set_new(o, "retry_of", j->retry_of ? json_integer(j->retry_of) : json_null());
	if (j->org)
		json_object_set_new(o, "org", json_string(j->org));
	json_object_set_new(o, "schedulable", json_boolean(!j->unschedulable));
	json_object_set_new(o, "reason", j->reason ? json_string(j->reason) : json_null());
	if ((flags & PROTO_JOB_SPEC) && j->spec)
		json_object_set(o, "spec", j->spec);
	if (flags & PROTO_JOB_ATTEMPTS) {
		json_t *a = json_array();
		for (size_t i = 0; i < j->n_attempts; i++)
			json_array_append_new(a, attempt_to_json(&j->attempts[i]));
		json_object_set_new(o, "attempts", a);
		json_object_set_new(o, "usage", proto_usage_to_json(&j->usage));
	}
	return o;
}

/* ---- agents --------------------------------------------------------------- */

void proto_agent_release(struct proto_agent *a)
{
	if (!a)
		return;
	free(a->name);
	free(a->org);
	proto_strv_free(a->labels, a->n_labels);
	free(a->job_ids);
	memset(a, 0, sizeof(*a));
}

json_t *proto_agent_to_json(const struct proto_agent *a)
{
	json_t *labels = json_array();
	for (size_t i = 0; i < a->n_labels; i++)
		json_array_append_new(labels, json_string(a->labels[i]));
	json_t *jobs = json_array();
	for (size_t i = 0; i < a->n_jobs; i++)
		json_array_append_new(jobs, json_integer(a->job_ids[i]));
	json_t *o = json_pack("{s:I,s:s,s:o,s:o,s:o,s:b,s:b,s:o}", "id", (json_int_t)a->id, "name",
			      a->name ? a->name : "", "labels", labels, "capacity",
			      proto_capacity_to_json(&a->capacity), "used",
			      proto_capacity_to_json(&a->used), "draining", a->draining, "online",
			      a->online, "jobs", jobs);
	proto_set_time(o, "registered_at", a->registered_at);
	proto_set_time(o, "last_seen_at", a->last_seen_at);
	json_object_set_new(o, "pool", json_string(a->org ? a->org : a->org_id ? "?" : "shared"));
	return o;
}

/* ---- artifacts ------------------------------------------------------------ */

void proto_artifact_release(struct proto_artifact *a)
{
	if (!a)
		return;
	free(a->path);
	a->path = NULL;
}

void proto_artifacts_free(struct proto_artifact *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		proto_artifact_release(&v[i]);
	free(v);
}

json_t *proto_artifact_to_json(const struct proto_artifact *a)
{
	json_t *o = json_pack("{s:I,s:I,s:s,s:s,s:I}", "job_id", (json_int_t)a->job_id, "attempt",
			      (json_int_t)a->attempt, "path", a->path, "sha256", a->sha256, "size",
			      (json_int_t)a->size);
	proto_set_time(o, "created_at", a->created_at);
	return o;
}

int proto_artifact_path_check(const char *path, struct kiln_err *err)
{
	size_t len = strlen(path);
	if (len == 0)
		return kiln_err_set(err, -EINVAL, "artifact path is empty");
	if (len > 1024)
		return kiln_err_set(err, -EINVAL, "artifact path is longer than 1024 bytes");
	if (path[0] == '/')
		return kiln_err_set(err, -EINVAL,
				    "artifact path '%s' is absolute (use a path relative to the workspace)",
				    path);
	if (!utf8_valid(path, len))
		return kiln_err_set(err, -EINVAL, "artifact path is not valid UTF-8");
	size_t parts = 0;
	const char *p = path;
	for (;;) {
		const char *e = strchr(p, '/');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n == 0)
			return kiln_err_set(err, -EINVAL, "artifact path '%s' has an empty component",
					    path);
		if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return kiln_err_set(err, -EINVAL,
					    "artifact path '%s' has a '%.*s' component (not allowed)",
					    path, (int)n, p);
		for (size_t i = 0; i < n; i++) {
			unsigned char c = (unsigned char)p[i];
			if (c < 0x20 || c == 0x7f || c == '\\')
				return kiln_err_set(err, -EINVAL,
						    "artifact path has a control character or backslash at byte %zu",
						    (size_t)(p - path) + i);
		}
		if (++parts > 64)
			return kiln_err_set(err, -EINVAL, "artifact path has more than 64 components");
		if (!e)
			break;
		p = e + 1;
	}
	return 0;
}
