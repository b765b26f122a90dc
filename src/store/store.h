/*
 * store: kiln's persistence interface. The store is the source of truth for
 * jobs, attempts, agents and artifact metadata; the server keeps only
 * indexes in memory and rebuilds them from store_load() at start.
 *
 * Writes are mutations (struct store_mut) queued to one writer thread that
 * applies every queued mutation in one transaction and commits it (group
 * commit: one fsync for the batch), then calls each mutation's `done`
 * callback. A mutation is durable when its callback runs; the server answers
 * 2xx only from there.
 *
 * Every agent-side mutation is conditional on the job's fence and state in
 * the store itself (`UPDATE ... WHERE fence = ? AND state IN (...)`), so a
 * stale writer is refused by the store even if a cache above it were wrong:
 * that is what keeps "at most one accepted result per job" with several
 * servers on one database (PostgreSQL, later).
 *
 * Failure policy: a store error other than a refused condition (I/O error,
 * full disk, failed fsync) is not retried: the writer logs it and aborts the
 * process (fail-stop, as PostgreSQL does after fsyncgate). Nothing was
 * acknowledged for the failed batch, and the next start recovers from the
 * last commit.
 *
 * Backends implement struct store_ops (store-internal.h): "sqlite" now.
 * Thread safety: store_submit() and the read functions may be called from any
 * thread; done callbacks run on the writer thread and must not block.
 */
#pragma once

#include "base/base.h"
#include "proto/proto.h"

struct store;

/* ---- opening -------------------------------------------------------------- */

struct store_options {
	/* SQLite: synchronous=FULL (fsync per commit) when true, NORMAL when
	 * false (only for benchmarks that say so). Default true. */
	bool durable;
};

void store_options_init(struct store_options *o);

/*
 * Opens (creating if needed) the store at `url`: "sqlite:PATH" or a plain
 * path (SQLite). Starts the writer thread. -errno with err set on failure.
 */
int store_open(const char *url, const struct store_options *o, struct store **ret,
	       struct kiln_err *err);
/* Drains the writer queue (every done callback runs), stops it and closes. */
void store_close(struct store *s);
const char *store_backend(const struct store *s);

/* ---- mutations ------------------------------------------------------------ */

/* A job to insert: ids are assigned by the caller (the scheduler). */
struct store_job_new {
	int64_t id;
	const char *name;
	int64_t priority;
	int64_t max_attempts;
	uint64_t timeout_ms;
	const char *runs_on; /* lower-case labels joined with ',' */
	struct proto_capacity needs;
	const char *spec_json;
	uint64_t submitted_at;
	int64_t retry_of;
	int64_t org_id; /* 0: the default org (1) */
};

enum store_mut_kind {
	STORE_JOBS_INSERT,  /* insert.v[0..n) as queued, all or none */
	STORE_JOB_LEASE,    /* queued (at attempt-1) -> leased; new attempt row */
	STORE_JOB_START,    /* leased (fence) -> running; idempotent if running */
	STORE_JOB_FINISH,   /* active (fence), or queued if fence == 0 -> terminal */
	STORE_JOB_REQUEUE,  /* active (fence) -> queued; the attempt ends as attempt_state */
	STORE_AGENT_PUT,    /* insert or update an agent */
	STORE_AGENT_DRAIN,  /* set or clear draining */
	STORE_ARTIFACT_PUT, /* add (or replace) an artifact of an active job (fence) */
	STORE_BARRIER,      /* nothing: done runs after everything queued before it */
	STORE_FENCE_RESERVE, /* record that fences up to `fence_upto` may be handed out */
	STORE_ATTEMPT_USAGE, /* record the agent's usage report of an attempt (fence) once */
	/* tenancy (store-sqlite-tenancy.c) */
	STORE_ORG_CREATE,   /* org.name -> org.ret_id; -EEXIST: the name is taken */
	STORE_TOKEN_CREATE, /* token.t -> token.ret_id; -EEXIST: hash already known */
	STORE_TOKEN_REVOKE, /* token_revoke.id: -ENOENT unknown, 1 already revoked */
	STORE_TOKEN_TOUCH,  /* token_touch: last_used_at (no-op if unknown) */
	STORE_KEYS_PUT,     /* keys.v[0..n): wrapped data keys, all or none (-ESTALE) */
	STORE_SECRET_PUT,   /* secret: insert or replace (org, name) */
	STORE_SECRET_DELETE, /* secret: -ENOENT unknown */
	STORE_AUDIT,        /* nothing but the attached audit record */
	STORE_WEBHOOK_DELIVERY, /* webhook: -EEXIST replay (delivery or job key known) */
	STORE_WEBHOOK_PRUNE, /* webhook_prune: forget delivery ids older than `before` */
	STORE_ORG_LIMITS,   /* org_limits: an org's own cap on running jobs; -ENOENT */
};

