/*
 * value: reads typed values out of nodes for the validator (job.c): the
 * context (diagnostics, the field path), ${{ matrix.KEY }} substitution,
 * strings, numbers, booleans, durations, sizes, names and paths.
 *
 * Every reader reports what was wrong at the node's line:col under the
 * current path and returns false/NULL; none of them stops validation.
 */
#include "spec-internal.h"

#include <inttypes.h>
#include <math.h>
#include <strings.h>

/* ---- context helpers ------------------------------------------------------------ */

char *v_keep(struct vctx *c, char *s)
{
	c->scratch = xgrow(c->scratch, &c->cap_scratch, c->n_scratch + 1, sizeof(*c->scratch));
	c->scratch[c->n_scratch++] = s;
	return s;
}

/* A quoted, escaped user value for a message; lives as long as the context. */
const char *v_quote(struct vctx *c, const char *s)
{
	struct buf b = BUF_INIT;
	quote_value(&b, s);
	return v_keep(c, buf_steal(&b));
}

void v_err(struct vctx *c, const struct node *n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	_cleanup_free_ char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	spec_diags_add(c->d, n ? n->line : 0, n ? n->col : 0, c->path.data ? c->path.data : "",
	               "%s", msg);
	c->failed = true;
}

bool v_path_word(const char *k)
{
	if (!*k || strlen(k) > 64)
		return false;
	for (const char *p = k; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' || *p == '.'))
			return false;
	return true;
}

/* Appends ".key" (or ["odd key"]) to the path; returns the length to pop back to. */
size_t v_push_key(struct vctx *c, const char *k)
{
	size_t old = c->path.len;
	if (v_path_word(k)) {
		if (old)
			buf_putc(&c->path, '.');
		buf_puts(&c->path, k);
	} else {
		buf_putc(&c->path, '[');
		quote_value(&c->path, k);
		buf_putc(&c->path, ']');
	}
	return old;
}

size_t v_push_index(struct vctx *c, size_t i)
{
	size_t old = c->path.len;
	buf_printf(&c->path, "[%zu]", i);
	return old;
}

void v_pop(struct vctx *c, size_t old)
{
	c->path.len = old;
	if (c->path.data)
		c->path.data[old] = '\0';
}

/* ---- substitution of ${{ matrix.KEY }} ------------------------------------------------ */

bool v_key_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '_' || ch == '-';
}

/*
 * Parses the expression starting at s ("${{"). On success sets the key
 * (start, length) and returns the length of the whole expression; 0 if it
 * is not ${{ matrix.KEY }}, with *ret_end at its "}}" (or NULL when
 * unterminated).
 */
static size_t parse_expr(const char *s, const char **key, size_t *key_len, const char **ret_end)
{
	const char *end = strstr(s + 3, "}}");
	*ret_end = end;
	if (!end)
		return 0;
	const char *p = s + 3;
	while (*p == ' ' || *p == '\t')
		p++;
	if (!startswith(p, "matrix."))
		return 0;
	p += strlen("matrix.");
	const char *k = p;
	while (v_key_char(*p))
		p++;
	if (p == k)
		return 0;
	*key = k;
	*key_len = (size_t)(p - k);
	while (*p == ' ' || *p == '\t')
		p++;
	if (p != end)
		return 0;
	return (size_t)(end + 2 - s);
}

static bool matrix_has_key(const struct matrix *m, const char *k)
{
	for (size_t i = 0; i < m->n_names; i++)
		if (streq(m->names[i], k))
			return true;
	return false;
}

static void report_bad_expr(struct vctx *c, const struct node *n, const char *s, const char *end)
{
	if (!end) {
		v_err(c, n, "%s has an unterminated ${{ (write ${{ matrix.NAME }})", v_quote(c, s));
		return;
	}
	_cleanup_free_ char *expr = xstrndup(s, (size_t)(end + 2 - s));
	v_err(c, n, "unsupported expression %s; kiln substitutes only ${{ matrix.NAME }}",
	      v_quote(c, expr));
}

