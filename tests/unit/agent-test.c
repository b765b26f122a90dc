/* Unit tests of src/agent: the host probe and its labels; the wire client. */
#include "tap.h"

#include "agent/agent-internal.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

static bool has(char **labels, size_t n, const char *want)
{
	for (size_t i = 0; i < n; i++)
		if (streq(labels[i], want))
			return true;
	return false;
}

static void free_labels(char **labels, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(labels[i]);
	free(labels);
}

TEST(probe_without_nvml)
{
	setenv("KILN_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1", 1);
	struct host_info h;
	CHECK_EQ(host_probe(&h), 0);
	CHECK(!h.nvml_present);
	CHECK_EQ(h.n_gpus, 0);
	CHECK(strstr(h.nvml_error, "NVML not loaded") != NULL);
	CHECK(h.cpus >= 1);
	CHECK(h.memory > 0);
	CHECK(h.arch[0] != '\0');
	char **labels = NULL;
	size_t n = 0, cap = 0;
	host_labels(&h, &labels, &n, &cap);
	CHECK(has(labels, n, "linux"));
	CHECK(!has(labels, n, "gpu"));
	free_labels(labels, n);
}

TEST(probe_with_fake_nvml)
{
	setenv("KILN_NVML_LIBRARY", FAKE_NVML_PATH, 1);
	struct host_info h;
	CHECK_EQ(host_probe(&h), 0);
	CHECK(h.nvml_present);
	CHECK_EQ(h.n_gpus, 2);
	CHECK_EQ(h.cuda_major, 12);
	CHECK_EQ(h.cuda_minor, 4);
	CHECK_STREQ(h.driver_version, "550.54.15");
	CHECK_STREQ(h.gpus[0].name, "NVIDIA H100 80GB HBM3");
	CHECK_EQ(h.gpus[0].memory, 80ULL << 30);
	CHECK(!h.gpus[0].mig_enabled);
	CHECK(h.gpus[1].mig_enabled);
	char **labels = NULL;
	size_t n = 0, cap = 0;
	host_labels(&h, &labels, &n, &cap);
	CHECK(has(labels, n, "gpu"));
	CHECK(has(labels, n, "nvidia"));
	CHECK(has(labels, n, "gpu-count:2"));
	CHECK(has(labels, n, "cuda-12"));
	CHECK(has(labels, n, "cuda:12.4"));
	CHECK(has(labels, n, "sm_90"));
	CHECK(has(labels, n, "gpu-model:nvidia-h100-80gb-hbm3"));
	CHECK(has(labels, n, "mig"));
	/* Two identical GPUs give one sm_90 label, not two. */
	size_t sm = 0;
	for (size_t i = 0; i < n; i++)
		sm += streq(labels[i], "sm_90");
	CHECK_EQ(sm, 1);
	free_labels(labels, n);
	unsetenv("KILN_NVML_LIBRARY");
}

/* ---- wire.c: the HTTP/1.1 client, against a scripted server ---------------- */

TEST(wire_parse_url)
{
	char *h, *p, *x;
	CHECK(wire_parse_url("http://127.0.0.1:8080", &h, &p, &x));
	CHECK_STREQ(h, "127.0.0.1");
	CHECK_STREQ(p, "8080");
	CHECK_STREQ(x, "");
	free(h), free(p), free(x);
	CHECK(wire_parse_url("http://[::1]:9/api", &h, &p, &x));
	CHECK_STREQ(h, "::1");
	CHECK_STREQ(p, "9");
	CHECK_STREQ(x, "/api");
	free(h), free(p), free(x);
	CHECK(wire_parse_url("http://kiln.example", &h, &p, &x));
	CHECK_STREQ(p, "80");
	free(h), free(p), free(x);
	CHECK(!wire_parse_url("https://kiln.example", &h, &p, &x));
	CHECK(!wire_parse_url("http://", &h, &p, &x));
	CHECK(!wire_parse_url("http://u:pw@host:1", &h, &p, &x));
	CHECK(!wire_parse_url("http://host:x1", &h, &p, &x));
	CHECK(!wire_parse_url("http://host:123456", &h, &p, &x));
	CHECK(!wire_parse_url("http://[::1", &h, &p, &x));
	CHECK(!wire_parse_url("http://host?q", &h, &p, &x));
}

/* One scripted answer per request: the bytes to send, then whether to close. */
struct answer {
	const char *bytes; /* NULL: send nothing (hang until closed) */
	bool close_after;
};

