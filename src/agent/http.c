/*
 * http: the agent's transport to the server — a small libcurl wrapper.
 *
 * One struct http per thread (a curl handle is not shared between threads):
 * the lease loop, the heartbeat thread, each job's runner and shipper. The
 * easy handle lives as long as the struct, so its connection is kept alive
 * and reused (one TCP connection per thread, no handshake per call).
 *
 * Requests run through a private multi handle so that another thread can
 * interrupt one at once (http_abort(): a flag and curl_multi_wakeup()); a
 * long-poll must not hold up a stop for its whole wait.
 *
 * Errors: a transport failure (refused, reset, timed out, aborted) is a
 * negative errno with a sentence in err; any HTTP answer, 4xx and 5xx
 * included, is success with the status in the reply.
 */
#include "agent-internal.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>

struct http {
	CURLM *multi;
	CURL *easy;
	char *base; /* "http://host:port", no trailing slash */
	struct curl_slist *headers_json, *headers_raw;
	atomic_bool aborted;
	char errbuf[CURL_ERROR_SIZE];
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static void global_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

char *http_base_url(const char *server)
{
	bool scheme = startswith(server, "http://") || startswith(server, "https://");
	char *u = xasprintf("%s%s", scheme ? "" : "http://", server);
	size_t n = strlen(u);
	while (n > 0 && u[n - 1] == '/')
		u[--n] = '\0';
	return u;
}

struct http *http_new(const char *base_url, const char *token)
{
	pthread_once(&global_once, global_init);
	struct http *h = xcalloc(1, sizeof(*h));
	h->base = xstrdup(base_url);
	h->multi = curl_multi_init();
	h->easy = curl_easy_init();
	if (!h->multi || !h->easy)
		abort(); /* allocation failure, by kiln's policy */
	struct curl_slist *j = NULL, *r = NULL;
	if (token && *token) {
		_cleanup_free_ char *auth = xasprintf("Authorization: Bearer %s", token);
		j = curl_slist_append(j, auth);
		r = curl_slist_append(r, auth);
	}
	j = curl_slist_append(j, "Content-Type: application/json");
	r = curl_slist_append(r, "Content-Type: application/octet-stream");
	/* No "Expect: 100-continue" round trip before bodies. */
	j = curl_slist_append(j, "Expect:");
	r = curl_slist_append(r, "Expect:");
	h->headers_json = j;
	h->headers_raw = r;
	return h;
}

void http_free(struct http *h)
{
	if (!h)
		return;
	curl_easy_cleanup(h->easy);
	curl_multi_cleanup(h->multi);
	curl_slist_free_all(h->headers_json);
	curl_slist_free_all(h->headers_raw);
	free(h->base);
	free(h);
}

const char *http_base(const struct http *h) { return h->base; }

void http_abort(struct http *h)
{
	atomic_store(&h->aborted, true);
	curl_multi_wakeup(h->multi);
}

void http_reset_abort(struct http *h) { atomic_store(&h->aborted, false); }

bool http_aborted(const struct http *h) { return atomic_load(&h->aborted); }

void http_reply_release(struct http_reply *r)
{
	buf_release(&r->body);
	json_decref(r->json);
	r->json = NULL;
	r->status = 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
	struct http_reply *r = ud;
	size_t len = size * n;
	if (r->body.len + len > HTTP_REPLY_MAX)
		return 0; /* fails the transfer: the server never sends this much */
	buf_append(&r->body, p, len);
	return len;
}

struct upload_src {
	int fd;
	uint64_t left;
};

static size_t on_read(char *p, size_t size, size_t n, void *ud)
{
	struct upload_src *u = ud;
	size_t want = size * n;
	if ((uint64_t)want > u->left)
		want = (size_t)u->left;
	if (want == 0)
		return 0;
	ssize_t k;
	do
		k = read(u->fd, p, want);
	while (k < 0 && errno == EINTR);
	if (k <= 0)
		return CURL_READFUNC_ABORT; /* the file shrank or failed: fail the upload */
	u->left -= (uint64_t)k;
	return (size_t)k;
}

/* Runs the transfer set up on h->easy through the multi handle. */
static int perform(struct http *h, const char *what, struct http_reply *ret, struct kiln_err *err)
{
	if (atomic_load(&h->aborted))
		return kiln_err_set(err, -ECANCELED, "%s: stopped", what);
	curl_multi_add_handle(h->multi, h->easy);
	CURLcode code = CURLE_OK;
	bool done = false;
	while (!done) {
		int running = 0;
		CURLMcode mc = curl_multi_perform(h->multi, &running);
		if (mc != CURLM_OK) {
			code = CURLE_RECV_ERROR;
			break;
		}
		int q;
		CURLMsg *msg;
		while ((msg = curl_multi_info_read(h->multi, &q)))
			if (msg->msg == CURLMSG_DONE) {
				code = msg->data.result;
				done = true;
			}
		if (done || !running)
			break;
		if (atomic_load(&h->aborted)) {
			code = CURLE_ABORTED_BY_CALLBACK;
			break;
		}
		curl_multi_poll(h->multi, NULL, 0, 1000, NULL);
		if (atomic_load(&h->aborted)) {
			code = CURLE_ABORTED_BY_CALLBACK;
			break;
		}
	}
	curl_multi_remove_handle(h->multi, h->easy);
	if (code == CURLE_ABORTED_BY_CALLBACK)
		return kiln_err_set(err, -ECANCELED, "%s: stopped", what);
	if (code != CURLE_OK) {
		int r = code == CURLE_OPERATION_TIMEDOUT	? -ETIMEDOUT
			: code == CURLE_COULDNT_CONNECT		? -ECONNREFUSED
			: code == CURLE_COULDNT_RESOLVE_HOST	? -EHOSTUNREACH
								: -EIO;
		return kiln_err_set(err, r, "%s: %s", what,
				    h->errbuf[0] ? h->errbuf : curl_easy_strerror(code));
	}
	curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &ret->status);
	return 0;
}

