/*
 * access: who is calling and what they may do (docs/decisions: auth model).
 *
 * Every request but /healthz (and the webhook, which its HMAC signature
 * authenticates) carries "Authorization: Bearer kiln_...". The token's shape
 * and checksum are checked first (no lookup for garbage), then its SHA-256 is
 * looked up: in the table here (every token of the store, loaded at start and
 * kept current by the token endpoints), else in the store itself (a token
 * minted by `kiln admin token` in another process). Unknown, revoked or
 * expired: 401. Then the route's flags decide by role: 403.
 *
 * Object checks (an org's jobs, agents, secrets) are the handlers' through
 * access_org_visible(): an object of another org answers 404, exactly as an
 * object that does not exist, so a token learns nothing about other orgs.
 *
 * Job tokens (kiln_job_) are not stored: each is the HMAC of (job, fence)
 * under a key derived from the server key (keys.c); a ROUTE_JOB handler
 * recomputes the token of the (job, fence) it is asked to write and compares
 * in constant time (access_job_write). A token is therefore good for the
 * writes of one lease only, and a write under an ended lease gets the stale
 * fence's 409.
 *
 * Locking: the token table is under server.auth_lock (never held with
 * server.lock).
 */
#include "server-internal.h"
#include "auth/auth.h"

#include <inttypes.h>
#include <strings.h>
#include <sys/stat.h>

#define TOUCH_EVERY_MS 60000 /* last_used_at is written at most this often */

/* ---- the token table ------------------------------------------------------ */

static size_t hash_slot(const char *hex, size_t size)
{
	uint64_t h = 0;
	for (int i = 0; i < 16 && hex[i]; i++)
		h = h * 16 + (uint64_t)(hex[i] <= '9' ? hex[i] - '0' : hex[i] - 'a' + 10);
	return (size_t)h & (size - 1);
}

static struct stoken *table_find(struct server *s, const char *hash)
{
	if (!s->tokens_tab_size)
		return NULL;
	for (struct stoken *t = s->tokens_tab[hash_slot(hash, s->tokens_tab_size)]; t; t = t->hnext)
		if (streq(t->t.hash, hash))
			return t;
	return NULL;
}

static struct stoken *table_find_id(struct server *s, int64_t id)
{
	for (size_t i = 0; i < s->tokens_tab_size; i++)
		for (struct stoken *t = s->tokens_tab[i]; t; t = t->hnext)
			if (t->t.id == id)
				return t;
	return NULL;
}

static void table_grow(struct server *s)
{
	size_t nsize = s->tokens_tab_size ? s->tokens_tab_size * 2 : 256;
	struct stoken **tab = xcalloc(nsize, sizeof(*tab)); // NOLINT(bugprone-sizeof-expression): an array of pointers
	for (size_t i = 0; i < s->tokens_tab_size; i++)
		for (struct stoken *t = s->tokens_tab[i], *next; t; t = next) {
			next = t->hnext;
			size_t h = hash_slot(t->t.hash, nsize);
			t->hnext = tab[h];
			tab[h] = t;
		}
	free(s->tokens_tab);
	s->tokens_tab = tab;
	s->tokens_tab_size = nsize;
}

/* Under auth_lock. Takes t's strings. */
static struct stoken *table_add(struct server *s, struct proto_token *t)
{
	struct stoken *old = table_find(s, t->hash);
	if (old) {
		proto_token_release(&old->t);
		old->t = *t;
		return old;
	}
	if (++s->n_tokens > s->tokens_tab_size)
		table_grow(s);
	struct stoken *st = xcalloc(1, sizeof(*st));
	st->t = *t;
	st->touched_ms = t->last_used_at;
	size_t h = hash_slot(t->hash, s->tokens_tab_size);
	st->hnext = s->tokens_tab[h];
	s->tokens_tab[h] = st;
	return st;
}

void access_token_add(struct server *s, const struct proto_token *t)
{
	struct proto_token copy = *t;
	copy.name = xstrdup(t->name ? t->name : "");
	copy.org = NULL;
	pthread_mutex_lock(&s->auth_lock);
	table_add(s, &copy);
	pthread_mutex_unlock(&s->auth_lock);
}

