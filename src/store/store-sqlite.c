/*
 * store-sqlite: the embedded SQLite backend.
 *
 * Durability: WAL journal, synchronous=FULL: every COMMIT fsyncs the WAL
 * before it returns, so a committed batch survives a crash of the process,
 * the kernel or the power (as far as the disk honours fsync). One write
 * connection (the writer thread's) and a small pool of read connections,
 * which see the last committed state (WAL snapshots) and never block the
 * writer.
 *
 * Invariants kept by the schema itself:
 *  - attempts(job_id, attempt) and attempts(fence) are unique: a fence or an
 *    attempt is never granted twice;
 *  - every agent write is an UPDATE conditional on (fence, state), so a stale
 *    fence changes nothing.
 */
#include "store-sqlite.h"

#include <signal.h>

#define N_READERS 4
/*
 * Schema versions: schema_sql is version 1; each later version is one
 * additive migration in `migrations` (new tables, new columns with
 * defaults, new indexes), applied in order in the transaction that opens the
 * database. SCHEMA_VERSION is the last one.
 */
struct migration {
	int version;
	const char *sql;
};

static const struct migration migrations[] = {
	/* 2: usage accounting per attempt (docs/metrics.md, kiln usage). */
	{2, "ALTER TABLE attempts ADD COLUMN queue_wait_ms INTEGER NOT NULL DEFAULT 0;"
	    "ALTER TABLE attempts ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;"
	    "ALTER TABLE attempts ADD COLUMN usage_reported INTEGER NOT NULL DEFAULT 0;"
	    "ALTER TABLE attempts ADD COLUMN wall_ms INTEGER NOT NULL DEFAULT 0;"
	    "ALTER TABLE attempts ADD COLUMN cpu_user_ms INTEGER NOT NULL DEFAULT 0;"
	    "ALTER TABLE attempts ADD COLUMN cpu_system_ms INTEGER NOT NULL DEFAULT 0;"
	    "ALTER TABLE attempts ADD COLUMN memory_peak_bytes INTEGER NOT NULL DEFAULT 0;"
	    "ALTER TABLE attempts ADD COLUMN io_read_bytes INTEGER NOT NULL DEFAULT 0;"
	    "ALTER TABLE attempts ADD COLUMN io_write_bytes INTEGER NOT NULL DEFAULT 0;"
	    "ALTER TABLE attempts ADD COLUMN oom_kills INTEGER NOT NULL DEFAULT 0;"
	    "ALTER TABLE attempts ADD COLUMN executor TEXT;"
	    "CREATE INDEX IF NOT EXISTS attempts_by_finished ON attempts (finished_at);"},
	/* 3: tenancy: orgs, tokens, keys, secrets, audit, webhook deliveries
	 * (store-sqlite-tenancy.c). */
	{3, NULL},
};

#define SCHEMA_VERSION 3

enum {
	ST_BEGIN,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_JOB_INSERT,
	ST_JOB_LEASE,
	ST_ATTEMPT_INSERT,
	ST_JOB_START,
	ST_ATTEMPT_START,
	ST_JOB_STATE,
	ST_JOB_FINISH_ACTIVE,
	ST_JOB_FINISH_QUEUED,
	ST_ATTEMPT_FINISH,
	ST_JOB_REQUEUE,
	ST_AGENT_PUT,
	ST_AGENT_DRAIN,
	ST_ARTIFACT_PUT,
	ST_JOB_GET,
	ST_JOB_GET_SPEC,
	ST_ATTEMPTS_GET,
	ST_ARTIFACT_LIST,
	ST_ARTIFACT_GET,
	ST_BLOB_REF,
	ST_FENCE_RESERVE,
	ST_JOB_SPEC,
	ST_ATTEMPT_USAGE,
	ST_USAGE_OF,
	ST_MAX,
};

/* The usage of attempts `a`, in the order row_to_usage reads them. */
#define USAGE_COLS                                                                            \
	"a.usage_reported, a.queue_wait_ms, a.wall_ms, a.cpu_user_ms, a.cpu_system_ms, "         \
	"a.memory_peak_bytes, a.io_read_bytes, a.io_write_bytes, a.oom_kills, a.gpus, a.executor"
#define USAGE_NCOLS 11

#define JOB_COLS                                                                             \
	"id, name, state, priority, attempt, max_attempts, fence, agent_id, runs_on, need_cpus, " \
	"need_memory, need_gpus, timeout_ms, submitted_at, leased_at, started_at, finished_at, "   \
	"exit_code, message, retry_of, org_id"

static const char *const stmt_sql[ST_MAX] = {
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	[ST_JOB_INSERT] = "INSERT INTO jobs (id, name, state, priority, max_attempts, runs_on, "
			  "need_cpus, need_memory, need_gpus, timeout_ms, submitted_at, retry_of, "
			  "spec, org_id) VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, "
			  "?13)",
	[ST_JOB_LEASE] = "UPDATE jobs SET state = 1, attempt = ?2, fence = ?3, agent_id = ?4, "
			 "leased_at = ?5, started_at = 0, message = NULL "
			 "WHERE id = ?1 AND state = 0 AND attempt = ?2 - 1 RETURNING spec",
	[ST_ATTEMPT_INSERT] = "INSERT INTO attempts (job_id, attempt, fence, agent_id, state, "
			      "leased_at, queue_wait_ms, gpus) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7)",
	[ST_JOB_START] = "UPDATE jobs SET state = 2, started_at = ?3 "
			 "WHERE id = ?1 AND fence = ?2 AND state = 1",
	[ST_ATTEMPT_START] = "UPDATE attempts SET state = 2, started_at = ?2 WHERE fence = ?1",
	[ST_JOB_STATE] = "SELECT state, fence FROM jobs WHERE id = ?1",
	[ST_JOB_FINISH_ACTIVE] = "UPDATE jobs SET state = ?3, finished_at = ?4, exit_code = ?5, "
				 "message = ?6 WHERE id = ?1 AND fence = ?2 AND state IN (1, 2)",
	[ST_JOB_FINISH_QUEUED] = "UPDATE jobs SET state = ?2, finished_at = ?3, message = ?4 "
				 "WHERE id = ?1 AND state = 0",
	[ST_ATTEMPT_FINISH] = "UPDATE attempts SET state = ?2, finished_at = ?3, exit_code = ?4, "
			      "message = ?5 WHERE fence = ?1",
	[ST_JOB_REQUEUE] = "UPDATE jobs SET state = 0, agent_id = 0, message = ?3, "
			   "max_attempts = max_attempts + ?4 "
			   "WHERE id = ?1 AND fence = ?2 AND state IN (1, 2)",
	[ST_AGENT_PUT] = "INSERT INTO agents (id, name, labels, slots, cpus, memory, gpus, "
			 "registered_at, org_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) "
			 "ON CONFLICT (id) DO UPDATE SET name = excluded.name, labels = "
			 "excluded.labels, slots = excluded.slots, cpus = excluded.cpus, memory = "
			 "excluded.memory, gpus = excluded.gpus, org_id = excluded.org_id",
	[ST_AGENT_DRAIN] = "UPDATE agents SET draining = ?2 WHERE id = ?1",
	[ST_ARTIFACT_PUT] = "INSERT OR REPLACE INTO artifacts (job_id, path, attempt, sha256, "
			    "size, created_at) SELECT ?1, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS "
			    "(SELECT 1 FROM jobs WHERE id = ?1 AND fence = ?2 AND state IN (1, 2))",
	[ST_JOB_GET] = "SELECT " JOB_COLS " FROM jobs WHERE id = ?1",
	[ST_JOB_GET_SPEC] = "SELECT spec FROM jobs WHERE id = ?1",
	[ST_ATTEMPTS_GET] = "SELECT a.attempt, a.fence, a.agent_id, g.name, a.state, a.leased_at, "
			    "a.started_at, a.finished_at, a.exit_code, a.message, " USAGE_COLS
			    " FROM attempts a "
			    "LEFT JOIN agents g ON g.id = a.agent_id WHERE a.job_id = ?1 "
			    "ORDER BY a.attempt",
	[ST_ARTIFACT_LIST] = "SELECT path, attempt, sha256, size, created_at FROM artifacts "
			     "WHERE job_id = ?1 ORDER BY path",
	[ST_ARTIFACT_GET] = "SELECT path, attempt, sha256, size, created_at FROM artifacts "
			    "WHERE job_id = ?1 AND path = ?2",
	[ST_BLOB_REF] = "SELECT 1 FROM artifacts WHERE sha256 = ?1 LIMIT 1",
	[ST_FENCE_RESERVE] = "INSERT INTO meta (key, value) VALUES ('fence_reserved', ?1) "
			     "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
	[ST_JOB_SPEC] = "SELECT spec FROM jobs WHERE id = ?1",
	[ST_ATTEMPT_USAGE] = "UPDATE attempts SET usage_reported = 1, wall_ms = ?3, cpu_user_ms = ?4, "
			     "cpu_system_ms = ?5, memory_peak_bytes = ?6, io_read_bytes = ?7, "
			     "io_write_bytes = ?8, oom_kills = ?9, executor = ?10 "
			     "WHERE fence = ?2 AND job_id = ?1 AND usage_reported = 0 "
			     "RETURNING gpus, queue_wait_ms, (SELECT org_id FROM jobs WHERE id = ?1)",
	[ST_USAGE_OF] = "SELECT usage_reported FROM attempts WHERE fence = ?2 AND job_id = ?1",
};

