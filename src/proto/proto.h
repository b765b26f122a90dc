/*
 * proto: the API's types and their JSON form (jansson). Shared by the server
 * (which writes them), the store (which persists them) and the client (which
 * reads them). Nothing here does I/O.
 *
 * Invariants:
 *  - times are wall-clock milliseconds since the Unix epoch (0 = not set) and
 *    travel as RFC 3339 strings ("2026-11-23T12:00:00.000Z");
 *  - ids are positive integers; 0 means "none";
 *  - every error body is {"error":{"code":"snake_case","message":"..."}}.
 */
#pragma once

#include "base/base.h"

#include <jansson.h>

/* ---- job states ----------------------------------------------------------- */

enum job_state {
	JOB_QUEUED,    /* waiting for an agent */
	JOB_LEASED,    /* an agent holds a lease, not yet reported running */
	JOB_RUNNING,   /* the agent reported it running */
	JOB_SUCCEEDED, /* terminal: the steps exited 0 */
	JOB_FAILED,    /* terminal: a step failed (or the job could not start) */
	JOB_CANCELLED, /* terminal: cancelled by a user */
	JOB_TIMED_OUT, /* terminal: ran past its timeout (agent or server noticed) */
	JOB_LOST,      /* terminal: a lease expired with no retries left */
	JOB_STATE_MAX,
};

const char *job_state_to_string(enum job_state s);
/* -EINVAL for an unknown name. */
int job_state_from_string(const char *s, enum job_state *ret);
static inline bool job_state_is_terminal(enum job_state s) { return s >= JOB_SUCCEEDED; }
static inline bool job_state_is_active(enum job_state s)
{
	return s == JOB_LEASED || s == JOB_RUNNING;
}

/* ---- capacity ------------------------------------------------------------- */

/* What an agent offers, or what a job needs (slots is 1 for a job). */
struct proto_capacity {
	int64_t slots;
	double cpus;     /* 0 = unlimited/unspecified */
	uint64_t memory; /* bytes; 0 = unlimited/unspecified */
	int64_t gpus;
};

json_t *proto_capacity_to_json(const struct proto_capacity *c);
/*
 * Reads {"slots":N,"cpus":X,"memory":"4Gi"|bytes,"gpus":N}; missing fields
 * are 0. `what` names the object in messages. -EINVAL with err set.
 */
int proto_capacity_from_json(json_t *o, const char *what, struct proto_capacity *ret,
			     struct kiln_err *err);

/* ---- usage ---------------------------------------------------------------- */

/*
 * What an attempt used: measured by the agent (wall, CPU, memory, I/O,
 * OOM kills) and by the server (queue wait, GPUs held). A job's usage is
 * the sum over its attempts (memory peak: the largest). The basis for
 * `kiln usage` (chargeback) and the job-usage metrics.
 */
#define PROTO_EXECUTOR_MAX 16
struct proto_usage {
	bool reported;          /* the agent reported its measures (else only the server's) */
	uint64_t queue_wait_ms; /* in the queue before this lease */
	uint64_t wall_ms;
	uint64_t cpu_user_ms, cpu_system_ms;
	uint64_t memory_peak_bytes;
	uint64_t io_read_bytes, io_write_bytes;
	uint64_t oom_kills;
	int64_t gpus;                         /* GPUs the lease held */
	char executor[PROTO_EXECUTOR_MAX];    /* "sandbox", "vm", "gpu"; "" = not reported */
};

/*
 * {"reported":..,"queue_wait_ms":..,"wall_ms":..,"cpu_user_ms":..,
 *  "cpu_system_ms":..,"cpu_ms":..,"memory_peak_bytes":..,"io_read_bytes":..,
 *  "io_write_bytes":..,"oom_kills":..,"gpus":..,"gpu_ms":..,"executor":..}
 * (gpu_ms = gpus x wall_ms; new reference).
 */
