/*
 * usage: accounting — the usage an agent reports with a completion, stored
 * with its attempt (once: the first report counts) and fed to the job-usage
 * metrics; and GET /v1/usage, the per-org sums over a window that
 * `kiln usage` prints (the basis for chargeback).
 *
 * A report is recorded whatever happens to the result it came with: an
 * attempt that was cancelled or whose lease expired still used what it
 * used. The store keys the report by the attempt's fence, so an agent can
 * only report for an attempt it was granted.
 */
#include "server-internal.h"

#include <inttypes.h>

/* ---- the agent's report --------------------------------------------------- */

int usage_parse(struct req *r, struct proto_usage *ret, bool *ret_has)
{
	json_t *u = json_object_get(r->json, "usage");
	*ret_has = false;
	if (!u || json_is_null(u))
		return 0;
	struct kiln_err err = {0};
	if (proto_usage_from_json(u, ret, &err) < 0) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "request body: %s",
		                err.msg);
		return -EINVAL;
	}
	*ret_has = true;
	return 0;
}

struct usage_mut {
	struct store_mut m;
	struct server *srv;
};

static void usage_done(struct store_mut *m, void *ud)
{
	(void)ud;
	struct usage_mut *u = (struct usage_mut *)m;
	if (m->result == 0) {
		struct proto_usage usage = m->usage.usage;
		usage.gpus = m->usage.ret_gpus;
		usage.queue_wait_ms = m->usage.ret_queue_wait_ms;
		char org[128];
		pthread_mutex_lock(&u->srv->lock);
		snprintf(org, sizeof(org), "%s", org_name(u->srv, m->usage.ret_org_id));
		pthread_mutex_unlock(&u->srv->lock);
		obs_attempt_usage(u->srv, &usage, org);
	} else if (m->result < 0) {
		log_debug("usage report not recorded job=%" PRId64 " fence=%" PRId64 " result=%d",
		          m->usage.job_id, m->usage.fence, m->result);
	}
	free(u);
}

void usage_record(struct server *s, int64_t job_id, int64_t fence, const struct proto_usage *u)
{
	struct usage_mut *um = xcalloc(1, sizeof(*um));
	um->srv = s;
	um->m.kind = STORE_ATTEMPT_USAGE;
	um->m.usage.job_id = job_id;
	um->m.usage.fence = fence;
	um->m.usage.usage = *u;
	um->m.done = usage_done;
	store_submit(s->store, &um->m);
}

/* ---- windows: ?since=&until= ---------------------------------------------- */

/*
 * A point in time: RFC 3339 ("2026-11-01T00:00:00Z"), or a duration meaning
 * that long ago ("30d", "12h").
 */
static int parse_when(const char *v, uint64_t now, uint64_t *ret)
{
	uint64_t ms;
	if (proto_parse_time(v, &ms) >= 0) {
		*ret = ms;
		return 0;
	}
	if (parse_duration_ms(v, &ms) >= 0) {
		*ret = ms < now ? now - ms : 0;
		return 0;
	}
	return -EINVAL;
}

int req_window(struct req *r, uint64_t default_ms, struct store_window *ret)
{
	uint64_t now = proto_now_ms();
	/* until is exclusive: now + 1 takes in what finished this millisecond. */
	struct store_window w = {.since = now > default_ms ? now - default_ms : 0, .until = now + 1};
	const char *keys[] = {"since", "until"};
	uint64_t *dst[] = {&w.since, &w.until};
	for (size_t i = 0; i < 2; i++) {
		const char *v = req_query(r, keys[i]);
		if (v && parse_when(v, now, dst[i]) < 0) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_parameter",
			                "query parameter '%s': '%s' is neither an RFC 3339 time "
			                "(2026-11-01T00:00:00Z) nor a duration ago (30d, 12h)",
			                keys[i], v);
			return -EINVAL;
		}
	}
	if (w.until <= w.since) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_parameter",
		                "the window is empty: 'since' must be before 'until'");
		return -EINVAL;
	}
	const char *org = req_query(r, "org");
	if (org && *org) {
		size_t n = strlen(org);
		bool ok = n <= 64;
		for (size_t i = 0; ok && i < n; i++)
			ok = (org[i] >= 'a' && org[i] <= 'z') || (org[i] >= '0' && org[i] <= '9') ||
			     org[i] == '-' || org[i] == '_' || org[i] == '.';
		if (!ok) {
			req_reply_error(
			    r, MHD_HTTP_BAD_REQUEST, "bad_parameter",
			    "query parameter 'org': '%s' is not an org name (lower-case "
			    "letters, digits, '-', '_', '.'; at most 64)",
			    org);
			return -EINVAL;
		}
		w.org = org;
	}
	*ret = w;
	return 0;
}

