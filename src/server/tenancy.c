/*
 * tenancy: the /v1/orgs and /v1/tokens endpoints and /v1/whoami.
 *
 *   GET  /v1/orgs                 admin: every org; others: their own
 *   POST /v1/orgs {"name"}        admin
 *   GET  /v1/tokens[?org=NAME]    owner: their org's; admin: every org's or one
 *   POST /v1/tokens {"role", "org"?, "name"?, "expires_in"?, "shared"?}
 *                                 owner: owner/member/viewer/agent tokens of their
 *                                 org; admin: any role, any org, shared agent tokens
 *   POST /v1/tokens/{id}/revoke   owner: their org's; admin: any (at once)
 *   GET  /v1/whoami               any token
 *
 * A token is in the answer of its creation only; the store keeps its SHA-256.
 */
#include "server-internal.h"
#include "auth/auth.h"

#include <inttypes.h>

/* ---- orgs in memory ------------------------------------------------------- */

struct sorg *org_get(struct server *s, int64_t id)
{
	for (struct sorg *o = s->orgs; o; o = o->next)
		if (o->id == id)
			return o;
	return NULL;
}

struct sorg *org_by_name(struct server *s, const char *name)
{
	for (struct sorg *o = s->orgs; o; o = o->next)
		if (streq(o->name, name))
			return o;
	return NULL;
}

struct sorg *org_add(struct server *s, const struct proto_org *po)
{
	struct sorg *o = org_get(s, po->id);
	if (o)
		return o;
	o = xcalloc(1, sizeof(*o));
	o->id = po->id;
	o->name = xstrdup(po->name);
	o->max_running = po->max_running;
	limits_init_org(s, o);
	/* Kept in id order: fairness walks the orgs by id. */
	struct sorg **p = &s->orgs;
	while (*p && (*p)->id < o->id)
		p = &(*p)->next;
	o->next = *p;
	*p = o;
	return o;
}

const char *org_name(struct server *s, int64_t id)
{
	struct sorg *o = org_get(s, id);
	return o ? o->name : "?";
}

void orgs_free(struct server *s)
{
	while (s->orgs) {
		struct sorg *o = s->orgs;
		s->orgs = o->next;
		free(o->name);
		free(o);
	}
}

/* ---- /v1/orgs ------------------------------------------------------------- */

static json_t *org_json(struct sorg *o)
{
	json_t *j = json_pack("{s:I,s:s}", "id", (json_int_t)o->id, "name", o->name);
	json_object_set_new(j, "max_running",
			    o->max_running ? json_integer(o->max_running) : json_null());
	json_object_set_new(j, "running", json_integer(o->running));
	return j;
}

void h_orgs_list(struct req *r)
{
	struct server *s = r->srv;
	json_t *arr = json_array();
	pthread_mutex_lock(&s->lock);
	for (struct sorg *o = s->orgs; o; o = o->next)
		if (access_org_visible(r, o->id))
			json_array_append_new(arr, org_json(o));
	pthread_mutex_unlock(&s->lock);
	req_reply_json(r, MHD_HTTP_OK, json_pack("{s:o}", "orgs", arr));
}

struct org_ctx {
	char *name;
	uint64_t now;
};

static void org_ctx_free(void *p)
{
	struct org_ctx *c = p;
	if (!c)
		return;
	free(c->name);
	free(c);
}

static void org_created(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct org_ctx *c = r->ctx;
	if (m->result == -EEXIST) {
		req_reply_error(r, MHD_HTTP_CONFLICT, "exists", "org '%s' exists already", c->name);
		return;
	}
	if (m->result < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"the org could not be stored");
		return;
	}
	struct proto_org po = {.id = m->org.ret_id, .name = c->name, .created_at = c->now};
	pthread_mutex_lock(&r->srv->lock);
	org_add(r->srv, &po);
	pthread_mutex_unlock(&r->srv->lock);
	log_info("org created org=%s id=%" PRId64, c->name, po.id);
	req_reply_json(r, MHD_HTTP_CREATED, proto_org_to_json(&po));
}

void h_orgs_create(struct req *r)
{
	const char *name = json_string_value(json_object_get(r->json, "name"));
	if (!name || !proto_org_name_valid(name)) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'name' must be 1..63 of a-z, 0-9 and '-', not starting "
				"with '-'");
		return;
	}
	struct org_ctx *c = xcalloc(1, sizeof(*c));
	c->name = xstrdup(name);
	c->now = proto_now_ms();
	r->ctx = c;
	r->ctx_free = org_ctx_free;
	req_audit_target(r, "org %s", name);
	r->mut = (struct store_mut){.kind = STORE_ORG_CREATE,
				    .org = {.name = c->name, .now = c->now},
				    .done = org_created,
				    .userdata = r};
	req_submit(r, &r->mut, 201);
}

/* ---- /v1/tokens ----------------------------------------------------------- */

