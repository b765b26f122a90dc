/*
 * server-internal: the pieces of the server and how they share state.
 *
 * Locking: one mutex, server.lock, guards every in-memory index (jobs,
 * classes, agents, waiters, followers, open logs). Handlers take it for
 * microseconds; nothing blocks while holding it except small appends to
 * log files. The store's writer thread runs `done` callbacks without it,
 * except where they say otherwise.
 *
 * The in-memory state is the state the store will have once every queued
 * mutation commits: the scheduler decides and enqueues the mutation under
 * the lock, so the store applies decisions in the order they were taken. A
 * request is answered only from the mutation's done callback (durable).
 */
#pragma once

#include "auth/auth.h"
#include "proto/proto.h"

/* What a queued GitHub job runs when no --github-runner-command is given. */
#define SERVER_DEFAULT_RUNNER_COMMAND                                                           \
	"echo \"kiln: GitHub job $GH_JOB_ID of $GH_REPOSITORY ($GH_LABELS) has no runner to "   \
	"start: run kiln server with --github-runner-command\" >&2; exit 1"
#include "server.h"
#include "store/store.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

struct req;
struct sjob;
struct sagent;

/* ---- routes ---------------------------------------------------------------- */

enum body_kind {
	BODY_NONE, /* no body accepted (GET) or ignored */
	BODY_JSON, /* buffered up to body_max, parsed as JSON before the handler */
	BODY_TEXT, /* buffered up to body_max, raw (job specs: YAML or JSON) */
	BODY_LOG,  /* buffered up to log_chunk_max, raw bytes */
	BODY_STREAM, /* handed to route->on_data as it arrives (artifacts) */
	BODY_WEBHOOK, /* buffered up to webhook_body_max, raw (signed deliveries) */
};

/*
 * Who may call a route (access.c checks before any handler runs). A route
 * with none of these is admin-only: a new route without flags fails closed.
 */
enum {
	ROUTE_PUBLIC = 1 << 0,  /* no authentication, ever (/healthz) */
	ROUTE_AGENT = 1 << 1,   /* an agent token (its pool's agents) or admin */
	ROUTE_READ = 1 << 2,    /* viewer, member, owner, admin */
	ROUTE_WRITE = 1 << 3,   /* member, owner, admin */
	ROUTE_OWNER = 1 << 4,   /* owner, admin */
	ROUTE_ADMIN = 1 << 5,   /* admin */
	ROUTE_JOB = 1 << 6,     /* the job's own lease token (bound in the handler) or admin */
	ROUTE_ANY = 1 << 7,     /* any valid token */
	ROUTE_METRICS = 1 << 8, /* a metrics token or admin */
	ROUTE_AUDIT = 1 << 9,   /* recorded in the audit log */
	ROUTE_WEBHOOK = 1 << 10, /* authenticated by its HMAC signature, not a token */
};

/* Per-route counters (lock-free), exported by /metrics (observe.c). */
#define HTTP_CODE_SLOTS 29      /* 24 common status codes + 1xx..5xx for the rest */
#define HTTP_LATENCY_BUCKETS 16 /* http_latency_bounds_ns, + one above the last */
struct route_stats {
	atomic_uint_fast64_t requests;
	atomic_uint_fast64_t status_2xx, status_4xx, status_5xx;
	atomic_uint_fast64_t ns_total;
	atomic_uint_fast64_t codes[HTTP_CODE_SLOTS];
	atomic_uint_fast64_t latency[HTTP_LATENCY_BUCKETS + 1];
};

struct route {
	const char *method;
	const char *pattern; /* "/v1/jobs/{id}/log"; a trailing "{path*}" takes the rest */
	const char *name;    /* "jobs.get" */
	enum body_kind body;
	unsigned flags;
	void (*handle)(struct req *r);
	/* BODY_STREAM: called for each piece of the body, then with len 0 at the end. */
	void (*on_data)(struct req *r, const char *data, size_t len);
	struct route_stats *stats;
};

extern const struct route server_routes[];
extern const size_t server_routes_count;

/* ---- requests ------------------------------------------------------------- */

enum req_phase {
	REQ_BODY,    /* receiving the body */
	REQ_HANDLER, /* in the handler (or waiting for the store) */
	REQ_READY,   /* response built; to be queued */
	REQ_SENT,    /* queued to MHD */
};