void access_token_revoked(struct server *s, int64_t id, uint64_t at)
{
	pthread_mutex_lock(&s->auth_lock);
	struct stoken *t = table_find_id(s, id);
	if (t && !t->t.revoked_at)
		t->t.revoked_at = at;
	pthread_mutex_unlock(&s->auth_lock);
}

void access_free(struct server *s)
{
	for (size_t i = 0; i < s->tokens_tab_size; i++)
		for (struct stoken *t = s->tokens_tab[i], *next; t; t = next) {
			next = t->hnext;
			proto_token_release(&t->t);
			free(t);
		}
	free(s->tokens_tab);
	s->tokens_tab = NULL;
	s->tokens_tab_size = 0;
	free(s->bootstrap_token_path);
	s->bootstrap_token_path = NULL;
}

/* ---- minting -------------------------------------------------------------- */

static enum token_kind kind_of_role(enum proto_role role)
{
	switch (role) {
	case ROLE_AGENT: return TOKEN_AGENT;
	case ROLE_METRICS: return TOKEN_METRICS;
	default: return TOKEN_PAT;
	}
}

/* Mints a token straight into a store (durable when it returns). */
static int mint_in_store(struct store *st, enum proto_role role, int64_t org_id, const char *name,
			 int64_t created_by, uint64_t expires_at, const char *actor,
			 char **ret_token, struct proto_token *ret, struct kiln_err *err)
{
	char tok[TOKEN_LEN + 1];
	token_generate(kind_of_role(role), tok);
	_cleanup_free_ char *name_copy = xstrdup(name);
	struct proto_token t = {.role = role, .org_id = org_id, .name = name_copy,
				.created_by = created_by, .created_at = proto_now_ms(),
				.expires_at = expires_at};
	token_hash(tok, t.hash);
	_cleanup_free_ char *target = xasprintf("%s token '%s'", proto_role_to_string(role), name);
	struct store_audit a = {.org_id = org_id, .token_id = created_by, .actor = actor,
				.action = "tokens.create", .target = target, .source = "local",
				.status = 201, .now = t.created_at};
	struct store_mut m = {.kind = STORE_TOKEN_CREATE, .token = {.t = &t}, .audit = &a};
	int r = store_apply_wait(st, &m);
	if (r < 0) {
		explicit_bzero(tok, sizeof(tok));
		return kiln_err_set(err, r == -EEXIST ? -EEXIST : -EIO,
				    "the store refused the new token (result %d)", r);
	}
	t.id = m.token.ret_id;
	*ret_token = xstrdup(tok);
	explicit_bzero(tok, sizeof(tok));
	if (ret) {
		*ret = t;
		ret->name = TAKE_PTR(name_copy);
	}
	return 0;
}

int access_mint(struct server *s, enum proto_role role, int64_t org_id, const char *name,
		int64_t created_by, uint64_t expires_at, char **ret_token, int64_t *ret_id,
		struct kiln_err *err)
{
	struct proto_token t = {0};
	int r = mint_in_store(s->store, role, org_id, name, created_by, expires_at,
			      created_by ? "api" : "kiln server", ret_token, &t, err);
	if (r < 0)
		return r;
	pthread_mutex_lock(&s->auth_lock);
	table_add(s, &t);
	pthread_mutex_unlock(&s->auth_lock);
	if (ret_id)
		*ret_id = t.id;
	return 0;
}

int server_admin_token(struct server *s, const char *name, char **ret, struct kiln_err *err)
{
	return access_mint(s, ROLE_ADMIN, 1, name && *name ? name : "admin", 0, 0, ret, NULL, err);
}

const char *server_bootstrap_token_path(const struct server *s)
{
	return s->bootstrap_token_path;
}

