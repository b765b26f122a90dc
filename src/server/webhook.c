/*
 * webhook: GitHub `workflow_job` intake (docs/security.md, docs/github.md).
 *
 *   POST /v1/webhooks/github            the default org
 *   POST /v1/webhooks/github/{org}      an org by name
 *   PUT  /v1/github/webhook-secret      set the org's secret (the old one stays
 *                                       accepted as "previous" until dropped)
 *   DELETE /v1/github/webhook-secret/previous
 *   GET  /v1/github/deliveries          the org's recent deliveries
 *
 * Order of checks for a delivery, each before the next:
 *   1. size: over webhook_body_max (25 MiB) -> 413, from Content-Length,
 *      before the body is read (http.c);
 *   2. X-Hub-Signature-256: HMAC-SHA256 over the raw body, constant time,
 *      against the org's current and previous secrets; no secret, an unknown
 *      org or a mismatch all answer the same 401 — before any parsing;
 *   3. replay: the X-GitHub-Delivery id (kept webhook_retention, >= 8 days)
 *      and the (GitHub job id, run attempt, action) key (kept forever): a
 *      redelivery is answered 200 and creates nothing. GitHub signs no
 *      timestamp, so none is checked;
 *   4. the payload: a `queued` job whose labels (without `self-hosted`) some
 *      agent of the org's pools has becomes a kiln job running the runner
 *      command template; `completed` for a job kiln made but never started
 *      cancels it; anything else is recorded.
 * The answer (2xx) is sent only after the delivery record — and the job
 * made with it, in the same transaction — is durable.
 */
#include "server-internal.h"
#include "auth/auth.h"
#include "spec/spec.h"

#include <ctype.h>
#include <inttypes.h>
#include <sodium.h>

#define WH_SECRET      "github-webhook"
#define WH_PREVIOUS    "github-webhook-previous"
#define PRUNE_EVERY_NS (3600ULL * NSEC_PER_SEC)

/* A delivery between its checks and its commit (server.wh_pending, under lock). */
struct wh_pending {
	int64_t org_id;
	char delivery[80];
	int64_t gh_job_id, run_attempt;
	char action[32];
	struct wh_pending *next;
};

struct wh_ctx {
	struct store_mut mut;
	struct wh_pending key;
	bool pending;
	char *event, *action, *outcome;
	struct submit_ctx *jobs; /* the job made, if any */
	int status;
};

static void wh_unpend(struct server *s, struct wh_ctx *c)
{
	if (!c->pending)
		return;
	pthread_mutex_lock(&s->lock);
	for (struct wh_pending **p = &s->wh_pending; *p; p = &(*p)->next)
		if (*p == &c->key) {
			*p = c->key.next;
			break;
		}
	pthread_mutex_unlock(&s->lock);
	c->pending = false;
}

static void wh_ctx_free(void *p)
{
	struct wh_ctx *c = p;
	if (!c)
		return;
	free(c->event);
	free(c->action);
	free(c->outcome);
	submit_ctx_free(c->jobs);
	free(c);
}

/* Is the delivery (or its job key) in flight? Under lock. */
static bool pending_has(struct server *s, const struct wh_pending *k)
{
	for (struct wh_pending *p = s->wh_pending; p; p = p->next) {
		if (p->org_id != k->org_id)
			continue;
		if (streq(p->delivery, k->delivery))
			return true;
		if (k->gh_job_id && p->gh_job_id == k->gh_job_id &&
		    p->run_attempt == k->run_attempt && streq(p->action, k->action))
			return true;
	}
	return false;
}

/* ---- answering ------------------------------------------------------------ */

static void reply(struct req *r, int status, const struct wh_ctx *c, int64_t job_id, bool dup)
{
	json_t *o = json_pack("{s:s,s:s,s:b}", "delivery", c->key.delivery, "outcome",
	                      c->outcome ? c->outcome : "", "duplicate", dup);
	json_object_set_new(o, "job", job_id > 0 ? json_integer(job_id) : json_null());
	req_reply_json(r, (unsigned)status, o);
}

