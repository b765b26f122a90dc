/*
 * client: an HTTP client of kiln's API (libcurl), used by the CLI verbs and
 * by the agent. One struct kiln_client is one keep-alive connection: use it
 * from one thread at a time.
 *
 * Errors: functions return 0 on a 2xx answer; otherwise a negative errno
 * with err set to a sentence: the server's own message for an API error
 * (its HTTP status in *ret_status where asked, the "code" in err too), or
 * "cannot reach the kiln server at URL: ..." for a transport failure
 * (-ECONNREFUSED, -ETIMEDOUT, -EIO). Mapping of statuses: 400 -EINVAL,
 * 404 -ENOENT, 409 -ESTALE (a stale fence, a job in the wrong state),
 * 413 -EFBIG, 5xx -EIO, other -EPROTO.
 */
#pragma once

#include "base/base.h"
#include "proto/proto.h"

#include <jansson.h>

/* ---- configuration -------------------------------------------------------- */

#define CLIENT_DEFAULT_SERVER "http://127.0.0.1:7700"

struct client_config {
	char *server; /* "http://HOST:PORT" */
	char *token;  /* NULL: none */
	char *source; /* where server came from: "--server", "KILN_ADDR", a file, "default" */
};

/*
 * Resolves the server address and token: flags (non-NULL arguments) first,
 * then $KILN_ADDR / $KILN_TOKEN, then the config file
 * ($XDG_CONFIG_HOME/kiln/config, else ~/.config/kiln/config; $KILN_CONFIG
 * overrides the path), then the default. The file holds `key = value`
 * lines (keys: server, token; '#' starts a comment). A malformed file is an
 * error naming file:line.
 */
int client_config_load(const char *flag_server, const char *flag_token,
		       struct client_config *ret, struct kiln_err *err);
void client_config_release(struct client_config *c);
/*
 * Parses config file text (`path` names it in messages); sets *server and
 * *token (caller frees) only where they are still NULL. -EINVAL with
 * "path:line: ..." for a malformed line.
 */
int client_config_parse(const char *path, const char *text, size_t len, char **server,
			char **token, struct kiln_err *err);
/* The config file path that client_config_load reads (caller frees). */
char *client_config_path(void);

/* ---- the client ----------------------------------------------------------- */

struct kiln_client;

/* `server` is "http://HOST:PORT" or "HOST:PORT". */
int client_new(const char *server, const char *token, struct kiln_client **ret,
	       struct kiln_err *err);
void client_free(struct kiln_client *c);
const char *client_server(const struct kiln_client *c);
/* Per-request timeout in ms (0 = none; default 60 s). Long-polls add their wait. */
void client_set_timeout(struct kiln_client *c, long ms);
/*
 * Ends the request in progress at once (safe from any thread: a long-poll
 * need not hold up a stop); it and every later request fail with
 * -ECANCELED until client_reset_abort().
 */
void client_abort(struct kiln_client *c);
void client_reset_abort(struct kiln_client *c);

/*
 * One request with an optional body; the answer (JSON) in *ret (NULL for an
 * empty body; the caller decrefs) — for an error answer too, so its fields
 * can be read. *ret_status gets the HTTP status (0 when the server was not
 * reached). Returns 0 for 2xx.
 */
int client_request(struct kiln_client *c, const char *method, const char *path,
		   const char *content_type, const void *body, size_t len, long *ret_status,
		   json_t **ret, struct kiln_err *err);
/* Same with a JSON body (not stolen; NULL for none). */
int client_json(struct kiln_client *c, const char *method, const char *path, json_t *body,
		long *ret_status, json_t **ret, struct kiln_err *err);

/*
 * GET streaming the answer body to `on_data` as it arrives (logs, follow).
 * on_data returns 0 to go on, < 0 to stop. `accept` may be NULL. A non-2xx
 * answer is not streamed: its message goes to err.
 */
int client_stream(struct kiln_client *c, const char *path, const char *accept,
		  int (*on_data)(const void *data, size_t len, void *ud), void *ud,
		  long *ret_status, struct kiln_err *err);

/* PUT the contents of fd (size bytes) as the body; the JSON answer in *ret. */
int client_upload(struct kiln_client *c, const char *path, int fd, uint64_t size,
		  long *ret_status, json_t **ret, struct kiln_err *err);

/* Percent-encodes a path segment or a path ('/' kept when keep_slash). Caller frees. */
char *client_escape(const char *s, bool keep_slash);

/* ---- the agent protocol (docs/internals/server.md) ------------------------- */

struct client_lease {
	int64_t job_id;
	int64_t fence;
	int64_t attempt;
	int64_t max_attempts;
	uint64_t timeout_ms;
	uint64_t lease_ttl_ms;
	char *name;
	json_t *spec; /* the normalised job spec (owned) */
};

void client_lease_release(struct client_lease *l);

/* POST /v1/agents: returns the agent id (re-registering a name keeps its id). */
int client_agent_register(struct kiln_client *c, const char *name, char *const *labels,
			  size_t n_labels, const struct proto_capacity *cap, int64_t *ret_id,
			  uint64_t *ret_lease_ttl_ms, struct kiln_err *err);
/*
 * Long-poll for a job for up to wait_ms. Returns 1 with *ret filled when a
 * job was leased, 0 when the wait ended without one.
 */
int client_lease(struct kiln_client *c, int64_t agent_id, uint64_t wait_ms,
		 struct client_lease *ret, struct kiln_err *err);
/*
 * Renews the listed leases; the answer ({"cancel":[{id,fence,reason}],...})
 * in *ret. wait_ms >= 0 makes it a long-poll for cancels; -1 answers at once.
 */
int client_heartbeat(struct kiln_client *c, int64_t agent_id, const int64_t *ids,
		     const int64_t *fences, size_t n, int64_t wait_ms, json_t **ret,
		     struct kiln_err *err);
/* Reports the job running. -ESTALE: the lease is gone; stop the job. */
int client_job_running(struct kiln_client *c, int64_t job_id, int64_t fence,
		       struct kiln_err *err);
/*
 * Appends a log chunk at `offset`. *ret_size gets the log's size after it.
 * -ESTALE: stale fence (stop the job); -ERANGE: the chunk leaves a gap and
 * *ret_size is the size to resend from.
 */
int client_log_append(struct kiln_client *c, int64_t job_id, int64_t fence, uint64_t offset,
		      const void *data, size_t len, uint64_t *ret_size, struct kiln_err *err);
/* Uploads an artifact from fd; sha256 (hex) may be NULL. */
int client_artifact_put(struct kiln_client *c, int64_t job_id, int64_t fence, const char *path,
			int fd, uint64_t size, const char *sha256, struct kiln_err *err);
/*
 * Reports the end: state is JOB_SUCCEEDED/FAILED/TIMED_OUT/CANCELLED;
 * has_exit_code/exit_code/message optional. *ret_duplicate is set when the
 * server had already accepted this very result (a retransmission).
 */
int client_job_complete(struct kiln_client *c, int64_t job_id, int64_t fence,
			enum job_state state, bool has_exit_code, int exit_code,
			const char *message, bool *ret_duplicate, struct kiln_err *err);
