/*
 * agents: the /v1/agents endpoints — register, list, describe, drain — and
 * the agent protocol's two hot calls: lease (long-poll for a job) and
 * heartbeat (renew leases, learn which jobs to stop).
 */
#include "server-internal.h"
#include "spec/spec.h"

#include <ctype.h>
#include <inttypes.h>

/* May the caller see agent a? Its org's pool and the shared pool. */
static bool agent_visible(const struct req *r, const struct sagent *a)
{
	return a->org_id == 0 || access_org_visible(r, a->org_id);
}

/*
 * The agent named by the path, if the caller may see it (acting: may act as
 * it); else answers 404, as for an agent that does not exist. Under lock.
 */
static struct sagent *agent_param_for(struct req *r, bool acting)
{
	int64_t id;
	if (req_param_id(r, 0, "agent", &id) < 0)
		return NULL;
	struct sagent *a = sched_agent(r->srv, id);
	if (a && (acting ? !access_agent_ok(r, a) : !agent_visible(r, a)))
		a = NULL;
	if (!a)
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found",
				"agent %" PRId64 " not found (register with POST /v1/agents)", id);
	return a;
}

static struct sagent *agent_param(struct req *r) { return agent_param_for(r, true); }

/* Leaves out the jobs of orgs the caller may not see (a shared agent runs several). */
static void filter_jobs(struct req *r, struct proto_agent *pa)
{
	size_t k = 0;
	for (size_t i = 0; i < pa->n_jobs; i++) {
		struct sjob *j = sched_job(r->srv, pa->job_ids[i]);
		if (j && access_org_visible(r, j->org_id))
			pa->job_ids[k++] = pa->job_ids[i];
	}
	pa->n_jobs = k;
}

static void touch(struct sagent *a)
{
	a->last_seen_ns = now_mono_ns();
	a->last_seen_ms = proto_now_ms();
}

/* ---- register ------------------------------------------------------------- */

struct register_ctx {
	char *name, *labels;
	int64_t id;
	bool created;
	uint64_t ttl_ms;
};

static void register_ctx_free(void *p)
{
	struct register_ctx *c = p;
	if (!c)
		return;
	free(c->name);
	free(c->labels);
	free(c);
}

static void register_done(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct register_ctx *c = r->ctx;
	if (m->result < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"the agent could not be stored");
		return;
	}
	req_reply_json(r, c->created ? MHD_HTTP_CREATED : MHD_HTTP_OK,
		       json_pack("{s:I,s:s,s:I,s:I}", "id", (json_int_t)c->id, "name", c->name,
				 "lease_ttl_ms", (json_int_t)c->ttl_ms, "heartbeat_ms",
				 (json_int_t)(c->ttl_ms / 3)));
}

static int parse_labels(struct req *r, char **ret_joined, char ***ret_v, size_t *ret_n)
{
	json_t *labels = json_object_get(r->json, "labels");
	if (labels && !json_is_array(labels)) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'labels' must be a list of strings");
		return -EINVAL;
	}
	size_t n = json_array_size(labels);
	if (n > 256) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: at most 256 labels");
		return -EINVAL;
	}
	char **v = xcalloc(n + 1, sizeof(char *));
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		const char *l = json_string_value(json_array_get(labels, i));
		if (!l || !spec_label_valid(l)) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_label",
					"request body: labels[%zu]: '%s' is not a valid label "
					"(letters, digits, '-', '_', '.', '/', '+', key:value; 1..128 "
					"bytes)",
					i, l ? l : "(not a string)");
			proto_strv_free(v, k);
			return -EINVAL;
		}
		char *low = xstrdup(l);
		for (char *p = low; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		bool dup = false;
		for (size_t x = 0; x < k && !dup; x++)
			dup = streq(v[x], low);
		if (dup)
			free(low);
		else
			v[k++] = low;
	}
	*ret_joined = proto_labels_join(v, k);
	*ret_v = v;
	*ret_n = k;
	return 0;
}

