/*
 * jobs: the /v1/jobs endpoints — submit, list, get, cancel, retry — and the
 * agent's fenced writes on a job: status (running) and complete.
 *
 * Every write is answered from its store callback, after the commit. An
 * agent write is checked against the in-memory lease first (a stale fence is
 * refused at once) and then, conditionally, by the store itself.
 */
#include "server-internal.h"
#include "spec/spec.h"

#include <ctype.h>
#include <inttypes.h>

/* ---- helpers -------------------------------------------------------------- */

static bool job_id_param(struct req *r, int64_t *id) { return req_param_id(r, 0, "job", id) == 0; }

static int json_get_fence(struct req *r, int64_t *ret)
{
	json_t *v = json_object_get(r->json, "fence");
	if (!json_is_integer(v) || json_integer_value(v) <= 0) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'fence' must be the lease's fence (a positive integer)");
		return -EINVAL;
	}
	*ret = json_integer_value(v);
	return 0;
}

/* Releases the capacity a revoked lease held, on whichever agent had it. */
static const char *take_revoked(struct server *s, int64_t job_id, int64_t fence)
{
	for (struct sagent *a = s->agents; a; a = a->next) {
		const char *reason;
		if (sched_revoked_take(a, job_id, fence, &reason)) {
			sched_kick_agent(s, a);
			return reason;
		}
	}
	return NULL;
}

/* The 409 for an agent write whose fence is not the job's current lease. */
static void reply_stale(struct req *r, int64_t id, int64_t fence, const struct sjob *j,
			const char *why)
{
	if (j && j->state == JOB_QUEUED)
		req_reply_error(r, MHD_HTTP_CONFLICT, "stale_fence",
				"job %" PRId64 ": fence %" PRId64 " is stale: the job is queued "
				"again (its lease expired); stop working on it",
				id, fence);
	else if (j)
		req_reply_error(r, MHD_HTTP_CONFLICT, "stale_fence",
				"job %" PRId64 ": fence %" PRId64 " is stale: the current lease has "
				"fence %" PRId64 "; stop working on it",
				id, fence, j->fence);
	else
		req_reply_error(r, MHD_HTTP_CONFLICT, "stale_fence",
				"job %" PRId64 ": fence %" PRId64 " is not the current lease (%s); "
				"stop working on it",
				id, fence, why ? why : "the job has ended or moved on");
}

/* A small JSON answer built by hand: done callbacks run on the store's writer
 * thread, which should spend its time committing, not in a JSON library. */
static void reply_small(struct req *r, char *text)
{
	size_t len = strlen(text);
	req_reply_text(r, MHD_HTTP_OK, "application/json", text, len);
}

/* ---- submit and retry ----------------------------------------------------- */

struct owned_strings {
	char *name, *runs_on, *spec;
};

struct submit_ctx {
	struct store_job_new *v;
	struct owned_strings *own; /* what v[i] points to */
	size_t n;
	char *reply; /* rendered before the commit: the writer thread only sends it */
};

static struct submit_ctx *submit_ctx_new(size_t n)
{
	struct submit_ctx *c = xcalloc(1, sizeof(*c));
	c->v = xcalloc(n, sizeof(*c->v));
	c->own = xcalloc(n, sizeof(*c->own));
	c->n = n;
	return c;
}

static void own_job(struct submit_ctx *c, size_t i, char *name, char *runs_on, char *spec)
{
	c->own[i] = (struct owned_strings){name, runs_on, spec};
	c->v[i].name = name;
	c->v[i].runs_on = runs_on;
	c->v[i].spec_json = spec;
}

void submit_ctx_free(void *p)
{
	struct submit_ctx *c = p;
	if (!c)
		return;
	for (size_t i = 0; i < c->n; i++) {
		free(c->own[i].name);
		free(c->own[i].runs_on);
		free(c->own[i].spec);
	}
	free(c->own);
	free(c->v);
	free(c->reply);
	free(c);
}

