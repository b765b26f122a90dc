/*
 * api-fuzz: request bodies, query strings and tokens against a real server,
 * in this process, over loopback HTTP — so every JSON body, path parameter
 * and query parser a client can reach runs as in production (the handlers'
 * own checks included), with the server's code instrumented.
 *
 * Input: byte 0 picks an endpoint, byte 1 the credential (admin, owner,
 * member, viewer, agent, a job token, none, a malformed one), byte 2 the id
 * in the path; the rest, up to the first '\n', is the query string (reduced
 * to safe characters; never a follow) and after it the body.
 *
 * Properties (abort otherwise): every request is answered, within 10 s,
 * with one of the statuses the API documents — never a 5xx — and every error
 * answer is {"error":{"code":...,"message":...}}. ASan/UBSan watch the rest.
 *
 * Set up once: a state directory in /tmp (removed at exit), an org, tokens
 * of each role, an agent with a leased job (its job token), a secret.
 */
#include "server/server.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct server *srv;
static char state_dir[64];
static int port;
static int fd = -1;
static char tok[8][96]; /* admin owner member viewer agent job none garbage */
static int64_t agent_id, job_id, fence;

/* ---- a tiny HTTP/1.1 client ------------------------------------------------ */

static void conn_close(void)
{
	if (fd >= 0)
		close(fd);
	fd = -1;
}

static void conn_open(void)
{
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		perror("api-fuzz: connect");
		abort();
	}
}

struct answer {
	int status;
	struct buf body;
	bool close;
};

static int read_more(struct buf *in)
{
	char b[65536];
	ssize_t n = read(fd, b, sizeof(b));
	if (n <= 0)
		return -1;
	buf_append(in, b, (size_t)n);
	return 0;
}

/* Sends one request; fills *ans. Aborts if the server does not answer. */
static void request(const char *method, const char *path, const char *token, const void *body,
                    size_t len, struct answer *ans)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		if (fd < 0)
			conn_open();
		struct buf req = BUF_INIT;
		buf_printf(&req, "%s %s HTTP/1.1\r\nHost: fuzz\r\nContent-Length: %zu\r\n", method,
		           path, len);
		if (token && *token)
			buf_printf(&req, "Authorization: Bearer %s\r\n", token);
		buf_puts(&req, "\r\n");
		buf_append(&req, body, len);
		ssize_t w = write_all(fd, req.data, req.len) < 0 ? -1 : (ssize_t)req.len;
		buf_release(&req);
		struct buf in = BUF_INIT;
		char *end = NULL;
		while (w >= 0 && !(end = in.data ? strstr(in.data, "\r\n\r\n") : NULL))
			if (read_more(&in) < 0)
				break;
		if (!end) {
			/* A kept-alive connection the server closed: once more, fresh. */
			buf_release(&in);
			conn_close();
			if (attempt == 0)
				continue;
			fprintf(stderr, "api-fuzz: no answer to %s %s\n", method, path);
			abort();
		}
		*end = '\0';
		memset(ans, 0, sizeof(*ans));
		if (sscanf(in.data, "HTTP/1.1 %d", &ans->status) != 1)
			abort();
		const char *cl = strcasestr(in.data, "\r\nContent-Length:");
		const char *te = strcasestr(in.data, "\r\nTransfer-Encoding: chunked");
		ans->close = strcasestr(in.data, "\r\nConnection: close") != NULL;
		size_t head = (size_t)(end - in.data) + 4;
		if (te) {
			/* Chunked (logs): size line, data, CRLF ... until size 0. */
			size_t pos = head;
			for (;;) {
				char *eol;
				while (!(eol = memmem(in.data + pos, in.len - pos, "\r\n", 2)))
					if (read_more(&in) < 0)
						abort();
				size_t n = strtoul(in.data + pos, NULL, 16);
				pos = (size_t)(eol - in.data) + 2;
				while (in.len < pos + n + 2)
					if (read_more(&in) < 0)
						abort();
				buf_append(&ans->body, in.data + pos, n);
				pos += n + 2;
				if (n == 0)
					break;
			}
		} else {
			size_t want = cl ? strtoul(cl + 17, NULL, 10) : 0;
			while (in.len - head < want)
				if (read_more(&in) < 0) {
					fprintf(stderr, "api-fuzz: short answer to %s %s\n", method,
					        path);
					abort();
				}
			buf_append(&ans->body, in.data + head, want);
		}
		buf_release(&in);
		if (ans->close)
			conn_close();
		return;
	}
}

