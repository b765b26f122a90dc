/*
 * metrics: the agent's Prometheus families, the hooks the lease loop, the
 * runners and the heartbeat call, and `--metrics-listen`: GET /metrics on a
 * small libmicrohttpd daemon of its own. In `kiln up` the agent publishes
 * into the server's registry instead, so one /metrics shows both.
 *
 * Names are kiln_agent_* and never collide with the server's families
 * (both may live in one registry). Labels: states and results only.
 */
#include "agent-internal.h"
#include "lazylib/lazylib.h"
#include "metrics/metrics.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <sys/socket.h>

struct agent_obs {
	struct metrics *reg;
	bool own_reg;
	struct MHD_Daemon *mhd;
	struct metric *info, *running, *slots, *draining, *warm, *server_up;
	struct metric *finished, *duration, *start, *polls, *heartbeats;
};

/* Lease to "the sandbox is set up and the job started": 1 ms .. 60 s. */
static const double start_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25,  0.5,    1,     2.5,  5,     15,   60};

static void collect(struct metrics *m, void *ud)
{
	(void)m;
	struct agent *a = ud;
	struct agent_obs *o = a->obs;
	pthread_mutex_lock(&a->lock);
	unsigned running = 0; /* not a->n_jobs: finished runners wait to be reaped */
	for (struct job *j = a->jobs; j; j = j->next)
		running += !atomic_load(&j->done);
	bool draining = a->stopping;
	size_t warm = a->n_warm;
	pthread_mutex_unlock(&a->lock);
	metric_set(o->running, NULL, running);
	metric_set(o->slots, NULL, (double)a->capacity.slots);
	metric_set(o->draining, NULL, draining);
	metric_set(o->warm, NULL, (double)warm);
}

void agent_obs_init(struct agent *a, struct metrics *shared)
{
	struct agent_obs *o = xcalloc(1, sizeof(*o));
	o->own_reg = !shared;
	o->reg = shared ? shared : metrics_new();
	struct metrics *m = o->reg;
	static const char *const l_info[] = {"agent", "version", NULL};
	static const char *const l_state[] = {"state", NULL};
	static const char *const l_result[] = {"result", NULL};
	o->info = metrics_gauge(m, "kiln_agent_info",
	                        "This agent's name and kiln version; always 1.", l_info);
	metric_set(o->info, (const char *const[]){a->name, KILN_VERSION}, 1);
	o->running =
	    metrics_gauge(m, "kiln_agent_running_jobs", "Jobs this agent is running.", NULL);
	o->slots =
	    metrics_gauge(m, "kiln_agent_capacity_slots", "Jobs this agent runs at once.", NULL);
	o->draining = metrics_gauge(m, "kiln_agent_draining",
	                            "1 while the agent drains (takes no new leases).", NULL);
	o->warm =
	    metrics_gauge(m, "kiln_agent_warm_sandboxes", "Warm sandboxes ready for a job.", NULL);
	o->server_up = metrics_gauge(m, "kiln_agent_server_up",
	                             "1 when the last heartbeat reached the server, else 0.", NULL);
	o->finished = metrics_counter(m, "kiln_agent_jobs_finished_total",
	                              "Jobs this agent ran to an end, by how they ended.", l_state);
	o->duration = metrics_histogram(m, "kiln_agent_job_duration_seconds",
	                                "Wall time of the jobs this agent ran.", NULL,
	                                metrics_duration_buckets, metrics_duration_buckets_n);
	o->start = metrics_histogram(m, "kiln_agent_job_start_seconds",
	                             "From the lease's arrival to the job's sandbox set up and its "
	                             "first step started.",
	                             NULL, start_buckets, ARRAY_SIZE(start_buckets));
	o->polls = metrics_counter(m, "kiln_agent_lease_polls_total",
	                           "Lease long-polls, by result: job, empty, error.", l_result);
	o->heartbeats = metrics_counter(m, "kiln_agent_heartbeats_total",
	                                "Heartbeats, by result: ok, error.", l_result);
	if (o->own_reg)
		metrics_add_process(m);
	metrics_on_collect(m, collect, a);
	a->obs = o;
}

void agent_obs_job_started(struct agent *a, uint64_t since_lease_ns)
{
	metric_observe(a->obs->start, NULL, (double)since_lease_ns / 1e9);
}

