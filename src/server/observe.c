/*
 * observe: the server's Prometheus metrics — the registry, the hooks the
 * request path and the scheduler call, the collectors that read the
 * in-memory indexes at scrape time, and GET /metrics. docs/metrics.md lists
 * every family.
 *
 * Cost on hot paths: HTTP requests touch only their route's atomic counters
 * (http.c count()); a lease grant observes one histogram under its family
 * lock (server.lock is held already, so it is uncontended). Gauges (queue
 * depth, agents, slots) are computed when /metrics is scraped, from the
 * scheduler's indexes: O(classes + agents + active leases), never O(jobs).
 *
 * Labels come from bounded sets only: route names from the route table,
 * status codes, job states, orgs, executors. Never job or agent ids.
 */
#include "server-internal.h"
#include "metrics/metrics.h"

#include <inttypes.h>
#include <math.h>

struct server_obs {
	struct metrics *reg;
	/* counters and histograms fed by hooks */
	struct metric *jobs_submitted, *jobs_ended, *jobs_requeued, *rate_limited;
	struct metric *leases_granted, *lease_expired, *dispatch_latency;
	struct metric *job_duration, *job_cpu, *job_mem_peak;
	struct metric *job_io_read, *job_io_write, *job_gpu_seconds, *job_oom;
	/* snapshots filled by collectors */
	struct metric *http_requests, *http_duration;
	struct metric *queue_depth, *queue_unschedulable, *jobs_active, *lease_waiters;
	struct metric *agents, *agent_slots, *agent_gpus;
	struct metric *store_commits, *store_mutations, *store_commit_seconds;
	struct metric *build_info;
};

/* ---- HTTP: per-route atomics (http.c) ------------------------------------ */

const uint64_t http_latency_bounds_ns[HTTP_LATENCY_BUCKETS] = {
    100000,   250000,    500000,    1000000,   2500000,    5000000,    10000000,    25000000,
    50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000, 10000000000, 60000000000,
};

static const unsigned code_slots[HTTP_CODE_SLOTS - 5] = {
    200, 201, 202, 204, 206, 304, 400, 401, 403, 404, 405, 406,
    409, 410, 412, 413, 415, 416, 422, 429, 500, 502, 503, 504,
};

size_t http_code_slot(unsigned status)
{
	for (size_t i = 0; i < ARRAY_SIZE(code_slots); i++)
		if (code_slots[i] == status)
			return i;
	/* Anything else counts in its class: 1xx .. 5xx. */
	unsigned cls = status / 100;
	if (cls < 1 || cls > 5)
		cls = 5;
	return ARRAY_SIZE(code_slots) + cls - 1;
}

static void code_name(size_t slot, char out[8])
{
	if (slot < ARRAY_SIZE(code_slots))
		snprintf(out, 8, "%u", code_slots[slot]);
	else
		snprintf(out, 8, "%cxx", (char)('0' + (slot - ARRAY_SIZE(code_slots) + 1) % 10));
}

/* Requests that matched no route (scanners, typos): one pseudo-route. */
struct route_stats http_unmatched_stats;

static void collect_route(struct server_obs *o, const char *name, struct route_stats *st)
{
	for (size_t k = 0; k < HTTP_CODE_SLOTS; k++) {
		uint64_t n = atomic_load(&st->codes[k]);
		if (!n)
			continue;
		char code[8];
		code_name(k, code);
		metric_set(o->http_requests, (const char *const[]){name, code}, (double)n);
	}
	uint64_t counts[HTTP_LATENCY_BUCKETS + 1], total = 0;
	for (size_t b = 0; b <= HTTP_LATENCY_BUCKETS; b++)
		total += counts[b] = atomic_load(&st->latency[b]);
	if (total)
		metric_histogram_set(o->http_duration, (const char *const[]){name}, counts,
		                     (double)atomic_load(&st->ns_total) / 1e9);
}

static void collect_http(struct metrics *m, void *ud)
{
	(void)m;
	struct server *s = ud;
	struct server_obs *o = s->obs;
	for (size_t i = 0; i < server_routes_count; i++)
		collect_route(o, server_routes[i].name, server_routes[i].stats);
	collect_route(o, "unmatched", &http_unmatched_stats);
}

/* ---- scheduler gauges ----------------------------------------------------- */

/* Per-org gauges: one row per org the server knows. */
struct org_count {
	int64_t id;
	char *name;
	size_t queued, unsched, leased, running;
};

static struct org_count *org_row(struct org_count *v, size_t n, int64_t id)
{
	for (size_t i = 0; i < n; i++)
		if (v[i].id == id)
			return &v[i];
	return NULL;
}