static void delivery_done(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct wh_ctx *c = r->ctx;
	int64_t job_id = m->webhook.job ? m->webhook.job->id : 0;
	if (m->result == -EEXIST) {
		/* Another delivery won (a second server?): the job made here goes. */
		if (job_id) {
			pthread_mutex_lock(&r->srv->lock);
			struct sjob *j = sched_job(r->srv, job_id);
			if (j && j->state == JOB_QUEUED)
				sched_free_job(r->srv, j);
			pthread_mutex_unlock(&r->srv->lock);
		}
		wh_unpend(r->srv, c);
		free(c->outcome);
		c->outcome = xstrdup("duplicate");
		reply(r, MHD_HTTP_OK, c, 0, true);
		return;
	}
	wh_unpend(r->srv, c);
	if (m->result < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
		                "the delivery could not be recorded");
		return;
	}
	reply(r, c->status, c, job_id, false);
}

/* Queues the delivery record (with the job it carries, if any). */
static void record(struct req *r, struct wh_ctx *c, int64_t org_id, int status)
{
	c->status = status;
	c->mut = (struct store_mut){.kind = STORE_WEBHOOK_DELIVERY,
	                            .webhook = {.delivery = c->key.delivery,
	                                        .org_id = org_id,
	                                        .event = c->event,
	                                        .action = c->action ? c->action : "",
	                                        .gh_job_id = c->key.gh_job_id,
	                                        .run_attempt = c->key.run_attempt,
	                                        .outcome = c->outcome,
	                                        .now = proto_now_ms()},
	                            .done = delivery_done,
	                            .userdata = r};
	req_audit_org(r, org_id);
	if (c->jobs)
		jobs_commit_with(r, c->jobs, &c->mut); /* sets .job, submits with the audit */
	else
		req_submit(r, &c->mut, status);
}

/* ---- the payload ---------------------------------------------------------- */

/*
 * A payload string made safe for a job spec: one line of at most max bytes
 * (cut at a UTF-8 boundary), control characters as spaces, and "${{" as
 * "$ {{" — specs have no escape for it, and a repository or job name must
 * neither break the spec nor be taken for a matrix expression.
 */
static char *one_line(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n > max)
		n = max;
	n = utf8_valid_prefix(s, n);
	struct buf b = BUF_INIT;
	buf_puts(&b, "");
	for (size_t i = 0; i < n;) {
		const unsigned char *u = (const unsigned char *)s + i, *next = u;
		uint32_t cp = utf8_next(&next);
		size_t k = (size_t)(next - u);
		/* Controls, and what a spec cannot carry (spec_char_ok), become a
		 * space: the runner spec must load whatever GitHub sends. */
		if (cp < 0x20 || !spec_char_ok(cp))
			buf_putc(&b, ' ');
		else
			buf_append(&b, u, k);
		if (cp == '$' && i + 2 < n && s[i + 1] == '{' && s[i + 2] == '{')
			buf_putc(&b, ' ');
		i += k;
	}
	return buf_steal(&b);
}

/*
 * The runs-on of a queued GitHub job: its labels lower-cased, without
 * `self-hosted` (every kiln agent is) and duplicates. NULL and *why if one
 * is no kiln label.
 */