/* Who is calling (access.c fills it in before the handler runs). */
struct principal {
	const char *name;      /* points to label: "token 3 (ci-bot)", "job 12" */
	int64_t token_id;      /* 0 for a job token */
	int64_t org_id;        /* the token's org; 0 = none (shared-pool agent) */
	enum proto_role role;  /* ROLE_NONE for a job token */
	bool job;              /* a job-scoped lease token (job_token holds it) */
	char job_token[64];
	char label[112];
};

struct follower;
struct upload;

/* A request id: the client's X-Request-Id when it is [A-Za-z0-9._:-]{1,64},
 * else 16 hex digits (a per-process random prefix and a counter). */
#define REQ_ID_MAX 64

struct req {
	struct server *srv;
	struct MHD_Connection *conn;
	struct conn_info *ci;
	const struct route *route;
	const char *method;
	char *url;
	char *params[4]; /* path parameters in pattern order ({id}, {path*}) */
	size_t n_params;
	const struct principal *principal; /* &who once authenticated, else NULL */
	struct principal who;
	uint64_t start_ns;
	char id[REQ_ID_MAX + 1]; /* request id: log lines carry req=, answers X-Request-Id */

	/* body */
	struct buf body;
	uint64_t body_limit;
	bool body_too_large;
	uint64_t discarded; /* body bytes dropped after an early refusal */
	json_t *json; /* BODY_JSON, parsed */

	/* async completion: lock orders suspend before any resume */
	pthread_mutex_t lock;
	enum req_phase phase;
	bool suspended;
	bool parked; /* a waiter in server.waiters (under server.lock) */

	/* the response */
	unsigned status;
	struct MHD_Response *response;

	/* one mutation a handler may use; more are allocated */
	struct store_mut mut;
	void *ctx; /* handler's own data, freed by ctx_free */
	void (*ctx_free)(void *ctx);

	/* long-poll waiter (server.waiters, or server.hb_waiters when hb_waiter) */
	bool hb_waiter;
	struct sagent *wait_agent;
	uint64_t wait_deadline_ns;
	struct req *wprev, *wnext;

	struct follower *follower; /* GET .../log?follow */
	struct upload *upload;     /* PUT .../artifacts/... */

	/* The call's audit record (ROUTE_AUDIT routes; http.c, audit.c). */
	struct store_audit audit;
	struct store_mut audit_mut; /* when written on its own */
	char *audit_target;
	int64_t audit_org; /* -1: the caller's org */
	bool audit_attached; /* carried by a mutation of the handler */
	bool audit_written;  /* committed: the answer may go */
	char source[64];     /* the client's address */
};

/* Per TCP connection: for the header/body deadlines. */
struct conn_info {
	struct MHD_Connection *conn;
	int fd;
	uint64_t started_ns;   /* connection opened or previous request ended */
	uint64_t deadline_ns;  /* 0 = none: headers are done and the body is not timed */
	bool closed;
	struct conn_info *prev, *next;
};

/* Responses. Each completes the request: queued now or on resume. */
void req_reply_json(struct req *r, unsigned status, json_t *body); /* steals body */
void req_reply_text(struct req *r, unsigned status, const char *content_type, char *text,
		    size_t len); /* steals text */
void req_reply_error(struct req *r, unsigned status, const char *code, const char *fmt, ...)
	KILN_PRINTF(4, 5);
void req_reply_response(struct req *r, unsigned status, struct MHD_Response *resp);
/* The handler will answer later (from a store callback): suspend after return. */
void req_defer(struct req *r);
const char *req_query(struct req *r, const char *key);
const char *req_header(struct req *r, const char *key);
/* Parses a query parameter as an integer in [min, max]; missing: *ret = def. */
int req_query_int(struct req *r, const char *key, int64_t min, int64_t max, int64_t def,
		  int64_t *ret);
/* Parses params[i] as a positive id; answers 404 and returns -EINVAL if not. */
int req_param_id(struct req *r, size_t i, const char *what, int64_t *ret);
/*
 * Queues the handler's mutation m; on an audited route the call's audit
 * record rides along, written in the same transaction with m's outcome
 * (status_ok if it applies). Returns m's sequence number.
 */
uint64_t req_submit(struct req *r, struct store_mut *m, int status_ok);
/* What the call acts on, for its audit record ("job 12", "secret NPM_TOKEN"). */
void req_audit_target(struct req *r, const char *fmt, ...) KILN_PRINTF(2, 3);
/* The org the audit record is filed under (default: the caller's). */
void req_audit_org(struct req *r, int64_t org_id);