static void collect_sched(struct metrics *m, void *ud)
{
	(void)m;
	struct server *s = ud;
	struct server_obs *o = s->obs;
	uint64_t now = now_mono_ns();
	size_t waiters = 0, n_orgs = 0;
	/* slots and GPUs: busy, idle (free on ready agents), unavailable (free
	 * on draining or offline agents); agents: ready, draining, offline */
	double slots[3] = {0}, gpus[3] = {0}, agents[3] = {0};

	pthread_mutex_lock(&s->lock);
	for (const struct sorg *g = s->orgs; g; g = g->next)
		n_orgs++;
	struct org_count *orgs = xcalloc(n_orgs + 1, sizeof(*orgs));
	n_orgs = 0;
	for (const struct sorg *g = s->orgs; g; g = g->next)
		orgs[n_orgs++] = (struct org_count){.id = g->id, .name = xstrdup(g->name)};
	for (const struct sclass *c = s->classes; c; c = c->next) {
		struct org_count *row = org_row(orgs, n_orgs, c->org_id);
		if (!row)
			continue;
		row->queued += c->n_heap;
		if (!c->schedulable)
			row->unsched += c->n_heap;
	}
	for (const struct sjob *j = s->active_head; j; j = j->anext) {
		struct org_count *row = org_row(orgs, n_orgs, j->org_id);
		if (!row)
			continue;
		if (j->state == JOB_RUNNING)
			row->running++;
		else
			row->leased++;
	}
	for (const struct req *r = s->waiters_head; r; r = r->wnext)
		waiters++;
	for (const struct sagent *a = s->agents; a; a = a->next) {
		bool online = a->last_seen_ns &&
		              now - a->last_seen_ns < s->cfg.agent_offline_ms * NSEC_PER_MSEC;
		int st = !online ? 2 : a->draining ? 1 : 0;
		agents[st]++;
		int64_t free_slots = a->capacity.slots - a->used.slots;
		int64_t free_gpus = a->capacity.gpus - a->used.gpus;
		slots[0] += (double)a->used.slots;
		gpus[0] += (double)a->used.gpus;
		slots[st == 0 ? 1 : 2] += (double)MAX(free_slots, 0);
		gpus[st == 0 ? 1 : 2] += (double)MAX(free_gpus, 0);
	}
	pthread_mutex_unlock(&s->lock);

	/* Reset first: an org that was deleted drops out. */
	metric_reset(o->queue_depth);
	metric_reset(o->queue_unschedulable);
	metric_reset(o->jobs_active);
	for (size_t i = 0; i < n_orgs; i++) {
		const char *const org[] = {orgs[i].name};
		metric_set(o->queue_depth, org, (double)orgs[i].queued);
		metric_set(o->queue_unschedulable, org, (double)orgs[i].unsched);
		metric_set(o->jobs_active, (const char *const[]){"leased", orgs[i].name},
			   (double)orgs[i].leased);
		metric_set(o->jobs_active, (const char *const[]){"running", orgs[i].name},
			   (double)orgs[i].running);
		/* Every org's counters exist from the start, at 0 (see metrics.h). */
		struct metric *const per_org[] = {o->jobs_submitted, o->jobs_requeued, o->job_cpu,
						  o->job_io_read,     o->job_io_write,  o->job_gpu_seconds,
						  o->job_oom};
		for (size_t k = 0; k < ARRAY_SIZE(per_org); k++)
			metric_add(per_org[k], org, 0);
		for (int st = JOB_SUCCEEDED; st < JOB_STATE_MAX; st++)
			metric_add(o->jobs_ended,
				   (const char *const[]){job_state_to_string(st), orgs[i].name}, 0);
		free(orgs[i].name);
	}
	free(orgs);
	metric_set(o->lease_waiters, NULL, (double)waiters);
	static const char *const slot_states[] = {"busy", "idle", "unavailable"};
	static const char *const agent_states[] = {"ready", "draining", "offline"};
	for (int i = 0; i < 3; i++) {
		metric_set(o->agent_slots, (const char *const[]){slot_states[i]}, slots[i]);
		metric_set(o->agent_gpus, (const char *const[]){slot_states[i]}, gpus[i]);
		metric_set(o->agents, (const char *const[]){agent_states[i]}, agents[i]);
	}

	struct store_stats st;
	store_get_stats(s->store, &st);
	metric_set(o->store_commits, NULL, (double)st.batches);
	metric_set(o->store_mutations, NULL, (double)st.mutations);
	metric_set(o->store_commit_seconds, NULL, (double)st.commit_ns / 1e9);
}

/* ---- lifecycle ------------------------------------------------------------ */

/* Queue wait and dispatch latency: 1 ms .. 6 h. */
static const double wait_buckets[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5,  1,    5,
                                      10,    30,    60,   300,  900, 1800, 3600, 21600};