static const char schema_sql[] =
	"CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS jobs ("
	" id INTEGER PRIMARY KEY,"
	" name TEXT NOT NULL,"
	" state INTEGER NOT NULL,"
	" priority INTEGER NOT NULL,"
	" attempt INTEGER NOT NULL DEFAULT 0,"
	" max_attempts INTEGER NOT NULL,"
	" fence INTEGER NOT NULL DEFAULT 0,"
	" agent_id INTEGER NOT NULL DEFAULT 0,"
	" runs_on TEXT NOT NULL,"
	" need_cpus REAL NOT NULL,"
	" need_memory INTEGER NOT NULL,"
	" need_gpus INTEGER NOT NULL,"
	" timeout_ms INTEGER NOT NULL,"
	" submitted_at INTEGER NOT NULL,"
	" leased_at INTEGER NOT NULL DEFAULT 0,"
	" started_at INTEGER NOT NULL DEFAULT 0,"
	" finished_at INTEGER NOT NULL DEFAULT 0,"
	" exit_code INTEGER,"
	" message TEXT,"
	" retry_of INTEGER NOT NULL DEFAULT 0,"
	" spec TEXT NOT NULL);"
	"CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);"
	"CREATE INDEX IF NOT EXISTS jobs_by_name ON jobs (name, id);"
	"CREATE TABLE IF NOT EXISTS attempts ("
	" job_id INTEGER NOT NULL,"
	" attempt INTEGER NOT NULL,"
	" fence INTEGER NOT NULL UNIQUE,"
	" agent_id INTEGER NOT NULL,"
	" state INTEGER NOT NULL,"
	" leased_at INTEGER NOT NULL,"
	" started_at INTEGER NOT NULL DEFAULT 0,"
	" finished_at INTEGER NOT NULL DEFAULT 0,"
	" exit_code INTEGER,"
	" message TEXT,"
	" PRIMARY KEY (job_id, attempt)) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS agents ("
	" id INTEGER PRIMARY KEY,"
	" name TEXT NOT NULL UNIQUE,"
	" labels TEXT NOT NULL,"
	" slots INTEGER NOT NULL,"
	" cpus REAL NOT NULL,"
	" memory INTEGER NOT NULL,"
	" gpus INTEGER NOT NULL,"
	" draining INTEGER NOT NULL DEFAULT 0,"
	" registered_at INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS artifacts ("
	" job_id INTEGER NOT NULL,"
	" path TEXT NOT NULL,"
	" attempt INTEGER NOT NULL,"
	" sha256 TEXT NOT NULL,"
	" size INTEGER NOT NULL,"
	" created_at INTEGER NOT NULL,"
	" PRIMARY KEY (job_id, path)) WITHOUT ROWID;"
	"CREATE INDEX IF NOT EXISTS artifacts_by_blob ON artifacts (sha256);";

struct conn {
	sqlite3 *db;
	sqlite3_stmt *st[ST_MAX];
	struct conn *next_free;
};

struct sqlite_store {
	struct store base;
	char *path;
	struct conn writer;
	/* Checkpoints run on their own connection and thread, so a commit
	 * never waits for one (wal_autocheckpoint is off on the writer). */
	struct conn ckpt;
	pthread_t ckpt_thread;
	pthread_mutex_t ckpt_lock;
	pthread_cond_t ckpt_cond;
	bool ckpt_running, ckpt_wanted;
	int wal_frames;     /* as the last commit left it */
	int ckpt_log, ckpt_done; /* the last checkpoint: frames in the WAL, copied */
	bool ckpt_busy;          /* the checkpointer is copying now */
	struct conn readers[N_READERS];
	struct conn *free_readers;
	struct sq_tenancy *tenancy;
	pthread_mutex_t rlock;
	pthread_cond_t rcond;
};

static struct sqlite_store *to_sq(struct store *s) { return (struct sqlite_store *)s; }

int sq_errno(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_DONE:
	case SQLITE_ROW:
		return 0;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_READONLY:
	case SQLITE_PERM:
	case SQLITE_AUTH:
		return -EACCES;
	case SQLITE_CONSTRAINT:
		return -EEXIST;
	case SQLITE_CANTOPEN:
		return -ENOENT;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return -EBADMSG;
	default:
		return -EIO;
	}
}

static sqlite3_stmt *stmt(struct conn *c, int id)
{
	if (!c->st[id]) {
		int rc = sqlite3_prepare_v3(c->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
					    &c->st[id], NULL);
		if (rc != SQLITE_OK) {
			/* The SQL is ours: a failure here is a bug or a broken database. */
			log_error("sqlite prepare failed sql=\"%s\" error=\"%s\"", stmt_sql[id],
				  sqlite3_errmsg(c->db));
			abort();
		}
	}
	return c->st[id];
}

/* Steps a statement that returns no rows (or ignores them) and resets it. */
static int exec_stmt(sqlite3_stmt *st)
{
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		;
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (rc != SQLITE_DONE) {
		log_debug("sqlite step failed sql=\"%s\" error=\"%s\"", sqlite3_sql(st),
			  sqlite3_errstr(rc));
		return sq_errno(rc);
	}
	return 0;
}

static int exec_id(struct conn *c, int id) { return exec_stmt(stmt(c, id)); }

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
	if (s)
		sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, i);
}

static void conn_close(struct conn *c)
{
	for (int i = 0; i < ST_MAX; i++)
		sqlite3_finalize(c->st[i]);
	if (c->db)
		sqlite3_close_v2(c->db);
	memset(c, 0, sizeof(*c));
}

