/*
 * sched: the scheduler's in-memory state — queued jobs by class, leases,
 * agents and their capacity, parked long-polls — and the timer that expires
 * leases and enforces timeouts.
 *
 * Dispatch cost does not grow with the queue: queued jobs with the same
 * requirements (labels + needs) share a class with one binary heap ordered
 * by priority (high first) then id (old first). An agent asking for work
 * looks at the head of each class it can run (O(classes)); a new job looks
 * at the parked agents (O(waiters)) and wakes exactly the first that can run
 * it. Everything here runs under server.lock.
 */
#include "server-internal.h"
#include "auth/auth.h"

#include <inttypes.h>
#include <signal.h>
#include <sys/socket.h>

/* ---- mutations owned by nobody -------------------------------------------- */

struct owned_mut {
	struct store_mut m;
	char *msg;
};

struct store_mut *mut_new(enum store_mut_kind kind)
{
	struct owned_mut *o = xcalloc(1, sizeof(*o));
	o->m.kind = kind;
	return &o->m;
}

static void detached_done(struct store_mut *m, void *ud)
{
	(void)ud;
	struct owned_mut *o = (struct owned_mut *)m;
	if (m->kind == STORE_JOB_LEASE)
		free(m->lease.ret_spec);
	if (m->result < 0)
		log_error("store refused a server decision kind=%d result=%d (a scheduler bug)",
			  (int)m->kind, m->result);
	free(o->msg);
	free(o);
}

void mut_submit_detached(struct server *s, struct store_mut *m)
{
	m->done = detached_done;
	m->userdata = NULL;
	store_submit(s->store, m);
}

void mut_set_msg(struct store_mut *m, char *msg)
{
	struct owned_mut *o = (struct owned_mut *)m;
	free(o->msg);
	o->msg = msg;
}

/* ---- the job table -------------------------------------------------------- */

static size_t id_hash(int64_t id, size_t size)
{
	uint64_t x = (uint64_t)id * 0x9E3779B97F4A7C15ULL;
	return (size_t)(x >> 32) & (size - 1);
}

static void table_grow(struct server *s)
{
	size_t nsize = s->jobs_tab_size ? s->jobs_tab_size * 2 : 1024;
	struct sjob **tab = xcalloc(nsize, sizeof(*tab)); // NOLINT(bugprone-sizeof-expression): an array of pointers
	for (size_t i = 0; i < s->jobs_tab_size; i++) {
		struct sjob *j = s->jobs_tab[i], *next;
		for (; j; j = next) {
			next = j->hnext;
			size_t h = id_hash(j->id, nsize);
			j->hnext = tab[h];
			tab[h] = j;
		}
	}
	free(s->jobs_tab);
	s->jobs_tab = tab;
	s->jobs_tab_size = nsize;
}

struct sjob *sched_job(struct server *s, int64_t id)
{
	if (!s->jobs_tab_size)
		return NULL;
	for (struct sjob *j = s->jobs_tab[id_hash(id, s->jobs_tab_size)]; j; j = j->hnext)
		if (j->id == id)
			return j;
	return NULL;
}

static void table_add(struct server *s, struct sjob *j)
{
	if (s->n_jobs + 1 > s->jobs_tab_size)
		table_grow(s);
	size_t h = id_hash(j->id, s->jobs_tab_size);
	j->hnext = s->jobs_tab[h];
	s->jobs_tab[h] = j;
	s->n_jobs++;
}

static void table_del(struct server *s, struct sjob *j)
{
	struct sjob **p = &s->jobs_tab[id_hash(j->id, s->jobs_tab_size)];
	for (; *p; p = &(*p)->hnext)
		if (*p == j) {
			*p = j->hnext;
			s->n_jobs--;
			return;
		}
}

/* ---- classes and their heaps ---------------------------------------------- */

static bool job_before(const struct sjob *a, const struct sjob *b)
{
	if (a->priority != b->priority)
		return a->priority > b->priority;
	return a->id < b->id;
}

static void heap_set(struct sclass *c, size_t i, struct sjob *j)
{
	c->heap[i] = j;
	j->heap_idx = i;
}

static void heap_up(struct sclass *c, size_t i)
{
	struct sjob *j = c->heap[i];
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!job_before(j, c->heap[p]))
			break;
		heap_set(c, i, c->heap[p]);
		i = p;
	}
	heap_set(c, i, j);
}

static void heap_down(struct sclass *c, size_t i)
{
	struct sjob *j = c->heap[i];
	for (;;) {
		size_t l = 2 * i + 1, best = i;
		struct sjob *bj = j;
		if (l < c->n_heap && job_before(c->heap[l], bj))
			best = l, bj = c->heap[l];
		if (l + 1 < c->n_heap && job_before(c->heap[l + 1], bj))
			best = l + 1, bj = c->heap[l + 1];
		if (best == i)
			break;
		heap_set(c, i, bj);
		i = best;
	}
	heap_set(c, i, j);
}

static void heap_push(struct sclass *c, struct sjob *j)
{
	c->heap = xgrow(c->heap, &c->cap_heap, c->n_heap + 1, sizeof(*c->heap)); // NOLINT(bugprone-sizeof-expression): an array of pointers
	c->heap[c->n_heap] = j;
	j->heap_idx = c->n_heap++;
	heap_up(c, j->heap_idx);
}