void obs_init(struct server *s)
{
	struct server_obs *o = xcalloc(1, sizeof(*o));
	struct metrics *m = metrics_new();
	o->reg = m;
	static const char *const l_org[] = {"org", NULL};
	static const char *const l_state_org[] = {"state", "org", NULL};
	static const char *const l_org_limit[] = {"org", "limit", NULL};
	static const char *const l_state[] = {"state", NULL};
	static const char *const l_exec[] = {"executor", NULL};
	static const char *const l_route[] = {"route", NULL};
	static const char *const l_route_code[] = {"route", "code", NULL};
	static const char *const l_version[] = {"version", NULL};

	o->build_info = metrics_gauge(m, "kiln_build_info", "kiln's version; always 1.", l_version);
	metric_set(o->build_info, (const char *const[]){KILN_VERSION}, 1);

	o->jobs_submitted = metrics_counter(m, "kiln_jobs_submitted_total",
	                                    "Jobs accepted by POST /v1/jobs (and retries).", l_org);
	o->jobs_ended = metrics_counter(
	    m, "kiln_jobs_total",
	    "Jobs that reached a terminal state (succeeded, failed, cancelled, timed_out, lost).",
	    l_state_org);
	o->jobs_requeued = metrics_counter(
	    m, "kiln_jobs_requeued_total",
	    "Attempts that ended without a result and put their job back in the queue.", l_org);
	o->rate_limited = metrics_counter(
	    m, "kiln_rate_limited_total",
	    "Requests answered 429 by an org's token bucket (limit: api, submit, webhook).",
	    l_org_limit);
	o->leases_granted =
	    metrics_counter(m, "kiln_leases_granted_total", "Leases handed to agents.", NULL);
	o->lease_expired = metrics_counter(m, "kiln_lease_expired_total",
	                                   "Leases that expired because the agent did not renew "
	                                   "them.",
	                                   NULL);
	o->dispatch_latency = metrics_histogram(
	    m, "kiln_dispatch_latency_seconds",
	    "Time from a job entering the queue (submit or requeue) to its lease.", NULL,
	    wait_buckets, ARRAY_SIZE(wait_buckets));
	o->job_duration =
	    metrics_histogram(m, "kiln_job_duration_seconds",
	                      "Wall time of finished attempts, as the agent measured "
	                      "it.",
	                      l_exec, metrics_duration_buckets, metrics_duration_buckets_n);
	/* The executors there are, from the start (at 0). */
	uint64_t *none = xcalloc(metrics_duration_buckets_n + 1, sizeof(uint64_t));
	metric_histogram_set(o->job_duration, (const char *const[]){"sandbox"}, none, 0);
	metric_histogram_set(o->job_duration, (const char *const[]){"gpu"}, none, 0);
	free(none);
	o->job_cpu = metrics_counter(m, "kiln_job_cpu_seconds_total",
	                             "CPU time (user + system) used by finished attempts.", l_org);
	o->job_mem_peak =
	    metrics_histogram(m, "kiln_job_memory_peak_bytes", "Peak memory of finished attempts.",
	                      NULL, metrics_bytes_buckets, metrics_bytes_buckets_n);
	o->job_io_read =
	    metrics_counter(m, "kiln_job_io_read_bytes_total",
	                    "Bytes read from block devices by finished attempts.", l_org);
	o->job_io_write =
	    metrics_counter(m, "kiln_job_io_write_bytes_total",
	                    "Bytes written to block devices by finished attempts.", l_org);
	o->job_gpu_seconds =
	    metrics_counter(m, "kiln_job_gpu_seconds_total",
	                    "GPUs held times wall time of finished attempts.", l_org);
	o->job_oom = metrics_counter(m, "kiln_job_oom_kills_total",
	                             "Processes killed by the OOM killer inside jobs.", l_org);

	o->queue_depth = metrics_gauge(m, "kiln_queue_depth", "Jobs waiting in the queue.", l_org);
	o->queue_unschedulable =
	    metrics_gauge(m, "kiln_queue_unschedulable",
	                  "Queued jobs that no registered agent can run (labels or size).", l_org);
	o->jobs_active =
	    metrics_gauge(m, "kiln_jobs_active",
	                  "Jobs holding a lease, by state (leased, running).", l_state_org);
	o->lease_waiters = metrics_gauge(
	    m, "kiln_lease_waiters", "Lease requests parked waiting for work (idle agents).", NULL);
	o->agents = metrics_gauge(
	    m, "kiln_agents", "Registered agents by state (ready, draining, offline).", l_state);
	o->agent_slots = metrics_gauge(m, "kiln_agent_slots",
	                               "Job slots of registered agents: busy, idle (free on ready "
	                               "agents), unavailable (free on draining or offline agents).",
	                               l_state);
	o->agent_gpus = metrics_gauge(
	    m, "kiln_agent_gpus", "GPUs of registered agents: busy, idle, unavailable.", l_state);
	o->http_requests =
	    metrics_counter(m, "kiln_http_requests_total",
	                    "HTTP requests answered, by route name and status code.", l_route_code);
	double hb[HTTP_LATENCY_BUCKETS];
	for (size_t i = 0; i < HTTP_LATENCY_BUCKETS; i++)
		hb[i] = (double)http_latency_bounds_ns[i] / 1e9;
	o->http_duration =
	    metrics_histogram(m, "kiln_http_request_duration_seconds",
	                      "Time from a request's arrival to its answer (long-polls "
	                      "include their wait).",
	                      l_route, hb, HTTP_LATENCY_BUCKETS);
	o->store_commits = metrics_counter(m, "kiln_store_commits_total",
	                                   "Store transactions committed (group commits).", NULL);
	o->store_mutations =
	    metrics_counter(m, "kiln_store_mutations_total", "Store mutations applied.", NULL);
	o->store_commit_seconds = metrics_counter(m, "kiln_store_commit_seconds_total",
	                                          "Time spent committing (fsync included).", NULL);
	metrics_add_process(m);
	metrics_on_collect(m, collect_http, s);
	metrics_on_collect(m, collect_sched, s);
	s->obs = o;
}

