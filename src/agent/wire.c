/*
 * wire: the agent's HTTP/1.1 client for http:// servers, on plain sockets.
 *
 * The agent's calls are few and simple (a JSON or byte body with a
 * Content-Length, a JSON answer), one at a time per struct http, on one
 * keep-alive connection. libcurl does them too (and still does for https://
 * servers: http.c), but loading it maps its whole dependency tree (OpenSSL,
 * GnuTLS, LDAP, SSH, ...): ~10 MB of the agent's resident memory for calls
 * that need none of it (docs/decisions: the agent's small HTTP client).
 *
 * Request: "METHOD PATH HTTP/1.1", Host, Authorization, User-Agent,
 * Content-Type, Content-Length; the body follows. Answer: the status line,
 * headers (Content-Length, Transfer-Encoding: chunked, Connection: close),
 * the body by length, in chunks, or to EOF. A request sent on a reused
 * connection that gets no answer byte at all (the server closed the idle
 * connection meanwhile) is sent once more on a new one, as curl does.
 *
 * Deadlines: the whole request (timeout_ms; 0 none), 10 s for the connect.
 * Abort: wire_abort() (any thread) wakes the poll through an eventfd.
 */
#include "agent-internal.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define WIRE_MAX_HEADER (64u << 10)
#define WIRE_MAX_BODY (64u << 20)
#define WIRE_CONNECT_MS 10000

struct wire {
	char *host, *port, *hostport, *prefix, *auth;
	int fd;         /* the connection, or -1 */
	int wake;       /* eventfd: wire_abort() */
	atomic_bool aborted;
	struct buf in;  /* bytes read past the last answer (none, usually) */
	unsigned used;  /* answers read on this connection */
	size_t max_body; /* WIRE_MAX_BODY (smaller in the fuzz target) */
};

/* "http://HOST[:PORT][/PREFIX]" -> its parts; false if not of that form. */
bool wire_parse_url(const char *url, char **host, char **port, char **prefix)
{
	if (!startswith(url, "http://"))
		return false;
	const char *p = url + 7;
	const char *end = p + strcspn(p, "/?#");
	if (*end == '?' || *end == '#' || end == p || memchr(p, '@', (size_t)(end - p)))
		return false;
	const char *hs = p, *he, *colon;
	if (*p == '[') {
		he = memchr(p, ']', (size_t)(end - p));
		if (!he || he == p + 1)
			return false;
		hs = p + 1;
		colon = he + 1 < end ? he + 1 : NULL;
		if (colon && *colon != ':')
			return false;
	} else {
		colon = memchr(p, ':', (size_t)(end - p));
		he = colon ? colon : end;
	}
	const char *ps = colon ? colon + 1 : NULL;
	if (ps) {
		if (ps == end || (size_t)(end - ps) > 5)
			return false;
		for (const char *q = ps; q < end; q++)
			if (*q < '0' || *q > '9')
				return false;
	}
	*host = xstrndup(hs, (size_t)(he - hs));
	*port = ps ? xstrndup(ps, (size_t)(end - ps)) : xstrdup("80");
	*prefix = xstrdup(end);
	return true;
}

struct wire *wire_new(const char *url, const char *token)
{
	char *host, *port, *prefix;
	if (!wire_parse_url(url, &host, &port, &prefix))
		return NULL;
	struct wire *w = xcalloc(1, sizeof(*w));
	w->host = host;
	w->port = port;
	w->prefix = prefix;
	const char *p = url + 7;
	w->hostport = xstrndup(p, strcspn(p, "/"));
	w->auth = token ? xasprintf("Authorization: Bearer %s\r\n", token) : NULL;
	w->fd = -1;
	w->max_body = WIRE_MAX_BODY;
	w->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w->wake < 0) {
		log_error("cannot make an eventfd error=\"%s\"", strerror(errno));
		abort(); /* as an allocation failure */
	}
	return w;
}

