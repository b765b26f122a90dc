/*
 * store-test: the SQLite store through store.h: the job life cycle, fencing
 * (a stale fence changes nothing), idempotent repeats, requeue, listing,
 * load after reopening, artifacts, and group commit under concurrent writers.
 */
#include "store/store-sqlite.h"
#include "store/store.h"
#include "tap.h"

#include <pthread.h>

static char *tmpdir(void)
{
	char tmpl[] = "/tmp/kiln-store-test.XXXXXX";
	char *d = mkdtemp(tmpl);
	return d ? xstrdup(d) : NULL;
}

static struct store *open_store(const char *dir)
{
	_cleanup_free_ char *path = path_join(dir, "kiln.db");
	struct store *s = NULL;
	struct kiln_err err = {0};
	int r = store_open(path, NULL, &s, &err);
	if (r < 0)
		printf("# store_open: %s\n", err.msg);
	return s;
}

static int insert(struct store *s, int64_t id, const char *name, const char *runs_on)
{
	struct store_job_new j = {
		.id = id,
		.name = name,
		.priority = 0,
		.max_attempts = 2,
		.timeout_ms = 60000,
		.runs_on = runs_on,
		.needs = {.slots = 1, .cpus = 1.5, .memory = 1024, .gpus = 0},
		.spec_json = "{\"name\":\"x\"}",
		.submitted_at = 1000 + (uint64_t)id,
	};
	struct store_mut m = {.kind = STORE_JOBS_INSERT, .insert = {&j, 1}};
	return store_apply_wait(s, &m);
}

static int lease(struct store *s, int64_t id, int64_t attempt, int64_t fence, char **ret_spec)
{
	struct store_mut m = {.kind = STORE_JOB_LEASE,
			      .lease = {.job_id = id, .fence = fence, .attempt = attempt,
					.agent_id = 1, .now = 5000}};
	int r = store_apply_wait(s, &m);
	if (ret_spec)
		*ret_spec = m.lease.ret_spec;
	else
		free(m.lease.ret_spec);
	return r;
}

static int finish(struct store *s, int64_t id, int64_t fence, enum job_state st, int code)
{
	struct store_mut m = {.kind = STORE_JOB_FINISH,
			      .finish = {.job_id = id, .fence = fence, .state = st,
					 .has_exit_code = true, .exit_code = code, .now = 6000}};
	return store_apply_wait(s, &m);
}

TEST(job_life_cycle_and_fencing)
{
	_cleanup_free_ char *dir = tmpdir();
	struct store *s = open_store(dir);
	CHECK(s != NULL);
	if (!s)
		return;
	CHECK_EQ(insert(s, 1, "build", "linux"), 0);

	char *spec = NULL;
	CHECK_EQ(lease(s, 1, 1, 10, &spec), 0);
	CHECK_STREQ(spec, "{\"name\":\"x\"}");
	free(spec);
	/* The same attempt cannot be granted twice. */
	CHECK_EQ(lease(s, 1, 1, 11, NULL), -ESTALE);

	struct store_mut st = {.kind = STORE_JOB_START, .start = {1, 10, 5500}};
	CHECK_EQ(store_apply_wait(s, &st), 0);
	CHECK_EQ(store_apply_wait(s, &st), 1); /* repeated: already running */
	st.start.fence = 9;
	CHECK_EQ(store_apply_wait(s, &st), -ESTALE);

	CHECK_EQ(finish(s, 1, 9, JOB_SUCCEEDED, 0), -ESTALE); /* stale fence */
	struct proto_job j;
	CHECK_EQ(store_job_get(s, 1, PROTO_JOB_SPEC | PROTO_JOB_ATTEMPTS, &j), 0);
	CHECK_EQ(j.state, JOB_RUNNING);
	CHECK_EQ(j.fence, 10);
	CHECK_EQ(j.n_attempts, 1);
	CHECK(j.spec != NULL);
	proto_job_release(&j);

	CHECK_EQ(finish(s, 1, 10, JOB_FAILED, 3), 0);
	CHECK_EQ(finish(s, 1, 10, JOB_FAILED, 3), 1);        /* retransmission */
	CHECK_EQ(finish(s, 1, 10, JOB_SUCCEEDED, 0), -ESTALE); /* a second result */
	CHECK_EQ(store_job_get(s, 1, PROTO_JOB_ATTEMPTS, &j), 0);
	CHECK_EQ(j.state, JOB_FAILED);
	CHECK(j.has_exit_code);
	CHECK_EQ(j.exit_code, 3);
	CHECK_EQ(j.attempts[0].state, JOB_FAILED);
	CHECK_EQ(j.attempts[0].exit_code, 3);
	proto_job_release(&j);

	CHECK_EQ(store_job_get(s, 99, 0, &j), -ENOENT);
	CHECK_EQ(finish(s, 99, 1, JOB_FAILED, 1), -ENOENT);
	store_close(s);
	rm_rf(dir);
}

