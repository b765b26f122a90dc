/* Unit tests of src/auth: tokens, envelope encryption, webhooks, buckets. */
#include "tap.h"

#include "auth/auth.h"

TEST(token_roundtrip)
{
	char t[TOKEN_LEN + 1];
	token_generate(TOKEN_PAT, t);
	CHECK_EQ(strlen(t), TOKEN_LEN);
	CHECK(startswith(t, "kiln_pat_"));
	enum token_kind k = TOKEN_AGENT;
	CHECK_EQ(token_parse(t, &k, NULL), 0);
	CHECK_EQ(k, TOKEN_PAT);
	char t2[TOKEN_LEN + 1];
	token_generate(TOKEN_AGENT, t2);
	CHECK(startswith(t2, "kiln_agt_"));
	CHECK(strcmp(t, t2) != 0);
	CHECK_EQ(token_parse(t2, &k, NULL), 0);
	CHECK_EQ(k, TOKEN_AGENT);
}

TEST(token_rejects_typos)
{
	char t[TOKEN_LEN + 1];
	token_generate(TOKEN_PAT, t);
	struct kiln_err err = {0};
	enum token_kind k;
	/* Change one character of the body: the checksum catches it. */
	t[20] = t[20] == 'a' ? 'b' : 'a';
	CHECK_EQ(token_parse(t, &k, &err), -EINVAL);
	CHECK(strstr(err.msg, "checksum") != NULL);
	CHECK_EQ(token_parse("kiln_pat_short", &k, &err), -EINVAL);
	CHECK(strstr(err.msg, "58 characters") != NULL);
	CHECK_EQ(token_parse("ghp_abc", &k, &err), -EINVAL);
	CHECK(strstr(err.msg, "start with 'kiln_'") != NULL);
	CHECK_EQ(token_parse("kiln_xyz_abc", &k, &err), -EINVAL);
	CHECK(strstr(err.msg, "unknown token type") != NULL);
	token_generate(TOKEN_PAT, t);
	t[30] = '-';
	CHECK_EQ(token_parse(t, &k, &err), -EINVAL);
	CHECK(strstr(err.msg, "invalid character at position 31") != NULL);
}