/* A wrapped data key (org 0: the server's own key, for job tokens). */
struct store_key {
	int64_t org_id;
	char key_id[17]; /* the master key's id (auth_key_id) */
	/* KEYS_PUT: "" = insert only (-ESTALE if the org has one); else the
	 * row must still be under this master key id (rotation). */
	char expect_key_id[17];
	void *wrapped; /* owned by whoever made the array */
	size_t len;
	uint64_t now;
};

/*
 * An audit record attached to a mutation (store_mut.audit): written in the
 * same transaction, after the mutation, with the mutation's result, and
 * chained to the record before it (hash = SHA-256 over the previous hash and
 * this record). If it cannot be written the store fails (fail-stop), so no
 * mutation is acknowledged without its record.
 */
struct store_audit {
	int64_t org_id;
	int64_t token_id;
	const char *actor;
	const char *action;
	const char *target;
	const char *source;
	int status; /* HTTP status if the mutation applied (or for STORE_AUDIT) */
	uint64_t now;
	/* out: the record's sequence number */
	int64_t ret_seq;
};

struct store_mut {
	enum store_mut_kind kind;
	union {
		struct {
			const struct store_job_new *v;
			size_t n;
		} insert;
		struct {
			int64_t job_id, fence, attempt, agent_id;
			uint64_t now;
			char *ret_spec; /* out: the job's spec JSON; the caller frees */
			uint64_t queue_wait_ms; /* stored with the attempt (usage) */
			int64_t gpus;           /* GPUs the lease holds (usage) */
		} lease;
		struct {
			int64_t job_id, fence;
			uint64_t now;
		} start;
		struct {
			int64_t job_id, fence;
			enum job_state state; /* terminal */
			bool has_exit_code;
			int exit_code;
			const char *message;
			uint64_t now;
			/* out, when refused: the job's state and fence in the store */
			enum job_state ret_state;
			int64_t ret_fence;
		} finish;
		struct {
			int64_t job_id, fence;
			enum job_state attempt_state; /* how the attempt ended (LOST) */
			const char *message;
			uint64_t now;
			bool refund; /* the attempt does not count: max_attempts + 1 */
		} requeue;
		struct {
			int64_t id;
			const char *name;
			const char *labels;
			struct proto_capacity capacity;
			uint64_t now;
			int64_t org_id; /* its pool: 0 = shared */
		} agent;
		struct {
			int64_t id;
			bool draining;
		} drain;
		struct {
			int64_t upto;
		} fence_reserve;
		struct {
			int64_t job_id, fence, attempt;
			const char *path;
			const char *sha256;
			uint64_t size;
			uint64_t now;
		} artifact;
		/*
		 * The agent's measures of the attempt with this fence, whatever
		 * the job's state now (a cancelled attempt used resources too).
		 * Result 1: already recorded (the first report counts); -ENOENT:
		 * no attempt of job_id has this fence. On success, ret_gpus and
		 * ret_queue_wait_ms hold what the lease stored, ret_org_id the
		 * job's org.
		 */
		struct {
			int64_t job_id, fence;
			struct proto_usage usage;
			int64_t ret_gpus;
			uint64_t ret_queue_wait_ms;
			int64_t ret_org_id;
		} usage;
		struct {
			const char *name;
			uint64_t now;
			int64_t ret_id;
		} org;
		struct {
			const struct proto_token *t; /* hash, role, org_id, name, times, created_by */
			int64_t ret_id;
		} token;
		struct {
			int64_t id;
			uint64_t now;
		} token_revoke;
		struct {
			int64_t id;
			uint64_t at;
		} token_touch;
		struct {
			const struct store_key *v;
			size_t n;
		} keys;
		struct {
			int64_t org_id;
			const char *name;
			int64_t version;
			const void *sealed;
			size_t len;
			int64_t by; /* token id */
			uint64_t now;
		} secret;
		struct {
			const char *delivery; /* X-GitHub-Delivery */
			int64_t org_id;
			const char *event;  /* X-GitHub-Event */
			const char *action; /* "" when not a workflow_job */
			int64_t gh_job_id, run_attempt; /* 0 when not a workflow_job */
			const char *outcome; /* what kiln did: "created", "recorded", ... */
			const struct store_job_new *job; /* inserted with it, or NULL */
			uint64_t now;
		} webhook;
		struct {
			uint64_t before;
		} webhook_prune;
		struct {
			int64_t id;
			int64_t max_running; /* 0: the server's default */
		} org_limits;
	};
	/* Optional: the audit record of the call this mutation carries out. */
	struct store_audit *audit;
	/*
	 * Out, set by the writer before `done`: 0 applied; 1 already applied
	 * (a repeated START/FINISH with the same fence and outcome); -ESTALE
	 * refused (fence or state did not match: nothing changed); -ENOENT no
	 * such row; -EEXIST a unique name or key is taken (nothing changed).
	 */
	int result;
	/* Called on the writer thread after the commit; may free `m`. */
	void (*done)(struct store_mut *m, void *userdata);
	void *userdata;
	uint64_t seq;           /* set by store_submit: 1, 2, 3... in queue order */
	struct store_mut *next; /* the writer's queue */
};

