/*
 * job: one leased job on the agent — its directory, its runner thread, how
 * it is stopped early and how it ends (complete, or released).
 *
 * A job's directory, <state>/jobs/<id>.<attempt>/, holds the spool (log),
 * the workspace (bound at /workspace) and the step scripts (bound read-only
 * at /run/kiln). Nothing in it is synced to disk: after a crash it is
 * removed, and the server learns of the lost leases from the release-all
 * at the next start (and from their expiry without one). It is removed when the job ends; what a crashed agent left
 * is removed by the next one at start.
 *
 * Ending: a job the agent ran to its end is completed (fenced) once the
 * server has its whole log. A job the server cancelled or whose lease is
 * gone is not reported at all (the server has ended it; every write would
 * be refused). A job the agent gives up because it is stopping is released,
 * so the server queues it again at once instead of waiting for the lease to
 * expire.
 */
#include "agent-internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <sys/eventfd.h>
#include <sys/stat.h>

static int64_t json_int(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	return json_is_integer(v) ? json_integer_value(v) : 0;
}

struct job *job_new(struct agent *a, json_t *lease, struct kiln_err *err)
{
	json_t *jo = json_object_get(lease, "job");
	int64_t id = json_int(jo, "id"), fence = json_int(lease, "fence");
	int64_t attempt = json_int(lease, "attempt");
	if (id <= 0 || fence <= 0 || attempt <= 0) {
		kiln_err_set(err, -EPROTO, "the lease has no job id, fence or attempt");
		return NULL;
	}
	struct job *j = xcalloc(1, sizeof(*j));
	j->agent = a;
	j->id = id;
	j->fence = fence;
	j->attempt = attempt;
	j->max_attempts = json_int(jo, "max_attempts");
	j->timeout_ms = (uint64_t)MAX(json_int(jo, "timeout_ms"), 0);
	const char *name = json_string_value(json_object_get(jo, "name"));
	j->name = xstrdup(name ? name : "job");
	j->leased_ns = now_mono_ns();
	j->renewed_ns = j->leased_ns;
	j->spool_fd = -1;
	j->wake_fd = -1;
	j->last_nl = true;
	pthread_mutex_init(&j->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&j->cond, &ca);
	pthread_condattr_destroy(&ca);
	struct kiln_err serr = {0};
	if (spec_job_from_json(json_object_get(jo, "spec"), &j->spec, &serr) < 0)
		j->spec_error = xstrdup(serr.msg);
	json_t *secrets = json_object_get(lease, "secrets");
	if (json_is_object(secrets))
		j->secrets = json_incref(secrets);
	const char *tok = json_string_value(json_object_get(lease, "token"));
	j->token = tok ? xstrdup(tok) : NULL;
	j->dir = xasprintf("%s/%" PRId64 ".%" PRId64, a->jobs_dir, id, attempt);
	j->workspace = path_join(j->dir, "workspace");
	j->scripts = path_join(j->dir, "scripts");
	return j;
}

void job_free(struct job *j)
{
	if (!j)
		return;
	if (j->spool_fd >= 0)
		close(j->spool_fd);
	if (j->wake_fd >= 0)
		close(j->wake_fd);
	spec_job_free(j->spec);
	json_decref(j->secrets);
	if (j->token)
		explicit_bzero(j->token, strlen(j->token));
	free(j->token);
	free(j->spec_error);
	free(j->stop_reason);
	free(j->name);
	free(j->dir);
	free(j->workspace);
	free(j->scripts);
	free(j->extra_dir);
	pthread_mutex_destroy(&j->lock);
	pthread_cond_destroy(&j->cond);
	free(j);
}

/* LOST beats everything (stop writing); CANCELLED beats RELEASE and TIMEOUT. */
static int stop_rank(enum job_stop s)
{
	switch (s) {
	case STOP_NONE: return 0;
	case STOP_TIMEOUT: return 1;
	case STOP_RELEASE: return 2;
	case STOP_CANCELLED: return 3;
	case STOP_LOST: return 4;
	}
	return 0;
}