static int conn_open(struct conn *c, const char *path, bool writer, bool durable,
		     struct kiln_err *err)
{
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (writer ? SQLITE_OPEN_CREATE : 0);
	/* The durable writer gathers each commit's WAL frames into one write. */
	int rc = sqlite3_open_v2(path, &c->db, flags, writer && durable ? sq_walbuf_vfs() : NULL);
	if (rc != SQLITE_OK) {
		int r = kiln_err_set(err, sq_errno(rc), "cannot open the database '%s': %s", path,
				     c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
		conn_close(c);
		return r;
	}
	sqlite3_busy_timeout(c->db, 10000);
	sqlite3_extended_result_codes(c->db, 1);
	const char *pragmas = writer ? (durable ? "PRAGMA journal_mode = WAL;"
						  "PRAGMA synchronous = FULL;"
						  "PRAGMA wal_autocheckpoint = 0;"
						  "PRAGMA cache_size = -65536;"
						  "PRAGMA temp_store = MEMORY;"
						: "PRAGMA journal_mode = WAL;"
						  "PRAGMA synchronous = NORMAL;"
						  "PRAGMA wal_autocheckpoint = 0;"
						  "PRAGMA cache_size = -65536;"
						  "PRAGMA temp_store = MEMORY;")
				     : "PRAGMA query_only = 1;"
				       "PRAGMA synchronous = FULL;"
				       "PRAGMA cache_size = -16384;";
	char *msg = NULL;
	rc = sqlite3_exec(c->db, pragmas, NULL, NULL, &msg);
	if (rc != SQLITE_OK) {
		int r = kiln_err_set(err, sq_errno(rc), "database '%s': %s", path,
				     msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		conn_close(c);
		return r;
	}
	return 0;
}

static int create_schema(struct conn *c, const char *path, struct kiln_err *err)
{
	char *msg = NULL;
	int rc = sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, &msg);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(c->db, schema_sql, NULL, NULL, &msg);
	if (rc == SQLITE_OK) {
		sqlite3_stmt *st = NULL;
		rc = sqlite3_prepare_v2(c->db, "SELECT value FROM meta WHERE key = 'schema'", -1,
					&st, NULL);
		int version = 0;
		if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
			version = (int)strtol((const char *)sqlite3_column_text(st, 0), NULL, 10);
		sqlite3_finalize(st);
		if (rc == SQLITE_OK && version > SCHEMA_VERSION) {
			sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
			return kiln_err_set(err, -EPROTO,
					    "database '%s' has schema version %d; this kiln knows up "
					    "to %d (upgrade kiln)",
					    path, version, SCHEMA_VERSION);
		}
		if (rc == SQLITE_OK && version == 0) {
			rc = sqlite3_exec(c->db,
					  "INSERT INTO meta (key, value) VALUES ('schema', '1')",
					  NULL, NULL, &msg);
			version = 1;
		}
		for (size_t i = 0; rc == SQLITE_OK && i < ARRAY_SIZE(migrations); i++) {
			if (migrations[i].version <= version)
				continue;
			const char *sql = migrations[i].sql ? migrations[i].sql
							    : sq_tenancy_migration(migrations[i].version);
			rc = sqlite3_exec(c->db, sql, NULL, NULL, &msg);
			if (rc != SQLITE_OK)
				break;
			_cleanup_free_ char *set = xasprintf(
				"UPDATE meta SET value = '%d' WHERE key = 'schema'", migrations[i].version);
			rc = sqlite3_exec(c->db, set, NULL, NULL, &msg);
			version = migrations[i].version;
		}
	}
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(c->db, "COMMIT", NULL, NULL, &msg);
	if (rc != SQLITE_OK) {
		int r = kiln_err_set(err, sq_errno(rc), "database '%s': cannot create the schema: %s",
				     path, msg ? msg : sqlite3_errmsg(c->db));
		sqlite3_free(msg);
		sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
		return r;
	}
	return 0;
}

/* ---- writer side ---------------------------------------------------------- */

static int sq_begin(struct store *s)
{
	sq_tenancy_begin(to_sq(s)->tenancy);
	return exec_id(&to_sq(s)->writer, ST_BEGIN);
}

static void finish_checkpoint(struct sqlite_store *q);

static int sq_commit(struct store *s)
{
	int r = exec_id(&to_sq(s)->writer, ST_COMMIT);
	if (r >= 0)
		finish_checkpoint(to_sq(s));
	return r;
}

/* Reads (state, fence) of a job after a conditional update matched nothing. */
static int job_state(struct conn *c, int64_t id, enum job_state *ret_state, int64_t *ret_fence)
{
	sqlite3_stmt *st = stmt(c, ST_JOB_STATE);
	sqlite3_bind_int64(st, 1, id);
	int rc = sqlite3_step(st);
	int r = -ENOENT;
	if (rc == SQLITE_ROW) {
		*ret_state = (enum job_state)sqlite3_column_int(st, 0);
		*ret_fence = sqlite3_column_int64(st, 1);
		r = 0;
	} else if (rc != SQLITE_DONE) {
		r = sq_errno(rc);
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return r;
}

static int apply_insert(struct conn *c, struct store_mut *m)
{
	sqlite3_stmt *st = stmt(c, ST_JOB_INSERT);
	for (size_t i = 0; i < m->insert.n; i++) {
		const struct store_job_new *j = &m->insert.v[i];
		sqlite3_bind_int64(st, 1, j->id);
		bind_text(st, 2, j->name);
		sqlite3_bind_int64(st, 3, j->priority);
		sqlite3_bind_int64(st, 4, j->max_attempts);
		bind_text(st, 5, j->runs_on ? j->runs_on : "");
		sqlite3_bind_double(st, 6, j->needs.cpus);
		sqlite3_bind_int64(st, 7, (sqlite3_int64)j->needs.memory);
		sqlite3_bind_int64(st, 8, j->needs.gpus);
		sqlite3_bind_int64(st, 9, (sqlite3_int64)j->timeout_ms);
		sqlite3_bind_int64(st, 10, (sqlite3_int64)j->submitted_at);
		sqlite3_bind_int64(st, 11, j->retry_of);
		bind_text(st, 12, j->spec_json);
		sqlite3_bind_int64(st, 13, j->org_id > 0 ? j->org_id : 1);
		int r = exec_stmt(st);
		if (r < 0)
			return r;
	}
	return 0;
}

static int apply_lease(struct conn *c, struct store_mut *m)
{
	sqlite3_stmt *st = stmt(c, ST_JOB_LEASE);
	sqlite3_bind_int64(st, 1, m->lease.job_id);
	sqlite3_bind_int64(st, 2, m->lease.attempt);
	sqlite3_bind_int64(st, 3, m->lease.fence);
	sqlite3_bind_int64(st, 4, m->lease.agent_id);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)m->lease.now);
	int rc = sqlite3_step(st);
	int r = 0;
	if (rc == SQLITE_ROW) {
		free(m->lease.ret_spec);
		m->lease.ret_spec = xstrdup((const char *)sqlite3_column_text(st, 0));
		while ((rc = sqlite3_step(st)) == SQLITE_ROW)
			;
	} else if (rc == SQLITE_DONE) {
		r = -ESTALE;
	}
	if (rc != SQLITE_DONE)
		r = sq_errno(rc);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (r < 0)
		return r;
	st = stmt(c, ST_ATTEMPT_INSERT);
	sqlite3_bind_int64(st, 1, m->lease.job_id);
	sqlite3_bind_int64(st, 2, m->lease.attempt);
	sqlite3_bind_int64(st, 3, m->lease.fence);
	sqlite3_bind_int64(st, 4, m->lease.agent_id);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)m->lease.now);
	sqlite3_bind_int64(st, 6, (sqlite3_int64)m->lease.queue_wait_ms);
	sqlite3_bind_int64(st, 7, m->lease.gpus);
	/* A fence or attempt granted twice would be a scheduler bug: -EEXIST is
	 * fatal (the batch is not committed). */
	return exec_stmt(st);
}

static int apply_start(struct conn *c, struct store_mut *m)
{
	sqlite3_stmt *st = stmt(c, ST_JOB_START);
	sqlite3_bind_int64(st, 1, m->start.job_id);
	sqlite3_bind_int64(st, 2, m->start.fence);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)m->start.now);
	int r = exec_stmt(st);
	if (r < 0)
		return r;
	if (sqlite3_changes(c->db) == 0) {
		enum job_state state = JOB_QUEUED;
		int64_t fence = 0;
		r = job_state(c, m->start.job_id, &state, &fence);
		if (r < 0)
			return r;
		return state == JOB_RUNNING && fence == m->start.fence ? 1 : -ESTALE;
	}
	st = stmt(c, ST_ATTEMPT_START);
	sqlite3_bind_int64(st, 1, m->start.fence);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)m->start.now);
	return exec_stmt(st);
}