static void wire_close(struct wire *w)
{
	if (w->fd >= 0)
		close(w->fd);
	w->fd = -1;
	w->used = 0;
	buf_reset(&w->in);
}

void wire_free(struct wire *w)
{
	if (!w)
		return;
	wire_close(w);
	close(w->wake);
	if (w->auth)
		explicit_bzero(w->auth, strlen(w->auth));
	free(w->auth);
	free(w->host);
	free(w->port);
	free(w->hostport);
	free(w->prefix);
	buf_release(&w->in);
	free(w);
}

void wire_abort(struct wire *w)
{
	atomic_store(&w->aborted, true);
	uint64_t one = 1;
	(void)!write(w->wake, &one, sizeof(one));
}

void wire_reset_abort(struct wire *w)
{
	atomic_store(&w->aborted, false);
	uint64_t v;
	(void)!read(w->wake, &v, sizeof(v));
}

/* Waits for events on the connection; 0, or -ETIMEDOUT / -ECANCELED. */
static int wait_fd(struct wire *w, short events, uint64_t deadline_ns)
{
	for (;;) {
		if (atomic_load(&w->aborted))
			return -ECANCELED;
		int timeout = -1;
		if (deadline_ns) {
			uint64_t now = now_mono_ns();
			if (now >= deadline_ns)
				return -ETIMEDOUT;
			uint64_t ms = (deadline_ns - now + NSEC_PER_MSEC - 1) / NSEC_PER_MSEC;
			timeout = ms > INT32_MAX ? INT32_MAX : (int)ms;
		}
		struct pollfd p[2] = {{.fd = w->fd, .events = events}, {.fd = w->wake, .events = POLLIN}};
		int n = poll(p, 2, timeout);
		if (n < 0 && errno != EINTR)
			return -errno;
		if (atomic_load(&w->aborted))
			return -ECANCELED;
		if (n > 0 && p[0].revents)
			return 0;
	}
}

static int wire_connect(struct wire *w, uint64_t deadline_ns, struct kiln_err *err)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_ADDRCONFIG};
	struct addrinfo *res = NULL;
	int g = getaddrinfo(w->host, w->port, &hints, &res);
	if (g != 0)
		return kiln_err_set(err, -EHOSTUNREACH, "cannot resolve '%s': %s", w->host,
				    gai_strerror(g));
	uint64_t cdl = now_mono_ns() + WIRE_CONNECT_MS * NSEC_PER_MSEC;
	if (deadline_ns && deadline_ns < cdl)
		cdl = deadline_ns;
	int r = -ECONNREFUSED;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		w->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			       ai->ai_protocol);
		if (w->fd < 0) {
			r = -errno;
			continue;
		}
		if (connect(w->fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
			r = -errno;
		} else {
			r = wait_fd(w, POLLOUT, cdl);
			int soerr = 0;
			socklen_t sl = sizeof(soerr);
			if (r == 0 && getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
				soerr = errno;
			if (r == 0 && soerr)
				r = -soerr;
		}
		if (r == 0) {
			int one = 1;
			(void)setsockopt(w->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			break;
		}
		wire_close(w);
		if (r == -ECANCELED || r == -ETIMEDOUT)
			break;
	}
	freeaddrinfo(res);
	if (r < 0)
		return kiln_err_set(err, r == -ECANCELED ? r : r == -ETIMEDOUT ? r : -ECONNREFUSED,
				    "cannot connect to %s: %s", w->hostport, strerror(-r));
	return 0;
}

/* Sends iov[0..n) whole. */
static int send_iov(struct wire *w, struct iovec *iov, int n, uint64_t deadline_ns)
{
	while (n > 0) {
		struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
		ssize_t k = sendmsg(w->fd, &mh, MSG_NOSIGNAL);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				return -errno;
			int r = wait_fd(w, POLLOUT, deadline_ns);
			if (r < 0)
				return r;
			continue;
		}
		size_t left = (size_t)k;
		while (n > 0 && left >= iov->iov_len) {
			left -= iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + left;
			iov->iov_len -= left;
		}
	}
	return 0;
}

