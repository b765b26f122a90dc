/*
 * ship: a job's output, from the runner to the server, through a spool file.
 *
 * The runner appends (masked) output and marker lines to <job dir>/log and
 * never waits for the network; the shipper thread sends the bytes
 * [acked, end) in chunks with their offset and the lease's fence. So a slow
 * or unreachable server never blocks the job, and memory stays bounded: the
 * backlog waits on disk (up to SPOOL_MAX bytes ahead of the server; past
 * that the runner stops reading the job's output, which then blocks in its
 * write(2) until the server catches up).
 *
 * Exactly once: the server appends a chunk only at its current end; a chunk
 * already there is a retransmission (answered 200, nothing written) and a
 * chunk past the end is refused with the size to resend from. After any
 * failure the shipper resends from the last size the server reported, so
 * nothing is lost and nothing is written twice (docs/internals/agent.md).
 *
 * Batching: a token bucket per job — a burst of SHIP_BURST sends goes out
 * at once, then one per SHIP_INTERVAL — so sparse output (a step's header
 * and its first line) is sent as soon as it is written, a chatty job costs
 * at most ~50 requests a second, and a byte waits at most ~20 ms.
 */
#include "agent-internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <sys/eventfd.h>

#define SHIP_INTERVAL_NS (20 * NSEC_PER_MSEC)
#define SHIP_BURST 4
#define SHIP_CHUNK_MAX (256u << 10) /* below any server's log chunk limit (1 MiB) */
#define SHIP_CHUNK_MIN (4u << 10)
#define SPOOL_MAX (1ULL << 30)

int spool_open(struct job *j)
{
	_cleanup_free_ char *p = path_join(j->dir, "log");
	j->spool_fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (j->spool_fd < 0)
		return -errno;
	j->end = j->acked = 0;
	j->last_nl = true;
	return 0;
}

/* Under j->lock. */
static void append_locked(struct job *j, const void *data, size_t len)
{
	if (!len || j->ship_dead || j->spool_fd < 0)
		return;
	/* Back-pressure only past SPOOL_MAX of backlog, and never for a job
	 * that is being stopped (its writes must not hang the stop). */
	while (j->end - j->acked > SPOOL_MAX && j->stop == STOP_NONE && !j->ship_dead)
		pthread_cond_wait(&j->cond, &j->lock);
	if (j->ship_dead)
		return;
	int r = write_all(j->spool_fd, data, len);
	if (r < 0) {
		/* The state directory is full or failing: the log cannot be kept
		 * whole. Say so once in kiln's log; the job goes on. */
		log_error("cannot spool job output, output dropped job=%" PRId64 " error=\"%s\"",
			  j->id, strerror(-r));
		return;
	}
	j->end += len;
	j->last_nl = ((const char *)data)[len - 1] == '\n';
	pthread_cond_broadcast(&j->cond);
}

void spool_append(struct job *j, const void *data, size_t len)
{
	pthread_mutex_lock(&j->lock);
	append_locked(j, data, len);
	pthread_mutex_unlock(&j->lock);
}

void spool_marker(struct job *j, const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	va_list ap;
	va_start(ap, fmt);
	pthread_mutex_lock(&j->lock);
	if (!j->last_nl)
		buf_putc(&b, '\n');
	buf_puts(&b, "##[kiln] ");
	buf_vprintf(&b, fmt, ap);
	buf_putc(&b, '\n');
	append_locked(j, b.data, b.len);
	pthread_mutex_unlock(&j->lock);
	va_end(ap);
	buf_release(&b);
}

/* ---- the shipper -------------------------------------------------------------- */

enum ship_result {
	SHIP_OK,      /* sent; acked moved */
	SHIP_RETRY,   /* transport or server error: back off and resend */
	SHIP_STALE,   /* the lease is gone */
	SHIP_SMALLER, /* 413: the chunk was too big for this server */
};

