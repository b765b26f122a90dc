/*
 * serve: `kiln sandbox serve` — runs `kiln sandbox run` requests (remote.h)
 * in sandboxes it made ahead of time.
 *
 * Creating a sandbox (namespaces, overlay root, cgroups, kiln-init) is most
 * of what a cold `kiln sandbox run` costs; a server that keeps some ready
 * turns a run into one sandbox_exec. The pool holds sandboxes of one shape
 * (root filesystem, network, hostname, limits): the server's at start, then
 * that of the last request. A request of that shape takes a ready one; any
 * other is served by a sandbox made for it (and the pool switches to its
 * shape). A warm sandbox has never run anything, and each serves one
 * request: no run sees another's files or processes.
 *
 * The pool thread makes sandboxes under SCHED_IDLE, so that making the next
 * one takes only CPU time nothing else wants (two cores: it would otherwise
 * slow the runs it is making them for); kiln-init is put back to
 * SCHED_OTHER before any command runs under it.
 *
 * Threads: the accept loop (the caller's), the pool thread, and one per
 * connection. Each connection owns its sandbox; at stop the accept loop
 * shuts the connections' read side, which each treats as a cancel.
 */
#include "sandbox-internal.h"
#include "sandbox/remote.h"

#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#define POOL_MAX 64
/* How long after a run ends the pool thread leaves the machine to the next one. */
#define POOL_QUIET_MS 5

struct pool {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct sandbox_config shape; /* its strings are rootfs and hostname */
	char *rootfs, *hostname;
	char *key;
	uint64_t generation; /* bumped on every shape change */
	struct sandbox *ready[POOL_MAX];
	size_t n;
	unsigned want;
	/* Used sandboxes waiting for their teardown (their commands are dead). */
	struct sandbox *dead[POOL_MAX];
	size_t n_dead;
	unsigned active;      /* runs in flight */
	uint64_t last_end_ns; /* when the last run ended */
	bool stop;
	bool idle; /* the pool thread runs under SCHED_IDLE */
	pthread_t thread;
	bool thread_started;
};

struct conn {
	struct server *srv;
	int sock;
	pthread_t thread;
	bool finished; /* the thread is done; join it */
	struct conn *next;
};

struct server {
	const struct sandbox_server_config *cfg;
	dev_t state_dev; /* the state dir's: argv requests must name it */
	ino_t state_ino;
	struct pool pool;
	pthread_mutex_t lock; /* conns */
	struct conn *conns;
};

static char *shape_key(const struct sandbox_config *c)
{
	return xasprintf("%s|%d|%s|%" PRIu32 "|%" PRIu64 "|%" PRIu32 "|%" PRIu64,
			 c->rootfs ? c->rootfs : "host", (int)c->net, c->hostname ? c->hostname : "",
			 c->limits.cpu_millis, c->limits.memory_bytes, c->limits.pids,
			 c->limits.disk_bytes);
}

/* The full configuration for a sandbox of shape s on this server. */
static struct sandbox_config full_config(const struct server *srv, const struct sandbox_config *s)
{
	struct sandbox_config c = {
		.rootfs = s->rootfs,
		.net = s->net,
		.hostname = s->hostname,
		.limits = s->limits,
		.workspace = s->workspace,
		.binds = s->binds,
		.n_binds = s->n_binds,
		.state_dir = srv->cfg->state_dir,
		.cgroup_parent = srv->cfg->cgroup_parent,
		.cgroup_root = srv->cfg->cgroup_root,
		.init_path = srv->cfg->init_path,
	};
	return c;
}

/* ---- the pool -------------------------------------------------------------- */

static void shape_set(struct pool *p, const struct sandbox_config *s)
{
	free(p->rootfs);
	free(p->hostname);
	p->rootfs = s->rootfs ? xstrdup(s->rootfs) : NULL;
	p->hostname = s->hostname ? xstrdup(s->hostname) : NULL;
	p->shape = (struct sandbox_config){
		.rootfs = p->rootfs,
		.hostname = p->hostname,
		.net = s->net,
		.limits = s->limits,
	};
	free(p->key);
	p->key = shape_key(s);
	p->generation++;
}