json_t *webhook_runs_on(json_t *labels, const char **why)
{
	json_t *out = json_array();
	size_t i;
	json_t *v;
	json_array_foreach(labels, i, v)
	{
		const char *l = json_string_value(v);
		if (!l || !spec_label_valid(l)) {
			*why = "a label is not a valid kiln label";
			json_decref(out);
			return NULL;
		}
		_cleanup_free_ char *low = xstrdup(l);
		for (char *p = low; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		bool dup = streq(low, "self-hosted");
		size_t k;
		json_t *w;
		json_array_foreach(out, k, w)
		{
			dup |= streq(json_string_value(w), low);
		}
		if (!dup)
			json_array_append_new(out, json_string(low));
	}
	return out;
}

/* Does some agent of the org's pools (or the shared pool) have every label? Under lock. */
static bool pool_matches(struct server *s, int64_t org_id, json_t *runs_on)
{
	for (struct sagent *a = s->agents; a; a = a->next) {
		if (a->org_id != 0 && a->org_id != org_id)
			continue;
		bool all = true;
		size_t i;
		json_t *v;
		json_array_foreach(runs_on, i, v)
		{
			bool found = false;
			for (size_t k = 0; k < a->n_labels && !found; k++)
				found = streq(a->labels[k], json_string_value(v));
			if (!found) {
				all = false;
				break;
			}
		}
		if (all)
			return true;
	}
	return false;
}

static void env_set(json_t *env, const char *k, const char *v)
{
	_cleanup_free_ char *line = one_line(v ? v : "", 1024);
	json_object_set_new(env, k, json_string(line));
}

static void env_int(json_t *env, const char *k, int64_t v)
{
	char b[32];
	snprintf(b, sizeof(b), "%" PRId64, v);
	json_object_set_new(env, k, json_string(b));
}

/* The kiln job spec (JSON text) of a queued GitHub job. */
char *webhook_runner_spec(json_t *payload, json_t *runs_on, const char *org, const char *delivery,
                          const char *command, const char *secrets)
{
	json_t *wj = json_object_get(payload, "workflow_job");
	const char *repo =
	    json_string_value(json_object_get(json_object_get(payload, "repository"), "full_name"));
	const char *jname = json_string_value(json_object_get(wj, "name"));
	int64_t gh_id = json_integer_value(json_object_get(wj, "id"));
	json_t *attempt = json_object_get(wj, "run_attempt");
	_cleanup_free_ char *name =
	    xasprintf("github %s: %s", repo ? repo : "?", jname ? jname : "job");
	_cleanup_free_ char *short_name = one_line(name, 200);
	json_t *env = json_object();
	env_set(env, "GH_REPOSITORY", repo);
	env_int(env, "GH_JOB_ID", gh_id);
	env_int(env, "GH_RUN_ID", json_integer_value(json_object_get(wj, "run_id")));
	env_int(env, "GH_RUN_ATTEMPT", json_is_integer(attempt) ? json_integer_value(attempt) : 1);
	env_set(env, "GH_JOB_NAME", jname);
	env_set(env, "GH_WORKFLOW", json_string_value(json_object_get(wj, "workflow_name")));
	env_set(env, "GH_HTML_URL", json_string_value(json_object_get(wj, "html_url")));
	env_set(env, "GH_DELIVERY", delivery);
	struct buf labels = BUF_INIT;
	buf_puts(&labels, "self-hosted");
	size_t i;
	json_t *v;
	json_array_foreach(runs_on, i, v) buf_printf(&labels, ",%s", json_string_value(v));
	env_set(env, "GH_LABELS", labels.data);
	buf_release(&labels);
	_cleanup_free_ char *runner = xasprintf("kiln-%s-%" PRId64, org, gh_id);
	env_set(env, "GH_RUNNER_NAME", runner);
	json_t *spec =
	    json_pack("{s:s,s:O,s:o,s:[{s:s,s:s}]}", "name", short_name, "runs-on", runs_on, "env",
	              env, "steps", "name", "GitHub Actions runner", "run", command);
	if (secrets && *secrets) {
		size_t n;
		char **names = proto_labels_split(secrets, &n);
		json_t *arr = json_array();
		for (size_t k = 0; k < n; k++) {
			/* proto_labels_split lower-cases; secret names are upper-case. */
			for (char *p = names[k]; *p; p++)
				*p = (char)toupper((unsigned char)*p);
			json_array_append_new(arr, json_string(names[k]));
		}
		proto_strv_free(names, n);
		json_object_set_new(spec, "secrets", arr);
	}
	char *text = json_dumps(spec, JSON_COMPACT);
	json_decref(spec);
	return text;
}

int webhook_payload_parse(const char *body, size_t len, struct webhook_event *ev,
                          struct kiln_err *err)
{
	json_error_t jerr;
	json_t *p = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(p)) {
		json_decref(p);
		return kiln_err_set(
		    err, -EINVAL,
		    "workflow_job payload: not a JSON object (line %d, column %d: %s)", jerr.line,
		    jerr.column, jerr.text);
	}
	const char *action = json_string_value(json_object_get(p, "action"));
	json_t *wj = json_object_get(p, "workflow_job");
	json_t *id = json_object_get(wj, "id"), *attempt = json_object_get(wj, "run_attempt");
	json_t *labels = json_object_get(wj, "labels");
	const char *why = NULL;
	if (!action || !*action || strlen(action) >= sizeof(ev->action))
		why = "'action' must be a short string";
	else if (!json_is_object(wj))
		why = "'workflow_job' must be an object";
	else if (!json_is_integer(id) || json_integer_value(id) <= 0)
		why = "'workflow_job.id' must be a positive integer";
	else if (attempt && !json_is_null(attempt) &&
	         (!json_is_integer(attempt) || json_integer_value(attempt) <= 0))
		why = "'workflow_job.run_attempt' must be a positive integer";
	else if (!json_is_array(labels) || json_array_size(labels) > 64)
		why = "'workflow_job.labels' must be a list of at most 64 labels";
	for (const char *q = why ? "" : action; *q && !why; q++)
		if (!islower((unsigned char)*q) && *q != '_')
			why = "'action' must be lower-case letters";
	if (why) {
		json_decref(p);
		return kiln_err_set(err, -EINVAL, "workflow_job payload: %s", why);
	}
	snprintf(ev->action, sizeof(ev->action), "%s", action);
	ev->gh_job_id = json_integer_value(id);
	ev->run_attempt = json_is_integer(attempt) ? json_integer_value(attempt) : 1;
	ev->payload = p;
	return 0;
}