static void report_unknown_key(struct vctx *c, const struct node *n, const char *key)
{
	const struct matrix *m = c->m;
	const char *best = closest_word(key, (const char *const *)m->names, m->n_names);
	struct buf list = BUF_INIT;
	for (size_t i = 0; i < m->n_names && i < 16; i++)
		buf_printf(&list, "%s%s", i ? ", " : "", m->names[i]);
	if (best)
		v_err(c, n, "unknown matrix key %s in ${{ matrix.%s }} (did you mean %s?)",
		      v_quote(c, key), key, v_quote(c, best));
	else
		v_err(c, n, "unknown matrix key %s in ${{ matrix.%s }} (the matrix has: %s)",
		      v_quote(c, key), key, list.data ? list.data : "");
	buf_release(&list);
}

/*
 * The text of scalar n with expressions substituted; NULL when an error was
 * reported (or, in SUBST_TOLERANT mode, when the value uses the matrix).
 */
static const char *text_of(struct vctx *c, const struct node *n)
{
	const char *s = n->text;
	const char *at = strstr(s, "${{");
	if (!at)
		return s;
	struct buf out = BUF_INIT;
	const char *p = s;
	bool ok = true;
	while (at) {
		const char *key, *end;
		size_t key_len;
		size_t len = parse_expr(at, &key, &key_len, &end);
		if (len == 0) {
			report_bad_expr(c, n, at, end);
			ok = false;
			if (!end)
				break;
			p = end + 2; /* go on: report every bad expression of the value */
			at = strstr(p, "${{");
			continue;
		}
		_cleanup_free_ char *k = xstrndup(key, key_len);
		if (c->mode == SUBST_NONE) {
			v_err(c, n, "%s uses ${{ matrix.%s }} but the job has no matrix",
			      v_quote(c, s), k);
			ok = false;
			break;
		}
		if (!matrix_has_key(c->m, k)) {
			report_unknown_key(c, n, k);
			ok = false;
		} else if (ok && c->mode == SUBST_COMBO) {
			buf_append(&out, p, (size_t)(at - p));
			const char *v = combo_get(c->combo, k);
			buf_puts(&out, v ? v : ""); /* a key only some combinations have: "" */
		}
		p = at + len;
		at = strstr(p, "${{");
	}
	if (!ok || c->mode == SUBST_TOLERANT) {
		buf_release(&out);
		return NULL;
	}
	buf_puts(&out, p);
	char *r = v_keep(c, buf_steal(&out));
	if (strstr(r, "${{")) {
		v_err(c, n, "substituting the matrix into %s gives %s, which still holds ${{",
		      v_quote(c, s), v_quote(c, r));
		return NULL;
	}
	return r;
}

/* ---- scalars ------------------------------------------------------------------------ */

/* Reads a scalar (after substitution); reports "expected X" for collections. */
bool v_scalar(struct vctx *c, const struct node *n, const char *expected, struct val *v)
{
	if (n->bad) {
		c->failed = true; /* reported while parsing */
		return false;
	}
	if (n->type != NODE_SCALAR) {
		v_err(c, n, "expected %s, got %s", expected, node_type_name(n));
		return false;
	}
	const char *t = text_of(c, n);
	if (!t) {
		if (c->mode != SUBST_TOLERANT)
			c->failed = true;
		return false;
	}
	v->text = t;
	v->kind = scalar_kind(t, n->plain);
	return true;
}

bool v_is_null(const struct node *n)
{
	return n->type == NODE_SCALAR && !n->bad && scalar_kind(n->text, n->plain) == SK_NULL;
}

bool v_has_control(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20)
			return true;
	return false;
}

