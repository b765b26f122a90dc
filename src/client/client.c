/*
 * client: libcurl under the API. One easy handle per client, reused, so
 * consecutive calls share a keep-alive connection. Bodies are bounded: a JSON
 * answer larger than 64 MiB is an error, never an unbounded allocation.
 */
#include "client.h"

#include <curl/curl.h>
#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>

#define MAX_ANSWER (64u << 20)

struct kiln_client {
	CURL *curl;
	CURLM *multi; /* runs each transfer, so that client_abort() can cut it */
	atomic_bool aborted;
	char *server; /* without a trailing '/' */
	char *auth;   /* "Authorization: Bearer ..." or NULL */
	long timeout_ms;
	char errbuf[CURL_ERROR_SIZE];
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

/* ---- configuration -------------------------------------------------------- */

char *client_config_path(void)
{
	const char *p = getenv("KILN_CONFIG");
	if (p && *p)
		return xstrdup(p);
	const char *x = getenv("XDG_CONFIG_HOME");
	if (x && *x)
		return xasprintf("%s/kiln/config", x);
	const char *home = getenv("HOME");
	return xasprintf("%s/.config/kiln/config", home && *home ? home : "/");
}

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	size_t n = strlen(s);
	while (n && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	return s;
}

int client_config_parse(const char *path, const char *text, size_t len, char **server,
			char **token, struct kiln_err *err)
{
	struct buf b = BUF_INIT;
	int r = 0;
	if (memchr(text, '\0', len))
		return kiln_err_set(err, -EINVAL, "%s: has a NUL byte (not a text file?)", path);
	buf_append(&b, text, len);
	buf_puts(&b, ""); /* allocated, NUL-terminated even when empty */
	int line = 0;
	for (char *p = b.data; p && *p;) {
		char *nl = strchr(p, '\n');
		if (nl)
			*nl = '\0';
		line++;
		char *hash = strchr(p, '#');
		if (hash)
			*hash = '\0';
		char *l = trim(p);
		p = nl ? nl + 1 : NULL;
		if (!*l)
			continue;
		char *eq = strchr(l, '=');
		if (!eq) {
			r = kiln_err_set(err, -EINVAL, "%s:%d: expected 'key = value'", path, line);
			break;
		}
		*eq = '\0';
		char *key = trim(l), *val = trim(eq + 1);
		if (streq(key, "server")) {
			if (!*server)
				*server = xstrdup(val);
		} else if (streq(key, "token")) {
			if (!*token)
				*token = xstrdup(val);
		} else {
			r = kiln_err_set(err, -EINVAL,
					 "%s:%d: unknown key '%s' (expected server or token)", path,
					 line, key);
			break;
		}
	}
	buf_release(&b);
	return r < 0 ? r : 0;
}

static int read_config_file(const char *path, char **server, char **token, struct kiln_err *err)
{
	struct buf b = BUF_INIT;
	int r = read_file(path, 1 << 20, &b);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return kiln_err_set(err, r, "cannot read the config file '%s': %s", path,
				    strerror(-r));
	r = client_config_parse(path, b.data ? b.data : "", b.len, server, token, err);
	buf_release(&b);
	return r;
}

int client_config_load(const char *flag_server, const char *flag_token,
		       struct client_config *ret, struct kiln_err *err)
{
	struct client_config c = {0};
	if (flag_server && *flag_server) {
		c.server = xstrdup(flag_server);
		c.source = xstrdup("--server");
	}
	if (flag_token && *flag_token)
		c.token = xstrdup(flag_token);
	const char *e = getenv("KILN_ADDR");
	if (!c.server && e && *e) {
		c.server = xstrdup(e);
		c.source = xstrdup("KILN_ADDR");
	}
	e = getenv("KILN_TOKEN");
	if (!c.token && e && *e)
		c.token = xstrdup(e);
	if (!c.server || !c.token) {
		_cleanup_free_ char *path = client_config_path();
		bool had = c.server != NULL;
		int r = read_config_file(path, &c.server, &c.token, err);
		if (r < 0) {
			client_config_release(&c);
			return r;
		}
		if (!had && c.server)
			c.source = xstrdup(path);
	}
	if (!c.server) {
		c.server = xstrdup(CLIENT_DEFAULT_SERVER);
		c.source = xstrdup("default");
	}
	*ret = c;
	return 0;
}

void client_config_release(struct client_config *c)
{
	free(c->server);
	free(c->token);
	free(c->source);
	memset(c, 0, sizeof(*c));
}

/* ---- the client ----------------------------------------------------------- */

int client_new(const char *server, const char *token, struct kiln_client **ret,
	       struct kiln_err *err)
{
	pthread_once(&curl_once, curl_init_once);
	if (!server || !*server)
		return kiln_err_set(err, -EINVAL, "no server address");
	struct kiln_client *c = xcalloc(1, sizeof(*c));
	if (strstr(server, "://")) {
		if (!startswith(server, "http://") && !startswith(server, "https://")) {
			free(c);
			return kiln_err_set(err, -EINVAL,
					    "server address '%s': only http:// and https:// are "
					    "supported",
					    server);
		}
		c->server = xstrdup(server);
	} else {
		c->server = xasprintf("http://%s", server);
	}
	size_t n = strlen(c->server);
	while (n && c->server[n - 1] == '/')
		c->server[--n] = '\0';
	if (token && *token)
		c->auth = xasprintf("Authorization: Bearer %s", token);
	c->curl = curl_easy_init();
	c->multi = curl_multi_init();
	if (!c->curl || !c->multi) {
		client_free(c);
		return kiln_err_set(err, -ENOMEM, "cannot initialise libcurl");
	}
	c->timeout_ms = 60000;
	*ret = c;
	return 0;
}

void client_free(struct kiln_client *c)
{
	if (!c)
		return;
	if (c->curl)
		curl_easy_cleanup(c->curl);
	if (c->multi)
		curl_multi_cleanup(c->multi);
	free(c->server);
	free(c->auth);
	free(c);
}

const char *client_server(const struct kiln_client *c) { return c->server; }

void client_abort(struct kiln_client *c)
{
	atomic_store(&c->aborted, true);
	curl_multi_wakeup(c->multi);
}

void client_reset_abort(struct kiln_client *c) { atomic_store(&c->aborted, false); }

/*
 * curl_easy_perform, through the client's multi handle: the same transfer
 * (the easy handle keeps its connection), but client_abort() can wake the
 * wait and end it.
 */
static CURLcode run_transfer(struct kiln_client *c)
{
	if (atomic_load(&c->aborted))
		return CURLE_ABORTED_BY_CALLBACK;
	curl_multi_add_handle(c->multi, c->curl);
	CURLcode code = CURLE_OK;
	for (;;) {
		int running = 0;
		if (curl_multi_perform(c->multi, &running) != CURLM_OK) {
			code = CURLE_RECV_ERROR;
			break;
		}
		int left;
		CURLMsg *msg;
		bool done = false;
		while ((msg = curl_multi_info_read(c->multi, &left)))
			if (msg->msg == CURLMSG_DONE) {
				code = msg->data.result;
				done = true;
			}
		if (done || !running)
			break;
		if (!atomic_load(&c->aborted))
			curl_multi_poll(c->multi, NULL, 0, 1000, NULL);
		if (atomic_load(&c->aborted)) {
			code = CURLE_ABORTED_BY_CALLBACK;
			break;
		}
	}
	curl_multi_remove_handle(c->multi, c->curl);
	return code;
}

void client_set_timeout(struct kiln_client *c, long ms) { c->timeout_ms = ms; }

char *client_escape(const char *s, bool keep_slash)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "");
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~' ||
		    (keep_slash && *p == '/'))
			buf_putc(&b, (char)*p);
		else
			buf_printf(&b, "%%%02X", *p);
	}
	return buf_steal(&b);
}

