/*
 * top: GET /v1/overview — one snapshot of the fleet for `kiln top`, taken
 * from the scheduler's memory (no store read): the queue by org and label
 * set, the agents with their slots, GPUs and load, and the running jobs
 * with elapsed time, CPU and memory. And the heartbeat's telemetry that
 * feeds it: an agent's host load and its running jobs' measures.
 *
 * Cost: O(classes + queued jobs + agents + active leases) under
 * server.lock — the oldest wait of a class needs a look at each of its
 * queued jobs. It is an operator's call (once a second per open kiln top),
 * not a hot path.
 */
#include "server-internal.h"

#include <inttypes.h>

/* ---- telemetry from heartbeats -------------------------------------------- */

static bool get_u64(json_t *o, const char *key, uint64_t *ret)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return false;
	*ret = (uint64_t)json_integer_value(v);
	return true;
}

static bool get_load(json_t *o, const char *key, double *ret)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1e6)
		return false;
	*ret = json_number_value(v);
	return true;
}

void live_heartbeat(struct server *s, struct sagent *a, json_t *body)
{
	uint64_t now = proto_now_ms();
	json_t *load = json_object_get(body, "load");
	if (json_is_object(load)) {
		struct agent_live l = {.at_ms = now};
		if (get_load(load, "load1", &l.load1) && get_load(load, "load5", &l.load5) &&
		    get_load(load, "load15", &l.load15)) {
			get_u64(load, "memory_used_bytes", &l.memory_used_bytes);
			get_u64(load, "memory_total_bytes", &l.memory_total_bytes);
			a->live = l;
		}
	}
	size_t i;
	json_t *e;
	json_array_foreach(json_object_get(body, "jobs"), i, e)
	{
		json_t *u = json_object_get(e, "usage");
		json_t *id = json_object_get(e, "id"), *fence = json_object_get(e, "fence");
		if (!json_is_object(u) || !json_is_integer(id) || !json_is_integer(fence))
			continue;
		struct sjob *j = sched_job(s, json_integer_value(id));
		if (!j || j->agent != a || j->fence != json_integer_value(fence))
			continue;
		uint64_t cpu, mem = 0;
		if (!get_u64(u, "cpu_ms", &cpu))
			continue;
		get_u64(u, "memory_bytes", &mem);
		struct job_live *l = &j->live;
		if (l->fence == j->fence && l->at_ms && cpu >= l->cpu_ms) {
			l->prev_at_ms = l->at_ms;
			l->prev_cpu_ms = l->cpu_ms;
		} else {
			l->prev_at_ms = l->prev_cpu_ms = 0;
		}
		l->fence = j->fence;
		l->at_ms = now;
		l->cpu_ms = cpu;
		l->memory_bytes = mem;
	}
}

/* ---- GET /v1/overview ----------------------------------------------------- */

static bool agent_online(struct server *s, const struct sagent *a, uint64_t mono)
{
	return a->last_seen_ns && mono - a->last_seen_ns < s->cfg.agent_offline_ms * NSEC_PER_MSEC;
}

static json_t *queue_json(struct req *r, uint64_t mono, size_t *queued, size_t *unsched)
{
	struct server *s = r->srv;
	json_t *arr = json_array();
	for (struct sclass *c = s->classes; c; c = c->next) {
		if (!c->n_heap || !access_org_visible(r, c->org_id))
			continue;
		uint64_t oldest = mono;
		for (size_t i = 0; i < c->n_heap; i++)
			oldest = MIN(oldest, c->heap[i]->queued_ns);
		_cleanup_free_ char *labels = proto_labels_join(c->labels, c->n_labels);
		json_t *o = json_pack(
		    "{s:s,s:s,s:I,s:f,s:b,s:o}", "org", org_name(s, c->org_id), "labels", labels, "queued",
		    (json_int_t)c->n_heap, "oldest_wait_seconds", (double)(mono - oldest) / 1e9,
		    "schedulable", c->schedulable, "needs", proto_capacity_to_json(&c->needs));
		json_object_set_new(o, "reason", c->reason ? json_string(c->reason) : json_null());
		json_array_append_new(arr, o);
		*queued += c->n_heap;
		if (!c->schedulable)
			*unsched += c->n_heap;
	}
	return arr;
}

static json_t *agent_json(struct server *s, const struct sagent *a, uint64_t mono, uint64_t now)
{
	bool online = agent_online(s, a, mono);
	json_t *labels = json_array();
	for (size_t i = 0; i < a->n_labels; i++)
		json_array_append_new(labels, json_string(a->labels[i]));
	json_t *jobs = json_array();
	for (size_t i = 0; i < a->n_jobs; i++)
		json_array_append_new(jobs, json_integer(a->jobs[i]->id));
	json_t *o =
	    json_pack("{s:I,s:s,s:s,s:o,s:I,s:I,s:I,s:I,s:f,s:f,s:I,s:I,s:o}", "id",
	              (json_int_t)a->id, "name", a->name, "state",
	              !online       ? "offline"
	              : a->draining ? "draining"
	                            : "ready",
	              "labels", labels, "slots", (json_int_t)a->capacity.slots, "busy_slots",
	              (json_int_t)a->used.slots, "gpus", (json_int_t)a->capacity.gpus, "busy_gpus",
	              (json_int_t)a->used.gpus, "cpus", a->capacity.cpus, "busy_cpus", a->used.cpus,
	              "memory", (json_int_t)a->capacity.memory, "busy_memory",
	              (json_int_t)a->used.memory, "jobs", jobs);
	if (a->live.at_ms)
		json_object_set_new(
		    o, "load",
		    json_pack("{s:f,s:f,s:f,s:I,s:I,s:f}", "load1", a->live.load1, "load5",
		              a->live.load5, "load15", a->live.load15, "memory_used_bytes",
		              (json_int_t)a->live.memory_used_bytes, "memory_total_bytes",
		              (json_int_t)a->live.memory_total_bytes, "age_seconds",
		              (double)(now > a->live.at_ms ? now - a->live.at_ms : 0) / 1e3));
	else
		json_object_set_new(o, "load", json_null());
	return o;
}