/* ---- scheduler ------------------------------------------------------------ */

/* Jobs with the same requirements share a class (and one priority queue). */
struct sclass {
	char *key;
	int64_t org_id; /* classes are per org: jobs of one org share a heap */
	char **labels; /* lower-case, sorted, without gpu-count:N */
	size_t n_labels;
	struct proto_capacity needs; /* slots 1 */
	struct sjob **heap;          /* queued jobs: highest priority, then lowest id */
	size_t n_heap, cap_heap;
	size_t refs; /* jobs in memory pointing here */
	bool schedulable;
	char *reason; /* why not, when !schedulable */
	struct sclass *next;
};

/* Live measures an agent sends with its heartbeats (kiln top); the previous
 * sample gives the CPU rate. */
struct job_live {
	int64_t fence; /* the attempt they are of */
	uint64_t at_ms, cpu_ms, memory_bytes;
	uint64_t prev_at_ms, prev_cpu_ms;
};

struct agent_live {
	uint64_t at_ms; /* 0: never reported */
	double load1, load5, load15;
	uint64_t memory_used_bytes, memory_total_bytes;
};

struct sjob {
	int64_t id;
	int64_t org_id;
	char *name;
	int64_t priority;
	struct sclass *cls;
	enum job_state state;
	int64_t attempt, max_attempts, fence;
	uint64_t timeout_ms;
	size_t heap_idx;
	struct sagent *agent;    /* lease holder while active */
	uint64_t lease_expires_ns; /* monotonic */
	uint64_t deadline_ns;      /* monotonic: leased + timeout + grace */
	struct sjob *hnext;        /* id hash chain */
	struct sjob *aprev, *anext; /* server.active list */
	struct joblog *log;        /* open log of the current attempt */
	uint64_t insert_seq;       /* store sequence of its insert (0: durable at load) */
	uint64_t queued_ns;        /* monotonic: entered the queue (submit or requeue) */
	unsigned refunds;          /* attempts handed back unstarted (bounded) */
	uint64_t leased_ns;        /* monotonic: the current lease was granted */
	struct job_live live;      /* the agent's latest measures of the running attempt */
};

/* A lease the server took back (cancel, timeout, expiry) that the agent may
 * still be running: it keeps the capacity until the agent lets go. */
struct revoked {
	int64_t job_id, fence;
	struct proto_capacity needs;
	const char *reason; /* "cancelled", "timed_out", "lease_expired", "lost" */
	uint64_t expires_ns;
};

struct sagent {
	int64_t id;
	int64_t org_id; /* the org whose pool it serves; 0 = the shared pool */
	char *name;
	char **labels; /* lower-case */
	size_t n_labels;
	struct proto_capacity capacity, used;
	bool draining;
	uint64_t registered_at;
	uint64_t last_seen_ns, last_seen_ms;
	struct sjob **jobs; /* active leases */
	size_t n_jobs, cap_jobs;
	struct revoked *revoked;
	size_t n_revoked, cap_revoked;
	struct agent_live live;
	struct sagent *next;
};

/* ---- logs ----------------------------------------------------------------- */

/* The log of one attempt: head file + tail ring once past the cap. */
struct joblog {
	int64_t job_id, attempt;
	int head_fd, tail_fd, size_fd;
	uint64_t size; /* logical bytes appended */
	bool dirty;    /* written since the last fdatasync */
	bool warned;
};

struct follower {
	struct req *req;
	int64_t job_id;
	int64_t attempt; /* 0: the job's first attempt, when it comes */
	uint64_t offset;
	bool sse;
	bool follow;
	bool suspended;
	bool ended;
	bool sent_end;
	struct buf pending; /* formatted bytes not yet handed to MHD */
	uint64_t next_ping_ns;
	struct follower *prev, *next;
};

/* ---- tenancy ------------------------------------------------------------- */

/* An org in memory (under server.lock): its name and scheduling counters. */
enum limit_kind { LIMIT_API, LIMIT_SUBMIT, LIMIT_WEBHOOK, LIMIT_MAX };

struct sorg {
	int64_t id;
	char *name;
	int64_t max_running; /* 0 = the server's default */
	int64_t running;     /* leased + running jobs */
	struct token_bucket buckets[LIMIT_MAX]; /* rate limits (limits.c) */
	struct sorg *next;
};

