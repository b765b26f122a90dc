/*
 * store-tenancy-test: the tenancy tables through store.h — the upgrade of a
 * version 1 database, orgs, tokens (create, find, revoke), wrapped keys with
 * conditional rotation, secrets, the audit log (attached records, the hash
 * chain, append-only triggers, tamper detection) and webhook replay keys.
 */
#include "store/store.h"
#include "tap.h"

#include <sqlite3.h>

static char *tmpdir(void)
{
	char tmpl[] = "/tmp/kiln-store-tenancy-test.XXXXXX";
	char *d = mkdtemp(tmpl);
	return d ? xstrdup(d) : NULL;
}

static struct store *open_store(const char *path)
{
	struct store *s = NULL;
	struct kiln_err err = {0};
	if (store_open(path, NULL, &s, &err) < 0)
		printf("# store_open: %s\n", err.msg);
	return s;
}

/* A database as kiln 0.1 (schema version 1) left it, with one job and one agent. */
static const char v1_schema[] =
	"CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
	"INSERT INTO meta VALUES ('schema', '1');"
	"CREATE TABLE jobs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, state INTEGER NOT NULL,"
	" priority INTEGER NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT"
	" NULL, fence INTEGER NOT NULL DEFAULT 0, agent_id INTEGER NOT NULL DEFAULT 0, runs_on TEXT"
	" NOT NULL, need_cpus REAL NOT NULL, need_memory INTEGER NOT NULL, need_gpus INTEGER NOT"
	" NULL, timeout_ms INTEGER NOT NULL, submitted_at INTEGER NOT NULL, leased_at INTEGER NOT"
	" NULL DEFAULT 0, started_at INTEGER NOT NULL DEFAULT 0, finished_at INTEGER NOT NULL"
	" DEFAULT 0, exit_code INTEGER, message TEXT, retry_of INTEGER NOT NULL DEFAULT 0, spec"
	" TEXT NOT NULL);"
	"CREATE TABLE agents (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, labels TEXT NOT"
	" NULL, slots INTEGER NOT NULL, cpus REAL NOT NULL, memory INTEGER NOT NULL, gpus INTEGER"
	" NOT NULL, draining INTEGER NOT NULL DEFAULT 0, registered_at INTEGER NOT NULL);"
	"INSERT INTO jobs (id, name, state, priority, max_attempts, runs_on, need_cpus,"
	" need_memory, need_gpus, timeout_ms, submitted_at, spec) VALUES (7, 'old', 0, 0, 1,"
	" 'linux', 0, 0, 0, 1000, 1, '{}');"
	"INSERT INTO agents (id, name, labels, slots, cpus, memory, gpus, registered_at) VALUES"
	" (3, 'host', 'linux', 1, 1, 0, 0, 1);";

static int n_jobs, n_agents;
static int64_t seen_job_org, seen_agent_org;

static void on_job(void *ud, const struct proto_job *j)
{
	(void)ud;
	n_jobs++;
	seen_job_org = j->org_id;
}

static void on_agent(void *ud, const struct proto_agent *a)
{
	(void)ud;
	n_agents++;
	seen_agent_org = a->org_id;
}