static void submit_done(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct submit_ctx *c = r->ctx;
	if (m->result < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"the jobs could not be stored");
		return;
	}
	size_t len = strlen(c->reply);
	req_reply_text(r, MHD_HTTP_CREATED, "application/json", TAKE_PTR(c->reply), len);
}

/*
 * Assigns ids, indexes the jobs, queues the insert, then dispatches. The
 * insert is r->mut (STORE_JOBS_INSERT, answered by submit_done, r->ctx = c)
 * unless `carrier` is given: a mutation of the caller's that inserts the
 * one job itself (a webhook delivery), answered by its own done.
 */
static void submit_jobs_with(struct req *r, struct submit_ctx *c, struct store_mut *carrier)
{
	struct server *s = r->srv;
	json_t *arr = json_array();
	pthread_mutex_lock(&s->lock);
	struct sjob **made = xcalloc(c->n, sizeof(*made)); // NOLINT(bugprone-sizeof-expression): an array of pointers
	for (size_t i = 0; i < c->n; i++) {
		struct store_job_new *n = &c->v[i];
		n->id = s->next_job_id++;
		made[i] = sched_add_job(s, n->id, n->org_id, n->name, n->priority, n->runs_on,
					&n->needs, n->max_attempts, n->timeout_ms);
		_cleanup_free_ char *oname = xstrdup(org_name(s, n->org_id));
		struct proto_job pj = {
			.id = n->id,
			.name = c->own[i].name,
			.state = JOB_QUEUED,
			.priority = n->priority,
			.max_attempts = n->max_attempts,
			.runs_on = c->own[i].runs_on,
			.needs = n->needs,
			.timeout_ms = n->timeout_ms,
			.submitted_at = n->submitted_at,
			.retry_of = n->retry_of,
			.org_id = n->org_id,
			.org = oname,
			.unschedulable = !made[i]->cls->schedulable,
			.reason = made[i]->cls->reason,
		};
		json_array_append_new(arr, proto_job_to_json(&pj, 0));
	}
	json_t *reply = json_pack("{s:o}", "jobs", arr);
	c->reply = json_dumps(reply, JSON_COMPACT);
	json_decref(reply);
	obs_jobs_submitted(s, org_name(s, c->v[0].org_id), c->n);
	char nb[160];
	if (c->n == 1)
		log_info("job submitted job=%" PRId64 " org=%s req=%s name=%s retry_of=%" PRId64,
			 c->v[0].id, org_name(s, c->v[0].org_id), r->id, log_field(c->v[0].name, nb, sizeof(nb)),
			 c->v[0].retry_of);
	else
		log_info("jobs submitted jobs=%" PRId64 "-%" PRId64 " count=%zu org=%s req=%s name=%s",
			 c->v[0].id, c->v[c->n - 1].id, c->n, org_name(s, c->v[0].org_id), r->id,
			 log_field(c->v[0].name, nb, sizeof(nb)));
	struct store_mut *m = carrier;
	if (carrier) {
		carrier->webhook.job = &c->v[0];
	} else {
		r->ctx = c;
		r->ctx_free = submit_ctx_free;
		r->mut = (struct store_mut){.kind = STORE_JOBS_INSERT,
					    .insert = {c->v, c->n},
					    .done = submit_done,
					    .userdata = r};
		m = &r->mut;
	}
	/* The insert is queued before any lease of these jobs. */
	if (c->n == 1)
		req_audit_target(r, "job %" PRId64, c->v[0].id);
	else
		req_audit_target(r, "jobs %" PRId64 "-%" PRId64, c->v[0].id, c->v[c->n - 1].id);
	req_audit_org(r, c->v[0].org_id);
	uint64_t seq = req_submit(r, m, 201);
	for (size_t i = 0; i < c->n; i++)
		made[i]->insert_seq = seq;
	for (size_t i = 0; i < c->n; i++)
		if (made[i]->state == JOB_QUEUED)
			sched_dispatch(s, made[i]);
	pthread_mutex_unlock(&s->lock);
	free(made);
}

