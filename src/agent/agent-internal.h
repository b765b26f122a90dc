/*
 * agent-internal: the pieces of the agent and how they share state.
 *
 * Threads:
 *   - agent_run()'s thread: registration, then the lease loop (long-polls
 *     while a slot is free; starts one runner per lease);
 *   - the heartbeat thread: renews every lease, learns cancels (a long-poll
 *     the server answers at once when one of our jobs is cancelled), and
 *     fences jobs whose lease it could not renew in time;
 *   - per job, a runner (sandbox, steps, artifacts, completion) and a
 *     shipper (sends the job's spooled output to the server).
 *
 * Locking: agent.lock guards the job list and the agent's flags; job.lock
 * guards a job's spool counters, its stop reason and its sandbox pointer.
 * Lock order: agent.lock before job.lock. Nothing blocks on the network
 * while holding either.
 */
#pragma once

#include "agent.h"
#include "proto/proto.h"
#include "sandbox/sandbox.h"
#include "spec/spec.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>

/* ---- http (http.c): the agent's calls, on src/client ----------------------- */

struct http;

struct http_reply {
	long status;  /* HTTP status */
	json_t *json; /* the body when it is a JSON object (errors too), else NULL */
};

/* "host:port" or a URL -> "http://host:port" without trailing '/'; caller frees. */
char *http_base_url(const char *server);
struct http *http_new(const char *base_url, const char *token);
void http_free(struct http *h);
/* Interrupts the request in progress (any thread); later ones fail at once
 * with -ECANCELED until http_reset_abort(). */
void http_abort(struct http *h);
void http_reset_abort(struct http *h);
/*
 * One request; body (len bytes) is JSON when json_body, else raw bytes.
 * Returns 0 with any HTTP status in ret (the caller releases it), or -errno
 * when the server was not reached (err set; ret empty).
 */
int http_request(struct http *h, const char *method, const char *path, bool json_body,
		 const void *body, size_t len, long timeout_ms, struct http_reply *ret,
		 struct kiln_err *err);
/* A JSON body (NULL: none); does not steal it. */
int http_json(struct http *h, const char *method, const char *path, json_t *body,
	      long timeout_ms, struct http_reply *ret, struct kiln_err *err);
/* PUT of size bytes read from fd (from its current offset). */
int http_put_fd(struct http *h, const char *path, int fd, uint64_t size, long timeout_ms,
		struct http_reply *ret, struct kiln_err *err);
void http_reply_release(struct http_reply *r);
/* The API error body's code / message. */
const char *http_error_code(const struct http_reply *r);
const char *http_error_message(const struct http_reply *r);
/* Percent-encodes everything but unreserved characters and '/'; caller frees. */
char *url_escape_path(const char *s);

/* wire.c: the HTTP/1.1 client for http:// servers (plain sockets, no libcurl). */
struct wire;
/* "http://HOST[:PORT][/PREFIX]" -> parts (caller frees); false otherwise. */
bool wire_parse_url(const char *url, char **host, char **port, char **prefix);
/* NULL when url is not a plain http:// URL (https: libcurl instead). */
struct wire *wire_new(const char *url, const char *token);
void wire_free(struct wire *w);
void wire_abort(struct wire *w);
void wire_reset_abort(struct wire *w);
/*
 * One request on the keep-alive connection: the body is `body` (len bytes)
 * or, when body_fd >= 0, len bytes read from body_fd. Returns 0 with the
 * status and body of any answer, or -errno (err set) when none came.
 */
int wire_request(struct wire *w, const char *method, const char *path, const char *content_type,
		 const void *body, size_t len, int body_fd, long timeout_ms, long *ret_status,
		 struct buf *ret_body, struct kiln_err *err);
/*
 * For fuzz/wire-fuzz.c: reads one answer from fd (taken, closed) as
 * wire_request does, with a body limit; *keep: the connection may be kept.
 * 0, or -EPROTO (err set) / -EPIPE (cut short) / -errno.
 */
int wire_read_answer_fd(int fd, size_t max_body, long *ret_status, struct buf *body, bool *keep,
			struct kiln_err *err);

/* ---- jobs (job.c, ship.c) --------------------------------------------------- */

#define AGENT_SCRIPTS_DIR "/run/kiln" /* where a job's step scripts are, inside */