struct sink {
	struct buf body;
	bool too_big;
	/* streaming */
	int (*on_data)(const void *, size_t, void *);
	void *ud;
	bool stream_ok; /* stream the body only for a 2xx answer */
	CURL *curl;
	bool checked;
	bool stopped;
};

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *p)
{
	struct sink *s = p;
	size_t n = size * nmemb;
	if (s->on_data) {
		if (!s->checked) {
			long status = 0;
			curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &status);
			s->stream_ok = status >= 200 && status < 300;
			s->checked = true;
		}
		if (s->stream_ok) {
			if (s->on_data(ptr, n, s->ud) < 0) {
				s->stopped = true;
				return 0; /* stops the transfer */
			}
			return n;
		}
	}
	if (s->body.len + n > MAX_ANSWER) {
		s->too_big = true;
		return 0;
	}
	buf_append(&s->body, ptr, n);
	return n;
}

static int status_errno(long status)
{
	switch (status) {
	case 400: return -EINVAL;
	case 404: return -ENOENT;
	case 409: return -ESTALE;
	case 413: return -EFBIG;
	default: return status >= 500 ? -EIO : -EPROTO;
	}
}

static int curl_errno(CURLcode rc)
{
	switch (rc) {
	case CURLE_COULDNT_CONNECT: return -ECONNREFUSED;
	case CURLE_OPERATION_TIMEDOUT: return -ETIMEDOUT;
	case CURLE_COULDNT_RESOLVE_HOST: return -EHOSTUNREACH;
	default: return -EIO;
	}
}

