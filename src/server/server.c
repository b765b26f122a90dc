/*
 * server: lifecycle (state directory, store, indexes, HTTP, timer), the
 * route table and the health endpoints.
 *
 * State directory layout:
 *   kiln.db (+ -wal, -shm)   the SQLite store
 *   lock                     flock()ed by the one server that owns the directory
 *   logs/<job>/<attempt>.*   job logs
 *   artifacts/blobs/aa/<sha256>, artifacts/tmp/   artifact content
 */
#include "server-internal.h"
#include "auth/auth.h"

#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <sys/file.h>
#include <sys/stat.h>

void server_config_init(struct server_config *c)
{
	*c = (struct server_config){
		.listen = "127.0.0.1:7700",
		.state_dir = NULL,
		.durable = true,
		.lease_ttl_ms = 30000,
		.timeout_grace_ms = 30000,
		.max_wait_ms = 60000,
		.agent_offline_ms = 90000,
		.log_cap = 64ULL << 20,
		.log_chunk_max = 1 << 20,
		.artifact_max = 1ULL << 30,
		.body_max = 1 << 20,
		.max_connections = 1000,
		.per_ip_connections = 0,
		.header_timeout_ms = 10000,
		.body_timeout_ms = 30000,
		.idle_timeout_s = 60,
		.threads = 1,
		.github_runner_command = SERVER_DEFAULT_RUNNER_COMMAND,
		.webhook_body_max = 25ULL << 20,
		.webhook_retention_ms = 8ULL * 24 * 3600 * 1000,
		.org_api_rate = 200,
		.org_submit_rate = 100,
		.org_webhook_rate = 50,
		.org_burst_s = 10,
	};
}

/* ---- routes --------------------------------------------------------------- */

#define R(m, p, n, b, f, h, d)                                                                  \
	{                                                                                       \
		.method = m, .pattern = p, .name = n, .body = b, .flags = f, .handle = h,       \
		.on_data = d, .stats = &(struct route_stats){0}                                 \
	}

#define AGENT ROUTE_AGENT
#define JOB ROUTE_JOB
#define READ ROUTE_READ
#define WRITE (ROUTE_WRITE | ROUTE_AUDIT)
#define OWNER (ROUTE_OWNER | ROUTE_AUDIT)
#define ADMIN (ROUTE_ADMIN | ROUTE_AUDIT)

