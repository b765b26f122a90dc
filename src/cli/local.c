/*
 * local: a server and an agent in this process — what `kiln up` runs, and
 * what `kiln run` starts on a temporary state directory when no server is
 * configured. The agent talks to the server over loopback HTTP like any
 * other agent (one protocol, one code path); it runs on its own thread.
 */
#include "local.h"

#include <inttypes.h>
#include <pthread.h>

static void on_ready(void *ud, int64_t id)
{
	struct local *l = ud;
	pthread_mutex_lock(&l->lock);
	l->agent_id = id;
	l->ready = true;
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
}

static void *agent_main(void *p)
{
	struct local *l = p;
	l->agent_rc = agent_run(l->agent, &l->agent_err);
	pthread_mutex_lock(&l->lock);
	l->agent_done = true;
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
	return NULL;
}

/*
 * The admin token the server wrote to its state directory on its first
 * start (STATE/admin.token), or a new one when that file is gone.
 */
static int admin_token(struct local *l, const char *state_dir, struct kiln_err *err)
{
	_cleanup_free_ char *path = path_join(state_dir, "admin.token");
	struct buf b = BUF_INIT;
	if (read_file(path, 4096, &b) >= 0) {
		buf_puts(&b, "");
		size_t n = b.len;
		while (n && (b.data[n - 1] == '\n' || b.data[n - 1] == ' '))
			b.data[--n] = '\0';
		if (startswith(b.data, "kiln_pat_"))
			l->token = xstrdup(b.data);
		explicit_bzero(b.data, b.len);
	}
	buf_release(&b);
	if (l->token)
		return 0;
	int r = server_admin_token(l->server, "kiln up", &l->token, err);
	return r < 0 ? kiln_err_prefix(err, "server") : 0;
}

int local_start(struct local *l, const struct local_options *o, struct kiln_err *err)
{
	memset(l, 0, sizeof(*l));
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->cond, NULL);
	struct server_config sc;
	server_config_init(&sc);
	sc.listen = o->listen ? o->listen : "127.0.0.1:7700";
	sc.state_dir = o->state_dir;
	sc.durable = o->durable;
	int r = server_new(&sc, &l->server, err);
	if (r >= 0)
		r = server_start(l->server, err);
	if (r < 0) {
		kiln_err_prefix(err, "server");
		local_stop(l, false);
		return r;
	}
	l->url = xasprintf("http://%s", server_address(l->server));
	r = admin_token(l, o->state_dir, err);
	if (r < 0) {
		local_stop(l, false);
		return r;
	}
	struct agent_config ac = o->agent;
	/* The in-process agent has the server's whole power anyway: it uses
	 * the admin token (registering in the shared pool). */
	ac.token = l->token;
	_cleanup_free_ char *agent_dir = path_join(o->state_dir, "agent");
	ac.server = l->url;
	ac.state_dir = agent_dir;
	ac.on_ready = on_ready;
	ac.ud = l;
	/* One /metrics, on the server's address, for both. */
	ac.metrics = server_metrics(l->server);
	r = agent_new(&ac, &l->agent, err);
	if (r < 0) {
		kiln_err_prefix(err, "agent");
		local_stop(l, false);
		return r;
	}
	r = -pthread_create(&l->thread, NULL, agent_main, l);
	if (r < 0) {
		kiln_err_set(err, r, "cannot start the agent thread: %s", strerror(-r));
		local_stop(l, false);
		return r;
	}
	l->thread_started = true;
	/* Registered (or failed) before we say we are up. */
	pthread_mutex_lock(&l->lock);
	while (!l->ready && !l->agent_done)
		pthread_cond_wait(&l->cond, &l->lock);
	bool ok = l->ready;
	pthread_mutex_unlock(&l->lock);
	if (!ok) {
		r = kiln_err_set(err, l->agent_rc < 0 ? l->agent_rc : -EIO, "agent: %s",
				 l->agent_err.msg[0] ? l->agent_err.msg : "stopped before registering");
		local_stop(l, false);
		return r;
	}
	return 0;
}

void local_stop(struct local *l, bool drain)
{
	if (l->agent)
		agent_stop(l->agent, drain);
	if (l->thread_started) {
		pthread_join(l->thread, NULL);
		l->thread_started = false;
	}
	agent_free(l->agent);
	l->agent = NULL;
	if (l->server)
		server_free(l->server);
	l->server = NULL;
	free(l->url);
	l->url = NULL;
	if (l->token)
		explicit_bzero(l->token, strlen(l->token));
	free(l->token);
	l->token = NULL;
	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->cond);
}
