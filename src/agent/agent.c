/*
 * agent: life cycle, registration and the lease loop.
 *
 * agent_new() takes the state directory (flock on <state>/lock: one agent
 * per directory), removes what a previous agent left there (sandboxes,
 * their cgroups and mounts, job directories), probes the host and the
 * sandbox and builds the labels and capacity. agent_run() registers, starts
 * the heartbeat thread, releases every lease the server still thinks this
 * agent holds (a previous run crashed: its jobs go back to the queue at
 * once), and then long-polls for leases while a slot is free.
 *
 * Stopping: agent_stop(drain) stops leasing; running jobs get the drain
 * timeout to finish, then they are killed and released. agent_stop(!drain)
 * kills and releases at once. Either way agent_run() returns after every
 * job thread has ended and the server has been told.
 */
#include "agent-internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <sys/file.h>
#include <sys/stat.h>

#define LEASE_WAIT_DEFAULT_MS 30000
#define DRAIN_TIMEOUT_DEFAULT_MS (10 * 60 * 1000)

void agent_config_init(struct agent_config *c)
{
	memset(c, 0, sizeof(*c));
	c->drain_timeout_ms = DRAIN_TIMEOUT_DEFAULT_MS;
	c->lease_wait_ms = LEASE_WAIT_DEFAULT_MS;
	c->warm = 1;
}

uint64_t backoff_ms(unsigned attempt)
{
	uint64_t ms = 100;
	for (unsigned i = 0; i < attempt && ms < 2000; i++)
		ms *= 2;
	return MIN(ms, 2000);
}

static void cond_wait_ms(struct agent *a, uint64_t ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)(ms / 1000);
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&a->cond, &a->lock, &ts);
}

bool agent_sleep(struct agent *a, uint64_t ms)
{
	pthread_mutex_lock(&a->lock);
	if (!a->stopping)
		cond_wait_ms(a, ms);
	bool stop = a->stopping;
	pthread_mutex_unlock(&a->lock);
	return stop;
}

void agent_sleep_hb(struct agent *a, uint64_t ms)
{
	pthread_mutex_lock(&a->lock);
	if (!a->run_done)
		cond_wait_ms(a, ms);
	pthread_mutex_unlock(&a->lock);
}

/* ---- labels and capacity ---------------------------------------------------- */

