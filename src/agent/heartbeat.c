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
		json_array_append_new(jobs, json_pack("{s:I,s:I}", "id", (json_int_t)j->id,
						      "fence", (json_int_t)j->fence));
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
	_cleanup_free_ char *path = xasprintf("/v1/agents/%" PRId64 "/heartbeat", id);
	struct http_reply rep;
	struct kiln_err err = {0};
	uint64_t sent = now_mono_ns();
	int r = http_json(h, "POST", path, body, timeout, &rep, &err);
	json_decref(body);
	bool long_poll = false;
	*ret = 0;
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
			agent_sleep_hb(a, MIN(backoff_ms(failures++), 1000));
			continue;
		}
		failures = 0;
		if (!long_poll)
			agent_sleep_hb(a, a->heartbeat_ms);
	}
	return NULL;
}
