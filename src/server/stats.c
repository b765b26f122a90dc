/*
 * stats: GET /v1/stats — the performance report behind `kiln stats`.
 *
 * Over a window (attempts that finished in [since, until), read from the
 * store in one scan): job duration and queue wait percentiles overall and
 * per label set and executor, success rate, lease expiries, per-agent
 * failures and utilisation. Then the scheduler's state now (queue, idle
 * slots, the oldest wait per class). Then the recommendations: each rule of
 * docs/stats.md, evaluated on those figures, with the evidence that fired it.
 *
 * Percentiles are nearest-rank over every value (no sketches): a window of
 * up to STATS_MAX_ROWS attempts is kept in memory as two doubles per
 * attempt; a larger window uses its newest STATS_MAX_ROWS and says so.
 */
#include "server-internal.h"

#include <inttypes.h>
#include <math.h>

#define STATS_MAX_ROWS 2000000

/* ---- distributions -------------------------------------------------------- */

struct dist {
	double *v;
	size_t n, cap;
	bool sorted;
};

static void dist_add(struct dist *d, double x)
{
	d->v = xgrow(d->v, &d->cap, d->n + 1, sizeof(*d->v));
	d->v[d->n++] = x;
	d->sorted = false;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Nearest rank: the smallest value with at least p of the values <= it. */
static double dist_pct(struct dist *d, double p)
{
	if (!d->n)
		return NAN;
	if (!d->sorted) {
		qsort(d->v, d->n, sizeof(*d->v), cmp_double);
		d->sorted = true;
	}
	size_t rank = (size_t)ceil(p * (double)d->n);
	if (rank < 1)
		rank = 1;
	return d->v[rank - 1];
}

static void dist_release(struct dist *d)
{
	free(d->v);
	memset(d, 0, sizeof(*d));
}

static json_t *num_or_null(double x)
{
	return isnan(x) ? json_null() : json_real(x);
}

static json_t *dist_json(struct dist *d, bool p99)
{
	json_t *o = json_pack("{s:I}", "count", (json_int_t)d->n);
	json_object_set_new(o, "p50", num_or_null(dist_pct(d, 0.50)));
	json_object_set_new(o, "p95", num_or_null(dist_pct(d, 0.95)));
	if (p99)
		json_object_set_new(o, "p99", num_or_null(dist_pct(d, 0.99)));
	return o;
}

/* ---- accumulating the window ---------------------------------------------- */

struct outcome {
	size_t attempts, succeeded, failed, timed_out, cancelled, lost, expired, oom;
};

static void outcome_add(struct outcome *o, const struct store_attempt_row *row, bool expired)
{
	o->attempts++;
	switch (row->state) {
	case JOB_SUCCEEDED: o->succeeded++; break;
	case JOB_FAILED: o->failed++; break;
	case JOB_TIMED_OUT: o->timed_out++; break;
	case JOB_CANCELLED: o->cancelled++; break;
	default: o->lost++; break;
	}
	o->expired += expired;
	o->oom += row->usage.oom_kills > 0;
}

/* Attempts that did not succeed, of those that were not cancelled. */
static double failure_rate(const struct outcome *o)
{
	size_t n = o->attempts - o->cancelled;
	return n ? (double)(o->failed + o->timed_out + o->lost) / (double)n : NAN;
}

struct group {
	char *labels, *executor;
	struct outcome out;
	struct dist dur, wait;
	struct group *next;
};

struct agent_acc {
	int64_t id;
	char *name;
	struct outcome out;
	double busy_s; /* lease time inside the window */
	struct agent_acc *next;
};

struct acc {
	uint64_t since, until;
	size_t rows;
	bool truncated;
	struct outcome all;
	size_t jobs_by_state[JOB_STATE_MAX]; /* final attempts: the jobs */
	size_t retried;                      /* attempts after the first */
	struct dist dur, wait;
	struct group *groups;
	struct agent_acc *agents;
};

static const char *executor_of(const struct proto_usage *u)
{
	if (u->executor[0])
		return u->executor;
	return u->gpus > 0 ? "gpu" : "sandbox";
}

static struct group *group_get(struct acc *a, const char *labels, const char *executor)
{
	for (struct group *g = a->groups; g; g = g->next)
		if (streq(g->labels, labels) && streq(g->executor, executor))
			return g;
	struct group *g = xcalloc(1, sizeof(*g));
	g->labels = xstrdup(labels);
	g->executor = xstrdup(executor);
	g->next = a->groups;
	a->groups = g;
	return g;
}

static struct agent_acc *agent_get(struct acc *a, int64_t id, const char *name)
{
	for (struct agent_acc *x = a->agents; x; x = x->next)
		if (x->id == id)
			return x;
	struct agent_acc *x = xcalloc(1, sizeof(*x));
	x->id = id;
	x->name = xstrdup(name ? name : "?");
	x->next = a->agents;
	a->agents = x;
	return x;
}

static int on_row(void *ud, const struct store_attempt_row *row)
{
	struct acc *a = ud;
	if (a->rows >= STATS_MAX_ROWS) {
		a->truncated = true;
		return -E2BIG;
	}
	a->rows++;
	bool expired =
	    row->state == JOB_LOST && row->message && strstr(row->message, "lease expired") != NULL;
	outcome_add(&a->all, row, expired);
	if (row->final)
		a->jobs_by_state[row->state]++;
	if (row->attempt > 1)
		a->retried++;

	/* Duration: the agent's wall time, else the server's started..finished. */
	double dur = NAN;
	if (row->usage.reported)
		dur = (double)row->usage.wall_ms / 1e3;
	else if (row->started_at && row->finished_at >= row->started_at)
		dur = (double)(row->finished_at - row->started_at) / 1e3;
	double wait = (double)row->usage.queue_wait_ms / 1e3;
	struct group *g = group_get(a, row->runs_on ? row->runs_on : "", executor_of(&row->usage));
	outcome_add(&g->out, row, expired);
	/* A cancelled or lost attempt's duration says little about the job. */
	if (!isnan(dur) && (row->state == JOB_SUCCEEDED || row->state == JOB_FAILED ||
	                    row->state == JOB_TIMED_OUT)) {
		dist_add(&a->dur, dur);
		dist_add(&g->dur, dur);
	}
	dist_add(&a->wait, wait);
	dist_add(&g->wait, wait);

	if (row->agent_id) {
		struct agent_acc *x = agent_get(a, row->agent_id, row->agent_name);
		outcome_add(&x->out, row, expired);
		uint64_t from = MAX(row->leased_at, a->since), to = MIN(row->finished_at, a->until);
		if (to > from)
			x->busy_s += (double)(to - from) / 1e3;
	}
	return 0;
}

static void acc_release(struct acc *a)
{
	dist_release(&a->dur);
	dist_release(&a->wait);
	while (a->groups) {
		struct group *g = a->groups;
		a->groups = g->next;
		free(g->labels);
		free(g->executor);
		dist_release(&g->dur);
		dist_release(&g->wait);
		free(g);
	}
	while (a->agents) {
		struct agent_acc *x = a->agents;
		a->agents = x->next;
		free(x->name);
		free(x);
	}
}

/* ---- the scheduler now ---------------------------------------------------- */

struct class_now {
	char *labels;
	size_t queued;
	double oldest_s;
	bool schedulable;
	bool idle_fit; /* an idle slot on a ready agent could take it now */
	char *reason;
};

struct agent_now {
	int64_t id;
	char *name;
	const char *state; /* ready, draining, offline */
	int64_t slots, busy;
	uint64_t registered_at;
	double running_busy_s; /* leases still running, inside the window */
};

struct now {
	size_t queued, unschedulable, leased, running;
	int64_t idle_slots, busy_slots, total_slots;
	size_t agents_ready, agents_draining, agents_offline;
	struct class_now *classes;
	size_t n_classes;
	struct agent_now *agents;
	size_t n_agents;
};

static bool labels_subset(const struct sclass *c, const struct sagent *a)
{
	for (size_t i = 0; i < c->n_labels; i++) {
		bool found = false;
		for (size_t k = 0; k < a->n_labels && !found; k++)
			found = streq(c->labels[i], a->labels[k]);
		if (!found)
			return false;
	}
	return true;
}

static bool fits_now(const struct sagent *a, const struct proto_capacity *need)
{
	const struct proto_capacity *t = &a->capacity, *u = &a->used;
	if (u->slots + 1 > t->slots)
		return false;
	if (t->cpus > 0 && u->cpus + need->cpus > t->cpus + 1e-9)
		return false;
	if (t->memory > 0 && u->memory + need->memory > t->memory)
		return false;
	return u->gpus + need->gpus <= t->gpus;
}

static void now_collect(struct server *s, uint64_t since_ms, struct now *n)
{
	memset(n, 0, sizeof(*n));
	uint64_t mono = now_mono_ns(), wall = proto_now_ms();
	pthread_mutex_lock(&s->lock);
	size_t nc = 0, na = 0;
	for (struct sclass *c = s->classes; c; c = c->next)
		nc += c->n_heap > 0;
	for (struct sagent *a = s->agents; a; a = a->next)
		na++;
	n->classes = xcalloc(nc + 1, sizeof(*n->classes));
	n->agents = xcalloc(na + 1, sizeof(*n->agents));
	for (struct sagent *a = s->agents; a; a = a->next) {
		bool online = a->last_seen_ns &&
		              mono - a->last_seen_ns < s->cfg.agent_offline_ms * NSEC_PER_MSEC;
		struct agent_now *x = &n->agents[n->n_agents++];
		x->id = a->id;
		x->name = xstrdup(a->name);
		x->state = !online ? "offline" : a->draining ? "draining" : "ready";
		x->slots = a->capacity.slots;
		x->busy = a->used.slots;
		x->registered_at = a->registered_at;
		for (size_t i = 0; i < a->n_jobs; i++) {
			uint64_t leased_ms = wall - (mono - a->jobs[i]->leased_ns) / NSEC_PER_MSEC;
			uint64_t from = MAX(leased_ms, since_ms);
			if (wall > from)
				x->running_busy_s += (double)(wall - from) / 1e3;
		}
		n->total_slots += a->capacity.slots;
		n->busy_slots += a->used.slots;
		if (online && !a->draining) {
			n->agents_ready++;
			n->idle_slots += MAX(a->capacity.slots - a->used.slots, 0);
		} else if (online) {
			n->agents_draining++;
		} else {
			n->agents_offline++;
		}
	}
	for (struct sclass *c = s->classes; c; c = c->next) {
		if (!c->n_heap)
			continue;
		struct class_now *k = &n->classes[n->n_classes++];
		k->labels = proto_labels_join(c->labels, c->n_labels);
		k->queued = c->n_heap;
		k->schedulable = c->schedulable;
		k->reason = c->reason ? xstrdup(c->reason) : NULL;
		uint64_t oldest = mono;
		for (size_t i = 0; i < c->n_heap; i++)
			oldest = MIN(oldest, c->heap[i]->queued_ns);
		k->oldest_s = (double)(mono - oldest) / 1e9;
		for (struct sagent *a = s->agents; a && !k->idle_fit; a = a->next) {
			bool online =
			    a->last_seen_ns &&
			    mono - a->last_seen_ns < s->cfg.agent_offline_ms * NSEC_PER_MSEC;
			k->idle_fit =
			    online && !a->draining && labels_subset(c, a) && fits_now(a, &c->needs);
		}
		n->queued += c->n_heap;
		if (!c->schedulable)
			n->unschedulable += c->n_heap;
	}
	for (struct sjob *j = s->active_head; j; j = j->anext)
		*(j->state == JOB_RUNNING ? &n->running : &n->leased) += 1;
	pthread_mutex_unlock(&s->lock);
}

static void now_release(struct now *n)
{
	for (size_t i = 0; i < n->n_classes; i++) {
		free(n->classes[i].labels);
		free(n->classes[i].reason);
	}
	for (size_t i = 0; i < n->n_agents; i++)
		free(n->agents[i].name);
	free(n->classes);
	free(n->agents);
}

/* ---- thresholds (query parameters) ----------------------------------------- */

struct thresholds {
	double wait_s;       /* a queue wait this long is long (60 s) */
	size_t min_attempts; /* rates need this many attempts (5) */
};

/* ---- rules ---------------------------------------------------------------- */

static void recommend(json_t *recs, const char *rule, const char *severity, json_t *evidence,
                      const char *why, const char *fmt, ...) KILN_PRINTF(6, 7);

static void recommend(json_t *recs, const char *rule, const char *severity, json_t *evidence,
                      const char *why, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	_cleanup_free_ char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	json_array_append_new(recs,
	                      json_pack("{s:s,s:s,s:s,s:s,s:o}", "rule", rule, "severity", severity,
	                                "message", msg, "why", why, "evidence", evidence));
}

static void rules_now(json_t *recs, const struct now *n, const struct thresholds *t)
{
	for (size_t i = 0; i < n->n_classes; i++) {
		const struct class_now *k = &n->classes[i];
		const char *labels = *k->labels ? k->labels : "(any)";
		if (!k->schedulable) {
			recommend(
			    recs, "unschedulable", "critical",
			    json_pack("{s:s,s:I,s:f,s:s?}", "labels", labels, "queued",
			              (json_int_t)k->queued, "oldest_wait_seconds", k->oldest_s,
			              "reason", k->reason),
			    "queued jobs that no registered agent could run even when idle "
			    "(labels or size)",
			    "%zu job(s) with runs-on [%s] can never run: %s. Register an agent "
			    "that has these labels and is big enough, or change the jobs' "
			    "runs-on/resources",
			    k->queued, labels, k->reason ? k->reason : "no agent fits");
		} else if (k->oldest_s >= t->wait_s && !k->idle_fit && n->idle_slots > 0) {
			recommend(
			    recs, "label-mismatch", "warning",
			    json_pack("{s:s,s:I,s:f,s:I}", "labels", labels, "queued",
			              (json_int_t)k->queued, "oldest_wait_seconds", k->oldest_s,
			              "idle_slots", (json_int_t)n->idle_slots),
			    "jobs queued longer than the wait threshold while slots are idle on "
			    "ready agents that lack their labels (or room)",
			    "%zu job(s) for [%s] have waited up to %.0fs while %" PRId64
			    " slot(s) sit idle on agents without these labels: add the labels "
			    "to idle agents (kiln agent --labels) or relax runs-on",
			    k->queued, labels, k->oldest_s, n->idle_slots);
		}
	}
}

static void rules_window(json_t *recs, struct acc *a, const struct now *n,
                         const struct thresholds *t, double util)
{
	/* drain-agent: one agent fails far more than the rest. */
	for (struct agent_acc *x = a->agents; x; x = x->next) {
		double fr = failure_rate(&x->out);
		size_t n_x = x->out.attempts - x->out.cancelled;
		if (n_x < t->min_attempts || isnan(fr) || fr < 0.5)
			continue;
		struct outcome rest = a->all;
		rest.attempts -= x->out.attempts;
		rest.succeeded -= x->out.succeeded;
		rest.failed -= x->out.failed;
		rest.timed_out -= x->out.timed_out;
		rest.cancelled -= x->out.cancelled;
		rest.lost -= x->out.lost;
		double fr_rest = failure_rate(&rest);
		if (!isnan(fr_rest) && fr_rest * 2 > fr)
			continue; /* failing everywhere: the jobs, not the agent */
		char others[48];
		if (isnan(fr_rest))
			snprintf(others, sizeof(others), "no other agent ran any");
		else
			snprintf(others, sizeof(others), "the others %.0f%%", fr_rest * 100);
		recommend(recs, "drain-agent", "warning",
		          json_pack("{s:s,s:I,s:f,s:o}", "agent", x->name, "attempts",
		                    (json_int_t)n_x, "failure_rate", fr, "others_failure_rate",
		                    num_or_null(fr_rest)),
		          "an agent with at least the minimum attempts fails at least half of "
		          "them, and more than twice as often as the other agents",
		          "agent '%s' failed %.0f%% of its %zu attempts (%s): drain it "
		          "(POST /v1/agents/%" PRId64 "/drain) and look at the host",
		          x->name, fr * 100, n_x, others, x->id);
	}
	/* lease-expiries: agents lose their leases. */
	if (a->all.expired >= 3 && a->all.expired * 20 >= a->all.attempts) {
		struct agent_acc *worst = NULL;
		for (struct agent_acc *x = a->agents; x; x = x->next)
			if (!worst || x->out.expired > worst->out.expired)
				worst = x;
		recommend(recs, "lease-expiries", "warning",
		          json_pack("{s:I,s:I,s:s?,s:I}", "expired", (json_int_t)a->all.expired,
		                    "attempts", (json_int_t)a->all.attempts, "worst_agent",
		                    worst ? worst->name : NULL, "worst_agent_expired",
		                    (json_int_t)(worst ? worst->out.expired : 0)),
		          "at least 3 leases expired and they are at least 5% of the attempts",
		          "%zu of %zu attempts lost their lease (most on '%s'): the agents could "
		          "not renew in time — check their network and load, or raise --lease-ttl",
		          a->all.expired, a->all.attempts, worst ? worst->name : "?");
	}
	/* Per label set and executor: timeouts and OOM kills. */
	for (struct group *g = a->groups; g; g = g->next) {
		const char *labels = *g->labels ? g->labels : "(any)";
		if (g->out.attempts >= t->min_attempts && g->out.timed_out * 5 >= g->out.attempts)
			recommend(
			    recs, "timeouts", "warning",
			    json_pack("{s:s,s:s,s:I,s:I}", "labels", labels, "executor",
			              g->executor, "attempts", (json_int_t)g->out.attempts,
			              "timed_out", (json_int_t)g->out.timed_out),
			    "at least 20% of a label set's attempts timed out",
			    "%zu of %zu attempts on [%s] timed out: raise the jobs' timeout or "
			    "find what hangs",
			    g->out.timed_out, g->out.attempts, labels);
		if (g->out.oom >= 3)
			recommend(
			    recs, "oom", "warning",
			    json_pack("{s:s,s:s,s:I}", "labels", labels, "executor", g->executor,
			              "attempts_with_oom_kills", (json_int_t)g->out.oom),
			    "three or more attempts of a label set had processes killed by the "
			    "OOM killer",
			    "%zu attempts on [%s] ran out of memory: raise resources.memory",
			    g->out.oom, labels);
	}
	/* Capacity: saturated, or mostly idle. */
	double wait95 = dist_pct(&a->wait, 0.95);
	if (!isnan(util) && util >= 0.85 && !isnan(wait95) && wait95 >= t->wait_s)
		recommend(
		    recs, "add-capacity", "warning",
		    json_pack("{s:f,s:f}", "utilisation", util, "queue_wait_p95_seconds", wait95),
		    "utilisation of at least 85% with a queue-wait p95 at or above the wait "
		    "threshold",
		    "the fleet was %.0f%% busy and jobs waited %.0fs (p95): add agents or "
		    "slots",
		    util * 100, wait95);
	double span_h = (double)(a->until - a->since) / 3.6e6;
	if (!isnan(util) && util < 0.10 && n->n_agents >= 2 && span_h >= 1 && a->all.attempts > 0)
		recommend(
		    recs, "over-provisioned", "info",
		    json_pack("{s:f,s:I}", "utilisation", util, "agents", (json_int_t)n->n_agents),
		    "utilisation under 10% over a window of at least an hour, with two or "
		    "more agents",
		    "the fleet was %.0f%% busy over %.0fh: fewer agents (or slots) would do",
		    util * 100, span_h);
	/* failure-rate: the jobs themselves fail. */
	size_t finished = 0, ok = a->jobs_by_state[JOB_SUCCEEDED];
	for (int st = JOB_SUCCEEDED; st < JOB_STATE_MAX; st++)
		if (st != JOB_CANCELLED)
			finished += a->jobs_by_state[st];
	if (finished >= 4 * t->min_attempts && ok * 10 < finished * 9)
		recommend(recs, "failure-rate", "warning",
		          json_pack("{s:I,s:I}", "jobs", (json_int_t)finished, "succeeded",
		                    (json_int_t)ok),
		          "fewer than 90% of the finished jobs (cancelled ones aside) succeeded, "
		          "over at least four times the minimum attempts",
		          "only %.0f%% of %zu jobs succeeded: look at the failures (kiln get jobs "
		          "--state failed)",
		          100.0 * (double)ok / (double)finished, finished);
}

/* ---- the report ----------------------------------------------------------- */

static json_t *outcome_json(const struct outcome *o)
{
	json_t *j =
	    json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "attempts", (json_int_t)o->attempts,
	              "succeeded", (json_int_t)o->succeeded, "failed", (json_int_t)o->failed,
	              "timed_out", (json_int_t)o->timed_out, "cancelled", (json_int_t)o->cancelled,
	              "lost", (json_int_t)o->lost, "lease_expiries", (json_int_t)o->expired);
	double fr = failure_rate(o);
	json_object_set_new(j, "success_rate", isnan(fr) ? json_null() : json_real(1 - fr));
	return j;
}