/* Fills in the org names of tokens (under lock). */
static json_t *tokens_json(struct server *s, struct proto_token *v, size_t n)
{
	json_t *arr = json_array();
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < n; i++) {
		if (v[i].org_id)
			v[i].org = xstrdup(org_name(s, v[i].org_id));
		json_array_append_new(arr, proto_token_to_json(&v[i]));
	}
	pthread_mutex_unlock(&s->lock);
	return arr;
}

void h_tokens_list(struct req *r)
{
	int64_t org = -1;
	const char *name = req_query(r, "org");
	if (r->who.role != ROLE_ADMIN || (name && *name)) {
		if (access_target_org(r, name, &org) < 0)
			return;
	}
	struct proto_token *v = NULL;
	size_t n = 0;
	int rc = store_tokens_list(r->srv->store, org, &v, &n);
	if (rc < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"cannot list tokens: %s", strerror(-rc));
		return;
	}
	json_t *arr = tokens_json(r->srv, v, n);
	proto_tokens_free(v, n);
	req_reply_json(r, MHD_HTTP_OK, json_pack("{s:o}", "tokens", arr));
}

struct token_ctx {
	struct proto_token t;
	char token[TOKEN_LEN + 1];
	char *org_name;
};

static void token_ctx_free(void *p)
{
	struct token_ctx *c = p;
	if (!c)
		return;
	proto_token_release(&c->t);
	free(c->org_name);
	explicit_bzero(c->token, sizeof(c->token));
	free(c);
}

static void token_created(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct token_ctx *c = r->ctx;
	if (m->result < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"the token could not be stored");
		return;
	}
	c->t.id = m->token.ret_id;
	access_token_add(r->srv, &c->t);
	char nb[160];
	log_info("token created id=%" PRId64 " role=%s org=%s req=%s by=%s", c->t.id,
		 proto_role_to_string(c->t.role), c->org_name ? c->org_name : "-", r->id,
		 log_field(r->who.label, nb, sizeof(nb)));
	c->t.org = c->org_name ? xstrdup(c->org_name) : NULL;
	json_t *o = proto_token_to_json(&c->t);
	json_object_set_new(o, "token", json_string(c->token));
	req_reply_json(r, MHD_HTTP_CREATED, o);
}

/* "expires_in": a duration ("30d", "12h") or milliseconds; 0/absent = never. */
static int parse_expiry(struct req *r, uint64_t *ret)
{
	json_t *e = json_object_get(r->json, "expires_in");
	*ret = 0;
	if (!e || json_is_null(e))
		return 0;
	uint64_t ms = 0;
	if (json_is_integer(e) && json_integer_value(e) > 0)
		ms = (uint64_t)json_integer_value(e);
	else if (!json_is_string(e) || parse_duration_ms(json_string_value(e), &ms) < 0 || !ms) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'expires_in' must be a duration such as \"30d\" or "
				"\"12h\" (or milliseconds)");
		return -EINVAL;
	}
	*ret = proto_now_ms() + ms;
	return 0;
}

/* May the caller give out `role` (shared: a shared-pool agent token)? */
static bool may_grant(const struct req *r, enum proto_role role, bool shared)
{
	if (r->who.role == ROLE_ADMIN)
		return true;
	if (shared || role == ROLE_ADMIN || role == ROLE_METRICS)
		return false;
	return r->who.role == ROLE_OWNER;
}

void h_tokens_create(struct req *r)
{
	const char *role_s = json_string_value(json_object_get(r->json, "role"));
	enum proto_role role;
	if (!role_s || proto_role_from_string(role_s, &role) < 0) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'role' must be one of admin, owner, member, viewer, "
				"agent, metrics");
		return;
	}
	json_t *sh = json_object_get(r->json, "shared");
	if (sh && !json_is_boolean(sh)) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'shared' must be true or false");
		return;
	}
	bool shared = json_is_true(sh);
	if (shared && role != ROLE_AGENT) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: only agent tokens can be for the shared pool");
		return;
	}
	const char *name = json_string_value(json_object_get(r->json, "name"));
	if (json_object_get(r->json, "name") && (!name || strlen(name) > 128 ||
						 !utf8_valid(name, strlen(name)))) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'name' must be text of at most 128 bytes");
		return;
	}
	uint64_t expires_at;
	if (parse_expiry(r, &expires_at) < 0)
		return;
	if (!may_grant(r, role, shared)) {
		req_reply_error(r, MHD_HTTP_FORBIDDEN, "forbidden",
				"%s may not create %s%s tokens", r->who.label,
				shared ? "shared-pool " : "", proto_role_to_string(role));
		return;
	}
	int64_t org_id = 0;
	if (!shared) {
		json_t *o = json_object_get(r->json, "org");
		if (o && !json_is_null(o) && !json_is_string(o)) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
					"request body: 'org' must be an org name");
			return;
		}
		if (access_target_org(r, json_string_value(o), &org_id) < 0)
			return;
	}
	struct token_ctx *c = xcalloc(1, sizeof(*c));
	r->ctx = c;
	r->ctx_free = token_ctx_free;
	token_generate(role == ROLE_AGENT	? TOKEN_AGENT
		       : role == ROLE_METRICS ? TOKEN_METRICS
					      : TOKEN_PAT,
		       c->token);
	token_hash(c->token, c->t.hash);
	c->t.role = role;
	c->t.org_id = org_id;
	c->t.name = xstrdup(name ? name : "");
	c->t.created_by = r->who.token_id;
	c->t.created_at = proto_now_ms();
	c->t.expires_at = expires_at;
	if (org_id) {
		pthread_mutex_lock(&r->srv->lock);
		c->org_name = xstrdup(org_name(r->srv, org_id));
		pthread_mutex_unlock(&r->srv->lock);
	}
	req_audit_org(r, org_id);
	req_audit_target(r, "%s token '%s'", proto_role_to_string(role), c->t.name);
	r->mut = (struct store_mut){.kind = STORE_TOKEN_CREATE,
				    .token = {.t = &c->t},
				    .done = token_created,
				    .userdata = r};
	req_submit(r, &r->mut, 201);
}