void h_agents_register(struct req *r)
{
	struct server *s = r->srv;
	const char *name = json_string_value(json_object_get(r->json, "name"));
	if (!name || !*name || strlen(name) > 128 || !utf8_valid(name, strlen(name))) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'name' must be a string of 1..128 bytes (the "
				"agent's host name, unique)");
		return;
	}
	for (const char *p = name; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == ',') {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
					"request body: 'name' has a control character or ','");
			return;
		}
	struct kiln_err err = {0};
	struct proto_capacity cap;
	if (proto_capacity_from_json(json_object_get(r->json, "capacity"), "capacity", &cap,
				     &err) < 0) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "request body: %s",
				err.msg);
		return;
	}
	if (cap.slots == 0)
		cap.slots = 1;
	/* The pool: an agent token's own (its org's, or the shared pool);
	 * an admin names it ("pool": org name or "shared", the default). */
	int64_t pool = r->who.org_id;
	if (r->who.role == ROLE_ADMIN) {
		json_t *p = json_object_get(r->json, "pool");
		const char *pn = json_string_value(p);
		if (p && !json_is_null(p) && !pn) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
					"request body: 'pool' must be an org name or \"shared\"");
			return;
		}
		pool = 0;
		if (pn && !streq(pn, "shared") && access_target_org(r, pn, &pool) < 0)
			return;
	}
	char *joined, **labels;
	size_t n_labels;
	if (parse_labels(r, &joined, &labels, &n_labels) < 0)
		return;

	struct register_ctx *c = xcalloc(1, sizeof(*c));
	c->name = xstrdup(name);
	c->labels = joined;
	c->ttl_ms = s->cfg.lease_ttl_ms;
	r->ctx = c;
	r->ctx_free = register_ctx_free;

	pthread_mutex_lock(&s->lock);
	struct sagent *a = sched_agent_by_name(s, pool, name);
	if (!a) {
		a = xcalloc(1, sizeof(*a));
		a->id = s->next_agent_id++;
		a->org_id = pool;
		a->name = xstrdup(name);
		a->registered_at = proto_now_ms();
		a->next = s->agents;
		s->agents = a;
		c->created = true;
	}
	proto_strv_free(a->labels, a->n_labels);
	a->labels = labels;
	a->n_labels = n_labels;
	a->capacity = cap;
	touch(a);
	c->id = a->id;
	r->mut = (struct store_mut){.kind = STORE_AGENT_PUT,
				    .agent = {.id = a->id, .name = c->name, .labels = c->labels,
					      .capacity = cap, .now = a->registered_at,
					      .org_id = a->org_id},
				    .done = register_done,
				    .userdata = r};
	req_audit_target(r, "agent %s", c->name);
	req_audit_org(r, a->org_id);
	req_submit(r, &r->mut, c->created ? 201 : 200);
	char nb[160];
	log_info("agent registered agent=%s req=%s id=%" PRId64 " labels=%s slots=%" PRId64,
		 log_field(name, nb, sizeof(nb)), r->id, a->id,
		 *joined ? joined : "-", cap.slots);
	sched_recheck_classes(s);
	sched_kick_agent(s, a);
	pthread_mutex_unlock(&s->lock);
}

/* ---- list, describe, drain ------------------------------------------------ */

void h_agents_list(struct req *r)
{
	struct server *s = r->srv;
	json_t *arr = json_array();
	pthread_mutex_lock(&s->lock);
	for (struct sagent *a = s->agents; a; a = a->next) {
		if (!agent_visible(r, a))
			continue;
		struct proto_agent pa;
		sched_agent_to_proto(s, a, &pa);
		filter_jobs(r, &pa);
		json_array_append_new(arr, proto_agent_to_json(&pa));
		proto_agent_release(&pa);
	}
	pthread_mutex_unlock(&s->lock);
	/* Registration order (the list is newest first). */
	size_t n = json_array_size(arr);
	json_t *sorted = json_array();
	for (size_t i = n; i > 0; i--)
		json_array_append(sorted, json_array_get(arr, i - 1));
	json_decref(arr);
	req_reply_json(r, MHD_HTTP_OK, json_pack("{s:o}", "agents", sorted));
}

