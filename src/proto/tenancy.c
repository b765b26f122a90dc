/*
 * proto/tenancy: roles, orgs, tokens and audit records, and their JSON.
 * A token's hash never appears in JSON: it is what the store keeps instead
 * of the token, and it stays on the server.
 */
#include "proto.h"

static const char *const role_names[ROLE_MAX] = {
	[ROLE_NONE] = "none",	  [ROLE_ADMIN] = "admin", [ROLE_OWNER] = "owner",
	[ROLE_MEMBER] = "member", [ROLE_VIEWER] = "viewer", [ROLE_AGENT] = "agent",
	[ROLE_METRICS] = "metrics",
};

const char *proto_role_to_string(enum proto_role r)
{
	if ((unsigned)r >= ROLE_MAX)
		return "unknown";
	return role_names[r];
}

int proto_role_from_string(const char *s, enum proto_role *ret)
{
	for (int i = ROLE_ADMIN; i < ROLE_MAX; i++)
		if (streq(s, role_names[i])) {
			*ret = (enum proto_role)i;
			return 0;
		}
	return -EINVAL;
}

bool proto_org_name_valid(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > 63 || s[0] == '-')
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
			return false;
	return true;
}

/* ---- orgs ----------------------------------------------------------------- */

void proto_org_release(struct proto_org *o)
{
	if (!o)
		return;
	free(o->name);
	memset(o, 0, sizeof(*o));
}

void proto_orgs_free(struct proto_org *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		proto_org_release(&v[i]);
	free(v);
}

json_t *proto_org_to_json(const struct proto_org *o)
{
	json_t *j = json_pack("{s:I,s:s}", "id", (json_int_t)o->id, "name", o->name ? o->name : "");
	proto_set_time(j, "created_at", o->created_at);
	json_object_set_new(j, "max_running",
			    o->max_running ? json_integer(o->max_running) : json_null());
	return j;
}

/* ---- tokens --------------------------------------------------------------- */

void proto_token_release(struct proto_token *t)
{
	if (!t)
		return;
	free(t->name);
	free(t->org);
	memset(t, 0, sizeof(*t));
}

void proto_tokens_free(struct proto_token *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		proto_token_release(&v[i]);
	free(v);
}

json_t *proto_token_to_json(const struct proto_token *t)
{
	json_t *j = json_pack("{s:I,s:s,s:s}", "id", (json_int_t)t->id, "name",
			      t->name ? t->name : "", "role", proto_role_to_string(t->role));
	if (t->org)
		json_object_set_new(j, "org", json_string(t->org));
	else if (!t->org_id)
		json_object_set_new(j, "org", json_null());
	json_object_set_new(j, "created_by", t->created_by ? json_integer(t->created_by) : json_null());
	proto_set_time(j, "created_at", t->created_at);
	proto_set_time(j, "expires_at", t->expires_at);
	proto_set_time(j, "revoked_at", t->revoked_at);
	proto_set_time(j, "last_used_at", t->last_used_at);
	return j;
}

/* ---- audit ---------------------------------------------------------------- */

void proto_audit_release(struct proto_audit *a)
{
	if (!a)
		return;
	free(a->actor);
	free(a->action);
	free(a->target);
	free(a->result);
	free(a->source);
	memset(a, 0, sizeof(*a));
}

void proto_audits_free(struct proto_audit *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		proto_audit_release(&v[i]);
	free(v);
}

json_t *proto_audit_to_json(const struct proto_audit *a)
{
	json_t *j = json_pack("{s:I}", "seq", (json_int_t)a->seq);
	proto_set_time(j, "at", a->at);
	json_object_set_new(j, "org_id", a->org_id ? json_integer(a->org_id) : json_null());
	json_object_set_new(j, "token_id", a->token_id ? json_integer(a->token_id) : json_null());
	json_object_set_new(j, "actor", json_string(a->actor ? a->actor : ""));
	json_object_set_new(j, "action", json_string(a->action ? a->action : ""));
	json_object_set_new(j, "target", json_string(a->target ? a->target : ""));
	json_object_set_new(j, "result", json_string(a->result ? a->result : ""));
	json_object_set_new(j, "status", json_integer(a->status));
	json_object_set_new(j, "source", json_string(a->source ? a->source : ""));
	json_object_set_new(j, "hash", json_string(a->hash));
	return j;
}