TEST(requeue_then_second_attempt)
{
	_cleanup_free_ char *dir = tmpdir();
	struct store *s = open_store(dir);
	if (!s)
		return;
	CHECK_EQ(insert(s, 1, "a", ""), 0);
	CHECK_EQ(lease(s, 1, 1, 1, NULL), 0);
	struct store_mut m = {.kind = STORE_JOB_REQUEUE,
			      .requeue = {.job_id = 1, .fence = 1, .attempt_state = JOB_LOST,
					  .message = "lease expired", .now = 7000}};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	CHECK_EQ(store_apply_wait(s, &m), -ESTALE); /* already queued */
	/* The old holder's writes are refused. */
	CHECK_EQ(finish(s, 1, 1, JOB_SUCCEEDED, 0), -ESTALE);
	CHECK_EQ(lease(s, 1, 2, 2, NULL), 0);
	CHECK_EQ(finish(s, 1, 1, JOB_SUCCEEDED, 0), -ESTALE);
	CHECK_EQ(finish(s, 1, 2, JOB_SUCCEEDED, 0), 0);
	struct proto_job j;
	CHECK_EQ(store_job_get(s, 1, PROTO_JOB_ATTEMPTS, &j), 0);
	CHECK_EQ(j.attempt, 2);
	CHECK_EQ(j.n_attempts, 2);
	CHECK_EQ(j.attempts[0].state, JOB_LOST);
	CHECK_STREQ(j.attempts[0].message, "lease expired");
	CHECK_EQ(j.attempts[1].state, JOB_SUCCEEDED);
	proto_job_release(&j);
	store_close(s);
	rm_rf(dir);
}

TEST(cancel_queued)
{
	_cleanup_free_ char *dir = tmpdir();
	struct store *s = open_store(dir);
	if (!s)
		return;
	CHECK_EQ(insert(s, 1, "a", ""), 0);
	struct store_mut m = {.kind = STORE_JOB_FINISH,
			      .finish = {.job_id = 1, .fence = 0, .state = JOB_CANCELLED,
					 .message = "cancelled by a user", .now = 1}};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	CHECK_EQ(store_apply_wait(s, &m), -ESTALE);
	CHECK_EQ(lease(s, 1, 1, 1, NULL), -ESTALE);
	store_close(s);
	rm_rf(dir);
}

static void on_job(void *ud, const struct proto_job *j)
{
	int64_t *sum = ud;
	*sum += j->id * 100 + j->state;
}

static void on_agent(void *ud, const struct proto_agent *a)
{
	int64_t *sum = ud;
	*sum += 1000000 * a->id + (int64_t)a->n_labels * 1000 + a->draining;
}

