/*
 * store-sqlite-tenancy: orgs, tokens, wrapped data keys, sealed secrets, the
 * audit log and webhook deliveries in SQLite (schema version 3).
 *
 * Invariants kept by the schema itself:
 *  - tokens(hash) is unique and only hashes are stored;
 *  - the audit table is append-only: triggers refuse UPDATE and DELETE, and
 *    each record carries the SHA-256 of (previous record's hash, this
 *    record), so a record altered or removed behind the store's back breaks
 *    the chain (store_audit_verify);
 *  - webhook_events(org, GitHub job, run attempt, action) is unique forever
 *    and webhook_deliveries(delivery) for as long as the rows are kept, so a
 *    redelivery creates nothing.
 *
 * Most statements are prepared per call: these tables are written at human
 * rates. The audit chain's two statements are the exception: every mutating
 * API call (each job submitted, each job completed) appends a record, so they
 * are prepared once on the writer connection and kept (struct sq_tenancy).
 */
#include "store-sqlite.h"

#include <inttypes.h>
#include <sodium.h>

/* ---- schema --------------------------------------------------------------- */

static const char migration_v3[] =
	"CREATE TABLE orgs ("
	" id INTEGER PRIMARY KEY AUTOINCREMENT,"
	" name TEXT NOT NULL UNIQUE,"
	" created_at INTEGER NOT NULL,"
	" max_running INTEGER NOT NULL DEFAULT 0);"
	"INSERT INTO orgs (id, name, created_at) VALUES "
	" (1, 'default', CAST(strftime('%s', 'now') AS INTEGER) * 1000);"
	"CREATE TABLE tokens ("
	" id INTEGER PRIMARY KEY AUTOINCREMENT,"
	" hash TEXT NOT NULL UNIQUE,"
	" role INTEGER NOT NULL,"
	" org_id INTEGER NOT NULL,"
	" name TEXT NOT NULL,"
	" created_by INTEGER NOT NULL DEFAULT 0,"
	" created_at INTEGER NOT NULL,"
	" expires_at INTEGER NOT NULL DEFAULT 0,"
	" revoked_at INTEGER NOT NULL DEFAULT 0,"
	" last_used_at INTEGER NOT NULL DEFAULT 0);"
	"CREATE INDEX tokens_by_org ON tokens (org_id, id);"
	"CREATE TABLE org_keys ("
	" org_id INTEGER PRIMARY KEY,"
	" key_id TEXT NOT NULL,"
	" wrapped BLOB NOT NULL,"
	" created_at INTEGER NOT NULL,"
	" rotated_at INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE secrets ("
	" org_id INTEGER NOT NULL,"
	" name TEXT NOT NULL,"
	" version INTEGER NOT NULL,"
	" sealed BLOB NOT NULL,"
	" created_at INTEGER NOT NULL,"
	" updated_at INTEGER NOT NULL,"
	" updated_by INTEGER NOT NULL DEFAULT 0,"
	" PRIMARY KEY (org_id, name)) WITHOUT ROWID;"
	"CREATE TABLE audit ("
	" seq INTEGER PRIMARY KEY,"
	" at INTEGER NOT NULL,"
	" org_id INTEGER NOT NULL,"
	" token_id INTEGER NOT NULL,"
	" actor TEXT NOT NULL,"
	" action TEXT NOT NULL,"
	" target TEXT NOT NULL,"
	" result TEXT NOT NULL,"
	" status INTEGER NOT NULL,"
	" source TEXT NOT NULL,"
	" prev TEXT NOT NULL,"
	" hash TEXT NOT NULL);"
	"CREATE INDEX audit_by_org ON audit (org_id, seq);"
	"CREATE INDEX audit_by_time ON audit (at);"
	"CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit"
	" BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;"
	"CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit"
	" BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;"
	"CREATE TABLE webhook_deliveries ("
	" delivery TEXT PRIMARY KEY,"
	" received_at INTEGER NOT NULL,"
	" org_id INTEGER NOT NULL,"
	" event TEXT NOT NULL,"
	" action TEXT NOT NULL,"
	" gh_job_id INTEGER NOT NULL,"
	" run_attempt INTEGER NOT NULL,"
	" outcome TEXT NOT NULL,"
	" job_id INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
	"CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (received_at);"
	"CREATE TABLE webhook_events ("
	" org_id INTEGER NOT NULL,"
	" gh_job_id INTEGER NOT NULL,"
	" run_attempt INTEGER NOT NULL,"
	" action TEXT NOT NULL,"
	" delivery TEXT NOT NULL,"
	" received_at INTEGER NOT NULL,"
	" job_id INTEGER NOT NULL DEFAULT 0,"
	" PRIMARY KEY (org_id, gh_job_id, run_attempt, action)) WITHOUT ROWID;"
	"ALTER TABLE jobs ADD COLUMN org_id INTEGER NOT NULL DEFAULT 1;"
	/* Agent names are unique per pool, not server-wide (a name in one org's
	 * pool says nothing to another org): the table is rebuilt. */
	"CREATE TABLE agents_v2 ("
	" id INTEGER PRIMARY KEY,"
	" name TEXT NOT NULL,"
	" labels TEXT NOT NULL,"
	" slots INTEGER NOT NULL,"
	" cpus REAL NOT NULL,"
	" memory INTEGER NOT NULL,"
	" gpus INTEGER NOT NULL,"
	" draining INTEGER NOT NULL DEFAULT 0,"
	" registered_at INTEGER NOT NULL,"
	" org_id INTEGER NOT NULL DEFAULT 0,"
	" UNIQUE (org_id, name));"
	"INSERT INTO agents_v2 (id, name, labels, slots, cpus, memory, gpus, draining, "
	" registered_at) SELECT id, name, labels, slots, cpus, memory, gpus, draining, "
	" registered_at FROM agents;"
	"DROP TABLE agents;"
	"ALTER TABLE agents_v2 RENAME TO agents;"
	"CREATE INDEX jobs_by_org ON jobs (org_id, id);";