static enum ship_result send_chunk(struct job *j, struct http *h, const char *data, size_t len,
				   uint64_t offset, uint64_t *ret_size)
{
	_cleanup_free_ char *path = xasprintf("/v1/jobs/%" PRId64 "/log?fence=%" PRId64
					      "&offset=%" PRIu64,
					      j->id, j->fence, offset);
	struct http_reply rep;
	struct kiln_err err = {0};
	uint64_t sent = now_mono_ns();
	int r = http_request(h, "POST", path, false, data, len, 30000, &rep, &err);
	if (r < 0) {
		log_debug("log chunk not sent job=%" PRId64 " error=\"%s\"", j->id, err.msg);
		return SHIP_RETRY;
	}
	enum ship_result res = SHIP_RETRY;
	json_t *size = NULL;
	if (rep.status == 200) {
		size = json_object_get(rep.json, "size");
		res = SHIP_OK;
		job_renewed(j, sent);
	} else if (rep.status == 409) {
		const char *code = http_error_code(&rep);
		if (code && streq(code, "log_gap")) {
			/* The server has less than we thought (it lost its page
			 * cache in a crash): resend from its size. */
			size = json_object_get(json_object_get(rep.json, "error"), "size");
			res = SHIP_OK;
		} else {
			log_warn("log refused, lease lost job=%" PRId64 " fence=%" PRId64
				 " error=\"%s\"",
				 j->id, j->fence, http_error_message(&rep));
			res = SHIP_STALE;
		}
	} else if (rep.status == 404 || rep.status == 403 || rep.status == 401) {
		/* The server does not know the job (a fresh database), or will not
		 * take our writes for it: either way nothing more gets through. */
		log_warn("log refused job=%" PRId64 " status=%ld error=\"%s\"", j->id, rep.status,
			 http_error_message(&rep));
		res = SHIP_STALE;
	} else if (rep.status == 413) {
		res = SHIP_SMALLER;
	} else {
		log_debug("log chunk refused job=%" PRId64 " status=%ld error=\"%s\"", j->id,
			  rep.status, http_error_message(&rep));
	}
	if (res == SHIP_OK) {
		if (json_is_integer(size) && json_integer_value(size) >= 0)
			*ret_size = (uint64_t)json_integer_value(size);
		else
			res = SHIP_RETRY;
	}
	http_reply_release(&rep);
	return res;
}

/*
 * Waits until there is something to send (respecting the batching interval)
 * or nothing more will come. Under j->lock. Returns false when done.
 */
static bool wait_for_work(struct job *j)
{
	for (;;) {
		if (j->ship_dead || j->stop == STOP_LOST || j->stop == STOP_CANCELLED)
			return false;
		if (j->end > j->acked) {
			/* Tokens: one per interval since the bucket was last full. */
			uint64_t now = now_mono_ns();
			uint64_t full = SHIP_BURST * SHIP_INTERVAL_NS;
			if (now - j->bucket_ns > full)
				j->bucket_ns = now - full;
			uint64_t due = j->bucket_ns + SHIP_INTERVAL_NS;
			if (j->closed || now >= due || j->end - j->acked >= SHIP_CHUNK_MAX)
				return true;
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			uint64_t wait = due - now;
			ts.tv_sec += (time_t)(wait / NSEC_PER_SEC);
			ts.tv_nsec += (long)(wait % NSEC_PER_SEC);
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&j->cond, &j->lock, &ts);
			continue;
		}
		if (j->closed)
			return false;
		pthread_cond_wait(&j->cond, &j->lock);
	}
}

/* Sleeps for a retry unless the job is stopped meanwhile. Under j->lock. */
static void retry_wait(struct job *j, unsigned failures)
{
	uint64_t deadline = now_mono_ns() + backoff_ms(failures) * NSEC_PER_MSEC;
	for (;;) {
		uint64_t now = now_mono_ns();
		if (now >= deadline || j->stop == STOP_LOST || j->stop == STOP_CANCELLED)
			return;
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t wait = deadline - now;
		ts.tv_sec += (time_t)(wait / NSEC_PER_SEC);
		ts.tv_nsec += (long)(wait % NSEC_PER_SEC);
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&j->cond, &j->lock, &ts);
	}
}

/*
 * Tells the server the job runs (off the runner's critical path: the sandbox
 * is being built meanwhile). False when the lease is gone.
 */
