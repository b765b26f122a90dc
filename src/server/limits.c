/*
 * limits: per-org rate limits (token buckets) and the per-org cap on running
 * jobs (decision 0018).
 *
 * Each org has three buckets, refilled continuously at the configured rate
 * and holding at most rate x burst seconds: the API calls of its people and
 * scripts (owner, member, viewer, metrics tokens: agents and job tokens are
 * bounded by the running cap and the agent's own pacing; admins are not
 * limited, so an operator can always act), the jobs it submits (a matrix
 * costs one per job) and the webhook deliveries it receives (charged once
 * the signature verifies, so unsigned junk cannot use up an org's budget).
 * An empty bucket answers 429 with Retry-After; nothing else changes. The
 * buckets are in memory: a restart refills them.
 *
 *   POST /v1/orgs/{name}/limits {"max_running": N|null}   (admin)
 */
#include "server-internal.h"

#include <inttypes.h>
#include <math.h>

static const char *const kind_names[LIMIT_MAX] = {"API", "submission", "webhook delivery"};

static double rate_of(const struct server *s, enum limit_kind k)
{
	switch (k) {
	case LIMIT_API: return s->cfg.org_api_rate;
	case LIMIT_SUBMIT: return s->cfg.org_submit_rate;
	case LIMIT_WEBHOOK: return s->cfg.org_webhook_rate;
	default: return 0;
	}
}

void limits_init_org(struct server *s, struct sorg *o)
{
	uint64_t now = now_mono_ns();
	for (int k = 0; k < LIMIT_MAX; k++) {
		double rate = rate_of(s, (enum limit_kind)k);
		token_bucket_init(&o->buckets[k], rate, rate * s->cfg.org_burst_s, now);
	}
}

int limits_take(struct req *r, int64_t org_id, enum limit_kind kind, double cost)
{
	struct server *s = r->srv;
	double rate = rate_of(s, kind);
	if (rate <= 0)
		return 0;
	uint64_t retry_ms = 0;
	pthread_mutex_lock(&s->lock);
	struct sorg *o = org_get(s, org_id);
	/* A single request larger than the whole bucket is let through when the
	 * bucket is full (else it could never pass); it empties the bucket. */
	bool ok = !o;
	if (o) {
		struct token_bucket *b = &o->buckets[kind];
		double c = MIN(cost, b->burst);
		ok = token_bucket_take(b, c, now_mono_ns(), &retry_ms);
	}
	char name[96];
	snprintf(name, sizeof(name), "%s", o ? o->name : "?");
	pthread_mutex_unlock(&s->lock);
	if (ok)
		return 0;
	uint64_t secs = MAX((retry_ms + 999) / 1000, 1);
	req_reply_error(r, MHD_HTTP_TOO_MANY_REQUESTS, "rate_limited",
			"org '%s' is over its %s rate (%g per second): retry after %" PRIu64 "s",
			name, kind_names[kind], rate, secs);
	char ra[32];
	snprintf(ra, sizeof(ra), "%" PRIu64, secs);
	MHD_add_response_header(r->response, MHD_HTTP_HEADER_RETRY_AFTER, ra);
	obs_rate_limited(s, name, kind);
	return -EAGAIN;
}

/* ---- POST /v1/orgs/{name}/limits ------------------------------------------ */

struct limits_ctx {
	int64_t org_id, max_running;
	char *name;
};

static void limits_ctx_free(void *p)
{
	struct limits_ctx *c = p;
	if (!c)
		return;
	free(c->name);
	free(c);
}

static void limits_done(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct limits_ctx *c = r->ctx;
	if (m->result < 0) {
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "org '%s' not found", c->name);
		return;
	}
	struct server *s = r->srv;
	pthread_mutex_lock(&s->lock);
	struct sorg *o = org_get(s, c->org_id);
	if (o) {
		/* A higher cap (or none) frees queued work at once. */
		o->max_running = c->max_running;
		sched_org_dispatch(s, c->org_id);
	}
	pthread_mutex_unlock(&s->lock);
	req_reply_json(r, MHD_HTTP_OK,
		       json_pack("{s:s,s:o}", "name", c->name, "max_running",
				 c->max_running ? json_integer(c->max_running) : json_null()));
}

void h_orgs_limits(struct req *r)
{
	struct server *s = r->srv;
	const char *name = r->n_params ? r->params[0] : "";
	json_t *mr = json_object_get(r->json, "max_running");
	if (!mr || (!json_is_null(mr) && (!json_is_integer(mr) || json_integer_value(mr) < 0 ||
					  json_integer_value(mr) > 1000000))) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'max_running' must be a number of jobs (0 or null: "
				"the server's default)");
		return;
	}
	pthread_mutex_lock(&s->lock);
	struct sorg *o = proto_org_name_valid(name) ? org_by_name(s, name) : NULL;
	int64_t org_id = o ? o->id : 0;
	pthread_mutex_unlock(&s->lock);
	if (!org_id) {
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "org '%.64s' not found", name);
		return;
	}
	struct limits_ctx *c = xcalloc(1, sizeof(*c));
	c->org_id = org_id;
	c->max_running = json_is_integer(mr) ? json_integer_value(mr) : 0;
	c->name = xstrdup(name);
	r->ctx = c;
	r->ctx_free = limits_ctx_free;
	req_audit_org(r, org_id);
	req_audit_target(r, "org %s max_running %" PRId64, name, c->max_running);
	r->mut = (struct store_mut){.kind = STORE_ORG_LIMITS,
				    .org_limits = {.id = org_id, .max_running = c->max_running},
				    .done = limits_done,
				    .userdata = r};
	req_submit(r, &r->mut, 200);
}
