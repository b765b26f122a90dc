/*
 * keys: envelope encryption's key hierarchy (docs/decisions/0003).
 *
 *   master key (a file, or the environment; never in the store)
 *     └─ wraps each org's data key (org_keys row: org id, master key id, wrapped)
 *          └─ seals that org's secret values (AD: org, name, version)
 *     └─ wraps the server's own key (org_keys row 0), which derives job tokens
 *
 * A copy of the database alone reveals no secret and lets no one forge a job
 * token: both need the master key.
 *
 * Rotation (keys_rotate) re-wraps every data key under a new master key in
 * one transaction, conditional on each row still being under the old key.
 * With a file-backed master key the new key is first written to
 * <file>.next; once the transaction commits, <file>.next replaces <file>. A
 * crash in between is resolved at the next start: if the rows are under the
 * .next key, it is adopted; if not, .next is dropped.
 *
 * Unwrapped keys live in memory only (keyring, under keys_lock).
 */
#include "server-internal.h"
#include "auth/auth.h"

#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <sys/stat.h>

struct dek {
	int64_t org_id;
	uint8_t key[AUTH_KEY_BYTES];
	struct dek *next;
};

struct keyring {
	uint8_t master[AUTH_KEY_BYTES];
	char master_id[AUTH_KEY_ID_HEX];
	char *file; /* where the master key lives; NULL when given as text */
	uint8_t job_key[AUTH_KEY_BYTES];
	struct dek *deks;
};

/* The AD's org field: the org's id, which never changes (names could). */
static void org_ad(int64_t org_id, char out[32])
{
	if (org_id == 0)
		snprintf(out, 32, "server");
	else
		snprintf(out, 32, "org-%" PRId64, org_id);
}

static int read_key_file(const char *path, uint8_t key[AUTH_KEY_BYTES], struct kiln_err *err)
{
	struct buf b = BUF_INIT;
	int r = read_file(path, 4096, &b);
	if (r < 0) {
		buf_release(&b);
		return kiln_err_set(err, r, "cannot read the master key file '%s': %s", path,
				    strerror(-r));
	}
	buf_puts(&b, "");
	r = auth_key_parse(b.data, key, err);
	sodium_memzero(b.data, b.len);
	buf_release(&b);
	if (r < 0)
		return kiln_err_prefix(err, "master key file '%s': ", path);
	struct stat st;
	if (stat(path, &st) == 0 && (st.st_mode & 077))
		log_warn("the master key file can be read by others than its owner; chmod 600 it "
			 "path=%s",
			 path);
	return 0;
}

/* Writes a key file (hex, 0600) durably; O_EXCL unless replace. */
static int write_key_file(const char *path, const uint8_t key[AUTH_KEY_BYTES], bool replace)
{
	char text[2 * AUTH_KEY_BYTES + 2];
	sodium_bin2hex(text, sizeof(text), key, AUTH_KEY_BYTES);
	size_t n = strlen(text);
	text[n++] = '\n';
	int r;
	if (replace) {
		r = write_file_atomic(path, text, n, 0600);
	} else {
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd < 0) {
			r = -errno;
		} else {
			r = write_all(fd, text, n);
			if (r >= 0 && fsync(fd) < 0)
				r = -errno;
			close(fd);
			if (r < 0)
				unlink(path);
		}
	}
	sodium_memzero(text, sizeof(text));
	return r;
}

static int load_master(struct server *s, struct keyring *k, struct kiln_err *err)
{
	const struct server_config *c = &s->cfg;
	if (c->master_key_file && *c->master_key_file) {
		k->file = xstrdup(c->master_key_file);
		return read_key_file(k->file, k->master, err);
	}
	if (c->master_key && *c->master_key) {
		int r = auth_key_parse(c->master_key, k->master, err);
		return r < 0 ? kiln_err_prefix(err, "the master key (KILN_MASTER_KEY): ") : 0;
	}
	k->file = path_join(s->state_dir, "master.key");
	if (access(k->file, F_OK) == 0)
		return read_key_file(k->file, k->master, err);
	auth_key_generate(k->master);
	int r = write_key_file(k->file, k->master, false);
	if (r < 0)
		return kiln_err_set(err, r, "cannot write a new master key to '%s': %s", k->file,
				    strerror(-r));
	log_info("generated a master key for secrets path=%s hint=\"back it up apart from the "
		 "database: without it the secrets cannot be read\"",
		 k->file);
	return 0;
}