struct revoke_ctx {
	int64_t id;
};

static void token_revoked(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct revoke_ctx *c = r->ctx;
	if (m->result == -ENOENT) {
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "token %" PRId64 " not found",
				c->id);
		return;
	}
	req_reply_json(r, MHD_HTTP_OK,
		       json_pack("{s:I,s:b,s:b}", "id", (json_int_t)c->id, "revoked", 1,
				 "already", m->result == 1));
}

void h_tokens_revoke(struct req *r)
{
	int64_t id;
	if (req_param_id(r, 0, "token", &id) < 0)
		return;
	/* Which org is it in? The table has every token the server knows. */
	struct proto_token *v = NULL;
	size_t n = 0;
	int64_t org = -1;
	if (store_tokens_list(r->srv->store, -1, &v, &n) >= 0)
		for (size_t i = 0; i < n; i++)
			if (v[i].id == id)
				org = v[i].org_id;
	proto_tokens_free(v, n);
	if (org < 0 || (!access_org_visible(r, org) && r->who.role != ROLE_ADMIN) ||
	    (org == 0 && r->who.role != ROLE_ADMIN)) {
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "token %" PRId64 " not found", id);
		return;
	}
	uint64_t now = proto_now_ms();
	/* At once: from this moment the token authenticates nothing. */
	access_token_revoked(r->srv, id, now);
	struct revoke_ctx *c = xcalloc(1, sizeof(*c));
	c->id = id;
	r->ctx = c;
	r->ctx_free = free;
	req_audit_org(r, org);
	req_audit_target(r, "token %" PRId64, id);
	char nb[160];
	log_info("token revoked id=%" PRId64 " req=%s by=%s", id, r->id,
		 log_field(r->who.label, nb, sizeof(nb)));
	r->mut = (struct store_mut){.kind = STORE_TOKEN_REVOKE,
				    .token_revoke = {.id = id, .now = now},
				    .done = token_revoked,
				    .userdata = r};
	req_submit(r, &r->mut, 200);
}

void h_whoami(struct req *r)
{
	struct server *s = r->srv;
	json_t *o = json_pack("{s:s,s:s}", "name", r->who.label, "role",
			      proto_role_to_string(r->who.role));
	json_object_set_new(o, "token_id", r->who.token_id ? json_integer(r->who.token_id)
							   : json_null());
	pthread_mutex_lock(&s->lock);
	json_object_set_new(o, "org", r->who.org_id ? json_string(org_name(s, r->who.org_id))
						    : json_null());
	pthread_mutex_unlock(&s->lock);
	req_reply_json(r, MHD_HTTP_OK, o);
}

/* POST /v1/admin/rotate-key {"new_key"?}: re-wraps every data key (keys.c). */
void h_admin_rotate_key(struct req *r)
{
	json_t *nk = json_object_get(r->json, "new_key");
	if (nk && !json_is_null(nk) && !json_is_string(nk)) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"request body: 'new_key' must be a key (64 hex or base64 of 32 bytes)");
		return;
	}
	char id[17] = "";
	int64_t n = 0;
	struct kiln_err err = {0};
	req_audit_target(r, "master key %s", keys_master_id(r->srv));
	/* Blocks this thread for one commit: a rare operator action. */
	int rc = keys_rotate(r->srv, json_string_value(nk), id, &n, &err);
	if (rc < 0) {
		req_reply_error(r, rc == -EINVAL ? MHD_HTTP_BAD_REQUEST
						 : MHD_HTTP_INTERNAL_SERVER_ERROR,
				rc == -EINVAL ? "bad_request" : "internal", "%s", err.msg);
		return;
	}
	char nb[160];
	log_info("master key rotated key_id=%s rewrapped=%" PRId64 " req=%s by=%s", id, n, r->id,
		 log_field(r->who.label, nb, sizeof(nb)));
	req_audit_target(r, "master key -> %s", id);
	req_reply_json(r, MHD_HTTP_OK,
		       json_pack("{s:s,s:I}", "key_id", id, "rewrapped", (json_int_t)n));
}
