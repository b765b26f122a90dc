/*
 * label-fuzz: the label grammar (spec_label_parse, spec_label_valid,
 * spec_label_eq) and the comma-joined label lists of the API
 * (proto_labels_split / proto_labels_join). Properties (abort otherwise):
 *  - spec_label_valid(s) agrees with spec_label_parse(s) succeeding;
 *  - a parsed label has a lower-case key (and value), 1..128 bytes in all,
 *    and key[:value] is the lower-cased input; a refused one has a message;
 *  - spec_label_eq is reflexive and case-insensitive;
 *  - splitting a list gives its non-empty parts; joining them lower-cases
 *    them, and splitting that gives the lower-cased parts again.
 */
#include "proto/proto.h"
#include "spec/spec.h"

#include <ctype.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_label(const char *s)
{
	struct spec_label l = {0};
	struct kiln_err err = {0};
	int r = spec_label_parse(s, &l, &err);
	if ((r == 0) != spec_label_valid(s))
		abort();
	if (r < 0) {
		if (!err.msg[0])
			abort();
		return;
	}
	size_t n = strlen(s);
	if (n < 1 || n > SPEC_LABEL_MAX || !l.key || !*l.key)
		abort();
	struct buf b = BUF_INIT;
	buf_puts(&b, l.key);
	if (l.value) {
		buf_putc(&b, ':');
		buf_puts(&b, l.value);
	}
	for (size_t i = 0; i < b.len; i++)
		if (b.data[i] != (char)tolower((unsigned char)s[i]) ||
		    isupper((unsigned char)b.data[i]))
			abort();
	if (b.len != n)
		abort();
	if (!spec_label_eq(s, s) || !spec_label_eq(s, b.data))
		abort();
	buf_release(&b);
	spec_label_release(&l);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 4096)
		return 0;
	char *s = xstrndup((const char *)data, size);
	if (strlen(s) == size) {
		check_label(s);
		/* As a list: split, join, split again. */
		size_t n = 0, m = 0;
		char **v = proto_labels_split(s, &n);
		char *joined = proto_labels_join(v, n);
		char **w = proto_labels_split(joined, &m);
		if (m != n)
			abort();
		for (size_t i = 0; i < n; i++) {
			if (!v[i][0] || strchr(v[i], ',') || strlen(v[i]) != strlen(w[i]))
				abort();
			for (size_t k = 0; v[i][k]; k++)
				if (w[i][k] != (char)tolower((unsigned char)v[i][k]))
					abort();
			check_label(v[i]);
		}
		proto_strv_free(v, n);
		proto_strv_free(w, m);
		free(joined);
	}
	free(s);
	return 0;
}