/*
 * Queues m (the caller keeps m and what it points to alive until done) and
 * returns its sequence number: m is durable once store_committed_seq()
 * reaches it.
 */
uint64_t store_submit(struct store *s, struct store_mut *m);
/* The sequence number of the last mutation committed (any thread). */
uint64_t store_committed_seq(struct store *s);
/* Queues m and waits for its commit; returns m->result. Not from `done`. */
int store_apply_wait(struct store *s, struct store_mut *m);

struct store_stats {
	uint64_t batches;   /* committed transactions */
	uint64_t mutations; /* mutations applied */
	uint64_t max_batch; /* largest batch */
	uint64_t commit_ns; /* time spent in commit (fsync) */
	/* Write-ahead log (SQLite): frames written since it last restarted, and
	 * how many of them are copied into the database (checkpointed). */
	uint64_t wal_frames, wal_checkpointed;
};
void store_get_stats(struct store *s, struct store_stats *ret);

/* ---- reads (committed state; any thread) ---------------------------------- */

struct store_load_info {
	int64_t max_job_id;
	int64_t max_fence;
	int64_t max_agent_id;
	int64_t fence_reserved; /* the last STORE_FENCE_RESERVE committed (0 if none) */
	size_t n_jobs;
	size_t n_agents;
};

/*
 * Calls on_agent for every agent, then on_job for every queued, leased or
 * running job (in id order; spec, attempts, message not loaded); the records
 * are only valid during the call. Returns the largest ids and fence ever used.
 */
int store_load(struct store *s, void (*on_job)(void *ud, const struct proto_job *j),
	       void (*on_agent)(void *ud, const struct proto_agent *a), void *ud,
	       struct store_load_info *ret);

/* The stored spec JSON of a job (the caller frees); -ENOENT if unknown. */
int store_job_spec(struct store *s, int64_t id, char **ret);

/* -ENOENT if unknown. flags: PROTO_JOB_SPEC, PROTO_JOB_ATTEMPTS. */
int store_job_get(struct store *s, int64_t id, unsigned flags, struct proto_job *ret);

struct store_job_filter {
	unsigned states;   /* bitmask of 1 << JOB_*; 0 = all */
	const char *label; /* jobs whose runs-on has this label (lower-case); NULL = any */
	const char *name;  /* exact name; NULL = any */
	int64_t org_id;    /* jobs of this org; 0 = any */
	int64_t before_id; /* page cursor: ids below this; 0 = from the newest */
	size_t limit;      /* 1..1000 */
};

/* Newest first. *ret_n <= limit; the caller frees with proto_jobs_free. */
int store_job_list(struct store *s, const struct store_job_filter *f, struct proto_job **ret,
		   size_t *ret_n);

int store_artifact_list(struct store *s, int64_t job_id, struct proto_artifact **ret,
			size_t *ret_n);
/* -ENOENT if unknown. */
int store_artifact_get(struct store *s, int64_t job_id, const char *path,
		       struct proto_artifact *ret);
/* Is this sha256 referenced by any artifact row? (for content-store cleanup) */
int store_blob_referenced(struct store *s, const char *sha256);

/* ---- accounting and reports ----------------------------------------------- */

/* Attempts that ended in [since, until) (Unix ms; until 0 = no bound). */
struct store_window {
	uint64_t since, until;
	const char *org; /* NULL: every org */
};