int server_mint_admin_token(const char *state_dir, const char *store_url, const char *name,
			    char **ret, struct kiln_err *err)
{
	if (auth_init() < 0)
		return kiln_err_set(err, -EIO, "libsodium failed to initialise");
	_cleanup_free_ char *db = path_join(state_dir, "kiln.db");
	_cleanup_free_ char *url = store_url ? xstrdup(store_url) : xasprintf("sqlite:%s", db);
	if (!store_url && access(db, F_OK) != 0)
		return kiln_err_set(err, -ENOENT,
				    "'%s' has no kiln database: is it a server's state directory?",
				    state_dir);
	struct store *st = NULL;
	struct store_options so;
	store_options_init(&so);
	int r = store_open(url, &so, &st, err);
	if (r < 0)
		return r;
	r = mint_in_store(st, ROLE_ADMIN, 1, name && *name ? name : "admin", 0, 0,
			  "kiln admin token (local)", ret, NULL, err);
	store_close(st);
	return r;
}

/* The first start of a state directory: one admin token, in a 0600 file. */
static int bootstrap(struct server *s, struct kiln_err *err)
{
	char *tok = NULL;
	int r = access_mint(s, ROLE_ADMIN, 1, "first admin (bootstrap)", 0, 0, &tok, NULL, err);
	if (r < 0 || !tok)
		return r < 0 ? r : -EIO;
	_cleanup_free_ char *path = path_join(s->state_dir, "admin.token");
	size_t n = strlen(tok);
	tok = xrealloc(tok, n + 2);
	tok[n] = '\n';
	r = write_file_atomic(path, tok, n + 1, 0600);
	explicit_bzero(tok, n + 1);
	free(tok);
	if (r < 0)
		return kiln_err_set(err, r, "cannot write the first admin token to '%s': %s", path,
				    strerror(-r));
	log_info("created the first admin token path=%s mode=0600 hint=\"'kiln admin token' "
		 "mints another\"",
		 path);
	s->bootstrap_token_path = TAKE_PTR(path);
	return 0;
}

int access_init(struct server *s, struct kiln_err *err)
{
	struct proto_org *orgs = NULL;
	size_t n = 0;
	int r = store_orgs_list(s->store, &orgs, &n);
	if (r < 0)
		return kiln_err_set(err, r, "cannot read the orgs: %s", strerror(-r));
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < n; i++)
		org_add(s, &orgs[i]);
	pthread_mutex_unlock(&s->lock);
	proto_orgs_free(orgs, n);

	struct proto_token *v = NULL;
	r = store_tokens_list(s->store, -1, &v, &n);
	if (r < 0)
		return kiln_err_set(err, r, "cannot read the tokens: %s", strerror(-r));
	pthread_mutex_lock(&s->auth_lock);
	for (size_t i = 0; i < n; i++)
		table_add(s, &v[i]);
	pthread_mutex_unlock(&s->auth_lock);
	free(v); /* the table took the strings */
	return n == 0 ? bootstrap(s, err) : 0;
}

/* ---- authentication ------------------------------------------------------- */

static void reply_401(struct req *r, const char *msg)
{
	req_reply_error(r, MHD_HTTP_UNAUTHORIZED, "unauthorized", "%s", msg);
	MHD_add_response_header(r->response, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
				"Bearer realm=\"kiln\"");
}

static const char *bearer(struct req *r)
{
	const char *h = req_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
	if (!h)
		return NULL;
	while (*h == ' ')
		h++;
	if (strncasecmp(h, "Bearer ", 7) != 0)
		return "";
	h += 7;
	while (*h == ' ')
		h++;
	return h;
}

/* Writes last_used_at now and then (detached: it is bookkeeping). */
static void touch(struct server *s, struct stoken *t, uint64_t now)
{
	t->t.last_used_at = now;
	if (now - t->touched_ms < TOUCH_EVERY_MS)
		return;
	t->touched_ms = now;
	struct store_mut *m = mut_new(STORE_TOKEN_TOUCH);
	m->token_touch.id = t->t.id;
	m->token_touch.at = now;
	mut_submit_detached(s, m);
}