static int cmp_group(const void *a, const void *b)
{
	const struct group *x = *(struct group *const *)a, *y = *(struct group *const *)b;
	if (x->out.attempts != y->out.attempts)
		return x->out.attempts > y->out.attempts ? -1 : 1;
	int c = strcmp(x->labels, y->labels);
	return c ? c : strcmp(x->executor, y->executor);
}

static json_t *groups_json(struct acc *a)
{
	size_t n = 0;
	for (struct group *g = a->groups; g; g = g->next)
		n++;
	struct group **v =
	    xcalloc(n + 1, sizeof(*v)); // NOLINT(bugprone-sizeof-expression): an array of pointers
	n = 0;
	for (struct group *g = a->groups; g; g = g->next)
		v[n++] = g;
	qsort(v, n, sizeof(*v), cmp_group); // NOLINT(bugprone-sizeof-expression): an array of pointers
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *o =
		    json_pack("{s:s,s:s}", "labels", v[i]->labels, "executor", v[i]->executor);
		json_object_set_new(o, "outcome", outcome_json(&v[i]->out));
		json_object_set_new(o, "duration_seconds", dist_json(&v[i]->dur, true));
		json_object_set_new(o, "queue_wait_seconds", dist_json(&v[i]->wait, false));
		json_array_append_new(arr, o);
	}
	free(v);
	return arr;
}