struct metrics *server_metrics(struct server *s) { return s->obs->reg; }

void obs_free(struct server *s)
{
	if (!s->obs)
		return;
	metrics_free(s->obs->reg);
	free(s->obs);
	s->obs = NULL;
}

/* ---- hooks ---------------------------------------------------------------- */

void obs_jobs_submitted(struct server *s, const char *org, size_t n)
{
	metric_add(s->obs->jobs_submitted, (const char *const[]){org ? org : ORG_DEFAULT},
	           (double)n);
}

void obs_job_ended(struct server *s, enum job_state st, const char *org)
{
	metric_add(s->obs->jobs_ended,
	           (const char *const[]){job_state_to_string(st), org ? org : ORG_DEFAULT}, 1);
}

void obs_rate_limited(struct server *s, const char *org, int kind)
{
	static const char *const names[] = {"api", "submit", "webhook"};
	const char *k = kind >= 0 && kind < 3 ? names[kind] : "other";
	metric_add(s->obs->rate_limited, (const char *const[]){org ? org : ORG_DEFAULT, k}, 1);
}

void obs_job_requeued(struct server *s, const char *org)
{
	metric_add(s->obs->jobs_requeued, (const char *const[]){org ? org : ORG_DEFAULT}, 1);
}

void obs_lease_granted(struct server *s, uint64_t waited_ns)
{
	metric_add(s->obs->leases_granted, NULL, 1);
	metric_observe(s->obs->dispatch_latency, NULL, (double)waited_ns / 1e9);
}

void obs_lease_expired(struct server *s)
{
	metric_add(s->obs->lease_expired, NULL, 1);
}

/* Executors are a bounded set: anything else is "other". */
static const char *executor_label(const struct proto_usage *u)
{
	static const char *const known[] = {"sandbox", "vm", "gpu"};
	if (!u->executor[0])
		return u->gpus > 0 ? "gpu" : "sandbox";
	for (size_t i = 0; i < ARRAY_SIZE(known); i++)
		if (streq(u->executor, known[i]))
			return known[i];
	return "other";
}

void obs_attempt_usage(struct server *s, const struct proto_usage *u, const char *org)
{
	struct server_obs *o = s->obs;
	const char *const l_org[] = {org ? org : ORG_DEFAULT};
	metric_observe(o->job_duration, (const char *const[]){executor_label(u)},
		       (double)u->wall_ms / 1e3);
	metric_add(o->job_cpu, l_org, (double)(u->cpu_user_ms + u->cpu_system_ms) / 1e3);
	metric_observe(o->job_mem_peak, NULL, (double)u->memory_peak_bytes);
	metric_add(o->job_io_read, l_org, (double)u->io_read_bytes);
	metric_add(o->job_io_write, l_org, (double)u->io_write_bytes);
	metric_add(o->job_gpu_seconds, l_org, (double)u->gpus * (double)u->wall_ms / 1e3);
	metric_add(o->job_oom, l_org, (double)u->oom_kills);
}

/* ---- GET /metrics --------------------------------------------------------- */

void h_metrics(struct req *r)
{
	struct buf out = BUF_INIT;
	metrics_render(r->srv->obs->reg, &out);
	size_t len = out.len;
	req_reply_text(r, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", buf_steal(&out),
	               len);
}