static void fill_new_job(struct submit_ctx *c, size_t i, const struct spec_job *sj,
			 uint64_t now)
{
	struct store_job_new *n = &c->v[i];
	json_t *spec = spec_job_to_json(sj);
	own_job(c, i, xstrdup(sj->name ? sj->name : "job"),
		proto_labels_join(sj->runs_on, sj->n_runs_on), json_dumps(spec, JSON_COMPACT));
	json_decref(spec);
	n->priority = sj->priority;
	n->max_attempts = 1 + (sj->retries > 0 ? sj->retries : 0);
	n->timeout_ms = sj->timeout_ms;
	n->needs = (struct proto_capacity){.slots = 1, .cpus = sj->resources.cpus,
					   .memory = sj->resources.memory,
					   .gpus = sj->resources.gpus};
	/* runs-on "gpu-count:N" is a need, not a label to match. */
	for (size_t k = 0; k < sj->n_runs_on; k++) {
		int64_t g;
		if (startswith(sj->runs_on[k], "gpu-count:") &&
		    parse_int64(sj->runs_on[k] + strlen("gpu-count:"), 0, 1024, &g) >= 0)
			n->needs.gpus = MAX(n->needs.gpus, g);
	}
	n->submitted_at = now;
}

/* A name for the document in messages: ?file=job.yaml, as `kiln validate` names it. */
static const char *spec_file_name(struct req *r)
{
	const char *f = req_query(r, "file");
	if (!f || !*f || strlen(f) > 256 || !utf8_valid(f, strlen(f)))
		return "request body";
	for (const char *p = f; *p; p++)
		if ((unsigned char)*p < 0x20)
			return "request body";
	return f;
}

static void submit_jobs(struct req *r, struct submit_ctx *c) { submit_jobs_with(r, c, NULL); }

struct submit_ctx *jobs_prepare(struct req *r, const char *file, const char *text, size_t len,
				int64_t org_id)
{
	struct spec_job **jobs = NULL;
	size_t n = 0;
	struct spec_diags diags = {0};
	int rc = spec_load(file, text, len, &jobs, &n, &diags);
	if (rc < 0) {
		struct buf msg = BUF_INIT;
		spec_diags_format(&diags, &msg);
		while (msg.len && msg.data[msg.len - 1] == '\n')
			msg.data[--msg.len] = '\0';
		json_t *body = json_pack("{s:{s:s,s:s,s:o}}", "error", "code",
					 rc == -EFBIG ? "body_too_large" : "invalid_spec", "message",
					 msg.len ? msg.data : "the job spec is not valid", "details",
					 spec_diags_to_json(&diags));
		buf_release(&msg);
		spec_diags_release(&diags);
		req_reply_json(r, rc == -EFBIG ? MHD_HTTP_CONTENT_TOO_LARGE : MHD_HTTP_BAD_REQUEST,
			       body);
		return NULL;
	}
	spec_diags_release(&diags);
	for (size_t i = 0; i < n; i++)
		if (jobs[i]->n_secrets &&
		    secrets_check_names(r, org_id, jobs[i]->secrets, jobs[i]->n_secrets) < 0) {
			spec_jobs_free(jobs, n);
			return NULL;
		}
	struct submit_ctx *c = submit_ctx_new(n);
	uint64_t now = proto_now_ms();
	for (size_t i = 0; i < n; i++) {
		fill_new_job(c, i, jobs[i], now);
		c->v[i].org_id = org_id;
	}
	spec_jobs_free(jobs, n);
	return c;
}

void jobs_commit_with(struct req *r, struct submit_ctx *c, struct store_mut *carrier)
{
	submit_jobs_with(r, c, carrier);
}

int64_t jobs_first_id(const struct submit_ctx *c) { return c->n ? c->v[0].id : 0; }
size_t jobs_count(const struct submit_ctx *c) { return c->n; }