const char *sq_tenancy_migration(int v)
{
	switch (v) {
	case 3: return migration_v3;
	default: return NULL;
	}
}

/* ---- helpers -------------------------------------------------------------- */

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **ret)
{
	int rc = sqlite3_prepare_v2(db, sql, -1, ret, NULL);
	if (rc != SQLITE_OK) {
		/* The SQL is ours: a failure is a bug or a broken database. */
		log_error("sqlite prepare failed sql=\"%s\" error=\"%s\"", sql, sqlite3_errmsg(db));
		return sq_errno(rc) < 0 ? sq_errno(rc) : -EIO;
	}
	return 0;
}

static void bind_str(sqlite3_stmt *st, int i, const char *s)
{
	sqlite3_bind_text(st, i, s ? s : "", -1, SQLITE_STATIC);
}

/* Steps to the end; returns 0, or -errno (-EEXIST for a constraint). */
static int step_done(sqlite3_stmt *st)
{
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		;
	return rc == SQLITE_DONE ? 0 : sq_errno(rc);
}

/* Runs one statement with int64 parameters only; returns changes or -errno. */
static int exec_ints(sqlite3 *db, const char *sql, int n, const int64_t *v)
{
	sqlite3_stmt *st = NULL;
	int r = prepare(db, sql, &st);
	if (r < 0)
		return r;
	for (int i = 0; i < n; i++)
		sqlite3_bind_int64(st, i + 1, v[i]);
	r = step_done(st);
	sqlite3_finalize(st);
	return r < 0 ? r : sqlite3_changes(db);
}

static char *col_dup(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	return xstrdup(t ? (const char *)t : "");
}

static void col_hex(sqlite3_stmt *st, int i, char *out, size_t size)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	snprintf(out, size, "%s", t ? (const char *)t : "");
}

/* ---- the writer ----------------------------------------------------------- */

enum { AST_HEAD, AST_INSERT, AST_MAX };

static const char *const audit_sql[AST_MAX] = {
	[AST_HEAD] = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
	[AST_INSERT] = "INSERT INTO audit (seq, at, org_id, token_id, actor, action, target, "
		       "result, status, source, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
		       "?8, ?9, ?10, ?11, ?12)",
};

struct sq_tenancy {
	int64_t audit_seq;   /* last record written (read afresh in each transaction) */
	char audit_hash[65]; /* its hash; 64 '0' before the first */
	bool head_valid;     /* audit_seq/hash read or written in this transaction */
	/* The audit statements, prepared on the writer connection on first use,
	 * reset after each use, finalized by sq_tenancy_close. */
	sqlite3 *db;
	sqlite3_stmt *st[AST_MAX];
};

/* The audit statement id on db, prepared once; NULL (logged) on failure. */
static sqlite3_stmt *audit_stmt(struct sq_tenancy *t, sqlite3 *db, int id)
{
	if (t->db != db) {
		/* Not the connection they were prepared on (not expected). */
		for (int i = 0; i < AST_MAX; i++) {
			sqlite3_finalize(t->st[i]);
			t->st[i] = NULL;
		}
		t->db = db;
	}
	if (!t->st[id]) {
		int rc = sqlite3_prepare_v3(db, audit_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
					    &t->st[id], NULL);
		if (rc != SQLITE_OK) {
			log_error("sqlite prepare failed sql=\"%s\" error=\"%s\"", audit_sql[id],
				  sqlite3_errmsg(db));
			t->st[id] = NULL;
		}
	}
	return t->st[id];
}

/* Reads the last record's seq and hash into t. */
static int audit_head(sqlite3 *db, struct sq_tenancy *t)
{
	t->audit_seq = 0;
	memset(t->audit_hash, '0', 64);
	t->audit_hash[64] = '\0';
	sqlite3_stmt *st = audit_stmt(t, db, AST_HEAD);
	if (!st)
		return -EIO;
	int r = 0;
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		t->audit_seq = sqlite3_column_int64(st, 0);
		col_hex(st, 1, t->audit_hash, sizeof(t->audit_hash));
	} else if (rc != SQLITE_DONE) {
		r = sq_errno(rc);
	}
	sqlite3_reset(st);
	return r;
}

int sq_tenancy_open(sqlite3 *writer, struct sq_tenancy **ret, struct kiln_err *err)
{
	if (sodium_init() < 0)
		return kiln_err_set(err, -EIO, "libsodium failed to initialise");
	struct sq_tenancy *t = xcalloc(1, sizeof(*t));
	int r = audit_head(writer, t);
	if (r < 0) {
		free(t);
		return kiln_err_set(err, r, "cannot read the audit log's head: %s", strerror(-r));
	}
	*ret = t;
	return 0;
}

