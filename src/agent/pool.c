/*
 * pool: warm sandboxes, created ahead of the jobs that will use them.
 *
 * Creating a sandbox (namespaces, overlay root, cgroup, kiln-init) is most
 * of what it costs to start a job; done ahead of time, a job's first step
 * costs one sandbox_exec. A sandbox's shape — root filesystem, network,
 * limits — is fixed when it is created, so the pool keeps sandboxes of one
 * shape: that of the last job (at start: the host root, no network, no
 * limits). A job of that shape takes one; a pool thread makes the next. A
 * job of another shape creates its own, and the pool switches to its shape.
 * The next one is made once the job that took one is past its start
 * (pool_release: its first step ended, or ran POOL_HOLD_MS): made at the
 * same time, it delayed that start by milliseconds (two cores; clone,
 * mounts and cgroups contend in the kernel with the job's fork and exec),
 * and the job's start is what the pool is for.
 *
 * A warm sandbox has never run anything: no job sees another's processes or
 * files. Each has its own directory <state>/jobs/warm-N/ holding its
 * workspace and scripts, which the job that takes it then owns.
 */
#include "agent-internal.h"

#include <inttypes.h>
#include <sys/stat.h>

/* The longest a job waits for the warm sandbox being made (pool_take). */
#define POOL_WAIT_S 10

struct warm {
	struct sandbox *sb;
	char *key;
	char *dir, *workspace, *scripts;
};

static void warm_free(struct warm *w, bool destroy)
{
	if (!w)
		return;
	if (destroy && w->sb)
		(void)sandbox_destroy(w->sb, NULL);
	if (destroy && w->dir)
		(void)rm_rf(w->dir);
	free(w->key);
	free(w->dir);
	free(w->workspace);
	free(w->scripts);
	free(w);
}

char *pool_key(const struct sandbox_config *c)
{
	return xasprintf("%s|%d|%" PRIu32 "|%" PRIu64 "|%" PRIu32 "|%" PRIu64,
			 c->rootfs ? c->rootfs : "", (int)c->net, c->limits.cpu_millis,
			 c->limits.memory_bytes, c->limits.pids, c->limits.disk_bytes);
}

/* Makes one warm sandbox of the wanted shape (without the lock). */
static struct warm *make_one(struct agent *a, const struct sandbox_config *want, const char *key)
{
	struct warm *w = xcalloc(1, sizeof(*w));
	pthread_mutex_lock(&a->lock);
	uint64_t seq = ++a->warm_seq;
	pthread_mutex_unlock(&a->lock);
	w->key = xstrdup(key);
	w->dir = xasprintf("%s/warm-%" PRIu64, a->jobs_dir, seq);
	w->workspace = path_join(w->dir, "workspace");
	w->scripts = path_join(w->dir, "scripts");
	int r = mkdir_p(w->workspace, 0755);
	if (r >= 0 && mkdir(w->scripts, 0755) < 0)
		r = -errno;
	if (r >= 0 && chmod(w->dir, 0700) < 0)
		r = -errno;
	struct sandbox_config c = *want;
	struct sandbox_bind bind = {.src = w->scripts, .dst = AGENT_SCRIPTS_DIR, .readonly = true};
	c.workspace = w->workspace;
	c.binds = &bind;
	c.n_binds = 1;
	struct kiln_err err = {0};
	if (r >= 0)
		r = sandbox_create(&c, &w->sb, &err);
	if (r < 0) {
		log_warn("cannot make a warm sandbox error=\"%s\"", err.msg[0] ? err.msg : strerror(-r));
		warm_free(w, true);
		return NULL;
	}
	return w;
}