/* Makes one warm sandbox of the current shape (called and returns with the lock held). */
static void pool_make_one(struct server *srv)
{
	struct pool *p = &srv->pool;
	uint64_t gen = p->generation;
	struct sandbox_config shape = p->shape;
	char *rootfs = shape.rootfs ? xstrdup(shape.rootfs) : NULL;
	char *hostname = shape.hostname ? xstrdup(shape.hostname) : NULL;
	shape.rootfs = rootfs;
	shape.hostname = hostname;
	pthread_mutex_unlock(&p->lock);

	struct sandbox_config c = full_config(srv, &shape);
	struct sandbox *sb = NULL;
	struct kiln_err err = {0};
	int r = sandbox_create(&c, &sb, &err);
	if (r >= 0) {
		struct sandbox_info info;
		struct sched_param normal = {0};
		sandbox_info(sb, &info);
		/* Its commands must not inherit SCHED_IDLE. */
		if (p->idle && sched_setscheduler(info.init_pid, SCHED_OTHER, &normal) < 0) {
			r = -errno;
			log_warn("warm sandbox left out: cannot reset its scheduling policy "
				 "error=\"%s\"",
				 strerror(-r));
			(void)sandbox_destroy(sb, NULL);
			sb = NULL;
		}
	} else {
		log_warn("cannot make a warm sandbox error=\"%s\"", err.msg);
	}
	free(rootfs);
	free(hostname);

	pthread_mutex_lock(&p->lock);
	if (sb && !p->stop && gen == p->generation && p->n < p->want) {
		p->ready[p->n++] = sb;
	} else if (sb) {
		pthread_mutex_unlock(&p->lock);
		(void)sandbox_destroy(sb, NULL);
		pthread_mutex_lock(&p->lock);
	}
	if (r < 0 && !p->stop) {
		/* Do not spin on a host that cannot make them; try again later. */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 2;
		pthread_cond_timedwait(&p->cond, &p->lock, &ts);
	}
}

/*
 * The pool thread: tears down used sandboxes and makes warm ones, but only
 * while no run is in flight and none ended in the last POOL_QUIET_MS.
 * Making or tearing down a sandbox beside a starting command slows that
 * command by milliseconds even with spare CPU: both take the same kernel
 * locks (a cgroup attach waits for an RCU grace period that holds up fork;
 * mount and network namespace work serialise).
 */