/* A token in memory (access.c, under server.auth_lock). */
struct stoken {
	struct proto_token t;
	uint64_t touched_ms; /* last_used_at last written to the store */
	struct stoken *hnext;
};

/* ---- the server ----------------------------------------------------------- */

struct server {
	struct server_config cfg;
	char *listen, *state_dir, *logs_dir, *blobs_dir, *tmp_dir;
	int lock_fd;
	struct store *store;
	struct MHD_Daemon *mhd;
	char address[128];
	bool started;
	atomic_bool stopping;
	atomic_bool ready;
	atomic_int suspended; /* connections suspended (deferred answers, followers) */

	pthread_mutex_t lock;
	/* jobs in memory: queued and active */
	struct sjob **jobs_tab;
	size_t jobs_tab_size, n_jobs;
	struct sjob *active_head; /* leased + running */
	struct sclass *classes;
	struct sagent *agents;
	int64_t next_job_id, next_fence, next_agent_id;
	/* Fences up to fence_durable are reserved in the store: a lease with
	 * such a fence can be handed out before its own commit, because no
	 * later run can reuse the fence (docs/decisions: fence reservation). */
	int64_t fence_durable, fence_target;
	bool fence_reserving;
	struct req *waiters_head, *waiters_tail;
	struct req *hb_head, *hb_tail; /* parked heartbeats */
	struct follower *followers;
	struct conn_info *conns;

	/* tenancy */
	struct sorg *orgs;            /* under lock */
	int64_t rr_org;               /* fairness: the org served last */
	pthread_mutex_t auth_lock;    /* the token table */
	struct stoken **tokens_tab;
	size_t tokens_tab_size, n_tokens;
	char *bootstrap_token_path;   /* written at this start, or NULL */
	pthread_mutex_t keys_lock;    /* keyring, data keys */
	struct keyring *keys;
	int64_t next_secret_version;  /* under lock; versions are never reused */
	struct wh_pending *wh_pending; /* deliveries between checks and commit (lock) */
	uint64_t wh_next_prune_ns;     /* timer: forget old delivery ids */

	pthread_t timer;
	pthread_cond_t timer_cond;
	bool timer_running;

	/* A worker for slow I/O that must not run on the HTTP thread or under
	 * server.lock (fsyncs of logs and artifacts); FIFO. */
	pthread_t worker;
	pthread_mutex_t wlock;
	pthread_cond_t wcond;
	struct work *whead, **wtail;
	bool wrunning;
	uint64_t now_mono_cache;

	struct server_obs *obs; /* metrics (observe.c) */
};

/* The org of everything until organisations exist (metrics labels, usage). */
#define ORG_DEFAULT "default"

/* server.c: runs fn(arg) on the worker thread (or here, when it is stopped). */
struct work {
	void (*fn)(void *arg);
	void *arg;
	struct work *next;
};
void server_defer(struct server *s, void (*fn)(void *arg), void *arg);

/* sched.c */
int sched_load(struct server *s, struct kiln_err *err);
void sched_free(struct server *s);
struct sjob *sched_job(struct server *s, int64_t id);
struct sagent *sched_agent(struct server *s, int64_t id);
/* The agent of this pool (org id; 0 = shared) with this name. */
struct sagent *sched_agent_by_name(struct server *s, int64_t org_id, const char *name);
/* Creates the in-memory job (queued) and dispatches it to a waiter. */
struct sjob *sched_add_job(struct server *s, int64_t id, int64_t org_id, const char *name,
			   int64_t priority, const char *runs_on,
			   const struct proto_capacity *needs, int64_t max_attempts,
			   uint64_t timeout_ms);
void sched_dispatch(struct server *s, struct sjob *j);
/* The org's cap changed: offers its queued heads to parked agents if below it. */
void sched_org_dispatch(struct server *s, int64_t org_id);
/* Grants a lease of j to a's waiting request r (enqueues the lease). */
void sched_grant(struct server *s, struct sjob *j, struct sagent *a, struct req *r);
struct sjob *sched_pick(struct server *s, struct sagent *a);
/* Ends the active lease of j: releases capacity, remembers the revocation. */
void sched_end_lease(struct server *s, struct sjob *j, const char *revoke_reason);
void sched_remove_queued(struct server *s, struct sjob *j);
void sched_free_job(struct server *s, struct sjob *j);
void sched_requeue(struct server *s, struct sjob *j);
/*
 * Ends j's lease without a result: queued again (the attempt ends as lost)
 * if attempts remain, else the job is lost. `why` starts the stored message.
 * revoke: the agent may still run it (expiry), so its capacity stays held
 * until the agent lets go; !revoke: the agent said it does not (release).
 * refund: the attempt does not count (max_attempts + 1; always queued again).
 */