static json_t *call_json(const char *method, const char *path, const char *token, const char *body,
                         int expect)
{
	struct answer a;
	request(method, path, token, body ? body : "", body ? strlen(body) : 0, &a);
	if (a.status != expect) {
		fprintf(stderr, "api-fuzz: set-up %s %s: HTTP %d %.*s\n", method, path, a.status,
		        (int)a.body.len, a.body.data ? a.body.data : "");
		abort();
	}
	json_error_t e;
	json_t *j = a.body.len ? json_loadb(a.body.data, a.body.len, 0, &e) : NULL;
	buf_release(&a.body);
	return j;
}

static void mint(int slot, const char *role)
{
	_cleanup_free_ char *body = xasprintf("{\"role\":\"%s\",\"org\":\"acme\"}", role);
	json_t *j = call_json("POST", "/v1/tokens", tok[0], body, 201);
	snprintf(tok[slot], sizeof(tok[slot]), "%s",
	         json_string_value(json_object_get(j, "token")));
	json_decref(j);
}

static void cleanup(void)
{
	conn_close();
	server_free(srv);
	rm_rf(state_dir);
}

static void setup(void)
{
	snprintf(state_dir, sizeof(state_dir), "/tmp/kiln-api-fuzz.XXXXXX");
	if (!mkdtemp(state_dir))
		abort();
	log_set_level(LOG_ERROR);
	struct server_config c;
	server_config_init(&c);
	c.listen = "127.0.0.1:0";
	c.state_dir = state_dir;
	c.durable = false;
	c.max_wait_ms = 0; /* long-polls answer at once (the timer ticks at 100 ms) */
	c.body_max = 64 << 10;
	c.org_submit_rate = 20; /* bounds the jobs the fuzzer can make */
	c.org_burst_s = 1;
	struct kiln_err err = {0};
	if (server_new(&c, &srv, &err) < 0 || server_start(srv, &err) < 0) {
		fprintf(stderr, "api-fuzz: %s\n", err.msg);
		abort();
	}
	atexit(cleanup);
	int64_t pn = 0;
	if (parse_int64(strrchr(server_address(srv), ':') + 1, 1, 65535, &pn) < 0)
		abort();
	port = (int)pn;
	char *admin = NULL;
	if (server_admin_token(srv, "fuzz", &admin, &err) < 0)
		abort();
	snprintf(tok[0], sizeof(tok[0]), "%s", admin);
	free(admin);
	json_decref(call_json("POST", "/v1/orgs", tok[0], "{\"name\":\"acme\"}", 201));
	mint(1, "owner");
	mint(2, "member");
	mint(3, "viewer");
	mint(4, "agent");
	json_t *a =
	    call_json("POST", "/v1/agents", tok[4],
	              "{\"name\":\"fz\",\"labels\":[\"linux\"],\"capacity\":{\"slots\":4}}", 201);
	agent_id = json_integer_value(json_object_get(a, "id"));
	json_decref(a);
	json_decref(call_json("PUT", "/v1/secrets/NAME1", tok[1], "value-1", 200));
	json_decref(call_json(
	    "POST", "/v1/jobs", tok[2],
	    "{\"name\":\"j\",\"steps\":[{\"run\":\"true\"}],\"secrets\":[\"NAME1\"]}", 201));
	json_decref(call_json("POST", "/v1/jobs", tok[2],
	                      "{\"name\":\"k\",\"steps\":[{\"run\":\"true\"}]}", 201));
	_cleanup_free_ char *lp = xasprintf("/v1/agents/%lld/lease", (long long)agent_id);
	json_t *l = call_json("POST", lp, tok[4], "{}", 200);
	job_id = json_integer_value(json_object_get(json_object_get(l, "job"), "id"));
	fence = json_integer_value(json_object_get(l, "fence"));
	snprintf(tok[5], sizeof(tok[5]), "%s", json_string_value(json_object_get(l, "token")));
	json_decref(l);
	tok[6][0] = '\0';
	snprintf(tok[7], sizeof(tok[7]), "kiln_pat_garbage");
}

/* ---- the target ------------------------------------------------------------ */

struct ep {
	const char *method, *path; /* %d: an id */
};