static void *pool_main(void *arg)
{
	struct server *srv = arg;
	struct pool *p = &srv->pool;
	struct sched_param idle = {0};
	/* Only spare CPU time (see the top of the file); as root only: without
	 * CAP_SYS_NICE kiln-init could not be put back to SCHED_OTHER. */
	if (geteuid() == 0 && pthread_setschedparam(pthread_self(), SCHED_IDLE, &idle) == 0)
		p->idle = true;
	pthread_mutex_lock(&p->lock);
	while (!p->stop) {
		if (p->active) {
			pthread_cond_wait(&p->cond, &p->lock);
			continue;
		}
		uint64_t quiet_until = p->last_end_ns + POOL_QUIET_MS * NSEC_PER_MSEC;
		uint64_t now = now_mono_ns();
		if (now < quiet_until && (p->n_dead || p->n < p->want)) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			uint64_t ns = (uint64_t)ts.tv_nsec + (quiet_until - now);
			ts.tv_sec += (time_t)(ns / 1000000000ULL);
			ts.tv_nsec = (long)(ns % 1000000000ULL);
			pthread_cond_timedwait(&p->cond, &p->lock, &ts);
			continue;
		}
		if (p->n_dead) {
			struct sandbox *sb = p->dead[--p->n_dead];
			pthread_mutex_unlock(&p->lock);
			int r = sandbox_destroy(sb, NULL);
			if (r < 0)
				log_warn("sandbox teardown incomplete (the next start cleans up) "
					 "error=\"%s\"",
					 strerror(-r));
			pthread_mutex_lock(&p->lock);
			continue;
		}
		if (p->n < p->want) {
			pool_make_one(srv);
			continue;
		}
		pthread_cond_wait(&p->cond, &p->lock);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

/*
 * A ready sandbox of shape s, or NULL (then the caller makes one). A request
 * of another shape switches the pool to it.
 */
static struct sandbox *pool_take(struct pool *p, const struct sandbox_config *s)
{
	char *key = shape_key(s);
	struct sandbox *stale[POOL_MAX], *sb = NULL;
	size_t n_stale = 0;
	pthread_mutex_lock(&p->lock);
	p->active++;
	if (!p->want) {
		/* no pool */
	} else if (streq(key, p->key)) {
		if (p->n)
			sb = p->ready[--p->n];
	} else {
		for (size_t i = 0; i < p->n; i++)
			stale[i] = p->ready[i];
		n_stale = p->n;
		p->n = 0;
		shape_set(p, s);
	}
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	for (size_t i = 0; i < n_stale; i++)
		(void)sandbox_destroy(stale[i], NULL);
	free(key);
	return sb;
}

/*
 * A run is over (sb: its sandbox, in which nothing of the run is alive, or
 * NULL): its teardown goes to the pool thread, unless too many wait already.
 */
static void pool_done(struct pool *p, struct sandbox *sb)
{
	pthread_mutex_lock(&p->lock);
	p->active--;
	p->last_end_ns = now_mono_ns();
	if (sb && p->n_dead < POOL_MAX && p->thread_started && !p->stop) {
		p->dead[p->n_dead++] = sb;
		sb = NULL;
	}
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	if (sb) {
		int r = sandbox_destroy(sb, NULL);
		if (r < 0)
			log_warn("sandbox teardown incomplete (the next start cleans up) error=\"%s\"",
				 strerror(-r));
	}
}

static void pool_stop(struct pool *p)
{
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	if (p->thread_started)
		pthread_join(p->thread, NULL);
	for (size_t i = 0; i < p->n; i++)
		(void)sandbox_destroy(p->ready[i], NULL);
	for (size_t i = 0; i < p->n_dead; i++)
		(void)sandbox_destroy(p->dead[i], NULL);
	p->n = p->n_dead = 0;
	free(p->rootfs);
	free(p->hostname);
	free(p->key);
}

/* ---- one connection -------------------------------------------------------- */

static void reply(int sock, const struct sandbox_result *res)
{
	struct buf b = BUF_INIT;
	sandbox_result_encode(res, &b);
	int r = sandbox_frame_send(sock, b.data, b.len, NULL, 0);
	if (r < 0)
		log_debug("result not delivered (the client is gone) id=%s error=\"%s\"", res->id,
			  strerror(-r));
	buf_release(&b);
}

static void reply_error(int sock, int code, const char *msg)
{
	struct sandbox_result res = {.exit = {.exit_code = -1}, .err_code = code,
				     .err_msg = xstrdup(msg), .setup_failed = true};
	reply(sock, &res);
	sandbox_result_free(&res);
}

void sandbox_run_wait(struct sandbox *sb, struct sandbox_process *p, uint64_t timeout_ms,
		      int cancel_fd, int (*read_cancel)(int fd, void *arg), void *arg,
		      struct sandbox_result *r)
{
	uint64_t start = now_mono_ns();
	uint64_t deadline = timeout_ms ? start + timeout_ms * NSEC_PER_MSEC : 0;
	bool killed = false, timed_out = false, watching = cancel_fd >= 0;
	for (;;) {
		int timeout = -1;
		if (deadline && !killed) {
			uint64_t now = now_mono_ns();
			timeout = now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
		}
		struct pollfd pfd[2] = {{.fd = sandbox_process_fd(p), .events = POLLIN},
					{.fd = cancel_fd, .events = POLLIN}};
		int n = poll(pfd, watching ? 2 : 1, timeout);
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0 && deadline && !killed) {
			(void)sandbox_kill(sb);
			killed = timed_out = true;
			continue;
		}
		if (pfd[0].revents) {
			(void)sandbox_process_wait(p, -1, &r->exit);
			break;
		}
		if (watching && pfd[1].revents) {
			int sig = read_cancel(cancel_fd, arg);
			if (sig < 0)
				watching = false, sig = SIGTERM;
			if (sig > 0 && !killed) {
				r->cancelled = true;
				r->cancel_signal = sig;
				(void)sandbox_kill(sb);
				killed = true;
			}
		}
	}
	r->exit.timed_out |= timed_out;
	if (!r->exit.wall_ns || r->exit.lost)
		r->exit.wall_ns = now_mono_ns() - start;
}