/* Turns a non-2xx answer into err, using the server's {"error":{...}}. */
static int answer_error(struct kiln_client *c, long status, const json_t *body,
			const struct buf *raw, struct kiln_err *err)
{
	const json_t *e = json_object_get(body, "error");
	const char *msg = json_string_value(json_object_get(e, "message"));
	const char *code = json_string_value(json_object_get(e, "code"));
	if (msg)
		return kiln_err_set(err, status_errno(status), "%s", msg);
	(void)code;
	return kiln_err_set(err, status_errno(status), "the server at %s answered HTTP %ld%s%.*s",
			    c->server, status, raw && raw->len ? ": " : "",
			    raw ? (int)MIN(raw->len, 200) : 0, raw && raw->data ? raw->data : "");
}

static void setup(struct kiln_client *c, const char *method, const char *path,
		  struct curl_slist **hdrs, const char *content_type, struct sink *sink)
{
	CURL *h = c->curl;
	curl_easy_reset(h);
	_cleanup_free_ char *url = xasprintf("%s%s", c->server, path);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->errbuf);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, sink);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "kiln/" KILN_VERSION);
	if (streq(method, "GET"))
		curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
	*hdrs = curl_slist_append(*hdrs, "Expect:");
	if (content_type) {
		_cleanup_free_ char *ct = xasprintf("Content-Type: %s", content_type);
		*hdrs = curl_slist_append(*hdrs, ct);
	}
	if (c->auth)
		*hdrs = curl_slist_append(*hdrs, c->auth);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, *hdrs);
	sink->curl = h;
	c->errbuf[0] = '\0';
}

/* Runs the prepared transfer; parses a JSON answer into *ret. */
static int perform(struct kiln_client *c, struct sink *sink, long *ret_status, json_t **ret,
		   struct kiln_err *err)
{
	CURLcode rc = run_transfer(c);
	long status = 0;
	curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
	if (ret_status)
		*ret_status = status;
	if (rc == CURLE_ABORTED_BY_CALLBACK)
		return kiln_err_set(err, -ECANCELED, "request to %s stopped", c->server);
	if (rc != CURLE_OK && !(sink->stopped && rc == CURLE_WRITE_ERROR)) {
		if (sink->too_big)
			return kiln_err_set(err, -EFBIG, "the answer of %s is larger than 64 MiB",
					    c->server);
		return kiln_err_set(err, curl_errno(rc),
				    "cannot reach the kiln server at %s: %s (start one with 'kiln "
				    "server', or set --server / KILN_ADDR)",
				    c->server, c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc));
	}
	json_t *body = NULL;
	if (sink->body.len) {
		json_error_t jerr;
		body = json_loadb(sink->body.data, sink->body.len, 0, &jerr);
	}
	if (status < 200 || status >= 300) {
		int r = answer_error(c, status, body, &sink->body, err);
		if (ret)
			*ret = body; /* the error body, for callers that want its fields */
		else
			json_decref(body);
		return r;
	}
	if (ret)
		*ret = body;
	else
		json_decref(body);
	return 0;
}

int client_request(struct kiln_client *c, const char *method, const char *path,
		   const char *content_type, const void *body, size_t len, long *ret_status,
		   json_t **ret, struct kiln_err *err)
{
	struct sink sink = {.body = BUF_INIT};
	struct curl_slist *hdrs = NULL;
	setup(c, method, path, &hdrs, body ? content_type : NULL, &sink);
	if (body) {
		curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
	} else if (!streq(method, "GET")) {
		curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, "");
		curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
	}
	if (ret)
		*ret = NULL;
	int r = perform(c, &sink, ret_status, ret, err);
	curl_slist_free_all(hdrs);
	buf_release(&sink.body);
	return r;
}

int client_json(struct kiln_client *c, const char *method, const char *path, json_t *body,
		long *ret_status, json_t **ret, struct kiln_err *err)
{
	_cleanup_free_ char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	return client_request(c, method, path, "application/json", text, text ? strlen(text) : 0,
			      ret_status, ret, err);
}