void sched_release(struct server *s, struct sjob *j, const char *why, bool revoke, bool refund);
/* Unstarted hand-backs of one job that do not count (then they do). */
#define SCHED_MAX_REFUNDS 5
/* Gives parked lease requests of agent a a chance at newly fitting work. */
void sched_kick_agent(struct server *s, struct sagent *a);
void sched_recheck_classes(struct server *s);
void sched_fill_overlay(struct server *s, struct proto_job *pj, bool with_attempts);
bool sched_revoked_take(struct sagent *a, int64_t job_id, int64_t fence, const char **reason);
void sched_agent_to_proto(struct server *s, struct sagent *a, struct proto_agent *ret);
/* Parks a lease request (or, with r->hb_waiter, a heartbeat) until wait_ms. */
void sched_park(struct server *s, struct req *r, struct sagent *a, uint64_t wait_ms);
/* Answers a's parked lease long-polls 204 (it takes no job through them). */
void sched_drop_agent_waiters(struct server *s, struct sagent *a);
void sched_unpark(struct server *s, struct req *r);
void sched_tick(struct server *s, uint64_t now_ns);
void *sched_timer_main(void *p);
/* A mutation owned by nobody: freed (and logged if refused) when done. */
struct store_mut *mut_new(enum store_mut_kind kind);
void mut_submit_detached(struct server *s, struct store_mut *m);
/* A message a mut_new() mutation points to, freed with it. */
void mut_set_msg(struct store_mut *m, char *msg);

/* http.c */
int http_start(struct server *s, struct kiln_err *err);
void http_stop(struct server *s);
void http_resume(struct req *r); /* completes a deferred request (any thread) */
void http_check_deadlines(struct server *s, uint64_t now_ns);

/* handlers */
void h_healthz(struct req *r);
void h_readyz(struct req *r);
void h_jobs_submit(struct req *r);
void h_jobs_list(struct req *r);
void h_jobs_get(struct req *r);
void h_jobs_cancel(struct req *r);
void h_jobs_retry(struct req *r);
void h_jobs_status(struct req *r);
void h_jobs_complete(struct req *r);
void h_log_append(struct req *r);
void h_log_get(struct req *r);
void h_artifacts_list(struct req *r);
void h_artifact_put(struct req *r);
void h_artifact_put_data(struct req *r, const char *data, size_t len);
void h_artifact_get(struct req *r);
void h_agents_register(struct req *r);
void h_agents_list(struct req *r);
void h_agents_get(struct req *r);
void h_agents_drain(struct req *r);
void h_agents_lease(struct req *r);
void h_agents_heartbeat(struct req *r);
void h_agents_release(struct req *r);
/* agents.c: answers a's parked heartbeats now (a lease of a was taken back). */
void heartbeat_wake(struct server *s, struct sagent *a);
/* agents.c: a parked heartbeat's wait is over: answers it. */
void heartbeat_expire(struct server *s, struct req *r);

/* logs.c */
/* Closes a log; its fdatasync (if written) runs on the worker. */
void joblog_close(struct server *s, struct joblog *l);
/* Wakes followers of a job (new bytes or the attempt ended). Under lock. */
void logs_wake(struct server *s, int64_t job_id);
void logs_ping(struct server *s, uint64_t now_ns);
void follower_free(struct follower *f);
/* Closes the open log of j's attempt (fdatasync if written). Under lock. */
void logs_attempt_ended(struct server *s, struct sjob *j);

/* observe.c: metrics. Hooks are cheap and may be called under server.lock. */
extern const uint64_t http_latency_bounds_ns[HTTP_LATENCY_BUCKETS];
extern struct route_stats http_unmatched_stats;
size_t http_code_slot(unsigned status);
void obs_init(struct server *s);
void obs_free(struct server *s);
void obs_jobs_submitted(struct server *s, const char *org, size_t n);
void obs_job_ended(struct server *s, enum job_state st, const char *org);
void obs_job_requeued(struct server *s, const char *org);
/* An org's bucket (enum limit_kind) answered 429. */
void obs_rate_limited(struct server *s, const char *org, int kind);
/* A lease was granted to a job that waited waited_ns in the queue. */
void obs_lease_granted(struct server *s, uint64_t waited_ns);
void obs_lease_expired(struct server *s);
/* An attempt's usage was recorded (once per attempt). */
void obs_attempt_usage(struct server *s, const struct proto_usage *u, const char *org);
void h_metrics(struct req *r);

