/*
 * http: the HTTP layer on libmicrohttpd — routing, bodies with hard limits,
 * the request context (principal, route, counters), deferred answers and
 * the connection deadlines that drop slow clients.
 *
 * MHD runs its own threads (epoll). A request moves REQ_BODY -> REQ_HANDLER
 * -> REQ_READY -> REQ_SENT. A handler either answers at once or defers: then
 * the connection is suspended when the handler returns, and whoever answers
 * later (a store callback, the timer) resumes it; MHD calls us again and the
 * response is queued. r->lock makes "suspend" always precede "resume".
 *
 * Limits: a body larger than its route allows is refused with 413 from the
 * Content-Length header, before any of it is read (or as soon as a chunked
 * body passes the limit); request line + headers must arrive within
 * header_timeout_ms of the connection opening (or of the previous response
 * plus the idle timeout), a JSON body within body_timeout_ms; past that the
 * connection is shut down. Connections beyond max_connections are refused
 * by MHD at accept.
 */
#include "server-internal.h"

/* Bytes of a refused body read (and dropped) before the client is cut off. */
#define DISCARD_MAX (16 << 20)

#include <arpa/inet.h>
#include <sodium.h>
#include <inttypes.h>
#include <netdb.h>
#include <sys/socket.h>

/* ---- responses ------------------------------------------------------------ */

static void req_ready(struct req *r)
{
	pthread_mutex_lock(&r->lock);
	r->phase = REQ_READY;
	if (r->suspended) {
		r->suspended = false;
		atomic_fetch_sub(&r->srv->suspended, 1);
		MHD_resume_connection(r->conn);
	}
	pthread_mutex_unlock(&r->lock);
}

void req_reply_response(struct req *r, unsigned status, struct MHD_Response *resp)
{
	if (r->response)
		MHD_destroy_response(r->response);
	r->status = status;
	r->response = resp;
	req_ready(r);
}

void req_reply_text(struct req *r, unsigned status, const char *content_type, char *text,
		    size_t len)
{
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	req_reply_response(r, status, resp);
}

void req_reply_json(struct req *r, unsigned status, json_t *body)
{
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (!text) {
		/* A body jansson refused (a bug: strings must be UTF-8): still an answer. */
		log_error("response body could not be encoded status=%u", status);
		status = MHD_HTTP_INTERNAL_SERVER_ERROR;
		text = xstrdup("{\"error\":{\"code\":\"internal\",\"message\":\"the response could "
			       "not be encoded\"}}");
	}
	size_t len = strlen(text);
	/* A newline makes curl output readable; JSON parsers ignore it. */
	text = xrealloc(text, len + 2);
	text[len++] = '\n';
	text[len] = '\0';
	req_reply_text(r, status, "application/json", text, len);
}

void req_reply_error(struct req *r, unsigned status, const char *code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	_cleanup_free_ char *raw = xvasprintf(fmt, ap);
	va_end(ap);
	/* Messages quote what the client sent, which need not be UTF-8. */
	struct buf msg = BUF_INIT;
	buf_put_utf8_lossy(&msg, raw, strlen(raw));
	buf_putc(&msg, '\0');
	req_reply_json(r, status, json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg.data));
	buf_release(&msg);
}

void req_defer(struct req *r) { (void)r; /* the phase stays REQ_HANDLER */ }

void http_resume(struct req *r) { req_ready(r); }

const char *req_query(struct req *r, const char *key)
{
	return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

const char *req_header(struct req *r, const char *key)
{
	return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, key);
}

int req_query_int(struct req *r, const char *key, int64_t min, int64_t max, int64_t def,
		  int64_t *ret)
{
	const char *v = req_query(r, key);
	if (!v) {
		*ret = def;
		return 0;
	}
	int64_t x;
	if (parse_int64(v, min, max, &x) < 0) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_parameter",
				"query parameter '%s': '%s' is not an integer in %" PRId64
				"..%" PRId64,
				key, v, min, max);
		return -EINVAL;
	}
	*ret = x;
	return 0;
}

int req_param_id(struct req *r, size_t i, const char *what, int64_t *ret)
{
	int64_t id;
	if (i >= r->n_params || parse_int64(r->params[i], 1, INT64_MAX, &id) < 0) {
		req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "%s '%s' not found (ids are "
				"positive integers)", what, i < r->n_params ? r->params[i] : "");
		return -EINVAL;
	}
	*ret = id;
	return 0;
}