static int apply_finish(struct conn *c, struct store_mut *m)
{
	sqlite3_stmt *st;
	if (m->finish.fence == 0) {
		st = stmt(c, ST_JOB_FINISH_QUEUED);
		sqlite3_bind_int64(st, 1, m->finish.job_id);
		sqlite3_bind_int(st, 2, m->finish.state);
		sqlite3_bind_int64(st, 3, (sqlite3_int64)m->finish.now);
		bind_text(st, 4, m->finish.message);
	} else {
		st = stmt(c, ST_JOB_FINISH_ACTIVE);
		sqlite3_bind_int64(st, 1, m->finish.job_id);
		sqlite3_bind_int64(st, 2, m->finish.fence);
		sqlite3_bind_int(st, 3, m->finish.state);
		sqlite3_bind_int64(st, 4, (sqlite3_int64)m->finish.now);
		if (m->finish.has_exit_code)
			sqlite3_bind_int(st, 5, m->finish.exit_code);
		else
			sqlite3_bind_null(st, 5);
		bind_text(st, 6, m->finish.message);
	}
	int r = exec_stmt(st);
	if (r < 0)
		return r;
	if (sqlite3_changes(c->db) == 0) {
		enum job_state state = JOB_QUEUED;
		int64_t fence = 0;
		r = job_state(c, m->finish.job_id, &state, &fence);
		if (r < 0)
			return r;
		m->finish.ret_state = state;
		m->finish.ret_fence = fence;
		return m->finish.fence && state == m->finish.state && fence == m->finish.fence
			       ? 1
			       : -ESTALE;
	}
	if (m->finish.fence == 0)
		return 0;
	st = stmt(c, ST_ATTEMPT_FINISH);
	sqlite3_bind_int64(st, 1, m->finish.fence);
	sqlite3_bind_int(st, 2, m->finish.state);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)m->finish.now);
	if (m->finish.has_exit_code)
		sqlite3_bind_int(st, 4, m->finish.exit_code);
	else
		sqlite3_bind_null(st, 4);
	bind_text(st, 5, m->finish.message);
	return exec_stmt(st);
}

static int apply_requeue(struct conn *c, struct store_mut *m)
{
	sqlite3_stmt *st = stmt(c, ST_JOB_REQUEUE);
	sqlite3_bind_int64(st, 1, m->requeue.job_id);
	sqlite3_bind_int64(st, 2, m->requeue.fence);
	bind_text(st, 3, m->requeue.message);
	sqlite3_bind_int(st, 4, m->requeue.refund ? 1 : 0);
	int r = exec_stmt(st);
	if (r < 0)
		return r;
	if (sqlite3_changes(c->db) == 0)
		return -ESTALE;
	st = stmt(c, ST_ATTEMPT_FINISH);
	sqlite3_bind_int64(st, 1, m->requeue.fence);
	sqlite3_bind_int(st, 2, m->requeue.attempt_state);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)m->requeue.now);
	sqlite3_bind_null(st, 4);
	bind_text(st, 5, m->requeue.message);
	return exec_stmt(st);
}

static int apply_agent(struct conn *c, struct store_mut *m)
{
	sqlite3_stmt *st = stmt(c, ST_AGENT_PUT);
	sqlite3_bind_int64(st, 1, m->agent.id);
	bind_text(st, 2, m->agent.name);
	bind_text(st, 3, m->agent.labels ? m->agent.labels : "");
	sqlite3_bind_int64(st, 4, m->agent.capacity.slots);
	sqlite3_bind_double(st, 5, m->agent.capacity.cpus);
	sqlite3_bind_int64(st, 6, (sqlite3_int64)m->agent.capacity.memory);
	sqlite3_bind_int64(st, 7, m->agent.capacity.gpus);
	sqlite3_bind_int64(st, 8, (sqlite3_int64)m->agent.now);
	sqlite3_bind_int64(st, 9, m->agent.org_id);
	return exec_stmt(st);
}

static int apply_drain(struct conn *c, struct store_mut *m)
{
	sqlite3_stmt *st = stmt(c, ST_AGENT_DRAIN);
	sqlite3_bind_int64(st, 1, m->drain.id);
	sqlite3_bind_int(st, 2, m->drain.draining);
	int r = exec_stmt(st);
	if (r < 0)
		return r;
	return sqlite3_changes(c->db) ? 0 : -ENOENT;
}

static int apply_artifact(struct conn *c, struct store_mut *m)
{
	sqlite3_stmt *st = stmt(c, ST_ARTIFACT_PUT);
	sqlite3_bind_int64(st, 1, m->artifact.job_id);
	sqlite3_bind_int64(st, 2, m->artifact.fence);
	bind_text(st, 3, m->artifact.path);
	sqlite3_bind_int64(st, 4, m->artifact.attempt);
	bind_text(st, 5, m->artifact.sha256);
	sqlite3_bind_int64(st, 6, (sqlite3_int64)m->artifact.size);
	sqlite3_bind_int64(st, 7, (sqlite3_int64)m->artifact.now);
	int r = exec_stmt(st);
	if (r < 0)
		return r;
	return sqlite3_changes(c->db) ? 0 : -ESTALE;
}

static int apply_usage(struct conn *c, struct store_mut *m)
{
	const struct proto_usage *u = &m->usage.usage;
	sqlite3_stmt *st = stmt(c, ST_ATTEMPT_USAGE);
	sqlite3_bind_int64(st, 1, m->usage.job_id);
	sqlite3_bind_int64(st, 2, m->usage.fence);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)u->wall_ms);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)u->cpu_user_ms);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)u->cpu_system_ms);
	sqlite3_bind_int64(st, 6, (sqlite3_int64)u->memory_peak_bytes);
	sqlite3_bind_int64(st, 7, (sqlite3_int64)u->io_read_bytes);
	sqlite3_bind_int64(st, 8, (sqlite3_int64)u->io_write_bytes);
	sqlite3_bind_int64(st, 9, (sqlite3_int64)u->oom_kills);
	bind_text(st, 10, u->executor[0] ? u->executor : NULL);
	int rc = sqlite3_step(st);
	bool updated = rc == SQLITE_ROW;
	if (updated) {
		m->usage.ret_gpus = sqlite3_column_int64(st, 0);
		m->usage.ret_queue_wait_ms = (uint64_t)sqlite3_column_int64(st, 1);
		m->usage.ret_org_id = sqlite3_column_int64(st, 2);
		while ((rc = sqlite3_step(st)) == SQLITE_ROW)
			;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (rc != SQLITE_DONE)
		return sq_errno(rc);
	if (updated)
		return 0;
	/* Reported before (1), or no such attempt. */
	st = stmt(c, ST_USAGE_OF);
	sqlite3_bind_int64(st, 1, m->usage.job_id);
	sqlite3_bind_int64(st, 2, m->usage.fence);
	rc = sqlite3_step(st);
	int r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? -ENOENT : sq_errno(rc);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return r;
}

static int sq_apply(struct store *s, struct store_mut *m)
{
	struct conn *c = &to_sq(s)->writer;
	if (m->kind == STORE_BARRIER)
		return m->audit ? sq_tenancy_audit(to_sq(s)->tenancy, c->db, m, 0) : 0;
	if (m->kind == STORE_FENCE_RESERVE) {
		sqlite3_stmt *st = stmt(c, ST_FENCE_RESERVE);
		sqlite3_bind_int64(st, 1, m->fence_reserve.upto);
		return exec_stmt(st);
	}
	/*
	 * No savepoint per mutation: each one's first statement is its condition
	 * (a refused mutation has written nothing when it returns -ESTALE or
	 * -ENOENT), and a later statement can only fail on an I/O error or a
	 * broken invariant, which are fatal for the whole batch anyway.
	 */
	int r;
	switch (m->kind) {
	case STORE_JOBS_INSERT: r = apply_insert(c, m); break;
	case STORE_JOB_LEASE: r = apply_lease(c, m); break;
	case STORE_JOB_START: r = apply_start(c, m); break;
	case STORE_JOB_FINISH: r = apply_finish(c, m); break;
	case STORE_JOB_REQUEUE: r = apply_requeue(c, m); break;
	case STORE_AGENT_PUT: r = apply_agent(c, m); break;
	case STORE_AGENT_DRAIN: r = apply_drain(c, m); break;
	case STORE_ARTIFACT_PUT: r = apply_artifact(c, m); break;
	case STORE_ATTEMPT_USAGE: r = apply_usage(c, m); break;
	case STORE_WEBHOOK_DELIVERY:
		/* Its conditions (delivery id, event key) are checked first. */
		r = sq_tenancy_apply(to_sq(s)->tenancy, c->db, m);
		if (r >= 0 && m->webhook.job) {
			struct store_mut im = {.kind = STORE_JOBS_INSERT,
					       .insert = {m->webhook.job, 1}};
			r = apply_insert(c, &im);
		}
		break;
	default: r = sq_tenancy_apply(to_sq(s)->tenancy, c->db, m); break;
	}
	/* The call's audit record, with its outcome: a refused mutation is
	 * recorded too. */
	if (m->audit && (r >= 0 || r == -ESTALE || r == -ENOENT || r == -EEXIST)) {
		int r2 = sq_tenancy_audit(to_sq(s)->tenancy, c->db, m, r);
		if (r2 < 0)
			return r2;
	}
	return r;
}