/* usage.c: accounting */
/* Reads the optional "usage" of a completion; answers 400 and returns < 0 if bad. */
int usage_parse(struct req *r, struct proto_usage *ret, bool *ret_has);
/* Records an attempt's usage (detached store mutation; metrics once applied). */
void usage_record(struct server *s, int64_t job_id, int64_t fence, const struct proto_usage *u);
/*
 * Reads ?since=&until=&org= (RFC 3339 or a duration ago; default: the last
 * default_ms up to now); answers 400 and returns < 0 if bad.
 */
int req_window(struct req *r, uint64_t default_ms, struct store_window *ret);
void h_usage(struct req *r);
/* stats.c: GET /v1/stats (docs/stats.md) */
void h_stats(struct req *r);
/* top.c: GET /v1/overview (kiln top); what heartbeats say besides leases. */
void h_overview(struct req *r);
/* Reads a heartbeat's optional "load" and jobs[].usage into a and its jobs
 * (under server.lock). Malformed telemetry is ignored: never refuse a
 * heartbeat for it. */
void live_heartbeat(struct server *s, struct sagent *a, json_t *body);

/* access.c: tokens, principals, route permissions */
int access_init(struct server *s, struct kiln_err *err);
void access_free(struct server *s);
/* Authenticates r and checks its route's permission; answers 401/403 itself. */
int access_check(struct req *r);
/* May the caller see objects of this org? (admin: every org) */
bool access_org_visible(const struct req *r, int64_t org_id);
/*
 * ROUTE_JOB routes: may the caller write to job (id, fence)? A job token
 * must be the one of that very lease; admin may. Answers 403 itself.
 */
int access_job_write(struct req *r, int64_t job_id, int64_t fence);
/*
 * Does job id exist and may the caller see it? 0, else answers 404 (also
 * for a job of another org: no existence leak) or 500 and returns < 0.
 */
int access_job_visible(struct req *r, int64_t id);
/* May the caller act as agent a (lease, heartbeat, release)? */
bool access_agent_ok(const struct req *r, const struct sagent *a);
/*
 * The org a call acts in: ?org=NAME (admins: any org; others: their own) or
 * the caller's own. Answers 404 itself for an org it may not use.
 */
int access_target_org(struct req *r, const char *name, int64_t *ret);
/* Mints a token (durable before it returns; not from a store callback). */
int access_mint(struct server *s, enum proto_role role, int64_t org_id, const char *name,
		int64_t created_by, uint64_t expires_at, char **ret_token, int64_t *ret_id,
		struct kiln_err *err);
/* Adds a token row to the table (after its commit). Takes auth_lock. */
void access_token_add(struct server *s, const struct proto_token *t);
/* Marks a token revoked in the table (at once: before the store has it). */
void access_token_revoked(struct server *s, int64_t id, uint64_t at);

/* orgs (tenancy.c), under lock */
struct sorg *org_get(struct server *s, int64_t id);
struct sorg *org_by_name(struct server *s, const char *name);
struct sorg *org_add(struct server *s, const struct proto_org *o);
/* The org's name (or "?"); under lock. */
const char *org_name(struct server *s, int64_t id);
void orgs_free(struct server *s);
void h_orgs_list(struct req *r);
void h_orgs_create(struct req *r);
void h_tokens_list(struct req *r);
void h_tokens_create(struct req *r);
void h_tokens_revoke(struct req *r);
void h_whoami(struct req *r);
void h_admin_rotate_key(struct req *r);

/* jobs.c: job creation for intake paths (webhooks) */
struct submit_ctx;
/*
 * Loads a spec document for org_id as a submission does (answers 400 and
 * returns NULL when it is not valid, or names a secret the org lacks).
 */
struct submit_ctx *jobs_prepare(struct req *r, const char *file, const char *text, size_t len,
				int64_t org_id);
/*
 * Creates the one job of c in memory and queues `carrier`, a mutation that
 * inserts it (carrier->webhook.job is set here), with the call's audit
 * record; dispatches it. c stays the caller's (free with submit_ctx_free).
 */