void sq_tenancy_begin(struct sq_tenancy *t) { t->head_valid = false; }

void sq_tenancy_close(struct sq_tenancy *t)
{
	if (!t)
		return;
	for (int i = 0; i < AST_MAX; i++)
		sqlite3_finalize(t->st[i]);
	free(t);
}

static int org_create(sqlite3 *db, struct store_mut *m)
{
	sqlite3_stmt *st = NULL;
	int r = prepare(db, "INSERT INTO orgs (name, created_at) VALUES (?1, ?2) RETURNING id", &st);
	if (r < 0)
		return r;
	bind_str(st, 1, m->org.name);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)m->org.now);
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		m->org.ret_id = sqlite3_column_int64(st, 0);
		r = step_done(st);
	} else {
		r = sq_errno(rc);
	}
	sqlite3_finalize(st);
	return r;
}

static int token_create(sqlite3 *db, struct store_mut *m)
{
	const struct proto_token *t = m->token.t;
	sqlite3_stmt *st = NULL;
	int r = prepare(db,
			"INSERT INTO tokens (hash, role, org_id, name, created_by, created_at, "
			"expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
			&st);
	if (r < 0)
		return r;
	bind_str(st, 1, t->hash);
	sqlite3_bind_int(st, 2, (int)t->role);
	sqlite3_bind_int64(st, 3, t->org_id);
	bind_str(st, 4, t->name);
	sqlite3_bind_int64(st, 5, t->created_by);
	sqlite3_bind_int64(st, 6, (sqlite3_int64)t->created_at);
	sqlite3_bind_int64(st, 7, (sqlite3_int64)t->expires_at);
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		m->token.ret_id = sqlite3_column_int64(st, 0);
		r = step_done(st);
	} else {
		r = sq_errno(rc);
	}
	sqlite3_finalize(st);
	return r;
}

static int token_revoke(sqlite3 *db, struct store_mut *m)
{
	int64_t v[2] = {m->token_revoke.id, (int64_t)m->token_revoke.now};
	int n = exec_ints(db, "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at = 0",
			  2, v);
	if (n != 0)
		return n < 0 ? n : 0;
	/* Nothing changed: already revoked, or no such token. */
	sqlite3_stmt *st = NULL;
	int r = prepare(db, "SELECT 1 FROM tokens WHERE id = ?1", &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, m->token_revoke.id);
	int rc = sqlite3_step(st);
	r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? -ENOENT : sq_errno(rc);
	sqlite3_finalize(st);
	return r;
}

/* The master key id an org's data key is under: 1 and *ret, 0 none, < 0 error. */
static int key_id_of(sqlite3 *db, int64_t org_id, char ret[17])
{
	sqlite3_stmt *st = NULL;
	int r = prepare(db, "SELECT key_id FROM org_keys WHERE org_id = ?1", &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, org_id);
	int rc = sqlite3_step(st);
	r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : sq_errno(rc);
	if (r == 1)
		col_hex(st, 0, ret, 17);
	sqlite3_finalize(st);
	return r;
}

/*
 * The writer uses no savepoints (store-sqlite.c): every row's condition is
 * checked before the first write, so a refused batch of keys writes nothing.
 */
static int keys_put(sqlite3 *db, struct store_mut *m)
{
	for (size_t i = 0; i < m->keys.n; i++) {
		const struct store_key *k = &m->keys.v[i];
		char cur[17] = "";
		int r = key_id_of(db, k->org_id, cur);
		if (r < 0)
			return r;
		if (k->expect_key_id[0] ? (r == 0 || !streq(cur, k->expect_key_id)) : r == 1)
			return -ESTALE;
	}
	for (size_t i = 0; i < m->keys.n; i++) {
		const struct store_key *k = &m->keys.v[i];
		sqlite3_stmt *st = NULL;
		bool insert = !k->expect_key_id[0];
		int r = prepare(db,
				insert ? "INSERT INTO org_keys (org_id, key_id, wrapped, created_at) "
					 "VALUES (?1, ?2, ?3, ?4)"
				       : "UPDATE org_keys SET key_id = ?2, wrapped = ?3, rotated_at = ?4 "
					 "WHERE org_id = ?1 AND key_id = ?5",
				&st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, k->org_id);
		bind_str(st, 2, k->key_id);
		sqlite3_bind_blob(st, 3, k->wrapped, (int)k->len, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, (sqlite3_int64)k->now);
		if (!insert)
			bind_str(st, 5, k->expect_key_id);
		r = step_done(st);
		sqlite3_finalize(st);
		/* Checked above: a failure here is an I/O error or a bug (fatal). */
		if (r < 0)
			return r == -EEXIST ? -EIO : r;
		if (!insert && sqlite3_changes(db) == 0)
			return -EIO;
	}
	return 0;
}