/* ---- reads ---------------------------------------------------------------- */

static struct conn *reader_get(struct sqlite_store *q)
{
	pthread_mutex_lock(&q->rlock);
	while (!q->free_readers)
		pthread_cond_wait(&q->rcond, &q->rlock);
	struct conn *c = q->free_readers;
	q->free_readers = c->next_free;
	pthread_mutex_unlock(&q->rlock);
	return c;
}

static void reader_put(struct sqlite_store *q, struct conn *c)
{
	pthread_mutex_lock(&q->rlock);
	c->next_free = q->free_readers;
	q->free_readers = c;
	pthread_cond_signal(&q->rcond);
	pthread_mutex_unlock(&q->rlock);
}

static char *col_strdup(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	return t ? xstrdup((const char *)t) : NULL;
}

static void row_to_job(sqlite3_stmt *st, struct proto_job *j)
{
	memset(j, 0, sizeof(*j));
	j->id = sqlite3_column_int64(st, 0);
	j->name = col_strdup(st, 1);
	j->state = (enum job_state)sqlite3_column_int(st, 2);
	j->priority = sqlite3_column_int64(st, 3);
	j->attempt = sqlite3_column_int64(st, 4);
	j->max_attempts = sqlite3_column_int64(st, 5);
	j->fence = sqlite3_column_int64(st, 6);
	j->agent_id = sqlite3_column_int64(st, 7);
	j->runs_on = col_strdup(st, 8);
	j->needs.slots = 1;
	j->needs.cpus = sqlite3_column_double(st, 9);
	j->needs.memory = (uint64_t)sqlite3_column_int64(st, 10);
	j->needs.gpus = sqlite3_column_int64(st, 11);
	j->timeout_ms = (uint64_t)sqlite3_column_int64(st, 12);
	j->submitted_at = (uint64_t)sqlite3_column_int64(st, 13);
	j->leased_at = (uint64_t)sqlite3_column_int64(st, 14);
	j->started_at = (uint64_t)sqlite3_column_int64(st, 15);
	j->finished_at = (uint64_t)sqlite3_column_int64(st, 16);
	if (sqlite3_column_type(st, 17) != SQLITE_NULL) {
		j->has_exit_code = true;
		j->exit_code = sqlite3_column_int(st, 17);
	}
	j->message = col_strdup(st, 18);
	j->retry_of = sqlite3_column_int64(st, 19);
	j->org_id = sqlite3_column_int64(st, 20);
}

/* Reads USAGE_COLS starting at column `first`. */
static void row_to_usage(sqlite3_stmt *st, int first, struct proto_usage *u)
{
	memset(u, 0, sizeof(*u));
	u->reported = sqlite3_column_int(st, first) != 0;
	u->queue_wait_ms = (uint64_t)sqlite3_column_int64(st, first + 1);
	u->wall_ms = (uint64_t)sqlite3_column_int64(st, first + 2);
	u->cpu_user_ms = (uint64_t)sqlite3_column_int64(st, first + 3);
	u->cpu_system_ms = (uint64_t)sqlite3_column_int64(st, first + 4);
	u->memory_peak_bytes = (uint64_t)sqlite3_column_int64(st, first + 5);
	u->io_read_bytes = (uint64_t)sqlite3_column_int64(st, first + 6);
	u->io_write_bytes = (uint64_t)sqlite3_column_int64(st, first + 7);
	u->oom_kills = (uint64_t)sqlite3_column_int64(st, first + 8);
	u->gpus = sqlite3_column_int64(st, first + 9);
	const unsigned char *ex = sqlite3_column_text(st, first + 10);
	if (ex)
		snprintf(u->executor, sizeof(u->executor), "%s", (const char *)ex);
}

static int load_attempts(struct conn *c, struct proto_job *j)
{
	sqlite3_stmt *st = stmt(c, ST_ATTEMPTS_GET);
	sqlite3_bind_int64(st, 1, j->id);
	size_t cap = 0;
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		j->attempts = xgrow(j->attempts, &cap, j->n_attempts + 1, sizeof(*j->attempts));
		struct proto_attempt *a = &j->attempts[j->n_attempts++];
		memset(a, 0, sizeof(*a));
		a->attempt = sqlite3_column_int64(st, 0);
		a->fence = sqlite3_column_int64(st, 1);
		a->agent_id = sqlite3_column_int64(st, 2);
		a->agent_name = col_strdup(st, 3);
		a->state = (enum job_state)sqlite3_column_int(st, 4);
		a->leased_at = (uint64_t)sqlite3_column_int64(st, 5);
		a->started_at = (uint64_t)sqlite3_column_int64(st, 6);
		a->finished_at = (uint64_t)sqlite3_column_int64(st, 7);
		if (sqlite3_column_type(st, 8) != SQLITE_NULL) {
			a->has_exit_code = true;
			a->exit_code = sqlite3_column_int(st, 8);
		}
		a->message = col_strdup(st, 9);
		row_to_usage(st, 10, &a->usage);
		proto_usage_add(&j->usage, &a->usage);
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc == SQLITE_DONE ? 0 : sq_errno(rc);
}

static int load_spec(struct conn *c, struct proto_job *j)
{
	sqlite3_stmt *st = stmt(c, ST_JOB_GET_SPEC);
	sqlite3_bind_int64(st, 1, j->id);
	int rc = sqlite3_step(st);
	int r = 0;
	if (rc == SQLITE_ROW) {
		const char *text = (const char *)sqlite3_column_text(st, 0);
		json_error_t jerr;
		j->spec = text ? json_loads(text, 0, &jerr) : NULL;
	} else if (rc != SQLITE_DONE) {
		r = sq_errno(rc);
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return r;
}

/* A read transaction so that the job, its spec and attempts are one snapshot. */
static int sq_job_get(struct store *s, int64_t id, unsigned flags, struct proto_job *ret)
{
	struct sqlite_store *q = to_sq(s);
	struct conn *c = reader_get(q);
	int r = sq_errno(sqlite3_exec(c->db, "BEGIN", NULL, NULL, NULL));
	struct proto_job j = {0};
	if (r >= 0) {
		sqlite3_stmt *st = stmt(c, ST_JOB_GET);
		sqlite3_bind_int64(st, 1, id);
		int rc = sqlite3_step(st);
		if (rc == SQLITE_ROW)
			row_to_job(st, &j);
		else
			r = rc == SQLITE_DONE ? -ENOENT : sq_errno(rc);
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
	}
	if (r >= 0 && (flags & PROTO_JOB_SPEC))
		r = load_spec(c, &j);
	if (r >= 0 && (flags & PROTO_JOB_ATTEMPTS))
		r = load_attempts(c, &j);
	sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL);
	reader_put(q, c);
	if (r < 0) {
		proto_job_release(&j);
		return r;
	}
	*ret = j;
	return 0;
}