/* Reads more into w->in; 0 bytes read is EOF (-EPIPE). */
static int fill(struct wire *w, uint64_t deadline_ns)
{
	for (;;) {
		buf_reserve(&w->in, 16384);
		ssize_t k = read(w->fd, w->in.data + w->in.len, w->in.cap - w->in.len - 1);
		if (k > 0) {
			w->in.len += (size_t)k;
			w->in.data[w->in.len] = '\0';
			return 0;
		}
		if (k == 0)
			return -EPIPE;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		int r = wait_fd(w, POLLIN, deadline_ns);
		if (r < 0)
			return r;
	}
}

/* Consumes n bytes from the front of w->in. */
static void consume(struct wire *w, size_t n)
{
	memmove(w->in.data, w->in.data + n, w->in.len - n);
	w->in.len -= n;
	w->in.data[w->in.len] = '\0';
}

/* The value of header `name` in the header block (lines after the status
 * line) from offset *from on, trimmed; NULL if absent. *from: past its line.
 * Caller frees. */
static char *header_from(const char *hdrs, size_t len, const char *name, size_t *from)
{
	size_t nl = strlen(name);
	const char *end = hdrs + len;
	for (const char *p = hdrs + *from; p < end;) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		if (!eol)
			eol = end;
		if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
			const char *v = p + nl + 1, *ve = eol;
			while (v < ve && (*v == ' ' || *v == '\t'))
				v++;
			while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			*from = (size_t)(eol - hdrs) + (eol < end);
			return xstrndup(v, (size_t)(ve - v));
		}
		p = eol + 1;
	}
	return NULL;
}

static char *header(const char *hdrs, size_t len, const char *name)
{
	size_t from = 0;
	return header_from(hdrs, len, name, &from);
}

/* Digits only (strtoull alone takes leading space, a sign, "0x"); a chunk
 * size may be followed by an extension. */
static bool parse_num(const char *s, int base, uint64_t *ret)
{
	if (!s)
		return false;
	size_t nd = strspn(s, base == 16 ? "0123456789abcdefABCDEF" : "0123456789");
	if (nd == 0 || (s[nd] && (base == 10 || (s[nd] != ';' && s[nd] != ' ' && s[nd] != '\t'))))
		return false;
	errno = 0;
	unsigned long long v = strtoull(s, NULL, base);
	if (errno)
		return false;
	*ret = v;
	return true;
}

/*
 * Reads one answer: status and body. *got_any: some byte of it arrived.
 * Keeps the connection when the answer says it may be kept.
 */