struct server {
	int lfd;
	char url[64];
	const struct answer *script;
	size_t n;
	int accepts;
	struct buf requests; /* every request received, concatenated */
	pthread_t th;
};

/* Reads one request (headers, then Content-Length bytes); false on EOF. */
static bool read_request(int fd, struct buf *all)
{
	struct buf b = BUF_INIT;
	char c[4096];
	char *e;
	while (!(e = b.len ? strstr(b.data, "\r\n\r\n") : NULL)) {
		ssize_t k = read(fd, c, sizeof(c));
		if (k <= 0) {
			buf_release(&b);
			return false;
		}
		buf_append(&b, c, (size_t)k);
	}
	size_t hl = (size_t)(e - b.data) + 4, want = 0;
	char *cl = strcasestr(b.data, "Content-Length:");
	if (cl && cl < e)
		want = strtoul(cl + 15, NULL, 10);
	while (b.len < hl + want) {
		ssize_t k = read(fd, c, sizeof(c));
		if (k <= 0)
			break;
		buf_append(&b, c, (size_t)k);
	}
	buf_append(all, b.data, b.len);
	buf_release(&b);
	return true;
}

static void *server_main(void *p)
{
	struct server *s = p;
	size_t i = 0;
	while (i < s->n) {
		int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			break;
		s->accepts++;
		while (i < s->n && read_request(fd, &s->requests)) {
			const struct answer *a = &s->script[i++];
			if (!a->bytes) {
				char c;
				(void)!read(fd, &c, 1); /* until the client gives up */
				break;
			}
			(void)!write(fd, a->bytes, strlen(a->bytes));
			if (a->close_after)
				break;
		}
		close(fd);
	}
	return NULL;
}