/* Why a job is being stopped early (job.stop). */
enum job_stop {
	STOP_NONE,
	STOP_CANCELLED, /* the server cancelled it (or ended it: timed out there) */
	STOP_LOST,      /* the lease is gone (expired, fenced): stop writing at once */
	STOP_RELEASE,   /* the agent is stopping: kill, hand the job back to the server */
	STOP_TIMEOUT,   /* the job's own timeout passed (the runner sets it) */
};

struct job {
	struct agent *agent;
	int64_t id, fence, attempt, max_attempts;
	char *name;
	uint64_t timeout_ms;
	struct spec_job *spec; /* NULL when the lease's spec did not load */
	char *spec_error;      /* why not */
	json_t *secrets;       /* {"NAME": "value"} from the lease, or NULL */
	char *token;           /* the lease's job token: its writes (status, log, artifacts,
				* complete) carry it; never given to the job */
	char *dir;             /* <state>/jobs/<id>.<attempt> */
	char *workspace;       /* dir/workspace, or a warm sandbox's */
	char *scripts;         /* dir/scripts, or a warm sandbox's */
	char *extra_dir;       /* the warm sandbox's directory (removed with the job) */
	bool pool_hold;        /* took a warm sandbox and is not past its start (pool.c) */
	uint64_t leased_ns;

	pthread_t runner, shipper;
	bool shipper_started;
	int wake_fd; /* eventfd: wakes the runner's poll (stop requests) */

	pthread_mutex_t lock;
	pthread_cond_t cond; /* spool: data appended / acked / closed */
	/* stop */
	enum job_stop stop;
	char *stop_reason; /* the server's reason ("cancelled", "lease_expired", ...) */
	struct sandbox *sb; /* set while the sandbox exists (kill from any thread) */
	/* spool: the job's output on disk; the shipper sends [acked, end) */
	int spool_fd;
	uint64_t end, acked;
	bool closed;        /* the runner appends nothing more */
	bool ship_dead;     /* the shipper gave up (lease lost): appends are dropped */
	bool last_nl;       /* the last byte appended was '\n' (or nothing yet) */
	uint64_t bucket_ns;  /* send budget: tokens = (now - bucket_ns) / interval, at most the burst */
	/* lease renewal: monotonic time a successful renewal was sent */
	_Atomic uint64_t renewed_ns;
	atomic_bool done; /* the runner has finished (reaped by the lease loop) */

	struct job *next;
};

/* What a job came to, for the completion. */
struct job_outcome {
	enum job_state state;
	bool has_exit_code;
	int exit_code;
	char *message;
	json_t *usage; /* {"wall_ms":..,"cpu_user_ms":..,...} */
	json_t *steps; /* [{"name","state","exit_code","duration_ms",...}] */
};

/* run.c: the sandbox and the steps. Fills *out (also on failure). */
int job_run(struct job *j, struct job_outcome *out);

/* job.c */
struct job *job_new(struct agent *a, json_t *lease, struct kiln_err *err);
int job_start(struct job *j);
/* Reports a job job_start() could not start as failed (with why). */
void job_fail_unstarted(struct job *j, struct http *h, int error);
void job_free(struct job *j);
/* Stops a job early (any thread): records why, kills its sandbox, wakes it. */
void job_request_stop(struct job *j, enum job_stop why, const char *reason);
enum job_stop job_stop_reason(struct job *j);
/* A lease renewal for this job was sent at sent_ns and accepted. */
void job_renewed(struct job *j, uint64_t sent_ns);

/* ship.c: the spool and the shipper */
int spool_open(struct job *j);
/* Appends bytes (masked output or markers); never blocks on the network. */
void spool_append(struct job *j, const void *data, size_t len);
/* Appends a marker line "##[kiln] ..." (preceded by '\n' if the output
 * before it did not end with one). */
void spool_marker(struct job *j, const char *fmt, ...) KILN_PRINTF(2, 3);
int shipper_start(struct job *j);
/*
 * Closes the spool and waits for the shipper to send everything (or to give
 * up because the lease is gone). Returns 0 when the server has the whole log,
 * -ESTALE when the lease was lost, -ECANCELED when the job was stopped.
 */
int shipper_finish(struct job *j);

/* seed.c: copies src (or only the listed relative paths in it) into dst,
 * never descending into the directory `skip` (nor dst itself). */
