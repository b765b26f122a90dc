/*
 * server: kiln's control plane — the HTTP/JSON API under /v1, the scheduler
 * (matching, leases with fence tokens, long-poll dispatch), job logs and
 * artifacts, on top of the store. docs/internals/server.md describes the
 * protocol and the invariants; docs/api.yaml every endpoint.
 *
 * Embeddable: `kiln server` runs one; `kiln up` can run one in-process next to
 * an agent. Lifecycle: server_new() (opens the state directory and the
 * store, rebuilds the in-memory indexes), server_start() (listens, starts the
 * timer), server_stop() (stops answering, resumes every parked request with
 * 503, drains the store), server_free().
 */
#pragma once

#include "base/base.h"

struct server;
struct metrics;

struct server_config {
	const char *listen;    /* "HOST:PORT" ("127.0.0.1:7700"); port 0 picks a free one */
	const char *state_dir; /* kiln.db, logs/, artifacts/ live here */
	const char *store_url; /* NULL: sqlite:<state_dir>/kiln.db */
	bool durable;          /* fsync every commit (default true; benchmarks may say false) */
	uint64_t lease_ttl_ms;     /* a lease not renewed for this long expires (30 s) */
	uint64_t timeout_grace_ms; /* server-side timeout = job timeout + grace (30 s) */
	uint64_t max_wait_ms;      /* longest long-poll (60 s) */
	uint64_t agent_offline_ms; /* an agent unheard of for this long is offline (90 s) */
	uint64_t log_cap;          /* bytes kept per job attempt log: head + tail (64 MiB) */
	uint64_t log_chunk_max;    /* largest log chunk (1 MiB) */
	uint64_t artifact_max;     /* largest artifact (1 GiB) */
	uint64_t body_max;         /* largest JSON/YAML request body (1 MiB) */
	unsigned max_connections;  /* more are refused (1000) */
	unsigned per_ip_connections; /* 0 = no per-address limit */
	unsigned header_timeout_ms;  /* request line + headers must arrive within (10 s) */
	unsigned body_timeout_ms;    /* a JSON body must arrive within (30 s) */
	unsigned idle_timeout_s;     /* idle keep-alive connections are closed (60 s) */
	unsigned threads;            /* HTTP threads (1) */
	/* Secrets: the master key wraps every org's data key. From this file,
	 * else from master_key (text: 64 hex or base64; $KILN_MASTER_KEY in the
	 * CLI), else <state_dir>/master.key, generated (0600) on first start. */
	const char *master_key_file;
	const char *master_key;
	int64_t max_running_per_org; /* leased + running jobs per org; 0 = no cap */
	/* Per-org token buckets (requests per second; burst = rate x burst_s; 0 =
	 * no limit): API calls of people and scripts (not agents, not admins),
	 * jobs submitted, webhook deliveries. */
	double org_api_rate, org_submit_rate, org_webhook_rate;
	double org_burst_s;
	/* GitHub workflow_job intake (POST /v1/webhooks/github[/ORG]). */
	const char *github_runner_command; /* the step a queued GitHub job becomes (a template
					    * reading GH_* variables; default: explains itself) */
	const char *github_runner_secrets; /* secrets that job names ("A,B"), or NULL */
	uint64_t webhook_body_max;     /* largest delivery (25 MiB, GitHub's own cap) */
	uint64_t webhook_retention_ms; /* delivery ids kept for replay checks (>= 8 days) */
};

/* Fills the defaults above. */
void server_config_init(struct server_config *c);

/*
 * Opens the state directory (created 0700 if missing; locked so one server
 * owns it), the store, and rebuilds the scheduler's indexes from it.
 */
int server_new(const struct server_config *c, struct server **ret, struct kiln_err *err);
/* Binds and starts serving. -EADDRINUSE etc. with err set. */
int server_start(struct server *s, struct kiln_err *err);
/* "HOST:PORT" actually bound (valid after server_start). */
const char *server_address(const struct server *s);
/* Stops serving; idempotent. */
void server_stop(struct server *s);
void server_free(struct server *s);

/*
 * Tokens (docs/decisions: auth model, bootstrap). On the first start of a
 * state directory whose store has no token, server_new() mints an admin
 * token and writes it, alone on one line, to <state_dir>/admin.token (0600);
 * the token itself is never logged.
 *
 * server_admin_token() mints another admin token in the default org, durable
 * when it returns (`kiln up` writes one to the client config); *ret is the
 * token, shown only here: the store keeps its hash. The caller frees it.
 */
int server_admin_token(struct server *s, const char *name, char **ret, struct kiln_err *err);
/* <state_dir>/admin.token when this start wrote it, else NULL. */
const char *server_bootstrap_token_path(const struct server *s);
/*
 * The same without a running server: opens the store of state_dir (or
 * store_url) directly (safe while a server runs on it: the server finds the
 * new token on its first use). For `kiln admin token`.
 */
int server_mint_admin_token(const char *state_dir, const char *store_url, const char *name,
			    char **ret, struct kiln_err *err);

/*
 * The server's metrics registry (GET /metrics), for what runs in the same
 * process to publish into (kiln up's agent). Lives until server_free().
 */
struct metrics *server_metrics(struct server *s);

/* Prints "METHOD PATH" for every route (for docs/api.yaml checks). */
void server_print_routes(FILE *f);
