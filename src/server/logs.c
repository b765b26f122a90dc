/*
 * logs: job output, one log per attempt: <state>/logs/<job>/<attempt>.log.
 *
 * Agents append chunks at explicit offsets with their lease's fence: a chunk
 * at the current end is appended, a chunk that lies wholly before the end is
 * a retransmission (answered 200, nothing written), a chunk that overlaps the
 * end contributes only its new tail, and a chunk past the end (a gap) is
 * refused with the size to resend from. Offsets are logical: they keep
 * counting past the cap.
 *
 * Cap (cfg.log_cap, 64 MiB): the first half is kept in <attempt>.log; past it
 * the newest half is kept in a ring, <attempt>.tail, and the logical size in
 * <attempt>.size. Readers get the head, then a marker line saying how many
 * bytes were dropped, then the tail. The job is never slowed or stopped by
 * the cap, and nothing is dropped silently.
 *
 * Readers follow live: GET .../log?follow=1 streams raw bytes (chunked) or,
 * with Accept: text/event-stream, Server-Sent Events whose id is the next
 * offset (so Last-Event-ID resumes). A follower that has caught up is a
 * suspended connection; an append wakes the followers of its job.
 *
 * Durability: appends are write(2)s to the page cache (they survive a crash
 * of the server, not of the machine); a log is fdatasync'ed when its attempt
 * ends.
 */
#include "server-internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <sys/stat.h>

static uint64_t head_cap(const struct server *s) { return s->cfg.log_cap / 2; }
static uint64_t tail_cap(const struct server *s) { return s->cfg.log_cap - s->cfg.log_cap / 2; }

static char *log_path(struct server *s, int64_t job, int64_t attempt, const char *ext)
{
	return xasprintf("%s/%" PRId64 "/%" PRId64 ".%s", s->logs_dir, job, attempt, ext);
}

