/*
 * http: the agent's calls to the server, on the API client (src/client).
 *
 * One struct http per thread (a client is one keep-alive connection, used
 * by one thread): the lease loop, the heartbeat thread, each job's runner
 * and shipper. The agent reads every answer itself — status, and the JSON
 * body also of an error — so an HTTP error is not an error here: only a
 * failure to reach the server is (-errno, with err set). A long-poll can be
 * cut off from another thread (http_abort: client_abort()).
 *
 * An http:// server is spoken to by the agent's own small client on plain
 * sockets (wire.c), so libcurl and its dependency tree are never loaded
 * (src/lazylib loads it on first use): most of the agent's memory. https://
 * goes through libcurl.
 */
#include "agent-internal.h"

#include "client/client.h"

struct http {
	struct wire *w;        /* http:// */
	struct kiln_client *c; /* https:// (libcurl) */
};

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
	struct http *h = xcalloc(1, sizeof(*h));
	h->w = wire_new(base_url, token);
	if (h->w)
		return h;
	struct kiln_err err = {0};
	/* base_url comes from http_base_url(): the only failure left is
	 * libcurl's allocation, which is kiln's abort policy. */
	if (client_new(base_url, token, &h->c, &err) < 0) {
		log_error("cannot make an HTTP client error=\"%s\"", err.msg);
		abort();
	}
	return h;
}

void http_free(struct http *h)
{
	if (!h)
		return;
	wire_free(h->w);
	if (h->c)
		client_free(h->c);
	free(h);
}

void http_abort(struct http *h)
{
	if (h->w)
		wire_abort(h->w);
	else
		client_abort(h->c);
}

void http_reset_abort(struct http *h)
{
	if (h->w)
		wire_reset_abort(h->w);
	else
		client_reset_abort(h->c);
}

/* The wire client's answer as a reply (the JSON body when there is one). */
static int wire_reply(struct wire *w, const char *method, const char *path, const char *ctype,
		      const void *body, size_t len, int fd, long timeout_ms,
		      struct http_reply *ret, struct kiln_err *err)
{
	memset(ret, 0, sizeof(*ret));
	long status = 0;
	struct buf b = BUF_INIT;
	int r = wire_request(w, method, path, ctype, body, len, fd, timeout_ms, &status, &b, err);
	if (r == 0) {
		ret->status = status;
		if (b.len && b.data[0] == '{') {
			json_error_t jerr;
			json_t *ans = json_loadb(b.data, b.len, 0, &jerr);
			if (json_is_object(ans))
				ret->json = ans;
			else
				json_decref(ans);
		}
	}
	buf_release(&b);
	return r;
}

void http_reply_release(struct http_reply *r)
{
	json_decref(r->json);
	r->json = NULL;
	r->status = 0;
}

/* An answer of any status is a reply; no answer (status 0) is the error. */
static int finish(int r, long status, json_t *ans, struct http_reply *ret)
{
	if (status == 0) {
		json_decref(ans);
		return r < 0 ? r : -EIO;
	}
	ret->status = status;
	ret->json = json_is_object(ans) ? ans : NULL;
	if (!ret->json)
		json_decref(ans);
	return 0;
}

int http_request(struct http *h, const char *method, const char *path, bool json_body,
		 const void *body, size_t len, long timeout_ms, struct http_reply *ret,
		 struct kiln_err *err)
{
	const char *ctype = json_body ? "application/json" : "application/octet-stream";
	if (h->w)
		return wire_reply(h->w, method, path, ctype, body, len, -1, timeout_ms, ret, err);
	memset(ret, 0, sizeof(*ret));
	client_set_timeout(h->c, timeout_ms);
	long status = 0;
	json_t *ans = NULL;
	int r = client_request(h->c, method, path,
			       json_body ? "application/json" : "application/octet-stream", body,
			       len, &status, &ans, err);
	return finish(r, status, ans, ret);
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
	if (h->w)
		return wire_reply(h->w, "PUT", path, "application/octet-stream", NULL, (size_t)size,
				  fd, timeout_ms, ret, err);
	memset(ret, 0, sizeof(*ret));
	client_set_timeout(h->c, timeout_ms);
	long status = 0;
	json_t *ans = NULL;
	int r = client_upload(h->c, path, fd, size, &status, &ans, err);
	return finish(r, status, ans, ret);
}

const char *http_error_code(const struct http_reply *r)
{
	return json_string_value(json_object_get(json_object_get(r->json, "error"), "code"));
}

const char *http_error_message(const struct http_reply *r)
{
	const char *m =
		json_string_value(json_object_get(json_object_get(r->json, "error"), "message"));
	return m ? m : "(no message)";
}

char *url_escape_path(const char *s) { return client_escape(s, true); }