TEST(upgrades_a_version_1_database)
{
	_cleanup_free_ char *dir = tmpdir();
	_cleanup_free_ char *path = path_join(dir, "kiln.db");
	sqlite3 *db = NULL;
	CHECK_EQ(sqlite3_open(path, &db), SQLITE_OK);
	CHECK_EQ(sqlite3_exec(db, v1_schema, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	struct store *s = open_store(path);
	CHECK(s != NULL);
	if (!s)
		return;
	struct store_load_info info;
	CHECK_EQ(store_load(s, on_job, on_agent, NULL, &info), 0);
	CHECK_EQ(n_jobs, 1);
	CHECK_EQ(seen_job_org, 1); /* old jobs belong to the default org */
	CHECK_EQ(n_agents, 1);
	CHECK_EQ(seen_agent_org, 0); /* old agents serve the shared pool */
	struct proto_org *orgs = NULL;
	size_t n = 0;
	CHECK_EQ(store_orgs_list(s, &orgs, &n), 0);
	CHECK_EQ(n, 1);
	if (n)
		CHECK_STREQ(orgs[0].name, "default");
	proto_orgs_free(orgs, n);
	store_close(s);

	/* Opening it again changes nothing. */
	s = open_store(path);
	CHECK(s != NULL);
	if (!s)
		return;
	CHECK_EQ(store_orgs_list(s, &orgs, &n), 0);
	CHECK_EQ(n, 1);
	proto_orgs_free(orgs, n);
	store_close(s);
	rm_rf(dir);
}

TEST(orgs_and_tokens)
{
	_cleanup_free_ char *dir = tmpdir();
	_cleanup_free_ char *path = path_join(dir, "kiln.db");
	struct store *s = open_store(path);
	CHECK(s != NULL);
	if (!s)
		return;
	struct store_mut m = {.kind = STORE_ORG_CREATE, .org = {.name = "acme", .now = 5}};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	int64_t acme = m.org.ret_id;
	CHECK(acme > 1);
	m = (struct store_mut){.kind = STORE_ORG_CREATE, .org = {.name = "acme", .now = 6}};
	CHECK_EQ(store_apply_wait(s, &m), -EEXIST);

	char ci[] = "ci";
	struct proto_token t = {.role = ROLE_MEMBER, .org_id = acme, .name = ci, .created_at = 10,
				.expires_at = 99};
	memset(t.hash, 'a', 64);
	m = (struct store_mut){.kind = STORE_TOKEN_CREATE, .token = {.t = &t}};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	int64_t tid = m.token.ret_id;
	CHECK(tid > 0);
	m = (struct store_mut){.kind = STORE_TOKEN_CREATE, .token = {.t = &t}};
	CHECK_EQ(store_apply_wait(s, &m), -EEXIST); /* the same hash twice */

	struct proto_token f;
	CHECK_EQ(store_token_find(s, t.hash, &f), 0);
	CHECK_EQ(f.id, tid);
	CHECK_EQ(f.role, ROLE_MEMBER);
	CHECK_EQ(f.org_id, acme);
	CHECK_EQ(f.expires_at, 99);
	CHECK_STREQ(f.name, "ci");
	proto_token_release(&f);
	char other[65];
	memset(other, 'b', 64);
	other[64] = '\0';
	CHECK_EQ(store_token_find(s, other, &f), -ENOENT);

	m = (struct store_mut){.kind = STORE_TOKEN_REVOKE, .token_revoke = {tid, 50}};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	m = (struct store_mut){.kind = STORE_TOKEN_REVOKE, .token_revoke = {tid, 60}};
	CHECK_EQ(store_apply_wait(s, &m), 1);
	m = (struct store_mut){.kind = STORE_TOKEN_REVOKE, .token_revoke = {tid + 100, 60}};
	CHECK_EQ(store_apply_wait(s, &m), -ENOENT);
	m = (struct store_mut){.kind = STORE_TOKEN_TOUCH, .token_touch = {tid, 70}};
	CHECK_EQ(store_apply_wait(s, &m), 0);

	struct proto_token *v = NULL;
	size_t n = 0;
	CHECK_EQ(store_tokens_list(s, acme, &v, &n), 0);
	CHECK_EQ(n, 1);
	if (n) {
		CHECK_EQ(v[0].revoked_at, 50);
		CHECK_EQ(v[0].last_used_at, 70);
	}
	proto_tokens_free(v, n);
	CHECK_EQ(store_tokens_list(s, 1, &v, &n), 0);
	CHECK_EQ(n, 0);
	proto_tokens_free(v, n);
	store_close(s);
	rm_rf(dir);
}

TEST(keys_rotate_only_from_the_expected_key)
{
	_cleanup_free_ char *dir = tmpdir();
	_cleanup_free_ char *path = path_join(dir, "kiln.db");
	struct store *s = open_store(path);
	CHECK(s != NULL);
	if (!s)
		return;
	char w1[] = "wrapped-1", w2[] = "wrapped-2";
	struct store_key k[2] = {
		{.org_id = 0, .key_id = "aaaa", .wrapped = w1, .len = sizeof(w1), .now = 1},
		{.org_id = 1, .key_id = "aaaa", .wrapped = w1, .len = sizeof(w1), .now = 1},
	};
	struct store_mut m = {.kind = STORE_KEYS_PUT, .keys = {k, 2}};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	/* A second insert for an org that has a key is refused. */
	m = (struct store_mut){.kind = STORE_KEYS_PUT, .keys = {k, 1}};
	CHECK_EQ(store_apply_wait(s, &m), -ESTALE);
	/* Rotation: both or neither. */
	struct store_key r[2] = {
		{.org_id = 0, .key_id = "bbbb", .expect_key_id = "aaaa", .wrapped = w2,
		 .len = sizeof(w2), .now = 2},
		{.org_id = 1, .key_id = "bbbb", .expect_key_id = "cccc", .wrapped = w2,
		 .len = sizeof(w2), .now = 2},
	};
	m = (struct store_mut){.kind = STORE_KEYS_PUT, .keys = {r, 2}};
	CHECK_EQ(store_apply_wait(s, &m), -ESTALE);
	struct store_key *v = NULL;
	size_t n = 0;
	CHECK_EQ(store_keys_list(s, &v, &n), 0);
	CHECK_EQ(n, 2);
	for (size_t i = 0; i < n; i++)
		CHECK_STREQ(v[i].key_id, "aaaa");
	store_keys_free(v, n);
	memcpy(r[1].expect_key_id, "aaaa", 5);
	m = (struct store_mut){.kind = STORE_KEYS_PUT, .keys = {r, 2}};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	CHECK_EQ(store_keys_list(s, &v, &n), 0);
	for (size_t i = 0; i < n; i++) {
		CHECK_STREQ(v[i].key_id, "bbbb");
		CHECK(v[i].len == sizeof(w2) && memcmp(v[i].wrapped, w2, sizeof(w2)) == 0);
	}
	store_keys_free(v, n);
	store_close(s);
	rm_rf(dir);
}

TEST(secrets)
{
	_cleanup_free_ char *dir = tmpdir();
	_cleanup_free_ char *path = path_join(dir, "kiln.db");
	struct store *s = open_store(path);
	CHECK(s != NULL);
	if (!s)
		return;
	struct store_mut m = {.kind = STORE_SECRET_PUT,
			      .secret = {.org_id = 1, .name = "B", .version = 1, .sealed = "xx",
					 .len = 2, .now = 1}};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	m.secret.name = "A";
	m.secret.version = 2;
	CHECK_EQ(store_apply_wait(s, &m), 0);
	m.secret.version = 3;
	m.secret.sealed = "yyy";
	m.secret.len = 3;
	CHECK_EQ(store_apply_wait(s, &m), 0); /* replaces A */
	m.secret.org_id = 2;
	CHECK_EQ(store_apply_wait(s, &m), 0);

	struct store_secret *v = NULL;
	size_t n = 0;
	CHECK_EQ(store_secrets_list(s, 1, false, &v, &n), 0);
	CHECK_EQ(n, 2);
	if (n == 2) {
		CHECK_STREQ(v[0].name, "A");
		CHECK_EQ(v[0].version, 3);
		CHECK(v[0].sealed == NULL);
		CHECK_STREQ(v[1].name, "B");
	}
	store_secrets_free(v, n);
	struct store_secret one;
	CHECK_EQ(store_secret_get(s, 1, "A", &one), 0);
	CHECK(one.len == 3 && memcmp(one.sealed, "yyy", 3) == 0);
	free(one.name);
	free(one.sealed);
	int64_t maxv = 0;
	CHECK_EQ(store_secret_max_version(s, &maxv), 0);
	CHECK_EQ(maxv, 3);
	m = (struct store_mut){.kind = STORE_SECRET_DELETE, .secret = {.org_id = 1, .name = "A"}};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	CHECK_EQ(store_apply_wait(s, &m), -ENOENT);
	CHECK_EQ(store_secret_get(s, 1, "A", &one), -ENOENT);
	CHECK_EQ(store_secret_get(s, 2, "A", &one), 0);
	free(one.name);
	free(one.sealed);
	store_close(s);
	rm_rf(dir);
}

TEST(audit_chain_is_append_only_and_detects_tampering)
{
	_cleanup_free_ char *dir = tmpdir();
	_cleanup_free_ char *path = path_join(dir, "kiln.db");
	struct store *s = open_store(path);
	CHECK(s != NULL);
	if (!s)
		return;
	/* Attached to a mutation that applies, and to one that is refused. */
	struct store_audit a = {.org_id = 1, .token_id = 4, .actor = "token 4 (ci)",
				.action = "orgs.create", .target = "org x", .source = "127.0.0.1",
				.status = 201, .now = 100};
	struct store_mut m = {.kind = STORE_ORG_CREATE, .org = {.name = "x", .now = 100},
			      .audit = &a};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	CHECK_EQ(a.ret_seq, 1);
	m = (struct store_mut){.kind = STORE_ORG_CREATE, .org = {.name = "x", .now = 101},
			       .audit = &a};
	CHECK_EQ(store_apply_wait(s, &m), -EEXIST);
	CHECK_EQ(a.ret_seq, 2);
	struct store_audit b = {.org_id = 2, .actor = "token 5", .action = "jobs.cancel",
				.target = "job 9", .status = 403, .now = 200};
	m = (struct store_mut){.kind = STORE_AUDIT, .audit = &b};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	CHECK_EQ(b.ret_seq, 3);

	struct proto_audit *v = NULL;
	size_t n = 0;
	struct store_audit_filter f = {.org_id = -1, .limit = 100};
	CHECK_EQ(store_audit_list(s, &f, &v, &n), 0);
	CHECK_EQ(n, 3);
	if (n == 3) {
		CHECK_STREQ(v[0].result, "ok");
		CHECK_EQ(v[0].status, 201);
		CHECK_STREQ(v[1].result, "conflict");
		CHECK_EQ(v[1].status, 409);
		CHECK_STREQ(v[2].result, "denied");
		CHECK_STREQ(v[1].prev, v[0].hash);
		CHECK_STREQ(v[2].prev, v[1].hash);
	}
	proto_audits_free(v, n);
	f = (struct store_audit_filter){.org_id = 2, .limit = 100};
	CHECK_EQ(store_audit_list(s, &f, &v, &n), 0);
	CHECK_EQ(n, 1);
	proto_audits_free(v, n);
	f = (struct store_audit_filter){.org_id = -1, .since = 150, .limit = 100};
	CHECK_EQ(store_audit_list(s, &f, &v, &n), 0);
	CHECK_EQ(n, 1);
	proto_audits_free(v, n);
	int64_t count = 0, bad = 0;
	CHECK_EQ(store_audit_verify(s, &count, &bad), 0);
	CHECK_EQ(count, 3);
	store_close(s);

	/* Behind the store's back: the triggers refuse changes... */
	sqlite3 *db = NULL;
	CHECK_EQ(sqlite3_open(path, &db), SQLITE_OK);
	CHECK(sqlite3_exec(db, "UPDATE audit SET target = 'job 10' WHERE seq = 3", NULL, NULL,
			   NULL) != SQLITE_OK);
	CHECK(sqlite3_exec(db, "DELETE FROM audit WHERE seq = 2", NULL, NULL, NULL) != SQLITE_OK);
	/* ...and a forger who drops them is caught by the chain. */
	CHECK_EQ(sqlite3_exec(db,
			      "DROP TRIGGER audit_no_update;"
			      "UPDATE audit SET target = 'job 10' WHERE seq = 2",
			      NULL, NULL, NULL),
		 SQLITE_OK);
	sqlite3_close(db);
	s = open_store(path);
	CHECK(s != NULL);
	if (!s)
		return;
	CHECK_EQ(store_audit_verify(s, &count, &bad), -EBADMSG);
	CHECK_EQ(bad, 2);
	store_close(s);
	rm_rf(dir);
}

static void count_done(struct store_mut *m, void *ud)
{
	(void)m;
	(*(int *)ud)++;
}

/* Two stores on one file (a server and `kiln admin token`) append in turn,
 * several records per transaction too: the chain stays whole. */
TEST(audit_chain_with_two_writers)
{
	_cleanup_free_ char *dir = tmpdir();
	_cleanup_free_ char *path = path_join(dir, "kiln.db");
	struct store *s1 = open_store(path), *s2 = open_store(path);
	CHECK(s1 && s2);
	if (!s1 || !s2) {
		store_close(s1);
		store_close(s2);
		return;
	}
	struct store_audit a[40];
	struct store_mut m[40];
	int done = 0;
	for (int round = 0; round < 4; round++) {
		struct store *s = round % 2 ? s2 : s1;
		for (int i = round * 10; i < round * 10 + 10; i++) {
			a[i] = (struct store_audit){.org_id = 1, .actor = "t", .action = "jobs.submit",
						    .target = "job", .status = 201, .now = 100 + i};
			m[i] = (struct store_mut){.kind = STORE_AUDIT, .audit = &a[i],
						  .done = count_done, .userdata = &done};
			if (i % 10 == 9)
				CHECK_EQ(store_apply_wait(s, &m[i]), 0);
			else
				store_submit(s, &m[i]);
		}
	}
	CHECK_EQ(done, 36);
	for (int i = 0; i < 40; i++)
		CHECK_EQ(a[i].ret_seq, i + 1);
	int64_t count = 0, bad = 0;
	CHECK_EQ(store_audit_verify(s1, &count, &bad), 0);
	CHECK_EQ(count, 40);
	store_close(s1);
	store_close(s2);
	rm_rf(dir);
}

TEST(webhook_replays_create_nothing)
{
	_cleanup_free_ char *dir = tmpdir();
	_cleanup_free_ char *path = path_join(dir, "kiln.db");
	struct store *s = open_store(path);
	CHECK(s != NULL);
	if (!s)
		return;
	struct store_job_new j = {.id = 1, .name = "gh", .max_attempts = 1, .timeout_ms = 1000,
				  .runs_on = "linux", .needs = {.slots = 1}, .spec_json = "{}",
				  .org_id = 1};
	struct store_mut m = {.kind = STORE_WEBHOOK_DELIVERY,
			      .webhook = {.delivery = "d-1", .org_id = 1, .event = "workflow_job",
					  .action = "queued", .gh_job_id = 42, .run_attempt = 1,
					  .outcome = "created", .job = &j, .now = 1000}};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	CHECK_EQ(store_webhook_seen(s, 1, "d-1", 0, 0, ""), 1);
	CHECK_EQ(store_webhook_seen(s, 1, "d-2", 42, 1, "queued"), 1);
	CHECK_EQ(store_webhook_seen(s, 1, "d-2", 42, 2, "queued"), 0);
	/* The same delivery id again, and the same event under a new id: refused. */
	CHECK_EQ(store_apply_wait(s, &m), -EEXIST);
	m.webhook.delivery = "d-2";
	j.id = 2;
	CHECK_EQ(store_apply_wait(s, &m), -EEXIST);
	struct proto_job pj;
	CHECK_EQ(store_job_get(s, 2, 0, &pj), -ENOENT); /* the job was not inserted */
	CHECK_EQ(store_job_get(s, 1, 0, &pj), 0);
	CHECK_EQ(pj.org_id, 1);
	proto_job_release(&pj);
	/* Pruning forgets delivery ids, never the event key. */
	m = (struct store_mut){.kind = STORE_WEBHOOK_PRUNE, .webhook_prune = {.before = 2000}};
	CHECK_EQ(store_apply_wait(s, &m), 0);
	CHECK_EQ(store_webhook_seen(s, 1, "d-1", 0, 0, ""), 0);
	CHECK_EQ(store_webhook_seen(s, 1, "d-9", 42, 1, "queued"), 1);
	store_close(s);
	rm_rf(dir);
}

int main(void) { return tap_run(); }
