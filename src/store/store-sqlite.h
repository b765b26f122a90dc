/*
 * store-sqlite: what the SQLite backend's files share. store-sqlite.c owns
 * the connections, the writer and the jobs/agents tables; store-sqlite-
 * tenancy.c the orgs, tokens, keys, secrets, audit and webhook tables.
 */
#pragma once

#include "store-internal.h"

#include <sqlite3.h>

/* SQLite result code -> -errno (SQLITE_CONSTRAINT -> -EEXIST). */
int sq_errno(int rc);

/*
 * The name of the VFS that writes a commit's WAL frames with one write
 * (store-sqlite-vfs.c), registered on first call; NULL if it could not be.
 * sq_walbuf_writes counts the buffers it has written (for tests).
 */
const char *sq_walbuf_vfs(void);
uint64_t sq_walbuf_writes(void);

/* A read connection (blocks until one is free) and its return. */
sqlite3 *sq_reader_get(struct store *s);
void sq_reader_put(struct store *s, sqlite3 *db);

/* The SQL that upgrades the schema from version v - 1 to v, or NULL. */
const char *sq_tenancy_migration(int v);

/* Writer-side state of the tenancy tables (the audit chain's head). */
struct sq_tenancy;
int sq_tenancy_open(sqlite3 *writer, struct sq_tenancy **ret, struct kiln_err *err);
void sq_tenancy_close(struct sq_tenancy *t);
/* Applies a tenancy mutation kind (store.h); -EINVAL for any other kind. */
int sq_tenancy_apply(struct sq_tenancy *t, sqlite3 *db, struct store_mut *m);
/*
 * Appends m->audit with the outcome `result` of the mutation (0/1 applied,
 * < 0 refused), chained to the previous record. Writer thread only.
 */
int sq_tenancy_audit(struct sq_tenancy *t, sqlite3 *db, struct store_mut *m, int result);
/*
 * A write transaction began on the writer: the audit head is read afresh by
 * its first append (another process may have appended since the last one)
 * and then kept for the rest of the transaction, which holds the write lock.
 */
void sq_tenancy_begin(struct sq_tenancy *t);

/* Reads (store.h). */
int sq_orgs_list(struct store *s, struct proto_org **ret, size_t *ret_n);
int sq_tokens_list(struct store *s, int64_t org_id, struct proto_token **ret, size_t *ret_n);
int sq_token_find(struct store *s, const char *hash, struct proto_token *ret);
int sq_keys_list(struct store *s, struct store_key **ret, size_t *ret_n);
int sq_secrets_list(struct store *s, int64_t org_id, bool with_values, struct store_secret **ret,
		    size_t *ret_n);
int sq_secret_get(struct store *s, int64_t org_id, const char *name, struct store_secret *ret);
int sq_secret_max_version(struct store *s, int64_t *ret);
int sq_audit_list(struct store *s, const struct store_audit_filter *f, struct proto_audit **ret,
		  size_t *ret_n);
int sq_audit_verify(struct store *s, int64_t *ret_n, int64_t *ret_bad_seq);
int sq_webhook_seen(struct store *s, int64_t org_id, const char *delivery, int64_t gh_job_id,
		    int64_t run_attempt, const char *action);
int sq_webhook_deliveries(struct store *s, int64_t org_id, size_t limit,
			  struct store_delivery **ret, size_t *ret_n);
int sq_webhook_event_job(struct store *s, int64_t org_id, int64_t gh_job_id, int64_t run_attempt,
			 const char *action, int64_t *ret_job_id);
