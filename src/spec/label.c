/*
 * label: the label grammar of runs-on (and of agents' labels).
 *
 *   label = key [ ":" value ]          1..SPEC_LABEL_MAX bytes
 *   key   = alnum *( alnum / "-" / "_" / "." / "/" / "+" )
 *   value = 1*( alnum / "-" / "_" / "." / "/" / "+" / ":" / "@" )
 *
 * The key ends at the first ':', so "image:node:18-alpine" is key "image",
 * value "node:18-alpine". Labels compare case-insensitively (as GitHub's);
 * what a key means when matching belongs to the server, not here.
 */
#include "spec-internal.h"

static bool is_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool key_char(char c)
{
	return is_alnum(c) || c == '-' || c == '_' || c == '.' || c == '/' || c == '+';
}
static bool value_char(char c)
{
	return key_char(c) || c == ':' || c == '@';
}

/* Writes why `s` is not a label into why (a phrase) and returns false. */
static bool label_check(const char *s, char *why, size_t whylen)
{
	size_t len = strlen(s);
	if (len == 0) {
		snprintf(why, whylen, "a label cannot be empty");
		return false;
	}
	if (len > SPEC_LABEL_MAX) {
		snprintf(why, whylen, "it is %zu bytes long; the limit is %d", len, SPEC_LABEL_MAX);
		return false;
	}
	if (!is_alnum(s[0])) {
		snprintf(why, whylen, "a label starts with a letter or digit");
		return false;
	}
	bool in_value = false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!in_value && c == ':') {
			in_value = true;
			if (i + 1 == len) {
				snprintf(why, whylen,
				         "the value after ':' is empty (e.g. gpu-count:2)");
				return false;
			}
			continue;
		}
		if (in_value ? value_char(c) : key_char(c))
			continue;
		if ((unsigned char)c < 0x20 || c == 0x7f)
			snprintf(why, whylen, "control characters and line breaks are not allowed");
		else if ((unsigned char)c >= 0x80)
			snprintf(why, whylen,
			         "only ASCII letters, digits and - _ . / + are allowed");
		else if (c == ' ' || c == '\t')
			snprintf(why, whylen,
			         "spaces are not allowed (a list of labels is written "
			         "[a, b])");
		else if (c == '@')
			snprintf(why, whylen, "'@' is allowed only in the value of key:value");
		else
			snprintf(why, whylen,
			         "'%c' is not allowed (use letters, digits and - _ . / +; "
			         "key:value labels put ':' after the key)",
			         c);
		return false;
	}
	return true;
}

bool spec_label_valid(const char *s)
{
	char why[160];
	return s && label_check(s, why, sizeof(why));
}

static char *lower_dup(const char *s, size_t n)
{
	char *r = xstrndup(s, n);
	for (char *p = r; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	return r;
}

int spec_label_parse(const char *s, struct spec_label *ret, struct kiln_err *err)
{
	char why[160];
	if (!s)
		return kiln_err_set(err, -EINVAL, "a label cannot be empty");
	if (!label_check(s, why, sizeof(why))) {
		struct buf q = BUF_INIT;
		quote_value(&q, s);
		int r = kiln_err_set(err, -EINVAL, "%s is not a valid label: %s", q.data, why);
		buf_release(&q);
		return r;
	}
	const char *colon = strchr(s, ':');
	ret->key = lower_dup(s, colon ? (size_t)(colon - s) : strlen(s));
	ret->value = colon ? lower_dup(colon + 1, strlen(colon + 1)) : NULL;
	return 0;
}

void spec_label_release(struct spec_label *l)
{
	if (!l)
		return;
	free(l->key);
	free(l->value);
	l->key = l->value = NULL;
}

bool spec_label_eq(const char *a, const char *b)
{
	/* ASCII only, whatever the locale: labels are ASCII. */
	for (;; a++, b++) {
		char x = *a, y = *b;
		if (x >= 'A' && x <= 'Z')
			x = (char)(x - 'A' + 'a');
		if (y >= 'A' && y <= 'Z')
			y = (char)(y - 'A' + 'a');
		if (x != y)
			return false;
		if (!x)
			return true;
	}
}