static void add_label(struct agent *a, char *label)
{
	for (char *p = label; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	for (size_t i = 0; i < a->n_labels; i++)
		if (streq(a->labels[i], label)) {
			free(label);
			return;
		}
	a->labels = xgrow(a->labels, &a->cap_labels, a->n_labels + 1, sizeof(char *));
	a->labels[a->n_labels++] = label;
}

static int build_labels(struct agent *a, struct kiln_err *err)
{
	host_labels(a->host, &a->labels, &a->n_labels, &a->cap_labels);
	add_label(a, xstrdup("sandbox"));
	add_label(a, xstrdup("executor:sandbox"));
	if (a->probe.rootless)
		add_label(a, xstrdup("rootless"));
	switch (a->probe.layout) {
	case SANDBOX_CGROUP_V1: add_label(a, xstrdup("cgroup-v1")); break;
	case SANDBOX_CGROUP_V2: add_label(a, xstrdup("cgroup-v2")); break;
	case SANDBOX_CGROUP_HYBRID: add_label(a, xstrdup("cgroup-hybrid")); break;
	case SANDBOX_CGROUP_NONE: break;
	}
	for (size_t i = 0; i < a->n_images; i++) {
		_cleanup_free_ char *l = xasprintf("image:%s", a->images[i].name);
		if (!spec_label_valid(l))
			return kiln_err_set(err, -EINVAL,
					    "--image '%s': the name cannot be a label (image:%s); use "
					    "letters, digits and - _ . / + : @",
					    a->images[i].name, a->images[i].name);
		add_label(a, TAKE_PTR(l));
	}
	for (size_t i = 0; i < a->cfg.n_labels; i++) {
		const char *l = a->cfg.labels[i];
		struct spec_label sl;
		struct kiln_err lerr = {0};
		if (spec_label_parse(l, &sl, &lerr) < 0)
			return kiln_err_set(err, -EINVAL, "--labels: %s", lerr.msg);
		spec_label_release(&sl);
		add_label(a, xstrdup(l));
	}
	return 0;
}

void agent_labels(const struct agent *a, char *const **ret, size_t *ret_n)
{
	*ret = a->labels;
	*ret_n = a->n_labels;
}

/* ---- creation ------------------------------------------------------------------ */

static int take_lock(struct agent *a, struct kiln_err *err)
{
	_cleanup_free_ char *p = path_join(a->state_dir, "lock");
	a->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (a->lock_fd < 0)
		return kiln_err_set(err, -errno, "cannot open '%s': %s", p, strerror(errno));
	if (flock(a->lock_fd, LOCK_EX | LOCK_NB) < 0)
		return kiln_err_set(err, errno == EWOULDBLOCK ? -EBUSY : -errno,
				    "state directory '%s' is in use by another kiln agent",
				    a->state_dir);
	return 0;
}

/* Removes what a previous agent left: sandboxes first (their processes hold
 * the job directories' mounts), then the job directories. */
static int cleanup_leftovers(struct agent *a, struct kiln_err *err)
{
	int n = sandbox_cleanup_leftovers(a->sandbox_dir, NULL);
	if (n < 0)
		return kiln_err_set(err, n, "cannot clean up old sandboxes in '%s': %s",
				    a->sandbox_dir, strerror(-n));
	if (n > 0)
		log_warn("removed sandboxes a previous agent left n=%d dir=%s", n, a->sandbox_dir);
	int r = rm_rf(a->jobs_dir);
	if (r < 0)
		return kiln_err_set(err, r, "cannot remove old job directories in '%s': %s",
				    a->jobs_dir, strerror(-r));
	r = mkdir_p(a->jobs_dir, 0700);
	if (r < 0)
		return kiln_err_set(err, r, "cannot create '%s': %s", a->jobs_dir, strerror(-r));
	return 0;
}

static int copy_config(struct agent *a, const struct agent_config *c, struct kiln_err *err)
{
	a->cfg = *c;
	if (!c->server || !*c->server)
		return kiln_err_set(err, -EINVAL, "a server address is required (--server URL)");
	if (!c->state_dir || !*c->state_dir)
		return kiln_err_set(err, -EINVAL, "a state directory is required");
	a->base_url = http_base_url(c->server);
	a->token = c->token ? xstrdup(c->token) : NULL;
	a->state_dir = xstrdup(c->state_dir);
	a->jobs_dir = path_join(a->state_dir, "jobs");
	a->sandbox_dir = path_join(a->state_dir, "sandbox");
	a->cgroup_parent = c->cgroup_parent ? xstrdup(c->cgroup_parent) : NULL;
	a->init_path = c->init_path ? xstrdup(c->init_path) : NULL;
	a->seed_dir = c->seed_dir ? xstrdup(c->seed_dir) : NULL;
	if (c->n_seed_files) {
		a->seed_files = xcalloc(c->n_seed_files + 1, sizeof(char *));
		for (size_t i = 0; i < c->n_seed_files; i++)
			a->seed_files[i] = xstrdup(c->seed_files[i]);
		a->n_seed_files = c->n_seed_files;
	}
	a->images = xcalloc(c->n_images + 1, sizeof(*a->images));
	for (size_t i = 0; i < c->n_images; i++) {
		const struct agent_image *im = &c->images[i];
		struct stat st;
		if (!im->name || !*im->name || !im->dir)
			return kiln_err_set(err, -EINVAL, "--image: expected NAME=DIR");
		if (stat(im->dir, &st) < 0 || !S_ISDIR(st.st_mode))
			return kiln_err_set(err, -ENOENT,
					    "--image %s=%s: '%s' is not a directory (a root "
					    "filesystem, e.g. made by debootstrap)",
					    im->name, im->dir, im->dir);
		a->images[i].name = xstrdup(im->name);
		a->images[i].dir = realpath(im->dir, NULL);
		if (!a->images[i].dir)
			return kiln_err_set(err, -errno, "--image %s: %s", im->dir, strerror(errno));
		a->n_images = i + 1;
	}
	if (c->drain_timeout_ms == 0)
		a->cfg.drain_timeout_ms = DRAIN_TIMEOUT_DEFAULT_MS;
	if (c->lease_wait_ms == 0)
		a->cfg.lease_wait_ms = LEASE_WAIT_DEFAULT_MS;
	return 0;
}

static void probe(struct agent *a)
{
	a->host = xcalloc(1, sizeof(*a->host));
	if (host_probe(a->host) < 0)
		snprintf(a->host->os, sizeof(a->host->os), "linux");
	if (!a->host->nvml_present)
		log_info("no GPUs reported reason=\"%s\"", a->host->nvml_error);
	else
		log_info("GPUs found n=%u driver=%s cuda=%d.%d", a->host->n_gpus,
			 a->host->driver_version, a->host->cuda_major, a->host->cuda_minor);
	struct sandbox_config sc = {
		.state_dir = a->sandbox_dir,
		.cgroup_parent = a->cgroup_parent,
		.init_path = a->init_path,
	};
	sandbox_probe(&sc, &a->probe);
}

int agent_new(const struct agent_config *c, struct agent **ret, struct kiln_err *err)
{
	struct agent *a = xcalloc(1, sizeof(*a));
	a->lock_fd = -1;
	pthread_mutex_init(&a->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a->cond, &ca);
	pthread_condattr_destroy(&ca);
	int r = copy_config(a, c, err);
	if (r >= 0) {
		r = mkdir_p(a->state_dir, 0700);
		if (r < 0)
			kiln_err_set(err, r, "cannot create '%s': %s", a->state_dir, strerror(-r));
	}
	if (r >= 0)
		r = take_lock(a, err);
	if (r >= 0)
		r = cleanup_leftovers(a, err);
	if (r >= 0) {
		probe(a);
		if (!a->probe.userns)
			r = kiln_err_set(err, -EOPNOTSUPP, "this host cannot run sandboxes: %s",
					 a->probe.error);
	}
	if (r >= 0)
		r = build_labels(a, err);
	if (r < 0) {
		agent_free(a);
		return r;
	}
	a->name = xstrdup(c->name && *c->name ? c->name : a->host->hostname);
	a->lease_http = http_new(a->base_url, a->token);
	a->hb_http = http_new(a->base_url, a->token);
	a->capacity = (struct proto_capacity){
		.slots = c->slots ? c->slots : (int64_t)MAX(a->host->cpus, 1),
		.cpus = a->host->cpus,
		.memory = a->host->memory,
		.gpus = a->host->n_gpus,
	};
	agent_obs_init(a, c->metrics);
	if (c->metrics_listen) {
		r = agent_obs_listen(a, c->metrics_listen, err);
		if (r < 0) {
			agent_free(a);
			return r;
		}
	}
	*ret = a;
	return 0;
}

void agent_free(struct agent *a)
{
	if (!a)
		return;
	agent_obs_free(a);
	while (a->jobs) {
		struct job *j = a->jobs;
		a->jobs = j->next;
		job_free(j);
	}
	http_free(a->lease_http);
	http_free(a->hb_http);
	for (size_t i = 0; i < a->n_labels; i++)
		free(a->labels[i]);
	free(a->labels);
	for (size_t i = 0; i < a->n_images; i++) {
		free(a->images[i].name);
		free(a->images[i].dir);
	}
	free(a->images);
	for (size_t i = 0; i < a->n_seed_files; i++)
		free(a->seed_files[i]);
	free(a->seed_files);
	if (a->lock_fd >= 0)
		close(a->lock_fd);
	free(a->host);
	free(a->state_dir);
	free(a->jobs_dir);
	free(a->sandbox_dir);
	free(a->base_url);
	free(a->token);
	free(a->name);
	free(a->cgroup_parent);
	free(a->init_path);
	free(a->seed_dir);
	pthread_mutex_destroy(&a->lock);
	pthread_cond_destroy(&a->cond);
	free(a);
}

/* ---- registration ----------------------------------------------------------- */

int agent_register(struct agent *a, struct http *h, struct kiln_err *err)
{
	json_t *labels = json_array();
	for (size_t i = 0; i < a->n_labels; i++)
		json_array_append_new(labels, json_string(a->labels[i]));
	json_t *body = json_pack("{s:s,s:o,s:o}", "name", a->name, "labels", labels, "capacity",
				 proto_capacity_to_json(&a->capacity));
	int r = 0;
	for (unsigned attempt = 0;; attempt++) {
		struct http_reply rep;
		r = http_json(h, "POST", "/v1/agents", body, 10000, &rep, err);
		if (r == 0 && (rep.status == 200 || rep.status == 201)) {
			json_t *id = json_object_get(rep.json, "id");
			json_t *ttl = json_object_get(rep.json, "lease_ttl_ms");
			json_t *hb = json_object_get(rep.json, "heartbeat_ms");
			pthread_mutex_lock(&a->lock);
			a->id = json_is_integer(id) ? json_integer_value(id) : 0;
			a->ttl_ms = json_is_integer(ttl) ? (uint64_t)json_integer_value(ttl) : 30000;
			a->heartbeat_ms = json_is_integer(hb) ? (uint64_t)json_integer_value(hb)
							      : a->ttl_ms / 3;
			pthread_mutex_unlock(&a->lock);
			http_reply_release(&rep);
			if (a->id <= 0) {
				r = kiln_err_set(err, -EPROTO, "the server's answer has no agent id");
				break;
			}
			log_info("agent registered agent=%s id=%" PRId64 " server=%s slots=%" PRId64
				 " lease_ttl_ms=%" PRIu64,
				 a->name, a->id, a->base_url, a->capacity.slots, a->ttl_ms);
			break;
		}
		if (r == 0) {
			r = kiln_err_set(err, rep.status >= 500 ? -EAGAIN : -EINVAL,
					 "the server refused the registration (HTTP %ld): %s",
					 rep.status, http_error_message(&rep));
			http_reply_release(&rep);
			if (rep.status < 500 && rep.status != 0)
				break; /* our request is wrong: retrying will not help */
		}
		if (r == -ECANCELED)
			break;
		if (attempt == 0 || attempt % 20 == 0)
			log_warn("cannot register, retrying server=%s error=\"%s\"", a->base_url,
				 err->msg);
		if (agent_sleep(a, backoff_ms(attempt))) {
			r = kiln_err_set(err, -ECANCELED, "stopped before registering");
			break;
		}
	}
	json_decref(body);
	return r;
}

/* ---- releasing leases --------------------------------------------------------- */

/*
 * Hands leases back: jobs (NULL: every lease the server thinks we hold).
 * stop_leasing: we take no more work, so the server answers our parked
 * lease long-poll at once (we cut it off; a job granted into it would wait
 * for its lease to expire).
 */
static void release(struct agent *a, struct http *h, json_t *jobs, const char *reason,
		    bool stop_leasing)
{
	_cleanup_free_ char *path = xasprintf("/v1/agents/%" PRId64 "/release", a->id);
	json_t *body = json_pack("{s:s,s:b}", "reason", reason, "stop_leasing", stop_leasing);
	if (jobs)
		json_object_set(body, "jobs", jobs);
	for (unsigned attempt = 0; attempt < 5; attempt++) {
		struct http_reply rep;
		struct kiln_err err = {0};
		int r = http_json(h, "POST", path, body, 10000, &rep, &err);
		if (r == 0) {
			if (rep.status != 200)
				log_warn("release refused status=%ld error=\"%s\"", rep.status,
					 http_error_message(&rep));
			else if (json_array_size(json_object_get(rep.json, "released")))
				log_info("leases released n=%zu reason=\"%s\"",
					 json_array_size(json_object_get(rep.json, "released")),
					 reason);
			http_reply_release(&rep);
			break;
		}
		struct timespec ts = {0, (long)backoff_ms(attempt) * 1000000L};
		nanosleep(&ts, NULL);
	}
	json_decref(body);
}

void agent_release_job(struct agent *a, struct http *h, struct job *j, const char *reason)
{
	json_t *jobs = json_pack("[{s:I,s:I}]", "id", (json_int_t)j->id, "fence",
				 (json_int_t)j->fence);
	release(a, h, jobs, reason, false);
	json_decref(jobs);
}

/* ---- the lease loop ------------------------------------------------------------- */

static void reap(struct agent *a)
{
	for (struct job **p = &a->jobs; *p;) {
		struct job *j = *p;
		if (!atomic_load(&j->done)) {
			p = &j->next;
			continue;
		}
		*p = j->next;
		a->n_jobs--;
		pthread_mutex_unlock(&a->lock);
		pthread_join(j->runner, NULL);
		job_free(j);
		pthread_mutex_lock(&a->lock);
		p = &a->jobs; /* the list may have changed meanwhile */
	}
}

static void start_job(struct agent *a, json_t *lease)
{
	struct kiln_err err = {0};
	struct job *j = job_new(a, lease, &err);
	if (!j) {
		log_error("unusable lease error=\"%s\"", err.msg);
		return;
	}
	log_info("job leased job=%" PRId64 " fence=%" PRId64 " attempt=%" PRId64 " name=\"%s\"",
		 j->id, j->fence, j->attempt, j->name);
	pthread_mutex_lock(&a->lock);
	j->next = a->jobs;
	a->jobs = j;
	a->n_jobs++;
	pthread_mutex_unlock(&a->lock);
	int r = job_start(j);
	log_debug("job set up job=%" PRId64 " since_lease_us=%" PRIu64, j->id,
		  (uint64_t)((now_mono_ns() - j->leased_ns) / NSEC_PER_USEC));
	if (r >= 0)
		agent_obs_job_started(a, now_mono_ns() - j->leased_ns);
	if (r < 0) {
		/* Not released (it would come straight back to us): failed, with why. */
		log_error("cannot start a job job=%" PRId64 " error=\"%s\"", j->id, strerror(-r));
		job_fail_unstarted(j, a->lease_http, r);
		pthread_mutex_lock(&a->lock);
		for (struct job **p = &a->jobs; *p; p = &(*p)->next)
			if (*p == j) {
				*p = j->next;
				break;
			}
		a->n_jobs--;
		pthread_mutex_unlock(&a->lock);
		rm_rf(j->dir);
		job_free(j);
	}
}

/* One lease long-poll. Returns < 0 on a transport failure. */
static int lease_once(struct agent *a)
{
	_cleanup_free_ char *path = xasprintf("/v1/agents/%" PRId64 "/lease", a->id);
	json_t *body = json_pack("{s:I}", "wait_ms", (json_int_t)a->cfg.lease_wait_ms);
	struct http_reply rep;
	struct kiln_err err = {0};
	int r = http_json(a->lease_http, "POST", path, body,
			  (long)(a->cfg.lease_wait_ms + 15000), &rep, &err);
	json_decref(body);
	if (r < 0) {
		if (r != -ECANCELED) {
			log_debug("lease request failed error=\"%s\"", err.msg);
			agent_obs_poll(a, "error");
		}
		return r;
	}
	agent_obs_poll(a, rep.status == 200 && rep.json ? "job"
			  : rep.status == 204		? "empty"
							: "error");
	if (rep.status == 200 && rep.json)
		start_job(a, rep.json);
	else if (rep.status == 404)
		r = agent_register(a, a->lease_http, &err);
	else if (rep.status != 204) {
		log_warn("lease refused status=%ld error=\"%s\"", rep.status,
			 http_error_message(&rep));
		r = -EIO;
	}
	http_reply_release(&rep);
	return r;
}

static void lease_loop(struct agent *a)
{
	unsigned failures = 0;
	pthread_mutex_lock(&a->lock);
	while (!a->stopping) {
		reap(a);
		if (a->n_jobs >= (unsigned)a->capacity.slots) {
			cond_wait_ms(a, 1000);
			continue;
		}
		pthread_mutex_unlock(&a->lock);
		int r = lease_once(a);
		if (r < 0 && r != -ECANCELED) {
			if (failures++ == 0)
				log_warn("cannot reach the server, retrying server=%s", a->base_url);
			agent_sleep(a, backoff_ms(failures));
		} else if (r >= 0) {
			if (failures)
				log_info("server reachable again server=%s", a->base_url);
			failures = 0;
		}
		pthread_mutex_lock(&a->lock);
	}
	pthread_mutex_unlock(&a->lock);
}

/* After a stop: drain (or not), then kill what is left and wait for it. */
static void wind_down(struct agent *a)
{
	pthread_mutex_lock(&a->lock);
	reap(a);
	if (a->drain && !a->kill_now && a->n_jobs) {
		char t[32];
		format_duration_ms(a->cfg.drain_timeout_ms, t);
		log_info("draining: waiting for running jobs n=%u timeout=%s", a->n_jobs, t);
	}
	a->drain_deadline_ns = now_mono_ns() + a->cfg.drain_timeout_ms * NSEC_PER_MSEC;
	for (;;) {
		reap(a);
		if (!a->jobs)
			break;
		if (a->kill_now || now_mono_ns() >= a->drain_deadline_ns) {
			for (struct job *j = a->jobs; j; j = j->next)
				if (!atomic_load(&j->done))
					job_request_stop(j, STOP_RELEASE, "the agent is stopping");
		}
		cond_wait_ms(a, 200);
	}
	pthread_mutex_unlock(&a->lock);
}

int agent_run(struct agent *a, struct kiln_err *err)
{
	int r = agent_register(a, a->lease_http, err);
	if (r == -ECANCELED)
		return 0;
	if (r < 0)
		return r;
	/* Leases a previous run of this agent held are over: queue them again
	 * (and drop a long-poll it left parked). */
	release(a, a->lease_http, NULL, "the agent restarted", true);
	if (a->cfg.on_ready)
		a->cfg.on_ready(a->cfg.ud, a->id);
	r = -pthread_create(&a->hb_thread, NULL, heartbeat_main, a);
	if (r < 0)
		return kiln_err_set(err, r, "cannot start the heartbeat thread: %s", strerror(-r));
	a->hb_started = true;
	/* Warm sandboxes, first of the commonest shape: host root, no network,
	 * no limits. */
	struct sandbox_config initial = {.net = SANDBOX_NET_NONE, .state_dir = a->sandbox_dir,
					 .cgroup_parent = a->cgroup_parent,
					 .init_path = a->init_path};
	r = pool_start(a, &initial);
	if (r < 0)
		log_warn("no warm sandboxes error=\"%s\"", strerror(-r));
	lease_loop(a);
	/* The last long-poll was cut off: have the server drop it, so that no
	 * job is granted into it while running jobs finish. */
	http_reset_abort(a->lease_http);
	json_t *none = json_array();
	release(a, a->lease_http, none, "the agent is stopping", true);
	json_decref(none);
	wind_down(a);
	/* The heartbeat thread ends with the answer to its parked request,
	 * which the release below brings at once. */
	pthread_mutex_lock(&a->lock);
	a->run_done = true;
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	/* A lease granted while the long-poll was being cut off is handed back
	 * (the server does not count an attempt the agent never started). */
	release(a, a->lease_http, NULL, "the agent stopped", true);
	http_abort(a->hb_http);
	pthread_join(a->hb_thread, NULL);
	a->hb_started = false;
	pool_stop(a);
	log_info("agent stopped agent=%s", a->name);
	return 0;
}

void agent_stop(struct agent *a, bool drain)
{
	pthread_mutex_lock(&a->lock);
	if (a->stopping && !drain)
		a->kill_now = true;
	if (!a->stopping) {
		a->stopping = true;
		a->drain = drain;
		a->kill_now = !drain;
	}
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	if (a->lease_http)
		http_abort(a->lease_http);
}