static void setup(struct http *h, const char *method, const char *url, long timeout_ms,
		  struct http_reply *ret)
{
	CURL *e = h->easy;
	/* Keep the connection cache and DNS cache; reset the rest. */
	curl_easy_reset(e);
	h->errbuf[0] = '\0';
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, h->errbuf);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, ret);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
}

int http_request(struct http *h, const char *method, const char *path, bool json_body,
		 const void *body, size_t len, long timeout_ms, struct http_reply *ret,
		 struct kiln_err *err)
{
	memset(ret, 0, sizeof(*ret));
	_cleanup_free_ char *url = xasprintf("%s%s", h->base, path);
	_cleanup_free_ char *what = xasprintf("%s %s", method, url);
	setup(h, method, url, timeout_ms, ret);
	CURL *e = h->easy;
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, json_body ? h->headers_json : h->headers_raw);
	if (body || streq(method, "POST") || streq(method, "PUT")) {
		curl_easy_setopt(e, CURLOPT_POST, 1L);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? (const char *)body : "");
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	}
	int r = perform(h, what, ret, err);
	if (r < 0) {
		http_reply_release(ret);
		return r;
	}
	if (ret->body.len && ret->body.data[0] == '{')
		ret->json = json_loadb(ret->body.data, ret->body.len, 0, NULL);
	return 0;
}

int http_json(struct http *h, const char *method, const char *path, json_t *body,
	      long timeout_ms, struct http_reply *ret, struct kiln_err *err)
{
	_cleanup_free_ char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	return http_request(h, method, path, true, text, text ? strlen(text) : 0, timeout_ms, ret,
			    err);
}

int http_put_fd(struct http *h, const char *path, int fd, uint64_t size, long timeout_ms,
		struct http_reply *ret, struct kiln_err *err)
{
	memset(ret, 0, sizeof(*ret));
	_cleanup_free_ char *url = xasprintf("%s%s", h->base, path);
	_cleanup_free_ char *what = xasprintf("PUT %s", url);
	setup(h, "PUT", url, timeout_ms, ret);
	struct upload_src src = {.fd = fd, .left = size};
	CURL *e = h->easy;
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->headers_raw);
	curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
	curl_easy_setopt(e, CURLOPT_READDATA, &src);
	curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
	int r = perform(h, what, ret, err);
	if (r < 0) {
		http_reply_release(ret);
		return r;
	}
	if (ret->body.len && ret->body.data[0] == '{')
		ret->json = json_loadb(ret->body.data, ret->body.len, 0, NULL);
	return 0;
}

const char *http_error_code(const struct http_reply *r)
{
	return json_string_value(json_object_get(json_object_get(r->json, "error"), "code"));
}

const char *http_error_message(const struct http_reply *r)
{
	const char *m =
		json_string_value(json_object_get(json_object_get(r->json, "error"), "message"));
	return m ? m : (r->body.len ? r->body.data : "(no body)");
}

char *url_escape_path(const char *s)
{
	struct buf b = BUF_INIT;
	buf_reserve(&b, strlen(s) + 1);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || strchr("-._~/", *p))
			buf_putc(&b, (char)*p);
		else
			buf_printf(&b, "%%%02X", *p);
	}
	return buf_steal(&b);
}