/* A string field: any non-null scalar, as written. NULL if reported. */
const char *v_string(struct vctx *c, const struct node *n, const char *example)
{
	struct val v;
	if (!v_scalar(c, n, "a string", &v))
		return NULL;
	if (v.kind == SK_NULL) {
		v_err(c, n, "is empty; expected a string (e.g. %s)", example);
		return NULL;
	}
	return v.text;
}

bool v_int(struct vctx *c, const struct node *n, int64_t min, int64_t max, int64_t *ret)
{
	struct val v;
	if (!v_scalar(c, n, "an integer", &v))
		return false;
	if (v.kind != SK_INT) {
		v_err(c, n, "expected an integer from %" PRId64 " to %" PRId64 ", got %s%s", min,
		      max,
		      v.kind == SK_FLOAT  ? "the number "
		      : v.kind == SK_BOOL ? "the boolean "
		                          : "",
		      v_quote(c, v.text));
		return false;
	}
	int r = parse_int64(v.text, min, max, ret);
	if (r < 0) {
		v_err(c, n, "%s is out of range (%" PRId64 " to %" PRId64 ")", v.text, min, max);
		return false;
	}
	return true;
}

bool v_bool(struct vctx *c, const struct node *n, bool *ret)
{
	struct val v;
	if (!v_scalar(c, n, "true or false", &v))
		return false;
	if (v.kind != SK_BOOL) {
		v_err(c, n, "expected true or false, got %s", v_quote(c, v.text));
		return false;
	}
	*ret = v.text[0] == 't' || v.text[0] == 'T';
	return true;
}

/* Names (job, step): trimmed, 1..MAX_NAME bytes, one line. */
char *v_name(struct vctx *c, const struct node *n, const char *s)
{
	while (*s == ' ')
		s++;
	size_t len = strlen(s);
	while (len > 0 && s[len - 1] == ' ')
		len--;
	if (len == 0) {
		v_err(c, n, "is empty; give it a name (e.g. name: build)");
		return NULL;
	}
	char *r = xstrndup(s, len);
	if (v_has_control(r)) {
		v_err(c, n, "%s contains a line break or control character; a name is one line",
		      v_quote(c, r));
		free(r);
		return NULL;
	}
	if (len > MAX_NAME) {
		v_err(c, n, "is %zu bytes long; the limit is %d", len, MAX_NAME);
		free(r);
		return NULL;
	}
	return r;
}

/* ---- durations and sizes -------------------------------------------------------------- */

/* Rewrites common mistakes ("10 min", "30sec", "4GB", "4gi") into the grammar. */
static char *fix_unit(const char *s, bool size)
{
	static const struct {
		const char *from, *to;
	} dur[] =
	    {
	        {"seconds", "s"}, {"second", "s"}, {"secs", "s"}, {"sec", "s"},   {"minutes", "m"},
	        {"minute", "m"},  {"mins", "m"},   {"min", "m"},  {"hours", "h"}, {"hour", "h"},
	        {"hrs", "h"},     {"hr", "h"},     {"days", "d"}, {"day", "d"},   {"S", "s"},
	        {"M", "m"},       {"H", "h"},      {"D", "d"},
	    },
	  sz[] = {
	      {"kib", "Ki"}, {"mib", "Mi"}, {"gib", "Gi"}, {"tib", "Ti"},
	      {"ki", "Ki"},  {"mi", "Mi"},  {"gi", "Gi"},  {"ti", "Ti"},
	      {"kb", "K"},   {"mb", "M"},   {"gb", "G"},   {"tb", "T"},
	      {"k", "K"},    {"m", "M"},    {"g", "G"},    {"t", "T"},
	  };
	struct buf b = BUF_INIT;
	const char *p = s;
	while (*p) {
		if (*p == ' ') {
			p++;
			continue;
		}
		if ((*p >= '0' && *p <= '9') || *p == '.') {
			buf_putc(&b, *p++);
			continue;
		}
		size_t n = 0;
		while (p[n] && p[n] != ' ' && !(p[n] >= '0' && p[n] <= '9'))
			n++;
		_cleanup_free_ char *word = xstrndup(p, n);
		const char *to = NULL;
		if (size) {
			for (size_t i = 0; i < ARRAY_SIZE(sz) && !to; i++)
				if (strcasecmp(word, sz[i].from) == 0)
					to = sz[i].to;
		} else {
			for (size_t i = 0; i < ARRAY_SIZE(dur) && !to; i++)
				if (streq(word, dur[i].from) ||
				    (strlen(dur[i].from) > 1 && strcasecmp(word, dur[i].from) == 0))
					to = dur[i].to;
		}
		if (!to) {
			buf_release(&b);
			return NULL;
		}
		buf_puts(&b, to);
		p += n;
	}
	return buf_steal(&b);
}