void h_jobs_submit(struct req *r)
{
	int64_t org_id;
	if (access_target_org(r, req_query(r, "org"), &org_id) < 0)
		return;
	struct submit_ctx *c = jobs_prepare(r, spec_file_name(r), r->body.data ? r->body.data : "",
					    r->body.len, org_id);
	if (!c)
		return;
	/* An org's submissions are rate limited by jobs (a matrix costs one per job). */
	if (r->who.role != ROLE_ADMIN &&
	    limits_take(r, org_id, LIMIT_SUBMIT, (double)jobs_count(c)) < 0) {
		submit_ctx_free(c);
		return;
	}
	submit_jobs(r, c);
}

void h_jobs_retry(struct req *r)
{
	int64_t id;
	if (!job_id_param(r, &id))
		return;
	struct proto_job pj;
	int rc = store_job_get(r->srv->store, id, PROTO_JOB_SPEC, &pj);
	if (rc == -ENOENT || (rc >= 0 && !access_org_visible(r, pj.org_id))) {
		if (rc >= 0)
			proto_job_release(&pj);
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "job %" PRId64 " not found", id);
		return;
	}
	if (rc < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"cannot read job %" PRId64 ": %s", id, strerror(-rc));
		return;
	}
	if (!job_state_is_terminal(pj.state)) {
		req_reply_error(r, MHD_HTTP_CONFLICT, "not_finished",
				"job %" PRId64 " is still %s; only a finished job can be retried "
				"(cancel it first)",
				id, job_state_to_string(pj.state));
		proto_job_release(&pj);
		return;
	}
	if (r->who.role != ROLE_ADMIN && limits_take(r, pj.org_id, LIMIT_SUBMIT, 1) < 0) {
		proto_job_release(&pj);
		return;
	}
	struct submit_ctx *c = submit_ctx_new(1);
	struct store_job_new *n = &c->v[0];
	own_job(c, 0, xstrdup(pj.name), xstrdup(pj.runs_on ? pj.runs_on : ""),
		pj.spec ? json_dumps(pj.spec, JSON_COMPACT) : xstrdup("{}"));
	n->priority = pj.priority;
	n->max_attempts = pj.max_attempts;
	n->timeout_ms = pj.timeout_ms;
	n->needs = pj.needs;
	n->submitted_at = proto_now_ms();
	n->retry_of = id;
	n->org_id = pj.org_id;
	proto_job_release(&pj);
	submit_jobs(r, c);
}

/* ---- reads ---------------------------------------------------------------- */

void h_jobs_get(struct req *r)
{
	int64_t id;
	if (!job_id_param(r, &id))
		return;
	struct proto_job pj;
	int rc = store_job_get(r->srv->store, id, PROTO_JOB_SPEC | PROTO_JOB_ATTEMPTS, &pj);
	if (rc == -ENOENT || (rc >= 0 && !access_org_visible(r, pj.org_id))) {
		if (rc >= 0)
			proto_job_release(&pj);
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "job %" PRId64 " not found", id);
		return;
	}
	if (rc < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"cannot read job %" PRId64 ": %s", id, strerror(-rc));
		return;
	}
	pthread_mutex_lock(&r->srv->lock);
	sched_fill_overlay(r->srv, &pj, true);
	pj.org = xstrdup(org_name(r->srv, pj.org_id));
	pthread_mutex_unlock(&r->srv->lock);
	req_reply_json(r, MHD_HTTP_OK, proto_job_to_json(&pj, PROTO_JOB_SPEC | PROTO_JOB_ATTEMPTS));
	proto_job_release(&pj);
}

static int parse_states(struct req *r, unsigned *ret)
{
	const char *v = req_query(r, "state");
	*ret = 0;
	if (!v || !*v)
		return 0;
	_cleanup_free_ char *copy = xstrdup(v);
	char *save = NULL;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		enum job_state st;
		if (job_state_from_string(t, &st) < 0) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_parameter",
					"query parameter 'state': unknown state '%s' (use queued, "
					"leased, running, succeeded, failed, cancelled, timed_out, "
					"lost)",
					t);
			return -EINVAL;
		}
		*ret |= 1u << st;
	}
	return 0;
}