static int secret_put(sqlite3 *db, struct store_mut *m)
{
	sqlite3_stmt *st = NULL;
	int r = prepare(db,
			"INSERT INTO secrets (org_id, name, version, sealed, created_at, updated_at, "
			"updated_by) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6) ON CONFLICT (org_id, name) "
			"DO UPDATE SET version = excluded.version, sealed = excluded.sealed, "
			"updated_at = excluded.updated_at, updated_by = excluded.updated_by",
			&st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, m->secret.org_id);
	bind_str(st, 2, m->secret.name);
	sqlite3_bind_int64(st, 3, m->secret.version);
	sqlite3_bind_blob(st, 4, m->secret.sealed, (int)m->secret.len, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)m->secret.now);
	sqlite3_bind_int64(st, 6, m->secret.by);
	r = step_done(st);
	sqlite3_finalize(st);
	return r;
}

static int secret_delete(sqlite3 *db, struct store_mut *m)
{
	sqlite3_stmt *st = NULL;
	int r = prepare(db, "DELETE FROM secrets WHERE org_id = ?1 AND name = ?2", &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, m->secret.org_id);
	bind_str(st, 2, m->secret.name);
	r = step_done(st);
	sqlite3_finalize(st);
	if (r < 0)
		return r;
	return sqlite3_changes(db) ? 0 : -ENOENT;
}

static int count_of(sqlite3 *db, const char *sql, const struct store_mut *m)
{
	sqlite3_stmt *st = NULL;
	int r = prepare(db, sql, &st);
	if (r < 0)
		return r;
	bind_str(st, 1, m->webhook.delivery);
	sqlite3_bind_int64(st, 2, m->webhook.org_id);
	sqlite3_bind_int64(st, 3, m->webhook.gh_job_id);
	sqlite3_bind_int64(st, 4, m->webhook.run_attempt);
	bind_str(st, 5, m->webhook.action);
	int rc = sqlite3_step(st);
	r = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : sq_errno(rc);
	sqlite3_finalize(st);
	return r;
}

static int webhook_delivery(sqlite3 *db, struct store_mut *m)
{
	/* Both replay keys first: a replay writes nothing. */
	int n = count_of(db,
			 "SELECT (SELECT count(*) FROM webhook_deliveries WHERE delivery = ?1) + "
			 "(SELECT count(*) FROM webhook_events WHERE org_id = ?2 AND gh_job_id = ?3 "
			 "AND run_attempt = ?4 AND action = ?5 AND ?3 != 0)",
			 m);
	if (n != 0)
		return n < 0 ? n : -EEXIST;
	sqlite3_stmt *st = NULL;
	int64_t job_id = m->webhook.job ? m->webhook.job->id : 0;
	int r = prepare(db,
			"INSERT INTO webhook_deliveries (delivery, received_at, org_id, event, action, "
			"gh_job_id, run_attempt, outcome, job_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
			"?8, ?9)",
			&st);
	if (r < 0)
		return r;
	bind_str(st, 1, m->webhook.delivery);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)m->webhook.now);
	sqlite3_bind_int64(st, 3, m->webhook.org_id);
	bind_str(st, 4, m->webhook.event);
	bind_str(st, 5, m->webhook.action);
	sqlite3_bind_int64(st, 6, m->webhook.gh_job_id);
	sqlite3_bind_int64(st, 7, m->webhook.run_attempt);
	bind_str(st, 8, m->webhook.outcome);
	sqlite3_bind_int64(st, 9, job_id);
	r = step_done(st);
	sqlite3_finalize(st);
	if (r < 0 || !m->webhook.gh_job_id)
		return r;
	r = prepare(db,
		    "INSERT INTO webhook_events (org_id, gh_job_id, run_attempt, action, delivery, "
		    "received_at, job_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
		    &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, m->webhook.org_id);
	sqlite3_bind_int64(st, 2, m->webhook.gh_job_id);
	sqlite3_bind_int64(st, 3, m->webhook.run_attempt);
	bind_str(st, 4, m->webhook.action);
	bind_str(st, 5, m->webhook.delivery);
	sqlite3_bind_int64(st, 6, (sqlite3_int64)m->webhook.now);
	sqlite3_bind_int64(st, 7, job_id);
	r = step_done(st);
	sqlite3_finalize(st);
	return r;
}

int sq_tenancy_apply(struct sq_tenancy *t, sqlite3 *db, struct store_mut *m)
{
	(void)t;
	switch (m->kind) {
	case STORE_ORG_CREATE: return org_create(db, m);
	case STORE_TOKEN_CREATE: return token_create(db, m);
	case STORE_TOKEN_REVOKE: return token_revoke(db, m);
	case STORE_TOKEN_TOUCH: {
		int64_t v[2] = {m->token_touch.id, (int64_t)m->token_touch.at};
		int n = exec_ints(db,
				  "UPDATE tokens SET last_used_at = ?2 WHERE id = ?1 AND "
				  "last_used_at < ?2",
				  2, v);
		return n < 0 ? n : 0;
	}
	case STORE_KEYS_PUT: return keys_put(db, m);
	case STORE_SECRET_PUT: return secret_put(db, m);
	case STORE_SECRET_DELETE: return secret_delete(db, m);
	case STORE_AUDIT: return 0;
	case STORE_WEBHOOK_DELIVERY: return webhook_delivery(db, m);
	case STORE_ORG_LIMITS: {
		int64_t v[2] = {m->org_limits.id, m->org_limits.max_running};
		int n = exec_ints(db, "UPDATE orgs SET max_running = ?2 WHERE id = ?1", 2, v);
		return n < 0 ? n : n ? 0 : -ENOENT;
	}
	case STORE_WEBHOOK_PRUNE: {
		int64_t v[1] = {(int64_t)m->webhook_prune.before};
		int n = exec_ints(db, "DELETE FROM webhook_deliveries WHERE received_at < ?1", 1, v);
		return n < 0 ? n : 0;
	}
	default: return -EINVAL;
	}
}