static int read_answer(struct wire *w, bool head, long *ret_status, struct buf *body,
		       uint64_t deadline_ns, bool *got_any, struct kiln_err *err)
{
	int r;
	size_t hend;
	for (;;) {
		char *e;
		while (!(e = w->in.len ? strstr(w->in.data, "\r\n\r\n") : NULL)) {
			if (w->in.len > WIRE_MAX_HEADER)
				return kiln_err_set(err, -EPROTO, "the server's answer headers "
								  "are too long");
			r = fill(w, deadline_ns);
			if (r < 0)
				return r;
			*got_any = true;
		}
		hend = (size_t)(e - w->in.data) + 4;
		/* "HTTP/1.x SSS reason" */
		const char *d = w->in.data;
		if (strncmp(d, "HTTP/1.", 7) != 0 || d[7] < '0' || d[7] > '9' || d[8] != ' ' ||
		    d[9] < '1' || d[9] > '5' || d[10] < '0' || d[10] > '9' || d[11] < '0' ||
		    d[11] > '9' || (d[12] != ' ' && d[12] != '\r'))
			return kiln_err_set(err, -EPROTO, "the server's answer is not HTTP/1.x");
		int minor = d[7] - '0';
		int status = (d[9] - '0') * 100 + (d[10] - '0') * 10 + (d[11] - '0');
		if (status >= 100 && status < 200 && status != 101) {
			consume(w, hend); /* 100 Continue and the like: the answer follows */
			continue;
		}
		*ret_status = status;
		const char *hdrs = strchr(w->in.data, '\n') + 1;
		size_t hlen = hend - (size_t)(hdrs - w->in.data);
		_cleanup_free_ char *te = header(hdrs, hlen, "Transfer-Encoding");
		_cleanup_free_ char *cl = header(hdrs, hlen, "Content-Length");
		_cleanup_free_ char *conn = header(hdrs, hlen, "Connection");
		bool keep = minor >= 1 ? !(conn && strcasecmp(conn, "close") == 0)
				       : (conn && strcasecmp(conn, "keep-alive") == 0);
		/* several Content-Lengths must agree (RFC 9112 6.3) */
		bool cl_same = true;
		size_t from = 0;
		free(header_from(hdrs, hlen, "Content-Length", &from));
		for (char *o; cl && (o = header_from(hdrs, hlen, "Content-Length", &from));) {
			cl_same = cl_same && streq(o, cl);
			free(o);
		}
		consume(w, hend);
		if (head || status == 204 || status == 304) {
			/* no body */
		} else if (te && strcasecmp(te, "chunked") == 0) {
			for (;;) {
				char *le;
				while (!(le = w->in.len ? strstr(w->in.data, "\r\n") : NULL)) {
					if (w->in.len > 1024)
						return kiln_err_set(err, -EPROTO,
								    "bad chunk in the server's answer");
					if ((r = fill(w, deadline_ns)) < 0)
						return r;
				}
				uint64_t n;
				*le = '\0';
				bool ok = parse_num(w->in.data, 16, &n);
				consume(w, (size_t)(le - w->in.data) + 2);
				if (!ok || n > w->max_body || body->len + n > w->max_body)
					return kiln_err_set(err, -EPROTO,
							    "bad chunk in the server's answer");
				if (n == 0) {
					/* trailers, then an empty line */
					for (;;) {
						while (!(le = w->in.len ? strstr(w->in.data, "\r\n")
									: NULL)) {
							if (w->in.len > WIRE_MAX_HEADER)
								return kiln_err_set(
									err, -EPROTO,
									"bad trailer in the "
									"server's answer");
							if ((r = fill(w, deadline_ns)) < 0)
								return r;
						}
						size_t l = (size_t)(le - w->in.data);
						consume(w, l + 2);
						if (l == 0)
							break;
					}
					break;
				}
				while (w->in.len < n + 2)
					if ((r = fill(w, deadline_ns)) < 0)
						return r;
				if (w->in.data[n] != '\r' || w->in.data[n + 1] != '\n')
					return kiln_err_set(err, -EPROTO,
							    "bad chunk in the server's answer");
				buf_append(body, w->in.data, (size_t)n);
				consume(w, (size_t)n + 2);
			}
		} else if (cl) {
			uint64_t n;
			if (!parse_num(cl, 10, &n) || n > w->max_body)
				return kiln_err_set(err, -EPROTO,
						    "bad Content-Length in the server's answer");
			if (!cl_same)
				return kiln_err_set(err, -EPROTO, "different Content-Lengths in "
								  "the server's answer");
			while (w->in.len < n)
				if ((r = fill(w, deadline_ns)) < 0)
					return r;
			buf_append(body, w->in.data, (size_t)n);
			consume(w, (size_t)n);
		} else {
			/* To EOF. */
			for (;;) {
				if (w->in.len > w->max_body)
					return kiln_err_set(err, -EPROTO,
							    "the server's answer is too long");
				r = fill(w, deadline_ns);
				if (r == -EPIPE)
					break;
				if (r < 0)
					return r;
			}
			if (w->in.len > w->max_body) /* the last read went over */
				return kiln_err_set(err, -EPROTO, "the server's answer is too long");
			buf_append(body, w->in.data, w->in.len);
			buf_reset(&w->in);
			keep = false;
		}
		w->used++;
		if (!keep)
			wire_close(w);
		return 0;
	}
}