/* ---- routing -------------------------------------------------------------- */

/*
 * Matches a path against a pattern; fills params (pointing into `path`,
 * which is modified). Returns true on a match.
 */
static bool route_match(const char *pattern, char *path, char **params, size_t *n_params)
{
	const char *p = pattern;
	char *u = path;
	size_t n = 0;
	while (*p) {
		if (*p == '{') {
			const char *close = strchr(p, '}');
			if (!close)
				return false;
			bool rest = close && close > p + 1 && close[-1] == '*';
			if (rest) {
				if (!*u)
					return false;
				params[n++] = u;
				*n_params = n;
				return true;
			}
			char *seg_end = strchr(u, '/');
			if (!seg_end)
				seg_end = u + strlen(u);
			if (seg_end == u)
				return false;
			char saved = *seg_end;
			params[n++] = u;
			p = close + 1;
			if (saved == '\0') {
				if (*p)
					return false;
				u = seg_end;
				break;
			}
			*seg_end = '\0';
			u = seg_end + 1;
			if (*p != '/')
				return false;
			p++;
			continue;
		}
		if (*p != *u)
			return false;
		p++;
		u++;
	}
	if (*u)
		return false;
	*n_params = n;
	return true;
}

static const struct route *route_find(struct req *r, const char *url, struct buf *allow)
{
	const struct route *found = NULL;
	for (size_t i = 0; i < server_routes_count; i++) {
		const struct route *rt = &server_routes[i];
		_cleanup_free_ char *copy = xstrdup(url);
		char *params[4];
		size_t n = 0;
		if (!route_match(rt->pattern, copy, params, &n))
			continue;
		if (!streq(rt->method, r->method)) {
			if (allow->len)
				buf_puts(allow, ", ");
			buf_puts(allow, rt->method);
			continue;
		}
		free(r->url);
		r->url = TAKE_PTR(copy);
		r->n_params = n;
		for (size_t k = 0; k < n; k++)
			r->params[k] = params[k];
		found = rt;
		break;
	}
	return found;
}

void server_print_routes(FILE *f)
{
	for (size_t i = 0; i < server_routes_count; i++)
		fprintf(f, "%s %s\n", server_routes[i].method, server_routes[i].pattern);
}

/* ---- audit ------------------------------------------------------------------ */

/* Is this call one the audit log records? Mutating routes, authenticated callers. */
static bool audit_wanted(const struct req *r)
{
	return r->route && (r->route->flags & ROUTE_AUDIT) && r->principal;
}

void req_audit_target(struct req *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	free(r->audit_target);
	r->audit_target = xvasprintf(fmt, ap);
	va_end(ap);
}

void req_audit_org(struct req *r, int64_t org_id) { r->audit_org = org_id; }

static void audit_fill(struct req *r, int status)
{
	r->audit = (struct store_audit){
		.org_id = r->audit_org >= 0 ? r->audit_org : r->who.org_id,
		.token_id = r->who.token_id,
		.actor = r->who.label,
		.action = r->route->name,
		.target = r->audit_target ? r->audit_target : "",
		.source = r->source,
		.status = status,
		.now = proto_now_ms(),
	};
}

uint64_t req_submit(struct req *r, struct store_mut *m, int status_ok)
{
	if (audit_wanted(r) && !r->audit_attached) {
		audit_fill(r, status_ok);
		m->audit = &r->audit;
		r->audit_attached = true;
	}
	return store_submit(r->srv->store, m);
}

static void audit_written(struct store_mut *m, void *ud)
{
	(void)m;
	struct req *r = ud;
	r->audit_written = true;
	pthread_mutex_lock(&r->lock);
	r->phase = REQ_READY;
	if (r->suspended) {
		r->suspended = false;
		atomic_fetch_sub(&r->srv->suspended, 1);
		MHD_resume_connection(r->conn);
	}
	pthread_mutex_unlock(&r->lock);
}

/*
 * An audited call whose handler wrote no mutation (refused, invalid, ...):
 * its record is written on its own and the answer waits for it. Returns
 * true when the answer must wait (the connection is suspended).
 */