int copy_tree(const char *src, const char *dst, const char *skip, char *const *files,
	      size_t n_files, struct kiln_err *err);

/* pool.c: warm sandboxes (of the shape of the last job) */
char *pool_key(const struct sandbox_config *c);
int pool_start(struct agent *a, const struct sandbox_config *initial);
/* Gives j a warm sandbox of c's shape (j->sb, workspace, scripts, extra_dir)
 * if one is ready or being made (then it waits for it); in any case, the
 * pool makes the next ones of that shape. */
bool pool_take(struct agent *a, const struct sandbox_config *c, struct job *j);
/* j is past its start (its first step ended, ran POOL_HOLD_MS, or could not
 * start): the pool may make the next sandbox now. Making one while a job
 * starts its first process slows that start (CPU, and the kernel's
 * namespace and cgroup locks). Idempotent; the runner's thread only. */
void pool_release(struct agent *a, struct job *j);
void pool_stop(struct agent *a);

/* artifacts.c */
/* Uploads the spec's artifacts from the workspace; appends a marker per problem. */
int artifacts_upload(struct job *j, struct http *h);

/* ---- the agent (agent.c) ------------------------------------------------------ */

struct agent_img {
	char *name, *dir;
};

struct agent {
	struct agent_config cfg; /* strings below are owned copies */
	char *state_dir, *jobs_dir, *sandbox_dir, *base_url, *token, *name;
	char *cgroup_parent, *init_path, *seed_dir;
	char **seed_files;
	size_t n_seed_files;
	struct agent_img *images;
	size_t n_images;
	char **labels;
	size_t n_labels, cap_labels;
	struct proto_capacity capacity;
	struct host_info *host;
	struct sandbox_probe probe;
	int lock_fd;

	int64_t id;
	uint64_t ttl_ms, heartbeat_ms;

	pthread_mutex_t lock;
	pthread_cond_t cond; /* a job finished, a stop was asked, heartbeat wake */
	struct job *jobs;    /* running jobs */
	unsigned n_jobs;
	bool stopping;      /* no new leases */
	bool drain;         /* stopping by draining */
	bool kill_now;      /* stopping without drain (or past the drain deadline) */
	bool run_done;      /* agent_run() is finishing: the heartbeat thread exits */
	uint64_t drain_deadline_ns;
	struct http *lease_http, *hb_http;
	pthread_t hb_thread;
	bool hb_started;

	/* warm sandboxes (pool.c), under lock */
	struct warm **warm_v;
	size_t n_warm;
	unsigned pool_holds; /* jobs between pool_take() and pool_release() */
	uint64_t warm_seq;
	char *want_key, *want_rootfs;
	struct sandbox_config want_cfg;
	pthread_cond_t pool_cond;
	pthread_t pool_thread;
	bool pool_started, pool_stop;
	bool pool_making; /* the pool thread is making one (of want_key's shape) */

	struct agent_obs *obs; /* metrics.c */
};

/* metrics.c: the agent's metrics (docs/metrics.md). */
void agent_obs_init(struct agent *a, struct metrics *shared);
/* Serves GET /metrics on listen ("HOST:PORT"); -errno with err set. */
int agent_obs_listen(struct agent *a, const char *listen, struct kiln_err *err);
void agent_obs_free(struct agent *a);
void agent_obs_job_started(struct agent *a, uint64_t since_lease_ns);
void agent_obs_job_finished(struct agent *a, enum job_state st, const json_t *usage);
void agent_obs_poll(struct agent *a, const char *result); /* job, empty, error */
void agent_obs_heartbeat(struct agent *a, bool ok);

/* Re-registers after the server forgot this agent (404). */
int agent_register(struct agent *a, struct http *h, struct kiln_err *err);
/* Runs every job's last words: released to the server with reason. */
void agent_release_job(struct agent *a, struct http *h, struct job *j, const char *reason);
/* Backoff for retries: 100 ms doubling to 2 s. */
uint64_t backoff_ms(unsigned attempt);
/* Sleeps up to ms unless the agent is told to stop; true if it was. */
bool agent_sleep(struct agent *a, uint64_t ms);
/* The heartbeat thread's sleep: until ms passed or agent_run() ends. */
void agent_sleep_hb(struct agent *a, uint64_t ms);

/* heartbeat.c */
void *heartbeat_main(void *p);