static json_t *running_json(struct server *s, const struct sjob *j, uint64_t mono)
{
	_cleanup_free_ char *labels = proto_labels_join(j->cls->labels, j->cls->n_labels);
	json_t *o = json_pack(
	    "{s:I,s:s,s:s,s:s,s:s,s:I,s:I,s:f,s:s}", "id", (json_int_t)j->id, "name", j->name,
	    "org", org_name(s, j->org_id), "state", job_state_to_string(j->state), "agent",
	    j->agent ? j->agent->name : "", "attempt", (json_int_t)j->attempt, "fence",
	    (json_int_t)j->fence, "elapsed_seconds",
	    (double)(mono > j->leased_ns ? mono - j->leased_ns : 0) / 1e9, "labels", labels);
	const struct job_live *l = &j->live;
	bool known = l->at_ms && l->fence == j->fence;
	json_object_set_new(o, "cpu_seconds",
	                    known ? json_real((double)l->cpu_ms / 1e3) : json_null());
	json_object_set_new(o, "memory_bytes",
	                    known ? json_integer((json_int_t)l->memory_bytes) : json_null());
	bool rate = known && l->prev_at_ms && l->at_ms > l->prev_at_ms;
	json_object_set_new(o, "cpu_cores",
	                    rate ? json_real((double)(l->cpu_ms - l->prev_cpu_ms) /
	                                     (double)(l->at_ms - l->prev_at_ms))
	                         : json_null());
	return o;
}

static int cmp_running(const void *a, const void *b)
{
	json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "id"));
	json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "id"));
	return x < y ? -1 : x > y;
}

void h_overview(struct req *r)
{
	struct server *s = r->srv;
	uint64_t mono = now_mono_ns(), now = proto_now_ms();
	size_t queued = 0, unsched = 0, leased = 0, running = 0;
	int64_t slots = 0, busy = 0, gpus = 0, busy_gpus = 0;
	size_t st[3] = {0};
	json_t *agents = json_array(), *jobs = json_array();

	pthread_mutex_lock(&s->lock);
	/* A viewer sees its org's queue and jobs, and the agents of its pool and
	 * of the shared pool; an admin sees everything. */
	json_t *queue = queue_json(r, mono, &queued, &unsched);
	for (const struct sagent *a = s->agents; a; a = a->next) {
		if (a->org_id && !access_org_visible(r, a->org_id))
			continue;
		json_t *o = agent_json(s, a, mono, now);
		const char *state = json_string_value(json_object_get(o, "state"));
		st[streq(state, "ready") ? 0 : streq(state, "draining") ? 1 : 2]++;
		json_array_insert_new(agents, 0, o); /* the list is newest first */
		slots += a->capacity.slots;
		busy += a->used.slots;
		gpus += a->capacity.gpus;
		busy_gpus += a->used.gpus;
	}
	for (const struct sjob *j = s->active_head; j; j = j->anext) {
		if (!access_org_visible(r, j->org_id))
			continue;
		json_array_append_new(jobs, running_json(s, j, mono));
		*(j->state == JOB_RUNNING ? &running : &leased) += 1;
	}
	pthread_mutex_unlock(&s->lock);

	/* Running jobs in id order, so a selection stays put between refreshes. */
	size_t n = json_array_size(jobs);
	// NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers
	json_t **v = xcalloc(n + 1, sizeof(*v));
	for (size_t i = 0; i < n; i++)
		v[i] = json_incref(json_array_get(jobs, i));
	// NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers
	qsort(v, n, sizeof(*v), cmp_running);
	json_array_clear(jobs);
	for (size_t i = 0; i < n; i++)
		json_array_append_new(jobs, v[i]);
	free(v);

	json_t *o = json_object();
	proto_set_time(o, "now", now);
	json_object_set_new(o, "version", json_string(KILN_VERSION));
	json_object_set_new(o, "totals",
	                    json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "queued",
	                              (json_int_t)queued, "unschedulable", (json_int_t)unsched,
	                              "leased", (json_int_t)leased, "running", (json_int_t)running,
	                              "slots", (json_int_t)slots, "busy_slots", (json_int_t)busy,
	                              "gpus", (json_int_t)gpus, "busy_gpus", (json_int_t)busy_gpus,
	                              "agents_ready", (json_int_t)st[0], "agents_draining",
	                              (json_int_t)st[1], "agents_offline", (json_int_t)st[2]));
	json_object_set_new(o, "queue", queue);
	json_object_set_new(o, "agents", agents);
	json_object_set_new(o, "running", jobs);
	req_reply_json(r, MHD_HTTP_OK, o);
}