static void server_start(struct server *s, const struct answer *script, size_t n)
{
	memset(s, 0, sizeof(*s));
	s->script = script;
	s->n = n;
	s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof(a);
	CHECK_EQ(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	CHECK_EQ(listen(s->lfd, 8), 0);
	getsockname(s->lfd, (struct sockaddr *)&a, &l);
	snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%u", ntohs(a.sin_port));
	pthread_create(&s->th, NULL, server_main, s);
}

static void server_stop(struct server *s)
{
	shutdown(s->lfd, SHUT_RDWR);
	pthread_join(s->th, NULL);
	close(s->lfd);
}

static int req(struct wire *w, const char *body, long *status, struct buf *ans,
	       struct kiln_err *err)
{
	buf_reset(ans);
	return wire_request(w, "POST", "/v1/x", "application/json", body, body ? strlen(body) : 0,
			    -1, 5000, status, ans, err);
}

TEST(wire_keep_alive_chunked_and_reconnects)
{
	static const struct answer script[] = {
		{"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"a\":true}\n", false},
		{"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked"
		 "\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n", false},
		{"HTTP/1.1 204 No Content\r\n\r\n", true}, /* then the server closes */
		{"HTTP/1.0 200 OK\r\n\r\nto the end", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false},
	};
	struct server s;
	server_start(&s, script, 5);
	struct wire *w = wire_new(s.url, "tok");
	CHECK(w != NULL);
	if (!w)
		return;
	long st = 0;
	struct buf ans = BUF_INIT;
	struct kiln_err err = {0};
	CHECK_EQ(req(w, "{\"n\":1}", &st, &ans, &err), 0);
	CHECK_EQ(st, 200);
	CHECK_STREQ(ans.data, "{\"a\":true}\n");
	CHECK_EQ(req(w, NULL, &st, &ans, &err), 0);
	CHECK_EQ(st, 409);
	CHECK_STREQ(ans.data, "hello world");
	CHECK_EQ(req(w, "x", &st, &ans, &err), 0);
	CHECK_EQ(st, 204);
	CHECK_EQ(ans.len, 0);
	/* The server closed that connection: the next request is sent once more
	 * on a new one (no answer byte came on the old one). */
	CHECK_EQ(req(w, "y", &st, &ans, &err), 0);
	CHECK_EQ(st, 200);
	CHECK_STREQ(ans.data, "to the end");
	CHECK_EQ(req(w, "z", &st, &ans, &err), 0);
	CHECK_STREQ(ans.data, "ok");
	wire_free(w);
	server_stop(&s);
	CHECK_EQ(s.accepts, 3);
	buf_release(&s.requests);
	buf_release(&ans);
}

TEST(wire_request_bytes_and_upload)
{
	static const struct answer script[] = {
		{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", true},
	};
	struct server s;
	server_start(&s, script, 2);
	struct wire *w = wire_new(s.url, "sekrit");
	long st = 0;
	struct buf ans = BUF_INIT;
	struct kiln_err err = {0};
	CHECK_EQ(req(w, "{}", &st, &ans, &err), 0);
	char path[] = "/tmp/kiln-wire-test.XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	unlink(path);
	CHECK_EQ(write_all(fd, "file-bytes-0123456789", 21), 0);
	lseek(fd, 5, SEEK_SET);
	CHECK_EQ(wire_request(w, "PUT", "/v1/up", "application/octet-stream", NULL, 16, fd, 5000,
			      &st, &ans, &err),
		 0);
	close(fd);
	CHECK_EQ(st, 200);
	wire_free(w);
	server_stop(&s);
	const char *r = s.requests.data;
	CHECK(r && strstr(r, "POST /v1/x HTTP/1.1\r\n") == r);
	CHECK(r && strstr(r, "\r\nHost: 127.0.0.1:") != NULL);
	CHECK(r && strstr(r, "\r\nAuthorization: Bearer sekrit\r\n") != NULL);
	CHECK(r && strstr(r, "\r\nContent-Length: 2\r\n") != NULL);
	CHECK(r && strstr(r, "\r\n\r\n{}PUT /v1/up HTTP/1.1\r\n") != NULL);
	CHECK(r && strstr(r, "\r\nContent-Length: 16\r\n") != NULL);
	CHECK(r && strstr(r, "\r\n\r\nbytes-0123456789") != NULL);
	buf_release(&s.requests);
	buf_release(&ans);
}

TEST(wire_bad_answers_timeouts_and_refusals)
{
	static const struct answer script[] = {
		{"SMTP ready\r\n\r\n", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", true},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true},
		{NULL, true}, /* no answer */
	};
	struct server s;
	server_start(&s, script, 5);
	struct wire *w = wire_new(s.url, NULL);
	long st = 0;
	struct buf ans = BUF_INIT;
	struct kiln_err err = {0};
	CHECK_EQ(req(w, "a", &st, &ans, &err), -EPROTO);
	CHECK(strstr(err.msg, "not HTTP") != NULL);
	CHECK_EQ(req(w, "a", &st, &ans, &err), -EPROTO);
	CHECK(strstr(err.msg, "Content-Length") != NULL);
	CHECK_EQ(req(w, "a", &st, &ans, &err), -EPROTO);
	CHECK(strstr(err.msg, "chunk") != NULL);
	CHECK(req(w, "a", &st, &ans, &err) < 0); /* closed before the body's end */
	CHECK(err.msg[0] != '\0');
	uint64_t t0 = now_mono_ns();
	CHECK_EQ(wire_request(w, "POST", "/", NULL, NULL, 0, -1, 200, &st, &ans, &err),
		 -ETIMEDOUT);
	CHECK(now_mono_ns() - t0 >= 190 * NSEC_PER_MSEC);
	wire_free(w);
	server_stop(&s);
	buf_release(&s.requests);
	/* Nothing listens there any more. */
	w = wire_new(s.url, NULL);
	CHECK_EQ(req(w, "a", &st, &ans, &err), -ECONNREFUSED);
	CHECK(strstr(err.msg, "cannot connect") != NULL);
	wire_free(w);
	buf_release(&ans);
}

static void *abort_later(void *p)
{
	struct timespec ts = {0, 100 * 1000000L};
	nanosleep(&ts, NULL);
	wire_abort(p);
	return NULL;
}

TEST(wire_abort_cuts_a_long_poll)
{
	static const struct answer script[] = {{NULL, true}};
	struct server s;
	server_start(&s, script, 1);
	struct wire *w = wire_new(s.url, NULL);
	long st = 0;
	struct buf ans = BUF_INIT;
	struct kiln_err err = {0};
	pthread_t th;
	pthread_create(&th, NULL, abort_later, w);
	CHECK_EQ(wire_request(w, "POST", "/lease", NULL, NULL, 0, -1, 0, &st, &ans, &err),
		 -ECANCELED);
	pthread_join(th, NULL);
	/* Aborted stays aborted until reset. */
	CHECK_EQ(req(w, "a", &st, &ans, &err), -ECANCELED);
	wire_reset_abort(w);
	wire_free(w);
	server_stop(&s);
	buf_release(&s.requests);
	buf_release(&ans);
}

int main(void)
{
	return tap_run();
}