void h_agents_get(struct req *r)
{
	struct server *s = r->srv;
	pthread_mutex_lock(&s->lock);
	struct sagent *a = agent_param_for(r, false);
	if (a) {
		struct proto_agent pa;
		sched_agent_to_proto(s, a, &pa);
		filter_jobs(r, &pa);
		json_t *o = proto_agent_to_json(&pa);
		proto_agent_release(&pa);
		json_t *leases = json_array();
		for (size_t i = 0; i < a->n_jobs; i++) {
			struct sjob *j = a->jobs[i];
			if (!access_org_visible(r, j->org_id))
				continue;
			uint64_t now = now_mono_ns();
			json_array_append_new(
				leases,
				json_pack("{s:I,s:s,s:s,s:I,s:I,s:I}", "job_id", (json_int_t)j->id,
					  "name", j->name, "state", job_state_to_string(j->state),
					  "fence", (json_int_t)j->fence, "attempt",
					  (json_int_t)j->attempt, "expires_in_ms",
					  (json_int_t)(j->lease_expires_ns > now
							       ? (j->lease_expires_ns - now) /
									 NSEC_PER_MSEC
							       : 0)));
		}
		json_object_set_new(o, "leases", leases);
		req_reply_json(r, MHD_HTTP_OK, o);
	}
	pthread_mutex_unlock(&s->lock);
}

struct drain_ctx {
	json_t *reply;
};

static void drain_ctx_free(void *p)
{
	struct drain_ctx *c = p;
	if (!c)
		return;
	json_decref(c->reply);
	free(c);
}

static void drain_done(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct drain_ctx *c = r->ctx;
	if (m->result < 0)
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"the drain flag could not be stored");
	else
		req_reply_json(r, MHD_HTTP_OK, json_incref(c->reply));
}

void h_agents_drain(struct req *r)
{
	struct server *s = r->srv;
	json_t *d = json_object_get(r->json, "draining");
	if (d && !json_is_boolean(d)) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'draining' must be true or false");
		return;
	}
	bool draining = d ? json_is_true(d) : true;
	pthread_mutex_lock(&s->lock);
	struct sagent *a = agent_param_for(r, false);
	if (a && a->org_id == 0 && r->who.role != ROLE_ADMIN) {
		req_reply_error(r, MHD_HTTP_FORBIDDEN, "forbidden",
				"agent %" PRId64 " serves the shared pool: only an admin may drain it",
				a->id);
		a = NULL;
	}
	if (!a) {
		pthread_mutex_unlock(&s->lock);
		return;
	}
	a->draining = draining;
	struct proto_agent pa;
	sched_agent_to_proto(s, a, &pa);
	struct drain_ctx *c = xcalloc(1, sizeof(*c));
	c->reply = proto_agent_to_json(&pa);
	proto_agent_release(&pa);
	r->ctx = c;
	r->ctx_free = drain_ctx_free;
	r->mut = (struct store_mut){.kind = STORE_AGENT_DRAIN,
				    .drain = {.id = a->id, .draining = draining},
				    .done = drain_done,
				    .userdata = r};
	req_audit_target(r, "agent %" PRId64 " (%s)", a->id, draining ? "drain" : "undrain");
	req_audit_org(r, a->org_id);
	req_submit(r, &r->mut, 200);
	char nb[160];
	log_info("agent %s agent=%s req=%s", draining ? "draining" : "undrained",
		 log_field(a->name, nb, sizeof(nb)), r->id);
	if (!draining)
		sched_kick_agent(s, a);
	pthread_mutex_unlock(&s->lock);
}

/* ---- lease (long-poll) ---------------------------------------------------- */