int wire_read_answer_fd(int fd, size_t max_body, long *ret_status, struct buf *body, bool *keep,
			struct kiln_err *err)
{
	struct wire w = {.fd = fd, .wake = -1, .max_body = max_body};
	bool got_any = false;
	*keep = false;
	err->msg[0] = '\0';
	int r = read_answer(&w, false, ret_status, body, 0, &got_any, err);
	if (r == 0)
		*keep = w.fd >= 0;
	wire_close(&w);
	buf_release(&w.in);
	return r;
}

int wire_request(struct wire *w, const char *method, const char *path, const char *content_type,
		 const void *body, size_t len, int body_fd, long timeout_ms, long *ret_status,
		 struct buf *ret_body, struct kiln_err *err)
{
	uint64_t deadline = timeout_ms > 0 ? now_mono_ns() + (uint64_t)timeout_ms * NSEC_PER_MSEC
					   : 0;
	off_t fd_start = body_fd >= 0 ? lseek(body_fd, 0, SEEK_CUR) : 0;
	struct buf hdr = BUF_INIT;
	buf_printf(&hdr,
		   "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: kiln/" KILN_VERSION
		   "\r\n%sContent-Length: %zu\r\n",
		   method, w->prefix, path, w->hostport, w->auth ? w->auth : "", len);
	if (content_type && (body || body_fd >= 0))
		buf_printf(&hdr, "Content-Type: %s\r\n", content_type);
	buf_puts(&hdr, "\r\n");
	int r = 0;
	err->msg[0] = '\0';
	for (int attempt = 0;; attempt++) {
		*ret_status = 0;
		buf_reset(ret_body);
		bool reused = w->fd >= 0 && w->used > 0;
		bool got_any = false;
		if (w->fd < 0 && (r = wire_connect(w, deadline, err)) < 0)
			break;
		buf_reset(&w->in);
		struct iovec iov[2] = {{.iov_base = hdr.data, .iov_len = hdr.len}, {0}};
		if (body)
			memcpy(&iov[1].iov_base, &body, sizeof(body)); /* sent, not written */
		iov[1].iov_len = body ? len : 0;
		r = send_iov(w, iov, body ? 2 : 1, deadline);
		if (r == 0 && body_fd >= 0) {
			if (attempt && lseek(body_fd, fd_start, SEEK_SET) < 0)
				r = -errno;
			char chunk[16384];
			for (size_t left = len; r == 0 && left > 0;) {
				ssize_t k = read(body_fd, chunk, MIN(left, sizeof(chunk)));
				if (k < 0 && errno == EINTR)
					continue;
				if (k <= 0) {
					r = kiln_err_set(err, k < 0 ? -errno : -EIO,
							 "reading the upload: %s",
							 k < 0 ? strerror(errno) : "the file is shorter");
					wire_close(w);
					buf_release(&hdr);
					return r;
				}
				struct iovec one = {.iov_base = chunk, .iov_len = (size_t)k};
				r = send_iov(w, &one, 1, deadline);
				left -= (size_t)k;
			}
		}
		if (r == 0)
			r = read_answer(w, streq(method, "HEAD"), ret_status, ret_body, deadline,
					&got_any, err);
		if (r == 0)
			break;
		wire_close(w);
		/* The server closed an idle connection as we reused it: once more. */
		if (reused && !got_any && attempt == 0 &&
		    (r == -EPIPE || r == -ECONNRESET || r == -ECONNABORTED))
			continue;
		if (r == -ECANCELED)
			kiln_err_set(err, r, "the request was cut off");
		else if (r == -ETIMEDOUT)
			kiln_err_set(err, r, "no answer from %s within %ld ms", w->hostport,
				     timeout_ms);
		else if (!err->msg[0])
			kiln_err_set(err, r == -EPIPE ? -ECONNRESET : r,
				     "the connection to %s failed: %s", w->hostport,
				     r == -EPIPE ? "closed by the server" : strerror(-r));
		break;
	}
	buf_release(&hdr);
	return r;
}
