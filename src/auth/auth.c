/*
 * auth: tokens, envelope encryption, webhook HMAC and token buckets.
 *
 * Crypto comes from libsodium: XChaCha20-Poly1305 (IETF) for sealing (192-bit
 * random nonces, so random nonces never collide in practice), SHA-256 and
 * HMAC-SHA256 for token hashes and webhook signatures.
 */
#include "auth.h"

#include <math.h>
#include <sodium.h>
#include <zlib.h>

int auth_init(void)
{
	return sodium_init() < 0 ? -EIO : 0;
}

bool auth_equal(const void *a, const void *b, size_t len)
{
	return sodium_memcmp(a, b, len) == 0;
}

/* ---- tokens --------------------------------------------------------------- */

static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
static const char *const kind_prefix[] = {"kiln_pat_", "kiln_agt_", "kiln_job_", "kiln_met_"};
#define PREFIX_LEN 9
#define BODY_LEN 43
#define CRC_LEN 6

const char *token_kind_prefix(enum token_kind kind)
{
	return kind_prefix[kind];
}

#define B62_POW5 916132832u /* 62^5: five digits per long division */

/*
 * Writes the `len` lowest base62 digits of the big-endian number in bytes
 * (at most 32 of them). The number is held as 32-bit limbs and divided by
 * 62^5 per pass, so a 256-bit token body takes 9 passes of 8 divisions (one
 * division per byte per digit took ~1,400): tokens are derived on every
 * lease and checked on every job call. The limbs are wiped afterwards (the
 * bytes may be a secret).
 */
static void base62_encode(const uint8_t *bytes, size_t nbytes, char *out, size_t len)
{
	uint32_t limb[8] = {0};
	size_t nl = (nbytes + 3) / 4;
	for (size_t j = 0; j < nbytes; j++) {
		size_t pos = nl * 4 - nbytes + j;
		limb[pos / 4] |= (uint32_t)bytes[j] << (8 * (3 - pos % 4));
	}
	for (size_t i = len; i > 0;) {
		uint64_t rem = 0;
		for (size_t k = 0; k < nl; k++) {
			uint64_t cur = (rem << 32) | limb[k];
			limb[k] = (uint32_t)(cur / B62_POW5);
			rem = cur % B62_POW5;
		}
		for (int d = 0; d < 5 && i > 0; d++) {
			out[--i] = b62[rem % 62];
			rem /= 62;
		}
	}
	sodium_memzero(limb, sizeof(limb));
}

static void crc_chars(const char *s, size_t len, char out[CRC_LEN])
{
	uLong crc = crc32(0L, (const Bytef *)s, (uInt)len);
	uint8_t be[4] = {(uint8_t)(crc >> 24), (uint8_t)(crc >> 16), (uint8_t)(crc >> 8),
			 (uint8_t)crc};
	base62_encode(be, 4, out, CRC_LEN);
}

void token_generate(enum token_kind kind, char out[TOKEN_LEN + 1])
{
	uint8_t rnd[32];
	randombytes_buf(rnd, sizeof(rnd));
	memcpy(out, kind_prefix[kind], PREFIX_LEN);
	/* 62^43 > 2^256, so 43 digits hold every 256-bit value. */
	base62_encode(rnd, sizeof(rnd), out + PREFIX_LEN, BODY_LEN);
	crc_chars(out, PREFIX_LEN + BODY_LEN, out + PREFIX_LEN + BODY_LEN);
	out[TOKEN_LEN] = '\0';
	sodium_memzero(rnd, sizeof(rnd));
}

