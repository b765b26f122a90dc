/*
 * auth: the security primitives of multi-tenancy — API tokens, the
 * envelope encryption of secrets, GitHub webhook signatures and token-bucket
 * rate limits. Pure functions over bytes (libsodium); no storage, no HTTP.
 *
 * Invariants:
 *  - tokens are 256-bit random values; only their SHA-256 is ever stored;
 *  - every secret is sealed with an AEAD whose associated data binds
 *    (org, name, version): a ciphertext moved to another row fails to open;
 *  - comparisons of secrets and MACs are constant-time.
 */
#pragma once

#include "base/base.h"

/* Must be called once before any other function (idempotent, thread-safe). */
int auth_init(void);

/* ---- tokens --------------------------------------------------------------- */

/*
 * Format: "kiln_" KIND "_" 43 base62 chars (256 random bits) then 6 base62
 * chars of CRC-32 over everything before them, e.g. kiln_pat_4bD...Xz01aB9c.
 * The prefix lets secret scanners find leaked tokens; the checksum lets
 * kiln reject a mistyped token without a database lookup.
 */
enum token_kind {
	TOKEN_PAT,   /* a person's or a script's token: kiln_pat_ */
	TOKEN_AGENT, /* an agent's registration token: kiln_agt_ */
	TOKEN_JOB,   /* a job-scoped lease credential: kiln_job_ */
	TOKEN_METRICS, /* scrape-only token for /metrics: kiln_met_ */
};

#define TOKEN_LEN 58       /* strlen of every token */
#define TOKEN_HASH_HEX 65  /* 64 hex chars + NUL */

/* Writes a new random token of `kind` (TOKEN_LEN chars + NUL). */
void token_generate(enum token_kind kind, char out[TOKEN_LEN + 1]);
/*
 * Checks a token's shape and checksum; returns 0 and its kind, or -EINVAL
 * with err saying what is wrong (never echoing the token itself).
 */
int token_parse(const char *s, enum token_kind *ret_kind, struct kiln_err *err);
/*
 * A job-scoped token: kiln_job_ + the HMAC-SHA256 under `key` of (job, fence)
 * in base62, + checksum. Deterministic, so the server keeps nothing per
 * lease: it recomputes the token for the (job, fence) a write names and
 * compares (auth_equal). A fence is never reused, so the pair also fixes
 * the attempt.
 */
void token_job(const uint8_t key[32], int64_t job_id, int64_t fence, char out[TOKEN_LEN + 1]);
/* SHA-256 of the token as lower-case hex: what the store keeps. */
void token_hash(const char *token, char out[TOKEN_HASH_HEX]);
const char *token_kind_prefix(enum token_kind kind);

/* ---- keys and secrets ----------------------------------------------------- */

#define AUTH_KEY_BYTES 32
#define AUTH_KEY_ID_HEX 17 /* 16 hex chars + NUL */

/*
 * Parses a master key: 64 hex chars or base64 of 32 bytes, surrounding
 * whitespace ignored (as read from a file or an environment variable).
 */
int auth_key_parse(const char *text, uint8_t key[AUTH_KEY_BYTES], struct kiln_err *err);
/* A short public id of a key (hash prefix), stored next to what it wraps. */
void auth_key_id(const uint8_t key[AUTH_KEY_BYTES], char out[AUTH_KEY_ID_HEX]);
/* Fills key with random bytes (a new per-org data key). */
void auth_key_generate(uint8_t key[AUTH_KEY_BYTES]);

/*
 * Wraps an org's data key under the master key; AD binds the org. Output
 * (appended to out): nonce || ciphertext || tag.
 */
void auth_dek_wrap(const uint8_t master[AUTH_KEY_BYTES], const char *org,
		   const uint8_t dek[AUTH_KEY_BYTES], struct buf *out);
/* -EBADMSG if the key is wrong, the org differs or the bytes were altered. */
int auth_dek_unwrap(const uint8_t master[AUTH_KEY_BYTES], const char *org, const void *wrapped,
		    size_t len, uint8_t ret_dek[AUTH_KEY_BYTES]);

/* Seals a secret value; AD binds (org, name, version). Appends to out. */
void auth_secret_seal(const uint8_t dek[AUTH_KEY_BYTES], const char *org, const char *name,
		      int64_t version, const void *value, size_t len, struct buf *out);
/* Opens what auth_secret_seal made; -EBADMSG if anything differs. */
int auth_secret_open(const uint8_t dek[AUTH_KEY_BYTES], const char *org, const char *name,
		     int64_t version, const void *sealed, size_t len, struct buf *ret);

/* ---- GitHub webhooks ------------------------------------------------------ */

/*
 * Verifies X-Hub-Signature-256 ("sha256=" + 64 hex) over the raw body against
 * each of the secrets (two during a rotation); constant-time. Returns the
 * index of the secret that matched, or -EPERM (no match) / -EINVAL (header
 * malformed or missing).
 */
int webhook_verify(const char *signature_header, const void *body, size_t len,
		   const char *const *secrets, size_t n_secrets);
/* Writes "sha256=<hex>" for body under secret (for tests and tools). */
void webhook_sign(const char *secret, const void *body, size_t len, char out[72]);

/* ---- rate limits ---------------------------------------------------------- */

/* A token bucket: `rate` tokens per second, at most `burst` stored. */
struct token_bucket {
	double rate;
	double burst;
	double tokens;
	uint64_t last_ns;
};

void token_bucket_init(struct token_bucket *tb, double rate, double burst, uint64_t now_ns);
/*
 * Takes `cost` tokens if available: returns true. Otherwise false and
 * *retry_after_ms says when enough will be there (for Retry-After).
 */
bool token_bucket_take(struct token_bucket *tb, double cost, uint64_t now_ns,
		       uint64_t *retry_after_ms);

/* Constant-time equality of two byte strings of the same length. */
bool auth_equal(const void *a, const void *b, size_t len);