static bool send_running(struct job *j, struct http *h)
{
	_cleanup_free_ char *path = xasprintf("/v1/jobs/%" PRId64 "/status", j->id);
	json_t *body = json_pack("{s:I,s:s}", "fence", (json_int_t)j->fence, "state", "running");
	bool ok = false;
	for (unsigned failures = 0;; failures++) {
		enum job_stop stop = job_stop_reason(j);
		if (stop == STOP_LOST || stop == STOP_CANCELLED)
			break;
		struct http_reply rep;
		struct kiln_err err = {0};
		uint64_t sent = now_mono_ns();
		int r = http_json(h, "POST", path, body, 30000, &rep, &err);
		long status = r == 0 ? rep.status : 0;
		bool refused = status == 409 || status == 404 || status == 403 || status == 401;
		if (status == 200) {
			job_renewed(j, sent);
			ok = true;
		} else if (refused) {
			log_warn("the server refused the job's start, lease lost job=%" PRId64
				 " status=%ld error=\"%s\"",
				 j->id, status, http_error_message(&rep));
			job_request_stop(j, STOP_LOST, "the server refused the start: lease lost");
		}
		if (r == 0)
			http_reply_release(&rep);
		if (ok || refused)
			break;
		pthread_mutex_lock(&j->lock);
		retry_wait(j, failures);
		pthread_mutex_unlock(&j->lock);
	}
	json_decref(body);
	return ok;
}

static void *shipper_main(void *p)
{
	struct job *j = p;
	struct http *h = http_new(j->agent->base_url, j->token ? j->token : j->agent->token);
	size_t chunk_max = SHIP_CHUNK_MAX;
	char *chunk = xmalloc(chunk_max);
	unsigned failures = 0;
	if (!send_running(j, h)) {
		pthread_mutex_lock(&j->lock);
		j->ship_dead = true;
		pthread_cond_broadcast(&j->cond);
		pthread_mutex_unlock(&j->lock);
		free(chunk);
		http_free(h);
		return NULL;
	}
	pthread_mutex_lock(&j->lock);
	while (wait_for_work(j)) {
		uint64_t off = j->acked;
		size_t want = (size_t)MIN((uint64_t)chunk_max, j->end - off);
		/* Spend a token (the bucket never goes below empty). */
		j->bucket_ns = MIN(j->bucket_ns + SHIP_INTERVAL_NS, now_mono_ns());
		pthread_mutex_unlock(&j->lock);

		enum ship_result res = SHIP_RETRY;
		uint64_t size = 0;
		ssize_t n = pread(j->spool_fd, chunk, want, (off_t)off);
		if (n > 0)
			res = send_chunk(j, h, chunk, (size_t)n, off, &size);
		else
			log_error("cannot read the spool job=%" PRId64 " error=\"%s\"", j->id,
				  n < 0 ? strerror(errno) : "short file");

		pthread_mutex_lock(&j->lock);
		if (res == SHIP_OK) {
			failures = 0;
			/* The server's size is the truth: it may be below off (a
			 * server that lost unsynced bytes) or past it. */
			j->acked = MIN(size, j->end);
			pthread_cond_broadcast(&j->cond);
		} else if (res == SHIP_STALE) {
			j->ship_dead = true;
			pthread_cond_broadcast(&j->cond);
			pthread_mutex_unlock(&j->lock);
			job_request_stop(j, STOP_LOST, "the server refused the log: lease lost");
			pthread_mutex_lock(&j->lock);
			break;
		} else if (res == SHIP_SMALLER && chunk_max > SHIP_CHUNK_MIN) {
			chunk_max /= 2;
		} else {
			/* Retry with backoff; the heartbeat thread fences the job if
			 * the lease cannot be renewed meanwhile. */
			retry_wait(j, failures++);
		}
	}
	pthread_mutex_unlock(&j->lock);
	free(chunk);
	http_free(h);
	return NULL;
}

int shipper_start(struct job *j)
{
	int r = -pthread_create(&j->shipper, NULL, shipper_main, j);
	if (r == 0)
		j->shipper_started = true;
	return r;
}

int shipper_finish(struct job *j)
{
	pthread_mutex_lock(&j->lock);
	j->closed = true;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
	if (j->shipper_started) {
		pthread_join(j->shipper, NULL);
		j->shipper_started = false;
	}
	pthread_mutex_lock(&j->lock);
	int r = 0;
	if (j->stop == STOP_LOST || j->ship_dead)
		r = -ESTALE;
	else if (j->stop == STOP_CANCELLED)
		r = -ECANCELED;
	else if (j->acked < j->end)
		r = -EIO;
	pthread_mutex_unlock(&j->lock);
	return r;
}