/* Agents: the window's figures joined with the scheduler's; returns the fleet utilisation. */
static json_t *agents_json(struct acc *a, const struct now *n, double *ret_util)
{
	json_t *arr = json_array();
	double busy = 0, cap = 0;
	for (size_t i = 0; i < n->n_agents; i++) {
		const struct agent_now *x = &n->agents[i];
		struct agent_acc *w = NULL;
		for (struct agent_acc *y = a->agents; y && !w; y = y->next)
			if (y->id == x->id)
				w = y;
		struct outcome none = {0};
		double b = (w ? w->busy_s : 0) + x->running_busy_s;
		uint64_t from = MAX(a->since, x->registered_at);
		double span = a->until > from ? (double)(a->until - from) / 1e3 : 0;
		double c = span * (double)x->slots;
		busy += b;
		cap += c;
		json_t *o = json_pack("{s:I,s:s,s:s,s:I,s:I,s:f}", "id", (json_int_t)x->id, "name",
		                      x->name, "state", x->state, "slots", (json_int_t)x->slots,
		                      "busy_slots", (json_int_t)x->busy, "busy_seconds", b);
		json_object_set_new(o, "utilisation",
		                    c > 0 ? json_real(MIN(b / c, 1.0)) : json_null());
		json_object_set_new(o, "outcome", outcome_json(w ? &w->out : &none));
		json_array_append_new(arr, o);
	}
	*ret_util = cap > 0 ? MIN(busy / cap, 1.0) : NAN;
	return arr;
}