const struct route server_routes[] = {
	R("GET", "/healthz", "healthz", BODY_NONE, ROUTE_PUBLIC, h_healthz, NULL),
	R("GET", "/readyz", "readyz", BODY_NONE, ROUTE_ANY, h_readyz, NULL),
	R("GET", "/metrics", "metrics", BODY_NONE, ROUTE_METRICS, h_metrics, NULL),
	R("POST", "/v1/jobs", "jobs.submit", BODY_TEXT, WRITE, h_jobs_submit, NULL),
	R("GET", "/v1/jobs", "jobs.list", BODY_NONE, READ, h_jobs_list, NULL),
	R("GET", "/v1/jobs/{id}", "jobs.get", BODY_NONE, READ, h_jobs_get, NULL),
	R("POST", "/v1/jobs/{id}/cancel", "jobs.cancel", BODY_NONE, WRITE, h_jobs_cancel, NULL),
	R("POST", "/v1/jobs/{id}/retry", "jobs.retry", BODY_NONE, WRITE, h_jobs_retry, NULL),
	R("POST", "/v1/jobs/{id}/status", "jobs.status", BODY_JSON, JOB, h_jobs_status, NULL),
	R("POST", "/v1/jobs/{id}/complete", "jobs.complete", BODY_JSON, JOB | ROUTE_AUDIT,
	  h_jobs_complete, NULL),
	R("POST", "/v1/jobs/{id}/log", "jobs.log.append", BODY_LOG, JOB, h_log_append, NULL),
	R("GET", "/v1/jobs/{id}/log", "jobs.log.get", BODY_NONE, READ, h_log_get, NULL),
	R("GET", "/v1/jobs/{id}/artifacts", "artifacts.list", BODY_NONE, READ, h_artifacts_list,
	  NULL),
	R("PUT", "/v1/jobs/{id}/artifacts/{path*}", "artifacts.put", BODY_STREAM,
	  JOB | ROUTE_AUDIT, h_artifact_put, h_artifact_put_data),
	R("GET", "/v1/jobs/{id}/artifacts/{path*}", "artifacts.get", BODY_NONE, READ,
	  h_artifact_get, NULL),
	R("POST", "/v1/agents", "agents.register", BODY_JSON, AGENT | ROUTE_AUDIT,
	  h_agents_register, NULL),
	R("GET", "/v1/agents", "agents.list", BODY_NONE, READ, h_agents_list, NULL),
	R("GET", "/v1/usage", "usage", BODY_NONE, READ, h_usage, NULL),
	R("GET", "/v1/stats", "stats", BODY_NONE, ROUTE_ADMIN, h_stats, NULL),
	R("GET", "/v1/overview", "overview", BODY_NONE, READ, h_overview, NULL),
	R("GET", "/v1/agents/{id}", "agents.get", BODY_NONE, READ, h_agents_get, NULL),
	R("POST", "/v1/agents/{id}/drain", "agents.drain", BODY_JSON, OWNER, h_agents_drain, NULL),
	R("POST", "/v1/agents/{id}/lease", "agents.lease", BODY_JSON, AGENT, h_agents_lease, NULL),
	R("POST", "/v1/agents/{id}/heartbeat", "agents.heartbeat", BODY_JSON, AGENT,
	  h_agents_heartbeat, NULL),
	R("POST", "/v1/agents/{id}/release", "agents.release", BODY_JSON, AGENT | ROUTE_AUDIT,
	  h_agents_release, NULL),
	R("GET", "/v1/whoami", "whoami", BODY_NONE, ROUTE_ANY, h_whoami, NULL),
	R("GET", "/v1/orgs", "orgs.list", BODY_NONE, READ, h_orgs_list, NULL),
	R("POST", "/v1/orgs", "orgs.create", BODY_JSON, ADMIN, h_orgs_create, NULL),
	R("POST", "/v1/orgs/{name}/limits", "orgs.limits", BODY_JSON, ADMIN, h_orgs_limits, NULL),
	R("GET", "/v1/tokens", "tokens.list", BODY_NONE, ROUTE_OWNER, h_tokens_list, NULL),
	R("POST", "/v1/tokens", "tokens.create", BODY_JSON, OWNER, h_tokens_create, NULL),
	R("POST", "/v1/tokens/{id}/revoke", "tokens.revoke", BODY_NONE, OWNER, h_tokens_revoke,
	  NULL),
	R("POST", "/v1/admin/rotate-key", "admin.rotate_key", BODY_JSON, ADMIN, h_admin_rotate_key,
	  NULL),
	R("POST", "/v1/webhooks/github", "webhooks.github", BODY_WEBHOOK,
	  ROUTE_WEBHOOK | ROUTE_AUDIT, h_webhook_github, NULL),
	R("POST", "/v1/webhooks/github/{org}", "webhooks.github.org", BODY_WEBHOOK,
	  ROUTE_WEBHOOK | ROUTE_AUDIT, h_webhook_github, NULL),
	R("PUT", "/v1/github/webhook-secret", "github.secret.set", BODY_TEXT, OWNER,
	  h_webhook_secret_put, NULL),
	R("DELETE", "/v1/github/webhook-secret/previous", "github.secret.drop_previous", BODY_NONE,
	  OWNER, h_webhook_secret_drop_previous, NULL),
	R("GET", "/v1/github/deliveries", "github.deliveries", BODY_NONE, READ,
	  h_webhook_deliveries, NULL),
	R("GET", "/v1/audit", "audit.list", BODY_NONE, ROUTE_OWNER, h_audit_list, NULL),
	R("GET", "/v1/audit/verify", "audit.verify", BODY_NONE, ROUTE_ADMIN, h_audit_verify, NULL),
	R("GET", "/v1/secrets", "secrets.list", BODY_NONE, READ, h_secrets_list, NULL),
	R("PUT", "/v1/secrets/{name}", "secrets.set", BODY_TEXT, OWNER, h_secret_put, NULL),
	R("DELETE", "/v1/secrets/{name}", "secrets.delete", BODY_NONE, OWNER, h_secret_delete,
	  NULL),
};
const size_t server_routes_count = ARRAY_SIZE(server_routes);

