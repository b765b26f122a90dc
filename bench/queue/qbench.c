/*
 * qbench: kiln's job queue over real HTTP — submit -> lease (long-poll) ->
 * complete — measured the way ../shared/peers/ measures Redis Streams and
 * PostgreSQL, so the figures compare (same P/C, window, phases, output).
 *
 * One process, P producer threads and C consumer threads, one keep-alive
 * HTTP connection each, one job per request:
 *  phase 1 (throughput): producers POST /v1/jobs as fast as they can while at
 *          most --window jobs are in flight (submitted - completed); each
 *          consumer is a registered agent looping POST .../lease (wait 1 s)
 *          then POST /v1/jobs/ID/complete. jobs/s = completions per second
 *          over --tput-secs after --warmup-secs.
 *  phase 2 (dispatch latency): producers paced at --lat-rate jobs/s in total,
 *          consumers idle in their long-poll; latency = the moment the
 *          consumer's lease call returns the job minus the producer's
 *          CLOCK_MONOTONIC just before it sent the submit (so it includes the
 *          submit's own durable commit). The time travels in the job's name.
 * Backlog (--backlog N), submitted before the phases, 256 jobs per request
 * (a matrix):
 *  --backlog-kind other : N queued jobs that the measured agents cannot run
 *                         (runs-on a label only an idle agent has): queue
 *                         depth without work ahead (like the peers' pel/other);
 *  --backlog-kind ahead : N queued jobs the agents can run, in front of the
 *                         new ones; throughput only.
 * Prints a human line and `RESULT sys=kiln ...` for peers/common/summarize.py.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---- timing and samples (as peers/common/bench.h) -------------------------- */

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until_ns(int64_t t)
{
	struct timespec ts = {.tv_sec = t / 1000000000LL, .tv_nsec = t % 1000000000LL};
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static void sleep_us(long us)
{
	struct timespec ts = {.tv_sec = us / 1000000L, .tv_nsec = (us % 1000000L) * 1000L};
	nanosleep(&ts, NULL);
}

struct samples {
	int64_t *v;
	size_t n, cap;
};

static void samples_add(struct samples *s, int64_t x)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 4096;
		s->v = realloc(s->v, s->cap * sizeof(*s->v));
		if (!s->v)
			abort();
	}
	s->v[s->n++] = x;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static double pct_us(struct samples *s, double p)
{
	if (!s->n)
		return -1;
	size_t k = (size_t)((p / 100.0) * (double)s->n + 0.999999);
	if (k < 1)
		k = 1;
	if (k > s->n)
		k = s->n;
	return (double)s->v[k - 1] / 1000.0;
}

