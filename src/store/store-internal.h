/*
 * store-internal: the backend vtable behind store.h. A backend embeds
 * struct store as its first member and fills `ops`; store.c owns the writer
 * thread and calls begin/apply.../commit on it, never concurrently.
 */
#pragma once

#include "store.h"

#include <pthread.h>
#include <stdatomic.h>

struct store_ops {
	const char *name;
	void (*close)(struct store *s);
	/* Writer side: called only from the writer thread. */
	int (*begin)(struct store *s);
	/* 0/1 as store_mut.result, -ESTALE/-ENOENT refused; other < 0 is fatal. */
	int (*apply)(struct store *s, struct store_mut *m);
	int (*commit)(struct store *s);
	/* Reads: any thread. */
	int (*load)(struct store *s, void (*on_job)(void *, const struct proto_job *),
		    void (*on_agent)(void *, const struct proto_agent *), void *ud,
		    struct store_load_info *ret);
	int (*job_get)(struct store *s, int64_t id, unsigned flags, struct proto_job *ret);
	int (*job_spec)(struct store *s, int64_t id, char **ret);
	int (*job_list)(struct store *s, const struct store_job_filter *f,
			struct proto_job **ret, size_t *ret_n);
	int (*artifact_list)(struct store *s, int64_t job_id, struct proto_artifact **ret,
			     size_t *ret_n);
	int (*artifact_get)(struct store *s, int64_t job_id, const char *path,
			    struct proto_artifact *ret);
	int (*blob_referenced)(struct store *s, const char *sha256);
	/* Optional: backend figures for store_get_stats (wal_*). */
	void (*stats)(struct store *s, struct store_stats *st);
	int (*usage)(struct store *s, const struct store_window *w, struct store_usage_row **ret,
		     size_t *ret_n);
	int (*attempts_scan)(struct store *s, const struct store_window *w,
			     int (*fn)(void *ud, const struct store_attempt_row *row), void *ud);
	/* tenancy */
	int (*orgs_list)(struct store *s, struct proto_org **ret, size_t *ret_n);
	int (*tokens_list)(struct store *s, int64_t org_id, struct proto_token **ret, size_t *ret_n);
	int (*token_find)(struct store *s, const char *hash, struct proto_token *ret);
	int (*keys_list)(struct store *s, struct store_key **ret, size_t *ret_n);
	int (*secrets_list)(struct store *s, int64_t org_id, bool with_values,
			    struct store_secret **ret, size_t *ret_n);
	int (*secret_get)(struct store *s, int64_t org_id, const char *name,
			  struct store_secret *ret);
	int (*secret_max_version)(struct store *s, int64_t *ret);
	int (*audit_list)(struct store *s, const struct store_audit_filter *f,
			  struct proto_audit **ret, size_t *ret_n);
	int (*audit_verify)(struct store *s, int64_t *ret_n, int64_t *ret_bad_seq);
	int (*webhook_seen)(struct store *s, int64_t org_id, const char *delivery,
			    int64_t gh_job_id, int64_t run_attempt, const char *action);
	int (*webhook_deliveries)(struct store *s, int64_t org_id, size_t limit,
				  struct store_delivery **ret, size_t *ret_n);
	int (*webhook_event_job)(struct store *s, int64_t org_id, int64_t gh_job_id,
				 int64_t run_attempt, const char *action, int64_t *ret_job_id);
};

struct store {
	const struct store_ops *ops;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct store_mut *head, **tail;
	bool stopping;
	bool running;
	pthread_t thread;
	struct store_stats stats;
	uint64_t next_seq;
	_Atomic uint64_t committed_seq;
};

/* Backends. */
int store_sqlite_open(const char *path, const struct store_options *o, struct store **ret,
		      struct kiln_err *err);