/* Looks a stored token up; fills r->who. 0, or answers 401. */
static int authenticate_stored(struct req *r, const char *tok, enum token_kind kind)
{
	struct server *s = r->srv;
	char hash[TOKEN_HASH_HEX];
	token_hash(tok, hash);
	pthread_mutex_lock(&s->auth_lock);
	struct stoken *t = table_find(s, hash);
	pthread_mutex_unlock(&s->auth_lock);
	if (!t) {
		/* Minted by another process (kiln admin token): ask the store. */
		struct proto_token pt = {0};
		if (store_token_find(s->store, hash, &pt) == 0) {
			pthread_mutex_lock(&s->auth_lock);
			table_add(s, &pt);
			pthread_mutex_unlock(&s->auth_lock);
		}
	}
	pthread_mutex_lock(&s->auth_lock);
	t = table_find(s, hash);
	uint64_t now = proto_now_ms();
	int rc = 0;
	char why[160] = "";
	if (!t || kind_of_role(t->t.role) != kind) {
		snprintf(why, sizeof(why), "unknown token");
	} else if (t->t.revoked_at) {
		snprintf(why, sizeof(why), "token %" PRId64 " has been revoked", t->t.id);
	} else if (t->t.expires_at && now >= t->t.expires_at) {
		char at[32];
		format_rfc3339(t->t.expires_at * NSEC_PER_MSEC, at);
		snprintf(why, sizeof(why), "token %" PRId64 " expired at %s", t->t.id, at);
	} else {
		r->who.token_id = t->t.id;
		r->who.org_id = t->t.org_id;
		r->who.role = t->t.role;
		snprintf(r->who.label, sizeof(r->who.label), "token %" PRId64 " (%.80s)", t->t.id,
			 t->t.name ? t->t.name : "");
		touch(s, t, now);
	}
	pthread_mutex_unlock(&s->auth_lock);
	if (why[0]) {
		reply_401(r, why);
		rc = -EACCES;
	}
	return rc;
}

static bool role_allows(enum proto_role role, unsigned flags)
{
	switch (role) {
	case ROLE_ADMIN: return true;
	case ROLE_OWNER: return flags & (ROUTE_ANY | ROUTE_READ | ROUTE_WRITE | ROUTE_OWNER);
	case ROLE_MEMBER: return flags & (ROUTE_ANY | ROUTE_READ | ROUTE_WRITE);
	case ROLE_VIEWER: return flags & (ROUTE_ANY | ROUTE_READ);
	case ROLE_AGENT: return flags & (ROUTE_ANY | ROUTE_AGENT);
	case ROLE_METRICS: return flags & (ROUTE_ANY | ROUTE_METRICS);
	default: return false;
	}
}

static const char *who_may(unsigned flags)
{
	if (flags & ROUTE_JOB)
		return "the job's own lease token";
	if (flags & ROUTE_READ)
		return "a viewer, member, owner or admin token";
	if (flags & ROUTE_WRITE)
		return "a member, owner or admin token";
	if (flags & ROUTE_OWNER)
		return "an owner or admin token";
	if (flags & ROUTE_AGENT)
		return "an agent or admin token";
	if (flags & ROUTE_METRICS)
		return "a metrics or admin token";
	return "an admin token";
}