/* Usage summed per org over a window (kiln usage, chargeback). */
struct store_usage_row {
	char *org;
	int64_t jobs;     /* distinct jobs with an attempt in the window */
	int64_t attempts;
	struct proto_usage sum;   /* memory_peak_bytes: the largest */
	uint64_t gpu_ms;             /* sum of gpus x wall */
	double memory_byte_seconds;  /* sum of memory peak x wall (the GB-hours basis) */
};

/* Rows ordered by org; the caller frees with store_usage_rows_free. */
int store_usage(struct store *s, const struct store_window *w, struct store_usage_row **ret,
		size_t *ret_n);
void store_usage_rows_free(struct store_usage_row *v, size_t n);

/* One finished attempt, as store_attempts_scan hands it over. */
struct store_attempt_row {
	int64_t job_id, attempt, agent_id;
	const char *agent_name; /* NULL if the agent is gone */
	const char *runs_on;    /* the job's labels, joined with ',' */
	const char *org;
	enum job_state state;   /* how the attempt ended */
	const char *message;    /* why it ended (NULL if nothing was said) */
	bool final;             /* the job's last attempt, and the job has ended */
	uint64_t leased_at, started_at, finished_at;
	struct proto_usage usage;
};

/*
 * Calls fn for every attempt that finished in the window, oldest first
 * (records valid during the call only). fn returns < 0 to stop (returned).
 */
int store_attempts_scan(struct store *s, const struct store_window *w,
			int (*fn)(void *ud, const struct store_attempt_row *row), void *ud);
/* ---- tenancy reads (store-sqlite-tenancy.c) -------------------------------- */

int store_orgs_list(struct store *s, struct proto_org **ret, size_t *ret_n);
/* Tokens of one org (org_id >= 0; 0 = the shared-pool agent tokens), or all (-1). */
int store_tokens_list(struct store *s, int64_t org_id, struct proto_token **ret, size_t *ret_n);
/* The token with this SHA-256 hex; -ENOENT if none. */
int store_token_find(struct store *s, const char *hash, struct proto_token *ret);

/* Every wrapped data key; the caller frees each .wrapped and the array. */
int store_keys_list(struct store *s, struct store_key **ret, size_t *ret_n);
void store_keys_free(struct store_key *v, size_t n);

struct store_secret {
	int64_t org_id;
	char *name;
	int64_t version;
	uint64_t created_at, updated_at;
	int64_t updated_by;
	void *sealed; /* NULL unless asked for */
	size_t len;
};
void store_secrets_free(struct store_secret *v, size_t n);
/* The secrets of an org by name; values (sealed) only when with_values. */
int store_secrets_list(struct store *s, int64_t org_id, bool with_values,
		       struct store_secret **ret, size_t *ret_n);
/* One secret with its sealed value; -ENOENT. */
int store_secret_get(struct store *s, int64_t org_id, const char *name, struct store_secret *ret);
/* The largest secret version ever stored (versions are never reused). */
int store_secret_max_version(struct store *s, int64_t *ret);

struct store_audit_filter {
	int64_t org_id;     /* -1 = every org */
	uint64_t since;     /* records at or after this time (ms); 0 = all */
	int64_t after_seq;  /* records after this sequence number (paging) */
	size_t limit;       /* 1..10000 */
};
/* Oldest first. */
int store_audit_list(struct store *s, const struct store_audit_filter *f,
		     struct proto_audit **ret, size_t *ret_n);
/*
 * Recomputes the hash chain over the whole audit log: 0 and *ret_n records
 * when intact; -EBADMSG with *ret_bad_seq the first record that does not
 * match (altered, or a gap before it).
 */
int store_audit_verify(struct store *s, int64_t *ret_n, int64_t *ret_bad_seq);

struct store_delivery {
	char *delivery, *event, *action, *outcome;
	int64_t org_id, gh_job_id, run_attempt, job_id;
	uint64_t received_at;
};
void store_deliveries_free(struct store_delivery *v, size_t n);
/* The newest deliveries of an org (org_id -1: every org), newest first. */
int store_webhook_deliveries(struct store *s, int64_t org_id, size_t limit,
			     struct store_delivery **ret, size_t *ret_n);
/* The kiln job made for (org, GitHub job, run attempt, action); -ENOENT, 0 if none made. */
int store_webhook_event_job(struct store *s, int64_t org_id, int64_t gh_job_id,
			    int64_t run_attempt, const char *action, int64_t *ret_job_id);
/* Is this delivery id, or this (org, GitHub job, run attempt, action), known? 1/0. */
int store_webhook_seen(struct store *s, int64_t org_id, const char *delivery,
		       int64_t gh_job_id, int64_t run_attempt, const char *action);