static bool audit_before_answer(struct req *r)
{
	if (!audit_wanted(r) || r->audit_attached || r->audit_written ||
	    r->status == MHD_HTTP_TOO_MANY_REQUESTS)
		return false;
	audit_fill(r, (int)r->status);
	r->audit_attached = true;
	r->audit_mut = (struct store_mut){.kind = STORE_AUDIT, .audit = &r->audit,
					  .done = audit_written, .userdata = r};
	pthread_mutex_lock(&r->lock);
	r->phase = REQ_HANDLER;
	store_submit(r->srv->store, &r->audit_mut);
	r->suspended = true;
	atomic_fetch_add(&r->srv->suspended, 1);
	MHD_suspend_connection(r->conn);
	pthread_mutex_unlock(&r->lock);
	return true;
}

static void client_address(struct req *r)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (!ci || !ci->client_addr)
		return;
	const struct sockaddr *sa = ci->client_addr;
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in in;
		memcpy(&in, sa, sizeof(in));
		inet_ntop(AF_INET, &in.sin_addr, r->source, sizeof(r->source));
	} else if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 in6;
		memcpy(&in6, sa, sizeof(in6));
		inet_ntop(AF_INET6, &in6.sin6_addr, r->source, sizeof(r->source));
	}
}

/* ---- the access handler --------------------------------------------------- */

static struct conn_info *conn_info_of(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return ci ? (struct conn_info *)ci->socket_context : NULL;
}

static void set_deadline(struct server *s, struct conn_info *ci, uint64_t deadline)
{
	if (!ci)
		return;
	pthread_mutex_lock(&s->lock);
	ci->deadline_ns = deadline;
	pthread_mutex_unlock(&s->lock);
}

/* ---- request ids ---------------------------------------------------------- */

static bool req_id_valid(const char *v)
{
	size_t n = strlen(v);
	if (n == 0 || n > REQ_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = v[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == ':' || c == '-'))
			return false;
	}
	return true;
}

static uint32_t req_id_prefix;
static atomic_uint_fast32_t req_id_counter;
static pthread_once_t req_id_once = PTHREAD_ONCE_INIT;

static void req_id_init(void)
{
	/* Random per process, so ids of two servers (or one restarted) differ. */
	req_id_prefix = (uint32_t)randombytes_random();
}

static void req_set_id(struct req *r, struct MHD_Connection *conn)
{
	const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
	if (v && req_id_valid(v)) {
		snprintf(r->id, sizeof(r->id), "%s", v);
		return;
	}
	pthread_once(&req_id_once, req_id_init);
	uint32_t n = (uint32_t)atomic_fetch_add_explicit(&req_id_counter, 1, memory_order_relaxed);
	snprintf(r->id, sizeof(r->id), "%08" PRIx32 "%08" PRIx32, req_id_prefix, n);
}

static struct req *req_new(struct server *s, struct MHD_Connection *conn, const char *method)
{
	struct req *r = xcalloc(1, sizeof(*r));
	r->srv = s;
	req_set_id(r, conn);
	r->conn = conn;
	r->method = method;
	r->start_ns = now_mono_ns();
	r->phase = REQ_BODY;
	pthread_mutex_init(&r->lock, NULL);
	r->ci = conn_info_of(conn);
	r->audit_org = -1;
	client_address(r);
	return r;
}

static void req_free(struct req *r)
{
	struct server *s = r->srv;
	if (r->parked || r->follower) {
		pthread_mutex_lock(&s->lock);
		if (r->parked)
			sched_unpark(s, r);
		if (r->follower) {
			struct follower *f = r->follower;
			if (f->prev)
				f->prev->next = f->next;
			else if (s->followers == f)
				s->followers = f->next;
			if (f->next)
				f->next->prev = f->prev;
			r->follower = NULL;
			follower_free(f);
		}
		pthread_mutex_unlock(&s->lock);
	}
	if (r->upload)
		upload_free(r->upload);
	if (r->ctx_free)
		r->ctx_free(r->ctx);
	if (r->response)
		MHD_destroy_response(r->response);
	buf_release(&r->body);
	json_decref(r->json);
	free(r->url);
	free(r->audit_target);
	explicit_bzero(r->who.job_token, sizeof(r->who.job_token));
	pthread_mutex_destroy(&r->lock);
	free(r);
}

/* Lock-free: relaxed atomics on the route's own counters (observe.c reads them). */
static void count(struct req *r)
{
	struct route_stats *st = r->route ? r->route->stats : &http_unmatched_stats;
	uint64_t ns = now_mono_ns() - r->start_ns;
	atomic_fetch_add_explicit(&st->requests, 1, memory_order_relaxed);
	if (r->status < 300)
		atomic_fetch_add_explicit(&st->status_2xx, 1, memory_order_relaxed);
	else if (r->status < 500)
		atomic_fetch_add_explicit(&st->status_4xx, 1, memory_order_relaxed);
	else
		atomic_fetch_add_explicit(&st->status_5xx, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&st->codes[http_code_slot(r->status)], 1, memory_order_relaxed);
	size_t b = 0;
	while (b < HTTP_LATENCY_BUCKETS && ns > http_latency_bounds_ns[b])
		b++;
	atomic_fetch_add_explicit(&st->latency[b], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&st->ns_total, ns, memory_order_relaxed);
}

