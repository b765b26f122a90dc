/* Unit tests of the agent's streaming secret masker. */
#include "tap.h"

#include "agent/agent.h"

static char *mask_all(struct mask *m, const char *const *pieces, size_t n)
{
	struct buf out = BUF_INIT;
	for (size_t i = 0; i < n; i++)
		mask_write(m, pieces[i], strlen(pieces[i]), &out);
	mask_flush(m, &out);
	return buf_steal(&out);
}

TEST(plain_secret_masked)
{
	struct mask *m = mask_new();
	mask_add_secret(m, "hunter2", 7);
	const char *in[] = {"password is hunter2, ok\n"};
	_cleanup_free_ char *out = mask_all(m, in, 1);
	CHECK_STREQ(out, "password is ***, ok\n");
	mask_free(m);
}

TEST(split_across_writes)
{
	struct mask *m = mask_new();
	mask_add_secret(m, "s3cr3t-value", 12);
	const char *in[] = {"a s3", "cr", "3t-va", "lue b"};
	_cleanup_free_ char *out = mask_all(m, in, 4);
	CHECK_STREQ(out, "a *** b");
	mask_free(m);
}

TEST(no_secrets_passthrough)
{
	struct mask *m = mask_new();
	const char *in[] = {"abc", "def"};
	_cleanup_free_ char *out = mask_all(m, in, 2);
	CHECK_STREQ(out, "abcdef");
	mask_free(m);
}

TEST(short_values_ignored)
{
	struct mask *m = mask_new();
	mask_add_secret(m, "ab", 2);
	CHECK_EQ(mask_patterns(m), 0);
	mask_free(m);
}

TEST(base64_all_alignments)
{
	/* base64 of "Xtoken-123456" etc., computed independently (coreutils base64). */
	struct mask *m = mask_new();
	mask_add_secret(m, "token-123456", 12);
	const char *in0[] = {"dG9rZW4tMTIzNDU2\n"};      /* "token-123456" */
	_cleanup_free_ char *o0 = mask_all(m, in0, 1);
	CHECK(strstr(o0, "dG9rZW4tMTIz") == NULL);
	const char *in1[] = {"WHRva2VuLTEyMzQ1Ng==\n"};  /* "Xtoken-123456" */
	_cleanup_free_ char *o1 = mask_all(m, in1, 1);
	CHECK(strstr(o1, "va2VuLTEyMzQ1") == NULL);
	CHECK(strstr(o1, "***") != NULL);
	const char *in2[] = {"WFh0b2tlbi0xMjM0NTY=\n"};  /* "XXtoken-123456" */
	_cleanup_free_ char *o2 = mask_all(m, in2, 1);
	CHECK(strstr(o2, "b2tlbi0xMjM0NT") == NULL);
	CHECK(strstr(o2, "***") != NULL);
	mask_free(m);
}

TEST(url_encoded)
{
	struct mask *m = mask_new();
	mask_add_secret(m, "p@ss word/1", 11);
	const char *in[] = {"u=p%40ss%20word%2F1&x=p%40ss%20word%2f1"};
	_cleanup_free_ char *out = mask_all(m, in, 1);
	CHECK_STREQ(out, "u=***&x=***");
	mask_free(m);
}

TEST(random_splits_never_leak)
{
	/* A stream with secrets in it, cut at every possible single split point. */
	const char *secret = "Zq9-aa-Zq9-bb";
	struct buf stream = BUF_INIT;
	for (int i = 0; i < 20; i++)
		buf_printf(&stream, "line %d Zq9-aa-Zq9-bb Zq9-a Zq9-aa-Zq9-bbZq9-aa-Zq9-bb\n", i);
	for (size_t cut = 0; cut <= stream.len; cut += 7) {
		struct mask *m = mask_new();
		mask_add_secret(m, secret, strlen(secret));
		struct buf out = BUF_INIT;
		mask_write(m, stream.data, cut, &out);
		for (size_t i = cut; i < stream.len; i += 3)
			mask_write(m, stream.data + i, MIN((size_t)3, stream.len - i), &out);
		mask_flush(m, &out);
		CHECK(strstr(out.data, secret) == NULL);
		CHECK(strstr(out.data, "Zq9-a ") != NULL); /* near-misses survive */
		buf_release(&out);
		mask_free(m);
	}
	buf_release(&stream);
}

TEST(held_back_is_bounded)
{
	struct mask *m = mask_new();
	mask_add_secret(m, "abcdefgh", 8);
	struct buf out = BUF_INIT;
	/* Output without the first byte of any pattern is released at once. */
	mask_write(m, "xyz xyz", 7, &out);
	CHECK_EQ(out.len, 7);
	/* A prefix of the secret is held until it is decided. */
	mask_write(m, " abcd", 5, &out);
	CHECK_EQ(out.len, 8);
	mask_write(m, "X", 1, &out);
	CHECK_STREQ(out.data, "xyz xyz abcdX");
	buf_release(&out);
	mask_free(m);
}

int main(void)
{
	return tap_run();
}