/* The checks of the payload of a signed workflow_job delivery; 400 if bad. */
static json_t *parse_payload(struct req *r, struct wh_ctx *c)
{
	struct webhook_event ev = {0};
	struct kiln_err err = {0};
	if (webhook_payload_parse(r->body.data, r->body.len, &ev, &err) < 0) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST,
		                strstr(err.msg, "not a JSON object") ? "bad_json" : "bad_payload",
		                "%s", err.msg);
		return NULL;
	}
	c->action = xstrdup(ev.action);
	snprintf(c->key.action, sizeof(c->key.action), "%s", ev.action);
	c->key.gh_job_id = ev.gh_job_id;
	c->key.run_attempt = ev.run_attempt;
	return ev.payload;
}

/* `completed` for a job kiln made and never started: cancel it. Under nothing. */
static char *cancel_unstarted(struct server *s, int64_t org_id, const struct wh_ctx *c,
                              json_t *payload)
{
	int64_t job_id = 0;
	if (store_webhook_event_job(s->store, org_id, c->key.gh_job_id, c->key.run_attempt,
	                            "queued", &job_id) < 0 ||
	    job_id <= 0)
		return xstrdup("recorded (kiln made no job for it)");
	const char *concl = json_string_value(
	    json_object_get(json_object_get(payload, "workflow_job"), "conclusion"));
	pthread_mutex_lock(&s->lock);
	struct sjob *j = sched_job(s, job_id);
	char *outcome;
	if (j && j->state == JOB_QUEUED) {
		struct store_mut *m = mut_new(STORE_JOB_FINISH);
		char *msg =
		    xasprintf("cancelled: GitHub reports its job %" PRId64 " completed (%s) "
		              "before kiln started it",
		              c->key.gh_job_id, concl ? concl : "no conclusion");
		m->finish = (__typeof__(m->finish)){.job_id = job_id,
		                                    .fence = 0,
		                                    .state = JOB_CANCELLED,
		                                    .message = msg,
		                                    .now = proto_now_ms()};
		mut_set_msg(m, msg);
		mut_submit_detached(s, m);
		sched_free_job(s, j);
		outcome = xasprintf("cancelled job %" PRId64 " (never started)", job_id);
	} else {
		outcome = xasprintf("recorded (job %" PRId64 ")", job_id);
	}
	pthread_mutex_unlock(&s->lock);
	return outcome;
}