void h_jobs_list(struct req *r)
{
	struct store_job_filter f = {0};
	int64_t limit, before;
	if (parse_states(r, &f.states) < 0 ||
	    req_query_int(r, "limit", 1, 1000, 50, &limit) < 0 ||
	    req_query_int(r, "before", 1, INT64_MAX, 0, &before) < 0)
		return;
	f.limit = (size_t)limit;
	f.before_id = before;
	_cleanup_free_ char *label = NULL;
	const char *l = req_query(r, "label");
	if (l && *l) {
		label = xstrdup(l);
		for (char *p = label; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		f.label = label;
	}
	const char *name = req_query(r, "name");
	if (name && *name)
		f.name = name;
	/* Non-admins see their own org; admins every org, or the one named. */
	const char *org = req_query(r, "org");
	if (r->who.role != ROLE_ADMIN || (org && *org)) {
		if (access_target_org(r, org, &f.org_id) < 0)
			return;
	}
	struct proto_job *v = NULL;
	size_t n = 0;
	int rc = store_job_list(r->srv->store, &f, &v, &n);
	if (rc < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"cannot list jobs: %s", strerror(-rc));
		return;
	}
	json_t *arr = json_array();
	pthread_mutex_lock(&r->srv->lock);
	for (size_t i = 0; i < n; i++) {
		sched_fill_overlay(r->srv, &v[i], false);
		v[i].org = xstrdup(org_name(r->srv, v[i].org_id));
		json_array_append_new(arr, proto_job_to_json(&v[i], 0));
	}
	pthread_mutex_unlock(&r->srv->lock);
	json_t *next = n == f.limit && n ? json_integer(v[n - 1].id) : json_null();
	proto_jobs_free(v, n);
	req_reply_json(r, MHD_HTTP_OK, json_pack("{s:o,s:o}", "jobs", arr, "next", next));
}

/* ---- cancel --------------------------------------------------------------- */

struct simple_ctx {
	int64_t id;
	const char *org; /* the org's name (orgs live as long as the server) */
	enum job_state state, previous;
	char *message;
};

static void simple_ctx_free(void *p)
{
	struct simple_ctx *c = p;
	if (!c)
		return;
	free(c->message);
	free(c);
}

static void cancel_done(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct simple_ctx *c = r->ctx;
	if (m->result < 0) {
		req_reply_error(r, MHD_HTTP_CONFLICT, "not_cancellable",
				"job %" PRId64 " could not be cancelled: it has just ended", c->id);
		return;
	}
	obs_job_ended(r->srv, JOB_CANCELLED, c->org);
	req_reply_json(r, MHD_HTTP_OK,
		       json_pack("{s:I,s:s,s:s}", "id", (json_int_t)c->id, "state", "cancelled",
				 "previous_state", job_state_to_string(c->previous)));
}

void h_jobs_cancel(struct req *r)
{
	struct server *s = r->srv;
	int64_t id;
	if (!job_id_param(r, &id))
		return;
	if (access_job_visible(r, id) < 0)
		return;
	pthread_mutex_lock(&s->lock);
	struct sjob *j = sched_job(s, id);
	if (!j) {
		pthread_mutex_unlock(&s->lock);
		struct proto_job pj;
		int rc = store_job_get(s->store, id, 0, &pj);
		if (rc == -ENOENT) {
			req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found",
					"job %" PRId64 " not found", id);
			return;
		}
		if (rc < 0) {
			req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
					"cannot read job %" PRId64 ": %s", id, strerror(-rc));
			return;
		}
		req_reply_error(r, MHD_HTTP_CONFLICT, "not_cancellable",
				"job %" PRId64 " has already ended (%s)", id,
				job_state_to_string(pj.state));
		proto_job_release(&pj);
		return;
	}
	struct simple_ctx *c = xcalloc(1, sizeof(*c));
	c->id = id;
	c->previous = j->state;
	c->org = org_name(s, j->org_id);
	c->message = xasprintf("cancelled by %s", r->principal ? r->principal->name : "a user");
	r->ctx = c;
	r->ctx_free = simple_ctx_free;
	r->mut = (struct store_mut){.kind = STORE_JOB_FINISH,
				    .finish = {.job_id = id, .state = JOB_CANCELLED,
					       .message = c->message, .now = proto_now_ms()},
				    .done = cancel_done,
				    .userdata = r};
	if (j->state == JOB_QUEUED) {
		r->mut.finish.fence = 0;
	} else {
		r->mut.finish.fence = j->fence;
		sched_end_lease(s, j, "cancelled");
	}
	char pb[160];
	log_info("job cancelled job=%" PRId64 " org=%s req=%s state=%s by=%s", id, org_name(s, j->org_id), r->id,
		 job_state_to_string(c->previous),
		 log_field(r->principal ? r->principal->name : "?", pb, sizeof(pb)));
	req_audit_target(r, "job %" PRId64, id);
	req_audit_org(r, j->org_id);
	sched_free_job(s, j);
	req_submit(r, &r->mut, 200);
	pthread_mutex_unlock(&s->lock);
}

