/* Unit tests of src/base: parsing grammars, buffers, files. */
#include "tap.h"

#include <fcntl.h>
#include <sys/stat.h>

TEST(parse_size_units)
{
	uint64_t v = 0;
	CHECK_EQ(parse_size("512Mi", &v), 0);
	CHECK_EQ(v, 512ULL << 20);
	CHECK_EQ(parse_size("4Gi", &v), 0);
	CHECK_EQ(v, 4ULL << 30);
	CHECK_EQ(parse_size("1.5G", &v), 0);
	CHECK_EQ(v, 1500000000ULL);
	CHECK_EQ(parse_size("100M", &v), 0);
	CHECK_EQ(v, 100000000ULL);
	CHECK_EQ(parse_size("4096", &v), 0);
	CHECK_EQ(v, 4096);
	CHECK_EQ(parse_size("0.5Ki", &v), 0);
	CHECK_EQ(v, 512);
}

TEST(parse_size_rejects)
{
	uint64_t v = 7;
	CHECK_EQ(parse_size("4GX", &v), -EINVAL);
	CHECK_EQ(parse_size("", &v), -EINVAL);
	CHECK_EQ(parse_size("Mi", &v), -EINVAL);
	CHECK_EQ(parse_size("-1Mi", &v), -EINVAL);
	CHECK_EQ(parse_size("1.Mi", &v), -EINVAL);
	CHECK_EQ(parse_size("1..5Mi", &v), -EINVAL);
	CHECK_EQ(parse_size("1.5", &v), -EINVAL);
	CHECK_EQ(parse_size(" 1Mi", &v), -EINVAL);
	CHECK_EQ(parse_size("2048Ti", &v), -ERANGE);
	CHECK_EQ(parse_size("99999999999999999999", &v), -ERANGE);
	CHECK_EQ(v, 7); /* untouched on failure */
}

TEST(format_size_roundtrip)
{
	char out[32];
	format_size(512ULL << 20, out);
	CHECK_STREQ(out, "512Mi");
	format_size(3ULL << 30, out);
	CHECK_STREQ(out, "3Gi");
	format_size(1000, out);
	CHECK_STREQ(out, "1000");
}

TEST(parse_duration)
{
	uint64_t ms = 0;
	CHECK_EQ(parse_duration_ms("30s", &ms), 0);
	CHECK_EQ(ms, 30000);
	CHECK_EQ(parse_duration_ms("10m", &ms), 0);
	CHECK_EQ(ms, 600000);
	CHECK_EQ(parse_duration_ms("2h", &ms), 0);
	CHECK_EQ(ms, 7200000);
	CHECK_EQ(parse_duration_ms("1h30m", &ms), 0);
	CHECK_EQ(ms, 5400000);
	CHECK_EQ(parse_duration_ms("250ms", &ms), 0);
	CHECK_EQ(ms, 250);
	CHECK_EQ(parse_duration_ms("1.5s", &ms), 0);
	CHECK_EQ(ms, 1500);
	CHECK_EQ(parse_duration_ms("30", &ms), -EINVAL);
	CHECK_EQ(parse_duration_ms("30x", &ms), -EINVAL);
	CHECK_EQ(parse_duration_ms("", &ms), -EINVAL);
	CHECK_EQ(parse_duration_ms("s", &ms), -EINVAL);
	CHECK_EQ(parse_duration_ms("400d", &ms), -ERANGE);
}

TEST(format_duration)
{
	char out[32];
	format_duration_ms(30000, out);
	CHECK_STREQ(out, "30s");
	format_duration_ms(5400000, out);
	CHECK_STREQ(out, "1h30m");
	format_duration_ms(250, out);
	CHECK_STREQ(out, "250ms");
	format_duration_ms(0, out);
	CHECK_STREQ(out, "0s");
}

TEST(buf_printf_grows)
{
	struct buf b = BUF_INIT;
	for (int i = 0; i < 1000; i++)
		buf_printf(&b, "%d,", i);
	CHECK(b.len > 3000);
	CHECK(startswith(b.data, "0,1,2,"));
	CHECK(endswith(b.data, "998,999,"));
	CHECK_EQ(strlen(b.data), b.len);
	buf_release(&b);
	CHECK(b.data == NULL);
}

TEST(json_string_escapes)
{
	struct buf b = BUF_INIT;
	buf_put_json_string(&b, "a\"b\\c\n\x01", 7);
	CHECK_STREQ(b.data, "\"a\\\"b\\\\c\\n\\u0001\"");
	buf_release(&b);
}