void h_webhook_github(struct req *r)
{
	struct server *s = r->srv;
	const char *org = r->n_params ? r->params[0] : "default";
	pthread_mutex_lock(&s->lock);
	struct sorg *o = proto_org_name_valid(org) ? org_by_name(s, org) : NULL;
	int64_t org_id = o ? o->id : 0;
	pthread_mutex_unlock(&s->lock);

	/* 2. The signature, over the raw bytes, before anything reads them. */
	struct buf cur = BUF_INIT, prev = BUF_INIT;
	const char *keys[2];
	size_t n = 0;
	if (org_id && secret_get_plain(s, org_id, WH_SECRET, &cur) == 0)
		keys[n++] = cur.data;
	if (org_id && secret_get_plain(s, org_id, WH_PREVIOUS, &prev) == 0)
		keys[n++] = prev.data;
	int v = webhook_verify(req_header(r, "X-Hub-Signature-256"),
	                       r->body.data ? r->body.data : "", r->body.len, keys, n);
	sodium_memzero(cur.data, cur.len);
	sodium_memzero(prev.data, prev.len);
	buf_release(&cur);
	buf_release(&prev);
	if (v < 0) {
		char ob[96];
		log_warn("webhook refused: bad signature org=%s req=%s from=%s why=%s",
		         log_field(org, ob, sizeof(ob)), r->id, r->source,
		         !org_id        ? "unknown-org"
		         : !n           ? "no-secret"
		         : v == -EINVAL ? "malformed"
		                        : "mismatch");
		req_reply_error(r, MHD_HTTP_UNAUTHORIZED, "bad_signature",
		                "X-Hub-Signature-256 does not verify against this org's webhook "
		                "secret");
		return;
	}
	if (limits_take(r, org_id, LIMIT_WEBHOOK, 1) < 0)
		return;
	/* Authenticated: the delivery is the caller from here (audit). */
	const char *delivery = req_header(r, "X-GitHub-Delivery");
	const char *event = req_header(r, "X-GitHub-Event");
	r->who = (struct principal){.org_id = org_id, .role = ROLE_NONE};
	snprintf(r->who.label, sizeof(r->who.label), "github webhook (secret %s)",
	         v == 0 ? "current" : "previous");
	r->who.name = r->who.label;
	r->principal = &r->who;
	bool ok =
	    delivery && event && *delivery && *event && strlen(delivery) < 64 && strlen(event) < 64;
	for (const char *p = ok ? delivery : ""; *p && ok; p++)
		ok = isalnum((unsigned char)*p) || *p == '-';
	for (const char *p = ok ? event : ""; *p && ok; p++)
		ok = islower((unsigned char)*p) || *p == '_';
	if (!ok) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
		                "X-GitHub-Delivery (letters, digits, '-') and X-GitHub-Event are "
		                "required");
		return;
	}
	struct wh_ctx *c = xcalloc(1, sizeof(*c));
	r->ctx = c;
	r->ctx_free = wh_ctx_free;
	c->key.org_id = org_id;
	snprintf(c->key.delivery, sizeof(c->key.delivery), "%s", delivery);
	c->event = xstrdup(event);
	req_audit_target(r, "github delivery %s (%s)", delivery, event);

	json_t *payload = NULL;
	if (streq(event, "workflow_job")) {
		payload = parse_payload(r, c);
		if (!payload)
			return;
		req_audit_target(
		    r, "github delivery %s (workflow_job %s, job %" PRId64 " attempt %" PRId64 ")",
		    delivery, c->action, c->key.gh_job_id, c->key.run_attempt);
	}

	/* 3. Replays: in flight here, or committed. */
	pthread_mutex_lock(&s->lock);
	bool dup = pending_has(s, &c->key);
	pthread_mutex_unlock(&s->lock);
	if (!dup) {
		int seen = store_webhook_seen(s->store, org_id, c->key.delivery, c->key.gh_job_id,
		                              c->key.run_attempt, c->action ? c->action : "");
		dup = seen != 0;
	}
	pthread_mutex_lock(&s->lock);
	dup = dup || pending_has(s, &c->key);
	if (!dup) {
		c->key.next = s->wh_pending;
		s->wh_pending = &c->key;
		c->pending = true;
	}
	pthread_mutex_unlock(&s->lock);
	if (dup) {
		json_decref(payload);
		c->outcome = xstrdup("duplicate");
		reply(r, MHD_HTTP_OK, c, 0, true);
		return;
	}

	/* 4. What the delivery asks for. */
	int status = MHD_HTTP_OK;
	if (!payload) {
		c->outcome = xasprintf(streq(event, "ping") ? "pong" : "ignored (event %s)", event);
	} else if (streq(c->action, "queued")) {
		const char *why = NULL;
		json_t *runs_on = webhook_runs_on(
		    json_object_get(json_object_get(payload, "workflow_job"), "labels"), &why);
		pthread_mutex_lock(&s->lock);
		bool match = runs_on && pool_matches(s, org_id, runs_on);
		pthread_mutex_unlock(&s->lock);
		if (!runs_on) {
			c->outcome = xasprintf("no job: %s", why);
		} else if (!match) {
			c->outcome = xstrdup("no job: no agent of this org's pools has its labels");
		} else {
			_cleanup_free_ char *text = webhook_runner_spec(
			    payload, runs_on, org, delivery, s->cfg.github_runner_command,
			    s->cfg.github_runner_secrets);
			c->jobs =
			    jobs_prepare(r, "github workflow_job", text, strlen(text), org_id);
			if (!c->jobs) {
				/* Answered (400): a misconfigured runner template or secret;
				 * GitHub may redeliver once it is fixed. */
				json_decref(runs_on);
				json_decref(payload);
				wh_unpend(s, c);
				return;
			}
			c->outcome = xstrdup("created");
			status = MHD_HTTP_CREATED;
		}
		json_decref(runs_on);
	} else if (streq(c->action, "completed")) {
		c->outcome = cancel_unstarted(s, org_id, c, payload);
	} else {
		c->outcome = xstrdup("recorded");
	}
	json_decref(payload);
	{
		char ob[96], db[96];
		log_info("webhook delivery org=%s req=%s delivery=%s event=%s action=%s outcome=%s",
		         log_field(org, ob, sizeof(ob)), r->id, log_field(delivery, db, sizeof(db)),
		         event, c->action ? c->action : "-", c->outcome);
	}
	record(r, c, org_id, status);
}