void jobs_commit_with(struct req *r, struct submit_ctx *c, struct store_mut *carrier);
int64_t jobs_first_id(const struct submit_ctx *c);
size_t jobs_count(const struct submit_ctx *c);
void submit_ctx_free(void *p);

/* audit.c */
void h_audit_list(struct req *r);
void h_audit_verify(struct req *r);

/* limits.c: per-org rate limits */
/* Sets up o's buckets from the configuration. Under lock. */
void limits_init_org(struct server *s, struct sorg *o);
/*
 * Takes `cost` from the org's bucket of `kind`; when it is empty answers 429
 * with Retry-After and returns -EAGAIN. Takes the lock.
 */
int limits_take(struct req *r, int64_t org_id, enum limit_kind kind, double cost);
void h_orgs_limits(struct req *r);

/* webhook.c */
struct webhook_event {
	char action[32];
	int64_t gh_job_id, run_attempt;
	json_t *payload; /* the whole document (owned) */
};
/*
 * Checks a workflow_job payload (after its signature verified): a JSON
 * object with a short lower-case action, workflow_job.id > 0, an optional
 * run_attempt > 0 (default 1) and at most 64 labels. -EINVAL with err.
 */
int webhook_payload_parse(const char *body, size_t len, struct webhook_event *ev,
			  struct kiln_err *err);
/*
 * The runs-on of a queued GitHub job: its labels lower-cased, without
 * `self-hosted`. NULL, with *why, when a label is not a kiln label.
 */
json_t *webhook_runs_on(json_t *labels, const char **why);
/* The kiln job spec (JSON text) a queued GitHub job becomes (caller frees). */
char *webhook_runner_spec(json_t *payload, json_t *runs_on, const char *org,
			  const char *delivery, const char *command, const char *secrets);
void h_webhook_github(struct req *r);
void h_webhook_secret_put(struct req *r);
void h_webhook_secret_drop_previous(struct req *r);
void h_webhook_deliveries(struct req *r);
/* Timer, under lock: forgets delivery ids past the retention, hourly. */
void webhook_tick(struct server *s, uint64_t now_ns);

/* secrets.c */
int secrets_init(struct server *s, struct kiln_err *err);
void h_secrets_list(struct req *r);
void h_secret_put(struct req *r);
void h_secret_delete(struct req *r);
/* Seals a value for (org, name) under a new version; makes the org's data key if needed. */
int secret_seal(struct server *s, int64_t org_id, const char *name, const void *value,
		size_t len, int64_t *ret_version, struct buf *out);
/* Reads and opens one secret of an org (NUL-terminated); -ENOENT, -EBADMSG. */
int secret_get_plain(struct server *s, int64_t org_id, const char *name, struct buf *ret);
/* Submission: does the org have every secret the spec names? Answers 400 if not. */
int secrets_check_names(struct req *r, int64_t org_id, char *const *names, size_t n);
/*
 * Lease answers: appends ,"secrets":{"NAME":"value",...} for the secrets the
 * job's spec (normalised JSON text) names, of the job's org; nothing if none.
 */
void secrets_for_lease(struct server *s, int64_t job_id, int64_t org_id, const char *spec,
		       struct buf *out);

/* keys.c: the master keyring, the server's own key and the orgs' data keys */
int keys_init(struct server *s, struct kiln_err *err);
void keys_free(struct server *s);
/* The job-token key (derived from the server's own data key). */
const uint8_t *keys_job_key(struct server *s);
/*
 * The data key of an org into ret (32 bytes). create: make one if the org
 * has none (queued to the store before anything sealed with it). -ENOENT.
 */
int keys_org_dek(struct server *s, int64_t org_id, bool create, uint8_t ret[32]);
/* The org field of a sealed value's associated data ("org-<id>"). */
void keys_secret_ad_org(int64_t org_id, char out[32]);
const char *keys_master_id(struct server *s);
/*
 * Re-wraps every data key under a new master key (new_key_text, or a
 * generated one when the current key is file-backed); durable when it
 * returns. ret_id: the new key's id; ret_n: keys re-wrapped.
 */
int keys_rotate(struct server *s, const char *new_key_text, char ret_id[17], int64_t *ret_n,
		struct kiln_err *err);

/* artifacts.c */
void upload_free(struct upload *u);