static void *pool_main(void *p)
{
	struct agent *a = p;
	unsigned failures = 0;
	pthread_mutex_lock(&a->lock);
	for (;;) {
		while (!a->pool_stop &&
		       (a->n_warm >= a->cfg.warm || !a->want_key || a->pool_holds))
			pthread_cond_wait(&a->pool_cond, &a->lock);
		if (a->pool_stop)
			break;
		char *key = xstrdup(a->want_key);
		struct sandbox_config want = a->want_cfg;
		char *rootfs = a->want_rootfs ? xstrdup(a->want_rootfs) : NULL;
		want.rootfs = rootfs;
		a->pool_making = true;
		pthread_mutex_unlock(&a->lock);
		uint64_t t0 = now_mono_ns();
		struct warm *w = make_one(a, &want, key);
		log_debug("warm sandbox made took_us=%" PRIu64,
			  (uint64_t)((now_mono_ns() - t0) / NSEC_PER_USEC));
		pthread_mutex_lock(&a->lock);
		a->pool_making = false;
		if (w && !a->pool_stop && a->want_key && streq(a->want_key, key) &&
		    a->n_warm < a->cfg.warm) {
			a->warm_v[a->n_warm++] = w;
			w = NULL;
			failures = 0;
		} else if (!w) {
			failures++;
		}
		pthread_cond_broadcast(&a->pool_cond); /* a job may wait for it (pool_take) */
		free(key);
		free(rootfs);
		if (w) {
			pthread_mutex_unlock(&a->lock);
			warm_free(w, true);
			pthread_mutex_lock(&a->lock);
		}
		if (failures) {
			/* A shape this host cannot make: do not spin on it. */
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_sec += (time_t)MIN(failures, 30u);
			pthread_cond_timedwait(&a->pool_cond, &a->lock, &ts);
		}
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

/* Sets the wanted shape; drops warm sandboxes of another. Under a->lock;
 * returns the sandboxes to destroy (outside the lock). */
static struct warm **want_locked(struct agent *a, const struct sandbox_config *c, const char *key,
				 size_t *ret_n)
{
	*ret_n = 0;
	if (a->want_key && streq(a->want_key, key))
		return NULL;
	free(a->want_key);
	free(a->want_rootfs);
	a->want_key = xstrdup(key);
	a->want_cfg = *c;
	a->want_rootfs = c->rootfs ? xstrdup(c->rootfs) : NULL;
	a->want_cfg.rootfs = NULL;
	a->want_cfg.workspace = NULL;
	a->want_cfg.binds = NULL;
	a->want_cfg.n_binds = 0;
	struct warm **old = NULL;
	if (a->n_warm) {
		old = xcalloc(a->n_warm, sizeof(struct warm *)); // NOLINT(bugprone-sizeof-expression): an array of pointers
		for (size_t i = 0; i < a->n_warm; i++)
			old[i] = a->warm_v[i];
		*ret_n = a->n_warm;
		a->n_warm = 0;
	}
	pthread_cond_broadcast(&a->pool_cond);
	return old;
}

static void free_list(struct warm **v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		warm_free(v[i], true);
	free(v);
}

int pool_start(struct agent *a, const struct sandbox_config *initial)
{
	if (!a->cfg.warm)
		return 0;
	a->warm_v = xcalloc(a->cfg.warm, sizeof(struct warm *)); // NOLINT(bugprone-sizeof-expression): an array of pointers
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a->pool_cond, &ca);
	pthread_condattr_destroy(&ca);
	_cleanup_free_ char *key = pool_key(initial);
	size_t n;
	pthread_mutex_lock(&a->lock);
	struct warm **old = want_locked(a, initial, key, &n);
	pthread_mutex_unlock(&a->lock);
	free_list(old, n);
	int r = -pthread_create(&a->pool_thread, NULL, pool_main, a);
	if (r == 0)
		a->pool_started = true;
	return r;
}

bool pool_take(struct agent *a, const struct sandbox_config *c, struct job *j)
{
	if (!a->pool_started)
		return false;
	_cleanup_free_ char *key = pool_key(c);
	struct warm *w = NULL;
	size_t n = 0;
	pthread_mutex_lock(&a->lock);
	bool same = a->want_key && streq(a->want_key, key);
	/* One of this shape is being made: it is ready sooner than a second one
	 * made beside it on the same cores would be. */
	if (same && !a->n_warm && a->pool_making) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += POOL_WAIT_S;
		while (!a->n_warm && a->pool_making && !a->pool_stop)
			if (pthread_cond_timedwait(&a->pool_cond, &a->lock, &ts) == ETIMEDOUT)
				break;
	}
	struct warm **old = want_locked(a, c, key, &n);
	if (!old && a->n_warm) {
		w = a->warm_v[--a->n_warm];
		/* The next one is made once this job is past its start (pool_release). */
		a->pool_holds++;
		j->pool_hold = true;
	}
	pthread_mutex_unlock(&a->lock);
	free_list(old, n);
	if (!w)
		return false;
	pthread_mutex_lock(&j->lock);
	j->sb = w->sb;
	pthread_mutex_unlock(&j->lock);
	free(j->workspace);
	free(j->scripts);
	j->workspace = TAKE_PTR(w->workspace);
	j->scripts = TAKE_PTR(w->scripts);
	j->extra_dir = TAKE_PTR(w->dir);
	w->sb = NULL;
	warm_free(w, false);
	return true;
}

void pool_release(struct agent *a, struct job *j)
{
	if (!j->pool_hold)
		return;
	pthread_mutex_lock(&a->lock);
	j->pool_hold = false;
	a->pool_holds--;
	if (!a->pool_holds)
		pthread_cond_broadcast(&a->pool_cond); /* make the next one */
	pthread_mutex_unlock(&a->lock);
}

void pool_stop(struct agent *a)
{
	if (!a->pool_started)
		return;
	pthread_mutex_lock(&a->lock);
	a->pool_stop = true;
	pthread_cond_broadcast(&a->pool_cond);
	pthread_mutex_unlock(&a->lock);
	pthread_join(a->pool_thread, NULL);
	a->pool_started = false;
	for (size_t i = 0; i < a->n_warm; i++)
		warm_free(a->warm_v[i], true);
	a->n_warm = 0;
	free(a->warm_v);
	a->warm_v = NULL;
	free(a->want_key);
	free(a->want_rootfs);
	a->want_key = a->want_rootfs = NULL;
	pthread_cond_destroy(&a->pool_cond);
}