static void heap_remove(struct sclass *c, struct sjob *j)
{
	size_t i = j->heap_idx;
	struct sjob *last = c->heap[--c->n_heap];
	if (i < c->n_heap) {
		heap_set(c, i, last);
		heap_down(c, i);
		heap_up(c, last->heap_idx);
	}
	j->heap_idx = SIZE_MAX;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Splits runs-on into plain/key:value labels and the gpu-count:N need. */
static void parse_runs_on(const char *runs_on, char ***ret_labels, size_t *ret_n, int64_t *gpus)
{
	size_t n;
	char **v = proto_labels_split(runs_on, &n);
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		int64_t g;
		if (startswith(v[i], "gpu-count:") &&
		    parse_int64(v[i] + strlen("gpu-count:"), 0, 1024, &g) >= 0) {
			*gpus = MAX(*gpus, g);
			free(v[i]);
			continue;
		}
		v[k++] = v[i];
	}
	v[k] = NULL;
	qsort(v, k, sizeof(*v), cmp_str);
	*ret_labels = v;
	*ret_n = k;
}

static void class_free(struct sclass *c)
{
	free(c->key);
	proto_strv_free(c->labels, c->n_labels);
	free(c->heap);
	free(c->reason);
	free(c);
}

static void class_unref(struct server *s, struct sclass *c)
{
	if (--c->refs > 0)
		return;
	for (struct sclass **p = &s->classes; *p; p = &(*p)->next)
		if (*p == c) {
			*p = c->next;
			break;
		}
	class_free(c);
}

/* Does agent a serve jobs of this org? Its org's pool, or the shared pool. */
static bool agent_serves(const struct sagent *a, int64_t org_id)
{
	return a->org_id == 0 || a->org_id == org_id;
}

static bool agent_has_labels(const struct sagent *a, const struct sclass *c)
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

/* Does `need` fit into `total` minus `used`? cpus/memory 0 = not declared. */
static bool fits(const struct proto_capacity *total, const struct proto_capacity *used,
		 const struct proto_capacity *need)
{
	if (used->slots + 1 > total->slots)
		return false;
	if (total->cpus > 0 && used->cpus + need->cpus > total->cpus + 1e-9)
		return false;
	if (total->memory > 0 && used->memory + need->memory > total->memory)
		return false;
	if (used->gpus + need->gpus > total->gpus)
		return false;
	return true;
}

static const struct proto_capacity no_use = {0};

static void class_check(struct server *s, struct sclass *c)
{
	free(c->reason);
	c->reason = NULL;
	c->schedulable = false;
	const struct sagent *with_labels = NULL;
	size_t n_agents = 0, n_all = 0;
	for (const struct sagent *a = s->agents; a; a = a->next) {
		n_all++;
		if (!agent_serves(a, c->org_id))
			continue;
		n_agents++;
		if (!agent_has_labels(a, c))
			continue;
		with_labels = a;
		if (fits(&a->capacity, &no_use, &c->needs)) {
			c->schedulable = true;
			return;
		}
	}
	_cleanup_free_ char *labels = proto_labels_join(c->labels, c->n_labels);
	if (n_all == 0) {
		c->reason = xstrdup("no agent is registered");
	} else if (n_agents == 0) {
		c->reason = xstrdup("no agent of this org's pool or the shared pool is registered");
	} else if (!with_labels) {
		c->reason = xasprintf("no registered agent has all the labels of runs-on [%s]",
				      labels);
	} else {
		struct buf b = BUF_INIT;
		if (c->needs.cpus > 0)
			buf_printf(&b, ", cpus %g", c->needs.cpus);
		if (c->needs.memory) {
			char mem[32];
			format_size(c->needs.memory, mem);
			buf_printf(&b, ", memory %s", mem);
		}
		if (c->needs.gpus)
			buf_printf(&b, ", gpus %" PRId64, c->needs.gpus);
		c->reason = xasprintf("no registered agent with the labels [%s] is big enough: "
				      "the job needs %s",
				      labels, b.len > 2 ? b.data + 2 : "a free slot");
		buf_release(&b);
	}
}

static struct sclass *class_get(struct server *s, int64_t org_id, const char *runs_on,
				const struct proto_capacity *needs)
{
	char **labels;
	size_t n;
	struct proto_capacity nd = *needs;
	nd.slots = 1;
	parse_runs_on(runs_on, &labels, &n, &nd.gpus);
	_cleanup_free_ char *joined = proto_labels_join(labels, n);
	_cleanup_free_ char *key = xasprintf("%" PRId64 "|%s|%.17g|%" PRIu64 "|%" PRId64, org_id,
					     joined, nd.cpus, nd.memory, nd.gpus);
	for (struct sclass *c = s->classes; c; c = c->next)
		if (streq(c->key, key)) {
			proto_strv_free(labels, n);
			c->refs++;
			return c;
		}
	struct sclass *c = xcalloc(1, sizeof(*c));
	c->key = TAKE_PTR(key);
	c->org_id = org_id;
	c->labels = labels;
	c->n_labels = n;
	c->needs = nd;
	c->refs = 1;
	c->next = s->classes;
	s->classes = c;
	class_check(s, c);
	return c;
}

void sched_recheck_classes(struct server *s)
{
	for (struct sclass *c = s->classes; c; c = c->next)
		class_check(s, c);
}

/*
 * Reads give the store's committed state; a job the scheduler holds may be a
 * step ahead (a lease answered before its commit): show the scheduler's.
 */