static int open_file(struct server *s, int64_t job, int64_t attempt, const char *ext, bool create)
{
	_cleanup_free_ char *p = log_path(s, job, attempt, ext);
	int fd = open(p, (create ? O_RDWR | O_CREAT : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 && create && errno == ENOENT) {
		_cleanup_free_ char *dir = xasprintf("%s/%" PRId64, s->logs_dir, job);
		if (mkdir(dir, 0700) < 0 && errno != EEXIST)
			return -errno;
		fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	}
	return fd < 0 ? -errno : fd;
}

/* The logical size of a log: the .size file once past the cap, else the head's size. */
static uint64_t size_of(int head_fd, int size_fd)
{
	if (size_fd >= 0) {
		uint64_t v = 0;
		if (pread(size_fd, &v, sizeof(v), 0) == (ssize_t)sizeof(v))
			return v;
	}
	struct stat st;
	if (head_fd >= 0 && fstat(head_fd, &st) == 0)
		return (uint64_t)st.st_size;
	return 0;
}

static void joblog_sync_close(void *p)
{
	struct joblog *l = p;
	if (l->dirty) {
		if (l->head_fd >= 0)
			(void)fdatasync(l->head_fd);
		if (l->tail_fd >= 0)
			(void)fdatasync(l->tail_fd);
		if (l->size_fd >= 0)
			(void)fdatasync(l->size_fd);
	}
	if (l->head_fd >= 0)
		close(l->head_fd);
	if (l->tail_fd >= 0)
		close(l->tail_fd);
	if (l->size_fd >= 0)
		close(l->size_fd);
	free(l);
}

void joblog_close(struct server *s, struct joblog *l)
{
	if (!l)
		return;
	/* An fdatasync may take milliseconds: not on the HTTP thread, not
	 * under server.lock. */
	if (l->dirty)
		server_defer(s, joblog_sync_close, l);
	else
		joblog_sync_close(l);
}

static int joblog_open(struct server *s, struct sjob *j)
{
	if (j->log && j->log->attempt == j->attempt)
		return 0;
	if (j->log) {
		joblog_close(s, j->log);
		j->log = NULL;
	}
	struct joblog *l = xcalloc(1, sizeof(*l));
	l->job_id = j->id;
	l->attempt = j->attempt;
	l->tail_fd = l->size_fd = -1;
	l->head_fd = open_file(s, j->id, j->attempt, "log", true);
	if (l->head_fd < 0) {
		int r = l->head_fd;
		free(l);
		return r;
	}
	int sfd = open_file(s, j->id, j->attempt, "size", false);
	if (sfd >= 0) {
		close(sfd);
		l->size_fd = open_file(s, j->id, j->attempt, "size", true);
		l->tail_fd = open_file(s, j->id, j->attempt, "tail", true);
	}
	l->size = size_of(l->head_fd, l->size_fd);
	j->log = l;
	return 0;
}

static int joblog_append(struct server *s, struct joblog *l, const char *data, size_t n)
{
	uint64_t H = head_cap(s), T = tail_cap(s);
	while (n > 0) {
		size_t k;
		ssize_t w;
		if (l->size < H) {
			k = (size_t)MIN((uint64_t)n, H - l->size);
			w = pwrite(l->head_fd, data, k, (off_t)l->size);
		} else {
			if (l->tail_fd < 0) {
				l->tail_fd = open_file(s, l->job_id, l->attempt, "tail", true);
				l->size_fd = open_file(s, l->job_id, l->attempt, "size", true);
				if (l->tail_fd < 0 || l->size_fd < 0)
					return l->tail_fd < 0 ? l->tail_fd : l->size_fd;
			}
			if (!l->warned) {
				char cap[32];
				format_size(s->cfg.log_cap, cap);
				log_warn("job log passed its cap, keeping head and tail job=%" PRId64
					 " attempt=%" PRId64 " cap=%s",
					 l->job_id, l->attempt, cap);
				l->warned = true;
			}
			uint64_t pos = (l->size - H) % T;
			k = (size_t)MIN((uint64_t)n, T - pos);
			w = pwrite(l->tail_fd, data, k, (off_t)pos);
		}
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		data += w;
		n -= (size_t)w;
		l->size += (uint64_t)w;
		l->dirty = true;
	}
	if (l->size_fd >= 0 && pwrite(l->size_fd, &l->size, sizeof(l->size), 0) < 0)
		return -errno;
	return 0;
}

void logs_attempt_ended(struct server *s, struct sjob *j)
{
	if (j->log) {
		joblog_close(s, j->log);
		j->log = NULL;
	}
	logs_wake(s, j->id);
}

/* ---- append --------------------------------------------------------------- */

void h_log_append(struct req *r)
{
	struct server *s = r->srv;
	int64_t id, fence, offset;
	if (req_param_id(r, 0, "job", &id) < 0 ||
	    req_query_int(r, "fence", 1, INT64_MAX, 0, &fence) < 0 ||
	    req_query_int(r, "offset", 0, INT64_MAX, -1, &offset) < 0)
		return;
	if (fence == 0 || offset < 0) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"query parameters 'fence' (the lease's fence) and 'offset' (where "
				"this chunk starts in the log) are required");
		return;
	}
	if (access_job_write(r, id, fence) < 0)
		return;
	pthread_mutex_lock(&s->lock);
	struct sjob *j = sched_job(s, id);
	if (!j || !job_state_is_active(j->state) || j->fence != fence) {
		bool known = j != NULL;
		int64_t cur = j ? j->fence : 0;
		pthread_mutex_unlock(&s->lock);
		if (!known) {
			struct proto_job pj;
			int rc = store_job_get(s->store, id, 0, &pj);
			if (rc == -ENOENT) {
				req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found",
						"job %" PRId64 " not found", id);
				return;
			}
			if (rc >= 0)
				proto_job_release(&pj);
		}
		if (cur && cur != fence)
			req_reply_error(r, MHD_HTTP_CONFLICT, "stale_fence",
					"job %" PRId64 ": fence %" PRId64 " is stale: the current lease "
					"has fence %" PRId64 "; stop working on it",
					id, fence, cur);
		else
			req_reply_error(r, MHD_HTTP_CONFLICT, "stale_fence",
					"job %" PRId64 ": fence %" PRId64 " is not the current lease "
					"(the job has ended or is queued again); stop working on it",
					id, fence);
		return;
	}
	int rc = joblog_open(s, j);
	if (rc < 0) {
		pthread_mutex_unlock(&s->lock);
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"cannot open the log of job %" PRId64 ": %s", id, strerror(-rc));
		return;
	}
	struct joblog *l = j->log;
	uint64_t off = (uint64_t)offset, len = r->body.len;
	if (off > l->size) {
		uint64_t size = l->size;
		pthread_mutex_unlock(&s->lock);
		json_t *e = proto_error("log_gap",
					"job %" PRId64 ": a chunk at offset %" PRIu64
					" leaves a gap: the log has %" PRIu64 " bytes; resend from %" PRIu64,
					id, off, size, size);
		json_object_set_new(json_object_get(e, "error"), "size", json_integer((json_int_t)size));
		req_reply_json(r, MHD_HTTP_CONFLICT, e);
		return;
	}
	bool duplicate = off + len <= l->size;
	if (!duplicate) {
		uint64_t skip = l->size - off;
		rc = joblog_append(s, l, r->body.data + skip, (size_t)(len - skip));
		if (rc < 0) {
			pthread_mutex_unlock(&s->lock);
			req_reply_error(r, rc == -ENOSPC ? 507 : MHD_HTTP_INTERNAL_SERVER_ERROR,
					"log_write_failed", "cannot write the log of job %" PRId64 ": %s",
					id, strerror(-rc));
			return;
		}
		logs_wake(s, id);
	}
	uint64_t size = l->size;
	/* Writing output is a sign of life: it renews the lease too. */
	j->lease_expires_ns = now_mono_ns() + s->cfg.lease_ttl_ms * NSEC_PER_MSEC;
	pthread_mutex_unlock(&s->lock);
	req_reply_json(r, MHD_HTTP_OK,
		       json_pack("{s:I,s:b}", "size", (json_int_t)size, "duplicate", duplicate));
}

