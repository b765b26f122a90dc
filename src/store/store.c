/*
 * store: backend selection and the group-commit writer.
 *
 * One writer thread owns the backend's write connection. Requests append
 * mutations to a FIFO; the writer takes everything queued, applies it in one
 * transaction, commits (one fsync for the whole batch) and only then calls
 * each mutation's `done`. While it commits, new mutations queue up and form
 * the next batch, so the batch size grows with load and the cost of an fsync
 * is shared by every request waiting on it. FIFO order is kept: a mutation
 * is applied after every mutation queued before it.
 */
#include "store-internal.h"

#include <signal.h>
#include <stdatomic.h>

void store_options_init(struct store_options *o)
{
	*o = (struct store_options){.durable = true};
}

KILN_NORETURN static void store_fatal(int r, const char *what)
{
	/* Never retry a failed commit or fsync: the page cache may have dropped
	 * the data. Stop before answering anything else (fail-stop). */
	log_error("store failure, stopping the server to keep acknowledged work safe what=%s "
		  "error=\"%s\"",
		  what, strerror(-r));
	abort();
}

static void *writer_main(void *p)
{
	struct store *s = p;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);

	pthread_mutex_lock(&s->lock);
	for (;;) {
		while (!s->head && !s->stopping)
			pthread_cond_wait(&s->cond, &s->lock);
		if (!s->head)
			break;
		struct store_mut *batch = s->head;
		s->head = NULL;
		s->tail = &s->head;
		pthread_mutex_unlock(&s->lock);

		int r = s->ops->begin(s);
		if (r < 0)
			store_fatal(r, "begin");
		uint64_t n = 0, last_seq = 0;
		for (struct store_mut *m = batch; m; m = m->next, n++) {
			last_seq = m->seq;
			r = s->ops->apply(s, m);
			if (r < 0 && r != -ESTALE && r != -ENOENT && r != -EEXIST)
				store_fatal(r, "apply");
			m->result = r;
		}
		uint64_t t0 = now_mono_ns();
		r = s->ops->commit(s);
		if (r < 0)
			store_fatal(r, "commit");
		uint64_t dt = now_mono_ns() - t0;
		atomic_store(&s->committed_seq, last_seq);

		pthread_mutex_lock(&s->lock);
		s->stats.batches++;
		s->stats.mutations += n;
		s->stats.commit_ns += dt;
		if (n > s->stats.max_batch)
			s->stats.max_batch = n;
		pthread_mutex_unlock(&s->lock);

		for (struct store_mut *m = batch, *next; m; m = next) {
			next = m->next;
			m->next = NULL;
			m->done(m, m->userdata);
		}
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

int store_open(const char *url, const struct store_options *o, struct store **ret,
	       struct kiln_err *err)
{
	struct store_options def;
	if (!o) {
		store_options_init(&def);
		o = &def;
	}
	struct store *s = NULL;
	int r;
	if (startswith(url, "sqlite:"))
		r = store_sqlite_open(url + strlen("sqlite:"), o, &s, err);
	else if (strstr(url, "://"))
		return kiln_err_set(err, -EPROTONOSUPPORT,
				    "store '%s': unsupported backend (this build has sqlite:PATH)",
				    url);
	else
		r = store_sqlite_open(url, o, &s, err);
	if (r < 0)
		return r;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	s->head = NULL;
	s->tail = &s->head;
	r = -pthread_create(&s->thread, NULL, writer_main, s);
	if (r < 0) {
		s->ops->close(s);
		return kiln_err_set(err, r, "store: cannot start the writer thread: %s",
				    strerror(-r));
	}
	s->running = true;
	*ret = s;
	return 0;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	if (s->running) {
		pthread_mutex_lock(&s->lock);
		s->stopping = true;
		pthread_cond_signal(&s->cond);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->thread, NULL);
	}
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	s->ops->close(s);
}

const char *store_backend(const struct store *s) { return s->ops->name; }

uint64_t store_committed_seq(struct store *s) { return atomic_load(&s->committed_seq); }

uint64_t store_submit(struct store *s, struct store_mut *m)
{
	m->next = NULL;
	pthread_mutex_lock(&s->lock);
	uint64_t seq = m->seq = ++s->next_seq;
	bool wake = !s->head;
	*s->tail = m;
	s->tail = &m->next;
	if (wake)
		pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return seq;
}

struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
};