/* A cancel from the client: {"cancel": N}; EOF, shutdown or garbage: -1. */
static int read_client_cancel(int sock, void *arg)
{
	struct buf *b = arg;
	size_t nfds;
	int r = sandbox_frame_recv(sock, b, NULL, 0, &nfds);
	int sig = r > 0 ? sandbox_cancel_decode(b->data, b->len) : -1;
	return sig > 0 ? sig : -1;
}

/*
 * Runs req in a warm or a new sandbox and fills res. Returns the sandbox,
 * for pool_done() once the client has its answer (NULL: none was made).
 * The client's fds stay open unless close_fds (the command has its own
 * copies once it started).
 */
static struct sandbox *run_request(struct server *srv, int sock, const struct sandbox_request *req,
				   const int stdio[3], int *fds, size_t *nfds, bool close_fds,
				   struct sandbox_result *res, struct sb_trace *tr)
{
	struct kiln_err err = {0};
	struct sandbox *sb = pool_take(&srv->pool, &req->cfg);
	if (sb && (req->cfg.workspace || req->cfg.n_binds) &&
	    sandbox_add_mounts(sb, req->cfg.workspace, req->cfg.binds, req->cfg.n_binds, &err) <
		    0) {
		/* A new sandbox with them in its config says what is wrong, or
		 * does what this one could not (another idmapping). */
		log_debug("warm sandbox not used: cannot add the mounts error=\"%s\"", err.msg);
		(void)sandbox_destroy(sb, NULL);
		sb = NULL;
		err = (struct kiln_err){0};
	}
	res->warm = sb != NULL;
	if (!sb) {
		struct sandbox_config c = full_config(srv, &req->cfg);
		if (sandbox_create(&c, &sb, &err) < 0) {
			res->setup_failed = true;
			res->err_code = err.code;
			res->err_msg = xstrdup(err.msg);
			return NULL;
		}
	}
	sb_trace_mark(tr, res->warm ? "warm sandbox taken" : "sandbox made");
	sandbox_result_set_info(res, sb);

	struct sandbox_exec ex = {.argv = req->argv, .envp = req->envp, .cwd = req->cwd,
				  .stdin_fd = stdio[0], .stdout_fd = stdio[1],
				  .stderr_fd = stdio[2], .uid = req->uid, .gid = req->gid,
				  .sole = true};
	struct sandbox_process *proc = NULL;
	int r = sandbox_exec(sb, &ex, &proc, &err);
	if (close_fds) {
		for (size_t i = 0; i < *nfds; i++)
			close(fds[i]);
		*nfds = 0;
	}
	if (r >= 0) {
		sb_trace_mark(tr, "started");
		res->started = true;
		/* The client going away or the server stopping (our read side
		 * shut) cancels like an explicit cancel. */
		struct buf cb = BUF_INIT;
		sandbox_run_wait(sb, proc, req->timeout_ms, sock, read_client_cancel, &cb, res);
		buf_release(&cb);
		sb_trace_mark(tr, "exited");
		sandbox_process_free(proc);
		/* Nothing of the command runs any more (sole): its accounting
		 * is final. */
		if (req->want_stats)
			res->have_stats = sandbox_stats(sb, &res->stats) >= 0;
	} else {
		res->err_code = r;
		res->err_msg = xstrdup(err.msg);
	}
	return sb;
}