/* ---- agent writes: status and complete ------------------------------------ */

static void status_done(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct simple_ctx *c = r->ctx;
	if (m->result == -ENOENT)
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "job %" PRId64 " not found",
				c->id);
	else if (m->result < 0)
		reply_stale(r, c->id, m->start.fence, NULL, NULL);
	else
		reply_small(r, xasprintf("{\"id\":%" PRId64 ",\"state\":\"running\"}\n", c->id));
}

void h_jobs_status(struct req *r)
{
	struct server *s = r->srv;
	int64_t id, fence;
	if (!job_id_param(r, &id) || json_get_fence(r, &fence) < 0)
		return;
	if (access_job_write(r, id, fence) < 0)
		return;
	const char *state = json_string_value(json_object_get(r->json, "state"));
	if (!state || !streq(state, "running")) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'state' must be \"running\" (report the end with "
				"POST /v1/jobs/%" PRId64 "/complete)",
				id);
		return;
	}
	pthread_mutex_lock(&s->lock);
	struct sjob *j = sched_job(s, id);
	if (j && (!job_state_is_active(j->state) || j->fence != fence)) {
		reply_stale(r, id, fence, j, NULL);
		pthread_mutex_unlock(&s->lock);
		return;
	}
	if (j) {
		j->state = JOB_RUNNING;
		j->lease_expires_ns = now_mono_ns() + s->cfg.lease_ttl_ms * NSEC_PER_MSEC;
	}
	struct simple_ctx *c = xcalloc(1, sizeof(*c));
	c->id = id;
	r->ctx = c;
	r->ctx_free = simple_ctx_free;
	r->mut = (struct store_mut){.kind = STORE_JOB_START,
				    .start = {.job_id = id, .fence = fence, .now = proto_now_ms()},
				    .done = status_done,
				    .userdata = r};
	store_submit(s->store, &r->mut);
	pthread_mutex_unlock(&s->lock);
}

static void complete_done(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct simple_ctx *c = r->ctx;
	if (m->result == -ENOENT) {
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "job %" PRId64 " not found",
				c->id);
		return;
	}
	if (m->result < 0) {
		_cleanup_free_ char *why = NULL;
		if (job_state_is_terminal(m->finish.ret_state))
			why = xasprintf("the job ended as %s%s",
					job_state_to_string(m->finish.ret_state),
					m->finish.ret_fence == m->finish.fence ? "" : " under another lease");
		else
			why = xasprintf("the job is %s with fence %" PRId64,
					job_state_to_string(m->finish.ret_state), m->finish.ret_fence);
		reply_stale(r, c->id, m->finish.fence, NULL, why);
		return;
	}
	if (m->result == 0)
		obs_job_ended(r->srv, c->state, c->org);
	reply_small(r, xasprintf("{\"id\":%" PRId64 ",\"state\":\"%s\",\"duplicate\":%s}\n",
				 c->id, job_state_to_string(c->state),
				 m->result == 1 ? "true" : "false"));
}