static int sq_job_list(struct store *s, const struct store_job_filter *f, struct proto_job **ret,
		       size_t *ret_n)
{
	struct buf sql = BUF_INIT;
	buf_puts(&sql, "SELECT " JOB_COLS " FROM jobs WHERE 1");
	if (f->states) {
		buf_puts(&sql, " AND state IN (");
		bool first = true;
		for (int i = 0; i < JOB_STATE_MAX; i++)
			if (f->states & (1u << i)) {
				buf_printf(&sql, "%s%d", first ? "" : ",", i);
				first = false;
			}
		buf_puts(&sql, ")");
	}
	if (f->label)
		buf_puts(&sql, " AND instr(',' || runs_on || ',', ',' || ?1 || ',') > 0");
	if (f->name)
		buf_puts(&sql, " AND name = ?2");
	if (f->before_id > 0)
		buf_puts(&sql, " AND id < ?3");
	if (f->org_id > 0)
		buf_puts(&sql, " AND org_id = ?5");
	buf_puts(&sql, " ORDER BY id DESC LIMIT ?4");

	struct sqlite_store *q = to_sq(s);
	struct conn *c = reader_get(q);
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(c->db, sql.data, -1, &st, NULL);
	buf_release(&sql);
	if (rc != SQLITE_OK) {
		reader_put(q, c);
		return sq_errno(rc);
	}
	if (f->label)
		sqlite3_bind_text(st, 1, f->label, -1, SQLITE_STATIC);
	if (f->name)
		sqlite3_bind_text(st, 2, f->name, -1, SQLITE_STATIC);
	if (f->before_id > 0)
		sqlite3_bind_int64(st, 3, f->before_id);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)(f->limit ? f->limit : 100));
	if (f->org_id > 0)
		sqlite3_bind_int64(st, 5, f->org_id);
	struct proto_job *v = NULL;
	size_t n = 0, cap = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		v = xgrow(v, &cap, n + 1, sizeof(*v));
		row_to_job(st, &v[n++]);
	}
	sqlite3_finalize(st);
	reader_put(q, c);
	if (rc != SQLITE_DONE) {
		proto_jobs_free(v, n);
		return sq_errno(rc);
	}
	*ret = v;
	*ret_n = n;
	return 0;
}

static void row_to_artifact(sqlite3_stmt *st, int64_t job_id, struct proto_artifact *a)
{
	memset(a, 0, sizeof(*a));
	a->job_id = job_id;
	a->path = col_strdup(st, 0);
	a->attempt = sqlite3_column_int64(st, 1);
	const unsigned char *h = sqlite3_column_text(st, 2);
	snprintf(a->sha256, sizeof(a->sha256), "%s", h ? (const char *)h : "");
	a->size = (uint64_t)sqlite3_column_int64(st, 3);
	a->created_at = (uint64_t)sqlite3_column_int64(st, 4);
}

static int sq_artifact_list(struct store *s, int64_t job_id, struct proto_artifact **ret,
			    size_t *ret_n)
{
	struct sqlite_store *q = to_sq(s);
	struct conn *c = reader_get(q);
	sqlite3_stmt *st = stmt(c, ST_ARTIFACT_LIST);
	sqlite3_bind_int64(st, 1, job_id);
	struct proto_artifact *v = NULL;
	size_t n = 0, cap = 0;
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		v = xgrow(v, &cap, n + 1, sizeof(*v));
		row_to_artifact(st, job_id, &v[n++]);
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	reader_put(q, c);
	if (rc != SQLITE_DONE) {
		proto_artifacts_free(v, n);
		return sq_errno(rc);
	}
	*ret = v;
	*ret_n = n;
	return 0;
}

static int sq_artifact_get(struct store *s, int64_t job_id, const char *path,
			   struct proto_artifact *ret)
{
	struct sqlite_store *q = to_sq(s);
	struct conn *c = reader_get(q);
	sqlite3_stmt *st = stmt(c, ST_ARTIFACT_GET);
	sqlite3_bind_int64(st, 1, job_id);
	sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	int r = 0;
	if (rc == SQLITE_ROW)
		row_to_artifact(st, job_id, ret);
	else
		r = rc == SQLITE_DONE ? -ENOENT : sq_errno(rc);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	reader_put(q, c);
	return r;
}

static int sq_job_spec(struct store *s, int64_t id, char **ret)
{
	struct sqlite_store *q = to_sq(s);
	struct conn *c = reader_get(q);
	sqlite3_stmt *st = stmt(c, ST_JOB_SPEC);
	sqlite3_bind_int64(st, 1, id);
	int rc = sqlite3_step(st);
	int r = 0;
	if (rc == SQLITE_ROW)
		*ret = xstrdup((const char *)sqlite3_column_text(st, 0));
	else
		r = rc == SQLITE_DONE ? -ENOENT : sq_errno(rc);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	reader_put(q, c);
	return r;
}

static int sq_blob_referenced(struct store *s, const char *sha256)
{
	struct sqlite_store *q = to_sq(s);
	struct conn *c = reader_get(q);
	sqlite3_stmt *st = stmt(c, ST_BLOB_REF);
	sqlite3_bind_text(st, 1, sha256, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	int r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : sq_errno(rc);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	reader_put(q, c);
	return r;
}

static int query_max(struct conn *c, const char *sql, int64_t *ret)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return sq_errno(rc);
	rc = sqlite3_step(st);
	*ret = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : sq_errno(rc);
}

static int sq_load(struct store *s, void (*on_job)(void *, const struct proto_job *),
		   void (*on_agent)(void *, const struct proto_agent *), void *ud,
		   struct store_load_info *ret)
{
	struct sqlite_store *q = to_sq(s);
	struct conn *c = reader_get(q);
	struct store_load_info info = {0};
	int r = sq_errno(sqlite3_exec(c->db, "BEGIN", NULL, NULL, NULL));
	if (r >= 0)
		r = query_max(c, "SELECT coalesce(max(id), 0) FROM jobs", &info.max_job_id);
	if (r >= 0)
		r = query_max(c, "SELECT coalesce(max(fence), 0) FROM attempts", &info.max_fence);
	if (r >= 0)
		r = query_max(c, "SELECT coalesce(max(id), 0) FROM agents", &info.max_agent_id);
	if (r >= 0)
		r = query_max(c,
			      "SELECT coalesce(max(CAST(value AS INTEGER)), 0) FROM meta "
			      "WHERE key = 'fence_reserved'",
			      &info.fence_reserved);

	sqlite3_stmt *st = NULL;
	if (r >= 0)
		r = sq_errno(sqlite3_prepare_v2(c->db,
						"SELECT id, name, labels, slots, cpus, memory, gpus, "
						"draining, registered_at, org_id FROM agents ORDER BY id",
						-1, &st, NULL));
	int rc = SQLITE_DONE;
	while (r >= 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct proto_agent a = {0};
		a.id = sqlite3_column_int64(st, 0);
		a.name = col_strdup(st, 1);
		a.labels = proto_labels_split((const char *)sqlite3_column_text(st, 2), &a.n_labels);
		a.capacity.slots = sqlite3_column_int64(st, 3);
		a.capacity.cpus = sqlite3_column_double(st, 4);
		a.capacity.memory = (uint64_t)sqlite3_column_int64(st, 5);
		a.capacity.gpus = sqlite3_column_int64(st, 6);
		a.draining = sqlite3_column_int(st, 7) != 0;
		a.registered_at = (uint64_t)sqlite3_column_int64(st, 8);
		a.org_id = sqlite3_column_int64(st, 9);
		on_agent(ud, &a);
		proto_agent_release(&a);
		info.n_agents++;
	}
	if (r >= 0 && rc != SQLITE_DONE)
		r = sq_errno(rc);
	sqlite3_finalize(st);
	st = NULL;