/* A half-done rotation (see the top of the file): adopt or drop <file>.next. */
static int finish_rotation(struct keyring *k, const struct store_key *v, size_t n,
			   struct kiln_err *err)
{
	if (!k->file)
		return 0;
	_cleanup_free_ char *next = xasprintf("%s.next", k->file);
	if (access(next, F_OK) != 0)
		return 0;
	uint8_t nk[AUTH_KEY_BYTES];
	char nid[AUTH_KEY_ID_HEX];
	int r = read_key_file(next, nk, err);
	if (r < 0)
		return r;
	auth_key_id(nk, nid);
	bool any_next = false;
	for (size_t i = 0; i < n; i++)
		any_next |= streq(v[i].key_id, nid);
	if (any_next) {
		if (rename(next, k->file) < 0)
			return kiln_err_set(err, -errno, "cannot move '%s' to '%s': %s", next,
					    k->file, strerror(errno));
		memcpy(k->master, nk, sizeof(nk));
		log_info("finished a master key rotation that was interrupted key_id=%s", nid);
	} else {
		unlink(next);
		log_info("dropped the new master key of a rotation that did not commit");
	}
	sodium_memzero(nk, sizeof(nk));
	return 0;
}

static void put_key_done(struct store_mut *m, void *ud)
{
	struct store_key *sk = ud;
	if (m->result < 0)
		log_error("the store refused a new data key org=%" PRId64 " result=%d", sk->org_id,
			  m->result);
	free(sk->wrapped);
	free(sk);
	free(m);
}

/*
 * Creates the data key of org_id: in the keyring at once, in the store by a
 * mutation queued now (so it commits before any secret sealed with it).
 * wait: block until it is durable (start-up only). Under keys_lock.
 */
static int dek_create(struct server *s, struct keyring *k, int64_t org_id, bool wait,
		      struct dek **ret)
{
	struct dek *d = xcalloc(1, sizeof(*d));
	d->org_id = org_id;
	auth_key_generate(d->key);
	char ad[32];
	org_ad(org_id, ad);
	struct buf w = BUF_INIT;
	auth_dek_wrap(k->master, ad, d->key, &w);
	struct store_key *sk = xcalloc(1, sizeof(*sk));
	sk->org_id = org_id;
	memcpy(sk->key_id, k->master_id, sizeof(sk->key_id));
	sk->len = w.len;
	sk->wrapped = buf_steal(&w);
	sk->now = proto_now_ms();
	struct store_mut *m = xcalloc(1, sizeof(*m));
	m->kind = STORE_KEYS_PUT;
	m->keys.v = sk;
	m->keys.n = 1;
	if (wait) {
		int r = store_apply_wait(s->store, m);
		free(sk->wrapped);
		free(sk);
		free(m);
		if (r < 0) {
			sodium_memzero(d, sizeof(*d));
			free(d);
			return r;
		}
	} else {
		m->done = put_key_done;
		m->userdata = sk;
		store_submit(s->store, m);
	}
	d->next = k->deks;
	k->deks = d;
	*ret = d;
	return 0;
}

int keys_init(struct server *s, struct kiln_err *err)
{
	struct keyring *k = xcalloc(1, sizeof(*k));
	s->keys = k;
	int r = load_master(s, k, err);
	if (r < 0)
		return r;
	struct store_key *v = NULL;
	size_t n = 0;
	r = store_keys_list(s->store, &v, &n);
	if (r < 0)
		return kiln_err_set(err, r, "cannot read the data keys: %s", strerror(-r));
	r = finish_rotation(k, v, n, err);
	auth_key_id(k->master, k->master_id);
	for (size_t i = 0; r >= 0 && i < n; i++) {
		if (!streq(v[i].key_id, k->master_id)) {
			r = kiln_err_set(err, -EKEYREJECTED,
					 "the data keys in the store are wrapped under master key "
					 "%s, but this server was given master key %s: start it "
					 "with the right --master-key-file or KILN_MASTER_KEY",
					 v[i].key_id, k->master_id);
			break;
		}
		char ad[32];
		org_ad(v[i].org_id, ad);
		struct dek *d = xcalloc(1, sizeof(*d));
		d->org_id = v[i].org_id;
		if (auth_dek_unwrap(k->master, ad, v[i].wrapped, v[i].len, d->key) < 0) {
			free(d);
			r = kiln_err_set(err, -EBADMSG,
					 "the data key of %s does not open under master key %s "
					 "(altered, or moved from another row)",
					 ad, k->master_id);
			break;
		}
		d->next = k->deks;
		k->deks = d;
	}
	store_keys_free(v, n);
	if (r < 0)
		return r;
	struct dek *srv = NULL;
	for (struct dek *d = k->deks; d; d = d->next)
		if (d->org_id == 0)
			srv = d;
	if (!srv) {
		r = dek_create(s, k, 0, true, &srv);
		if (r < 0)
			return kiln_err_set(err, r, "cannot store the server key: %s", strerror(-r));
	}
	/* Job tokens use a key derived from the server key, not the key itself. */
	crypto_auth_hmacsha256(k->job_key, (const uint8_t *)"kiln-job-token-key", 18, srv->key);
	return 0;
}