static int parse_result(struct req *r, enum job_state *st, bool *has_code, int *code,
			const char **message)
{
	const char *state = json_string_value(json_object_get(r->json, "state"));
	if (!state || job_state_from_string(state, st) < 0 || !job_state_is_terminal(*st) ||
	    *st == JOB_LOST) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'state' must be one of succeeded, failed, timed_out, "
				"cancelled");
		return -EINVAL;
	}
	json_t *ec = json_object_get(r->json, "exit_code");
	*has_code = false;
	if (ec && !json_is_null(ec)) {
		if (!json_is_integer(ec) || json_integer_value(ec) < -1024 ||
		    json_integer_value(ec) > 1024) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
					"request body: 'exit_code' must be an integer");
			return -EINVAL;
		}
		*has_code = true;
		*code = (int)json_integer_value(ec);
	}
	json_t *msg = json_object_get(r->json, "message");
	*message = NULL;
	if (msg && !json_is_null(msg)) {
		if (!json_is_string(msg) || json_string_length(msg) > 4096) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
					"request body: 'message' must be a string of at most 4096 "
					"bytes");
			return -EINVAL;
		}
		*message = json_string_value(msg);
	}
	return 0;
}

void h_jobs_complete(struct req *r)
{
	struct server *s = r->srv;
	int64_t id, fence;
	enum job_state st;
	bool has_code;
	int code = 0;
	const char *message;
	struct proto_usage usage;
	bool has_usage = false;
	if (!job_id_param(r, &id) || json_get_fence(r, &fence) < 0 ||
	    access_job_write(r, id, fence) < 0 ||
	    parse_result(r, &st, &has_code, &code, &message) < 0 ||
	    usage_parse(r, &usage, &has_usage) < 0)
		return;
	/* The usage is recorded even if the result is refused as stale: the
	 * attempt ran (until cancelled, say) and used what it used. */
	if (has_usage)
		usage_record(s, id, fence, &usage);
	pthread_mutex_lock(&s->lock);
	struct sjob *j = sched_job(s, id);
	if (j && (!job_state_is_active(j->state) || j->fence != fence)) {
		reply_stale(r, id, fence, j, NULL);
		pthread_mutex_unlock(&s->lock);
		return;
	}
	struct simple_ctx *c = xcalloc(1, sizeof(*c));
	c->id = id;
	c->state = st;
	c->org = j ? org_name(s, j->org_id) : NULL;
	c->message = message ? xstrdup(message) : NULL;
	r->ctx = c;
	r->ctx_free = simple_ctx_free;
	r->mut = (struct store_mut){.kind = STORE_JOB_FINISH,
				    .finish = {.job_id = id, .fence = fence, .state = st,
					       .has_exit_code = has_code, .exit_code = code,
					       .message = c->message, .now = proto_now_ms()},
				    .done = complete_done,
				    .userdata = r};
	req_audit_target(r, "job %" PRId64 " (%s)", id, job_state_to_string(st));
	if (j)
		req_audit_org(r, j->org_id);
	req_submit(r, &r->mut, 200);
	/* Logged once, when the result is taken (a retransmission finds no j);
	 * formatted after the lock is let go. */
	char agent[160] = "";
	bool taken = j != NULL;
	if (j) {
		struct sagent *a = j->agent;
		snprintf(agent, sizeof(agent), "%s", a ? a->name : "?");
		sched_end_lease(s, j, NULL);
		sched_free_job(s, j);
		if (a)
			sched_kick_agent(s, a);
	} else {
		take_revoked(s, id, fence);
	}
	pthread_mutex_unlock(&s->lock);
	if (taken) {
		char ab[180];
		log_info("job finished job=%" PRId64 " state=%s agent=%s org=%s req=%s fence=%" PRId64
			 " exit=%d",
			 id, job_state_to_string(st), log_field(agent, ab, sizeof(ab)),
			 c->org ? c->org : "?",
			 r->id, fence, has_code ? code : -1);
	}
}
