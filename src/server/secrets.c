/*
 * secrets: an org's secrets (docs/security.md, decision 0003).
 *
 *   GET    /v1/secrets[?org=NAME]          names, versions, times (viewer and up)
 *   PUT    /v1/secrets/{name}[?org=NAME]   the body is the value (owner and up)
 *   DELETE /v1/secrets/{name}[?org=NAME]   (owner and up)
 *
 * A value is sealed (XChaCha20-Poly1305) under its org's data key with
 * associated data binding (org, name, version) before it reaches the store,
 * and is never returned by the API. It leaves the server only in the answer
 * to a lease of a job of the same org whose spec names it (`secrets` in the
 * lease), for the agent to put in the job's environment and mask in its log.
 *
 * Versions come from one counter for the whole server (never reused), so a
 * sealed value bound to (org, name, version) cannot be replayed into another
 * row, nor an older value of the same secret into its current row.
 */
#include "server-internal.h"
#include "auth/auth.h"

#include <inttypes.h>
#include <sodium.h>

#define SECRET_MAX (48 * 1024) /* bytes of one value */
#define SECRET_NAME_MAX 128

/* [A-Z_][A-Z0-9_]*, as in job specs (an environment variable's name). */
static bool name_valid(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > SECRET_NAME_MAX || (s[0] >= '0' && s[0] <= '9'))
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_'))
			return false;
	return true;
}

static const char *name_param(struct req *r)
{
	const char *n = r->n_params ? r->params[0] : "";
	if (!name_valid(n)) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_name",
				"secret name '%.64s' is not valid: upper-case letters, digits and _, "
				"not starting with a digit, at most %d bytes (as in a job spec)",
				n, SECRET_NAME_MAX);
		return NULL;
	}
	return n;
}

int secrets_init(struct server *s, struct kiln_err *err)
{
	int64_t v = 0;
	int r = store_secret_max_version(s->store, &v);
	if (r < 0)
		return kiln_err_set(err, r, "cannot read the secrets: %s", strerror(-r));
	s->next_secret_version = v + 1;
	return 0;
}

/* Opens one sealed secret of org into ret (NUL-terminated). */
static int open_secret(struct server *s, int64_t org_id, const struct store_secret *sv,
		       struct buf *ret)
{
	uint8_t dek[32];
	int r = keys_org_dek(s, org_id, false, dek);
	if (r < 0)
		return r;
	char ad[32];
	keys_secret_ad_org(org_id, ad);
	r = auth_secret_open(dek, ad, sv->name, sv->version, sv->sealed, sv->len, ret);
	sodium_memzero(dek, sizeof(dek));
	return r;
}

/* ---- list ----------------------------------------------------------------- */

void h_secrets_list(struct req *r)
{
	int64_t org_id;
	if (access_target_org(r, req_query(r, "org"), &org_id) < 0)
		return;
	struct store_secret *v = NULL;
	size_t n = 0;
	int rc = store_secrets_list(r->srv->store, org_id, false, &v, &n);
	if (rc < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"cannot list secrets: %s", strerror(-rc));
		return;
	}
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++) {
		if (!name_valid(v[i].name))
			continue; /* kiln's own (webhook secrets) */
		json_t *o = json_pack("{s:s,s:I}", "name", v[i].name, "version",
				      (json_int_t)v[i].version);
		proto_set_time(o, "created_at", v[i].created_at);
		proto_set_time(o, "updated_at", v[i].updated_at);
		json_object_set_new(o, "updated_by",
				    v[i].updated_by ? json_integer(v[i].updated_by) : json_null());
		json_array_append_new(arr, o);
	}
	store_secrets_free(v, n);
	req_reply_json(r, MHD_HTTP_OK, json_pack("{s:o}", "secrets", arr));
}

/* ---- set ------------------------------------------------------------------ */

struct secret_ctx {
	char *name;
	struct buf sealed;
	int64_t version;
};

static void secret_ctx_free(void *p)
{
	struct secret_ctx *c = p;
	if (!c)
		return;
	free(c->name);
	buf_release(&c->sealed);
	free(c);
}

static void secret_set_done(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct secret_ctx *c = r->ctx;
	if (m->result < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"the secret could not be stored");
		return;
	}
	req_reply_json(r, MHD_HTTP_OK,
		       json_pack("{s:s,s:I}", "name", c->name, "version", (json_int_t)c->version));
}

/*
 * Seals value as (org, name, next version) into c; the org's data key is
 * made now if it has none. Also used for kiln's own secrets (webhooks).
 */
int secret_seal(struct server *s, int64_t org_id, const char *name, const void *value,
		size_t len, int64_t *ret_version, struct buf *out)
{
	uint8_t dek[32];
	int r = keys_org_dek(s, org_id, true, dek);
	if (r < 0)
		return r;
	pthread_mutex_lock(&s->lock);
	int64_t version = s->next_secret_version++;
	pthread_mutex_unlock(&s->lock);
	char ad[32];
	keys_secret_ad_org(org_id, ad);
	auth_secret_seal(dek, ad, name, version, value, len, out);
	sodium_memzero(dek, sizeof(dek));
	*ret_version = version;
	return 0;
}