/* ---- the audit chain ------------------------------------------------------ */

static const char *result_of_status(int status)
{
	if (status >= 200 && status < 300)
		return "ok";
	if (status == 401 || status == 403)
		return "denied";
	if (status == 404)
		return "not_found";
	if (status == 409)
		return "conflict";
	if (status == 429)
		return "limited";
	if (status >= 500)
		return "error";
	return "rejected";
}

/* The fields the chain hashes (views into a proto_audit or a store_audit). */
struct audit_view {
	int64_t seq;
	uint64_t at;
	int64_t org_id, token_id;
	const char *actor, *action, *target, *result, *source;
	int status;
	const char *prev;
};

/* SHA-256 hex over the previous hash and the record's fields, length-prefixed. */
static void audit_hash(const struct audit_view *a, char out[65])
{
	struct buf b = BUF_INIT;
	buf_printf(&b, "kiln-audit-v1|%" PRId64 "|%" PRIu64 "|%" PRId64 "|%" PRId64, a->seq, a->at,
		   a->org_id, a->token_id);
	const char *fields[] = {a->actor, a->action, a->target, a->result, a->source};
	for (size_t i = 0; i < ARRAY_SIZE(fields); i++)
		buf_printf(&b, "|%zu:%s", strlen(fields[i]), fields[i]);
	buf_printf(&b, "|%d|%s", a->status, a->prev);
	unsigned char h[crypto_hash_sha256_BYTES];
	crypto_hash_sha256(h, (const unsigned char *)b.data, b.len);
	sodium_bin2hex(out, 65, h, sizeof(h));
	buf_release(&b);
}

int sq_tenancy_audit(struct sq_tenancy *t, sqlite3 *db, struct store_mut *m, int result)
{
	struct store_audit *in = m->audit;
	int status = in->status;
	if (result == -ENOENT)
		status = 404;
	else if (result < 0)
		status = 409;
	/* The head is read inside the write transaction, not cached across
	 * transactions: another process (kiln admin token) may have appended
	 * since. Within one, the write lock keeps everyone else out. */
	int r;
	if (!t->head_valid) {
		r = audit_head(db, t);
		if (r < 0)
			return r;
		t->head_valid = true;
	}
	struct audit_view a = {
		.seq = t->audit_seq + 1,
		.at = in->now,
		.org_id = in->org_id,
		.token_id = in->token_id,
		.actor = in->actor ? in->actor : "",
		.action = in->action ? in->action : "",
		.target = in->target ? in->target : "",
		.result = result_of_status(status),
		.status = status,
		.source = in->source ? in->source : "",
		.prev = t->audit_hash,
	};
	char hash[65];
	audit_hash(&a, hash);
	sqlite3_stmt *st = audit_stmt(t, db, AST_INSERT);
	if (!st)
		return -EIO;
	sqlite3_bind_int64(st, 1, a.seq);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)a.at);
	sqlite3_bind_int64(st, 3, a.org_id);
	sqlite3_bind_int64(st, 4, a.token_id);
	bind_str(st, 5, a.actor);
	bind_str(st, 6, a.action);
	bind_str(st, 7, a.target);
	bind_str(st, 8, a.result);
	sqlite3_bind_int(st, 9, a.status);
	bind_str(st, 10, a.source);
	bind_str(st, 11, a.prev);
	bind_str(st, 12, hash);
	r = step_done(st);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (r < 0) {
		t->head_valid = false;
		return r == -EEXIST ? -EIO : r; /* a taken seq: the chain is broken */
	}
	t->audit_seq = a.seq;
	memcpy(t->audit_hash, hash, sizeof(t->audit_hash));
	in->ret_seq = a.seq;
	return 0;
}

/* ---- reads ---------------------------------------------------------------- */

/* Runs a read on a reader connection: prepare, bind (callback), rows (callback). */
struct query {
	const char *sql;
	void (*bind)(sqlite3_stmt *st, const void *ud);
	void (*row)(sqlite3_stmt *st, void *ud);
	const void *bind_ud;
	void *row_ud;
};

static int run_query(struct store *s, const struct query *q)
{
	sqlite3 *db = sq_reader_get(s);
	sqlite3_stmt *st = NULL;
	int r = prepare(db, q->sql, &st);
	if (r >= 0) {
		if (q->bind)
			q->bind(st, q->bind_ud);
		int rc;
		while ((rc = sqlite3_step(st)) == SQLITE_ROW)
			q->row(st, q->row_ud);
		if (rc != SQLITE_DONE)
			r = sq_errno(rc);
		sqlite3_finalize(st);
	}
	sq_reader_put(s, db);
	return r;
}

struct vec {
	void *v;
	size_t n, cap, size;
};

static void *vec_push(struct vec *x)
{
	x->v = xgrow(x->v, &x->cap, x->n + 1, x->size);
	void *p = (char *)x->v + x->n++ * x->size;
	memset(p, 0, x->size);
	return p;
}