void sched_fill_overlay(struct server *s, struct proto_job *pj, bool with_attempts)
{
	struct sjob *j = sched_job(s, pj->id);
	if (!j || job_state_is_terminal(pj->state))
		return;
	if (j->attempt > pj->attempt || (job_state_is_active(j->state) && j->fence != pj->fence)) {
		pj->state = j->state;
		pj->attempt = j->attempt;
		pj->fence = j->fence;
		pj->agent_id = j->agent ? j->agent->id : 0;
		if (!pj->leased_at)
			pj->leased_at = proto_now_ms();
		if (with_attempts) {
			pj->attempts = xrealloc(pj->attempts,
						(pj->n_attempts + 1) * sizeof(*pj->attempts));
			pj->attempts[pj->n_attempts++] = (struct proto_attempt){
				.attempt = j->attempt,
				.fence = j->fence,
				.agent_id = j->agent ? j->agent->id : 0,
				.agent_name = j->agent ? xstrdup(j->agent->name) : NULL,
				.state = j->state,
				.leased_at = proto_now_ms(),
			};
		}
	} else if (j->state == JOB_RUNNING && pj->state == JOB_LEASED) {
		pj->state = JOB_RUNNING;
	}
	if (j->state == JOB_QUEUED && j->cls && !j->cls->schedulable) {
		pj->unschedulable = true;
		free(pj->reason);
		pj->reason = xstrdup(j->cls->reason);
	}
}

/* ---- agents --------------------------------------------------------------- */

struct sagent *sched_agent(struct server *s, int64_t id)
{
	for (struct sagent *a = s->agents; a; a = a->next)
		if (a->id == id)
			return a;
	return NULL;
}

struct sagent *sched_agent_by_name(struct server *s, int64_t org_id, const char *name)
{
	for (struct sagent *a = s->agents; a; a = a->next)
		if (a->org_id == org_id && streq(a->name, name))
			return a;
	return NULL;
}

static void cap_add(struct proto_capacity *u, const struct proto_capacity *n, int sign)
{
	u->slots += sign;
	u->cpus += sign * n->cpus;
	if (sign > 0)
		u->memory += n->memory;
	else
		u->memory = u->memory >= n->memory ? u->memory - n->memory : 0;
	u->gpus += sign * n->gpus;
	if (u->cpus < 1e-9)
		u->cpus = 0;
}

static void agent_add_job(struct sagent *a, struct sjob *j)
{
	a->jobs = xgrow(a->jobs, &a->cap_jobs, a->n_jobs + 1, sizeof(*a->jobs)); // NOLINT(bugprone-sizeof-expression): an array of pointers
	a->jobs[a->n_jobs++] = j;
	cap_add(&a->used, &j->cls->needs, +1);
}

static void agent_del_job(struct sagent *a, struct sjob *j)
{
	for (size_t i = 0; i < a->n_jobs; i++)
		if (a->jobs[i] == j) {
			a->jobs[i] = a->jobs[--a->n_jobs];
			cap_add(&a->used, &j->cls->needs, -1);
			return;
		}
}

bool sched_revoked_take(struct sagent *a, int64_t job_id, int64_t fence, const char **reason)
{
	for (size_t i = 0; i < a->n_revoked; i++)
		if (a->revoked[i].job_id == job_id && a->revoked[i].fence == fence) {
			if (reason)
				*reason = a->revoked[i].reason;
			cap_add(&a->used, &a->revoked[i].needs, -1);
			a->revoked[i] = a->revoked[--a->n_revoked];
			return true;
		}
	return false;
}

void sched_agent_to_proto(struct server *s, struct sagent *a, struct proto_agent *ret)
{
	memset(ret, 0, sizeof(*ret));
	ret->id = a->id;
	ret->org_id = a->org_id;
	ret->org = a->org_id ? xstrdup(org_name(s, a->org_id)) : NULL;
	ret->name = xstrdup(a->name);
	ret->labels = xcalloc(a->n_labels + 1, sizeof(char *));
	for (size_t i = 0; i < a->n_labels; i++)
		ret->labels[i] = xstrdup(a->labels[i]);
	ret->n_labels = a->n_labels;
	ret->capacity = a->capacity;
	ret->used = a->used;
	ret->draining = a->draining;
	ret->registered_at = a->registered_at;
	ret->last_seen_at = a->last_seen_ms;
	ret->online = a->last_seen_ns &&
		      now_mono_ns() - a->last_seen_ns < s->cfg.agent_offline_ms * NSEC_PER_MSEC;
	ret->job_ids = xcalloc(a->n_jobs + 1, sizeof(int64_t));
	for (size_t i = 0; i < a->n_jobs; i++)
		ret->job_ids[i] = a->jobs[i]->id;
	ret->n_jobs = a->n_jobs;
}

/* ---- jobs ----------------------------------------------------------------- */

static void active_add(struct server *s, struct sjob *j)
{
	j->aprev = NULL;
	j->anext = s->active_head;
	if (s->active_head)
		s->active_head->aprev = j;
	s->active_head = j;
}

static void active_del(struct server *s, struct sjob *j)
{
	if (j->aprev)
		j->aprev->anext = j->anext;
	else if (s->active_head == j)
		s->active_head = j->anext;
	if (j->anext)
		j->anext->aprev = j->aprev;
	j->aprev = j->anext = NULL;
}

