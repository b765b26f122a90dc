/*
 * run: one job's sandbox and steps.
 *
 * One sandbox for the whole job (so a service started by one step is there
 * for the next); each step is a process started in it with sandbox_exec(),
 * with its own exit status, time and optional timeout. Every step writes
 * into the same pipe (stdout and stderr merged, in the order written, like
 * 2>&1), which the runner drains into the masker and the spool. The pipe
 * outlives the steps, so what a background process writes between steps is
 * kept too; after the sandbox is destroyed its last bytes are read to EOF.
 *
 * Log markers: kiln's own lines in a job's log start with "##[kiln] " and
 * are on a line of their own; when the job's output before a marker does not
 * end with a newline, kiln adds one. Everything else in the log is the job's
 * bytes exactly (secret values masked). Format: docs/internals/agent.md.
 */
#include "agent-internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>

#define READ_CHUNK (64u << 10)
#define PIPE_SIZE (1 << 20)
/* How long the pool waits for a job's first step before making the next
 * sandbox anyway (pool.c): most short steps are over by then. */
#define POOL_HOLD_MS 50

struct step_result {
	int status;  /* shell-style: exit code or 128 + signal; -1: did not start */
	bool failed; /* status != 0 or did not start */
	bool timed_out;
	char *error; /* why it did not start */
	uint64_t wall_ns;
};

struct run {
	struct job *j;
	int pipe_r, pipe_w;
	struct mask *mask;
	struct buf masked;
	char *chunk;
	uint64_t deadline_ns; /* the job's timeout, monotonic */
	uint64_t hold_until_ns; /* pool_release() then, if the step still runs */
	uint64_t started_ns;
};

/* Reads what the pipe holds now (until EAGAIN), or to EOF when until_eof. */
static void drain_pipe(struct run *r, bool until_eof)
{
	for (;;) {
		ssize_t n = read(r->pipe_r, r->chunk, READ_CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN && until_eof) {
			struct pollfd p = {.fd = r->pipe_r, .events = POLLIN};
			/* Bounded: every writer is dead once the sandbox is gone. */
			if (poll(&p, 1, 1000) <= 0)
				return;
			continue;
		}
		if (n <= 0)
			return;
		buf_reset(&r->masked);
		mask_write(r->mask, r->chunk, (size_t)n, &r->masked);
		spool_append(r->j, r->masked.data, r->masked.len);
	}
}

static void flush_mask(struct run *r)
{
	buf_reset(&r->masked);
	mask_flush(r->mask, &r->masked);
	spool_append(r->j, r->masked.data, r->masked.len);
}

/* ---- sandbox configuration -------------------------------------------------- */

/* The sandbox's shape for the job (workspace and binds are added later). */
static int sandbox_config_for(struct job *j, struct sandbox_config *c, struct kiln_err *err)
{
	struct agent *a = j->agent;
	const struct spec_job *s = j->spec;
	memset(c, 0, sizeof(*c));
	c->rootfs = NULL;
	if (s->image) {
		for (size_t i = 0; i < a->n_images && !c->rootfs; i++)
			if (streq(a->images[i].name, s->image))
				c->rootfs = a->images[i].dir;
		if (!c->rootfs) {
			struct buf have = BUF_INIT;
			for (size_t i = 0; i < a->n_images; i++)
				buf_printf(&have, "%s'%s'", i ? ", " : "", a->images[i].name);
			kiln_err_set(err, -ENOENT,
				     "image '%s' is not available on agent '%s' (it has %s); until "
				     "OCI images are supported, an agent maps image names to root "
				     "filesystems with --image NAME=DIR",
				     s->image, a->name, have.len ? have.data : "none");
			buf_release(&have);
			return err->code;
		}
	}
	switch (s->network) {
	case SPEC_NET_NONE: c->net = SANDBOX_NET_NONE; break;
	case SPEC_NET_HOST: c->net = SANDBOX_NET_HOST; break;
	case SPEC_NET_EGRESS:
		return kiln_err_set(err, -EOPNOTSUPP,
				    "network: egress is not supported by this agent's sandbox yet "
				    "(it offers none and host); use network: host or none");
	}
	if (s->resources.gpus > 0)
		return kiln_err_set(err, -EOPNOTSUPP,
				    "resources.gpus: this agent's sandbox executor does not pass "
				    "GPUs into jobs yet");
	if (s->resources.cpus > 0) {
		double m = s->resources.cpus * 1000.0 + 0.5;
		c->limits.cpu_millis = m < 10 ? 10 : (uint32_t)m;
	}
	c->limits.memory_bytes = s->resources.memory;
	c->limits.disk_bytes = s->resources.disk;
	c->limits.pids = (uint32_t)s->resources.pids;
	c->hostname = NULL;
	c->state_dir = a->sandbox_dir;
	c->cgroup_parent = a->cgroup_parent;
	c->init_path = a->init_path;
	return 0;
}