TEST(list_and_load_after_reopen)
{
	_cleanup_free_ char *dir = tmpdir();
	struct store *s = open_store(dir);
	if (!s)
		return;
	for (int i = 1; i <= 5; i++)
		CHECK_EQ(insert(s, i, i % 2 ? "odd" : "even", i == 3 ? "linux,gpu" : "linux"), 0);
	CHECK_EQ(lease(s, 2, 1, 7, NULL), 0);
	CHECK_EQ(finish(s, 2, 7, JOB_SUCCEEDED, 0), 0);
	CHECK_EQ(lease(s, 4, 1, 8, NULL), 0);
	struct store_mut a = {.kind = STORE_AGENT_PUT,
			      .agent = {.id = 3, .name = "host", .labels = "linux,gpu",
					.capacity = {.slots = 2}, .now = 1}};
	CHECK_EQ(store_apply_wait(s, &a), 0);
	struct store_mut d = {.kind = STORE_AGENT_DRAIN, .drain = {3, true}};
	CHECK_EQ(store_apply_wait(s, &d), 0);
	d.drain.id = 4;
	CHECK_EQ(store_apply_wait(s, &d), -ENOENT);

	struct store_job_filter f = {.limit = 10};
	struct proto_job *v;
	size_t n;
	CHECK_EQ(store_job_list(s, &f, &v, &n), 0);
	CHECK_EQ(n, 5);
	CHECK_EQ(v[0].id, 5); /* newest first */
	proto_jobs_free(v, n);
	f.states = 1u << JOB_QUEUED;
	CHECK_EQ(store_job_list(s, &f, &v, &n), 0);
	CHECK_EQ(n, 3);
	proto_jobs_free(v, n);
	f.states = 0;
	f.label = "gpu";
	CHECK_EQ(store_job_list(s, &f, &v, &n), 0);
	CHECK_EQ(n, 1);
	CHECK_EQ(n ? v[0].id : 0, 3);
	proto_jobs_free(v, n);
	f.label = "gp"; /* whole labels only */
	CHECK_EQ(store_job_list(s, &f, &v, &n), 0);
	CHECK_EQ(n, 0);
	proto_jobs_free(v, n);
	f.label = NULL;
	f.name = "odd";
	f.limit = 2;
	CHECK_EQ(store_job_list(s, &f, &v, &n), 0);
	CHECK_EQ(n, 2);
	int64_t last = n ? v[n - 1].id : 0;
	proto_jobs_free(v, n);
	f.before_id = last;
	CHECK_EQ(store_job_list(s, &f, &v, &n), 0);
	CHECK_EQ(n, 1);
	CHECK_EQ(n ? v[0].id : 0, 1);
	proto_jobs_free(v, n);
	store_close(s);

	s = open_store(dir);
	if (!s)
		return;
	int64_t sum = 0;
	struct store_load_info info;
	CHECK_EQ(store_load(s, on_job, on_agent, &sum, &info), 0);
	CHECK_EQ(info.n_jobs, 4); /* 2 finished */
	CHECK_EQ(info.n_agents, 1);
	CHECK_EQ(info.max_job_id, 5);
	CHECK_EQ(info.max_fence, 8);
	CHECK_EQ(info.max_agent_id, 3);
	CHECK_EQ(sum, (100 + 300 + 401 + 500) + (3000000 + 2000 + 1));
	store_close(s);
	rm_rf(dir);
}

TEST(artifacts_are_fenced)
{
	_cleanup_free_ char *dir = tmpdir();
	struct store *s = open_store(dir);
	if (!s)
		return;
	CHECK_EQ(insert(s, 1, "a", ""), 0);
	CHECK_EQ(lease(s, 1, 1, 5, NULL), 0);
	const char *h = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
	struct store_mut m = {.kind = STORE_ARTIFACT_PUT,
			      .artifact = {.job_id = 1, .fence = 4, .attempt = 1, .path = "out/a",
					   .sha256 = h, .size = 0, .now = 1}};
	CHECK_EQ(store_apply_wait(s, &m), -ESTALE);
	m.artifact.fence = 5;
	CHECK_EQ(store_apply_wait(s, &m), 0);
	CHECK_EQ(store_apply_wait(s, &m), 0); /* replace */
	struct proto_artifact *v;
	size_t n;
	CHECK_EQ(store_artifact_list(s, 1, &v, &n), 0);
	CHECK_EQ(n, 1);
	CHECK_STREQ(n ? v[0].sha256 : "", h);
	proto_artifacts_free(v, n);
	struct proto_artifact a;
	CHECK_EQ(store_artifact_get(s, 1, "out/a", &a), 0);
	CHECK_STREQ(a.path, "out/a");
	proto_artifact_release(&a);
	CHECK_EQ(store_artifact_get(s, 1, "out/b", &a), -ENOENT);
	CHECK_EQ(store_blob_referenced(s, h), 1);
	CHECK_EQ(store_blob_referenced(s, "00"), 0);
	CHECK_EQ(finish(s, 1, 5, JOB_SUCCEEDED, 0), 0);
	m.artifact.path = "late";
	CHECK_EQ(store_apply_wait(s, &m), -ESTALE); /* the job has ended */
	store_close(s);
	rm_rf(dir);
}

struct writer_arg {
	struct store *s;
	int64_t first;
	int n;
	int failures;
};

static void *writer_thread(void *p)
{
	struct writer_arg *a = p;
	for (int i = 0; i < a->n; i++)
		if (insert(a->s, a->first + i, "load", "") != 0)
			a->failures++;
	return NULL;
}