static struct sjob *job_new(struct server *s, int64_t id, int64_t org_id, const char *name,
			    int64_t priority, const char *runs_on,
			    const struct proto_capacity *needs, int64_t max_attempts,
			    uint64_t timeout_ms)
{
	struct sjob *j = xcalloc(1, sizeof(*j));
	j->id = id;
	j->org_id = org_id > 0 ? org_id : 1;
	j->name = xstrdup(name ? name : "");
	j->priority = priority;
	j->cls = class_get(s, j->org_id, runs_on, needs);
	j->max_attempts = max_attempts > 0 ? max_attempts : 1;
	j->timeout_ms = timeout_ms;
	j->heap_idx = SIZE_MAX;
	table_add(s, j);
	return j;
}

struct sjob *sched_add_job(struct server *s, int64_t id, int64_t org_id, const char *name,
			   int64_t priority, const char *runs_on,
			   const struct proto_capacity *needs, int64_t max_attempts,
			   uint64_t timeout_ms)
{
	struct sjob *j = job_new(s, id, org_id, name, priority, runs_on, needs, max_attempts,
				 timeout_ms);
	j->state = JOB_QUEUED;
	j->queued_ns = now_mono_ns();
	heap_push(j->cls, j);
	return j;
}

void sched_free_job(struct server *s, struct sjob *j)
{
	if (j->heap_idx != SIZE_MAX)
		heap_remove(j->cls, j);
	if (j->log)
		logs_attempt_ended(s, j);
	table_del(s, j);
	class_unref(s, j->cls);
	free(j->name);
	free(j);
}

void sched_remove_queued(struct server *s, struct sjob *j)
{
	(void)s;
	if (j->heap_idx != SIZE_MAX)
		heap_remove(j->cls, j);
}

/* The org's cap on leased + running jobs; 0 = none. */
static int64_t org_cap(struct server *s, const struct sorg *o)
{
	return o && o->max_running ? o->max_running : s->cfg.max_running_per_org;
}

static bool org_at_cap(struct server *s, int64_t org_id)
{
	struct sorg *o = org_get(s, org_id);
	int64_t cap = org_cap(s, o);
	return o && cap > 0 && o->running >= cap;
}

static void org_running(struct server *s, int64_t org_id, int delta)
{
	struct sorg *o = org_get(s, org_id);
	if (!o)
		return;
	bool was_capped = org_at_cap(s, org_id);
	o->running += delta;
	if (o->running < 0)
		o->running = 0;
	/* Below its cap again: the org's queued jobs may go to parked agents. */
	if (was_capped && !org_at_cap(s, org_id))
		for (struct sclass *c = s->classes; c; c = c->next)
			if (c->org_id == org_id && c->n_heap)
				sched_dispatch(s, c->heap[0]);
}

void sched_org_dispatch(struct server *s, int64_t org_id)
{
	if (org_at_cap(s, org_id))
		return;
	for (struct sclass *c = s->classes; c; c = c->next)
		if (c->org_id == org_id && c->n_heap)
			sched_dispatch(s, c->heap[0]);
}

void sched_end_lease(struct server *s, struct sjob *j, const char *revoke_reason)
{
	struct sagent *a = j->agent;
	bool was_active = j->aprev || j->anext || s->active_head == j;
	active_del(s, j);
	if (a) {
		agent_del_job(a, j);
		if (revoke_reason) {
			a->revoked = xgrow(a->revoked, &a->cap_revoked, a->n_revoked + 1,
					   sizeof(*a->revoked));
			a->revoked[a->n_revoked++] = (struct revoked){
				.job_id = j->id,
				.fence = j->fence,
				.needs = j->cls->needs,
				.reason = revoke_reason,
				.expires_ns = now_mono_ns() + s->cfg.lease_ttl_ms * NSEC_PER_MSEC,
			};
			cap_add(&a->used, &j->cls->needs, +1);
		}
	}
	j->agent = NULL;
	if (was_active)
		org_running(s, j->org_id, -1);
	/* Tell the agent now, not at its next heartbeat. */
	if (a && revoke_reason)
		heartbeat_wake(s, a);
	if (j->log)
		logs_attempt_ended(s, j);
	else
		logs_wake(s, j->id);
}

void sched_requeue(struct server *s, struct sjob *j)
{
	j->state = JOB_QUEUED;
	j->queued_ns = now_mono_ns();
	heap_push(j->cls, j);
	sched_dispatch(s, j);
}

/*
 * The job agent a should run next. Fairness between orgs (docs/decisions:
 * fairness): among the orgs with a job a can run, the first after the org
 * served last (by id, wrapping around); within that org, priority then age.
 * An org at its running cap is skipped.
 */
struct sjob *sched_pick(struct server *s, struct sagent *a)
{
	if (a->draining)
		return NULL;
	struct sjob *after = NULL, *wrap = NULL; /* best of the next org, best of the first */
	for (struct sclass *c = s->classes; c; c = c->next) {
		if (!c->n_heap || !agent_serves(a, c->org_id))
			continue;
		struct sjob *h = c->heap[0];
		struct sjob **slot = c->org_id > s->rr_org ? &after : &wrap;
		if (*slot && ((*slot)->org_id < h->org_id ||
			      ((*slot)->org_id == h->org_id && !job_before(h, *slot))))
			continue;
		if (!agent_has_labels(a, c) || !fits(&a->capacity, &a->used, &c->needs) ||
		    org_at_cap(s, c->org_id))
			continue;
		*slot = h;
	}
	return after ? after : wrap;
}

/* ---- long-poll waiters ---------------------------------------------------- */