static enum MHD_Result queue(struct req *r)
{
	/* No answer to an audited call before its record is durable. */
	if (audit_before_answer(r))
		return MHD_YES;
	struct MHD_Response *resp = r->response;
	r->response = NULL;
	r->phase = REQ_SENT;
	count(r);
	MHD_add_response_header(resp, "X-Request-Id", r->id);
	if (r->status >= 500)
		log_warn("request failed req=%s method=%s route=%s status=%u", r->id, r->method,
			 r->route ? r->route->name : "unmatched", r->status);
	else
		log_debug("request req=%s method=%s route=%s status=%u ms=%.3f", r->id, r->method,
			  r->route ? r->route->name : "unmatched", r->status,
			  (double)(now_mono_ns() - r->start_ns) / 1e6);
	enum MHD_Result ret = MHD_queue_response(r->conn, r->status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* After the handler ran: queue now, or suspend until someone answers. */
static enum MHD_Result after_handler(struct req *r)
{
	pthread_mutex_lock(&r->lock);
	if (r->phase == REQ_READY) {
		pthread_mutex_unlock(&r->lock);
		return queue(r);
	}
	r->suspended = true;
	atomic_fetch_add(&r->srv->suspended, 1);
	MHD_suspend_connection(r->conn);
	pthread_mutex_unlock(&r->lock);
	return MHD_YES;
}

static uint64_t route_body_limit(struct server *s, const struct route *rt)
{
	switch (rt->body) {
	case BODY_JSON:
	case BODY_TEXT: return s->cfg.body_max;
	case BODY_WEBHOOK: return s->cfg.webhook_body_max;
	case BODY_LOG: return s->cfg.log_chunk_max;
	case BODY_STREAM: return s->cfg.artifact_max;
	case BODY_NONE: return 0;
	}
	return 0;
}

static enum MHD_Result first_call(struct server *s, struct req *r, const char *url)
{
	struct buf allow = BUF_INIT;
	r->route = route_find(r, url, &allow);
	if (!r->route) {
		r->url = xstrdup(url);
		if (allow.len) {
			req_reply_error(r, MHD_HTTP_METHOD_NOT_ALLOWED, "method_not_allowed",
					"%s is not allowed on %s (allowed: %s)", r->method, url,
					allow.data);
			MHD_add_response_header(r->response, MHD_HTTP_HEADER_ALLOW, allow.data);
		} else {
			req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "no such endpoint: %s %s",
					r->method, url);
		}
		buf_release(&allow);
		return queue(r);
	}
	buf_release(&allow);
	/* Request smuggling guard (RFC 9112 6.3): both framings at once. Before
	 * anything else: the request's extent itself is in doubt. */
	const char *te = req_header(r, MHD_HTTP_HEADER_TRANSFER_ENCODING);
	const char *cl = req_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (te && cl) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"a request may not carry both Transfer-Encoding and Content-Length");
		return queue(r);
	}
	if (access_check(r) < 0)
		return queue(r);
	r->body_limit = route_body_limit(s, r->route);
	if (cl && r->route->body != BODY_NONE) {
		int64_t n;
		if (parse_int64(cl, 0, INT64_MAX, &n) < 0) {
			req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
					"Content-Length '%s' is not a number", cl);
			return queue(r);
		}
		if ((uint64_t)n > r->body_limit) {
			char lim[32];
			format_size(r->body_limit, lim);
			req_reply_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
					"the request body (%" PRId64 " bytes) is larger than this "
					"endpoint accepts (%s)",
					n, lim);
			return queue(r);
		}
	}
	bool timed_body = r->route->body == BODY_JSON || r->route->body == BODY_TEXT ||
			  r->route->body == BODY_LOG || r->route->body == BODY_WEBHOOK;
	set_deadline(s, r->ci,
		     timed_body ? now_mono_ns() + s->cfg.body_timeout_ms * NSEC_PER_MSEC : 0);
	if (r->route->body == BODY_STREAM) {
		/* The handler checks what it can before the body flows. */
		r->phase = REQ_HANDLER;
		r->route->handle(r);
		if (r->phase == REQ_READY)
			return queue(r);
		r->phase = REQ_BODY;
	}
	return MHD_YES;
}