static void org_row(sqlite3_stmt *st, void *ud)
{
	struct proto_org *o = vec_push(ud);
	o->id = sqlite3_column_int64(st, 0);
	o->name = col_dup(st, 1);
	o->created_at = (uint64_t)sqlite3_column_int64(st, 2);
	o->max_running = sqlite3_column_int64(st, 3);
}

int sq_orgs_list(struct store *s, struct proto_org **ret, size_t *ret_n)
{
	struct vec x = {.size = sizeof(struct proto_org)};
	struct query q = {.sql = "SELECT id, name, created_at, max_running FROM orgs ORDER BY id",
			  .row = org_row, .row_ud = &x};
	int r = run_query(s, &q);
	if (r < 0) {
		proto_orgs_free(x.v, x.n);
		return r;
	}
	*ret = x.v;
	*ret_n = x.n;
	return 0;
}

#define TOKEN_COLS \
	"id, hash, role, org_id, name, created_by, created_at, expires_at, revoked_at, last_used_at"

static void token_fill(sqlite3_stmt *st, struct proto_token *t)
{
	t->id = sqlite3_column_int64(st, 0);
	col_hex(st, 1, t->hash, sizeof(t->hash));
	t->role = (enum proto_role)sqlite3_column_int(st, 2);
	t->org_id = sqlite3_column_int64(st, 3);
	t->name = col_dup(st, 4);
	t->created_by = sqlite3_column_int64(st, 5);
	t->created_at = (uint64_t)sqlite3_column_int64(st, 6);
	t->expires_at = (uint64_t)sqlite3_column_int64(st, 7);
	t->revoked_at = (uint64_t)sqlite3_column_int64(st, 8);
	t->last_used_at = (uint64_t)sqlite3_column_int64(st, 9);
}

static void token_row(sqlite3_stmt *st, void *ud) { token_fill(st, vec_push(ud)); }

static void bind_int1(sqlite3_stmt *st, const void *ud)
{
	sqlite3_bind_int64(st, 1, *(const int64_t *)ud);
}

int sq_tokens_list(struct store *s, int64_t org_id, struct proto_token **ret, size_t *ret_n)
{
	struct vec x = {.size = sizeof(struct proto_token)};
	struct query q = {.sql = org_id < 0 ? "SELECT " TOKEN_COLS " FROM tokens ORDER BY id"
					    : "SELECT " TOKEN_COLS " FROM tokens WHERE org_id = ?1 "
					      "ORDER BY id",
			  .bind = org_id < 0 ? NULL : bind_int1, .bind_ud = &org_id,
			  .row = token_row, .row_ud = &x};
	int r = run_query(s, &q);
	if (r < 0) {
		proto_tokens_free(x.v, x.n);
		return r;
	}
	*ret = x.v;
	*ret_n = x.n;
	return 0;
}

static void bind_str1(sqlite3_stmt *st, const void *ud) { bind_str(st, 1, ud); }

int sq_token_find(struct store *s, const char *hash, struct proto_token *ret)
{
	struct vec x = {.size = sizeof(struct proto_token)};
	struct query q = {.sql = "SELECT " TOKEN_COLS " FROM tokens WHERE hash = ?1",
			  .bind = bind_str1, .bind_ud = hash, .row = token_row, .row_ud = &x};
	int r = run_query(s, &q);
	if (r >= 0 && x.n == 0)
		r = -ENOENT;
	if (r < 0) {
		proto_tokens_free(x.v, x.n);
		return r;
	}
	*ret = *(struct proto_token *)x.v;
	free(x.v);
	return 0;
}

static void key_row(sqlite3_stmt *st, void *ud)
{
	struct store_key *k = vec_push(ud);
	k->org_id = sqlite3_column_int64(st, 0);
	col_hex(st, 1, k->key_id, sizeof(k->key_id));
	size_t n = (size_t)sqlite3_column_bytes(st, 2);
	void *w = xmalloc(n ? n : 1);
	if (n)
		memcpy(w, sqlite3_column_blob(st, 2), n);
	k->wrapped = w;
	k->len = n;
}

void store_keys_free(struct store_key *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i].wrapped);
	free(v);
}

int sq_keys_list(struct store *s, struct store_key **ret, size_t *ret_n)
{
	struct vec x = {.size = sizeof(struct store_key)};
	struct query q = {.sql = "SELECT org_id, key_id, wrapped FROM org_keys ORDER BY org_id",
			  .row = key_row, .row_ud = &x};
	int r = run_query(s, &q);
	if (r < 0) {
		store_keys_free(x.v, x.n);
		return r;
	}
	*ret = x.v;
	*ret_n = x.n;
	return 0;
}

void store_secrets_free(struct store_secret *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++) {
		free(v[i].name);
		if (v[i].sealed)
			sodium_memzero(v[i].sealed, v[i].len);
		free(v[i].sealed);
	}
	free(v);
}

struct secret_rows {
	struct vec x;
	bool with_values;
};