TEST(group_commit_batches_concurrent_writers)
{
	_cleanup_free_ char *dir = tmpdir();
	struct store *s = open_store(dir);
	if (!s)
		return;
	enum { T = 8, N = 50 };
	pthread_t th[T];
	struct writer_arg args[T];
	for (int i = 0; i < T; i++) {
		args[i] = (struct writer_arg){s, 1 + (int64_t)i * N, N, 0};
		pthread_create(&th[i], NULL, writer_thread, &args[i]);
	}
	int failures = 0;
	for (int i = 0; i < T; i++) {
		pthread_join(th[i], NULL);
		failures += args[i].failures;
	}
	CHECK_EQ(failures, 0);
	struct store_stats st;
	store_get_stats(s, &st);
	CHECK_EQ(st.mutations, T * N);
	/* Eight threads each waiting for its commit: batches must form. */
	CHECK(st.batches < st.mutations);
	CHECK(st.max_batch > 1);
	printf("# %d mutations in %" PRIu64 " batches (max %" PRIu64 ")\n", T * N, st.batches,
	       st.max_batch);
	store_close(s);
	s = open_store(dir);
	if (!s)
		return;
	struct store_job_filter f = {.limit = 1000};
	struct proto_job *v;
	size_t n;
	CHECK_EQ(store_job_list(s, &f, &v, &n), 0);
	CHECK_EQ(n, T * N);
	proto_jobs_free(v, n);
	store_close(s);
	rm_rf(dir);
}

/* The durable writer's WAL frames go out in one write per commit, and a
 * reader (another connection) sees every commit as soon as it is answered. */
TEST(wal_buffered_per_commit_and_visible_to_readers)
{
	_cleanup_free_ char *dir = tmpdir();
	struct store *s = open_store(dir);
	if (!s)
		return;
	CHECK(sq_walbuf_vfs() != NULL);
	uint64_t before = sq_walbuf_writes();
	for (int64_t id = 1; id <= 50; id++) {
		CHECK_EQ(insert(s, id, "w", ""), 0);
		struct proto_job j;
		CHECK_EQ(store_job_get(s, id, 0, &j), 0);
		CHECK_EQ(j.id, id);
		proto_job_release(&j);
	}
	uint64_t writes = sq_walbuf_writes() - before;
	CHECK(writes >= 50);
	printf("# 50 commits, %" PRIu64 " buffered WAL writes\n", writes);
	/* One commit of ~2 MiB of frames (a big matrix): written in pieces. */
	enum { BIG = 500 };
	struct store_job_new *v_new = xcalloc(BIG, sizeof(*v_new));
	char *spec = xmalloc(4000);
	memset(spec, 'x', 3999);
	spec[0] = '"';
	spec[3998] = '"';
	spec[3999] = '\0';
	for (int i = 0; i < BIG; i++)
		v_new[i] = (struct store_job_new){.id = 100 + i, .name = "big", .max_attempts = 1,
						  .timeout_ms = 1000, .runs_on = "",
						  .spec_json = spec, .submitted_at = 1};
	struct store_mut big = {.kind = STORE_JOBS_INSERT, .insert = {v_new, BIG}};
	CHECK_EQ(store_apply_wait(s, &big), 0);
	char *got = NULL;
	CHECK_EQ(store_job_spec(s, 100 + BIG - 1, &got), 0);
	CHECK(got && streq(got, spec));
	free(got);
	free(spec);
	free(v_new);
	store_close(s);
	/* And after a restart, the WAL replays into the same jobs. */
	s = open_store(dir);
	if (!s)
		return;
	struct store_job_filter f = {.limit = 100};
	struct proto_job *v;
	size_t n;
	CHECK_EQ(store_job_list(s, &f, &v, &n), 0);
	CHECK_EQ(n, 100);
	proto_jobs_free(v, n);
	store_close(s);
	rm_rf(dir);
}

static int report_usage(struct store *s, int64_t id, int64_t fence, uint64_t wall, uint64_t cpu,
			uint64_t mem, struct store_mut *ret)
{
	struct store_mut m = {.kind = STORE_ATTEMPT_USAGE};
	m.usage.job_id = id;
	m.usage.fence = fence;
	m.usage.usage = (struct proto_usage){.reported = true, .wall_ms = wall, .cpu_user_ms = cpu,
					     .cpu_system_ms = 1, .memory_peak_bytes = mem,
					     .io_read_bytes = 10, .io_write_bytes = 20,
					     .executor = "sandbox"};
	int r = store_apply_wait(s, &m);
	if (ret)
		*ret = m;
	return r;
}