void h_agents_lease(struct req *r)
{
	struct server *s = r->srv;
	json_t *w = json_object_get(r->json, "wait_ms");
	int64_t wait_ms = 0;
	if (w && !json_is_null(w)) {
		if (!json_is_integer(w) || json_integer_value(w) < 0) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
					"request body: 'wait_ms' must be an integer >= 0");
			return;
		}
		wait_ms = json_integer_value(w);
	}
	if ((uint64_t)wait_ms > s->cfg.max_wait_ms)
		wait_ms = (int64_t)s->cfg.max_wait_ms;
	pthread_mutex_lock(&s->lock);
	struct sagent *a = agent_param(r);
	if (!a) {
		pthread_mutex_unlock(&s->lock);
		return;
	}
	touch(a);
	struct sjob *j = sched_pick(s, a);
	if (j) {
		sched_grant(s, j, a, r);
	} else if (wait_ms == 0 || s->stopping) {
		req_reply_response(r, MHD_HTTP_NO_CONTENT,
				   MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT));
	} else {
		sched_park(s, r, a, (uint64_t)wait_ms);
	}
	pthread_mutex_unlock(&s->lock);
}

/* ---- heartbeat ------------------------------------------------------------ */

/*
 * A heartbeat lists the leases the agent runs ({id, fence}); the answer
 * lists those it must stop ("cancel", with a reason) and every other lease
 * of this agent the server has taken back meanwhile (one granted while the
 * heartbeat was on its way). With "wait_ms" the heartbeat is a long-poll:
 * when there is nothing to cancel, the request is parked until a lease of
 * this agent is taken back (cancel, server-side timeout, expiry) or wait_ms
 * passes, so a cancel reaches the agent in one round trip instead of one
 * heartbeat period. Leases are renewed when the request arrives.
 */
struct hb_ctx {
	int64_t *ids, *fences;
	size_t n;
	int64_t wait_ms; /* -1: not a long-poll */
};

static void hb_ctx_free(void *p)
{
	struct hb_ctx *c = p;
	if (!c)
		return;
	free(c->ids);
	free(c->fences);
	free(c);
}

/* The cancel list for the listed leases, plus revoked unlisted ones. Under lock. */
static json_t *hb_cancels(struct server *s, struct sagent *a, const struct hb_ctx *c,
			  bool renew)
{
	uint64_t expires = now_mono_ns() + s->cfg.lease_ttl_ms * NSEC_PER_MSEC;
	json_t *cancel = json_array();
	for (size_t i = 0; i < c->n; i++) {
		struct sjob *j = sched_job(s, c->ids[i]);
		if (j && job_state_is_active(j->state) && j->agent == a && j->fence == c->fences[i]) {
			if (renew)
				j->lease_expires_ns = expires;
			continue;
		}
		const char *reason = "lease_lost";
		for (size_t k = 0; k < a->n_revoked; k++)
			if (a->revoked[k].job_id == c->ids[i] && a->revoked[k].fence == c->fences[i]) {
				reason = a->revoked[k].reason;
				/* Keep holding its capacity until the agent stops listing it. */
				a->revoked[k].expires_ns = expires;
			}
		json_array_append_new(cancel, json_pack("{s:I,s:I,s:s}", "id", (json_int_t)c->ids[i],
							"fence", (json_int_t)c->fences[i], "reason",
							reason));
	}
	for (size_t k = 0; k < a->n_revoked; k++) {
		bool listed = false;
		for (size_t i = 0; i < c->n && !listed; i++)
			listed = a->revoked[k].job_id == c->ids[i] && a->revoked[k].fence == c->fences[i];
		if (!listed)
			json_array_append_new(
				cancel, json_pack("{s:I,s:I,s:s}", "id", (json_int_t)a->revoked[k].job_id,
						  "fence", (json_int_t)a->revoked[k].fence, "reason",
						  a->revoked[k].reason));
	}
	return cancel;
}

static void hb_reply(struct server *s, struct req *r, struct sagent *a, json_t *cancel)
{
	struct hb_ctx *c = r->ctx;
	json_t *body = json_pack("{s:o,s:b,s:I}", "cancel", cancel, "draining", a->draining,
				 "lease_ttl_ms", (json_int_t)s->cfg.lease_ttl_ms);
	if (c->wait_ms >= 0)
		json_object_set_new(body, "wait_ms", json_integer(c->wait_ms));
	req_reply_json(r, MHD_HTTP_OK, body);
}