/* ---- the org's webhook secret --------------------------------------------- */

struct wsecret_ctx {
	struct store_mut prev_mut;
	struct buf sealed, prev_sealed;
	int64_t version, prev_version;
	bool kept_previous;
};

static void wsecret_ctx_free(void *p)
{
	struct wsecret_ctx *c = p;
	if (!c)
		return;
	buf_release(&c->sealed);
	buf_release(&c->prev_sealed);
	free(c);
}

static void prev_done(struct store_mut *m, void *ud)
{
	(void)m;
	(void)ud; /* the reply comes with the second mutation (FIFO: after this one) */
}

static void wsecret_done(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct wsecret_ctx *c = r->ctx;
	if (m->result < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
		                "the webhook secret could not be stored");
		return;
	}
	req_reply_json(r, MHD_HTTP_OK,
	               json_pack("{s:I,s:b}", "version", (json_int_t)c->version, "previous_kept",
	                         c->kept_previous));
}

void h_webhook_secret_put(struct req *r)
{
	struct server *s = r->srv;
	int64_t org_id;
	if (access_target_org(r, req_query(r, "org"), &org_id) < 0)
		return;
	req_audit_org(r, org_id);
	req_audit_target(r, "github webhook secret");
	const char *v = r->body.data ? r->body.data : "";
	size_t len = r->body.len;
	if (len < 8 || len > 1024 || memchr(v, '\0', len) || !utf8_valid(v, len)) {
		req_reply_error(
		    r, MHD_HTTP_BAD_REQUEST, "bad_value",
		    "the webhook secret (the request body) must be 8..1024 bytes of text "
		    "without NUL, as entered in GitHub");
		return;
	}
	struct wsecret_ctx *c = xcalloc(1, sizeof(*c));
	r->ctx = c;
	r->ctx_free = wsecret_ctx_free;
	/* The current secret stays accepted as the previous one, for the
	 * minutes GitHub still signs with it. */
	struct buf old = BUF_INIT;
	int rc = 0;
	if (secret_get_plain(s, org_id, WH_SECRET, &old) == 0 &&
	    !(old.len == len && sodium_memcmp(old.data, v, len) == 0)) {
		rc = secret_seal(s, org_id, WH_PREVIOUS, old.data, old.len, &c->prev_version,
		                 &c->prev_sealed);
		c->kept_previous = rc >= 0;
	}
	sodium_memzero(old.data, old.len);
	buf_release(&old);
	if (rc >= 0)
		rc = secret_seal(s, org_id, WH_SECRET, v, len, &c->version, &c->sealed);
	sodium_memzero(r->body.data, r->body.len);
	if (rc < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
		                "cannot seal the webhook secret: %s", strerror(-rc));
		return;
	}
	uint64_t now = proto_now_ms();
	if (c->kept_previous) {
		c->prev_mut = (struct store_mut){.kind = STORE_SECRET_PUT,
		                                 .secret = {.org_id = org_id,
		                                            .name = WH_PREVIOUS,
		                                            .version = c->prev_version,
		                                            .sealed = c->prev_sealed.data,
		                                            .len = c->prev_sealed.len,
		                                            .by = r->who.token_id,
		                                            .now = now},
		                                 .done = prev_done};
		store_submit(s->store, &c->prev_mut);
	}
	r->mut = (struct store_mut){.kind = STORE_SECRET_PUT,
	                            .secret = {.org_id = org_id,
	                                       .name = WH_SECRET,
	                                       .version = c->version,
	                                       .sealed = c->sealed.data,
	                                       .len = c->sealed.len,
	                                       .by = r->who.token_id,
	                                       .now = now},
	                            .done = wsecret_done,
	                            .userdata = r};
	req_submit(r, &r->mut, 200);
}