static void wait_done(struct store_mut *m, void *ud)
{
	(void)m;
	struct waiter *w = ud;
	pthread_mutex_lock(&w->lock);
	w->done = true;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

int store_apply_wait(struct store *s, struct store_mut *m)
{
	struct waiter w = {.done = false};
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cond, NULL);
	m->done = wait_done;
	/* w outlives the mutation: this function waits for its done. */
	// cppcheck-suppress autoVariables
	m->userdata = &w;
	store_submit(s, m);
	pthread_mutex_lock(&w.lock);
	while (!w.done)
		pthread_cond_wait(&w.cond, &w.lock);
	pthread_mutex_unlock(&w.lock);
	pthread_mutex_destroy(&w.lock);
	pthread_cond_destroy(&w.cond);
	return m->result;
}

void store_get_stats(struct store *s, struct store_stats *ret)
{
	pthread_mutex_lock(&s->lock);
	*ret = s->stats;
	pthread_mutex_unlock(&s->lock);
	if (s->ops->stats)
		s->ops->stats(s, ret);
}

int store_load(struct store *s, void (*on_job)(void *ud, const struct proto_job *j),
	       void (*on_agent)(void *ud, const struct proto_agent *a), void *ud,
	       struct store_load_info *ret)
{
	return s->ops->load(s, on_job, on_agent, ud, ret);
}

int store_job_spec(struct store *s, int64_t id, char **ret)
{
	return s->ops->job_spec(s, id, ret);
}

int store_job_get(struct store *s, int64_t id, unsigned flags, struct proto_job *ret)
{
	return s->ops->job_get(s, id, flags, ret);
}

int store_job_list(struct store *s, const struct store_job_filter *f, struct proto_job **ret,
		   size_t *ret_n)
{
	return s->ops->job_list(s, f, ret, ret_n);
}

int store_artifact_list(struct store *s, int64_t job_id, struct proto_artifact **ret,
			size_t *ret_n)
{
	return s->ops->artifact_list(s, job_id, ret, ret_n);
}

int store_artifact_get(struct store *s, int64_t job_id, const char *path,
		       struct proto_artifact *ret)
{
	return s->ops->artifact_get(s, job_id, path, ret);
}

int store_blob_referenced(struct store *s, const char *sha256)
{
	return s->ops->blob_referenced(s, sha256);
}

int store_usage(struct store *s, const struct store_window *w, struct store_usage_row **ret,
		size_t *ret_n)
{
	return s->ops->usage(s, w, ret, ret_n);
}

void store_usage_rows_free(struct store_usage_row *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i].org);
	free(v);
}

int store_attempts_scan(struct store *s, const struct store_window *w,
			int (*fn)(void *ud, const struct store_attempt_row *row), void *ud)
{
	return s->ops->attempts_scan(s, w, fn, ud);
}

int store_orgs_list(struct store *s, struct proto_org **ret, size_t *ret_n)
{
	return s->ops->orgs_list(s, ret, ret_n);
}

int store_tokens_list(struct store *s, int64_t org_id, struct proto_token **ret, size_t *ret_n)
{
	return s->ops->tokens_list(s, org_id, ret, ret_n);
}

int store_token_find(struct store *s, const char *hash, struct proto_token *ret)
{
	return s->ops->token_find(s, hash, ret);
}

int store_keys_list(struct store *s, struct store_key **ret, size_t *ret_n)
{
	return s->ops->keys_list(s, ret, ret_n);
}

int store_secrets_list(struct store *s, int64_t org_id, bool with_values,
		       struct store_secret **ret, size_t *ret_n)
{
	return s->ops->secrets_list(s, org_id, with_values, ret, ret_n);
}

int store_secret_get(struct store *s, int64_t org_id, const char *name, struct store_secret *ret)
{
	return s->ops->secret_get(s, org_id, name, ret);
}

int store_secret_max_version(struct store *s, int64_t *ret)
{
	return s->ops->secret_max_version(s, ret);
}

int store_audit_list(struct store *s, const struct store_audit_filter *f,
		     struct proto_audit **ret, size_t *ret_n)
{
	return s->ops->audit_list(s, f, ret, ret_n);
}

int store_audit_verify(struct store *s, int64_t *ret_n, int64_t *ret_bad_seq)
{
	return s->ops->audit_verify(s, ret_n, ret_bad_seq);
}

int store_webhook_seen(struct store *s, int64_t org_id, const char *delivery,
		       int64_t gh_job_id, int64_t run_attempt, const char *action)
{
	return s->ops->webhook_seen(s, org_id, delivery, gh_job_id, run_attempt, action);
}

int store_webhook_deliveries(struct store *s, int64_t org_id, size_t limit,
			     struct store_delivery **ret, size_t *ret_n)
{
	return s->ops->webhook_deliveries(s, org_id, limit, ret, ret_n);
}

int store_webhook_event_job(struct store *s, int64_t org_id, int64_t gh_job_id,
			    int64_t run_attempt, const char *action, int64_t *ret_job_id)
{
	return s->ops->webhook_event_job(s, org_id, gh_job_id, run_attempt, action, ret_job_id);
}