void h_secret_put(struct req *r)
{
	const char *name = name_param(r);
	int64_t org_id;
	if (!name || access_target_org(r, req_query(r, "org"), &org_id) < 0)
		return;
	req_audit_org(r, org_id);
	req_audit_target(r, "secret %s", name);
	const char *v = r->body.data ? r->body.data : "";
	size_t len = r->body.len;
	if (len == 0 || len > SECRET_MAX || memchr(v, '\0', len) || !utf8_valid(v, len)) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_value",
				"secret '%s': the value (the request body) must be 1..%d bytes of "
				"UTF-8 text without NUL (it becomes an environment variable)",
				name, SECRET_MAX);
		return;
	}
	struct secret_ctx *c = xcalloc(1, sizeof(*c));
	c->name = xstrdup(name);
	r->ctx = c;
	r->ctx_free = secret_ctx_free;
	int rc = secret_seal(r->srv, org_id, name, v, len, &c->version, &c->sealed);
	/* The plaintext is not needed past this point. */
	sodium_memzero(r->body.data, r->body.len);
	if (rc < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"cannot seal the secret: %s", strerror(-rc));
		return;
	}
	r->mut = (struct store_mut){.kind = STORE_SECRET_PUT,
				    .secret = {.org_id = org_id, .name = c->name,
					       .version = c->version, .sealed = c->sealed.data,
					       .len = c->sealed.len, .by = r->who.token_id,
					       .now = proto_now_ms()},
				    .done = secret_set_done,
				    .userdata = r};
	req_submit(r, &r->mut, 200);
}

/* ---- delete --------------------------------------------------------------- */

static void secret_deleted(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct secret_ctx *c = r->ctx;
	if (m->result == -ENOENT) {
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "secret '%s' not found", c->name);
		return;
	}
	req_reply_json(r, MHD_HTTP_OK, json_pack("{s:s,s:b}", "name", c->name, "deleted", 1));
}

void h_secret_delete(struct req *r)
{
	const char *name = name_param(r);
	int64_t org_id;
	if (!name || access_target_org(r, req_query(r, "org"), &org_id) < 0)
		return;
	struct secret_ctx *c = xcalloc(1, sizeof(*c));
	c->name = xstrdup(name);
	r->ctx = c;
	r->ctx_free = secret_ctx_free;
	req_audit_org(r, org_id);
	req_audit_target(r, "secret %s", name);
	r->mut = (struct store_mut){.kind = STORE_SECRET_DELETE,
				    .secret = {.org_id = org_id, .name = c->name},
				    .done = secret_deleted,
				    .userdata = r};
	req_submit(r, &r->mut, 200);
}

/* ---- kiln's own secrets (webhooks) ---------------------------------------- */

int secret_get_plain(struct server *s, int64_t org_id, const char *name, struct buf *ret)
{
	struct store_secret sv = {0};
	int r = store_secret_get(s->store, org_id, name, &sv);
	if (r >= 0)
		r = open_secret(s, org_id, &sv, ret);
	free(sv.name);
	if (sv.sealed)
		sodium_memzero(sv.sealed, sv.len);
	free(sv.sealed);
	return r;
}

/* ---- submit and lease ----------------------------------------------------- */

int secrets_check_names(struct req *r, int64_t org_id, char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct store_secret sv = {0};
		int rc = store_secret_get(r->srv->store, org_id, names[i], &sv);
		free(sv.name);
		free(sv.sealed);
		if (rc == -ENOENT) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "unknown_secret",
					"the spec names secret '%s', which this org does not have "
					"(set it with: kiln secret set %s)",
					names[i], names[i]);
			return -ENOENT;
		}
		if (rc < 0) {
			req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
					"cannot read secret '%s': %s", names[i], strerror(-rc));
			return rc;
		}
	}
	return 0;
}

void secrets_for_lease(struct server *s, int64_t job_id, int64_t org_id, const char *spec,
		       struct buf *out)
{
	/* The normalised spec always has "secrets": a list, usually empty. */
	if (!spec || strstr(spec, "\"secrets\":[]"))
		return;
	json_error_t jerr;
	json_t *doc = json_loads(spec, 0, &jerr);
	json_t *names = json_object_get(doc, "secrets");
	size_t i;
	json_t *v;
	bool first = true;
	json_array_foreach(names, i, v) {
		const char *name = json_string_value(v);
		if (!name)
			continue;
		struct buf val = BUF_INIT;
		int r = secret_get_plain(s, org_id, name, &val);
		if (r < 0) {
			log_warn("a secret the job names is not given to it job=%" PRId64
				 " secret=%s error=\"%s\"",
				 job_id, name, r == -ENOENT ? "not set" : strerror(-r));
			buf_release(&val);
			continue;
		}
		buf_puts(out, first ? ",\"secrets\":{" : ",");
		first = false;
		buf_put_json_string(out, name, strlen(name));
		buf_putc(out, ':');
		buf_put_json_string(out, val.data ? val.data : "", val.len);
		sodium_memzero(val.data, val.len);
		buf_release(&val);
	}
	if (!first)
		buf_putc(out, '}');
	json_decref(doc);
}