static void wprev_deleted(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	if (m->result == -ENOENT)
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found",
		                "there is no previous webhook secret");
	else
		req_reply_json(r, MHD_HTTP_OK, json_pack("{s:b}", "deleted", 1));
}

void h_webhook_secret_drop_previous(struct req *r)
{
	int64_t org_id;
	if (access_target_org(r, req_query(r, "org"), &org_id) < 0)
		return;
	req_audit_org(r, org_id);
	req_audit_target(r, "github webhook secret (previous)");
	r->mut = (struct store_mut){.kind = STORE_SECRET_DELETE,
	                            .secret = {.org_id = org_id, .name = WH_PREVIOUS},
	                            .done = wprev_deleted,
	                            .userdata = r};
	req_submit(r, &r->mut, 200);
}

void h_webhook_deliveries(struct req *r)
{
	int64_t org_id, limit;
	if (access_target_org(r, req_query(r, "org"), &org_id) < 0 ||
	    req_query_int(r, "limit", 1, 1000, 50, &limit) < 0)
		return;
	struct store_delivery *v = NULL;
	size_t n = 0;
	int rc = store_webhook_deliveries(r->srv->store, org_id, (size_t)limit, &v, &n);
	if (rc < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
		                "cannot list deliveries: %s", strerror(-rc));
		return;
	}
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_pack("{s:s,s:s,s:s,s:s}", "delivery", v[i].delivery, "event",
		                      v[i].event, "action", v[i].action, "outcome", v[i].outcome);
		proto_set_time(o, "received_at", v[i].received_at);
		json_object_set_new(o, "github_job_id",
		                    v[i].gh_job_id ? json_integer(v[i].gh_job_id) : json_null());
		json_object_set_new(o, "run_attempt",
		                    v[i].gh_job_id ? json_integer(v[i].run_attempt) : json_null());
		json_object_set_new(o, "job",
		                    v[i].job_id ? json_integer(v[i].job_id) : json_null());
		json_array_append_new(arr, o);
	}
	store_deliveries_free(v, n);
	req_reply_json(r, MHD_HTTP_OK, json_pack("{s:o}", "deliveries", arr));
}

/* ---- retention ------------------------------------------------------------ */

void webhook_tick(struct server *s, uint64_t now_ns)
{
	if (now_ns < s->wh_next_prune_ns)
		return;
	s->wh_next_prune_ns = now_ns + PRUNE_EVERY_NS;
	uint64_t now = proto_now_ms();
	if (now <= s->cfg.webhook_retention_ms)
		return;
	struct store_mut *m = mut_new(STORE_WEBHOOK_PRUNE);
	m->webhook_prune.before = now - s->cfg.webhook_retention_ms;
	mut_submit_detached(s, m);
}