void keys_free(struct server *s)
{
	struct keyring *k = s->keys;
	if (!k)
		return;
	while (k->deks) {
		struct dek *d = k->deks;
		k->deks = d->next;
		sodium_memzero(d, sizeof(*d));
		free(d);
	}
	free(k->file);
	sodium_memzero(k, sizeof(*k));
	free(k);
	s->keys = NULL;
}

const uint8_t *keys_job_key(struct server *s) { return s->keys->job_key; }

int keys_org_dek(struct server *s, int64_t org_id, bool create, uint8_t ret[AUTH_KEY_BYTES])
{
	pthread_mutex_lock(&s->keys_lock);
	struct keyring *k = s->keys;
	struct dek *found = NULL;
	for (struct dek *d = k->deks; d && !found; d = d->next)
		if (d->org_id == org_id)
			found = d;
	int r = 0;
	if (!found && create)
		r = dek_create(s, k, org_id, false, &found);
	else if (!found)
		r = -ENOENT;
	if (found)
		memcpy(ret, found->key, AUTH_KEY_BYTES);
	pthread_mutex_unlock(&s->keys_lock);
	return r;
}

void keys_secret_ad_org(int64_t org_id, char out[32]) { org_ad(org_id, out); }

const char *keys_master_id(struct server *s) { return s->keys->master_id; }

int keys_rotate(struct server *s, const char *new_key_text, char ret_id[AUTH_KEY_ID_HEX],
		int64_t *ret_n, struct kiln_err *err)
{
	uint8_t nk[AUTH_KEY_BYTES];
	if (new_key_text && *new_key_text) {
		int r = auth_key_parse(new_key_text, nk, err);
		if (r < 0)
			return r;
	} else {
		auth_key_generate(nk);
	}
	pthread_mutex_lock(&s->keys_lock);
	struct keyring *k = s->keys;
	char nid[AUTH_KEY_ID_HEX];
	auth_key_id(nk, nid);
	int r = 0;
	_cleanup_free_ char *next = k->file ? xasprintf("%s.next", k->file) : NULL;
	if (streq(nid, k->master_id))
		r = kiln_err_set(err, -EINVAL, "the new master key is the current one");
	else if (!k->file && !(new_key_text && *new_key_text))
		r = kiln_err_set(err, -EINVAL,
				 "this server's master key came from the environment: give the new "
				 "key (new_key), and set KILN_MASTER_KEY to it before the next start");
	if (r >= 0 && next) {
		unlink(next);
		r = write_key_file(next, nk, false);
		if (r < 0)
			kiln_err_set(err, r, "cannot write '%s': %s", next, strerror(-r));
	}
	/* Every data key, in memory already (created at start or since). */
	size_t n = 0;
	for (struct dek *d = k->deks; d; d = d->next)
		n++;
	struct store_key *v = xcalloc(n + 1, sizeof(*v));
	size_t i = 0;
	uint64_t now = proto_now_ms();
	for (struct dek *d = k->deks; r >= 0 && d; d = d->next, i++) {
		char ad[32];
		org_ad(d->org_id, ad);
		struct buf w = BUF_INIT;
		auth_dek_wrap(nk, ad, d->key, &w);
		v[i] = (struct store_key){.org_id = d->org_id, .len = w.len, .now = now};
		v[i].wrapped = buf_steal(&w);
		memcpy(v[i].key_id, nid, sizeof(nid));
		memcpy(v[i].expect_key_id, k->master_id, sizeof(v[i].expect_key_id));
	}
	if (r >= 0) {
		/* Keys created just before are queued ahead of this mutation (FIFO),
		 * so every row exists when it applies; all rows or none change. */
		struct store_mut m = {.kind = STORE_KEYS_PUT, .keys = {v, n}};
		r = store_apply_wait(s->store, &m);
		if (r < 0)
			kiln_err_set(err, -EIO, "the store refused the re-wrapped keys (result %d); "
					       "nothing changed", r);
	}
	if (r >= 0 && next && rename(next, k->file) < 0)
		/* The rows are under the new key: the next start adopts .next. */
		log_error("cannot move the new master key into place (the next start will) "
			  "path=%s error=\"%s\"",
			  next, strerror(errno));
	else if (r < 0 && next)
		unlink(next);
	if (r >= 0) {
		memcpy(k->master, nk, sizeof(nk));
		memcpy(k->master_id, nid, sizeof(nid));
		memcpy(ret_id, nid, sizeof(nid));
		*ret_n = (int64_t)n;
	}
	pthread_mutex_unlock(&s->keys_lock);
	for (size_t x = 0; x < n; x++)
		free(v[x].wrapped);
	free(v);
	sodium_memzero(nk, sizeof(nk));
	return r;
}