void job_request_stop(struct job *j, enum job_stop why, const char *reason)
{
	pthread_mutex_lock(&j->lock);
	if (stop_rank(why) > stop_rank(j->stop)) {
		if (j->stop == STOP_NONE || why == STOP_LOST || why == STOP_CANCELLED)
			log_info("stopping job job=%" PRId64 " fence=%" PRId64 " why=\"%s\"", j->id,
				 j->fence, reason);
		j->stop = why;
		free(j->stop_reason);
		j->stop_reason = xstrdup(reason);
		if (j->sb)
			sandbox_kill(j->sb);
		pthread_cond_broadcast(&j->cond);
	}
	pthread_mutex_unlock(&j->lock);
	if (j->wake_fd >= 0) {
		uint64_t one = 1;
		(void)!write(j->wake_fd, &one, sizeof(one));
	}
}

enum job_stop job_stop_reason(struct job *j)
{
	pthread_mutex_lock(&j->lock);
	enum job_stop s = j->stop;
	pthread_mutex_unlock(&j->lock);
	return s;
}

void job_renewed(struct job *j, uint64_t sent_ns)
{
	uint64_t cur = atomic_load(&j->renewed_ns);
	while (sent_ns > cur && !atomic_compare_exchange_weak(&j->renewed_ns, &cur, sent_ns))
		;
}

/* ---- completion ------------------------------------------------------------------ */

static void complete(struct job *j, struct http *h, struct job_outcome *out)
{
	json_t *body = json_pack("{s:I,s:s}", "fence", (json_int_t)j->fence, "state",
				 job_state_to_string(out->state));
	json_object_set_new(body, "exit_code",
			    out->has_exit_code ? json_integer(out->exit_code) : json_null());
	if (out->message)
		json_object_set_new(body, "message", json_string(out->message));
	json_object_set(body, "usage", out->usage);
	json_object_set(body, "steps", out->steps);
	agent_obs_job_finished(j->agent, out->state, out->usage);
	_cleanup_free_ char *path = xasprintf("/v1/jobs/%" PRId64 "/complete", j->id);
	for (unsigned attempt = 0;; attempt++) {
		if (job_stop_reason(j) == STOP_LOST)
			break;
		struct http_reply rep;
		struct kiln_err err = {0};
		int r = http_json(h, "POST", path, body, 30000, &rep, &err);
		if (r == 0 && rep.status == 200) {
			log_info("job finished job=%" PRId64 " state=%s exit=%d", j->id,
				 job_state_to_string(out->state),
				 out->has_exit_code ? out->exit_code : -1);
			http_reply_release(&rep);
			break;
		}
		/* Any refusal but "later" is final: retrying will not change it. */
		if (r == 0 && rep.status >= 400 && rep.status < 500 && rep.status != 408 &&
		    rep.status != 429) {
			log_warn("completion refused job=%" PRId64 " status=%ld error=\"%s\"", j->id,
				 rep.status, http_error_message(&rep));
			http_reply_release(&rep);
			break;
		}
		if (r == 0) {
			log_debug("completion not accepted, retrying job=%" PRId64 " status=%ld",
				  j->id, rep.status);
			http_reply_release(&rep);
		} else if (r == -ECANCELED) {
			break;
		}
		/* The server is away: the lease is renewed by the heartbeat while it
		 * can be; when it cannot, the job is fenced (STOP_LOST) above. */
		struct timespec ts = {.tv_sec = 0, .tv_nsec = 0};
		uint64_t ms = backoff_ms(attempt);
		ts.tv_sec = (time_t)(ms / 1000);
		ts.tv_nsec = (long)(ms % 1000) * 1000000L;
		nanosleep(&ts, NULL);
	}
	json_decref(body);
}

static void outcome_release(struct job_outcome *o)
{
	free(o->message);
	json_decref(o->usage);
	json_decref(o->steps);
}