int token_parse(const char *s, enum token_kind *ret_kind, struct kiln_err *err)
{
	size_t len = strnlen(s, TOKEN_LEN + 1);
	if (!startswith(s, "kiln_"))
		return kiln_err_set(err, -EINVAL, "not a kiln token (kiln tokens start with 'kiln_')");
	size_t kind;
	for (kind = 0; kind < ARRAY_SIZE(kind_prefix); kind++)
		if (strncmp(s, kind_prefix[kind], PREFIX_LEN) == 0)
			break;
	if (kind == ARRAY_SIZE(kind_prefix))
		return kiln_err_set(err, -EINVAL,
				    "unknown token type (expected kiln_pat_, kiln_agt_, kiln_job_ or kiln_met_)");
	if (len != TOKEN_LEN)
		return kiln_err_set(err, -EINVAL, "malformed token: %s tokens are %d characters",
				    kind_prefix[kind], TOKEN_LEN);
	for (size_t i = PREFIX_LEN; i < TOKEN_LEN; i++)
		if (!strchr(b62, s[i]) || s[i] == '\0')
			return kiln_err_set(err, -EINVAL, "malformed token: invalid character at position %zu",
					    i + 1);
	char crc[CRC_LEN];
	crc_chars(s, PREFIX_LEN + BODY_LEN, crc);
	if (memcmp(crc, s + PREFIX_LEN + BODY_LEN, CRC_LEN) != 0)
		return kiln_err_set(err, -EINVAL, "malformed token: checksum mismatch (a typo or a truncated copy?)");
	*ret_kind = (enum token_kind)kind;
	return 0;
}

void token_job(const uint8_t key[32], int64_t job_id, int64_t fence, char out[TOKEN_LEN + 1])
{
	char msg[64];
	int n = snprintf(msg, sizeof(msg), "kiln-job-v1|%lld|%lld", (long long)job_id,
			 (long long)fence);
	uint8_t mac[crypto_auth_hmacsha256_BYTES];
	crypto_auth_hmacsha256(mac, (const uint8_t *)msg, (size_t)n, key);
	memcpy(out, kind_prefix[TOKEN_JOB], PREFIX_LEN);
	base62_encode(mac, sizeof(mac), out + PREFIX_LEN, BODY_LEN);
	sodium_memzero(mac, sizeof(mac));
	crc_chars(out, PREFIX_LEN + BODY_LEN, out + PREFIX_LEN + BODY_LEN);
	out[TOKEN_LEN] = '\0';
}

static void hex(const uint8_t *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = '\0';
}

void token_hash(const char *token, char out[TOKEN_HASH_HEX])
{
	uint8_t h[crypto_hash_sha256_BYTES];
	crypto_hash_sha256(h, (const uint8_t *)token, strlen(token));
	hex(h, sizeof(h), out);
}

/* ---- keys ----------------------------------------------------------------- */

int auth_key_parse(const char *text, uint8_t key[AUTH_KEY_BYTES], struct kiln_err *err)
{
	while (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r')
		text++;
	size_t len = strlen(text);
	while (len && (text[len - 1] == ' ' || text[len - 1] == '\n' || text[len - 1] == '\r' ||
		       text[len - 1] == '\t'))
		len--;
	size_t out_len = 0;
	uint8_t tmp[AUTH_KEY_BYTES + 8];
	if (len == 2 * AUTH_KEY_BYTES &&
	    sodium_hex2bin(tmp, sizeof(tmp), text, len, NULL, &out_len, NULL) == 0 &&
	    out_len == AUTH_KEY_BYTES) {
		memcpy(key, tmp, AUTH_KEY_BYTES);
		sodium_memzero(tmp, sizeof(tmp));
		return 0;
	}
	if (sodium_base642bin(tmp, sizeof(tmp), text, len, NULL, &out_len, NULL,
			      sodium_base64_VARIANT_ORIGINAL) == 0 &&
	    out_len == AUTH_KEY_BYTES) {
		memcpy(key, tmp, AUTH_KEY_BYTES);
		sodium_memzero(tmp, sizeof(tmp));
		return 0;
	}
	sodium_memzero(tmp, sizeof(tmp));
	return kiln_err_set(err, -EINVAL,
			    "a master key is 32 bytes written as 64 hex characters or base64 "
			    "(make one with: head -c32 /dev/urandom | base64)");
}

void auth_key_id(const uint8_t key[AUTH_KEY_BYTES], char out[AUTH_KEY_ID_HEX])
{
	uint8_t h[crypto_hash_sha256_BYTES];
	crypto_hash_sha256_state st;
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, (const uint8_t *)"kiln-key-id", 11);
	crypto_hash_sha256_update(&st, key, AUTH_KEY_BYTES);
	crypto_hash_sha256_final(&st, h);
	hex(h, 8, out);
}