void sched_park(struct server *s, struct req *r, struct sagent *a, uint64_t wait_ms)
{
	struct req **head = r->hb_waiter ? &s->hb_head : &s->waiters_head;
	struct req **tail = r->hb_waiter ? &s->hb_tail : &s->waiters_tail;
	r->wait_agent = a;
	r->wait_deadline_ns = now_mono_ns() + wait_ms * NSEC_PER_MSEC;
	r->parked = true;
	r->wnext = NULL;
	r->wprev = *tail;
	if (*tail)
		(*tail)->wnext = r;
	else
		*head = r;
	*tail = r;
}

void sched_unpark(struct server *s, struct req *r)
{
	if (!r->parked)
		return;
	struct req **head = r->hb_waiter ? &s->hb_head : &s->waiters_head;
	struct req **tail = r->hb_waiter ? &s->hb_tail : &s->waiters_tail;
	if (r->wprev)
		r->wprev->wnext = r->wnext;
	else
		*head = r->wnext;
	if (r->wnext)
		r->wnext->wprev = r->wprev;
	else
		*tail = r->wprev;
	r->wprev = r->wnext = NULL;
	r->parked = false;
}

/*
 * Is the client of a parked request gone? MHD does not watch a suspended
 * connection, and a killed agent's kernel has closed its socket: granting a
 * job into it would leave the job leased to nobody until the lease expires.
 */
static bool parked_peer_gone(struct req *r)
{
	if (!r->ci || r->ci->fd < 0)
		return false;
	char c;
	ssize_t n = recv(r->ci->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void drop_waiter(struct server *s, struct req *r)
{
	sched_unpark(s, r);
	req_reply_response(r, MHD_HTTP_NO_CONTENT,
			   MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT));
}

void sched_drop_agent_waiters(struct server *s, struct sagent *a)
{
	for (struct req *r = s->waiters_head, *next; r; r = next) {
		next = r->wnext;
		if (r->wait_agent == a)
			drop_waiter(s, r);
	}
}

void sched_dispatch(struct server *s, struct sjob *j)
{
	for (struct req *r = s->waiters_head, *next; r; r = next) {
		next = r->wnext;
		struct sagent *a = r->wait_agent;
		if (a->draining || !agent_serves(a, j->org_id) || !agent_has_labels(a, j->cls) ||
		    !fits(&a->capacity, &a->used, &j->cls->needs))
			continue;
		/* A system call, so only for a waiter that would get a job (one
		 * that would not is answered at its wait's end, or dropped here
		 * when a job for it comes). */
		if (parked_peer_gone(r)) {
			drop_waiter(s, r);
			continue;
		}
		/* The agent gets the best job it can run, which is j or better. */
		struct sjob *best = sched_pick(s, a);
		if (!best)
			continue;
		sched_unpark(s, r);
		sched_grant(s, best, a, r);
		if (best == j)
			return;
	}
}

void sched_kick_agent(struct server *s, struct sagent *a)
{
	struct req *r = s->waiters_head;
	while (r) {
		struct req *next = r->wnext;
		if (r->wait_agent == a) {
			if (parked_peer_gone(r)) {
				drop_waiter(s, r);
				r = next;
				continue;
			}
			struct sjob *j = sched_pick(s, a);
			if (!j)
				return;
			sched_unpark(s, r);
			sched_grant(s, j, a, r);
		}
		r = next;
	}
}

/* ---- leases --------------------------------------------------------------- */

struct lease_ctx {
	int64_t id, org_id, attempt, max_attempts, fence, agent_id;
	uint64_t timeout_ms, ttl_ms;
	char *name;
	char token[TOKEN_LEN + 1]; /* the lease's job token */
};

static void lease_ctx_free(void *p)
{
	struct lease_ctx *c = p;
	if (!c)
		return;
	free(c->name);
	explicit_bzero(c->token, sizeof(c->token));
	free(c);
}

static void lease_reply(struct req *r, const struct lease_ctx *c, const char *spec)
{
	struct buf b = BUF_INIT;
	buf_printf(&b, "{\"job\":{\"id\":%" PRId64 ",\"name\":", c->id);
	buf_put_json_string(&b, c->name, strlen(c->name));
	buf_printf(&b,
		   ",\"attempt\":%" PRId64 ",\"max_attempts\":%" PRId64 ",\"fence\":%" PRId64
		   ",\"timeout_ms\":%" PRIu64 ",\"spec\":%s},\"fence\":%" PRId64
		   ",\"attempt\":%" PRId64 ",\"lease_ttl_ms\":%" PRIu64 ",\"token\":\"%s\"}\n",
		   c->attempt, c->max_attempts, c->fence, c->timeout_ms, spec ? spec : "null",
		   c->fence, c->attempt, c->ttl_ms, c->token);
	/* The secrets the spec names, of the job's org, for the agent only. */
	b.len -= 2; /* "}\n" */
	secrets_for_lease(r->srv, c->id, c->org_id, spec, &b);
	buf_puts(&b, "}\n");
	size_t len = b.len;
	req_reply_text(r, MHD_HTTP_OK, "application/json", buf_steal(&b), len);
}

static void lease_done(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct lease_ctx *c = r->ctx;
	char *spec = TAKE_PTR(m->lease.ret_spec);
	if (m->result < 0) {
		log_error("the store refused a lease job=%" PRId64 " fence=%" PRId64 " result=%d",
			  c->id, c->fence, m->result);
		free(spec);
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"the lease could not be recorded; ask again");
		return;
	}
	lease_reply(r, c, spec);
	free(spec);
}