struct scan_ctx {
	int n, final;
	uint64_t wall;
	char runs_on[64];
};

static int on_attempt(void *ud, const struct store_attempt_row *row)
{
	struct scan_ctx *c = ud;
	c->n++;
	c->final += row->final;
	c->wall += row->usage.wall_ms;
	snprintf(c->runs_on, sizeof(c->runs_on), "%s", row->runs_on);
	return 0;
}

TEST(usage_recorded_once_and_summed)
{
	_cleanup_free_ char *dir = tmpdir();
	struct store *s = open_store(dir);
	if (!s)
		return;
	CHECK_EQ(insert(s, 1, "a", "linux"), 0);
	CHECK_EQ(insert(s, 2, "b", "linux,gpu"), 0);
	struct store_mut m = {.kind = STORE_JOB_LEASE,
			      .lease = {.job_id = 1, .fence = 10, .attempt = 1, .agent_id = 1,
					.now = 5000, .queue_wait_ms = 250, .gpus = 2}};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	free(m.lease.ret_spec);
	/* The attempt is lost and requeued, then a second attempt succeeds. */
	struct store_mut rq = {.kind = STORE_JOB_REQUEUE,
			       .requeue = {.job_id = 1, .fence = 10, .attempt_state = JOB_LOST,
					   .now = 5500}};
	CHECK_EQ(store_apply_wait(s, &rq), 0);
	CHECK_EQ(lease(s, 1, 2, 11, NULL), 0);
	CHECK_EQ(finish(s, 1, 11, JOB_SUCCEEDED, 0), 0);
	CHECK_EQ(lease(s, 2, 1, 12, NULL), 0);
	CHECK_EQ(finish(s, 2, 12, JOB_FAILED, 1), 0);

	/* A late report of the lost attempt still counts (it used resources). */
	struct store_mut got;
	CHECK_EQ(report_usage(s, 1, 10, 1000, 400, 1 << 20, &got), 0);
	CHECK_EQ(got.usage.ret_gpus, 2);
	CHECK_EQ(got.usage.ret_queue_wait_ms, 250);
	CHECK_EQ(report_usage(s, 1, 10, 9999, 9999, 9999, NULL), 1); /* the first one counts */
	CHECK_EQ(report_usage(s, 1, 11, 3000, 1500, 4 << 20, NULL), 0);
	CHECK_EQ(report_usage(s, 2, 12, 500, 100, 1 << 20, NULL), 0);
	CHECK_EQ(report_usage(s, 1, 12, 1, 1, 1, NULL), -ENOENT); /* fence of another job */
	CHECK_EQ(report_usage(s, 7, 70, 1, 1, 1, NULL), -ENOENT);

	struct proto_job j;
	CHECK_EQ(store_job_get(s, 1, PROTO_JOB_ATTEMPTS, &j), 0);
	CHECK_EQ(j.n_attempts, 2);
	CHECK(j.attempts[0].usage.reported);
	CHECK_EQ(j.attempts[0].usage.wall_ms, 1000);
	CHECK_EQ(j.attempts[0].usage.queue_wait_ms, 250);
	CHECK_EQ(j.attempts[0].usage.gpus, 2);
	CHECK_STREQ(j.attempts[0].usage.executor, "sandbox");
	CHECK_EQ(j.usage.wall_ms, 4000);
	CHECK_EQ(j.usage.cpu_user_ms, 1900);
	CHECK_EQ(j.usage.cpu_system_ms, 2);
	CHECK_EQ(j.usage.memory_peak_bytes, 4 << 20);
	CHECK_EQ(j.usage.io_write_bytes, 40);
	proto_job_release(&j);

	struct store_window w = {.since = 0};
	struct store_usage_row *rows = NULL;
	size_t n = 0;
	CHECK_EQ(store_usage(s, &w, &rows, &n), 0);
	CHECK_EQ(n, 1);
	if (n == 1) {
		CHECK_STREQ(rows[0].org, "default");
		CHECK_EQ(rows[0].jobs, 2);
		CHECK_EQ(rows[0].attempts, 3);
		CHECK_EQ(rows[0].sum.wall_ms, 4500);
		CHECK_EQ(rows[0].sum.cpu_user_ms, 2000);
		CHECK_EQ(rows[0].sum.queue_wait_ms, 250);
		CHECK_EQ(rows[0].gpu_ms, 2000); /* 2 GPUs x 1000 ms on the first attempt */
		CHECK_EQ(rows[0].sum.memory_peak_bytes, 4 << 20);
		CHECK(rows[0].memory_byte_seconds > 0);
	}
	store_usage_rows_free(rows, n);
	/* A window that ends before anything finished, and an unknown org. */
	w.until = 5000;
	CHECK_EQ(store_usage(s, &w, &rows, &n), 0);
	CHECK_EQ(n, 0);
	store_usage_rows_free(rows, n);
	w = (struct store_window){.since = 0, .org = "acme"};
	CHECK_EQ(store_usage(s, &w, &rows, &n), 0);
	CHECK_EQ(n, 0);
	store_usage_rows_free(rows, n);

	struct scan_ctx sc = {0};
	w = (struct store_window){.since = 0, .org = "default"};
	CHECK_EQ(store_attempts_scan(s, &w, on_attempt, &sc), 0);
	CHECK_EQ(sc.n, 3);
	CHECK_EQ(sc.final, 2); /* the requeued attempt is not a job's last */
	CHECK_EQ(sc.wall, 4500);
	CHECK_STREQ(sc.runs_on, "linux,gpu");
	store_close(s);
	rm_rf(dir);
}