TEST(utf8)
{
	CHECK(utf8_valid("héllo", strlen("héllo")));
	CHECK(utf8_valid("\xf0\x9f\x94\xa5", 4));
	CHECK(!utf8_valid("\xff", 1));
	CHECK(!utf8_valid("\xc0\xaf", 2));         /* overlong */
	CHECK(!utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
	CHECK(!utf8_valid("\xe2\x82", 2));         /* truncated */
	CHECK(!utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
}

TEST(utf8_valid_prefix)
{
	CHECK_EQ(utf8_valid_prefix("abc", 3), 3);
	CHECK_EQ(utf8_valid_prefix("h\xc3\xa9\xff", 4), 3);
	CHECK_EQ(utf8_valid_prefix("ab\xe2\x82", 4), 2);     /* truncated at the end */
	CHECK_EQ(utf8_valid_prefix("a\xe2\x82z", 4), 1);     /* bad continuation */
	CHECK_EQ(utf8_valid_prefix("\xed\xa0\x80", 3), 0); /* surrogate */
	CHECK_EQ(utf8_valid_prefix("", 0), 0);
}

TEST(utf8_lossy)
{
	struct buf b = BUF_INIT;
	buf_put_utf8_lossy(&b, "h\xc3\xa9\xff-\xe2\x82z\x9d", 9);
	buf_putc(&b, '\0');
	CHECK_STREQ(b.data, "h\xc3\xa9\xef\xbf\xbd-\xef\xbf\xbd\xef\xbf\xbdz\xef\xbf\xbd");
	CHECK(utf8_valid(b.data, b.len - 1));
	buf_reset(&b);
	buf_put_utf8_lossy(&b, "", 0);
	CHECK_EQ(b.len, 0);
	buf_release(&b);
}

TEST(edit_distance)
{
	CHECK_EQ(str_edit_distance("runs-on", "runson", 5), 1);
	CHECK_EQ(str_edit_distance("timeout", "timeuot", 5), 2);
	CHECK_EQ(str_edit_distance("a", "completely-different", 3), 3);
}

TEST(parse_int64_bounds)
{
	int64_t v = 0;
	CHECK_EQ(parse_int64("42", 0, 100, &v), 0);
	CHECK_EQ(v, 42);
	CHECK_EQ(parse_int64("101", 0, 100, &v), -ERANGE);
	CHECK_EQ(parse_int64("4x", 0, 100, &v), -EINVAL);
	CHECK_EQ(parse_int64("", 0, 100, &v), -EINVAL);
	CHECK_EQ(parse_int64("99999999999999999999999", INT64_MIN, INT64_MAX, &v), -ERANGE);
}

TEST(files_atomic_and_rm_rf)
{
	char tmpl[] = "/tmp/kiln-base-test.XXXXXX";
	CHECK(mkdtemp(tmpl) != NULL);
	_cleanup_free_ char *deep = path_join(tmpl, "a/b/c");
	CHECK_EQ(mkdir_p(deep, 0755), 0);
	_cleanup_free_ char *f = path_join(deep, "file");
	CHECK_EQ(write_file_atomic(f, "hello", 5, 0644), 0);
	struct buf b = BUF_INIT;
	CHECK_EQ(read_file(f, 100, &b), 0);
	CHECK_STREQ(b.data, "hello");
	buf_release(&b);
	CHECK_EQ(read_file(f, 4, &b), -EFBIG);
	CHECK_EQ(read_file(deep, 100, &b), -EISDIR);
	/* A symlink pointing out of the tree must be removed, not followed. */
	char outside[] = "/tmp/kiln-base-out.XXXXXX";
	CHECK(mkdtemp(outside) != NULL);
	_cleanup_free_ char *keep = path_join(outside, "keep");
	CHECK_EQ(write_file_atomic(keep, "x", 1, 0644), 0);
	_cleanup_free_ char *link = path_join(tmpl, "a/escape");
	CHECK_EQ(symlink(outside, link), 0);
	_cleanup_free_ char *locked = path_join(tmpl, "a/locked");
	CHECK_EQ(mkdir(locked, 0), 0);
	CHECK_EQ(rm_rf(tmpl), 0);
	CHECK(access(tmpl, F_OK) < 0);
	CHECK(access(keep, F_OK) == 0);
	CHECK_EQ(rm_rf(outside), 0);
	CHECK_EQ(rm_rf("/tmp/kiln-does-not-exist-xyz"), 0);
}

TEST(path_join_slashes)
{
	_cleanup_free_ char *a = path_join("/x/", "/y");
	CHECK_STREQ(a, "/x/y");
	_cleanup_free_ char *b = path_join("/", "y");
	CHECK_STREQ(b, "/y");
}

TEST(kiln_err_prefix)
{
	struct kiln_err err = {0};
	CHECK_EQ(kiln_err_set(&err, -ENOENT, "no such file '%s'", "x"), -ENOENT);
	CHECK_EQ(kiln_err_prefix(&err, "loading %s", "spec"), -ENOENT);
	CHECK_STREQ(err.msg, "loading spec: no such file 'x'");
}

TEST(log_field_quotes_what_needs_it)
{
	char b[32];
	CHECK_STREQ(log_field("plain-name_1", b, sizeof(b)), "plain-name_1");
	CHECK_STREQ(log_field("two words", b, sizeof(b)), "\"two words\"");
	CHECK_STREQ(log_field("a\"b\\c", b, sizeof(b)), "\"a\\\"b\\\\c\"");
	CHECK_STREQ(log_field("x=y", b, sizeof(b)), "\"x=y\"");
	CHECK_STREQ(log_field("line\nbreak", b, sizeof(b)), "\"line break\"");
	CHECK_STREQ(log_field("", b, sizeof(b)), "\"\"");
	CHECK_STREQ(log_field(NULL, b, sizeof(b)), "\"\"");
	/* Cut to fit, still closed. */
	const char *v = log_field("a very long value that does not fit here", b, 12);
	size_t n = strlen(v);
	CHECK(n >= 3 && n < 12);
	CHECK(v[0] == '"' && v[n - 1] == '"');
}

int main(void)
{
	return tap_run();
}