static void take_body(struct req *r, const char *data, size_t len)
{
	if (r->body_too_large)
		return;
	if (r->route->body == BODY_NONE)
		return; /* ignored */
	if (r->route->body == BODY_STREAM) {
		r->route->on_data(r, data, len);
		return;
	}
	if (r->body.len + len > r->body_limit) {
		r->body_too_large = true;
		buf_release(&r->body);
		return;
	}
	buf_append(&r->body, data, len);
}

static void parse_json_body(struct req *r)
{
	json_error_t jerr;
	r->json = json_loadb(r->body.data ? r->body.data : "", r->body.len,
			     JSON_REJECT_DUPLICATES, &jerr);
	if (!r->json)
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_json",
				"request body, line %d, column %d: %s", jerr.line, jerr.column,
				jerr.text);
	else if (!json_is_object(r->json))
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_json",
				"request body: expected a JSON object");
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn, const char *url,
				      const char *method, const char *version,
				      const char *upload_data, size_t *upload_data_size,
				      void **con_cls)
{
	(void)version;
	struct server *s = cls;
	struct req *r = *con_cls;
	if (!r) {
		r = req_new(s, conn, method);
		*con_cls = r;
		if (s->stopping) {
			r->url = xstrdup(url);
			req_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable",
					"the server is shutting down");
			return queue(r);
		}
		return first_call(s, r, url);
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		if (r->phase == REQ_BODY && !r->body_too_large) {
			take_body(r, upload_data, n);
			return MHD_YES;
		}
		/* Refused already (too large, or the stream handler answered):
		 * MHD can only answer once the body is in, so the rest is read
		 * and dropped, never stored; a client that keeps sending past
		 * the allowance is disconnected. */
		r->discarded += n;
		return r->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
	}
	switch (r->phase) {
	case REQ_BODY:
		set_deadline(s, r->ci, 0);
		if (r->body_too_large) {
			char lim[32];
			format_size(r->body_limit, lim);
			req_reply_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
					"the request body is larger than this endpoint accepts (%s)",
					lim);
			return queue(r);
		}
		r->phase = REQ_HANDLER;
		if (r->route->body == BODY_JSON)
			parse_json_body(r);
		if (r->phase == REQ_HANDLER) {
			if (r->route->body == BODY_STREAM)
				r->route->on_data(r, NULL, 0);
			else
				r->route->handle(r);
		}
		return after_handler(r);
	case REQ_READY:
		/* Resumed: wait until whoever answered has let go of r. */
		pthread_mutex_lock(&r->lock);
		pthread_mutex_unlock(&r->lock);
		return queue(r);
	case REQ_HANDLER:
	case REQ_SENT:
		break;
	}
	return MHD_YES;
}

static void request_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			      enum MHD_RequestTerminationCode toe)
{
	struct server *s = cls;
	struct req *r = *con_cls;
	if (!r)
		return;
	*con_cls = NULL;
	if (r->phase != REQ_SENT) {
		/* Never answered: the client went away (nginx's 499). */
		r->status = 499;
		count(r);
	}
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
		log_debug("request ended early req=%s method=%s route=%s reason=%d", r->id, r->method,
			  r->route ? r->route->name : "unmatched", (int)toe);
	/* The next request on this connection must arrive within the idle
	 * timeout plus the header timeout. */
	struct conn_info *ci = conn_info_of(conn);
	if (ci)
		set_deadline(s, ci,
			     now_mono_ns() + ((uint64_t)s->cfg.idle_timeout_s * 1000 +
					      s->cfg.header_timeout_ms) * NSEC_PER_MSEC);
	req_free(r);
}