static json_t *now_json(const struct now *n)
{
	json_t *classes = json_array();
	for (size_t i = 0; i < n->n_classes; i++) {
		const struct class_now *k = &n->classes[i];
		json_t *o =
		    json_pack("{s:s,s:I,s:f,s:b,s:b}", "labels", k->labels, "queued",
		              (json_int_t)k->queued, "oldest_wait_seconds", k->oldest_s,
		              "schedulable", k->schedulable, "idle_agent_fits", k->idle_fit);
		json_object_set_new(o, "reason", k->reason ? json_string(k->reason) : json_null());
		json_array_append_new(classes, o);
	}
	return json_pack(
	    "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o}", "queued", (json_int_t)n->queued,
	    "unschedulable", (json_int_t)n->unschedulable, "leased", (json_int_t)n->leased,
	    "running", (json_int_t)n->running, "slots", (json_int_t)n->total_slots, "busy_slots",
	    (json_int_t)n->busy_slots, "idle_slots", (json_int_t)n->idle_slots, "agents_ready",
	    (json_int_t)n->agents_ready, "agents_draining", (json_int_t)n->agents_draining,
	    "agents_offline", (json_int_t)n->agents_offline, "queue", classes);
}

static int req_thresholds(struct req *r, struct thresholds *t)
{
	t->wait_s = 60;
	t->min_attempts = 5;
	const char *w = req_query(r, "wait_threshold");
	if (w) {
		uint64_t ms;
		if (parse_duration_ms(w, &ms) < 0) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_parameter",
			                "query parameter 'wait_threshold': '%s' is not a duration "
			                "(e.g. 30s, 5m)",
			                w);
			return -EINVAL;
		}
		t->wait_s = (double)ms / 1e3;
	}
	int64_t m;
	if (req_query_int(r, "min_attempts", 1, 1000000, 5, &m) < 0)
		return -EINVAL;
	t->min_attempts = (size_t)m;
	return 0;
}