	if (r >= 0)
		r = sq_errno(sqlite3_prepare_v2(c->db,
						"SELECT " JOB_COLS " FROM jobs WHERE state IN (0, 1, 2) "
						"ORDER BY id",
						-1, &st, NULL));
	while (r >= 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct proto_job j;
		row_to_job(st, &j);
		on_job(ud, &j);
		proto_job_release(&j);
		info.n_jobs++;
	}
	if (r >= 0 && rc != SQLITE_DONE)
		r = sq_errno(rc);
	sqlite3_finalize(st);
	sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL);
	reader_put(q, c);
	if (r < 0)
		return r;
	*ret = info;
	return 0;
}

/* ---- accounting and reports ----------------------------------------------- */

/* The name of the org a job belongs to, as an SQL expression over `j` (jobs). */
#define ORG_OF_JOB "coalesce((SELECT o.name FROM orgs o WHERE o.id = j.org_id), '?')"

/* WHERE clause of a window over attempts `a`: ?1 since, ?2 until (0 = none), ?3 org. */
static void window_sql(struct buf *sql, const struct store_window *w)
{
	buf_puts(sql, " WHERE a.finished_at > 0 AND a.finished_at >= ?1");
	if (w->until)
		buf_puts(sql, " AND a.finished_at < ?2");
	if (w->org)
		buf_puts(sql, " AND " ORG_OF_JOB " = ?3");
}

static void window_bind(sqlite3_stmt *st, const struct store_window *w)
{
	sqlite3_bind_int64(st, 1, (sqlite3_int64)w->since);
	if (w->until)
		sqlite3_bind_int64(st, 2, (sqlite3_int64)w->until);
	if (w->org)
		sqlite3_bind_text(st, 3, w->org, -1, SQLITE_STATIC);
}

static int sq_usage(struct store *s, const struct store_window *w, struct store_usage_row **ret,
		    size_t *ret_n)
{
	struct buf sql = BUF_INIT;
	buf_puts(&sql, "SELECT " ORG_OF_JOB " AS org, count(DISTINCT a.job_id), count(*), "
		       "max(a.usage_reported), sum(a.queue_wait_ms), sum(a.wall_ms), "
		       "sum(a.cpu_user_ms), sum(a.cpu_system_ms), max(a.memory_peak_bytes), "
		       "sum(a.io_read_bytes), sum(a.io_write_bytes), sum(a.oom_kills), max(a.gpus), "
		       "sum(a.gpus * a.wall_ms), "
		       "total(CAST(a.memory_peak_bytes AS REAL) * a.wall_ms) / 1000.0 "
		       "FROM attempts a JOIN jobs j ON j.id = a.job_id");
	window_sql(&sql, w);
	buf_puts(&sql, " GROUP BY org ORDER BY org");
	struct sqlite_store *q = to_sq(s);
	struct conn *c = reader_get(q);
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(c->db, sql.data, -1, &st, NULL);
	buf_release(&sql);
	if (rc != SQLITE_OK) {
		reader_put(q, c);
		return sq_errno(rc);
	}
	window_bind(st, w);
	struct store_usage_row *v = NULL;
	size_t n = 0, cap = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		v = xgrow(v, &cap, n + 1, sizeof(*v));
		struct store_usage_row *row = &v[n++];
		memset(row, 0, sizeof(*row));
		row->org = col_strdup(st, 0);
		row->jobs = sqlite3_column_int64(st, 1);
		row->attempts = sqlite3_column_int64(st, 2);
		struct proto_usage *u = &row->sum;
		u->reported = sqlite3_column_int(st, 3) != 0;
		u->queue_wait_ms = (uint64_t)sqlite3_column_int64(st, 4);
		u->wall_ms = (uint64_t)sqlite3_column_int64(st, 5);
		u->cpu_user_ms = (uint64_t)sqlite3_column_int64(st, 6);
		u->cpu_system_ms = (uint64_t)sqlite3_column_int64(st, 7);
		u->memory_peak_bytes = (uint64_t)sqlite3_column_int64(st, 8);
		u->io_read_bytes = (uint64_t)sqlite3_column_int64(st, 9);
		u->io_write_bytes = (uint64_t)sqlite3_column_int64(st, 10);
		u->oom_kills = (uint64_t)sqlite3_column_int64(st, 11);
		u->gpus = sqlite3_column_int64(st, 12);
		row->gpu_ms = (uint64_t)sqlite3_column_int64(st, 13);
		row->memory_byte_seconds = sqlite3_column_double(st, 14);
	}
	sqlite3_finalize(st);
	reader_put(q, c);
	if (rc != SQLITE_DONE) {
		store_usage_rows_free(v, n);
		return sq_errno(rc);
	}
	*ret = v;
	*ret_n = n;
	return 0;
}

static int sq_attempts_scan(struct store *s, const struct store_window *w,
			    int (*fn)(void *ud, const struct store_attempt_row *row), void *ud)
{
	struct buf sql = BUF_INIT;
	buf_puts(&sql, "SELECT a.job_id, a.attempt, a.agent_id, g.name, j.runs_on, " ORG_OF_JOB
		       ", a.state, a.attempt = j.attempt AND j.state >= 3, a.leased_at, "
		       "a.started_at, a.finished_at, a.message, " USAGE_COLS
		       " FROM attempts a JOIN jobs j ON j.id = a.job_id "
		       "LEFT JOIN agents g ON g.id = a.agent_id");
	window_sql(&sql, w);
	buf_puts(&sql, " ORDER BY a.finished_at");
	struct sqlite_store *q = to_sq(s);
	struct conn *c = reader_get(q);
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(c->db, sql.data, -1, &st, NULL);
	buf_release(&sql);
	if (rc != SQLITE_OK) {
		reader_put(q, c);
		return sq_errno(rc);
	}
	window_bind(st, w);
	int r = 0;
	while (r >= 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_attempt_row row = {
			.job_id = sqlite3_column_int64(st, 0),
			.attempt = sqlite3_column_int64(st, 1),
			.agent_id = sqlite3_column_int64(st, 2),
			.agent_name = (const char *)sqlite3_column_text(st, 3),
			.runs_on = (const char *)sqlite3_column_text(st, 4),
			.org = (const char *)sqlite3_column_text(st, 5),
			.state = (enum job_state)sqlite3_column_int(st, 6),
			.final = sqlite3_column_int(st, 7) != 0,
			.leased_at = (uint64_t)sqlite3_column_int64(st, 8),
			.started_at = (uint64_t)sqlite3_column_int64(st, 9),
			.finished_at = (uint64_t)sqlite3_column_int64(st, 10),
			.message = (const char *)sqlite3_column_text(st, 11),
		};
		row_to_usage(st, 12, &row.usage);
		r = fn(ud, &row);
	}
	if (r >= 0 && rc != SQLITE_DONE && rc != SQLITE_ROW)
		r = sq_errno(rc);
	sqlite3_finalize(st);
	reader_put(q, c);
	return r;
}

/* ---- checkpoints ---------------------------------------------------------- */

/* Checkpoint once the WAL has this many frames (32 MiB): hot pages rewritten
 * many times between two checkpoints are copied once. Past CKPT_TRUNCATE
 * frames (512 MiB) the checkpoint waits for a full one, bounding the WAL. */
#define CKPT_FRAMES 8192
#define CKPT_TRUNCATE 131072
#define CKPT_FINISH 512 /* the writer copies the last frames itself (see finish_checkpoint) */

/* Writer thread, after each commit. */
static int wal_hook(void *ud, sqlite3 *db, const char *name, int frames)
{
	(void)db;
	(void)name;
	struct sqlite_store *q = ud;
	pthread_mutex_lock(&q->ckpt_lock);
	q->wal_frames = frames;
	pthread_mutex_unlock(&q->ckpt_lock);
	if (frames >= CKPT_FRAMES) {
		pthread_mutex_lock(&q->ckpt_lock);
		if (!q->ckpt_wanted) {
			q->ckpt_wanted = true;
			pthread_cond_signal(&q->ckpt_cond);
		}
		pthread_mutex_unlock(&q->ckpt_lock);
	}
	return SQLITE_OK;
}