static void connection_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
			      enum MHD_ConnectionNotificationCode toe)
{
	struct server *s = cls;
	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		struct conn_info *ci = xcalloc(1, sizeof(*ci));
		const union MHD_ConnectionInfo *info =
			MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		ci->conn = conn;
		ci->fd = info ? info->connect_fd : -1;
		ci->started_ns = now_mono_ns();
		ci->deadline_ns = ci->started_ns + s->cfg.header_timeout_ms * NSEC_PER_MSEC;
		pthread_mutex_lock(&s->lock);
		ci->next = s->conns;
		if (s->conns)
			s->conns->prev = ci;
		s->conns = ci;
		pthread_mutex_unlock(&s->lock);
		*socket_context = ci;
	} else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
		struct conn_info *ci = *socket_context;
		if (!ci)
			return;
		/* MHD closes the socket after this returns: under the lock, the
		 * timer can no longer shut down a reused fd. */
		pthread_mutex_lock(&s->lock);
		if (ci->prev)
			ci->prev->next = ci->next;
		else
			s->conns = ci->next;
		if (ci->next)
			ci->next->prev = ci->prev;
		pthread_mutex_unlock(&s->lock);
		*socket_context = NULL;
		free(ci);
	}
}

/* Timer, under server.lock. */
void http_check_deadlines(struct server *s, uint64_t now_ns)
{
	for (struct conn_info *ci = s->conns; ci; ci = ci->next) {
		if (!ci->deadline_ns || now_ns < ci->deadline_ns || ci->closed || ci->fd < 0)
			continue;
		log_info("dropping a slow client: request not received in time fd=%d", ci->fd);
		shutdown(ci->fd, SHUT_RDWR);
		ci->closed = true;
		ci->deadline_ns = 0;
	}
}

__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	log_debug_library("libmicrohttpd", fmt, ap);
}

int http_start(struct server *s, struct kiln_err *err)
{
	struct sockaddr_storage ss = {0};
	socklen_t sslen = 0;
	int r = listen_addr_parse(s->cfg.listen, "listen address", "127.0.0.1:7700", true, &ss,
	                          &sslen, err);
	if (r < 0)
		return r;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
			 MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/* The logger first: MHD reports problems with later options through it,
	 * and a pool of 1 is no pool (MHD would warn on stderr otherwise). */
	s->mhd = MHD_start_daemon(
		flags, 0, NULL, NULL, access_handler, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
		MHD_OPTION_SOCK_ADDR,
		(struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, s->cfg.max_connections,
		MHD_OPTION_PER_IP_CONNECTION_LIMIT, s->cfg.per_ip_connections,
		MHD_OPTION_CONNECTION_TIMEOUT, s->cfg.idle_timeout_s,
		MHD_OPTION_NOTIFY_COMPLETED, request_completed, s, MHD_OPTION_NOTIFY_CONNECTION,
		connection_notify, s, MHD_OPTION_THREAD_POOL_SIZE,
		s->cfg.threads > 1 ? s->cfg.threads : 0,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
		MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1,
		MHD_OPTION_END);
	if (!s->mhd) {
		int e = errno ? -errno : -EADDRINUSE;
		return kiln_err_set(err, e, "cannot listen on '%s': %s", s->cfg.listen,
				    strerror(-e));
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_LISTEN_FD);
	struct sockaddr_storage bound = {0};
	socklen_t blen = sizeof(bound);
	if (di && getsockname(di->listen_fd, (struct sockaddr *)&bound, &blen) == 0)
		sockaddr_format(&bound, s->address, sizeof(s->address));
	return 0;
}

void http_stop(struct server *s)
{
	if (!s->mhd)
		return;
	/* Every suspended connection must be resumed before MHD stops. */
	MHD_socket lfd = MHD_quiesce_daemon(s->mhd);
	if (lfd != MHD_INVALID_SOCKET)
		close(lfd);
	pthread_mutex_lock(&s->lock);
	s->stopping = true;
	while (s->waiters_head || s->hb_head) {
		struct req *r = s->waiters_head ? s->waiters_head : s->hb_head;
		sched_unpark(s, r);
		req_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable",
				"the server is shutting down");
	}
	for (struct follower *f = s->followers; f; f = f->next) {
		f->ended = true;
		if (f->suspended) {
			f->suspended = false;
			atomic_fetch_sub(&s->suspended, 1);
			MHD_resume_connection(f->req->conn);
		}
	}
	pthread_mutex_unlock(&s->lock);
	/* Requests waiting for the store are answered from its callbacks: wait
	 * for them (a barrier mutation commits after everything queued). */
	for (int i = 0; i < 5000 && atomic_load(&s->suspended) > 0; i++) {
		struct store_mut m = {.kind = STORE_BARRIER};
		store_apply_wait(s->store, &m);
		usleep(1000);
	}
	if (atomic_load(&s->suspended) > 0)
		log_warn("stopping with suspended connections n=%d", atomic_load(&s->suspended));
	MHD_stop_daemon(s->mhd);
	s->mhd = NULL;
}