void h_healthz(struct req *r)
{
	req_reply_json(r, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
}

void h_readyz(struct req *r)
{
	struct server *s = r->srv;
	if (!atomic_load(&s->ready) || atomic_load(&s->stopping)) {
		req_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "not_ready",
				"the server is %s", atomic_load(&s->stopping) ? "stopping" : "starting");
		return;
	}
	struct store_stats st;
	store_get_stats(s->store, &st);
	pthread_mutex_lock(&s->lock);
	size_t jobs = s->n_jobs, agents = 0;
	for (struct sagent *a = s->agents; a; a = a->next)
		agents++;
	pthread_mutex_unlock(&s->lock);
	req_reply_json(r, MHD_HTTP_OK,
		       json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:f,s:I,s:I}", "status", "ready",
				 "store", store_backend(s->store), "jobs_in_memory", (json_int_t)jobs,
				 "agents", (json_int_t)agents, "commits", (json_int_t)st.batches,
				 "mutations", (json_int_t)st.mutations, "max_batch",
				 (json_int_t)st.max_batch, "commit_ms_mean",
				 st.batches ? (double)st.commit_ns / 1e6 / (double)st.batches : 0.0,
				 "wal_frames", (json_int_t)st.wal_frames, "wal_checkpointed",
				 (json_int_t)st.wal_checkpointed));
}

/* ---- the worker ----------------------------------------------------------- */

static void *worker_main(void *p)
{
	struct server *s = p;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	pthread_mutex_lock(&s->wlock);
	for (;;) {
		while (!s->whead && s->wrunning)
			pthread_cond_wait(&s->wcond, &s->wlock);
		if (!s->whead)
			break;
		struct work *w = s->whead;
		s->whead = w->next;
		if (!s->whead)
			s->wtail = &s->whead;
		pthread_mutex_unlock(&s->wlock);
		w->fn(w->arg);
		free(w);
		pthread_mutex_lock(&s->wlock);
	}
	pthread_mutex_unlock(&s->wlock);
	return NULL;
}

void server_defer(struct server *s, void (*fn)(void *arg), void *arg)
{
	pthread_mutex_lock(&s->wlock);
	if (!s->wrunning) {
		pthread_mutex_unlock(&s->wlock);
		fn(arg);
		return;
	}
	struct work *w = xcalloc(1, sizeof(*w));
	w->fn = fn;
	w->arg = arg;
	*s->wtail = w;
	s->wtail = &w->next;
	pthread_cond_signal(&s->wcond);
	pthread_mutex_unlock(&s->wlock);
}

static void worker_stop(struct server *s)
{
	pthread_mutex_lock(&s->wlock);
	bool was = s->wrunning;
	s->wrunning = false;
	pthread_cond_signal(&s->wcond);
	pthread_mutex_unlock(&s->wlock);
	if (was)
		pthread_join(s->worker, NULL); /* it drains the queue first */
}

/* ---- lifecycle ------------------------------------------------------------ */

static int check_config(const struct server_config *c, struct kiln_err *err)
{
	if (!c->state_dir || !*c->state_dir)
		return kiln_err_set(err, -EINVAL, "a state directory is required");
	if (c->log_cap < 64 * 1024)
		return kiln_err_set(err, -EINVAL, "the log cap must be at least 64Ki");
	if (c->lease_ttl_ms < 100)
		return kiln_err_set(err, -EINVAL, "the lease TTL must be at least 100ms");
	if (c->threads < 1 || c->threads > 64)
		return kiln_err_set(err, -EINVAL, "threads must be in 1..64");
	if (c->max_connections < 4)
		return kiln_err_set(err, -EINVAL, "max connections must be at least 4");
	if (c->webhook_retention_ms < 8ULL * 24 * 3600 * 1000)
		return kiln_err_set(err, -EINVAL,
				    "webhook deliveries must be kept at least 8 days (GitHub "
				    "redelivers for 3, Enterprise Server for 7)");
	if (!c->github_runner_command || !*c->github_runner_command)
		return kiln_err_set(err, -EINVAL, "the GitHub runner command is empty");
	return 0;
}

static int make_dirs(struct server *s, struct kiln_err *err)
{
	const char *dirs[] = {s->state_dir, s->logs_dir, s->blobs_dir, s->tmp_dir};
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		int r = mkdir_p(dirs[i], 0700);
		if (r < 0)
			return kiln_err_set(err, r, "cannot create '%s': %s", dirs[i], strerror(-r));
	}
	return 0;
}