void auth_key_generate(uint8_t key[AUTH_KEY_BYTES])
{
	randombytes_buf(key, AUTH_KEY_BYTES);
}

#define NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG_BYTES crypto_aead_xchacha20poly1305_ietf_ABYTES

static void seal(const uint8_t key[AUTH_KEY_BYTES], const struct buf *ad, const void *pt,
		 size_t len, struct buf *out)
{
	buf_reserve(out, NONCE_BYTES + len + TAG_BYTES);
	uint8_t *nonce = (uint8_t *)out->data + out->len;
	randombytes_buf(nonce, NONCE_BYTES);
	unsigned long long clen = 0;
	crypto_aead_xchacha20poly1305_ietf_encrypt(nonce + NONCE_BYTES, &clen, pt, len,
						   (const uint8_t *)ad->data, ad->len, NULL, nonce,
						   key);
	out->len += NONCE_BYTES + (size_t)clen;
	out->data[out->len] = '\0';
}

static int open_sealed(const uint8_t key[AUTH_KEY_BYTES], const struct buf *ad,
		       const void *sealed, size_t len, struct buf *ret)
{
	if (len < NONCE_BYTES + TAG_BYTES)
		return -EBADMSG;
	const uint8_t *nonce = sealed;
	struct buf pt = BUF_INIT;
	buf_reserve(&pt, len);
	unsigned long long plen = 0;
	if (crypto_aead_xchacha20poly1305_ietf_decrypt((uint8_t *)pt.data, &plen, NULL,
						       nonce + NONCE_BYTES, len - NONCE_BYTES,
						       (const uint8_t *)ad->data, ad->len, nonce,
						       key) != 0) {
		buf_release(&pt);
		return -EBADMSG;
	}
	pt.len = (size_t)plen;
	pt.data[pt.len] = '\0';
	*ret = pt;
	return 0;
}

/* AD fields are length-prefixed so ("ab","c") and ("a","bc") differ. */
static void ad_field(struct buf *ad, const char *s)
{
	buf_printf(ad, "%zu:", strlen(s));
	buf_puts(ad, s);
}

void auth_dek_wrap(const uint8_t master[AUTH_KEY_BYTES], const char *org,
		   const uint8_t dek[AUTH_KEY_BYTES], struct buf *out)
{
	struct buf ad = BUF_INIT;
	buf_puts(&ad, "kiln-dek-v1|");
	ad_field(&ad, org);
	seal(master, &ad, dek, AUTH_KEY_BYTES, out);
	buf_release(&ad);
}

int auth_dek_unwrap(const uint8_t master[AUTH_KEY_BYTES], const char *org, const void *wrapped,
		    size_t len, uint8_t ret_dek[AUTH_KEY_BYTES])
{
	struct buf ad = BUF_INIT, pt = BUF_INIT;
	buf_puts(&ad, "kiln-dek-v1|");
	ad_field(&ad, org);
	int r = open_sealed(master, &ad, wrapped, len, &pt);
	buf_release(&ad);
	if (r < 0)
		return r;
	if (pt.len != AUTH_KEY_BYTES)
		r = -EBADMSG;
	else
		memcpy(ret_dek, pt.data, AUTH_KEY_BYTES);
	sodium_memzero(pt.data, pt.len);
	buf_release(&pt);
	return r;
}

static void secret_ad(struct buf *ad, const char *org, const char *name, int64_t version)
{
	buf_puts(ad, "kiln-secret-v1|");
	ad_field(ad, org);
	ad_field(ad, name);
	buf_printf(ad, "v%lld", (long long)version);
}