/* The client has its answer (status: what it says): the rest of the
 * teardown is ours. Frees res. */
static void run_answered(struct server *srv, int sock, struct sandbox *sb,
			 struct sandbox_result *res, int status, struct sb_trace *tr)
{
	sb_trace_mark(tr, "result sent");
	sb_trace_end(tr, res->id);
	log_debug("sandbox run id=%s status=%d", res->id, status);
	sandbox_result_free(res);
	shutdown(sock, SHUT_RDWR);
	pool_done(&srv->pool, sb);
}

/* The client's fd i of those that came (stdio: which did), or -1. */
static int pick_stdio(unsigned stdio, const int *fds, size_t nfds, int out[3])
{
	size_t k = 0;
	for (int i = 0; i < 3; i++) {
		out[i] = -1;
		if (stdio & (1u << i)) {
			if (k >= nfds)
				return -EPROTO;
			out[i] = fds[k++];
		}
	}
	return 0;
}

static void send_text(int sock, const char *msg)
{
	int r = sandbox_frame_send(sock, msg, strlen(msg), NULL, 0);
	if (r < 0)
		log_debug("answer not delivered (the client is gone) error=\"%s\"", strerror(-r));
}

/*
 * An argv request (remote-argv.h): the CLI's parser makes the request; the
 * CLI's report goes to the client's stdout/stderr; the client gets the
 * exit status.
 */
static void serve_argv(struct server *srv, int sock, struct buf *b, int *fds, size_t *nfds,
		       struct sb_trace *tr)
{
	const struct sandbox_argv_handler *h = &srv->cfg->argv;
	struct sandbox_argv_request ar;
	struct sandbox_request req = {0};
	struct kiln_err err = {0};
	void *ctx = NULL;
	int stdio[3];
	if (sandbox_argv_decode(b->data, b->len, &ar, &err) < 0) {
		log_debug("argv request refused error=\"%s\"", err.msg);
		return; /* the client reads EOF and says so */
	}
	if (pick_stdio(ar.stdio, fds, *nfds, stdio) < 0) {
		log_debug("argv request refused error=\"fewer fds than its stdio mask names\"");
		goto out;
	}
	struct stat st;
	if (!h->parse || h->parse(h->arg, ar.argv, ar.argc, ar.envp, ar.cwd, &req, &ctx) <= 0 ||
	    !req.cfg.state_dir || stat(req.cfg.state_dir, &st) < 0 || st.st_dev != srv->state_dev ||
	    st.st_ino != srv->state_ino) {
		/* Not ours to run: the client runs it itself. */
		if (ctx)
			(void)h->finish(h->arg, ctx, NULL, -1, -1);
		send_text(sock, "local");
		goto out;
	}
	req.stdio = ar.stdio;
	sb_trace_mark(tr, "argv parsed");
	struct sandbox_result res = {.exit = {.exit_code = -1}};
	struct sandbox *sb = run_request(srv, sock, &req, stdio, fds, nfds, false, &res, tr);
	int status = h->finish(h->arg, ctx, &res, stdio[1], stdio[2]);
	/* No copy of the client's stdio outlives its answer. */
	for (size_t i = 0; i < *nfds; i++)
		close(fds[i]);
	*nfds = 0;
	char msg[32];
	snprintf(msg, sizeof(msg), "exit %d", status & 0xff);
	send_text(sock, msg);
	run_answered(srv, sock, sb, &res, status, tr);
out:
	sandbox_argv_request_free(&ar);
}