static void fence_reserve_done(struct store_mut *m, void *ud)
{
	struct server *s = ud;
	pthread_mutex_lock(&s->lock);
	if (m->result >= 0 && m->fence_reserve.upto > s->fence_durable)
		s->fence_durable = m->fence_reserve.upto;
	s->fence_reserving = false;
	pthread_mutex_unlock(&s->lock);
	free(m);
}

#define FENCE_BLOCK 65536

/* Keeps the durable fence reservation ahead of the fences handed out. */
static void fence_reserve_ahead(struct server *s)
{
	if (s->fence_reserving || s->next_fence + FENCE_BLOCK / 2 < s->fence_target)
		return;
	s->fence_target += FENCE_BLOCK;
	struct store_mut *m = xcalloc(1, sizeof(*m));
	m->kind = STORE_FENCE_RESERVE;
	m->fence_reserve.upto = s->fence_target;
	m->done = fence_reserve_done;
	m->userdata = s;
	s->fence_reserving = true;
	store_submit(s->store, m);
}

void sched_grant(struct server *s, struct sjob *j, struct sagent *a, struct req *r)
{
	uint64_t now = now_mono_ns();
	sched_remove_queued(s, j);
	j->state = JOB_LEASED;
	j->attempt++;
	j->fence = s->next_fence++;
	j->agent = a;
	j->lease_expires_ns = now + s->cfg.lease_ttl_ms * NSEC_PER_MSEC;
	j->deadline_ns = now + (j->timeout_ms + s->cfg.timeout_grace_ms) * NSEC_PER_MSEC;
	j->leased_ns = now;
	agent_add_job(a, j);
	active_add(s, j);
	uint64_t waited_ns = now > j->queued_ns ? now - j->queued_ns : 0;
	obs_lease_granted(s, waited_ns);
	org_running(s, j->org_id, +1);
	s->rr_org = j->org_id;

	fence_reserve_ahead(s);
	if (log_max_level >= LOG_DEBUG) {
		char ab[160];
		log_debug("lease granted job=%" PRId64 " agent=%s org=%s req=%s fence=%" PRId64
			  " attempt=%" PRId64 " waited_ms=%" PRIu64,
			  j->id, log_field(a->name, ab, sizeof(ab)), org_name(s, j->org_id), r->id, j->fence,
			  j->attempt, (uint64_t)(waited_ns / NSEC_PER_MSEC));
	}
	struct lease_ctx lc = {.id = j->id, .org_id = j->org_id, .attempt = j->attempt,
			       .max_attempts = j->max_attempts, .fence = j->fence,
			       .agent_id = a->id, .timeout_ms = j->timeout_ms,
			       .ttl_ms = s->cfg.lease_ttl_ms, .name = j->name};
	token_job(keys_job_key(s), j->id, j->fence, lc.token);
	struct store_mut lm = {.kind = STORE_JOB_LEASE,
			       .lease = {.job_id = j->id, .fence = j->fence,
					 .attempt = j->attempt, .agent_id = a->id,
					 .now = proto_now_ms(),
					 .queue_wait_ms = waited_ns / NSEC_PER_MSEC,
					 .gpus = j->cls->needs.gpus}};
	/*
	 * The lease may be answered before it is committed when the job itself
	 * is durable and its fence reserved: if the server dies before the
	 * commit, the job is simply still queued after the restart, and the
	 * fence, never reused, fences the agent out. Otherwise (a job that is
	 * not yet durable) the answer waits for the commit.
	 */
	if (j->insert_seq <= store_committed_seq(s->store) && j->fence <= s->fence_durable) {
		char *spec = NULL;
		if (store_job_spec(s->store, j->id, &spec) >= 0) {
			struct store_mut *m = mut_new(STORE_JOB_LEASE);
			m->lease = lm.lease;
			mut_submit_detached(s, m);
			lease_reply(r, &lc, spec);
			explicit_bzero(lc.token, sizeof(lc.token));
			free(spec);
			return;
		}
	}
	struct lease_ctx *c = xcalloc(1, sizeof(*c));
	*c = lc;
	c->name = xstrdup(j->name);
	if (r->ctx_free)
		r->ctx_free(r->ctx);
	r->ctx = c;
	r->ctx_free = lease_ctx_free;
	r->mut = lm;
	r->mut.done = lease_done;
	r->mut.userdata = r;
	store_submit(s->store, &r->mut);
}

/* ---- the timer ------------------------------------------------------------ */