/* ---- environment ------------------------------------------------------------ */

struct envv {
	char **v;
	size_t n, cap;
};

static void env_set(struct envv *e, const char *key, const char *value)
{
	size_t klen = strlen(key);
	char *kv = xasprintf("%s=%s", key, value);
	for (size_t i = 0; i < e->n; i++)
		if (strncmp(e->v[i], key, klen) == 0 && e->v[i][klen] == '=') {
			free(e->v[i]);
			e->v[i] = kv;
			return;
		}
	e->v = xgrow(e->v, &e->cap, e->n + 2, sizeof(char *));
	e->v[e->n++] = kv;
	e->v[e->n] = NULL;
}

static void env_free(struct envv *e)
{
	for (size_t i = 0; i < e->n; i++)
		free(e->v[i]);
	free(e->v);
}

static void step_env(struct job *j, size_t idx, struct envv *e)
{
	const struct spec_job *s = j->spec;
	const struct spec_step *st = &s->steps[idx];
	char num[32];
	env_set(e, "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
	env_set(e, "HOME", "/root");
	env_set(e, "CI", "true");
	for (size_t i = 0; i < s->n_env; i++)
		env_set(e, s->env[i].key, s->env[i].value);
	for (size_t i = 0; i < st->n_env; i++)
		env_set(e, st->env[i].key, st->env[i].value);
	/* Secrets (from the lease) are variables of the same name. */
	const char *key;
	json_t *v;
	json_object_foreach(j->secrets, key, v)
		if (json_is_string(v))
			env_set(e, key, json_string_value(v));
	/* kiln's own variables last: a spec cannot set KILN_* (validated). */
	env_set(e, "KILN", "true");
	snprintf(num, sizeof(num), "%" PRId64, j->id);
	env_set(e, "KILN_JOB_ID", num);
	env_set(e, "KILN_JOB_NAME", j->name);
	snprintf(num, sizeof(num), "%" PRId64, j->attempt);
	env_set(e, "KILN_ATTEMPT", num);
	env_set(e, "KILN_STEP", st->name ? st->name : "");
	snprintf(num, sizeof(num), "%zu", idx + 1);
	env_set(e, "KILN_STEP_INDEX", num);
	env_set(e, "KILN_WORKSPACE", "/workspace");
	env_set(e, "KILN_AGENT", j->agent->name);
}

/* ---- steps -------------------------------------------------------------------- */

static char *step_script(struct job *j, size_t idx, struct kiln_err *err)
{
	_cleanup_free_ char *name = xasprintf("step-%zu", idx + 1);
	_cleanup_free_ char *host = path_join(j->scripts, name);
	const char *run = j->spec->steps[idx].run;
	_cleanup_close_ int fd =
		open(host, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	int r = fd < 0 ? -errno : write_all(fd, run, strlen(run));
	if (r < 0) {
		kiln_err_set(err, r, "cannot write the script of step %zu: %s", idx + 1,
			     strerror(-r));
		return NULL;
	}
	return xasprintf(AGENT_SCRIPTS_DIR "/%s", name);
}

static void format_secs(uint64_t ns, char out[32])
{
	snprintf(out, 32, "%.3fs", (double)ns / 1e9);
}

/* Waits for the step's process, moving its output to the spool. */
static void wait_step(struct run *r, struct sandbox_process *p, struct sandbox_exit *ex)
{
	struct job *j = r->j;
	struct pollfd fds[3] = {
		{.fd = r->pipe_r, .events = POLLIN},
		{.fd = sandbox_process_fd(p), .events = POLLIN},
		{.fd = j->wake_fd, .events = POLLIN},
	};
	for (;;) {
		uint64_t now = now_mono_ns();
		int timeout = 1000;
		if (j->pool_hold) {
			if (now >= r->hold_until_ns) {
				pool_release(j->agent, j);
			} else {
				uint64_t left = (r->hold_until_ns - now) / NSEC_PER_MSEC + 1;
				timeout = left < 1000 ? (int)left : 1000;
			}
		}
		if (r->deadline_ns && job_stop_reason(j) == STOP_NONE) {
			if (now >= r->deadline_ns) {
				job_request_stop(j, STOP_TIMEOUT, "the job's timeout passed");
				timeout = 1000;
			} else {
				uint64_t left = (r->deadline_ns - now) / NSEC_PER_MSEC + 1;
				timeout = left < (uint64_t)timeout ? (int)left : timeout;
			}
		}
		int n = poll(fds, 3, timeout);
		if (n < 0 && errno != EINTR)
			break;
		if (n <= 0)
			continue;
		if (fds[0].revents)
			drain_pipe(r, false);
		if (fds[2].revents & POLLIN) {
			uint64_t v;
			(void)!read(j->wake_fd, &v, sizeof(v));
		}
		if (fds[1].revents)
			break;
	}
	if (sandbox_process_wait(p, -1, ex) < 0) {
		memset(ex, 0, sizeof(*ex));
		ex->exit_code = -1;
		ex->signal = SIGKILL;
		ex->lost = true;
	}
	/* The process is gone: what it wrote is in the pipe. */
	drain_pipe(r, false);
	flush_mask(r);
}

static void describe_exit(const struct sandbox_exit *ex, struct buf *b)
{
	if (ex->timed_out)
		buf_puts(b, "timed out (killed)");
	else if (ex->oom_killed)
		buf_puts(b, "killed: out of memory");
	else if (ex->exit_code >= 0)
		buf_printf(b, "exited %d", ex->exit_code);
	else if (ex->signal)
		buf_printf(b, "killed by signal %d (%s)", ex->signal, strsignal(ex->signal));
	else
		buf_puts(b, "ended (the sandbox was lost)");
}

static void run_step(struct run *r, struct sandbox *sb, size_t idx, struct step_result *res)
{
	struct job *j = r->j;
	const struct spec_job *s = j->spec;
	const struct spec_step *st = &s->steps[idx];
	memset(res, 0, sizeof(*res));
	res->status = -1;
	res->failed = true;
	struct kiln_err err = {0};
	spool_marker(j, "step %zu/%zu \"%s\"", idx + 1, s->n_steps, st->name ? st->name : "");
	uint64_t t0 = now_mono_ns();

	_cleanup_free_ char *script = step_script(j, idx, &err);
	char **argv = NULL;
	struct envv env = {0};
	_cleanup_free_ char *cwd = st->working_directory
					   ? xasprintf("/workspace/%s", st->working_directory)
					   : xstrdup("/workspace");
	int rc = script ? 0 : err.code;
	if (rc >= 0 && spec_shell_argv(st->shell, script, &argv) < 0)
		rc = kiln_err_set(&err, -EINVAL, "shell '%s' is not valid", st->shell);
	struct sandbox_process *p = NULL;
	if (rc >= 0) {
		step_env(j, idx, &env);
		struct sandbox_exec ex = SANDBOX_EXEC_INIT;
		ex.argv = argv;
		ex.envp = env.v;
		ex.cwd = cwd;
		ex.stdout_fd = r->pipe_w;
		ex.stderr_fd = r->pipe_w;
		ex.timeout_ms = st->timeout_ms;
		rc = sandbox_exec(sb, &ex, &p, &err);
	}
	if (rc < 0)
		pool_release(j->agent, j);
	else
		r->hold_until_ns = now_mono_ns() + POOL_HOLD_MS * NSEC_PER_MSEC;
	spec_argv_free(argv);
	env_free(&env);
	char took[32];
	if (rc < 0) {
		res->wall_ns = now_mono_ns() - t0;
		/* As a shell would say it: 127 not found, 126 not executable. */
		res->status = rc == -ENOENT ? 127 : rc == -EACCES || rc == -ENOEXEC ? 126 : -1;
		res->error = xstrdup(err.msg);
		format_secs(res->wall_ns, took);
		spool_marker(j, "step %zu/%zu \"%s\" could not start: %s", idx + 1, s->n_steps,
			     st->name ? st->name : "", err.msg);
		return;
	}
	log_debug("step started job=%" PRId64 " step=%zu since_lease_us=%" PRIu64, j->id, idx + 1,
		  (uint64_t)((now_mono_ns() - j->leased_ns) / NSEC_PER_USEC));
	struct sandbox_exit ex;
	wait_step(r, p, &ex);
	pool_release(j->agent, j);
	sandbox_process_free(p);
	res->wall_ns = now_mono_ns() - t0;
	res->status = sandbox_exit_status(&ex);
	res->timed_out = ex.timed_out;
	res->failed = res->status != 0 || ex.lost;
	if (ex.lost && res->status == 0)
		res->status = 128 + SIGKILL;
	struct buf how = BUF_INIT;
	describe_exit(&ex, &how);
	format_secs(res->wall_ns, took);
	spool_marker(j, "step %zu/%zu \"%s\" %s after %s%s", idx + 1, s->n_steps,
		     st->name ? st->name : "", how.data, took,
		     res->failed && st->continue_on_error ? " (continue-on-error)" : "");
	buf_release(&how);
}

static void destroy_sandbox(struct job *j, struct sandbox_stats *stats)
{
	pthread_mutex_lock(&j->lock);
	struct sandbox *sb = TAKE_PTR(j->sb);
	pthread_mutex_unlock(&j->lock);
	int r = sandbox_destroy(sb, stats);
	if (r < 0)
		log_warn("sandbox not fully removed (left for the next cleanup) job=%" PRId64
			 " error=\"%s\"",
			 j->id, strerror(-r));
}

/* ---- the job ------------------------------------------------------------------ */

/*
 * A warm sandbox of the job's shape, or a new one; then the workspace seed
 * (embedded kiln run). On success j->sb is set (and killed at once if the
 * job was stopped meanwhile).
 */
static int get_sandbox(struct job *j, struct sandbox_config *cfg, struct sandbox **ret,
		       struct kiln_err *err)
{
	struct agent *a = j->agent;
	if (job_stop_reason(j) != STOP_NONE)
		return kiln_err_set(err, -ECANCELED, "stopped before it started");
	struct sandbox *sb = NULL;
	if (pool_take(a, cfg, j)) {
		sb = j->sb;
	} else {
		int r = mkdir_p(j->workspace, 0755);
		if (r >= 0 && mkdir(j->scripts, 0755) < 0 && errno != EEXIST)
			r = -errno;
		if (r < 0)
			return kiln_err_set(err, r, "cannot create the workspace: %s", strerror(-r));
		struct sandbox_bind bind = {.src = j->scripts, .dst = AGENT_SCRIPTS_DIR,
					    .readonly = true};
		cfg->workspace = j->workspace;
		cfg->binds = &bind;
		cfg->n_binds = 1;
		r = sandbox_create(cfg, &sb, err);
		cfg->binds = NULL;
		cfg->n_binds = 0;
		if (r < 0)
			return kiln_err_prefix(err, "sandbox");
		pthread_mutex_lock(&j->lock);
		j->sb = sb;
		pthread_mutex_unlock(&j->lock);
	}
	if (job_stop_reason(j) != STOP_NONE)
		sandbox_kill(sb);
	if (a->seed_dir) {
		int r = copy_tree(a->seed_dir, j->workspace, a->state_dir, a->seed_files,
				  a->n_seed_files, err);
		if (r < 0) {
			destroy_sandbox(j, NULL);
			return r;
		}
	}
	*ret = sb;
	return 0;
}

/* The usage report of the completion (proto_usage_from_json's fields). */
static void add_usage(json_t *o, const struct sandbox_stats *st, uint64_t wall_ns)
{
	json_object_set_new(o, "executor", json_string("sandbox"));
	json_object_set_new(o, "wall_ms", json_integer((json_int_t)(wall_ns / NSEC_PER_MSEC)));
	if (st->have_cpu) {
		json_object_set_new(o, "cpu_user_ms",
				    json_integer((json_int_t)(st->cpu_user_ns / NSEC_PER_MSEC)));
		json_object_set_new(o, "cpu_system_ms",
				    json_integer((json_int_t)(st->cpu_system_ns / NSEC_PER_MSEC)));
	}
	if (st->have_memory) {
		json_object_set_new(o, "memory_peak_bytes",
				    json_integer((json_int_t)st->memory_peak_bytes));
		json_object_set_new(o, "oom_kills", json_integer((json_int_t)st->oom_kills));
	}
	if (st->have_io) {
		json_object_set_new(o, "io_read_bytes", json_integer((json_int_t)st->io_read_bytes));
		json_object_set_new(o, "io_write_bytes",
				    json_integer((json_int_t)st->io_write_bytes));
	}
	if (st->have_pids)
		json_object_set_new(o, "pids_peak", json_integer((json_int_t)st->pids_peak));
}


int job_run(struct job *j, struct job_outcome *out)
{
	struct run r = {.j = j, .pipe_r = -1, .pipe_w = -1};
	struct kiln_err err = {0};
	const struct spec_job *s = j->spec;
	r.started_ns = now_mono_ns();
	if (j->timeout_ms)
		r.deadline_ns = j->leased_ns + j->timeout_ms * NSEC_PER_MSEC;
	out->state = JOB_FAILED;
	out->usage = json_object();
	out->steps = json_array();

	struct sandbox_config cfg;
	int fds[2];
	int rc = sandbox_config_for(j, &cfg, &err);
	if (rc >= 0 && pipe2(fds, O_CLOEXEC) < 0)
		rc = kiln_err_set(&err, -errno, "cannot create a pipe: %s", strerror(errno));
	if (rc < 0) {
		spool_marker(j, "job failed before it started: %s", err.msg);
		out->message = xasprintf("kiln: %s", err.msg);
		return rc;
	}
	r.pipe_r = fds[0];
	r.pipe_w = fds[1];
	(void)fcntl(r.pipe_w, F_SETPIPE_SZ, PIPE_SIZE);
	fd_set_nonblock(r.pipe_r, true);
	r.mask = mask_new();
	const char *key;
	json_t *v;
	json_object_foreach(j->secrets, key, v)
		if (json_is_string(v))
			mask_add_secret(r.mask, json_string_value(v), json_string_length(v));
	r.chunk = xmalloc(READ_CHUNK);

	struct sandbox *sb = NULL;
	rc = get_sandbox(j, &cfg, &sb, &err);
	if (rc < 0) {
		spool_marker(j, "job failed before it started: %s", err.msg);
		out->message = xasprintf("kiln: %s", err.msg);
		goto done;
	}
	log_debug("sandbox ready job=%" PRId64 " since_lease_us=%" PRIu64, j->id,
		  (uint64_t)((now_mono_ns() - j->leased_ns) / NSEC_PER_USEC));

	bool failed = false;
	size_t failed_step = 0;
	struct step_result fail_res = {0};
	for (size_t i = 0; i < s->n_steps; i++) {
		if (job_stop_reason(j) != STOP_NONE)
			break;
		struct step_result res;
		run_step(&r, sb, i, &res);
		const struct spec_step *st = &s->steps[i];
		json_t *o = json_pack("{s:s,s:I,s:b}", "name", st->name ? st->name : "",
				      "duration_ms", (json_int_t)(res.wall_ns / NSEC_PER_MSEC),
				      "timed_out", res.timed_out);
		json_object_set_new(o, "exit_code",
				    res.status >= 0 ? json_integer(res.status) : json_null());
		json_object_set_new(o, "state",
				    json_string(!res.failed		 ? "succeeded"
						: st->continue_on_error	 ? "failed_allowed"
									 : "failed"));
		if (res.error)
			json_object_set_new(o, "error", json_string(res.error));
		json_array_append_new(out->steps, o);
		if (res.failed && !st->continue_on_error && job_stop_reason(j) == STOP_NONE) {
			failed = true;
			failed_step = i;
			fail_res = res;
			break;
		}
		free(res.error);
	}

	struct sandbox_stats stats = {0};
	destroy_sandbox(j, &stats);
	sb = NULL;
	/* Every writer is gone: read the pipe to its end. */
	close(r.pipe_w);
	r.pipe_w = -1;
	drain_pipe(&r, true);
	flush_mask(&r);
	add_usage(out->usage, &stats, now_mono_ns() - r.started_ns);

	enum job_stop stop = job_stop_reason(j);
	if (stop == STOP_TIMEOUT) {
		char t[32];
		format_duration_ms(j->timeout_ms, t);
		out->state = JOB_TIMED_OUT;
		out->message = xasprintf("timed out: the job ran past its timeout of %s", t);
	} else if (stop != STOP_NONE) {
		out->state = JOB_CANCELLED; /* not reported: see job.c */
	} else if (failed) {
		const struct spec_step *st = &s->steps[failed_step];
		out->state = JOB_FAILED;
		out->has_exit_code = fail_res.status >= 0;
		out->exit_code = fail_res.status;
		if (fail_res.error)
			out->message = xasprintf("step %zu \"%s\" could not start: %s",
						 failed_step + 1, st->name ? st->name : "",
						 fail_res.error);
		else if (fail_res.timed_out)
			out->message = xasprintf("step %zu \"%s\" timed out", failed_step + 1,
						 st->name ? st->name : "");
		else
			out->message = xasprintf("step %zu \"%s\" failed with exit status %d",
						 failed_step + 1, st->name ? st->name : "",
						 fail_res.status);
	} else {
		out->state = JOB_SUCCEEDED;
		out->has_exit_code = true;
		out->exit_code = 0;
	}
	free(fail_res.error);
	rc = 0;
done:
	pool_release(j->agent, j);
	if (sb)
		destroy_sandbox(j, NULL);
	if (r.pipe_w >= 0)
		close(r.pipe_w);
	if (r.pipe_r >= 0)
		close(r.pipe_r);
	mask_free(r.mask);
	buf_release(&r.masked);
	free(r.chunk);
	return rc;
}