/* A duration with a unit; ret 0 + false when reported. */
bool v_duration(struct vctx *c, const struct node *n, uint64_t *ret)
{
	struct val v;
	if (!v_scalar(c, n, "a duration", &v))
		return false;
	if (v.kind == SK_INT || v.kind == SK_FLOAT) {
		v_err(c, n, "%s has no unit (did you mean \"%ss\"? units: ms, s, m, h, d)",
		      v_quote(c, v.text), v.text);
		return false;
	}
	uint64_t ms;
	char lo[32];
	format_duration_ms(MIN_TIMEOUT_MS, lo);
	int r = parse_duration_ms(v.text, &ms);
	if (r == -EINVAL) {
		_cleanup_free_ char *fixed = fix_unit(v.text, false);
		uint64_t dummy;
		if (fixed && parse_duration_ms(fixed, &dummy) == 0)
			v_err(c, n, "%s is not a duration (did you mean %s?)", v_quote(c, v.text),
			      v_quote(c, fixed));
		else
			v_err(c, n, "%s is not a duration (e.g. 30s, 10m, 2h, 1h30m)",
			      v_quote(c, v.text));
		return false;
	}
	if (r < 0 || ms < MIN_TIMEOUT_MS || ms > MAX_TIMEOUT_MS) {
		v_err(c, n, "%s is out of range (%s to 30d)", v_quote(c, v.text), lo);
		return false;
	}
	*ret = ms;
	return true;
}

/* A size: with a unit, or an integer number of bytes; 0 = no limit. */
bool v_size(struct vctx *c, const struct node *n, uint64_t min, uint64_t *ret)
{
	struct val v;
	if (!v_scalar(c, n, "a size", &v))
		return false;
	char smin[32];
	format_size(min, smin);
	uint64_t bytes;
	int r = v.kind == SK_BOOL || v.kind == SK_NULL ? -EINVAL : parse_size(v.text, &bytes);
	if (r == -EINVAL) {
		_cleanup_free_ char *fixed = fix_unit(v.text, true);
		uint64_t dummy;
		if (fixed && parse_size(fixed, &dummy) == 0)
			v_err(c, n, "%s is not a size (did you mean %s?)", v_quote(c, v.text),
			      v_quote(c, fixed));
		else
			v_err(c, n, "%s is not a size (e.g. 512Mi, 4Gi)", v_quote(c, v.text));
		return false;
	}
	if (r < 0) {
		v_err(c, n, "%s is out of range (%s to 1024Ti, or 0 for no limit)",
		      v_quote(c, v.text), smin);
		return false;
	}
	if (bytes != 0 && bytes < min) {
		bool bare = true;
		for (const char *p = v.text; *p; p++)
			if (*p < '0' || *p > '9')
				bare = false;
		if (bare)
			v_err(c, n,
			      "%s bytes is below the minimum %s (a bare number counts bytes; did "
			      "you mean \"%sMi\"?)",
			      v.text, smin, v.text);
		else
			v_err(c, n, "%s is below the minimum %s (or 0 for no limit)",
			      v_quote(c, v.text), smin);
		return false;
	}
	*ret = bytes;
	return true;
}