int access_check(struct req *r)
{
	unsigned flags = r->route->flags;
	if (flags & (ROUTE_PUBLIC | ROUTE_WEBHOOK))
		return 0;
	const char *tok = bearer(r);
	if (!tok) {
		reply_401(r, "this endpoint needs a token: send 'Authorization: Bearer kiln_...' "
			     "(kiln reads it from --token, KILN_TOKEN or the config file)");
		return -EACCES;
	}
	enum token_kind kind;
	struct kiln_err err = {0};
	if (token_parse(tok, &kind, &err) < 0) {
		_cleanup_free_ char *msg = xasprintf("the bearer token is not valid: %s", err.msg);
		reply_401(r, msg);
		return -EACCES;
	}
	if (kind == TOKEN_JOB) {
		r->who.job = true;
		snprintf(r->who.job_token, sizeof(r->who.job_token), "%s", tok);
		snprintf(r->who.label, sizeof(r->who.label), "job token");
	} else if (authenticate_stored(r, tok, kind) < 0) {
		return -EACCES;
	}
	r->who.name = r->who.label;
	r->principal = &r->who;
	bool ok = r->who.job ? (flags & ROUTE_JOB) : role_allows(r->who.role, flags);
	/* People and scripts of an org share its API budget (limits.c). */
	if (ok && !r->who.job && (r->who.role == ROLE_OWNER || r->who.role == ROLE_MEMBER ||
				  r->who.role == ROLE_VIEWER || r->who.role == ROLE_METRICS) &&
	    limits_take(r, r->who.org_id, LIMIT_API, 1) < 0)
		return -EAGAIN;
	if (!ok) {
		req_reply_error(r, MHD_HTTP_FORBIDDEN, "forbidden",
				"%s (%s) may not call %s %s: it needs %s", r->who.label,
				r->who.job ? "a job token" : proto_role_to_string(r->who.role),
				r->method, r->route->pattern, who_may(flags));
		return -EPERM;
	}
	return 0;
}

/* ---- authorisation helpers ----------------------------------------------- */

bool access_org_visible(const struct req *r, int64_t org_id)
{
	if (!r->principal)
		return false;
	if (r->who.role == ROLE_ADMIN)
		return true;
	return !r->who.job && org_id == r->who.org_id;
}

int access_job_write(struct req *r, int64_t job_id, int64_t fence)
{
	if (!r->who.job)
		return r->who.role == ROLE_ADMIN ? 0 : -EPERM;
	char expect[TOKEN_LEN + 1];
	token_job(keys_job_key(r->srv), job_id, fence, expect);
	bool ok = strlen(r->who.job_token) == TOKEN_LEN &&
		  auth_equal(expect, r->who.job_token, TOKEN_LEN);
	explicit_bzero(expect, sizeof(expect));
	if (!ok) {
		req_reply_error(r, MHD_HTTP_FORBIDDEN, "forbidden",
				"this job token is not the one of job %" PRId64 "'s lease with fence "
				"%" PRId64 " (a job token is good for its own lease's writes only)",
				job_id, fence);
		return -EPERM;
	}
	snprintf(r->who.label, sizeof(r->who.label), "job %" PRId64 " (fence %" PRId64 ")",
		 job_id, fence);
	return 0;
}

bool access_agent_ok(const struct req *r, const struct sagent *a)
{
	if (!r->principal || r->who.job)
		return false;
	if (r->who.role == ROLE_ADMIN)
		return true;
	return r->who.role == ROLE_AGENT && a->org_id == r->who.org_id;
}

int access_target_org(struct req *r, const char *name, int64_t *ret)
{
	struct server *s = r->srv;
	if (!name || !*name) {
		if (r->who.org_id <= 0) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
					"this token belongs to no org: name one with ?org=NAME");
			return -EINVAL;
		}
		*ret = r->who.org_id;
		return 0;
	}
	pthread_mutex_lock(&s->lock);
	struct sorg *o = org_by_name(s, name);
	int64_t id = o ? o->id : 0;
	pthread_mutex_unlock(&s->lock);
	if (!id || !access_org_visible(r, id)) {
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "org '%.64s' not found", name);
		return -ENOENT;
	}
	*ret = id;
	return 0;
}

int access_job_visible(struct req *r, int64_t id)
{
	struct server *s = r->srv;
	pthread_mutex_lock(&s->lock);
	struct sjob *j = sched_job(s, id);
	int64_t org = j ? j->org_id : -1;
	pthread_mutex_unlock(&s->lock);
	if (org < 0) {
		struct proto_job pj;
		int rc = store_job_get(s->store, id, 0, &pj);
		if (rc < 0 && rc != -ENOENT) {
			req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
					"cannot read job %" PRId64 ": %s", id, strerror(-rc));
			return rc;
		}
		if (rc >= 0) {
			org = pj.org_id;
			proto_job_release(&pj);
		}
	}
	if (org < 0 || !access_org_visible(r, org)) {
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "job %" PRId64 " not found", id);
		return -ENOENT;
	}
	return 0;
}