json_t *proto_usage_to_json(const struct proto_usage *u);
/*
 * Reads an agent's usage report: the integer fields above (each 0..2^53,
 * missing = 0) and "executor" (lower-case letters, digits and '-', at most
 * 15). Unknown fields are ignored (agents may report more). Sets reported.
 * -EINVAL with err naming the field.
 */
int proto_usage_from_json(const json_t *o, struct proto_usage *ret, struct kiln_err *err);
/* Adds u into sum (memory peak and gpus: the larger; executor: the last). */
void proto_usage_add(struct proto_usage *sum, const struct proto_usage *u);

/* ---- jobs ----------------------------------------------------------------- */

struct proto_attempt {
	int64_t attempt; /* 1-based */
	int64_t fence;
	int64_t agent_id;
	char *agent_name; /* may be NULL */
	enum job_state state; /* LEASED/RUNNING while current, else how it ended */
	uint64_t leased_at, started_at, finished_at;
	bool has_exit_code;
	int exit_code;
	char *message; /* may be NULL */
	struct proto_usage usage;
};

struct proto_job {
	int64_t id;
	char *name;
	enum job_state state;
	int64_t priority;     /* higher runs first */
	int64_t attempt;      /* leases granted so far */
	int64_t max_attempts; /* 1 + retries */
	int64_t fence;        /* fence of the current (or last) lease; 0 = never leased */
	int64_t agent_id;     /* holder of the current (or last) lease; 0 = none */
	char *runs_on;        /* labels, lower-case, comma-separated ("" = any agent) */
	struct proto_capacity needs;
	uint64_t timeout_ms;
	uint64_t submitted_at, leased_at, started_at, finished_at;
	bool has_exit_code;
	int exit_code;
	char *message;    /* why it ended (or why it is waiting) */
	int64_t retry_of; /* the job this one retries; 0 = none */
	int64_t org_id;   /* the org that owns it */
	char *org;        /* its name, when the server filled it in (JSON "org") */
	json_t *spec;     /* normalised spec (owned reference); NULL when not loaded */
	struct proto_attempt *attempts;
	size_t n_attempts;
	struct proto_usage usage; /* sum over attempts (when attempts are loaded) */
	/* Scheduler overlay, not stored: set for queued jobs no agent can run. */
	bool unschedulable;
	char *reason;
};

enum {
	PROTO_JOB_SPEC = 1 << 0,     /* include "spec" */
	PROTO_JOB_ATTEMPTS = 1 << 1, /* include "attempts" */
};

void proto_job_release(struct proto_job *j);
void proto_jobs_free(struct proto_job *v, size_t n);
/* New reference; `flags` selects the optional parts (PROTO_JOB_*). */
json_t *proto_job_to_json(const struct proto_job *j, unsigned flags);

/* ---- agents --------------------------------------------------------------- */

struct proto_agent {
	int64_t id;
	char *name;
	char **labels; /* lower-case */
	size_t n_labels;
	struct proto_capacity capacity;
	struct proto_capacity used; /* by its current leases */
	bool draining;
	bool online; /* heard from within the offline threshold */
	int64_t org_id; /* the org whose private pool it serves; 0 = the shared pool */
	char *org;      /* its name, when the server filled it in (JSON "pool") */
	uint64_t registered_at, last_seen_at;
	int64_t *job_ids; /* jobs it holds leases for */
	size_t n_jobs;
};

void proto_agent_release(struct proto_agent *a);
json_t *proto_agent_to_json(const struct proto_agent *a);

/* ---- artifacts ------------------------------------------------------------ */

struct proto_artifact {
	int64_t job_id;
	int64_t attempt;
	char *path;
	char sha256[65]; /* lower-case hex */
	uint64_t size;
	uint64_t created_at;
};

void proto_artifact_release(struct proto_artifact *a);
void proto_artifacts_free(struct proto_artifact *v, size_t n);
json_t *proto_artifact_to_json(const struct proto_artifact *a);