static const struct ep eps[] = {
    {"POST", "/v1/jobs"},
    {"GET", "/v1/jobs"},
    {"GET", "/v1/jobs/%d"},
    {"POST", "/v1/jobs/%d/cancel"},
    {"POST", "/v1/jobs/%d/retry"},
    {"POST", "/v1/jobs/%d/status"},
    {"POST", "/v1/jobs/%d/complete"},
    {"POST", "/v1/jobs/%d/log"},
    {"GET", "/v1/jobs/%d/log"},
    {"GET", "/v1/jobs/%d/artifacts"},
    {"PUT", "/v1/jobs/%d/artifacts/out/a.txt"},
    {"GET", "/v1/jobs/%d/artifacts/out/a.txt"},
    {"POST", "/v1/agents"},
    {"GET", "/v1/agents"},
    {"GET", "/v1/agents/%d"},
    {"POST", "/v1/agents/%d/drain"},
    {"POST", "/v1/agents/%d/lease"},
    {"POST", "/v1/agents/%d/heartbeat"},
    {"POST", "/v1/agents/%d/release"},
    {"GET", "/v1/whoami"},
    {"GET", "/v1/orgs"},
    {"POST", "/v1/orgs/acme/limits"},
    {"GET", "/v1/tokens"},
    {"POST", "/v1/tokens"},
    {"POST", "/v1/tokens/%d/revoke"},
    {"GET", "/v1/secrets"},
    {"PUT", "/v1/secrets/NAME%d"},
    {"DELETE", "/v1/secrets/NAME%d"},
    {"GET", "/v1/audit"},
    {"GET", "/v1/audit/verify"},
    {"POST", "/v1/webhooks/github"},
    {"POST", "/v1/webhooks/github/acme"},
    {"PUT", "/v1/github/webhook-secret"},
    {"GET", "/v1/github/deliveries"},
    {"GET", "/v1/usage"},
    {"GET", "/v1/stats"},
    {"GET", "/v1/overview"},
    {"GET", "/readyz"},
    {"GET", "/healthz"},
    {"GET", "/metrics"},
};

static bool status_ok(int s)
{
	static const int ok[] = {200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 413, 429};
	for (size_t i = 0; i < ARRAY_SIZE(ok); i++)
		if (s == ok[i])
			return true;
	return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!srv)
		setup();
	if (size < 3 || size > (48 << 10))
		return 0;
	const struct ep *e = &eps[data[0] % ARRAY_SIZE(eps)];
	unsigned who = data[1] % 8;
	/* Ids: the set-up's own job, agent and a few others; tokens never the
	 * set-up's (revoking them would end the run's coverage). */
	int64_t ids[] = {job_id, agent_id, 2, 999};
	int64_t id = ids[data[2] % 4];
	if (strstr(e->path, "tokens/"))
		id = 100 + data[2];
	if (strstr(e->path, "NAME"))
		id = 1 + data[2] % 4;
	/* Job writes go with the job token, against the set-up's lease. */
	if (strstr(e->path, "/status") || strstr(e->path, "/complete") || strstr(e->path, "/log") ||
	    strstr(e->path, "artifacts/out"))
		id = job_id;
	/* Submissions only as a (rate limited) member: bounded job count. */
	if (streq(e->method, "POST") && streq(e->path, "/v1/jobs") && who == 0)
		who = 2;
	const char *rest = (const char *)data + 3;
	size_t rlen = size - 3;
	const char *nl = memchr(rest, '\n', rlen);
	size_t qlen = nl ? (size_t)(nl - rest) : 0;
	const char *body = nl ? nl + 1 : rest;
	size_t blen = nl ? rlen - qlen - 1 : rlen;

	struct buf path = BUF_INIT;
	/* The path with its one "%d" replaced by the id. */
	const char *pct = strstr(e->path, "%d");
	if (pct) {
		buf_append(&path, e->path, (size_t)(pct - e->path));
		buf_printf(&path, "%lld", (long long)id);
		buf_puts(&path, pct + 2);
	} else {
		buf_puts(&path, e->path);
	}
	if (qlen) {
		buf_putc(&path, '?');
		for (size_t i = 0; i < qlen && i < 512; i++) {
			char c = rest[i];
			bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			            (c >= '0' && c <= '9') || strchr("=&-_.:%", c);
			buf_putc(&path, safe ? c : '_');
		}
		/* A followed log would wait for its job. */
		char *f = strstr(path.data, "follow");
		if (f)
			memcpy(f, "fxllow", 6);
	}
	if (strstr(e->path, "/log") && streq(e->method, "POST") && !qlen)
		buf_printf(&path, "?fence=%lld&offset=0", (long long)fence);
	struct answer a;
	request(e->method, path.data, tok[who], body, blen, &a);
	if (!status_ok(a.status)) {
		fprintf(stderr, "api-fuzz: %s %s (as %u): HTTP %d %.*s\n", e->method, path.data,
		        who, a.status, (int)MIN(a.body.len, 300), a.body.data ? a.body.data : "");
		abort();
	}
	if (a.status >= 400 && a.body.len) {
		json_error_t jerr;
		json_t *j = json_loadb(a.body.data, a.body.len, 0, &jerr);
		json_t *err = json_object_get(j, "error");
		if (!json_is_string(json_object_get(err, "code")) ||
		    !json_is_string(json_object_get(err, "message"))) {
			fprintf(stderr,
			        "api-fuzz: %s %s: error body not in the API's shape: %.*s\n",
			        e->method, path.data, (int)MIN(a.body.len, 300), a.body.data);
			abort();
		}
		json_decref(j);
	}
	buf_release(&a.body);
	buf_release(&path);
	return 0;
}