void h_stats(struct req *r)
{
	struct store_window w;
	struct thresholds t;
	if (req_window(r, 24ULL * 3600 * 1000, &w) < 0 || req_thresholds(r, &t) < 0)
		return;
	struct acc a = {.since = w.since, .until = w.until};
	int rc = store_attempts_scan(r->srv->store, &w, on_row, &a);
	if (rc < 0 && !a.truncated) {
		acc_release(&a);
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
		                "cannot read the attempts: %s", strerror(-rc));
		return;
	}
	struct now n;
	now_collect(r->srv, w.since, &n);
	double util;
	json_t *agents = agents_json(&a, &n, &util);
	json_t *recs = json_array();
	rules_now(recs, &n, &t);
	rules_window(recs, &a, &n, &t, util);

	json_t *jobs = json_object();
	size_t finished = 0;
	for (int st = JOB_SUCCEEDED; st < JOB_STATE_MAX; st++) {
		json_object_set_new(jobs, job_state_to_string(st),
		                    json_integer((json_int_t)a.jobs_by_state[st]));
		finished += a.jobs_by_state[st];
	}
	size_t counted = finished - a.jobs_by_state[JOB_CANCELLED];
	json_object_set_new(jobs, "finished", json_integer((json_int_t)finished));
	json_object_set_new(
	    jobs, "success_rate",
	    counted ? json_real((double)a.jobs_by_state[JOB_SUCCEEDED] / (double)counted)
	            : json_null());

	json_t *o = json_object();
	proto_set_time(o, "since", w.since);
	proto_set_time(o, "until", w.until);
	json_object_set_new(o, "org", w.org ? json_string(w.org) : json_null());
	json_object_set_new(o, "truncated", json_boolean(a.truncated));
	json_object_set_new(o, "thresholds",
	                    json_pack("{s:f,s:I}", "wait_seconds", t.wait_s, "min_attempts",
	                              (json_int_t)t.min_attempts));
	json_object_set_new(o, "jobs", jobs);
	json_object_set_new(o, "attempts", outcome_json(&a.all));
	json_object_set_new(o, "retried_attempts", json_integer((json_int_t)a.retried));
	json_object_set_new(o, "duration_seconds", dist_json(&a.dur, true));
	json_object_set_new(o, "queue_wait_seconds", dist_json(&a.wait, true));
	json_object_set_new(o, "utilisation", num_or_null(util));
	json_object_set_new(o, "groups", groups_json(&a));
	json_object_set_new(o, "agents", agents);
	json_object_set_new(o, "now", now_json(&n));
	json_object_set_new(o, "recommendations", recs);
	now_release(&n);
	acc_release(&a);
	req_reply_json(r, MHD_HTTP_OK, o);
}