void sched_release(struct server *s, struct sjob *j, const char *why, bool revoke, bool refund)
{
	char ab[160], wb[600];
	const char *agent = log_field(j->agent ? j->agent->name : "?", ab, sizeof(ab));
	const char *lwhy = log_field(why, wb, sizeof(wb));
	int64_t fence = j->fence;
	/* An agent that keeps handing a job back unstarted must not keep it
	 * queued for ever: past a few times, attempts count again. */
	if (refund && j->refunds >= SCHED_MAX_REFUNDS)
		refund = false;
	if (refund) {
		/* This attempt does not count: one more is allowed. */
		j->refunds++;
		j->max_attempts++;
		log_info("lease handed back unstarted, job queued again job=%" PRId64
			 " agent=%s org=%s fence=%" PRId64 " why=%s",
			 j->id, agent, org_name(s, j->org_id), fence, lwhy);
		struct store_mut *m = mut_new(STORE_JOB_REQUEUE);
		char *msg = xasprintf("%s (before it started; the attempt does not count)", why);
		m->requeue = (__typeof__(m->requeue)){.job_id = j->id, .fence = fence,
						  .attempt_state = JOB_LOST, .message = msg,
						  .now = proto_now_ms(), .refund = true};
		mut_set_msg(m, msg);
		mut_submit_detached(s, m);
		obs_job_requeued(s, org_name(s, j->org_id));
		sched_end_lease(s, j, revoke ? "lease_expired" : NULL);
		sched_requeue(s, j);
		return;
	}
	if (j->attempt < j->max_attempts) {
		log_warn("lease ended, job queued again job=%" PRId64 " agent=%s org=%s fence=%" PRId64
			 " attempt=%" PRId64 " why=%s",
			 j->id, agent, org_name(s, j->org_id), fence, j->attempt, lwhy);
		struct store_mut *m = mut_new(STORE_JOB_REQUEUE);
		char *msg = xasprintf("%s (attempt %" PRId64 " of %" PRId64 ")", why, j->attempt,
				      j->max_attempts);
		m->requeue = (__typeof__(m->requeue)){.job_id = j->id, .fence = fence,
						  .attempt_state = JOB_LOST, .message = msg,
						  .now = proto_now_ms()};
		mut_set_msg(m, msg);
		mut_submit_detached(s, m);
		obs_job_requeued(s, org_name(s, j->org_id));
		sched_end_lease(s, j, revoke ? "lease_expired" : NULL);
		sched_requeue(s, j);
		return;
	}
	log_warn("lease ended with no retries left, job lost job=%" PRId64 " agent=%s org=%s why=%s",
		 j->id, agent, org_name(s, j->org_id), lwhy);
	struct store_mut *m = mut_new(STORE_JOB_FINISH);
	char *msg = xasprintf("lost: %s, and no retries are left (attempt %" PRId64 " of %" PRId64
			      ")",
			      why, j->attempt, j->max_attempts);
	m->finish = (__typeof__(m->finish)){.job_id = j->id, .fence = fence, .state = JOB_LOST,
					.message = msg, .now = proto_now_ms()};
	mut_set_msg(m, msg);
	mut_submit_detached(s, m);
	obs_job_ended(s, JOB_LOST, org_name(s, j->org_id));
	struct sagent *a = j->agent;
	sched_end_lease(s, j, revoke ? "lost" : NULL);
	sched_free_job(s, j);
	if (a)
		sched_kick_agent(s, a);
}

static void expire_lease(struct server *s, struct sjob *j)
{
	char ttl[32];
	format_duration_ms(s->cfg.lease_ttl_ms, ttl);
	_cleanup_free_ char *why = xasprintf("lease expired: agent '%s' did not renew it within %s",
					     j->agent ? j->agent->name : "?", ttl);
	obs_lease_expired(s);
	/* An agent that let a lease expire is not answering: its parked lease
	 * long-polls get no job (it asks again when it is back). */
	if (j->agent)
		sched_drop_agent_waiters(s, j->agent);
	sched_release(s, j, why, true, false);
}

static void time_out(struct server *s, struct sjob *j)
{
	char t[32];
	format_duration_ms(j->timeout_ms, t);
	char ab[160];
	log_warn("job timed out (enforced by the server) job=%" PRId64 " agent=%s org=%s", j->id,
		 log_field(j->agent ? j->agent->name : "?", ab, sizeof(ab)), org_name(s, j->org_id));
	struct store_mut *m = mut_new(STORE_JOB_FINISH);
	char grace[32];
	format_duration_ms(s->cfg.timeout_grace_ms, grace);
	char *msg = xasprintf("timed out: still running past its timeout of %s (plus a grace "
			      "of %s); stopped by the server",
			      t, grace);
	m->finish = (__typeof__(m->finish)){.job_id = j->id, .fence = j->fence,
					.state = JOB_TIMED_OUT, .message = msg,
					.now = proto_now_ms()};
	mut_set_msg(m, msg);
	mut_submit_detached(s, m);
	obs_job_ended(s, JOB_TIMED_OUT, org_name(s, j->org_id));
	struct sagent *a = j->agent;
	sched_end_lease(s, j, "timed_out");
	sched_free_job(s, j);
	if (a)
		sched_kick_agent(s, a);
}

void sched_tick(struct server *s, uint64_t now)
{
	for (struct sjob *j = s->active_head, *next; j; j = next) {
		next = j->anext;
		if (now >= j->deadline_ns)
			time_out(s, j);
		else if (now >= j->lease_expires_ns)
			expire_lease(s, j);
	}
	for (struct req *r = s->waiters_head, *next; r; r = next) {
		next = r->wnext;
		if (now < r->wait_deadline_ns)
			continue;
		sched_unpark(s, r);
		req_reply_response(r, MHD_HTTP_NO_CONTENT,
				   MHD_create_response_from_buffer(0, NULL,
								   MHD_RESPMEM_PERSISTENT));
	}
	for (struct req *r = s->hb_head, *next; r; r = next) {
		next = r->wnext;
		if (now >= r->wait_deadline_ns)
			heartbeat_expire(s, r);
	}
	for (struct sagent *a = s->agents; a; a = a->next) {
		bool freed = false;
		for (size_t i = 0; i < a->n_revoked;) {
			if (now >= a->revoked[i].expires_ns) {
				cap_add(&a->used, &a->revoked[i].needs, -1);
				a->revoked[i] = a->revoked[--a->n_revoked];
				freed = true;
			} else {
				i++;
			}
		}
		if (freed)
			sched_kick_agent(s, a);
	}
	http_check_deadlines(s, now);
	webhook_tick(s, now);
	logs_ping(s, now);
}