/* CPU seconds of pid and its direct children (as peers/common/bench.h). */
static double proc_cpu_s(int pid)
{
	long hz = sysconf(_SC_CLK_TCK);
	double total = 0;
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *rp = strrchr(buf, ')');
	unsigned long ut = 0, st = 0;
	if (rp && sscanf(rp + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
		total = (double)(ut + st) / (double)hz;
	return total;
}

static double self_cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

/* ---- a minimal keep-alive HTTP/1.1 client ---------------------------------- */

static char host[256] = "127.0.0.1";
static char port_s[16] = "7700";

struct hc {
	int fd;
	char *buf;
	size_t len, cap;
	const char *token; /* Authorization: Bearer, or NULL (default: $KILN_TOKEN) */
};

/* The API token ($KILN_TOKEN: run.sh passes the server's admin token). */
static const char *api_token;

static void hc_connect(struct hc *c)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
	if (getaddrinfo(host, port_s, &hints, &res) != 0) {
		fprintf(stderr, "cannot resolve %s\n", host);
		exit(2);
	}
	for (int tries = 0;; tries++) {
		c->fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (c->fd >= 0 && connect(c->fd, res->ai_addr, res->ai_addrlen) == 0)
			break;
		if (c->fd >= 0)
			close(c->fd);
		if (tries > 100) {
			fprintf(stderr, "connect %s:%s: %s\n", host, port_s, strerror(errno));
			exit(2);
		}
		sleep_us(50000);
	}
	freeaddrinfo(res);
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->len = 0;
	if (!c->buf) {
		c->cap = 1 << 20;
		c->buf = malloc(c->cap);
	}
}

/*
 * Sends one request and reads the answer. Returns the status; *body points
 * into the client's buffer (valid until the next call), NUL-terminated.
 */
static int hc_call(struct hc *c, const char *method, const char *path, const char *body,
		   char **ret_body, size_t *ret_len)
{
	char head[640];
	size_t blen = body ? strlen(body) : 0;
	const char *tok = c->token ? c->token : api_token;
	int hl = snprintf(head, sizeof(head),
			  "%s %s HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n"
			  "%s%s%sContent-Length: %zu\r\n\r\n",
			  method, path, tok ? "Authorization: Bearer " : "", tok ? tok : "",
			  tok ? "\r\n" : "", blen);
	for (int attempt = 0; attempt < 2; attempt++) {
		char *b = (char *)(uintptr_t)body; /* writev does not write to it */
		struct iovec iov[2] = {{head, (size_t)hl}, {b, blen}};
		ssize_t w = writev(c->fd, iov, blen ? 2 : 1);
		if (w != hl + (ssize_t)blen) {
			close(c->fd);
			hc_connect(c);
			continue;
		}
		c->len = 0;
		size_t hdr_end = 0, content_len = 0;
		int status = 0;
		for (;;) {
			if (c->len + 1 >= c->cap) {
				fprintf(stderr, "response too large\n");
				exit(2);
			}
			ssize_t n = read(c->fd, c->buf + c->len, c->cap - c->len - 1);
			if (n <= 0) {
				status = -1;
				break;
			}
			c->len += (size_t)n;
			c->buf[c->len] = 0;
			if (!hdr_end) {
				char *e = strstr(c->buf, "\r\n\r\n");
				if (!e)
					continue;
				hdr_end = (size_t)(e - c->buf) + 4;
				status = atoi(c->buf + 9);
				char *cl = strcasestr(c->buf, "\r\ncontent-length:");
				content_len = cl && cl < e ? strtoul(cl + 17, NULL, 10) : 0;
			}
			if (c->len >= hdr_end + content_len)
				break;
		}
		if (status < 0) {
			close(c->fd);
			hc_connect(c);
			continue;
		}
		*ret_body = c->buf + hdr_end;
		*ret_len = content_len;
		c->buf[hdr_end + content_len] = 0;
		return status;
	}
	fprintf(stderr, "%s %s: connection failed twice\n", method, path);
	exit(2);
}

static long json_int(const char *body, const char *key)
{
	const char *p = strstr(body, key);
	return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

/* ---- the benchmark --------------------------------------------------------- */

static int nprod = 4, ncons = 4, window_ = 1000, server_pid = 0;
static double tput_secs = 20, warm_secs = 2, lat_secs = 10, lat_rate = 500;
static long backlog = 0;
static int backlog_ahead = 0;
static const char *label = "fsync-full";
static double settle_secs = 120;

static atomic_long enq_cnt, ack_cnt, errors;
static atomic_int stop_prod, stop_cons, measuring, lat_phase;
static struct samples *claim_rtt, *lat_s;

static const char SPEC_FMT[] =
	"{\"name\":\"b%lld\",\"runs-on\":[\"linux\"],\"steps\":[{\"run\":\"make test\"}],"
	"\"env\":{\"REPO\":\"git@example.invalid:org/app.git\",\"REF\":\"refs/heads/main\","
	"\"SHA\":\"3f2c9a1b7d\"}}";

static void submit(struct hc *c, int64_t t)
{
	char spec[512];
	snprintf(spec, sizeof(spec), SPEC_FMT, (long long)t);
	char *body;
	size_t len;
	int st = hc_call(c, "POST", "/v1/jobs", spec, &body, &len);
	if (st != 201) {
		fprintf(stderr, "submit: HTTP %d: %s\n", st, body);
		atomic_fetch_add(&errors, 1);
		return;
	}
	atomic_fetch_add(&enq_cnt, 1);
}

static void *producer(void *arg)
{
	(void)arg;
	struct hc c = {0};
	hc_connect(&c);
	while (!atomic_load(&stop_prod)) {
		if (atomic_load(&enq_cnt) - atomic_load(&ack_cnt) >= window_) {
			sleep_us(1000); /* window full: back off, do not spin */
			continue;
		}
		submit(&c, now_ns());
	}
	close(c.fd);
	free(c.buf);
	return NULL;
}

struct paced_arg {
	int idx;
	double rate;
	int64_t start, end;
};

static void *paced_producer(void *arg)
{
	struct paced_arg *a = arg;
	struct hc c = {0};
	hc_connect(&c);
	int64_t gap = (int64_t)(1e9 / a->rate);
	int64_t t = a->start + (gap * a->idx) / nprod;
	while (t < a->end) {
		sleep_until_ns(t);
		submit(&c, now_ns());
		t += gap;
	}
	close(c.fd);
	free(c.buf);
	return NULL;
}

static long register_agent(struct hc *c, const char *name, const char *labels)
{
	char req[512], *body;
	size_t len;
	snprintf(req, sizeof(req), "{\"name\":\"%s\",\"labels\":[%s],\"capacity\":{\"slots\":4}}",
		 name, labels);
	int st = hc_call(c, "POST", "/v1/agents", req, &body, &len);
	if (st != 200 && st != 201) {
		fprintf(stderr, "register: HTTP %d: %s\n", st, body);
		exit(2);
	}
	return json_int(body, "\"id\":");
}

static void *consumer(void *arg)
{
	long idx = (long)arg;
	struct hc c = {0};
	hc_connect(&c);
	char name[64], path[128], done[128], req[128];
	snprintf(name, sizeof(name), "bench-c%ld", idx);
	long agent = register_agent(&c, name, "\"linux\"");
	snprintf(path, sizeof(path), "/v1/agents/%ld/lease", agent);
	while (!atomic_load(&stop_cons)) {
		char *body;
		size_t len;
		int64_t t0 = now_ns();
		int st = hc_call(&c, "POST", path, "{\"wait_ms\":1000}", &body, &len);
		int64_t t1 = now_ns();
		if (st == 204)
			continue;
		if (st != 200) {
			fprintf(stderr, "lease: HTTP %d: %s\n", st, body);
			atomic_fetch_add(&errors, 1);
			sleep_us(10000);
			continue;
		}
		long id = json_int(body, "{\"job\":{\"id\":");
		long fence = json_int(body, "\"fence\":");
		const char *nm = strstr(body, "\"name\":\"b");
		int64_t t_enq = nm ? strtoll(nm + 9, NULL, 10) : 0;
		if (atomic_load(&measuring))
			samples_add(&claim_rtt[idx], t1 - t0);
		if (atomic_load(&lat_phase) && t_enq > 0)
			samples_add(&lat_s[idx], t1 - t_enq);
		snprintf(done, sizeof(done), "/v1/jobs/%ld/complete", id);
		snprintf(req, sizeof(req), "{\"fence\":%ld,\"state\":\"succeeded\",\"exit_code\":0}",
			 fence);
		/* The completion goes with the lease's own job token, as an agent's. */
		char jtok[80] = "";
		const char *tp = strstr(body, "\"token\":\"");
		if (tp) {
			tp += 9;
			size_t n = strcspn(tp, "\"");
			if (n < sizeof(jtok))
				memcpy(jtok, tp, n), jtok[n] = '\0';
		}
		c.token = jtok[0] ? jtok : NULL;
		st = hc_call(&c, "POST", done, req, &body, &len);
		c.token = NULL;
		if (st != 200) {
			fprintf(stderr, "complete: HTTP %d: %s\n", st, body);
			atomic_fetch_add(&errors, 1);
		}
		atomic_fetch_add(&ack_cnt, 1);
	}
	close(c.fd);
	free(c.buf);
	return NULL;
}

struct prefill_arg {
	long n;
	const char *runs_on;
};

static void *prefill_thread(void *arg)
{
	struct prefill_arg *a = arg;
	struct hc c = {0};
	hc_connect(&c);
	/* 16 x 16 = 256 jobs per request. */
	char axis[256] = "[";
	for (int i = 0; i < 16; i++)
		snprintf(axis + strlen(axis), sizeof(axis) - strlen(axis), "%s%d", i ? "," : "", i);
	strcat(axis, "]");
	char spec[2048];
	snprintf(spec, sizeof(spec),
		 "{\"name\":\"b0\",\"runs-on\":[\"%s\"],\"steps\":[{\"run\":\"make test\"}],"
		 "\"env\":{\"REPO\":\"git@example.invalid:org/app.git\",\"REF\":\"refs/heads/main\","
		 "\"SHA\":\"3f2c9a1b7d\"},\"matrix\":{\"x\":%s,\"y\":%s}}",
		 a->runs_on, axis, axis);
	for (long done = 0; done < a->n; done += 256) {
		char *body;
		size_t len;
		int st = hc_call(&c, "POST", "/v1/jobs", spec, &body, &len);
		if (st != 201) {
			fprintf(stderr, "prefill: HTTP %d: %s\n", st, body);
			exit(2);
		}
	}
	close(c.fd);
	free(c.buf);
	return NULL;
}

/*
 * After a prefill the store still has to copy the prefill's write-ahead log
 * into the database (a checkpoint): like the Redis harness waiting for its
 * AOF rewrite, wait until that is done so the measurement does not pay for
 * the setup (at most --settle-secs, default 120).
 */
static void settle(void)
{
	if (!backlog)
		return;
	struct hc c = {0};
	hc_connect(&c);
	int64_t t0 = now_ns(), deadline = t0 + (int64_t)(settle_secs * 1e9);
	long pending = -1;
	while (now_ns() < deadline) {
		char *body;
		size_t len;
		if (hc_call(&c, "GET", "/readyz", NULL, &body, &len) == 200) {
			long frames = json_int(body, "\"wal_frames\":");
			long done = json_int(body, "\"wal_checkpointed\":");
			pending = frames - done;
			if (frames < 0 || pending < 8192)
				break;
		}
		sleep_us(200000);
	}
	fprintf(stderr, "settle: %.1fs (write-ahead log frames pending: %ld)\n",
		(now_ns() - t0) / 1e9, pending);
	close(c.fd);
	free(c.buf);
}

static void prefill(void)
{
	if (!backlog)
		return;
	int64_t t0 = now_ns();
	struct hc c = {0};
	hc_connect(&c);
	/* An agent that has the backlog's label but never asks for work keeps
	 * those jobs schedulable (queued, not "no agent could run it"). */
	if (!backlog_ahead)
		register_agent(&c, "bench-idle", "\"backlog\"");
	close(c.fd);
	free(c.buf);
	enum { T = 4 };
	pthread_t th[T];
	struct prefill_arg args[T];
	for (int i = 0; i < T; i++) {
		args[i] = (struct prefill_arg){(backlog / 256 + T - 1) / T * 256,
					       backlog_ahead ? "linux" : "backlog"};
		pthread_create(&th[i], NULL, prefill_thread, &args[i]);
	}
	for (int i = 0; i < T; i++)
		pthread_join(th[i], NULL);
	fprintf(stderr, "prefill: %ld jobs (%s) in %.1fs\n", args[0].n * T,
		backlog_ahead ? "ahead" : "other", (now_ns() - t0) / 1e9);
}

int main(int argc, char **argv)
{
	static struct option opts[] = {
		{"addr", 1, 0, 'a'},        {"producers", 1, 0, 'P'},  {"consumers", 1, 0, 'C'},
		{"tput-secs", 1, 0, 'T'},   {"warmup-secs", 1, 0, 'w'}, {"lat-secs", 1, 0, 'L'},
		{"lat-rate", 1, 0, 'R'},    {"window", 1, 0, 'W'},     {"backlog", 1, 0, 'b'},
		{"backlog-kind", 1, 0, 'k'}, {"server-pid", 1, 0, 's'}, {"label", 1, 0, 'l'},
		{"settle-secs", 1, 0, 'S'}, {0, 0, 0, 0}};
	int o;
	api_token = getenv("KILN_TOKEN");
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'a': {
			char *colon = strrchr(optarg, ':');
			if (!colon) {
				fprintf(stderr, "--addr HOST:PORT\n");
				return 2;
			}
			snprintf(host, sizeof(host), "%.*s", (int)(colon - optarg), optarg);
			snprintf(port_s, sizeof(port_s), "%s", colon + 1);
			break;
		}
		case 'P': nprod = atoi(optarg); break;
		case 'C': ncons = atoi(optarg); break;
		case 'T': tput_secs = atof(optarg); break;
		case 'w': warm_secs = atof(optarg); break;
		case 'L': lat_secs = atof(optarg); break;
		case 'R': lat_rate = atof(optarg); break;
		case 'W': window_ = atoi(optarg); break;
		case 'b': backlog = atol(optarg); break;
		case 'k': backlog_ahead = !strcmp(optarg, "ahead"); break;
		case 's': server_pid = atoi(optarg); break;
		case 'l': label = optarg; break;
		case 'S': settle_secs = atof(optarg); break;
		default: fprintf(stderr, "bad option\n"); return 2;
		}
	}
	prefill();
	settle();
	claim_rtt = calloc((size_t)ncons, sizeof(*claim_rtt));
	lat_s = calloc((size_t)ncons, sizeof(*lat_s));
	pthread_t *ct = calloc((size_t)ncons, sizeof(*ct)), *pt = calloc((size_t)nprod, sizeof(*pt));
	for (long i = 0; i < ncons; i++)
		pthread_create(&ct[i], NULL, consumer, (void *)i);
	sleep_us(200000);

	/* ---- phase 1: throughput ---- */
	for (int i = 0; i < nprod; i++)
		pthread_create(&pt[i], NULL, producer, NULL);
	sleep_us((long)(warm_secs * 1e6));
	long a0 = atomic_load(&ack_cnt), e0 = atomic_load(&enq_cnt);
	double s0 = server_pid ? proc_cpu_s(server_pid) : 0, c0 = self_cpu_s();
	int64_t t0 = now_ns();
	atomic_store(&measuring, 1);
	sleep_us((long)(tput_secs * 1e6));
	atomic_store(&measuring, 0);
	int64_t t1 = now_ns();
	long a1 = atomic_load(&ack_cnt), e1 = atomic_load(&enq_cnt);
	double s1 = server_pid ? proc_cpu_s(server_pid) : 0, c1 = self_cpu_s();
	atomic_store(&stop_prod, 1);
	for (int i = 0; i < nprod; i++)
		pthread_join(pt[i], NULL);
	double secs = (t1 - t0) / 1e9;
	double tput = (a1 - a0) / secs, enq_rate = (e1 - e0) / secs;
	double srv_ms = server_pid ? (s1 - s0) * 1e3 / ((a1 - a0) / 1000.0) : -1;
	double cli_ms = (c1 - c0) * 1e3 / ((a1 - a0) / 1000.0);

	/* ---- phase 2: dispatch latency (an otherwise idle, drained queue) ---- */
	int do_lat = lat_secs > 0 && !backlog_ahead;
	if (do_lat) {
		int64_t dl = now_ns() + 60000000000LL;
		while (atomic_load(&ack_cnt) < atomic_load(&enq_cnt) && now_ns() < dl)
			sleep_us(10000);
		sleep_us(300000);
		atomic_store(&lat_phase, 1);
		struct paced_arg *pa = calloc((size_t)nprod, sizeof(*pa));
		int64_t st = now_ns() + 50000000LL, en = st + (int64_t)(lat_secs * 1e9);
		for (int i = 0; i < nprod; i++) {
			pa[i] = (struct paced_arg){.idx = i, .rate = lat_rate / nprod, .start = st,
						   .end = en};
			pthread_create(&pt[i], NULL, paced_producer, &pa[i]);
		}
		for (int i = 0; i < nprod; i++)
			pthread_join(pt[i], NULL);
		dl = now_ns() + 10000000000LL;
		while (atomic_load(&ack_cnt) < atomic_load(&enq_cnt) && now_ns() < dl)
			sleep_us(10000);
		atomic_store(&lat_phase, 0);
		free(pa);
	}
	atomic_store(&stop_cons, 1);
	for (int i = 0; i < ncons; i++)
		pthread_join(ct[i], NULL);

	struct samples rtt = {0}, lat = {0};
	for (int i = 0; i < ncons; i++) {
		for (size_t k = 0; k < claim_rtt[i].n; k++)
			samples_add(&rtt, claim_rtt[i].v[k]);
		for (size_t k = 0; k < lat_s[i].n; k++)
			samples_add(&lat, lat_s[i].v[k]);
	}
	qsort(rtt.v, rtt.n, sizeof(*rtt.v), cmp_i64);
	qsort(lat.v, lat.n, sizeof(*lat.v), cmp_i64);
	const char *kind = backlog_ahead ? "ahead" : "other";
	printf("kiln %s backlog=%ld(%s) P=%d C=%d window=%d: %.0f jobs/s (submit %.0f/s) over %.1fs; "
	       "lease RTT p50 %.0fus p99 %.0fus; dispatch latency @%.0f/s p50 %.0fus p99 %.0fus "
	       "(n=%zu); server CPU %.1f ms/1k jobs; errors %ld\n",
	       label, backlog, kind, nprod, ncons, window_, tput, enq_rate, secs, pct_us(&rtt, 50),
	       pct_us(&rtt, 99), lat_rate, pct_us(&lat, 50), pct_us(&lat, 99), lat.n, srv_ms,
	       atomic_load(&errors));
	printf("RESULT sys=kiln label=%s backlog=%ld kind=%s P=%d C=%d tput=%.1f enq=%.1f "
	       "rtt_p50=%.1f rtt_p99=%.1f lat_n=%zu lat_p50=%.1f lat_p99=%.1f lat_max=%.1f "
	       "srv_cpu_ms_per_1k=%.2f cli_cpu_ms_per_1k=%.2f\n",
	       label, backlog, kind, nprod, ncons, tput, enq_rate, pct_us(&rtt, 50), pct_us(&rtt, 99),
	       lat.n, do_lat ? pct_us(&lat, 50) : -1, do_lat ? pct_us(&lat, 99) : -1,
	       do_lat ? pct_us(&lat, 100) : -1, srv_ms, cli_ms);
	fflush(stdout);
	if (atomic_load(&errors)) {
		fprintf(stderr, "%ld requests failed\n", atomic_load(&errors));
		return 1;
	}
	if (do_lat && lat.n < (size_t)(lat_rate * lat_secs * 0.95)) {
		fprintf(stderr, "latency phase: only %zu of ~%.0f jobs measured\n", lat.n,
			lat_rate * lat_secs);
		return 1;
	}
	return 0;
}