static void *ckpt_main(void *p)
{
	struct sqlite_store *q = p;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	pthread_mutex_lock(&q->ckpt_lock);
	while (q->ckpt_running) {
		if (!q->ckpt_wanted) {
			pthread_cond_wait(&q->ckpt_cond, &q->ckpt_lock);
			continue;
		}
		q->ckpt_wanted = false;
		int frames = q->wal_frames;
		q->ckpt_busy = true;
		pthread_mutex_unlock(&q->ckpt_lock);
		int log = 0, done = 0;
		/* PASSIVE never blocks the writer; a WAL that keeps growing under
		 * load gets a TRUNCATE, which waits for the writer between two
		 * commits and starts the WAL afresh. */
		int mode = frames >= CKPT_TRUNCATE ? SQLITE_CHECKPOINT_TRUNCATE
						   : SQLITE_CHECKPOINT_PASSIVE;
		int rc = sqlite3_wal_checkpoint_v2(q->ckpt.db, "main", mode, &log, &done);
		pthread_mutex_lock(&q->ckpt_lock);
		q->ckpt_busy = false;
		pthread_mutex_unlock(&q->ckpt_lock);
		if (rc != SQLITE_OK && rc != SQLITE_BUSY)
			log_warn("sqlite checkpoint failed error=\"%s\"", sqlite3_errmsg(q->ckpt.db));
		pthread_mutex_lock(&q->ckpt_lock);
		if (rc == SQLITE_OK) {
			q->ckpt_log = log;
			q->ckpt_done = done;
			/* Chase the frames committed meanwhile (each round is
			 * shorter) until the writer can finish the last few. */
			if (done == log && q->wal_frames >= log &&
			    q->wal_frames - done > CKPT_FINISH)
				q->ckpt_wanted = true;
		}
	}
	pthread_mutex_unlock(&q->ckpt_lock);
	return NULL;
}

/*
 * Writer thread, after a commit. Under steady load the background
 * checkpointer never catches up with the writer entirely, so SQLite never
 * restarts the WAL from its beginning: the WAL keeps growing, and a commit
 * that appends to a file costs an fdatasync with a metadata update (about 4x
 * an overwrite's on ext4). When the checkpointer has copied all but a few
 * frames, the writer copies the rest itself — cheap, and between two of its
 * own transactions, so nothing is left behind — and its next transaction
 * starts the WAL afresh, overwriting instead of appending.
 */
static void finish_checkpoint(struct sqlite_store *q)
{
	pthread_mutex_lock(&q->ckpt_lock);
	bool go = !q->ckpt_busy && q->wal_frames >= CKPT_FRAMES && q->ckpt_log <= q->wal_frames &&
		  q->ckpt_done == q->ckpt_log && q->wal_frames - q->ckpt_done <= CKPT_FINISH;
	pthread_mutex_unlock(&q->ckpt_lock);
	if (!go)
		return;
	int log = 0, done = 0;
	int rc = sqlite3_wal_checkpoint_v2(q->writer.db, "main", SQLITE_CHECKPOINT_PASSIVE, &log,
					   &done);
	if (rc == SQLITE_OK) {
		pthread_mutex_lock(&q->ckpt_lock);
		q->ckpt_log = log;
		q->ckpt_done = done;
		pthread_mutex_unlock(&q->ckpt_lock);
	}
}

/* ---- open/close ----------------------------------------------------------- */

static void sq_close(struct store *s)
{
	struct sqlite_store *q = to_sq(s);
	if (q->ckpt_running) {
		pthread_mutex_lock(&q->ckpt_lock);
		q->ckpt_running = false;
		pthread_cond_signal(&q->ckpt_cond);
		pthread_mutex_unlock(&q->ckpt_lock);
		pthread_join(q->ckpt_thread, NULL);
	}
	conn_close(&q->ckpt);
	pthread_mutex_destroy(&q->ckpt_lock);
	pthread_cond_destroy(&q->ckpt_cond);
	for (int i = 0; i < N_READERS; i++)
		conn_close(&q->readers[i]);
	sq_tenancy_close(q->tenancy); /* its statements, before their connection */
	conn_close(&q->writer);
	pthread_mutex_destroy(&q->rlock);
	pthread_cond_destroy(&q->rcond);
	free(q->path);
	free(q);
}

static void sq_stats(struct store *s, struct store_stats *st)
{
	struct sqlite_store *q = to_sq(s);
	pthread_mutex_lock(&q->ckpt_lock);
	st->wal_frames = (uint64_t)q->wal_frames;
	/* A checkpoint covers the WAL as it was; frames past it are pending. */
	st->wal_checkpointed = q->ckpt_log <= q->wal_frames ? (uint64_t)q->ckpt_done : 0;
	if (st->wal_checkpointed > st->wal_frames)
		st->wal_checkpointed = st->wal_frames;
	pthread_mutex_unlock(&q->ckpt_lock);
}

static const struct store_ops sqlite_ops = {
	.name = "sqlite",
	.close = sq_close,
	.begin = sq_begin,
	.apply = sq_apply,
	.commit = sq_commit,
	.load = sq_load,
	.job_get = sq_job_get,
	.job_spec = sq_job_spec,
	.job_list = sq_job_list,
	.artifact_list = sq_artifact_list,
	.artifact_get = sq_artifact_get,
	.blob_referenced = sq_blob_referenced,
	.stats = sq_stats,
	.usage = sq_usage,
	.attempts_scan = sq_attempts_scan,
	.orgs_list = sq_orgs_list,
	.tokens_list = sq_tokens_list,
	.token_find = sq_token_find,
	.keys_list = sq_keys_list,
	.secrets_list = sq_secrets_list,
	.secret_get = sq_secret_get,
	.secret_max_version = sq_secret_max_version,
	.audit_list = sq_audit_list,
	.audit_verify = sq_audit_verify,
	.webhook_seen = sq_webhook_seen,
	.webhook_deliveries = sq_webhook_deliveries,
	.webhook_event_job = sq_webhook_event_job,
};

sqlite3 *sq_reader_get(struct store *s) { return reader_get(to_sq(s))->db; }

void sq_reader_put(struct store *s, sqlite3 *db)
{
	struct sqlite_store *q = to_sq(s);
	for (int i = 0; i < N_READERS; i++)
		if (q->readers[i].db == db) {
			reader_put(q, &q->readers[i]);
			return;
		}
}

int store_sqlite_open(const char *path, const struct store_options *o, struct store **ret,
		      struct kiln_err *err)
{
	if (!sqlite3_threadsafe())
		return kiln_err_set(err, -ENOTSUP, "this SQLite library is built without threads");
	struct sqlite_store *q = xcalloc(1, sizeof(*q));
	q->base.ops = &sqlite_ops;
	q->path = xstrdup(path);
	pthread_mutex_init(&q->rlock, NULL);
	pthread_cond_init(&q->rcond, NULL);
	pthread_mutex_init(&q->ckpt_lock, NULL);
	pthread_cond_init(&q->ckpt_cond, NULL);
	int r = conn_open(&q->writer, path, true, o->durable, err);
	if (r >= 0)
		r = create_schema(&q->writer, path, err);
	if (r >= 0)
		r = sq_tenancy_open(q->writer.db, &q->tenancy, err);
	for (int i = 0; r >= 0 && i < N_READERS; i++) {
		r = conn_open(&q->readers[i], path, false, o->durable, err);
		q->readers[i].next_free = q->free_readers;
		q->free_readers = &q->readers[i];
	}
	if (r >= 0)
		r = conn_open(&q->ckpt, path, false, o->durable, err);
	if (r >= 0) {
		/* The checkpointer writes the database file: not query_only. */
		sqlite3_exec(q->ckpt.db, "PRAGMA query_only = 0", NULL, NULL, NULL);
		sqlite3_wal_hook(q->writer.db, wal_hook, q);
		q->ckpt_running = true;
		r = -pthread_create(&q->ckpt_thread, NULL, ckpt_main, q);
		if (r < 0) {
			q->ckpt_running = false;
			kiln_err_set(err, r, "cannot start the checkpoint thread");
		}
	}
	if (r < 0) {
		sq_close(&q->base);
		return r;
	}
	*ret = &q->base;
	return 0;
}