void agent_obs_job_finished(struct agent *a, enum job_state st, const json_t *usage)
{
	metric_add(a->obs->finished, (const char *const[]){job_state_to_string(st)}, 1);
	json_t *w = json_object_get(usage, "wall_ms");
	if (json_is_integer(w))
		metric_observe(a->obs->duration, NULL, (double)json_integer_value(w) / 1e3);
}

void agent_obs_poll(struct agent *a, const char *result)
{
	metric_add(a->obs->polls, (const char *const[]){result}, 1);
}

void agent_obs_heartbeat(struct agent *a, bool ok)
{
	metric_add(a->obs->heartbeats, (const char *const[]){ok ? "ok" : "error"}, 1);
	metric_set(a->obs->server_up, NULL, ok);
}

/* ---- GET /metrics (--metrics-listen) --------------------------------------- */

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
	(void)version;
	(void)upload;
	(void)con_cls;
	struct agent_obs *o = cls;
	struct MHD_Response *resp;
	unsigned status;
	if (*upload_size) {
		*upload_size = 0; /* a body is not wanted: dropped */
		return MHD_YES;
	}
	if (!streq(url, "/metrics")) {
		char *nf = xstrdup("not found: the agent serves only GET /metrics\n");
		resp = MHD_create_response_from_buffer(strlen(nf), nf, MHD_RESPMEM_MUST_FREE);
		status = MHD_HTTP_NOT_FOUND;
	} else if (!streq(method, "GET") && !streq(method, "HEAD")) {
		char *na = xstrdup("method not allowed: GET /metrics\n");
		resp = MHD_create_response_from_buffer(strlen(na), na, MHD_RESPMEM_MUST_FREE);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
		status = MHD_HTTP_METHOD_NOT_ALLOWED;
	} else {
		struct buf out = BUF_INIT;
		metrics_render(o->reg, &out);
		size_t len = out.len;
		resp = MHD_create_response_from_buffer(len, buf_steal(&out), MHD_RESPMEM_MUST_FREE);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
		                        "text/plain; version=0.0.4; charset=utf-8");
		status = MHD_HTTP_OK;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	enum MHD_Result r = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return r;
}

__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	log_debug_library("libmicrohttpd (metrics)", fmt, ap);
}

static void bound_address(struct MHD_Daemon *d, char out[96])
{
	snprintf(out, 96, "?");
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_LISTEN_FD);
	struct sockaddr_storage b = {0};
	socklen_t len = sizeof(b);
	if (di && getsockname(di->listen_fd, (struct sockaddr *)&b, &len) == 0)
		sockaddr_format(&b, out, 96);
}

int agent_obs_listen(struct agent *a, const char *listen, struct kiln_err *err)
{
	struct sockaddr_storage ss = {0};
	int r = listen_addr_parse(listen, "--metrics-listen", "127.0.0.1:9101", false, &ss, NULL,
	                          err);
	if (r < 0)
		return r;
	r = lazylib_load_mhd(err);
	if (r < 0)
		return r;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	struct agent_obs *o = a->obs;
	o->mhd = MHD_start_daemon(flags, 0, NULL, NULL, answer, o, MHD_OPTION_EXTERNAL_LOGGER,
	                          mhd_log, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
	                          MHD_OPTION_CONNECTION_LIMIT, (unsigned)16,
	                          MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
	                          MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, MHD_OPTION_END);
	if (!o->mhd) {
		int e = errno ? -errno : -EADDRINUSE;
		return kiln_err_set(err, e, "cannot serve metrics on '%s': %s", listen,
		                    strerror(-e));
	}
	char addr[96];
	bound_address(o->mhd, addr);
	log_info("agent metrics listening addr=%s path=/metrics", addr);
	return 0;
}

void agent_obs_free(struct agent *a)
{
	struct agent_obs *o = a->obs;
	if (!o)
		return;
	if (o->mhd)
		MHD_stop_daemon(o->mhd);
	/* A shared registry outlives the agent: it must not call back into it. */
	metrics_remove_collector(o->reg, collect, a);
	if (o->own_reg)
		metrics_free(o->reg);
	free(o);
	a->obs = NULL;
}