static void *runner_main(void *p)
{
	struct job *j = p;
	struct agent *a = j->agent;
	/* The job's writes go with the lease's own token (an older server
	 * sends none: then the agent's). */
	struct http *h = http_new(a->base_url, j->token ? j->token : a->token);
	struct job_outcome out = {.state = JOB_FAILED};
	uint64_t t0 = now_mono_ns();
	if (!j->spec) {
		spool_marker(j, "job failed: its spec is not valid: %s", j->spec_error);
		out.message = xasprintf("kiln: the spec is not valid: %s", j->spec_error);
		out.usage = json_object();
		out.steps = json_array();
	} else {
		job_run(j, &out);
	}
	enum job_stop stop = job_stop_reason(j);
	if (j->spec && (stop == STOP_NONE || stop == STOP_TIMEOUT))
		artifacts_upload(j, h);
	char took[32];
	snprintf(took, sizeof(took), "%.3fs", (double)(now_mono_ns() - t0) / 1e9);
	stop = job_stop_reason(j);
	switch (stop) {
	case STOP_NONE:
	case STOP_TIMEOUT:
		spool_marker(j, "job %s after %s", job_state_to_string(out.state), took);
		break;
	case STOP_RELEASE:
		spool_marker(j, "job stopped after %s: the agent is shutting down; the job goes "
				"back to the queue",
			     took);
		break;
	case STOP_CANCELLED:
	case STOP_LOST:
		break; /* nothing more is accepted for it */
	}
	int r = shipper_finish(j);
	stop = job_stop_reason(j);
	if (stop == STOP_RELEASE) {
		/* Releasing is the agent's own call: its token, not the job's. */
		struct http *ah = http_new(a->base_url, a->token);
		agent_release_job(a, ah, j, "the agent stopped before the job finished");
		http_free(ah);
	} else if (stop == STOP_NONE || stop == STOP_TIMEOUT) {
		complete(j, h, &out);
	} else if (stop == STOP_CANCELLED) {
		/* The server has ended it already; the report still carries what
		 * the attempt used (the server keeps usage even from a result it
		 * does not take). */
		out.state = JOB_CANCELLED;
		out.has_exit_code = false;
		complete(j, h, &out);
	} else
		log_info("job ended without a result job=%" PRId64 " reason=\"%s\" log=%s", j->id,
			 j->stop_reason ? j->stop_reason : "-", r == 0 ? "complete" : "partial");
	outcome_release(&out);
	http_free(h);
	int rr = rm_rf(j->dir);
	if (rr >= 0 && j->extra_dir)
		rr = rm_rf(j->extra_dir);
	if (rr < 0)
		log_warn("cannot remove a job directory dir=%s error=\"%s\"", j->dir,
			 strerror(-rr));
	pthread_mutex_lock(&a->lock);
	atomic_store(&j->done, true);
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

int job_start(struct job *j)
{
	/* The workspace and scripts come with the sandbox (run.c). */
	int r = mkdir_p(j->dir, 0700);
	/* The job directory itself stays private to the agent. */
	if (r >= 0 && chmod(j->dir, 0700) < 0)
		r = -errno;
	if (r >= 0)
		r = spool_open(j);
	if (r >= 0) {
		j->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (j->wake_fd < 0)
			r = -errno;
	}
	if (r >= 0)
		r = shipper_start(j);
	if (r >= 0) {
		r = -pthread_create(&j->runner, NULL, runner_main, j);
		if (r < 0) {
			job_request_stop(j, STOP_LOST, "no runner thread");
			shipper_finish(j);
		}
	}
	return r;
}

void job_fail_unstarted(struct job *j, struct http *agent_http, int error)
{
	/* The result is a job write: it goes with the lease's job token. */
	struct http *h = j->token ? http_new(j->agent->base_url, j->token) : agent_http;
	struct job_outcome out = {
		.state = JOB_FAILED,
		.message = xasprintf("kiln: agent '%s' could not set the job up: %s", j->agent->name,
				     strerror(-error)),
		.usage = json_object(),
		.steps = json_array(),
	};
	complete(j, h, &out);
	outcome_release(&out);
	if (h != agent_http)
		http_free(h);
}