TEST(schema_1_is_migrated)
{
	_cleanup_free_ char *dir = tmpdir();
	_cleanup_free_ char *db = path_join(dir, "kiln.db");
	/* A database as kiln 0.1 (schema 1) left it, made with the sqlite3 shell. */
	_cleanup_free_ char *cmd = xasprintf(
		"sqlite3 '%s' \"CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) "
		"WITHOUT ROWID; INSERT INTO meta VALUES ('schema', '1'); "
		"CREATE TABLE attempts (job_id INTEGER NOT NULL, attempt INTEGER NOT NULL, "
		"fence INTEGER NOT NULL UNIQUE, agent_id INTEGER NOT NULL, state INTEGER NOT NULL, "
		"leased_at INTEGER NOT NULL, started_at INTEGER NOT NULL DEFAULT 0, finished_at "
		"INTEGER NOT NULL DEFAULT 0, exit_code INTEGER, message TEXT, PRIMARY KEY (job_id, "
		"attempt)) WITHOUT ROWID; INSERT INTO attempts (job_id, attempt, fence, agent_id, "
		"state, leased_at, finished_at) VALUES (1, 1, 5, 1, 3, 100, 200);\" 2>/dev/null",
		db);
	FILE *sh = access("/usr/bin/sqlite3", X_OK) == 0 ? popen(cmd, "r") : NULL;
	if (!sh || pclose(sh) != 0) {
		printf("# skip: the sqlite3 shell is not installed\n");
		rm_rf(dir);
		return;
	}
	struct store *s = open_store(dir);
	CHECK(s != NULL);
	if (!s) {
		rm_rf(dir);
		return;
	}
	CHECK_EQ(insert(s, 1, "old", "linux"), 0);
	struct proto_job j;
	CHECK_EQ(store_job_get(s, 1, PROTO_JOB_ATTEMPTS, &j), 0);
	CHECK_EQ(j.n_attempts, 1);
	CHECK(!j.attempts[0].usage.reported);
	proto_job_release(&j);
	CHECK_EQ(report_usage(s, 1, 5, 100, 50, 4096, NULL), 0);
	store_close(s);
	_cleanup_free_ char *q = xasprintf("sqlite3 '%s' \"SELECT value FROM meta WHERE key = "
					   "'schema'\"",
					   db);
	FILE *p = popen(q, "r");
	char line[32] = "";
	if (p) {
		if (!fgets(line, sizeof(line), p))
			line[0] = '\0';
		pclose(p);
	}
	CHECK(strtol(line, NULL, 10) >= 2);
	rm_rf(dir);
}

TEST(bad_path_and_url)
{
	struct store *s = NULL;
	struct kiln_err err = {0};
	CHECK(store_open("/nonexistent/dir/kiln.db", NULL, &s, &err) < 0);
	CHECK(strstr(err.msg, "/nonexistent/dir/kiln.db") != NULL);
	CHECK_EQ(store_open("postgres://x/y", NULL, &s, &err), -EPROTONOSUPPORT);
	CHECK(strstr(err.msg, "unsupported backend") != NULL);
}

int main(void) { return tap_run(); }
