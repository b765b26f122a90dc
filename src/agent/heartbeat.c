/*
 * heartbeat: keeps the agent's leases alive and hears about cancels.
 *
 * The heartbeat is a long-poll: POST /v1/agents/{id}/heartbeat with the
 * jobs the agent runs and wait_ms. The server renews those leases when the
 * request arrives and answers at once if one of them (or any lease of this
 * agent) has been cancelled or taken back, else after wait_ms. The agent
 * sends the next one as soon as an answer comes, so a lease is renewed every
 * wait_ms (lease TTL / 3) and a cancel reaches the job in one round trip
 * (docs/decisions: cancel delivery). A server that does not long-poll
 * answers at once without "wait_ms"; then the agent waits a period between
 * heartbeats.
 *
 * Self-fencing: a job whose lease has not been renewed (by a heartbeat, a
 * status or a log append the server accepted) for longer than the TTL minus
 * a margin is killed and abandoned by the agent itself: by then the server
 * may have given the job to another agent.
 */
#include "agent-internal.h"

#include <inttypes.h>

struct listed {
	struct job *j;
	int64_t id, fence;
};

/* The fencing deadline of a job: renewed + ttl - margin (monotonic ns). */
static uint64_t fence_deadline(struct agent *a, struct job *j)
{
	uint64_t ttl = a->ttl_ms * NSEC_PER_MSEC;
	uint64_t margin = MAX(ttl / 10, 100 * NSEC_PER_MSEC);
	return atomic_load(&j->renewed_ns) + (ttl > margin ? ttl - margin : ttl / 2);
}

/* Kills jobs whose lease may have expired on the server; returns the
 * earliest deadline of the others (0: none). Under a->lock. */
static uint64_t check_fences(struct agent *a)
{
	uint64_t now = now_mono_ns(), earliest = 0;
	for (struct job *j = a->jobs; j; j = j->next) {
		if (atomic_load(&j->done))
			continue;
		uint64_t d = fence_deadline(a, j);
		if (now >= d) {
			if (job_stop_reason(j) != STOP_LOST) {
				log_warn("lease not renewed in time, killing the job (another agent "
					 "may run it now) job=%" PRId64 " fence=%" PRId64,
					 j->id, j->fence);
				job_request_stop(j, STOP_LOST,
						 "the lease could not be renewed in time");
			}
			continue;
		}
		if (!earliest || d < earliest)
			earliest = d;
	}
	return earliest;
}

static void apply_cancels(struct agent *a, json_t *cancel, struct listed *v, size_t n,
			  uint64_t sent)
{
	size_t k;
	json_t *c;
	bool *cancelled = xcalloc(n + 1, sizeof(bool));
	json_array_foreach(cancel, k, c) {
		json_t *id = json_object_get(c, "id"), *fence = json_object_get(c, "fence");
		const char *reason = json_string_value(json_object_get(c, "reason"));
		if (!json_is_integer(id) || !json_is_integer(fence))
			continue;
		pthread_mutex_lock(&a->lock);
		for (struct job *j = a->jobs; j; j = j->next) {
			if (j->id != json_integer_value(id) || j->fence != json_integer_value(fence))
				continue;
			bool ended = reason && (streq(reason, "cancelled") || streq(reason, "timed_out"));
			_cleanup_free_ char *why =
				xasprintf("the server %s", ended && streq(reason, "cancelled")
								  ? "cancelled the job"
							  : ended ? "timed the job out"
								  : "took the lease back");
			job_request_stop(j, ended ? STOP_CANCELLED : STOP_LOST, why);
		}
		pthread_mutex_unlock(&a->lock);
		for (size_t i = 0; i < n; i++)
			if (v[i].id == json_integer_value(id) && v[i].fence == json_integer_value(fence))
				cancelled[i] = true;
	}
	for (size_t i = 0; i < n; i++)
		if (!cancelled[i])
			job_renewed(v[i].j, sent);
	free(cancelled);
}

/*
 * Telemetry for kiln top, sent with each heartbeat: the job's CPU time and
 * memory now (its sandbox's cgroup; nothing before the sandbox exists), and
 * the host's load and memory. Under a->lock (then j->lock, which keeps the
 * sandbox from being destroyed meanwhile).
 */
static void add_job_usage(json_t *entry, struct job *j)
{
	pthread_mutex_lock(&j->lock);
	struct sandbox_stats st;
	bool ok = j->sb && sandbox_stats(j->sb, &st) >= 0 && st.have_cpu;
	pthread_mutex_unlock(&j->lock);
	if (!ok)
		return;
	json_t *u = json_pack("{s:I}", "cpu_ms",
			      (json_int_t)((st.cpu_user_ns + st.cpu_system_ns) / NSEC_PER_MSEC));
	if (st.have_memory)
		json_object_set_new(u, "memory_bytes", json_integer((json_int_t)st.memory_current_bytes));
	json_object_set_new(entry, "usage", u);
}