void heartbeat_wake(struct server *s, struct sagent *a)
{
	for (struct req *r = s->hb_head, *next; r; r = next) {
		next = r->wnext;
		if (r->wait_agent != a)
			continue;
		sched_unpark(s, r);
		hb_reply(s, r, a, hb_cancels(s, a, r->ctx, false));
	}
}

void heartbeat_expire(struct server *s, struct req *r)
{
	struct sagent *a = r->wait_agent;
	sched_unpark(s, r);
	hb_reply(s, r, a, hb_cancels(s, a, r->ctx, false));
}

static int hb_parse(struct req *r, struct hb_ctx *c)
{
	json_t *jobs = json_object_get(r->json, "jobs");
	if (jobs && !json_is_array(jobs)) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'jobs' must be a list of {\"id\":N,\"fence\":N}");
		return -EINVAL;
	}
	json_t *w = json_object_get(r->json, "wait_ms");
	c->wait_ms = -1;
	if (w && !json_is_null(w)) {
		if (!json_is_integer(w) || json_integer_value(w) < 0) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
					"request body: 'wait_ms' must be an integer >= 0");
			return -EINVAL;
		}
		c->wait_ms = MIN(json_integer_value(w), (int64_t)r->srv->cfg.max_wait_ms);
	}
	size_t n = json_array_size(jobs);
	if (n > 100000) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "too many jobs");
		return -EINVAL;
	}
	c->ids = xcalloc(n + 1, sizeof(int64_t));
	c->fences = xcalloc(n + 1, sizeof(int64_t));
	c->n = n;
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_array_get(jobs, i);
		json_t *id = json_object_get(e, "id"), *fence = json_object_get(e, "fence");
		if (!json_is_integer(id) || !json_is_integer(fence)) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
					"request body: jobs[%zu] must be {\"id\":N,\"fence\":N}", i);
			return -EINVAL;
		}
		c->ids[i] = json_integer_value(id);
		c->fences[i] = json_integer_value(fence);
	}
	return 0;
}

void h_agents_heartbeat(struct req *r)
{
	struct server *s = r->srv;
	struct hb_ctx *c = xcalloc(1, sizeof(*c));
	r->ctx = c;
	r->ctx_free = hb_ctx_free;
	if (hb_parse(r, c) < 0)
		return;
	pthread_mutex_lock(&s->lock);
	struct sagent *a = agent_param(r);
	if (!a) {
		pthread_mutex_unlock(&s->lock);
		return;
	}
	touch(a);
	live_heartbeat(s, a, r->json);
	json_t *cancel = hb_cancels(s, a, c, true);
	/* Revoked leases the agent no longer runs: their capacity is free again. */
	bool freed = false;
	for (size_t k = 0; k < a->n_revoked;) {
		bool listed = false;
		for (size_t i = 0; i < c->n && !listed; i++)
			listed = a->revoked[k].job_id == c->ids[i] && a->revoked[k].fence == c->fences[i];
		if (!listed) {
			sched_revoked_take(a, a->revoked[k].job_id, a->revoked[k].fence, NULL);
			freed = true;
		} else {
			k++;
		}
	}
	if (freed)
		sched_kick_agent(s, a);
	if (json_array_size(cancel) || c->wait_ms <= 0 || s->stopping) {
		hb_reply(s, r, a, cancel);
	} else {
		json_decref(cancel);
		r->hb_waiter = true;
		sched_park(s, r, a, (uint64_t)c->wait_ms);
	}
	pthread_mutex_unlock(&s->lock);
}

/* ---- release ---------------------------------------------------------------- */