static void secret_row(sqlite3_stmt *st, void *ud)
{
	struct secret_rows *sr = ud;
	struct store_secret *v = vec_push(&sr->x);
	v->org_id = sqlite3_column_int64(st, 0);
	v->name = col_dup(st, 1);
	v->version = sqlite3_column_int64(st, 2);
	v->created_at = (uint64_t)sqlite3_column_int64(st, 3);
	v->updated_at = (uint64_t)sqlite3_column_int64(st, 4);
	v->updated_by = sqlite3_column_int64(st, 5);
	if (sr->with_values) {
		size_t n = (size_t)sqlite3_column_bytes(st, 6);
		v->sealed = xmalloc(n ? n : 1);
		if (n)
			memcpy(v->sealed, sqlite3_column_blob(st, 6), n);
		v->len = n;
	}
}

struct secret_key {
	int64_t org_id;
	const char *name;
};

static void bind_secret_key(sqlite3_stmt *st, const void *ud)
{
	const struct secret_key *k = ud;
	sqlite3_bind_int64(st, 1, k->org_id);
	if (k->name)
		bind_str(st, 2, k->name);
}

#define SECRET_COLS "org_id, name, version, created_at, updated_at, updated_by, sealed"

int sq_secrets_list(struct store *s, int64_t org_id, bool with_values, struct store_secret **ret,
		    size_t *ret_n)
{
	struct secret_rows sr = {.x = {.size = sizeof(struct store_secret)},
				 .with_values = with_values};
	struct secret_key k = {.org_id = org_id};
	struct query q = {.sql = "SELECT " SECRET_COLS " FROM secrets WHERE org_id = ?1 ORDER BY name",
			  .bind = bind_secret_key, .bind_ud = &k, .row = secret_row,
			  .row_ud = &sr};
	int r = run_query(s, &q);
	if (r < 0) {
		store_secrets_free(sr.x.v, sr.x.n);
		return r;
	}
	*ret = sr.x.v;
	*ret_n = sr.x.n;
	return 0;
}

int sq_secret_get(struct store *s, int64_t org_id, const char *name, struct store_secret *ret)
{
	struct secret_rows sr = {.x = {.size = sizeof(struct store_secret)}, .with_values = true};
	struct secret_key k = {.org_id = org_id, .name = name};
	struct query q = {.sql = "SELECT " SECRET_COLS " FROM secrets WHERE org_id = ?1 AND name = ?2",
			  .bind = bind_secret_key, .bind_ud = &k, .row = secret_row,
			  .row_ud = &sr};
	int r = run_query(s, &q);
	if (r >= 0 && sr.x.n == 0)
		r = -ENOENT;
	if (r < 0) {
		store_secrets_free(sr.x.v, sr.x.n);
		return r;
	}
	*ret = *(struct store_secret *)sr.x.v;
	free(sr.x.v);
	return 0;
}

static void int_row(sqlite3_stmt *st, void *ud) { *(int64_t *)ud = sqlite3_column_int64(st, 0); }

int sq_secret_max_version(struct store *s, int64_t *ret)
{
	int64_t v = 0;
	struct query q = {.sql = "SELECT coalesce(max(version), 0) FROM secrets", .row = int_row,
			  .row_ud = &v};
	int r = run_query(s, &q);
	if (r >= 0)
		*ret = v;
	return r;
}

#define AUDIT_COLS \
	"seq, at, org_id, token_id, actor, action, target, result, status, source, prev, hash"

static void audit_fill(sqlite3_stmt *st, struct proto_audit *a)
{
	a->seq = sqlite3_column_int64(st, 0);
	a->at = (uint64_t)sqlite3_column_int64(st, 1);
	a->org_id = sqlite3_column_int64(st, 2);
	a->token_id = sqlite3_column_int64(st, 3);
	a->actor = col_dup(st, 4);
	a->action = col_dup(st, 5);
	a->target = col_dup(st, 6);
	a->result = col_dup(st, 7);
	a->status = sqlite3_column_int(st, 8);
	a->source = col_dup(st, 9);
	col_hex(st, 10, a->prev, sizeof(a->prev));
	col_hex(st, 11, a->hash, sizeof(a->hash));
}

static void audit_row(sqlite3_stmt *st, void *ud) { audit_fill(st, vec_push(ud)); }

static void bind_audit_filter(sqlite3_stmt *st, const void *ud)
{
	const struct store_audit_filter *f = ud;
	sqlite3_bind_int64(st, 1, f->org_id);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)f->since);
	sqlite3_bind_int64(st, 3, f->after_seq);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)(f->limit ? MIN(f->limit, 10000) : 100));
}

int sq_audit_list(struct store *s, const struct store_audit_filter *f, struct proto_audit **ret,
		  size_t *ret_n)
{
	struct vec x = {.size = sizeof(struct proto_audit)};
	struct query q = {.sql = "SELECT " AUDIT_COLS " FROM audit WHERE (?1 < 0 OR org_id = ?1) "
				 "AND at >= ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
			  .bind = bind_audit_filter, .bind_ud = f, .row = audit_row,
			  .row_ud = &x};
	int r = run_query(s, &q);
	if (r < 0) {
		proto_audits_free(x.v, x.n);
		return r;
	}
	*ret = x.v;
	*ret_n = x.n;
	return 0;
}

struct verify {
	int64_t n, bad, expect_seq;
	char prev[65];
};