void auth_secret_seal(const uint8_t dek[AUTH_KEY_BYTES], const char *org, const char *name,
		      int64_t version, const void *value, size_t len, struct buf *out)
{
	struct buf ad = BUF_INIT;
	secret_ad(&ad, org, name, version);
	seal(dek, &ad, value, len, out);
	buf_release(&ad);
}

int auth_secret_open(const uint8_t dek[AUTH_KEY_BYTES], const char *org, const char *name,
		     int64_t version, const void *sealed, size_t len, struct buf *ret)
{
	struct buf ad = BUF_INIT;
	secret_ad(&ad, org, name, version);
	int r = open_sealed(dek, &ad, sealed, len, ret);
	buf_release(&ad);
	return r;
}

/* ---- webhooks ------------------------------------------------------------- */

static void hmac_sha256(const char *secret, const void *body, size_t len,
			uint8_t out[crypto_auth_hmacsha256_BYTES])
{
	crypto_auth_hmacsha256_state st;
	crypto_auth_hmacsha256_init(&st, (const uint8_t *)secret, strlen(secret));
	crypto_auth_hmacsha256_update(&st, body, len);
	crypto_auth_hmacsha256_final(&st, out);
}

void webhook_sign(const char *secret, const void *body, size_t len, char out[72])
{
	uint8_t mac[crypto_auth_hmacsha256_BYTES];
	hmac_sha256(secret, body, len, mac);
	char hexmac[2 * crypto_auth_hmacsha256_BYTES + 1];
	hex(mac, sizeof(mac), hexmac);
	snprintf(out, 72, "sha256=%s", hexmac);
}

int webhook_verify(const char *signature_header, const void *body, size_t len,
		   const char *const *secrets, size_t n_secrets)
{
	if (!signature_header || !startswith(signature_header, "sha256="))
		return -EINVAL;
	const char *h = signature_header + 7;
	uint8_t given[crypto_auth_hmacsha256_BYTES];
	size_t bin_len = 0;
	const char *end = NULL;
	/* GitHub sends lower-case hex; anything else is not its signature. */
	for (const char *p = h; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return -EINVAL;
	if (strlen(h) != 2 * sizeof(given) ||
	    sodium_hex2bin(given, sizeof(given), h, strlen(h), NULL, &bin_len, &end) != 0 ||
	    bin_len != sizeof(given))
		return -EINVAL;
	int found = -EPERM;
	/* Check every secret so timing does not reveal which one matched. */
	for (size_t i = 0; i < n_secrets; i++) {
		uint8_t mac[crypto_auth_hmacsha256_BYTES];
		hmac_sha256(secrets[i], body, len, mac);
		if (sodium_memcmp(mac, given, sizeof(mac)) == 0 && found < 0)
			found = (int)i;
	}
	return found;
}

/* ---- rate limits ---------------------------------------------------------- */

void token_bucket_init(struct token_bucket *tb, double rate, double burst, uint64_t now_ns)
{
	tb->rate = rate;
	tb->burst = burst;
	tb->tokens = burst;
	tb->last_ns = now_ns;
}

bool token_bucket_take(struct token_bucket *tb, double cost, uint64_t now_ns,
		       uint64_t *retry_after_ms)
{
	if (now_ns > tb->last_ns) {
		tb->tokens += (double)(now_ns - tb->last_ns) / 1e9 * tb->rate;
		if (tb->tokens > tb->burst)
			tb->tokens = tb->burst;
		tb->last_ns = now_ns;
	}
	if (tb->tokens >= cost) {
		tb->tokens -= cost;
		return true;
	}
	if (retry_after_ms) {
		double wait_s = tb->rate > 0 ? (cost - tb->tokens) / tb->rate : 3600;
		*retry_after_ms = (uint64_t)ceil(wait_s * 1000);
	}
	return false;
}