/*
 * Checks an artifact path: relative, '/'-separated, no empty, "." or ".."
 * components, no NUL/control characters or backslashes, at most 1024 bytes
 * and 64 components. -EINVAL with err naming the problem.
 */
int proto_artifact_path_check(const char *path, struct kiln_err *err);

/* ---- errors and helpers --------------------------------------------------- */

/* {"error":{"code":code,"message":<formatted>}} (new reference). */
json_t *proto_error(const char *code, const char *fmt, ...) KILN_PRINTF(2, 3);

/* Sets key to an RFC 3339 string, or null when ms is 0. */
void proto_set_time(json_t *o, const char *key, uint64_t ms);
/* Parses "YYYY-MM-DDTHH:MM:SS[.fff]Z" (years 1970..2500) to Unix ms; -EINVAL otherwise. */
int proto_parse_time(const char *s, uint64_t *ret_ms);
/* Wall-clock now in Unix ms. */
uint64_t proto_now_ms(void);

/* Lower-case copy of a label list joined with ','. */
char *proto_labels_join(char *const *labels, size_t n);
/* Splits "a,b" (NULL or "" = none) into a NULL-terminated array; caller frees each and the array. */
char **proto_labels_split(const char *s, size_t *ret_n);
void proto_strv_free(char **v, size_t n);

/* ---- tenancy: orgs, roles, tokens, audit ----------------------------------- */

/*
 * Roles (docs/decisions: auth model). admin is server-wide; owner, member and
 * viewer act inside their org, each able to do what the next can; agent
 * registers and leases for its org's pool (or the shared pool); metrics only
 * scrapes. Stored as these numbers: never renumber.
 */
enum proto_role {
	ROLE_NONE = 0,
	ROLE_ADMIN = 1,
	ROLE_OWNER = 2,
	ROLE_MEMBER = 3,
	ROLE_VIEWER = 4,
	ROLE_AGENT = 5,
	ROLE_METRICS = 6,
	ROLE_MAX,
};

const char *proto_role_to_string(enum proto_role r);
/* -EINVAL for an unknown name. */
int proto_role_from_string(const char *s, enum proto_role *ret);

/* Org names: 1..63 of [a-z0-9-], starting with a letter or digit. */
bool proto_org_name_valid(const char *s);

struct proto_org {
	int64_t id;
	char *name;
	uint64_t created_at;
	int64_t max_running; /* 0 = the server's default */
};

void proto_org_release(struct proto_org *o);
void proto_orgs_free(struct proto_org *v, size_t n);
json_t *proto_org_to_json(const struct proto_org *o);

struct proto_token {
	int64_t id;
	char hash[65]; /* SHA-256 hex of the token; never leaves the server */
	enum proto_role role;
	int64_t org_id; /* 0 = none (a shared-pool agent token) */
	char *org;      /* name, when filled in */
	char *name;     /* what it is for ("ci-bot") */
	int64_t created_by; /* token id; 0 = the server itself (bootstrap) */
	uint64_t created_at, expires_at, revoked_at, last_used_at; /* 0 = never */
};

void proto_token_release(struct proto_token *t);
void proto_tokens_free(struct proto_token *v, size_t n);
/* Everything but the hash. */
json_t *proto_token_to_json(const struct proto_token *t);

/* One audit record (append-only; hash chains every record to the one before). */
struct proto_audit {
	int64_t seq;
	uint64_t at;
	int64_t org_id;
	int64_t token_id;
	char *actor;  /* "token 3 (ci-bot)", "job 12", "github" */
	char *action; /* route name: "jobs.submit", "secrets.set" */
	char *target; /* "job 12", "secret NPM_TOKEN", "" */
	char *result; /* "ok", "denied", "not_found", "conflict", "rejected", "error" */
	int status;   /* HTTP status answered */
	char *source; /* client address */
	char prev[65], hash[65];
};

void proto_audit_release(struct proto_audit *a);
void proto_audits_free(struct proto_audit *v, size_t n);
json_t *proto_audit_to_json(const struct proto_audit *a);