bool v_cpus(struct vctx *c, const struct node *n, double *ret)
{
	struct val v;
	if (!v_scalar(c, n, "a number of CPUs", &v))
		return false;
	if (v.kind != SK_INT && v.kind != SK_FLOAT) {
		size_t len = strlen(v.text);
		int64_t milli;
		if (len > 1 && v.text[len - 1] == 'm' && v.kind == SK_STRING) {
			_cleanup_free_ char *num = xstrndup(v.text, len - 1);
			if (parse_int64(num, 1, 1024000, &milli) == 0) {
				v_err(c, n, "%s is not a number (did you mean %g?)",
				      v_quote(c, v.text), (double)milli / 1000);
				return false;
			}
		}
		v_err(c, n, "expected a number of CPUs (e.g. 2 or 0.5), got %s",
		      v_quote(c, v.text));
		return false;
	}
	char *end = NULL;
	double x = strtod(v.text, &end);
	if (*end != '\0') { /* .inf, .nan: YAML floats strtod does not read */
		v_err(c, n, "%s is out of range (0.001 to 1024, or 0 for no limit)", v.text);
		return false;
	}
	if (x == 0) {
		*ret = 0;
		return true;
	}
	if (!(x >= 0.001 && x <= 1024)) {
		v_err(c, n, "%s is out of range (0.001 to 1024, or 0 for no limit)", v.text);
		return false;
	}
	*ret = round(x * 1000) / 1000;
	return true;
}

/* ---- names and paths ------------------------------------------------------------------- */

/* [A-Za-z_][A-Za-z0-9_]* (upper-case only when `upper`). */
bool v_var_name_ok(const char *s, bool upper)
{
	if (!*s || (*s >= '0' && *s <= '9'))
		return false;
	for (; *s; s++) {
		char ch = *s;
		bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
		          (!upper && ch >= 'a' && ch <= 'z');
		if (!ok)
			return false;
	}
	return true;
}

char *v_upper_fix(const char *s)
{
	char *r = xstrdup(s);
	for (char *p = r; *p; p++) {
		if (*p >= 'a' && *p <= 'z')
			*p = (char)(*p - 'a' + 'A');
		else if (*p == '-' || *p == '.' || *p == ' ')
			*p = '_';
	}
	return r;
}

/*
 * Cleans a path relative to the workspace: drops "." and empty components.
 * Refuses absolute paths, "~", ".." and control characters. NULL if reported.
 */
char *v_clean_path(struct vctx *c, const struct node *n, const char *s)
{
	if (!*s) {
		v_err(c, n, "is empty; give a path relative to the workspace");
		return NULL;
	}
	if (strlen(s) > MAX_PATH_LEN) {
		v_err(c, n, "is %zu bytes long; the limit is %d", strlen(s), MAX_PATH_LEN);
		return NULL;
	}
	if (v_has_control(s)) {
		v_err(c, n, "%s contains a control character", v_quote(c, s));
		return NULL;
	}
	if (s[0] == '/') {
		v_err(c, n, "%s is absolute; paths are relative to the workspace", v_quote(c, s));
		return NULL;
	}
	if (s[0] == '~' && (s[1] == '/' || !s[1])) {
		v_err(c, n, "%s: '~' is not expanded; paths are relative to the workspace",
		      v_quote(c, s));
		return NULL;
	}
	struct buf b = BUF_INIT;
	const char *p = s;
	while (*p) {
		const char *e = strchr(p, '/');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		if (len == 2 && p[0] == '.' && p[1] == '.') {
			v_err(c, n, "%s leaves the workspace ('..'); paths stay inside it",
			      v_quote(c, s));
			buf_release(&b);
			return NULL;
		}
		if (len > 0 && !(len == 1 && p[0] == '.')) {
			if (b.len)
				buf_putc(&b, '/');
			buf_append(&b, p, len);
		}
		p += len;
		if (*p == '/')
			p++;
	}
	if (!b.len)
		buf_puts(&b, ".");
	return buf_steal(&b);
}
