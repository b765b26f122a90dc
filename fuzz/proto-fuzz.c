/*
 * proto-fuzz: the API's input checks on arbitrary bytes. Properties (abort
 * otherwise):
 *  - an artifact path accepted by proto_artifact_path_check() is relative,
 *    has no empty, "." or ".." component, no backslash or control byte, and
 *    is valid UTF-8 of at most 1024 bytes; a refused one has a message;
 *  - a time accepted by proto_parse_time() formats back to a string that
 *    parses to the same instant;
 *  - proto_capacity_from_json() on the input as JSON either fills a capacity
 *    with no negative field or refuses with a message;
 *  - splitting labels and joining them again is the identity on the
 *    non-empty, lower-case parts;
 *  - proto_usage_from_json() on the input as JSON either refuses with a
 *    message or accepts a report whose JSON form reads back to the same
 *    measures.
 */
#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_path(const char *s, size_t len)
{
	struct kiln_err err = {0};
	int r = proto_artifact_path_check(s, &err);
	if (r < 0) {
		if (!err.msg[0])
			abort();
		return;
	}
	if (len == 0 || len > 1024 || s[0] == '/' || !utf8_valid(s, len))
		abort();
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f || c == '\\')
			abort();
	}
	const char *p = s;
	for (;;) {
		const char *e = strchr(p, '/');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			abort();
		if (!e)
			break;
		p = e + 1;
	}
}

static void check_time(const char *s)
{
	uint64_t ms;
	if (proto_parse_time(s, &ms) < 0)
		return;
	json_t *o = json_object();
	proto_set_time(o, "t", ms ? ms : 1);
	uint64_t back;
	if (proto_parse_time(json_string_value(json_object_get(o, "t")), &back) < 0 ||
	    back != (ms ? ms : 1))
		abort();
	json_decref(o);
}

static void check_capacity(const char *s, size_t len)
{
	json_t *j = json_loadb(s, len, 0, NULL);
	if (!j)
		return;
	struct proto_capacity c;
	struct kiln_err err = {0};
	if (proto_capacity_from_json(j, "capacity", &c, &err) < 0) {
		if (!err.msg[0])
			abort();
	} else if (c.slots < 0 || c.cpus < 0 || c.gpus < 0) {
		abort();
	}
	json_decref(j);
}

static void check_labels(const char *s)
{
	size_t n;
	char **v = proto_labels_split(s, &n);
	char *joined = proto_labels_join(v, n);
	size_t n2;
	char **v2 = proto_labels_split(joined, &n2);
	if (n2 != n)
		abort();
	for (size_t i = 0; i < n; i++)
		if (strlen(v2[i]) != strlen(v[i]))
			abort();
	char *again = proto_labels_join(v2, n2);
	if (strcmp(again, joined) != 0)
		abort();
	free(again);
	free(joined);
	proto_strv_free(v, n);
	proto_strv_free(v2, n2);
}

static void check_usage(const char *s, size_t len)
{
	json_t *j = json_loadb(s, len, 0, NULL);
	if (!j)
		return;
	struct proto_usage u, back;
	struct kiln_err err = {0};
	if (proto_usage_from_json(j, &u, &err) < 0) {
		if (!err.msg[0])
			abort();
		json_decref(j);
		return;
	}
	json_decref(j);
	if (!u.reported || strlen(u.executor) >= PROTO_EXECUTOR_MAX)
		abort();
	json_t *out = proto_usage_to_json(&u);
	if (proto_usage_from_json(out, &back, &err) < 0)
		abort();
	if (back.wall_ms != u.wall_ms || back.cpu_user_ms != u.cpu_user_ms ||
	    back.cpu_system_ms != u.cpu_system_ms || back.memory_peak_bytes != u.memory_peak_bytes ||
	    back.io_read_bytes != u.io_read_bytes || back.io_write_bytes != u.io_write_bytes ||
	    back.oom_kills != u.oom_kills || strcmp(back.executor, u.executor) != 0)
		abort();
	json_decref(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 4096)
		return 0;
	char *s = xstrndup((const char *)data, size);
	size_t len = strlen(s);
	check_path(s, len);
	check_time(s);
	check_capacity((const char *)data, size);
	check_usage((const char *)data, size);
	check_labels(s);
	free(s);
	return 0;
}