int client_stream(struct kiln_client *c, const char *path, const char *accept,
		  int (*on_data)(const void *data, size_t len, void *ud), void *ud,
		  long *ret_status, struct kiln_err *err)
{
	struct sink sink = {.body = BUF_INIT, .on_data = on_data, .ud = ud};
	struct curl_slist *hdrs = NULL;
	if (accept) {
		_cleanup_free_ char *a = xasprintf("Accept: %s", accept);
		hdrs = curl_slist_append(hdrs, a);
	}
	long saved = c->timeout_ms;
	c->timeout_ms = 0; /* a followed log may take as long as its job */
	setup(c, "GET", path, &hdrs, NULL, &sink);
	c->timeout_ms = saved;
	int r = perform(c, &sink, ret_status, NULL, err);
	curl_slist_free_all(hdrs);
	buf_release(&sink.body);
	return r;
}

static size_t read_fd_cb(char *buf, size_t size, size_t nitems, void *p)
{
	int fd = *(int *)p;
	for (;;) {
		ssize_t n = read(fd, buf, size * nitems);
		if (n >= 0)
			return (size_t)n;
		if (errno != EINTR)
			return CURL_READFUNC_ABORT;
	}
}

int client_upload(struct kiln_client *c, const char *path, int fd, uint64_t size,
		  long *ret_status, json_t **ret, struct kiln_err *err)
{
	struct sink sink = {.body = BUF_INIT};
	struct curl_slist *hdrs = NULL;
	setup(c, "PUT", path, &hdrs, "application/octet-stream", &sink);
	curl_easy_setopt(c->curl, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(c->curl, CURLOPT_READFUNCTION, read_fd_cb);
	curl_easy_setopt(c->curl, CURLOPT_READDATA, &fd);
	curl_easy_setopt(c->curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
	if (ret)
		*ret = NULL;
	int r = perform(c, &sink, ret_status, ret, err);
	curl_slist_free_all(hdrs);
	buf_release(&sink.body);
	return r;
}

/* ---- the agent protocol --------------------------------------------------- */

void client_lease_release(struct client_lease *l)
{
	if (!l)
		return;
	free(l->name);
	json_decref(l->spec);
	memset(l, 0, sizeof(*l));
}

int client_agent_register(struct kiln_client *c, const char *name, char *const *labels,
			  size_t n_labels, const struct proto_capacity *cap, int64_t *ret_id,
			  uint64_t *ret_lease_ttl_ms, struct kiln_err *err)
{
	json_t *l = json_array();
	for (size_t i = 0; i < n_labels; i++)
		json_array_append_new(l, json_string(labels[i]));
	json_t *body = json_pack("{s:s,s:o,s:o}", "name", name, "labels", l, "capacity",
				 proto_capacity_to_json(cap));
	json_t *ans = NULL;
	int r = client_json(c, "POST", "/v1/agents", body, NULL, &ans, err);
	json_decref(body);
	if (r < 0)
		return r;
	json_t *id = json_object_get(ans, "id");
	if (!json_is_integer(id)) {
		json_decref(ans);
		return kiln_err_set(err, -EPROTO, "the server's answer has no agent id");
	}
	*ret_id = json_integer_value(id);
	if (ret_lease_ttl_ms)
		*ret_lease_ttl_ms = (uint64_t)json_integer_value(json_object_get(ans, "lease_ttl_ms"));
	json_decref(ans);
	return 0;
}

int client_lease(struct kiln_client *c, int64_t agent_id, uint64_t wait_ms,
		 struct client_lease *ret, struct kiln_err *err)
{
	_cleanup_free_ char *path = xasprintf("/v1/agents/%" PRId64 "/lease", agent_id);
	json_t *body = json_pack("{s:I}", "wait_ms", (json_int_t)wait_ms);
	json_t *ans = NULL;
	long status = 0, saved = c->timeout_ms;
	if (c->timeout_ms)
		c->timeout_ms += (long)wait_ms;
	int r = client_json(c, "POST", path, body, &status, &ans, err);
	c->timeout_ms = saved;
	json_decref(body);
	if (r < 0)
		return r;
	if (status == 204 || !ans) {
		json_decref(ans);
		return 0;
	}
	json_t *job = json_object_get(ans, "job");
	struct client_lease l = {0};
	l.job_id = json_integer_value(json_object_get(job, "id"));
	l.fence = json_integer_value(json_object_get(ans, "fence"));
	l.attempt = json_integer_value(json_object_get(ans, "attempt"));
	l.max_attempts = json_integer_value(json_object_get(job, "max_attempts"));
	l.timeout_ms = (uint64_t)json_integer_value(json_object_get(job, "timeout_ms"));
	l.lease_ttl_ms = (uint64_t)json_integer_value(json_object_get(ans, "lease_ttl_ms"));
	const char *name = json_string_value(json_object_get(job, "name"));
	l.name = xstrdup(name ? name : "");
	l.spec = json_incref(json_object_get(job, "spec"));
	json_decref(ans);
	if (l.job_id <= 0 || l.fence <= 0) {
		client_lease_release(&l);
		return kiln_err_set(err, -EPROTO, "the server's lease has no job id or fence");
	}
	*ret = l;
	return 1;
}

int client_heartbeat(struct kiln_client *c, int64_t agent_id, const int64_t *ids,
		     const int64_t *fences, size_t n, int64_t wait_ms, json_t **ret,
		     struct kiln_err *err)
{
	_cleanup_free_ char *path = xasprintf("/v1/agents/%" PRId64 "/heartbeat", agent_id);
	json_t *jobs = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(jobs, json_pack("{s:I,s:I}", "id", (json_int_t)ids[i],
						       "fence", (json_int_t)fences[i]));
	json_t *body = json_pack("{s:o}", "jobs", jobs);
	if (wait_ms >= 0)
		json_object_set_new(body, "wait_ms", json_integer(wait_ms));
	long saved = c->timeout_ms;
	if (c->timeout_ms && wait_ms > 0)
		c->timeout_ms += (long)wait_ms;
	int r = client_json(c, "POST", path, body, NULL, ret, err);
	c->timeout_ms = saved;
	json_decref(body);
	return r;
}

int client_job_running(struct kiln_client *c, int64_t job_id, int64_t fence,
		       struct kiln_err *err)
{
	_cleanup_free_ char *path = xasprintf("/v1/jobs/%" PRId64 "/status", job_id);
	json_t *body = json_pack("{s:I,s:s}", "fence", (json_int_t)fence, "state", "running");
	int r = client_json(c, "POST", path, body, NULL, NULL, err);
	json_decref(body);
	return r;
}

int client_log_append(struct kiln_client *c, int64_t job_id, int64_t fence, uint64_t offset,
		      const void *data, size_t len, uint64_t *ret_size, struct kiln_err *err)
{
	_cleanup_free_ char *path = xasprintf("/v1/jobs/%" PRId64 "/log?fence=%" PRId64
					      "&offset=%" PRIu64,
					      job_id, fence, offset);
	json_t *ans = NULL;
	long status = 0;
	int r = client_request(c, "POST", path, "application/octet-stream", data ? data : "", len,
			       &status, &ans, err);
	json_t *e = json_object_get(ans, "error");
	if (r == -ESTALE && json_is_string(json_object_get(e, "code")) &&
	    streq(json_string_value(json_object_get(e, "code")), "log_gap")) {
		if (ret_size)
			*ret_size = (uint64_t)json_integer_value(json_object_get(e, "size"));
		r = -ERANGE;
		if (err)
			err->code = r;
	} else if (r >= 0 && ret_size) {
		*ret_size = (uint64_t)json_integer_value(json_object_get(ans, "size"));
	}
	json_decref(ans);
	return r;
}

int client_artifact_put(struct kiln_client *c, int64_t job_id, int64_t fence, const char *path,
			int fd, uint64_t size, const char *sha256, struct kiln_err *err)
{
	_cleanup_free_ char *esc = client_escape(path, true);
	_cleanup_free_ char *url = xasprintf("/v1/jobs/%" PRId64 "/artifacts/%s?fence=%" PRId64
					     "%s%s",
					     job_id, esc, fence, sha256 ? "&sha256=" : "",
					     sha256 ? sha256 : "");
	return client_upload(c, url, fd, size, NULL, NULL, err);
}

int client_job_complete(struct kiln_client *c, int64_t job_id, int64_t fence,
			enum job_state state, bool has_exit_code, int exit_code,
			const char *message, bool *ret_duplicate, struct kiln_err *err)
{
	_cleanup_free_ char *path = xasprintf("/v1/jobs/%" PRId64 "/complete", job_id);
	json_t *body = json_pack("{s:I,s:s}", "fence", (json_int_t)fence, "state",
				 job_state_to_string(state));
	if (has_exit_code)
		json_object_set_new(body, "exit_code", json_integer(exit_code));
	if (message)
		json_object_set_new(body, "message", json_string(message));
	json_t *ans = NULL;
	int r = client_json(c, "POST", path, body, NULL, &ans, err);
	json_decref(body);
	if (r >= 0 && ret_duplicate)
		*ret_duplicate = json_is_true(json_object_get(ans, "duplicate"));
	json_decref(ans);
	return r;
}