static void serve_one(struct server *srv, int sock)
{
	struct buf b = BUF_INIT;
	int fds[3];
	size_t nfds = 0;
	struct sandbox_request req = {0};
	struct kiln_err err = {0};
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	struct sb_trace tr;
	sb_trace_begin(&tr, "serve");
	int r = sandbox_frame_recv(sock, &b, fds, 3, &nfds);
	if (r <= 0)
		goto out; /* went away before asking */
	sb_trace_mark(&tr, "request received");
	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 || cred.uid != geteuid()) {
		/* Another user (root can reach any socket): nothing of theirs is
		 * run. The front is told "local"; the full kiln then hears why. */
		char msg[128];
		snprintf(msg, sizeof(msg), "refused: the server runs as uid %u, the client as %u",
			 (unsigned)geteuid(), (unsigned)cred.uid);
		if (sandbox_argv_is_request(b.data, b.len))
			send_text(sock, "local");
		else
			reply_error(sock, -EPERM, msg);
		goto out;
	}
	if (sandbox_argv_is_request(b.data, b.len)) {
		serve_argv(srv, sock, &b, fds, &nfds, &tr);
		goto out;
	}
	if (sandbox_request_decode(b.data, b.len, &req, &err) < 0) {
		/* Not a command: a status request (rare, so parsed second), or bad. */
		if (sandbox_status_is_request(b.data, b.len)) {
			struct pool *p = &srv->pool;
			pthread_mutex_lock(&p->lock);
			struct sandbox_server_status st = {(unsigned)p->n, p->want,
							   (unsigned)p->n_dead, p->active};
			pthread_mutex_unlock(&p->lock);
			buf_reset(&b);
			sandbox_status_encode(&st, &b);
			(void)sandbox_frame_send(sock, b.data, b.len, NULL, 0);
			goto out;
		}
		kiln_err_prefix(&err, "bad request");
		reply_error(sock, err.code, err.msg);
		goto out;
	}
	int stdio[3];
	if (pick_stdio(req.stdio, fds, nfds, stdio) < 0) {
		reply_error(sock, -EPROTO, "bad request: fewer fds than 'stdio' names");
		goto out;
	}
	struct sandbox_result res = {.exit = {.exit_code = -1}};
	struct sandbox *sb = run_request(srv, sock, &req, stdio, fds, &nfds, true, &res, &tr);
	reply(sock, &res);
	run_answered(srv, sock, sb, &res, res.started ? sandbox_exit_status(&res.exit) : -1, &tr);
out:
	for (size_t i = 0; i < nfds; i++)
		close(fds[i]);
	sandbox_request_free(&req);
	buf_release(&b);
}

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	serve_one(c->srv, c->sock);
	pthread_mutex_lock(&c->srv->lock);
	close(c->sock);
	c->sock = -1;
	c->finished = true;
	pthread_mutex_unlock(&c->srv->lock);
	return NULL;
}

/* Joins finished connection threads (all of them with wait_all). */
static void reap_conns(struct server *srv, bool wait_all)
{
	for (;;) {
		struct conn *done = NULL;
		pthread_mutex_lock(&srv->lock);
		for (struct conn **pp = &srv->conns; *pp; pp = &(*pp)->next)
			if ((*pp)->finished || wait_all) {
				done = *pp;
				*pp = done->next;
				break;
			}
		pthread_mutex_unlock(&srv->lock);
		if (!done)
			return;
		pthread_join(done->thread, NULL);
		free(done);
	}
}

/* ---- the listening socket --------------------------------------------------- */

static int listen_on(const char *path, struct kiln_err *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path))
		return kiln_err_set(err, -ENAMETOOLONG, "socket path '%s' is too long", path);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return kiln_err_set(err, -errno, "socket: %s", strerror(errno));
	/* We hold the lock: a socket file there is a dead server's. */
	if (unlink(path) < 0 && errno != ENOENT) {
		int r = -errno;
		close(fd);
		return kiln_err_set(err, r, "cannot remove the old socket '%s': %s", path,
				    strerror(-r));
	}
	mode_t old = umask(0177);
	int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (r < 0 || listen(fd, 128) < 0) {
		r = -errno;
		close(fd);
		return kiln_err_set(err, r, "cannot listen on '%s': %s", path, strerror(-r));
	}
	return fd;
}