/*
 * POST /v1/agents/{id}/release
 *      {"jobs": [{"id","fence"}]?, "reason": "...", "stop_leasing": bool}:
 * the agent gives leases back — those listed, or every lease it holds when
 * "jobs" is absent (an agent that restarted after a crash, or one that is
 * stopping). Each goes back to the queue at once. A job the agent had
 * started (reported running) is treated as if its lease had expired: the
 * attempt counts, and with no retries left the job is lost. A job it never
 * started is queued again without using up an attempt: it was handed to an
 * agent that was going away (a lease granted into a long-poll the agent had
 * already given up on).
 *
 * stop_leasing: the agent takes no more work: its parked lease long-polls
 * are answered 204 first (an agent that cut its long-poll off cannot receive
 * a job granted into it; a parked request of a crashed agent the same), and
 * its parked heartbeats are answered too.
 * Answered once the decisions are durable.
 */
struct release_ctx {
	json_t *reply;
};

static void release_ctx_free(void *p)
{
	struct release_ctx *c = p;
	if (!c)
		return;
	json_decref(c->reply);
	free(c);
}

static void release_done(struct store_mut *m, void *ud)
{
	(void)m;
	struct req *r = ud;
	struct release_ctx *c = r->ctx;
	req_reply_json(r, MHD_HTTP_OK, json_incref(c->reply));
}

void h_agents_release(struct req *r)
{
	struct server *s = r->srv;
	struct hb_ctx list = {0};
	json_t *jobs = json_object_get(r->json, "jobs");
	bool all = !jobs || json_is_null(jobs);
	if (!all && hb_parse(r, &list) < 0) {
		free(list.ids);
		free(list.fences);
		return;
	}
	const char *reason = json_string_value(json_object_get(r->json, "reason"));
	if (!reason || !*reason)
		reason = "no reason given";
	if (strlen(reason) > 512 || !utf8_valid(reason, strlen(reason))) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'reason' must be UTF-8 text of at most 512 bytes");
		free(list.ids);
		free(list.fences);
		return;
	}
	pthread_mutex_lock(&s->lock);
	struct sagent *a = agent_param(r);
	if (!a) {
		pthread_mutex_unlock(&s->lock);
		free(list.ids);
		free(list.fences);
		return;
	}
	touch(a);
	if (json_is_true(json_object_get(r->json, "stop_leasing"))) {
		sched_drop_agent_waiters(s, a);
		/* Its parked heartbeats too: an agent that is going away would
		 * otherwise leave them to be answered into closed connections. */
		for (struct req *w = s->hb_head, *next; w; w = next) {
			next = w->wnext;
			if (w->wait_agent == a)
				heartbeat_expire(s, w);
		}
	}
	json_t *released = json_array(), *requeued = json_array(), *lost = json_array();
	for (size_t i = a->n_jobs; i > 0; i--) {
		struct sjob *j = a->jobs[i - 1];
		bool match = all;
		for (size_t k = 0; k < list.n && !match; k++)
			match = list.ids[k] == j->id && list.fences[k] == j->fence;
		if (!match)
			continue;
		bool refund = j->state == JOB_LEASED && j->refunds < SCHED_MAX_REFUNDS;
		json_array_append_new(released, json_integer(j->id));
		json_array_append_new(refund || j->attempt < j->max_attempts ? requeued : lost,
				      json_integer(j->id));
		_cleanup_free_ char *why = xasprintf("released by agent '%s': %s", a->name, reason);
		sched_release(s, j, why, false, refund);
	}
	struct release_ctx *c = xcalloc(1, sizeof(*c));
	c->reply = json_pack("{s:o,s:o,s:o}", "released", released, "requeued", requeued, "lost",
			     lost);
	r->ctx = c;
	r->ctx_free = release_ctx_free;
	/* Answer once everything decided above is committed. */
	r->mut = (struct store_mut){.kind = STORE_BARRIER, .done = release_done, .userdata = r};
	req_audit_target(r, "agent %" PRId64, a->id);
	req_audit_org(r, a->org_id);
	req_submit(r, &r->mut, 200);
	sched_kick_agent(s, a);
	pthread_mutex_unlock(&s->lock);
	free(list.ids);
	free(list.fences);
}