/* ---- followers ------------------------------------------------------------ */

void follower_free(struct follower *f)
{
	if (!f)
		return;
	buf_release(&f->pending);
	free(f);
}

void logs_wake(struct server *s, int64_t job_id)
{
	for (struct follower *f = s->followers; f; f = f->next)
		if (f->job_id == job_id && f->suspended) {
			f->suspended = false;
			atomic_fetch_sub(&s->suspended, 1);
			MHD_resume_connection(f->req->conn);
		}
}

void logs_ping(struct server *s, uint64_t now_ns)
{
	for (struct follower *f = s->followers; f; f = f->next)
		if (f->sse && f->suspended && now_ns >= f->next_ping_ns) {
			f->next_ping_ns = now_ns + 15 * NSEC_PER_SEC;
			buf_puts(&f->pending, ": ping\n\n");
			f->suspended = false;
			atomic_fetch_sub(&s->suspended, 1);
			MHD_resume_connection(f->req->conn);
		}
}

/* Length of data without a trailing incomplete UTF-8 sequence. */
static size_t utf8_whole(const char *d, size_t n)
{
	for (size_t back = 1; back <= 3 && back <= n; back++) {
		unsigned char c = (unsigned char)d[n - back];
		if ((c & 0xC0) == 0x80)
			continue; /* continuation byte: look further back */
		size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
		return need > back ? n - back : n;
	}
	return n;
}

/* Appends the bytes as a JSON string, invalid UTF-8 replaced by U+FFFD. */
static void put_text(struct buf *b, const char *d, size_t n)
{
	struct buf clean = BUF_INIT;
	buf_put_utf8_lossy(&clean, d, n);
	buf_put_json_string(b, clean.data ? clean.data : "", clean.len);
	buf_release(&clean);
}

/*
 * Reads up to max bytes of the follower's attempt at f->offset. Sets
 * *skipped when the offset fell into the dropped middle of a capped log (the
 * offset then moves to the oldest kept byte). Under server.lock.
 */