void *sched_timer_main(void *p)
{
	struct server *s = p;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	pthread_mutex_lock(&s->lock);
	while (s->timer_running) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += 100 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&s->timer_cond, &s->lock, &ts);
		if (!s->timer_running)
			break;
		sched_tick(s, now_mono_ns());
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* ---- loading -------------------------------------------------------------- */

static void load_agent(void *ud, const struct proto_agent *pa)
{
	struct server *s = ud;
	struct sagent *a = xcalloc(1, sizeof(*a));
	a->id = pa->id;
	a->org_id = pa->org_id;
	a->name = xstrdup(pa->name);
	a->labels = xcalloc(pa->n_labels + 1, sizeof(char *));
	for (size_t i = 0; i < pa->n_labels; i++)
		a->labels[i] = xstrdup(pa->labels[i]);
	a->n_labels = pa->n_labels;
	a->capacity = pa->capacity;
	a->draining = pa->draining;
	a->registered_at = pa->registered_at;
	a->next = s->agents;
	s->agents = a;
}

static void load_job(void *ud, const struct proto_job *pj)
{
	struct server *s = ud;
	struct sjob *j = job_new(s, pj->id, pj->org_id, pj->name, pj->priority, pj->runs_on,
				 &pj->needs, pj->max_attempts, pj->timeout_ms);
	j->attempt = pj->attempt;
	j->fence = pj->fence;
	/* In the queue since it was submitted (or, if it ran before, since about
	 * now: when it went back is not stored). */
	uint64_t now_ms = proto_now_ms(), mono = now_mono_ns();
	uint64_t since_ms = pj->attempt == 0 && pj->submitted_at && now_ms > pj->submitted_at
				    ? now_ms - pj->submitted_at
				    : 0;
	j->queued_ns = mono > since_ms * NSEC_PER_MSEC ? mono - since_ms * NSEC_PER_MSEC : 0;
	if (pj->state == JOB_QUEUED) {
		j->state = JOB_QUEUED;
		heap_push(j->cls, j);
		return;
	}
	/* Leased or running: the holder gets a full lease from now to come back
	 * (lease expiry times are not stored; see docs/internals/server.md). */
	j->state = pj->state;
	uint64_t now = mono;
	j->lease_expires_ns = now + s->cfg.lease_ttl_ms * NSEC_PER_MSEC;
	uint64_t elapsed_ms = 0;
	if (pj->leased_at && now_ms > pj->leased_at)
		elapsed_ms = now_ms - pj->leased_at;
	uint64_t budget = j->timeout_ms + s->cfg.timeout_grace_ms;
	j->deadline_ns = now + (budget > elapsed_ms ? budget - elapsed_ms : 0) * NSEC_PER_MSEC;
	j->leased_ns = now > elapsed_ms * NSEC_PER_MSEC ? now - elapsed_ms * NSEC_PER_MSEC : 0;
	j->agent = sched_agent(s, pj->agent_id);
	if (j->agent)
		agent_add_job(j->agent, j);
	active_add(s, j);
	org_running(s, j->org_id, +1);
}

int sched_load(struct server *s, struct kiln_err *err)
{
	struct store_load_info info;
	uint64_t t0 = now_mono_ns();
	/* Agents first, so that leased jobs find their holder. The store calls
	 * on_agent for every agent before any on_job. */
	int r = store_load(s->store, load_job, load_agent, s, &info);
	if (r < 0)
		return kiln_err_set(err, r, "cannot load the state from the store: %s",
				    strerror(-r));
	s->next_job_id = info.max_job_id + 1;
	s->next_fence = MAX(info.max_fence, info.fence_reserved) + 1;
	s->next_agent_id = info.max_agent_id + 1;
	/* Reserve the first block of fences before any lease is handed out. */
	struct store_mut m = {.kind = STORE_FENCE_RESERVE,
			      .fence_reserve = {s->next_fence + FENCE_BLOCK - 1}};
	r = store_apply_wait(s->store, &m);
	if (r < 0)
		return kiln_err_set(err, r, "cannot reserve fences in the store: %s", strerror(-r));
	s->fence_durable = s->fence_target = m.fence_reserve.upto;
	log_info("state loaded jobs=%zu agents=%zu ms=%" PRIu64, info.n_jobs, info.n_agents,
		 (uint64_t)((now_mono_ns() - t0) / NSEC_PER_MSEC));
	return 0;
}

void sched_free(struct server *s)
{
	for (size_t i = 0; i < s->jobs_tab_size; i++) {
		struct sjob *j = s->jobs_tab[i], *next;
		for (; j; j = next) {
			next = j->hnext;
			if (j->log)
				joblog_close(s, j->log);
			free(j->name);
			free(j);
		}
	}
	free(s->jobs_tab);
	s->jobs_tab = NULL;
	while (s->classes) {
		struct sclass *c = s->classes;
		s->classes = c->next;
		class_free(c);
	}
	while (s->agents) {
		struct sagent *a = s->agents;
		s->agents = a->next;
		free(a->name);
		proto_strv_free(a->labels, a->n_labels);
		free(a->jobs);
		free(a->revoked);
		free(a);
	}
}