TEST(token_hash_is_sha256)
{
	char h[TOKEN_HASH_HEX];
	token_hash("abc", h);
	CHECK_STREQ(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(key_parse_forms)
{
	uint8_t k[AUTH_KEY_BYTES];
	struct kiln_err err = {0};
	CHECK_EQ(auth_key_parse("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n",
				k, &err), 0);
	CHECK_EQ(k[31], 0x1f);
	CHECK_EQ(auth_key_parse("  AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=  ", k, &err), 0);
	CHECK_EQ(k[31], 0x1f);
	CHECK_EQ(auth_key_parse("too short", k, &err), -EINVAL);
	CHECK(strstr(err.msg, "32 bytes") != NULL);
}

TEST(secret_seal_binds_org_name_version)
{
	uint8_t master[AUTH_KEY_BYTES], dek[AUTH_KEY_BYTES], dek2[AUTH_KEY_BYTES];
	auth_key_generate(master);
	auth_key_generate(dek);
	struct buf wrapped = BUF_INIT;
	auth_dek_wrap(master, "acme", dek, &wrapped);
	CHECK_EQ(auth_dek_unwrap(master, "acme", wrapped.data, wrapped.len, dek2), 0);
	CHECK(memcmp(dek, dek2, sizeof(dek)) == 0);
	CHECK_EQ(auth_dek_unwrap(master, "other", wrapped.data, wrapped.len, dek2), -EBADMSG);
	uint8_t wrong[AUTH_KEY_BYTES];
	auth_key_generate(wrong);
	CHECK_EQ(auth_dek_unwrap(wrong, "acme", wrapped.data, wrapped.len, dek2), -EBADMSG);

	struct buf sealed = BUF_INIT, out = BUF_INIT;
	auth_secret_seal(dek, "acme", "DB_PASSWORD", 3, "s3cr3t", 6, &sealed);
	CHECK(memmem(sealed.data, sealed.len, "s3cr3t", 6) == NULL);
	CHECK_EQ(auth_secret_open(dek, "acme", "DB_PASSWORD", 3, sealed.data, sealed.len, &out), 0);
	CHECK_STREQ(out.data, "s3cr3t");
	buf_release(&out);
	/* Moved to another row (org, name or version): does not open. */
	CHECK_EQ(auth_secret_open(dek, "acme2", "DB_PASSWORD", 3, sealed.data, sealed.len, &out),
		 -EBADMSG);
	CHECK_EQ(auth_secret_open(dek, "acme", "API_KEY", 3, sealed.data, sealed.len, &out),
		 -EBADMSG);
	CHECK_EQ(auth_secret_open(dek, "acme", "DB_PASSWORD", 4, sealed.data, sealed.len, &out),
		 -EBADMSG);
	sealed.data[sealed.len - 1] ^= 1;
	CHECK_EQ(auth_secret_open(dek, "acme", "DB_PASSWORD", 3, sealed.data, sealed.len, &out),
		 -EBADMSG);
	CHECK_EQ(auth_secret_open(dek, "acme", "DB_PASSWORD", 3, sealed.data, 5, &out), -EBADMSG);
	buf_release(&sealed);
	buf_release(&wrapped);
}

TEST(key_id_stable)
{
	uint8_t k[AUTH_KEY_BYTES] = {1};
	char a[AUTH_KEY_ID_HEX], b[AUTH_KEY_ID_HEX];
	auth_key_id(k, a);
	auth_key_id(k, b);
	CHECK_STREQ(a, b);
	CHECK_EQ(strlen(a), 16);
}

TEST(webhook_github_test_vector)
{
	/* From GitHub's docs (validating-webhook-deliveries). */
	const char *secrets[] = {"old-secret", "It's a Secret to Everybody"};
	const char *sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
	CHECK_EQ(webhook_verify(sig, "Hello, World!", 13, secrets, 2), 1);
	CHECK_EQ(webhook_verify(sig, "Hello, World?", 13, secrets, 2), -EPERM);
	CHECK_EQ(webhook_verify(sig, "Hello, World!", 13, secrets, 1), -EPERM);
	CHECK_EQ(webhook_verify("sha1=abc", "x", 1, secrets, 2), -EINVAL);
	CHECK_EQ(webhook_verify(NULL, "x", 1, secrets, 2), -EINVAL);
	CHECK_EQ(webhook_verify("sha256=zz", "x", 1, secrets, 2), -EINVAL);
	char out[72];
	webhook_sign("It's a Secret to Everybody", "Hello, World!", 13, out);
	CHECK_STREQ(out, sig);
}

TEST(webhook_rejects_every_bit_flip_and_malformed_headers)
{
	/* T13: a 4 KiB body, every single-bit flip at every position. */
	char body[4096];
	for (size_t i = 0; i < sizeof(body); i++)
		body[i] = (char)('a' + i % 26);
	const char *secrets[] = {"s3cret-current", "s3cret-previous"};
	char sig[72];
	webhook_sign(secrets[1], body, sizeof(body), sig);
	CHECK_EQ(webhook_verify(sig, body, sizeof(body), secrets, 2), 1);
	size_t accepted = 0;
	for (size_t i = 0; i < sizeof(body); i++)
		for (int bit = 0; bit < 8; bit++) {
			body[i] ^= (char)(1 << bit);
			accepted += webhook_verify(sig, body, sizeof(body), secrets, 2) >= 0;
			body[i] ^= (char)(1 << bit);
		}
	CHECK_EQ(accepted, 0);
	/* Upper-case hex, truncated, extended, spaces, sha1=: all malformed. */
	char upper[72], trunc[72], ext[80], spaced[80];
	snprintf(upper, sizeof(upper), "sha256=");
	for (size_t i = 7; sig[i]; i++)
		upper[i] = (char)(sig[i] >= 'a' && sig[i] <= 'f' ? sig[i] - 32 : sig[i]);
	upper[strlen(sig)] = '\0';
	snprintf(trunc, sizeof(trunc), "%.*s", (int)strlen(sig) - 1, sig);
	snprintf(ext, sizeof(ext), "%s0", sig);
	snprintf(spaced, sizeof(spaced), " %s", sig);
	const char *bad[] = {upper, trunc, ext, spaced, "sha1=0123", "", "sha256="};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		CHECK_EQ(webhook_verify(bad[i], body, sizeof(body), secrets, 2), -EINVAL);
	const char *none[] = {"other"};
	CHECK_EQ(webhook_verify(sig, body, sizeof(body), none, 1), -EPERM);
	CHECK_EQ(webhook_verify(sig, body, sizeof(body), none, 0), -EPERM);
}

TEST(job_token_is_bound_to_job_and_fence)
{
	uint8_t k1[32], k2[32];
	memset(k1, 1, sizeof(k1));
	memset(k2, 2, sizeof(k2));
	char a[TOKEN_LEN + 1], b[TOKEN_LEN + 1];
	token_job(k1, 12, 40, a);
	/* Known answer: a token handed out must verify after an upgrade. */
	CHECK_STREQ(a, "kiln_job_BC17YLBmfKabdUPrzkHUH5SgE2KyPGaiEF7YfodNSCl0nw1wD");
	enum token_kind kind;
	CHECK_EQ(token_parse(a, &kind, NULL), 0);
	CHECK_EQ(kind, TOKEN_JOB);
	token_job(k1, 12, 40, b);
	CHECK_STREQ(a, b); /* deterministic */
	token_job(k1, 12, 41, b);
	CHECK(strcmp(a, b) != 0);
	token_job(k1, 13, 40, b);
	CHECK(strcmp(a, b) != 0);
	token_job(k2, 12, 40, b);
	CHECK(strcmp(a, b) != 0);
	/* "1|240" and "12|40" must not collide: the fields are separated. */
	token_job(k1, 1, 240, b);
	CHECK(strcmp(a, b) != 0);
}

TEST(token_bucket)
{
	struct token_bucket tb;
	token_bucket_init(&tb, 10, 5, 0);
	uint64_t retry = 0;
	for (int i = 0; i < 5; i++)
		CHECK(token_bucket_take(&tb, 1, 0, &retry));
	CHECK(!token_bucket_take(&tb, 1, 0, &retry));
	CHECK_EQ(retry, 100);
	CHECK(token_bucket_take(&tb, 1, 100 * NSEC_PER_MSEC, &retry));
	/* Refill never exceeds the burst. */
	CHECK(token_bucket_take(&tb, 5, 10 * NSEC_PER_SEC, &retry));
	CHECK(!token_bucket_take(&tb, 1, 10 * NSEC_PER_SEC, &retry));
}

int main(void)
{
	if (auth_init() < 0)
		return 1;
	return tap_run();
}