static ssize_t log_read(struct server *s, struct follower *f, char *out, size_t max,
			uint64_t *skipped, uint64_t *ret_size)
{
	*skipped = 0;
	*ret_size = 0;
	if (f->attempt <= 0)
		return 0;
	int head = open_file(s, f->job_id, f->attempt, "log", false);
	if (head < 0)
		return 0; /* nothing written yet */
	int sfd = open_file(s, f->job_id, f->attempt, "size", false);
	uint64_t size = size_of(head, sfd);
	*ret_size = size;
	uint64_t H = head_cap(s), T = tail_cap(s);
	ssize_t n = 0;
	if (f->offset < size && f->offset < H) {
		size_t k = (size_t)MIN((uint64_t)max, MIN(size, H) - f->offset);
		n = pread(head, out, k, (off_t)f->offset);
	} else if (f->offset < size) {
		uint64_t oldest = size > H + T ? size - T : H;
		if (f->offset < oldest) {
			*skipped = oldest - f->offset;
			f->offset = oldest;
		}
		int tail = open_file(s, f->job_id, f->attempt, "tail", false);
		if (tail >= 0) {
			uint64_t pos = (f->offset - H) % T;
			size_t k = (size_t)MIN(MIN((uint64_t)max, size - f->offset), T - pos);
			n = pread(tail, out, k, (off_t)pos);
			close(tail);
		}
	}
	close(head);
	if (sfd >= 0)
		close(sfd);
	return n < 0 ? 0 : n;
}

/* Is the follower's attempt still able to produce output? */
static bool attempt_live(struct server *s, struct follower *f, const char **state)
{
	struct sjob *j = sched_job(s, f->job_id);
	*state = j ? job_state_to_string(j->state) : "ended";
	if (!j)
		return false;
	if (j->state == JOB_QUEUED)
		return j->attempt < f->attempt; /* its next attempt is the one we follow */
	return j->attempt == f->attempt && job_state_is_active(j->state);
}

static void format_marker(struct server *s, struct follower *f, uint64_t skipped)
{
	char cap[32], half[32];
	format_size(s->cfg.log_cap, cap);
	format_size(head_cap(s), half);
	if (f->sse) {
		buf_printf(&f->pending,
			   "event: gap\ndata: {\"offset\":%" PRIu64 ",\"skipped\":%" PRIu64
			   ",\"message\":\"%" PRIu64 " bytes dropped: the log passed its cap of %s\"}\n\n",
			   f->offset - skipped, skipped, skipped, cap);
	} else {
		buf_printf(&f->pending,
			   "\n[kiln: %" PRIu64 " bytes of this log were dropped here: it passed "
			   "its cap of %s; the first %s and the newest bytes are kept]\n",
			   skipped, cap, half);
	}
}

static ssize_t follower_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	(void)pos;
	struct follower *f = cls;
	struct server *s = f->req->srv;
	pthread_mutex_lock(&s->lock);
	for (;;) {
		if (f->pending.len) {
			size_t k = MIN(max, f->pending.len);
			memcpy(buf, f->pending.data, k);
			memmove(f->pending.data, f->pending.data + k, f->pending.len - k);
			f->pending.len -= k;
			pthread_mutex_unlock(&s->lock);
			return (ssize_t)k;
		}
		if (f->sent_end) {
			pthread_mutex_unlock(&s->lock);
			return MHD_CONTENT_READER_END_OF_STREAM;
		}
		const char *state;
		bool live = attempt_live(s, f, &state) && !f->ended && !s->stopping;
		size_t want = f->sse ? (max > 256 ? (max - 200) / 6 : 16) : max;
		if (want > 65536)
			want = 65536;
		char *tmp = xmalloc(want);
		uint64_t skipped, size;
		ssize_t n = log_read(s, f, tmp, want, &skipped, &size);
		if (skipped)
			format_marker(s, f, skipped);
		if (n > 0 && f->sse && live)
			/* A character split across chunks waits for its rest. */
			n = (ssize_t)utf8_whole(tmp, (size_t)n);
		if (n > 0) {
			if (f->sse) {
				buf_printf(&f->pending, "id: %" PRIu64 "\nevent: log\ndata: {\"offset\":%" PRIu64
					   ",\"text\":",
					   f->offset + (uint64_t)n, f->offset);
				put_text(&f->pending, tmp, (size_t)n);
				buf_puts(&f->pending, "}\n\n");
			} else {
				buf_append(&f->pending, tmp, (size_t)n);
			}
			f->offset += (uint64_t)n;
			free(tmp);
			continue;
		}
		free(tmp);
		if (skipped)
			continue;
		if (!live || !f->follow) {
			f->sent_end = true;
			if (f->sse)
				buf_printf(&f->pending,
					   "event: end\ndata: {\"attempt\":%" PRId64 ",\"size\":%" PRIu64
					   ",\"state\":\"%s\"}\n\n",
					   f->attempt, f->offset, state);
			continue;
		}
		/* Caught up with a live attempt: wait for an append or its end. */
		f->suspended = true;
		atomic_fetch_add(&s->suspended, 1);
		MHD_suspend_connection(f->req->conn);
		pthread_mutex_unlock(&s->lock);
		return 0;
	}
}