static json_t *host_load(void)
{
	double l[3];
	if (getloadavg(l, 3) != 3)
		return NULL;
	json_t *o = json_pack("{s:f,s:f,s:f}", "load1", l[0], "load5", l[1], "load15", l[2]);
	_cleanup_fclose_ FILE *f = fopen("/proc/meminfo", "re");
	unsigned long long total = 0, avail = 0;
	char line[256];
	while (f && fgets(line, sizeof(line), f)) {
		if (startswith(line, "MemTotal:"))
			total = strtoull(line + 9, NULL, 10) * 1024ULL;
		else if (startswith(line, "MemAvailable:"))
			avail = strtoull(line + 13, NULL, 10) * 1024ULL;
	}
	if (total && avail <= total) {
		json_object_set_new(o, "memory_total_bytes", json_integer((json_int_t)total));
		json_object_set_new(o, "memory_used_bytes", json_integer((json_int_t)(total - avail)));
	}
	return o;
}

/* One heartbeat; returns true when the server long-polls. */
static bool beat(struct agent *a, struct http *h, int *ret)
{
	pthread_mutex_lock(&a->lock);
	uint64_t earliest = check_fences(a);
	size_t n = 0;
	for (struct job *j = a->jobs; j; j = j->next)
		n++;
	struct listed *v = xcalloc(n + 1, sizeof(*v));
	json_t *jobs = json_array();
	n = 0;
	for (struct job *j = a->jobs; j; j = j->next) {
		if (atomic_load(&j->done) || job_stop_reason(j) == STOP_LOST)
			continue;
		v[n++] = (struct listed){j, j->id, j->fence};
		json_t *e = json_pack("{s:I,s:I}", "id", (json_int_t)j->id, "fence",
				      (json_int_t)j->fence);
		add_job_usage(e, j);
		json_array_append_new(jobs, e);
	}
	int64_t id = a->id;
	pthread_mutex_unlock(&a->lock);

	uint64_t wait = a->heartbeat_ms;
	uint64_t now = now_mono_ns();
	/* Do not sit in a long-poll past the moment a job must be fenced. */
	long timeout = (long)(wait + 5000);
	if (earliest) {
		uint64_t left = earliest > now ? (earliest - now) / NSEC_PER_MSEC : 0;
		if (left < wait)
			wait = left;
		timeout = (long)MAX(left, 200);
	}
	json_t *body = json_pack("{s:o,s:I}", "jobs", jobs, "wait_ms", (json_int_t)wait);
	json_t *load = host_load();
	if (load)
		json_object_set_new(body, "load", load);
	_cleanup_free_ char *path = xasprintf("/v1/agents/%" PRId64 "/heartbeat", id);
	struct http_reply rep;
	struct kiln_err err = {0};
	uint64_t sent = now_mono_ns();
	int r = http_json(h, "POST", path, body, timeout, &rep, &err);
	json_decref(body);
	bool long_poll = false;
	*ret = 0;
	if (r != -ECANCELED)
		agent_obs_heartbeat(a, r >= 0 && rep.status == 200);
	if (r < 0) {
		if (r != -ECANCELED)
			log_debug("heartbeat failed error=\"%s\"", err.msg);
		*ret = r;
	} else if (rep.status == 200) {
		apply_cancels(a, json_object_get(rep.json, "cancel"), v, n, sent);
		long_poll = json_object_get(rep.json, "wait_ms") != NULL;
	} else if (rep.status == 404) {
		*ret = -ENOENT;
	} else {
		log_debug("heartbeat refused status=%ld error=\"%s\"", rep.status,
			  http_error_message(&rep));
		*ret = -EIO;
	}
	if (r >= 0)
		http_reply_release(&rep);
	free(v);
	return long_poll;
}

void *heartbeat_main(void *p)
{
	struct agent *a = p;
	struct http *h = a->hb_http;
	unsigned failures = 0;
	for (;;) {
		pthread_mutex_lock(&a->lock);
		bool done = a->run_done;
		pthread_mutex_unlock(&a->lock);
		if (done)
			break;
		int r;
		bool long_poll = beat(a, h, &r);
		if (r == -ENOENT) {
			struct kiln_err err = {0};
			agent_register(a, h, &err);
			continue;
		}
		if (r < 0) {
			/* Unreachable server: retry soon (the fence check runs on
			 * every round). */
			uint64_t ms = backoff_ms(failures++);
			agent_sleep_hb(a, MIN(ms, 1000));
			continue;
		}
		failures = 0;
		if (!long_poll)
			agent_sleep_hb(a, a->heartbeat_ms);
	}
	return NULL;
}