int sandbox_serve(const struct sandbox_server_config *cfg, int stop_fd,
		  void (*ready_cb)(const char *socket_path, void *arg), void *arg,
		  struct kiln_err *err)
{
	_cleanup_free_ char *def = cfg->state_dir ? NULL : sandbox_default_state_dir();
	const char *state = cfg->state_dir ? cfg->state_dir : def;
	int r = mkdir_p(state, 0700);
	if (r < 0)
		return kiln_err_set(err, r, "cannot create the state dir '%s': %s", state,
				    strerror(-r));
	_cleanup_free_ char *lock_path = path_join(state, "serve.lock");
	_cleanup_free_ char *sock_path = path_join(state, SANDBOX_SERVE_SOCKET);
	_cleanup_close_ int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (lock < 0)
		return kiln_err_set(err, -errno, "cannot open '%s': %s", lock_path, strerror(errno));
	if (flock(lock, LOCK_EX | LOCK_NB) < 0)
		return kiln_err_set(err, errno == EWOULDBLOCK ? -EBUSY : -errno,
				    "another kiln sandbox serve uses the state dir '%s'", state);
	/* Leftovers of a killed server's runs go before anything is made. */
	(void)sandbox_cleanup_leftovers(state, cfg->cgroup_root);
	int lfd = listen_on(sock_path, err);
	if (lfd < 0)
		return lfd;

	struct server srv = {.cfg = cfg};
	struct stat st;
	if (stat(state, &st) < 0) {
		r = -errno;
		unlink(sock_path);
		close(lfd);
		return kiln_err_set(err, r, "cannot stat the state dir '%s': %s", state,
				    strerror(-r));
	}
	srv.state_dev = st.st_dev;
	srv.state_ino = st.st_ino;
	pthread_mutex_init(&srv.lock, NULL);
	pthread_mutex_init(&srv.pool.lock, NULL);
	pthread_cond_init(&srv.pool.cond, NULL);
	srv.pool.want = MIN(cfg->warm, POOL_MAX);
	shape_set(&srv.pool, &cfg->shape);
	if (srv.pool.want) {
		r = pthread_create(&srv.pool.thread, NULL, pool_main, &srv);
		if (r != 0) {
			unlink(sock_path);
			close(lfd);
			pool_stop(&srv.pool);
			return kiln_err_set(err, -r, "cannot start the pool thread: %s", strerror(r));
		}
		srv.pool.thread_started = true;
	}
	if (ready_cb)
		ready_cb(sock_path, arg);

	for (;;) {
		struct pollfd pfd[2] = {{.fd = lfd, .events = POLLIN}, {.fd = stop_fd, .events = POLLIN}};
		int n = poll(pfd, 2, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || pfd[1].revents)
			break;
		reap_conns(&srv, false);
		int s = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (s < 0)
			continue; /* EAGAIN, or a client that gave up */
		struct conn *c = xcalloc(1, sizeof(*c));
		c->srv = &srv;
		c->sock = s;
		pthread_mutex_lock(&srv.lock);
		c->next = srv.conns;
		srv.conns = c;
		r = pthread_create(&c->thread, NULL, conn_main, c);
		if (r != 0) {
			srv.conns = c->next;
			pthread_mutex_unlock(&srv.lock);
			log_warn("cannot start a connection thread error=\"%s\"", strerror(r));
			close(s);
			free(c);
			continue;
		}
		pthread_mutex_unlock(&srv.lock);
	}

	/* Stop: no new clients; running ones are cancelled (read side shut). */
	unlink(sock_path);
	close(lfd);
	pthread_mutex_lock(&srv.lock);
	for (struct conn *c = srv.conns; c; c = c->next)
		if (c->sock >= 0)
			shutdown(c->sock, SHUT_RD);
	pthread_mutex_unlock(&srv.lock);
	reap_conns(&srv, true);
	pool_stop(&srv.pool);
	pthread_mutex_destroy(&srv.lock);
	pthread_mutex_destroy(&srv.pool.lock);
	pthread_cond_destroy(&srv.pool.cond);
	return 0;
}