void h_log_get(struct req *r)
{
	struct server *s = r->srv;
	int64_t id, offset, attempt, follow;
	if (req_param_id(r, 0, "job", &id) < 0 ||
	    req_query_int(r, "offset", 0, INT64_MAX, 0, &offset) < 0 ||
	    req_query_int(r, "attempt", 1, INT64_MAX, 0, &attempt) < 0 ||
	    req_query_int(r, "follow", 0, 1, 0, &follow) < 0)
		return;
	const char *accept = req_header(r, MHD_HTTP_HEADER_ACCEPT);
	bool sse = accept && strstr(accept, "text/event-stream");
	const char *last = req_header(r, "Last-Event-ID");
	int64_t v;
	if (sse && last && parse_int64(last, 0, INT64_MAX, &v) >= 0)
		offset = v;
	if (access_job_visible(r, id) < 0)
		return;

	/* Which attempt: the one asked for, else the current one (the next one
	 * for a queued job being followed). */
	pthread_mutex_lock(&s->lock);
	struct sjob *j = sched_job(s, id);
	int64_t cur = -1;
	bool queued = false;
	if (j) {
		cur = j->attempt;
		queued = j->state == JOB_QUEUED;
	}
	pthread_mutex_unlock(&s->lock);
	if (cur < 0) {
		struct proto_job pj;
		int rc = store_job_get(s->store, id, 0, &pj);
		if (rc == -ENOENT) {
			req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "job %" PRId64 " not found",
					id);
			return;
		}
		if (rc < 0) {
			req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
					"cannot read job %" PRId64 ": %s", id, strerror(-rc));
			return;
		}
		cur = pj.attempt;
		proto_job_release(&pj);
	}
	if (!attempt)
		attempt = queued && follow ? cur + 1 : cur;
	if (attempt > cur + (queued ? 1 : 0)) {
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found",
				"job %" PRId64 " has no attempt %" PRId64 " (it has had %" PRId64 ")",
				id, attempt, cur);
		return;
	}

	struct follower *f = xcalloc(1, sizeof(*f));
	f->req = r;
	f->job_id = id;
	f->attempt = attempt;
	f->offset = (uint64_t)offset;
	f->sse = sse;
	f->follow = follow;
	f->next_ping_ns = now_mono_ns() + 15 * NSEC_PER_SEC;
	if (sse)
		buf_puts(&f->pending, "retry: 1000\n\n");
	pthread_mutex_lock(&s->lock);
	f->next = s->followers;
	if (s->followers)
		s->followers->prev = f;
	s->followers = f;
	r->follower = f;
	pthread_mutex_unlock(&s->lock);

	struct MHD_Response *resp =
		MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, follower_read, f, NULL);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				sse ? "text/event-stream" : "text/plain; charset=utf-8");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	char a[32];
	snprintf(a, sizeof(a), "%" PRId64, attempt);
	MHD_add_response_header(resp, "X-Kiln-Attempt", a);
	req_reply_response(r, MHD_HTTP_OK, resp);
}