static void verify_row(sqlite3_stmt *st, void *ud)
{
	struct verify *v = ud;
	if (v->bad)
		return;
	struct proto_audit a = {0};
	audit_fill(st, &a);
	struct audit_view view = {a.seq,	  a.at,	      a.org_id,	   a.token_id,
				  a.actor,	  a.action,   a.target,	   a.result,
				  a.source,	  a.status,   a.prev};
	char h[65];
	audit_hash(&view, h);
	if (a.seq != v->expect_seq || !streq(a.prev, v->prev) || !streq(h, a.hash))
		v->bad = a.seq;
	memcpy(v->prev, a.hash, sizeof(v->prev));
	v->expect_seq = a.seq + 1;
	v->n++;
	proto_audit_release(&a);
}

int sq_audit_verify(struct store *s, int64_t *ret_n, int64_t *ret_bad_seq)
{
	struct verify v = {.expect_seq = 1};
	memset(v.prev, '0', 64);
	struct query q = {.sql = "SELECT " AUDIT_COLS " FROM audit ORDER BY seq", .row = verify_row,
			  .row_ud = &v};
	int r = run_query(s, &q);
	if (r < 0)
		return r;
	*ret_n = v.n;
	if (ret_bad_seq)
		*ret_bad_seq = v.bad;
	return v.bad ? -EBADMSG : 0;
}

struct seen_key {
	int64_t org_id;
	const char *delivery;
	int64_t gh_job_id, run_attempt;
	const char *action;
};

static void bind_seen(sqlite3_stmt *st, const void *ud)
{
	const struct seen_key *k = ud;
	bind_str(st, 1, k->delivery);
	sqlite3_bind_int64(st, 2, k->org_id);
	sqlite3_bind_int64(st, 3, k->gh_job_id);
	sqlite3_bind_int64(st, 4, k->run_attempt);
	bind_str(st, 5, k->action);
}

int sq_webhook_seen(struct store *s, int64_t org_id, const char *delivery, int64_t gh_job_id,
		    int64_t run_attempt, const char *action)
{
	int64_t n = 0;
	struct seen_key k = {org_id, delivery, gh_job_id, run_attempt, action};
	struct query q = {.sql = "SELECT (SELECT count(*) FROM webhook_deliveries WHERE delivery = ?1)"
				 " + (SELECT count(*) FROM webhook_events WHERE org_id = ?2 AND "
				 "gh_job_id = ?3 AND run_attempt = ?4 AND action = ?5 AND ?3 != 0)",
			  .bind = bind_seen, .bind_ud = &k, .row = int_row, .row_ud = &n};
	int r = run_query(s, &q);
	return r < 0 ? r : n > 0;
}

void store_deliveries_free(struct store_delivery *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++) {
		free(v[i].delivery);
		free(v[i].event);
		free(v[i].action);
		free(v[i].outcome);
	}
	free(v);
}

static void delivery_row(sqlite3_stmt *st, void *ud)
{
	struct store_delivery *d = vec_push(ud);
	d->delivery = col_dup(st, 0);
	d->received_at = (uint64_t)sqlite3_column_int64(st, 1);
	d->org_id = sqlite3_column_int64(st, 2);
	d->event = col_dup(st, 3);
	d->action = col_dup(st, 4);
	d->gh_job_id = sqlite3_column_int64(st, 5);
	d->run_attempt = sqlite3_column_int64(st, 6);
	d->outcome = col_dup(st, 7);
	d->job_id = sqlite3_column_int64(st, 8);
}

struct deliveries_q {
	int64_t org_id;
	size_t limit;
};

static void bind_deliveries(sqlite3_stmt *st, const void *ud)
{
	const struct deliveries_q *q = ud;
	sqlite3_bind_int64(st, 1, q->org_id);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)(q->limit ? MIN(q->limit, 1000) : 50));
}

int sq_webhook_deliveries(struct store *s, int64_t org_id, size_t limit,
			  struct store_delivery **ret, size_t *ret_n)
{
	struct vec x = {.size = sizeof(struct store_delivery)};
	struct deliveries_q dq = {org_id, limit};
	struct query q = {.sql = "SELECT delivery, received_at, org_id, event, action, gh_job_id, "
				 "run_attempt, outcome, job_id FROM webhook_deliveries WHERE "
				 "(?1 < 0 OR org_id = ?1) ORDER BY received_at DESC, delivery LIMIT ?2",
			  .bind = bind_deliveries, .bind_ud = &dq, .row = delivery_row,
			  .row_ud = &x};
	int r = run_query(s, &q);
	if (r < 0) {
		store_deliveries_free(x.v, x.n);
		return r;
	}
	*ret = x.v;
	*ret_n = x.n;
	return 0;
}

int sq_webhook_event_job(struct store *s, int64_t org_id, int64_t gh_job_id, int64_t run_attempt,
			 const char *action, int64_t *ret_job_id)
{
	int64_t job = -1;
	struct seen_key k = {org_id, "", gh_job_id, run_attempt, action};
	struct query q = {.sql = "SELECT coalesce((SELECT job_id FROM webhook_events WHERE "
				 "org_id = ?2 AND gh_job_id = ?3 AND run_attempt = ?4 AND "
				 "action = ?5), -1) WHERE ?1 = ?1",
			  .bind = bind_seen, .bind_ud = &k, .row = int_row, .row_ud = &job};
	int r = run_query(s, &q);
	if (r < 0)
		return r;
	if (job < 0)
		return -ENOENT;
	*ret_job_id = job;
	return 0;
}