static int take_lock(struct server *s, struct kiln_err *err)
{
	_cleanup_free_ char *p = path_join(s->state_dir, "lock");
	s->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (s->lock_fd < 0)
		return kiln_err_set(err, -errno, "cannot open '%s': %s", p, strerror(errno));
	if (flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		int r = -errno;
		return kiln_err_set(err, r == -EWOULDBLOCK ? -EBUSY : r,
				    "state directory '%s' is in use by another kiln server",
				    s->state_dir);
	}
	return 0;
}

int server_new(const struct server_config *c, struct server **ret, struct kiln_err *err)
{
	int r = check_config(c, err);
	if (r < 0)
		return r;
	if (auth_init() < 0)
		return kiln_err_set(err, -EIO, "libsodium failed to initialise");
	struct server *s = xcalloc(1, sizeof(*s));
	s->cfg = *c;
	s->lock_fd = -1;
	s->state_dir = xstrdup(c->state_dir);
	s->cfg.state_dir = s->state_dir;
	s->listen = xstrdup(c->listen ? c->listen : "127.0.0.1:7700");
	s->cfg.listen = s->listen;
	s->logs_dir = path_join(s->state_dir, "logs");
	s->blobs_dir = path_join(s->state_dir, "artifacts/blobs");
	s->tmp_dir = path_join(s->state_dir, "artifacts/tmp");
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->wlock, NULL);
	pthread_cond_init(&s->wcond, NULL);
	s->wtail = &s->whead;
	s->wrunning = true; /* before the thread looks at it */
	if (pthread_create(&s->worker, NULL, worker_main, s) != 0)
		s->wrunning = false; /* deferred work then runs inline */
	pthread_mutex_init(&s->auth_lock, NULL);
	pthread_mutex_init(&s->keys_lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->timer_cond, &ca);
	pthread_condattr_destroy(&ca);
	obs_init(s);

	r = make_dirs(s, err);
	if (r >= 0)
		r = take_lock(s, err);
	if (r >= 0) {
		_cleanup_free_ char *db = path_join(s->state_dir, "kiln.db");
		_cleanup_free_ char *url = c->store_url ? xstrdup(c->store_url)
							 : xasprintf("sqlite:%s", db);
		struct store_options so;
		store_options_init(&so);
		so.durable = c->durable;
		r = store_open(url, &so, &s->store, err);
	}
	/* Orgs before jobs (the scheduler counts each org's running jobs);
	 * keys before leases (job tokens). */
	if (r >= 0)
		r = keys_init(s, err);
	if (r >= 0)
		r = access_init(s, err);
	if (r >= 0)
		r = secrets_init(s, err);
	if (r >= 0)
		r = sched_load(s, err);
	if (r < 0) {
		server_free(s);
		return r;
	}
	*ret = s;
	return 0;
}

int server_start(struct server *s, struct kiln_err *err)
{
	if (s->started)
		return 0;
	int r = http_start(s, err);
	if (r < 0)
		return r;
	s->timer_running = true;
	r = -pthread_create(&s->timer, NULL, sched_timer_main, s);
	if (r < 0) {
		s->timer_running = false;
		http_stop(s);
		return kiln_err_set(err, r, "cannot start the timer thread: %s", strerror(-r));
	}
	s->started = true;
	atomic_store(&s->ready, true);
	log_info("kiln server listening addr=%s state=%s store=%s", s->address, s->state_dir,
		 store_backend(s->store));
	return 0;
}

const char *server_address(const struct server *s) { return s->address; }

void server_stop(struct server *s)
{
	if (!s || !s->started)
		return;
	atomic_store(&s->ready, false);
	pthread_mutex_lock(&s->lock);
	s->timer_running = false;
	pthread_cond_signal(&s->timer_cond);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->timer, NULL);
	http_stop(s);
	s->started = false;
	log_info("kiln server stopped");
}

void server_free(struct server *s)
{
	if (!s)
		return;
	server_stop(s);
	worker_stop(s); /* its work may still queue mutations: before the store closes */
	store_close(s->store);
	sched_free(s); /* logs still open are synced inline now */
	obs_free(s);
	orgs_free(s);
	access_free(s);
	keys_free(s);
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	pthread_mutex_destroy(&s->lock);
	pthread_mutex_destroy(&s->auth_lock);
	pthread_mutex_destroy(&s->keys_lock);
	pthread_cond_destroy(&s->timer_cond);
	pthread_mutex_destroy(&s->wlock);
	pthread_cond_destroy(&s->wcond);
	free(s->listen);
	free(s->state_dir);
	free(s->logs_dir);
	free(s->blobs_dir);
	free(s->tmp_dir);
	free(s);
}
