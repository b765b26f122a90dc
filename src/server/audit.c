/*
 * audit: reading the audit log (decision 0017). Records are written by the
 * store, in the transaction of the mutation they describe (http.c attaches
 * them: req_submit); here they are listed and the hash chain is verified.
 *
 *   GET /v1/audit[?since=WHEN&org=NAME&after=SEQ&limit=N]   owner: their org's;
 *                                                            admin: every org's
 *   GET /v1/audit/verify                                    admin
 */
#include "server-internal.h"

#include <inttypes.h>

/* RFC 3339, or a duration meaning that long ago ("24h"). */
static int parse_since(const char *v, uint64_t *ret)
{
	uint64_t ms, now = proto_now_ms();
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

void h_audit_list(struct req *r)
{
	struct server *s = r->srv;
	struct store_audit_filter f = {.org_id = -1};
	int64_t after, limit;
	if (req_query_int(r, "after", 0, INT64_MAX, 0, &after) < 0 ||
	    req_query_int(r, "limit", 1, 10000, 1000, &limit) < 0)
		return;
	f.after_seq = after;
	f.limit = (size_t)limit;
	const char *since = req_query(r, "since");
	if (since && parse_since(since, &f.since) < 0) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_parameter",
				"query parameter 'since': '%.64s' is neither an RFC 3339 time nor a "
				"duration ago (24h, 7d)",
				since);
		return;
	}
	const char *org = req_query(r, "org");
	if (r->who.role != ROLE_ADMIN || (org && *org)) {
		if (access_target_org(r, org, &f.org_id) < 0)
			return;
	}
	struct proto_audit *v = NULL;
	size_t n = 0;
	int rc = store_audit_list(s->store, &f, &v, &n);
	if (rc < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"cannot read the audit log: %s", strerror(-rc));
		return;
	}
	json_t *arr = json_array();
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < n; i++) {
		json_t *o = proto_audit_to_json(&v[i]);
		json_object_set_new(o, "org", v[i].org_id ? json_string(org_name(s, v[i].org_id))
							  : json_null());
		json_array_append_new(arr, o);
	}
	pthread_mutex_unlock(&s->lock);
	json_t *next = n == f.limit && n ? json_integer(v[n - 1].seq) : json_null();
	proto_audits_free(v, n);
	req_reply_json(r, MHD_HTTP_OK, json_pack("{s:o,s:o}", "records", arr, "next", next));
}

void h_audit_verify(struct req *r)
{
	int64_t n = 0, bad = 0;
	int rc = store_audit_verify(r->srv->store, &n, &bad);
	if (rc < 0 && rc != -EBADMSG) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"cannot read the audit log: %s", strerror(-rc));
		return;
	}
	if (rc == -EBADMSG)
		log_error("the audit log's hash chain is broken seq=%" PRId64
			  " hint=\"a record was altered or removed behind the server's back\"",
			  bad);
	req_reply_json(r, MHD_HTTP_OK,
		       json_pack("{s:I,s:b,s:o}", "records", (json_int_t)n, "intact", rc == 0,
				 "first_bad_seq", rc == 0 ? json_null() : json_integer(bad)));
}