/* ---- GET /v1/usage -------------------------------------------------------- */

static json_t *row_json(const struct store_usage_row *row)
{
	const struct proto_usage *u = &row->sum;
	json_t *o = json_object();
	if (row->org)
		json_object_set_new(o, "org", json_string(row->org));
	json_object_set_new(o, "jobs", json_integer(row->jobs));
	json_object_set_new(o, "attempts", json_integer(row->attempts));
	json_object_set_new(o, "queue_wait_seconds", json_real((double)u->queue_wait_ms / 1e3));
	json_object_set_new(o, "wall_seconds", json_real((double)u->wall_ms / 1e3));
	json_object_set_new(o, "cpu_user_seconds", json_real((double)u->cpu_user_ms / 1e3));
	json_object_set_new(o, "cpu_system_seconds", json_real((double)u->cpu_system_ms / 1e3));
	json_object_set_new(o, "cpu_seconds",
	                    json_real((double)(u->cpu_user_ms + u->cpu_system_ms) / 1e3));
	json_object_set_new(o, "memory_peak_bytes_max",
	                    json_integer((json_int_t)u->memory_peak_bytes));
	json_object_set_new(o, "memory_byte_seconds", json_real(row->memory_byte_seconds));
	json_object_set_new(o, "io_read_bytes", json_integer((json_int_t)u->io_read_bytes));
	json_object_set_new(o, "io_write_bytes", json_integer((json_int_t)u->io_write_bytes));
	json_object_set_new(o, "oom_kills", json_integer((json_int_t)u->oom_kills));
	json_object_set_new(o, "gpu_seconds", json_real((double)row->gpu_ms / 1e3));
	return o;
}

void h_usage(struct req *r)
{
	struct store_window w;
	if (req_window(r, 30ULL * 24 * 3600 * 1000, &w) < 0)
		return;
	/* Non-admins see their own org's usage only. */
	_cleanup_free_ char *own = NULL;
	if (r->who.role != ROLE_ADMIN) {
		int64_t org_id;
		if (access_target_org(r, w.org, &org_id) < 0)
			return;
		pthread_mutex_lock(&r->srv->lock);
		own = xstrdup(org_name(r->srv, org_id));
		pthread_mutex_unlock(&r->srv->lock);
		w.org = own;
	}
	struct store_usage_row *rows = NULL;
	size_t n = 0;
	int rc = store_usage(r->srv->store, &w, &rows, &n);
	if (rc < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
		                "cannot sum the usage: %s", strerror(-rc));
		return;
	}
	json_t *orgs = json_array();
	struct store_usage_row total = {0};
	for (size_t i = 0; i < n; i++) {
		json_array_append_new(orgs, row_json(&rows[i]));
		total.jobs += rows[i].jobs;
		total.attempts += rows[i].attempts;
		proto_usage_add(&total.sum, &rows[i].sum);
		total.gpu_ms += rows[i].gpu_ms;
		total.memory_byte_seconds += rows[i].memory_byte_seconds;
	}
	store_usage_rows_free(rows, n);
	json_t *o = json_object();
	proto_set_time(o, "since", w.since);
	proto_set_time(o, "until", w.until);
	json_object_set_new(o, "org", w.org ? json_string(w.org) : json_null());
	json_object_set_new(o, "orgs", orgs);
	json_object_set_new(o, "total", row_json(&total));
	req_reply_json(r, MHD_HTTP_OK, o);
}
