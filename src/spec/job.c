/*
 * job: validates a job mapping (the node tree) into a struct spec_job, with
 * ${{ matrix.KEY }} substituted for one combination of the matrix.
 *
 * Every problem is reported (file:line:col, field path, what was expected,
 * the fix when obvious) and validation goes on, so one run shows all of a
 * document's errors. A job with any error is not returned. What a field
 * accepts, its default and its limits are documented in docs/job-spec.md;
 * keep the two in step.
 */
#include "spec-internal.h"

#include <inttypes.h>
#include <math.h>
#include <strings.h>

/* Limits (docs/job-spec.md, "Limits"). */
#define MAX_NAME 256
#define MAX_LABELS 64
#define MAX_IMAGE 512
#define MAX_ENV 256
#define MAX_VAR_NAME 256
#define MAX_SECRETS 64
#define MAX_STEPS 256
#define MAX_PATHS 256
#define MAX_PATH_LEN 1024
#define MAX_CACHES 16
#define MAX_CACHE_PATHS 32
#define MAX_CACHE_KEY 512
#define MAX_SHELL 256
#define MAX_MATRIX_VALUES 64
#define MIN_MEMORY (4ULL << 20)
#define MIN_DISK (1ULL << 20)
#define MAX_PIDS 4194304
#define MAX_GPUS 64
#define MAX_RETRIES 10
#define MAX_PRIORITY 1000
#define MIN_TIMEOUT_MS 1000ULL
#define MAX_TIMEOUT_MS (30ULL * 86400000)
#define DEFAULT_TIMEOUT_MS 3600000ULL

struct vctx {
	struct spec_diags *d;
	struct buf path;
	enum subst_mode mode;
	const struct matrix *m;
	const struct combo *combo;
	bool failed;
	char **scratch; /* strings freed with the context */
	size_t n_scratch, cap_scratch;
};

/* ---- context helpers ------------------------------------------------------------ */

static char *keep(struct vctx *c, char *s)
{
	c->scratch = xgrow(c->scratch, &c->cap_scratch, c->n_scratch + 1, sizeof(*c->scratch));
	c->scratch[c->n_scratch++] = s;
	return s;
}

/* A quoted, escaped user value for a message; lives as long as the context. */
static const char *q(struct vctx *c, const char *s)
{
	struct buf b = BUF_INIT;
	quote_value(&b, s);
	return keep(c, buf_steal(&b));
}

static void err(struct vctx *c, const struct node *n, const char *fmt, ...) KILN_PRINTF(3, 4);
static void err(struct vctx *c, const struct node *n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	_cleanup_free_ char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	spec_diags_add(c->d, n ? n->line : 0, n ? n->col : 0, c->path.data ? c->path.data : "",
		       "%s", msg);
	c->failed = true;
}

static bool path_word(const char *k)
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
static size_t push_key(struct vctx *c, const char *k)
{
	size_t old = c->path.len;
	if (path_word(k)) {
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

static size_t push_index(struct vctx *c, size_t i)
{
	size_t old = c->path.len;
	buf_printf(&c->path, "[%zu]", i);
	return old;
}

static void pop(struct vctx *c, size_t old)
{
	c->path.len = old;
	if (c->path.data)
		c->path.data[old] = '\0';
}

/* ---- substitution of ${{ matrix.KEY }} ------------------------------------------------ */

static bool key_char(char ch)
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
	while (key_char(*p))
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

static void report_bad_expr(struct vctx *c, const struct node *n, const char *s,
			    const char *end)
{
	if (!end) {
		err(c, n, "%s has an unterminated ${{ (write ${{ matrix.NAME }})", q(c, s));
		return;
	}
	_cleanup_free_ char *expr = xstrndup(s, (size_t)(end + 2 - s));
	err(c, n, "unsupported expression %s; kiln substitutes only ${{ matrix.NAME }}",
	    q(c, expr));
}

static void report_unknown_key(struct vctx *c, const struct node *n, const char *key)
{
	const struct matrix *m = c->m;
	const char *best = closest_word(key, (const char *const *)m->names, m->n_names);
	struct buf list = BUF_INIT;
	for (size_t i = 0; i < m->n_names && i < 16; i++)
		buf_printf(&list, "%s%s", i ? ", " : "", m->names[i]);
	if (best)
		err(c, n, "unknown matrix key %s in ${{ matrix.%s }} (did you mean %s?)", q(c, key),
		    key, q(c, best));
	else
		err(c, n, "unknown matrix key %s in ${{ matrix.%s }} (the matrix has: %s)",
		    q(c, key), key, list.data ? list.data : "");
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
			err(c, n, "%s uses ${{ matrix.%s }} but the job has no matrix", q(c, s), k);
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
	char *r = keep(c, buf_steal(&out));
	if (strstr(r, "${{")) {
		err(c, n, "substituting the matrix into %s gives %s, which still holds ${{",
		    q(c, s), q(c, r));
		return NULL;
	}
	return r;
}

/* ---- scalars ------------------------------------------------------------------------ */

struct val {
	const char *text;
	enum scalar_kind kind;
};

/* Reads a scalar (after substitution); reports "expected X" for collections. */
static bool scalar(struct vctx *c, const struct node *n, const char *expected, struct val *v)
{
	if (n->bad) {
		c->failed = true; /* reported while parsing */
		return false;
	}
	if (n->type != NODE_SCALAR) {
		err(c, n, "expected %s, got %s", expected, node_type_name(n));
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

static bool is_null(const struct node *n)
{
	return n->type == NODE_SCALAR && !n->bad && scalar_kind(n->text, n->plain) == SK_NULL;
}

static bool has_control(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20)
			return true;
	return false;
}

/* A string field: any non-null scalar, as written. NULL if reported. */
static const char *get_string(struct vctx *c, const struct node *n, const char *example)
{
	struct val v;
	if (!scalar(c, n, "a string", &v))
		return NULL;
	if (v.kind == SK_NULL) {
		err(c, n, "is empty; expected a string (e.g. %s)", example);
		return NULL;
	}
	return v.text;
}

static bool get_int(struct vctx *c, const struct node *n, int64_t min, int64_t max,
		    int64_t *ret)
{
	struct val v;
	if (!scalar(c, n, "an integer", &v))
		return false;
	if (v.kind != SK_INT) {
		err(c, n, "expected an integer from %" PRId64 " to %" PRId64 ", got %s%s", min, max,
		    v.kind == SK_FLOAT ? "the number " : v.kind == SK_BOOL ? "the boolean " : "",
		    q(c, v.text));
		return false;
	}
	int r = parse_int64(v.text, min, max, ret);
	if (r < 0) {
		err(c, n, "%s is out of range (%" PRId64 " to %" PRId64 ")", v.text, min, max);
		return false;
	}
	return true;
}

static bool get_bool(struct vctx *c, const struct node *n, bool *ret)
{
	struct val v;
	if (!scalar(c, n, "true or false", &v))
		return false;
	if (v.kind != SK_BOOL) {
		err(c, n, "expected true or false, got %s", q(c, v.text));
		return false;
	}
	*ret = v.text[0] == 't' || v.text[0] == 'T';
	return true;
}

/* Names (job, step): trimmed, 1..MAX_NAME bytes, one line. */
static char *check_name(struct vctx *c, const struct node *n, const char *s)
{
	while (*s == ' ')
		s++;
	size_t len = strlen(s);
	while (len > 0 && s[len - 1] == ' ')
		len--;
	if (len == 0) {
		err(c, n, "is empty; give it a name (e.g. name: build)");
		return NULL;
	}
	char *r = xstrndup(s, len);
	if (has_control(r)) {
		err(c, n, "%s contains a line break or control character; a name is one line",
		    q(c, r));
		free(r);
		return NULL;
	}
	if (len > MAX_NAME) {
		err(c, n, "is %zu bytes long; the limit is %d", len, MAX_NAME);
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
	} dur[] = {
		{"seconds", "s"}, {"second", "s"}, {"secs", "s"}, {"sec", "s"},
		{"minutes", "m"}, {"minute", "m"}, {"mins", "m"}, {"min", "m"},
		{"hours", "h"}, {"hour", "h"}, {"hrs", "h"}, {"hr", "h"},
		{"days", "d"}, {"day", "d"}, {"S", "s"}, {"M", "m"}, {"H", "h"}, {"D", "d"},
	}, sz[] = {
		{"kib", "Ki"}, {"mib", "Mi"}, {"gib", "Gi"}, {"tib", "Ti"}, {"ki", "Ki"},
		{"mi", "Mi"}, {"gi", "Gi"}, {"ti", "Ti"}, {"kb", "K"}, {"mb", "M"}, {"gb", "G"},
		{"tb", "T"}, {"k", "K"}, {"m", "M"}, {"g", "G"}, {"t", "T"},
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
static bool get_duration(struct vctx *c, const struct node *n, uint64_t *ret)
{
	struct val v;
	if (!scalar(c, n, "a duration", &v))
		return false;
	if (v.kind == SK_INT || v.kind == SK_FLOAT) {
		err(c, n, "%s has no unit (did you mean \"%ss\"? units: ms, s, m, h, d)", q(c, v.text),
		    v.text);
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
			err(c, n, "%s is not a duration (did you mean %s?)", q(c, v.text),
			    q(c, fixed));
		else
			err(c, n, "%s is not a duration (e.g. 30s, 10m, 2h, 1h30m)", q(c, v.text));
		return false;
	}
	if (r < 0 || ms < MIN_TIMEOUT_MS || ms > MAX_TIMEOUT_MS) {
		err(c, n, "%s is out of range (%s to 30d)", q(c, v.text), lo);
		return false;
	}
	*ret = ms;
	return true;
}

/* A size: with a unit, or an integer number of bytes; 0 = no limit. */
static bool get_size(struct vctx *c, const struct node *n, uint64_t min, uint64_t *ret)
{
	struct val v;
	if (!scalar(c, n, "a size", &v))
		return false;
	char smin[32];
	format_size(min, smin);
	uint64_t bytes;
	int r = v.kind == SK_BOOL || v.kind == SK_NULL ? -EINVAL : parse_size(v.text, &bytes);
	if (r == -EINVAL) {
		_cleanup_free_ char *fixed = fix_unit(v.text, true);
		uint64_t dummy;
		if (fixed && parse_size(fixed, &dummy) == 0)
			err(c, n, "%s is not a size (did you mean %s?)", q(c, v.text), q(c, fixed));
		else
			err(c, n, "%s is not a size (e.g. 512Mi, 4Gi)", q(c, v.text));
		return false;
	}
	if (r < 0) {
		err(c, n, "%s is out of range (%s to 1024Ti, or 0 for no limit)", q(c, v.text), smin);
		return false;
	}
	if (bytes != 0 && bytes < min) {
		bool bare = true;
		for (const char *p = v.text; *p; p++)
			if (*p < '0' || *p > '9')
				bare = false;
		if (bare)
			err(c, n, "%s bytes is below the minimum %s (a bare number counts bytes; did "
				  "you mean \"%sMi\"?)",
			    v.text, smin, v.text);
		else
			err(c, n, "%s is below the minimum %s (or 0 for no limit)", q(c, v.text), smin);
		return false;
	}
	*ret = bytes;
	return true;
}

static bool get_cpus(struct vctx *c, const struct node *n, double *ret)
{
	struct val v;
	if (!scalar(c, n, "a number of CPUs", &v))
		return false;
	if (v.kind != SK_INT && v.kind != SK_FLOAT) {
		size_t len = strlen(v.text);
		int64_t milli;
		if (len > 1 && v.text[len - 1] == 'm' && v.kind == SK_STRING) {
			_cleanup_free_ char *num = xstrndup(v.text, len - 1);
			if (parse_int64(num, 1, 1024000, &milli) == 0) {
				err(c, n, "%s is not a number (did you mean %g?)", q(c, v.text),
				    (double)milli / 1000);
				return false;
			}
		}
		err(c, n, "expected a number of CPUs (e.g. 2 or 0.5), got %s", q(c, v.text));
		return false;
	}
	char *end = NULL;
	double x = strtod(v.text, &end);
	if (*end != '\0') { /* .inf, .nan: YAML floats strtod does not read */
		err(c, n, "%s is out of range (0.001 to 1024, or 0 for no limit)", v.text);
		return false;
	}
	if (x == 0) {
		*ret = 0;
		return true;
	}
	if (!(x >= 0.001 && x <= 1024)) {
		err(c, n, "%s is out of range (0.001 to 1024, or 0 for no limit)", v.text);
		return false;
	}
	*ret = round(x * 1000) / 1000;
	return true;
}

/* ---- names and paths ------------------------------------------------------------------- */

/* [A-Za-z_][A-Za-z0-9_]* (upper-case only when `upper`). */
static bool var_name_ok(const char *s, bool upper)
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

static char *upper_fix(const char *s)
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
static char *clean_path(struct vctx *c, const struct node *n, const char *s)
{
	if (!*s) {
		err(c, n, "is empty; give a path relative to the workspace");
		return NULL;
	}
	if (strlen(s) > MAX_PATH_LEN) {
		err(c, n, "is %zu bytes long; the limit is %d", strlen(s), MAX_PATH_LEN);
		return NULL;
	}
	if (has_control(s)) {
		err(c, n, "%s contains a control character", q(c, s));
		return NULL;
	}
	if (s[0] == '/') {
		err(c, n, "%s is absolute; paths are relative to the workspace", q(c, s));
		return NULL;
	}
	if (s[0] == '~' && (s[1] == '/' || !s[1])) {
		err(c, n, "%s: '~' is not expanded; paths are relative to the workspace", q(c, s));
		return NULL;
	}
	struct buf b = BUF_INIT;
	const char *p = s;
	while (*p) {
		const char *e = strchr(p, '/');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		if (len == 2 && p[0] == '.' && p[1] == '.') {
			err(c, n, "%s leaves the workspace ('..'); paths stay inside it", q(c, s));
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

/* ---- lists -------------------------------------------------------------------------------- */

/* A string or a list of strings: calls fn for each with the path set. */
typedef void (*item_fn)(struct vctx *c, const struct node *n, const char *s, void *ud);

static void each_string(struct vctx *c, const struct node *n, size_t max, const char *item,
			const char *example, item_fn fn, void *ud)
{
	if (is_null(n))
		return;
	if (n->type == NODE_SCALAR) {
		const char *s = get_string(c, n, example);
		if (s)
			fn(c, n, s, ud);
		return;
	}
	if (n->type != NODE_SEQ) {
		if (n->bad)
			c->failed = true;
		else
			err(c, n, "expected %s or a list of them, got %s", item, node_type_name(n));
		return;
	}
	if (n->n > max) {
		err(c, n, "has %zu entries; the limit is %zu", n->n, max);
		return;
	}
	for (size_t i = 0; i < n->n; i++) {
		size_t old = push_index(c, i);
		const struct node *it = n->kids[i];
		if (it->type != NODE_SCALAR) {
			if (it->bad)
				c->failed = true;
			else
				err(c, it, "expected %s, got %s", item, node_type_name(it));
		} else {
			const char *s = get_string(c, it, example);
			if (s)
				fn(c, it, s, ud);
		}
		pop(c, old);
	}
}

struct strv {
	char **v;
	size_t n, cap;
};

static bool strv_has(const struct strv *sv, const char *s)
{
	for (size_t i = 0; i < sv->n; i++)
		if (streq(sv->v[i], s))
			return true;
	return false;
}

static void strv_push(struct strv *sv, char *s)
{
	sv->v = xgrow(sv->v, &sv->cap, sv->n + 1, sizeof(*sv->v));
	sv->v[sv->n++] = s;
}

static void strv_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* ---- keys ----------------------------------------------------------------------------------- */

static const struct {
	const char *key, *msg;
} key_hints[] = {
	{"strategy", "kiln has no strategy: write matrix: at the top level of the job"},
	{"timeout-minutes", "use timeout: with a unit (e.g. timeout: 30m)"},
	{"container", "use image: (e.g. image: debian:12)"},
	{"uses", "kiln steps run scripts; use run:"},
	{"with", "kiln steps run scripts; pass values with env:"},
	{"needs", "kiln jobs are independent; there is no needs:"},
	{"if", "conditions are not supported; put the test in the script"},
	{"services", "services are not supported; start them in a step"},
	{"jobs", "a spec file holds one job: write name:, steps: ... at the top level"},
	{"script", "use run: for the commands"},
	{"command", "use steps: with run: for the commands"},
};

/* Reports every key of map n not in keys[]; returns false if there was one. */
static bool check_keys(struct vctx *c, const struct node *map, const char *const *keys,
		       size_t n_keys)
{
	bool ok = true;
	for (size_t i = 0; i + 1 < map->n; i += 2) {
		const struct node *k = map->kids[i];
		if (k->bad) {
			c->failed = true;
			continue;
		}
		bool known = false;
		for (size_t j = 0; j < n_keys && !known; j++)
			known = streq(k->text, keys[j]);
		if (known)
			continue;
		ok = false;
		const char *hint = NULL;
		for (size_t j = 0; j < ARRAY_SIZE(key_hints) && !hint; j++)
			if (streq(k->text, key_hints[j].key))
				hint = key_hints[j].msg;
		const char *best = closest_word(k->text, keys, n_keys);
		if (hint && !best) {
			err(c, k, "unknown key %s: %s", q(c, k->text), hint);
		} else if (best) {
			err(c, k, "unknown key %s (did you mean %s?)", q(c, k->text), q(c, best));
		} else {
			struct buf list = BUF_INIT;
			for (size_t j = 0; j < n_keys; j++)
				buf_printf(&list, "%s%s", j ? ", " : "", keys[j]);
			err(c, k, "unknown key %s (expected one of: %s)", q(c, k->text), list.data);
			buf_release(&list);
		}
	}
	return ok;
}

/* Looks up `key`; runs the push/pop of its path around the caller's use. */
#define WITH_KEY(c, map, key, var)                                                          \
	for (const struct node *var = map_get((map), (key)); var; var = NULL)                \
		for (size_t _old = push_key((c), (key)), _once = 1; _once;                   \
		     pop((c), _old), _once = 0)

/* ---- env ----------------------------------------------------------------------------------- */

static int cmp_kv(const void *a, const void *b)
{
	return strcmp(((const struct spec_kv *)a)->key, ((const struct spec_kv *)b)->key);
}

static void parse_env(struct vctx *c, const struct node *n, struct spec_kv **ret, size_t *ret_n)
{
	if (is_null(n))
		return;
	if (n->type != NODE_MAP) {
		err(c, n, "expected a mapping of NAME: value, got %s", node_type_name(n));
		return;
	}
	if (n->n / 2 > MAX_ENV) {
		err(c, n, "has %zu variables; the limit is %d", n->n / 2, MAX_ENV);
		return;
	}
	struct spec_kv *v = xcalloc(n->n / 2 + 1, sizeof(*v));
	size_t count = 0;
	for (size_t i = 0; i + 1 < n->n; i += 2) {
		const struct node *k = n->kids[i], *val = n->kids[i + 1];
		if (k->bad) {
			c->failed = true;
			continue;
		}
		if (!var_name_ok(k->text, false) || strlen(k->text) > MAX_VAR_NAME) {
			err(c, k, "%s is not a valid variable name (letters, digits and _, not "
				  "starting with a digit)",
			    q(c, k->text));
			continue;
		}
		if (startswith(k->text, "KILN_")) {
			err(c, k, "%s: names starting with KILN_ are reserved for kiln",
			    q(c, k->text));
			continue;
		}
		size_t old = push_key(c, k->text);
		struct val sv;
		if (scalar(c, val, "a string", &sv)) {
			if (sv.kind == SK_NULL)
				err(c, val, "has no value; write %s: \"\" for an empty string",
				    k->text);
			else
				v[count++] = (struct spec_kv){xstrdup(k->text), xstrdup(sv.text)};
		}
		pop(c, old);
	}
	qsort(v, count, sizeof(*v), cmp_kv);
	*ret = v;
	*ret_n = count;
}

static void kv_free(struct spec_kv *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].key);
		free(v[i].value);
	}
	free(v);
}

/* ---- shells -------------------------------------------------------------------------------- */

static const char *const known_shells[] = {"bash", "sh", "python"};

/* Splits a shell template at spaces; NULL when it has no {0}. */
static char **split_template(const char *shell, size_t *ret_n)
{
	struct strv sv = {0};
	bool has_arg = false;
	const char *p = shell;
	while (*p) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		const char *e = p;
		while (*e && *e != ' ')
			e++;
		char *w = xstrndup(p, (size_t)(e - p));
		has_arg |= strstr(w, "{0}") != NULL;
		strv_push(&sv, w);
		p = e;
	}
	if (!has_arg || sv.n == 0) {
		strv_free(sv.v, sv.n);
		return NULL;
	}
	*ret_n = sv.n;
	return sv.v;
}

static bool shell_ok(const char *shell)
{
	for (size_t i = 0; i < ARRAY_SIZE(known_shells); i++)
		if (streq(shell, known_shells[i]))
			return true;
	if (strlen(shell) > MAX_SHELL || has_control(shell))
		return false;
	size_t n;
	char **v = split_template(shell, &n);
	if (!v)
		return false;
	strv_free(v, n);
	return true;
}

int spec_shell_argv(const char *shell, const char *script_path, char ***ret_argv)
{
	struct strv sv = {0};
	if (!shell || streq(shell, "bash")) {
		const char *a[] = {"bash", "--noprofile", "--norc", "-eo", "pipefail"};
		for (size_t i = 0; i < ARRAY_SIZE(a); i++)
			strv_push(&sv, xstrdup(a[i]));
		strv_push(&sv, xstrdup(script_path));
	} else if (streq(shell, "sh")) {
		strv_push(&sv, xstrdup("sh"));
		strv_push(&sv, xstrdup("-e"));
		strv_push(&sv, xstrdup(script_path));
	} else if (streq(shell, "python")) {
		strv_push(&sv, xstrdup("python3"));
		strv_push(&sv, xstrdup(script_path));
	} else {
		if (!shell_ok(shell))
			return -EINVAL;
		size_t n;
		char **words = split_template(shell, &n);
		for (size_t i = 0; i < n; i++) {
			struct buf b = BUF_INIT;
			for (const char *p = words[i]; *p;) {
				if (startswith(p, "{0}")) {
					buf_puts(&b, script_path);
					p += 3;
				} else {
					buf_putc(&b, *p++);
				}
			}
			buf_reserve(&b, 0);
			strv_push(&sv, buf_steal(&b));
		}
		strv_free(words, n);
	}
	strv_push(&sv, NULL);
	*ret_argv = sv.v;
	return 0;
}

void spec_argv_free(char **argv)
{
	if (!argv)
		return;
	for (char **p = argv; *p; p++)
		free(*p);
	free(argv);
}

/* ---- steps --------------------------------------------------------------------------------- */

static const char *const step_keys[] = {"name",    "run",		"shell",
					"env",     "timeout",	"working-directory",
					"continue-on-error"};

/* "make test" from "\n  make test\n  ./run", cut to 64 bytes. */
static char *default_step_name(const char *run)
{
	const char *p = run;
	for (;;) {
		while (*p == ' ' || *p == '\t' || *p == '\r')
			p++;
		if (*p != '\n')
			break;
		p++;
	}
	size_t len = strcspn(p, "\n");
	while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t' || p[len - 1] == '\r'))
		len--;
	bool cut = len > 64;
	if (cut) {
		len = 64;
		while (len > 0 && ((unsigned char)p[len] & 0xc0) == 0x80)
			len--;
	}
	struct buf b = BUF_INIT;
	buf_append(&b, p, len);
	for (size_t i = 0; i < b.len; i++)
		if ((unsigned char)b.data[i] < 0x20)
			b.data[i] = ' ';
	if (cut)
		buf_puts(&b, "...");
	if (!b.len)
		buf_puts(&b, "run");
	return buf_steal(&b);
}

static void parse_step(struct vctx *c, const struct node *n, struct spec_step *st)
{
	if (n->type == NODE_SCALAR && !n->bad && !is_null(n)) {
		err(c, n, "a step is a mapping; write - run: %s", q(c, n->text));
		return;
	}
	if (n->type != NODE_MAP) {
		if (n->bad)
			c->failed = true;
		else
			err(c, n, "expected a step (a mapping with run:), got %s", node_type_name(n));
		return;
	}
	check_keys(c, n, step_keys, ARRAY_SIZE(step_keys));
	if (!map_get(n, "run"))
		err(c, n, "missing required key \"run\" (the commands of the step)");
	WITH_KEY(c, n, "run", v)
	{
		const char *s = get_string(c, v, "run: make test");
		if (s) {
			const char *t = s;
			while (*t == ' ' || *t == '\t' || *t == '\n' || *t == '\r')
				t++;
			if (!*t)
				err(c, v, "is empty; write the commands to run");
			else
				st->run = xstrdup(s);
		}
	}
	WITH_KEY(c, n, "name", v)
	{
		const char *s = is_null(v) ? NULL : get_string(c, v, "name: test");
		if (s)
			st->name = check_name(c, v, s);
	}
	if (!st->name && st->run)
		st->name = default_step_name(st->run);
	WITH_KEY(c, n, "shell", v)
	{
		const char *s = is_null(v) ? NULL : get_string(c, v, "shell: bash");
		if (s && !shell_ok(s)) {
			bool word = path_word(s);
			err(c, v, "%s is not a known shell (bash, sh, python); for another program "
				  "write a command with {0} for the script, e.g. \"%s {0}\"",
			    q(c, s), word ? s : "perl");
		} else if (s) {
			st->shell = xstrdup(s);
		}
	}
	if (!st->shell)
		st->shell = xstrdup("bash");
	WITH_KEY(c, n, "env", v) parse_env(c, v, &st->env, &st->n_env);
	WITH_KEY(c, n, "timeout", v)
	{
		if (!is_null(v))
			get_duration(c, v, &st->timeout_ms);
	}
	WITH_KEY(c, n, "working-directory", v)
	{
		const char *s = is_null(v) ? NULL : get_string(c, v, "working-directory: src");
		char *p = s ? clean_path(c, v, s) : NULL;
		if (p && streq(p, "."))
			free(p);
		else
			st->working_directory = p;
	}
	WITH_KEY(c, n, "continue-on-error", v)
	{
		if (!is_null(v))
			get_bool(c, v, &st->continue_on_error);
	}
}

static void step_release(struct spec_step *st)
{
	free(st->name);
	free(st->run);
	free(st->shell);
	kv_free(st->env, st->n_env);
	free(st->working_directory);
}

static void parse_steps(struct vctx *c, const struct node *n, struct spec_job *job)
{
	if (n->type != NODE_SEQ) {
		if (n->bad)
			c->failed = true;
		else
			err(c, n, "expected a list of steps (- run: ...), got %s", node_type_name(n));
		return;
	}
	if (n->n == 0) {
		err(c, n, "is empty; a job needs at least one step (- run: ...)");
		return;
	}
	if (n->n > MAX_STEPS) {
		err(c, n, "has %zu steps; the limit is %d", n->n, MAX_STEPS);
		return;
	}
	job->steps = xcalloc(n->n, sizeof(*job->steps));
	job->n_steps = n->n;
	for (size_t i = 0; i < n->n; i++) {
		size_t old = push_index(c, i);
		parse_step(c, n->kids[i], &job->steps[i]);
		pop(c, old);
	}
}

/* ---- the other fields ------------------------------------------------------------------------ */

static void add_label(struct vctx *c, const struct node *n, const char *s, void *ud)
{
	struct strv *sv = ud;
	struct spec_label l;
	struct kiln_err e;
	if (spec_label_parse(s, &l, &e) < 0) {
		err(c, n, "%s", e.msg);
		return;
	}
	char *lower = l.value ? xasprintf("%s:%s", l.key, l.value) : xstrdup(l.key);
	spec_label_release(&l);
	if (strv_has(sv, lower))
		free(lower); /* labels are a set */
	else
		strv_push(sv, lower);
}

static bool image_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '.' || ch == '_' || ch == '-' || ch == '/' || ch == ':' || ch == '@' ||
	       ch == '+';
}

static void parse_image(struct vctx *c, const struct node *n, struct spec_job *job)
{
	if (is_null(n))
		return;
	const char *s = get_string(c, n, "image: debian:12");
	if (!s)
		return;
	bool ok = *s && strlen(s) <= MAX_IMAGE && ((*s >= 'a' && *s <= 'z') ||
						   (*s >= 'A' && *s <= 'Z') ||
						   (*s >= '0' && *s <= '9'));
	for (const char *p = s; ok && *p; p++)
		ok = image_char(*p) && !(p[0] == '/' && p[1] == '/');
	if (!ok || s[strlen(s) - 1] == '/' || s[strlen(s) - 1] == ':') {
		err(c, n, "%s is not an image reference (e.g. debian:12, ghcr.io/org/app:1.2)",
		    q(c, s));
		return;
	}
	job->image = xstrdup(s);
}

static const char *const resource_keys[] = {"cpus", "memory", "disk", "pids", "gpus"};

static void parse_resources(struct vctx *c, const struct node *n, struct spec_resources *r)
{
	if (is_null(n))
		return;
	if (n->type != NODE_MAP) {
		if (n->bad)
			c->failed = true;
		else
			err(c, n, "expected a mapping (cpus:, memory:, disk:, pids:, gpus:), got %s",
			    node_type_name(n));
		return;
	}
	check_keys(c, n, resource_keys, ARRAY_SIZE(resource_keys));
	WITH_KEY(c, n, "cpus", v) if (!is_null(v)) get_cpus(c, v, &r->cpus);
	WITH_KEY(c, n, "memory", v) if (!is_null(v)) get_size(c, v, MIN_MEMORY, &r->memory);
	WITH_KEY(c, n, "disk", v) if (!is_null(v)) get_size(c, v, MIN_DISK, &r->disk);
	WITH_KEY(c, n, "pids", v) if (!is_null(v)) get_int(c, v, 0, MAX_PIDS, &r->pids);
	WITH_KEY(c, n, "gpus", v) if (!is_null(v)) get_int(c, v, 0, MAX_GPUS, &r->gpus);
}

struct secrets_ud {
	struct strv sv;
	const struct spec_job *job;
};

static void add_secret(struct vctx *c, const struct node *n, const char *s, void *ud)
{
	struct secrets_ud *u = ud;
	if (!var_name_ok(s, true) || strlen(s) > MAX_VAR_NAME) {
		_cleanup_free_ char *fix = upper_fix(s);
		if (var_name_ok(fix, true))
			err(c, n, "%s is not a valid secret name (upper-case letters, digits and _; "
				  "did you mean %s?)",
			    q(c, s), q(c, fix));
		else
			err(c, n, "%s is not a valid secret name (upper-case letters, digits and _, "
				  "not starting with a digit)",
			    q(c, s));
		return;
	}
	if (startswith(s, "KILN_")) {
		err(c, n, "%s: names starting with KILN_ are reserved for kiln", q(c, s));
		return;
	}
	if (strv_has(&u->sv, s)) {
		err(c, n, "%s is listed twice", q(c, s));
		return;
	}
	for (size_t i = 0; i < u->job->n_env; i++)
		if (streq(u->job->env[i].key, s)) {
			err(c, n, "%s is also set in env; a secret and a variable cannot share a name",
			    q(c, s));
			return;
		}
	strv_push(&u->sv, xstrdup(s));
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void add_path(struct vctx *c, const struct node *n, const char *s, void *ud)
{
	struct strv *sv = ud;
	char *p = clean_path(c, n, s);
	if (!p)
		return;
	if (strv_has(sv, p))
		free(p);
	else
		strv_push(sv, p);
}

static void parse_network(struct vctx *c, const struct node *n, struct spec_job *job)
{
	static const char *const modes[] = {"none", "egress", "host"};
	if (is_null(n))
		return;
	struct val v;
	if (!scalar(c, n, "none, egress or host", &v))
		return;
	for (size_t i = 0; i < ARRAY_SIZE(modes); i++)
		if (streq(v.text, modes[i])) {
			job->network = (enum spec_network)i;
			return;
		}
	const char *best = closest_word(v.text, modes, ARRAY_SIZE(modes));
	if (best)
		err(c, n, "%s is not a network mode (did you mean %s?)", q(c, v.text), q(c, best));
	else
		err(c, n, "%s is not a network mode (none, egress or host)", q(c, v.text));
}

static const char *const cache_keys[] = {"key", "paths"};

static void parse_cache_entry(struct vctx *c, const struct node *n, struct spec_cache *ce)
{
	if (n->type != NODE_MAP) {
		if (n->bad)
			c->failed = true;
		else
			err(c, n, "expected a cache (a mapping with key: and paths:), got %s",
			    node_type_name(n));
		return;
	}
	check_keys(c, n, cache_keys, ARRAY_SIZE(cache_keys));
	if (!map_get(n, "key"))
		err(c, n, "missing required key \"key\" (e.g. key: deps-v1)");
	if (!map_get(n, "paths"))
		err(c, n, "missing required key \"paths\" (e.g. paths: [node_modules])");
	WITH_KEY(c, n, "key", v)
	{
		const char *s = get_string(c, v, "key: deps-v1");
		bool ok = s && *s && strlen(s) <= MAX_CACHE_KEY;
		for (const char *p = s; ok && *p; p++)
			ok = (unsigned char)*p > 0x20;
		if (s && !ok)
			err(c, v, "%s is not a cache key (1 to %d characters, no spaces)", q(c, s),
			    MAX_CACHE_KEY);
		else if (s)
			ce->key = xstrdup(s);
	}
	WITH_KEY(c, n, "paths", v)
	{
		struct strv sv = {0};
		each_string(c, v, MAX_CACHE_PATHS, "a path", "node_modules", add_path, &sv);
		if (sv.n == 0 && !c->failed)
			err(c, v, "is empty; list the paths to cache (e.g. [node_modules])");
		ce->paths = sv.v;
		ce->n_paths = sv.n;
	}
}

static void parse_cache(struct vctx *c, const struct node *n, struct spec_job *job)
{
	if (is_null(n))
		return;
	if (n->type == NODE_MAP) {
		job->caches = xcalloc(1, sizeof(*job->caches));
		job->n_caches = 1;
		parse_cache_entry(c, n, &job->caches[0]);
		return;
	}
	if (n->type != NODE_SEQ) {
		if (n->bad)
			c->failed = true;
		else
			err(c, n, "expected a cache (key:, paths:) or a list of them, got %s",
			    node_type_name(n));
		return;
	}
	if (n->n > MAX_CACHES) {
		err(c, n, "has %zu caches; the limit is %d", n->n, MAX_CACHES);
		return;
	}
	job->caches = xcalloc(n->n + 1, sizeof(*job->caches));
	job->n_caches = n->n;
	for (size_t i = 0; i < n->n; i++) {
		size_t old = push_index(c, i);
		parse_cache_entry(c, n->kids[i], &job->caches[i]);
		for (size_t j = 0; j < i && job->caches[i].key; j++)
			if (job->caches[j].key && streq(job->caches[j].key, job->caches[i].key))
				err(c, n->kids[i], "cache key %s is used twice",
				    q(c, job->caches[i].key));
		pop(c, old);
	}
}

/* A matrix-values mapping written by hand (or carried in normalised JSON). */
static void parse_matrix_values(struct vctx *c, const struct node *n, struct spec_job *job)
{
	if (is_null(n))
		return;
	if (c->mode != SUBST_NONE) {
		err(c, n, "is set by the matrix expansion; remove it");
		return;
	}
	if (n->type != NODE_MAP) {
		if (n->bad)
			c->failed = true;
		else
			err(c, n, "expected a mapping of matrix key: value, got %s",
			    node_type_name(n));
		return;
	}
	if (n->n / 2 > MAX_MATRIX_VALUES) {
		err(c, n, "has %zu entries; the limit is %d", n->n / 2, MAX_MATRIX_VALUES);
		return;
	}
	job->matrix = xcalloc(n->n / 2 + 1, sizeof(*job->matrix));
	for (size_t i = 0; i + 1 < n->n; i += 2) {
		const struct node *k = n->kids[i], *v = n->kids[i + 1];
		if (k->bad) {
			c->failed = true;
			continue;
		}
		size_t old = push_key(c, k->text);
		bool ok = *k->text && strlen(k->text) <= 64 && !(k->text[0] >= '0' && k->text[0] <= '9');
		for (const char *p = k->text; ok && *p; p++)
			ok = key_char(*p);
		struct val sv;
		if (!ok)
			err(c, k, "%s is not a matrix key (letters, digits, _ and -)", q(c, k->text));
		else if (scalar(c, v, "a string", &sv)) {
			if (sv.kind == SK_NULL)
				err(c, v, "has no value");
			else
				job->matrix[job->n_matrix++] =
					(struct spec_kv){xstrdup(k->text), xstrdup(sv.text)};
		}
		pop(c, old);
	}
}

/* ---- the job -------------------------------------------------------------------------------- */

static const char *const job_keys[] = {
	"name",	   "runs-on", "image",	   "resources", "timeout", "retries",
	"priority", "env",	   "secrets", "network",   "steps",	"artifacts",
	"cache",    "matrix",  "matrix-values",
};

void spec_job_free(struct spec_job *job)
{
	if (!job)
		return;
	free(job->name);
	strv_free(job->runs_on, job->n_runs_on);
	free(job->image);
	kv_free(job->env, job->n_env);
	strv_free(job->secrets, job->n_secrets);
	for (size_t i = 0; i < job->n_steps; i++)
		step_release(&job->steps[i]);
	free(job->steps);
	strv_free(job->artifacts, job->n_artifacts);
	for (size_t i = 0; i < job->n_caches; i++) {
		free(job->caches[i].key);
		strv_free(job->caches[i].paths, job->caches[i].n_paths);
	}
	free(job->caches);
	kv_free(job->matrix, job->n_matrix);
	free(job);
}

void spec_jobs_free(struct spec_job **jobs, size_t n)
{
	if (!jobs)
		return;
	for (size_t i = 0; i < n; i++)
		spec_job_free(jobs[i]);
	free(jobs);
}

/* The job's name, with " (v1, v2)" when the matrix is not used in it. */
static void parse_name(struct vctx *c, const struct node *root, struct spec_job *job)
{
	const struct node *n = map_get(root, "name");
	if (!n) {
		err(c, root, "missing required key \"name\" (e.g. name: build)");
		return;
	}
	size_t old = push_key(c, "name");
	const char *s = get_string(c, n, "name: build");
	if (s && c->mode == SUBST_COMBO && !strstr(n->text, "${{") && c->combo->n > 0) {
		struct buf b = BUF_INIT;
		buf_printf(&b, "%s (", s);
		for (size_t i = 0; i < c->combo->n; i++)
			buf_printf(&b, "%s%s", i ? ", " : "", c->combo->v[i].value);
		buf_putc(&b, ')');
		s = keep(c, buf_steal(&b));
	}
	if (s)
		job->name = check_name(c, n, s);
	pop(c, old);
}

static void parse_job_fields(struct vctx *c, const struct node *root, struct spec_job *job)
{
	parse_name(c, root, job);
	WITH_KEY(c, root, "runs-on", v)
	{
		struct strv sv = {0};
		each_string(c, v, MAX_LABELS, "a label", "linux", add_label, &sv);
		job->runs_on = sv.v;
		job->n_runs_on = sv.n;
	}
	WITH_KEY(c, root, "image", v) parse_image(c, v, job);
	WITH_KEY(c, root, "resources", v) parse_resources(c, v, &job->resources);
	job->timeout_ms = DEFAULT_TIMEOUT_MS;
	WITH_KEY(c, root, "timeout", v) if (!is_null(v)) get_duration(c, v, &job->timeout_ms);
	WITH_KEY(c, root, "retries", v) if (!is_null(v)) get_int(c, v, 0, MAX_RETRIES, &job->retries);
	WITH_KEY(c, root, "priority", v)
	{
		if (!is_null(v))
			get_int(c, v, -MAX_PRIORITY, MAX_PRIORITY, &job->priority);
	}
	WITH_KEY(c, root, "env", v) parse_env(c, v, &job->env, &job->n_env);
	WITH_KEY(c, root, "secrets", v)
	{
		struct secrets_ud u = {.job = job};
		each_string(c, v, MAX_SECRETS, "a secret name", "NPM_TOKEN", add_secret, &u);
		if (u.sv.n)
			qsort(u.sv.v, u.sv.n, sizeof(*u.sv.v), cmp_str);
		job->secrets = u.sv.v;
		job->n_secrets = u.sv.n;
	}
	WITH_KEY(c, root, "network", v) parse_network(c, v, job);
	if (!map_get(root, "steps"))
		err(c, root, "missing required key \"steps\" (e.g. steps: [{run: make test}])");
	WITH_KEY(c, root, "steps", v) parse_steps(c, v, job);
	WITH_KEY(c, root, "artifacts", v)
	{
		struct strv sv = {0};
		each_string(c, v, MAX_PATHS, "a path", "dist/*.tar.gz", add_path, &sv);
		job->artifacts = sv.v;
		job->n_artifacts = sv.n;
	}
	WITH_KEY(c, root, "cache", v) parse_cache(c, v, job);
	WITH_KEY(c, root, "matrix-values", v) parse_matrix_values(c, v, job);
	if (c->mode == SUBST_COMBO && c->combo->n) {
		job->matrix = xcalloc(c->combo->n, sizeof(*job->matrix));
		for (size_t i = 0; i < c->combo->n; i++)
			job->matrix[i] = (struct spec_kv){xstrdup(c->combo->v[i].key),
							  xstrdup(c->combo->v[i].value)};
		job->n_matrix = c->combo->n;
	}
}

struct spec_job *job_from_node(const struct node *root, enum subst_mode mode,
			       const struct matrix *m, const struct combo *combo,
			       struct spec_diags *d)
{
	if (root->bad)
		return NULL;
	struct vctx c = {.d = d, .mode = mode, .m = m, .combo = combo};
	if (root->type != NODE_MAP) {
		if (is_null(root))
			err(&c, root, "the document is empty; a job spec needs at least name and "
				      "steps (see docs/job-spec.md)");
		else
			err(&c, root, "a job spec is a mapping (name:, steps:, ...), not %s",
			    node_type_name(root));
		return NULL;
	}
	check_keys(&c, root, job_keys, ARRAY_SIZE(job_keys));
	struct spec_job *job = xcalloc(1, sizeof(*job));
	parse_job_fields(&c, root, job);
	strv_free(c.scratch, c.n_scratch);
	buf_release(&c.path);
	if (c.failed) {
		spec_job_free(job);
		return NULL;
	}
	return job;
}

size_t job_size(const struct spec_job *job)
{
	size_t n = 256 + strlen(job->name) + (job->image ? strlen(job->image) : 0);
	for (size_t i = 0; i < job->n_runs_on; i++)
		n += 8 + strlen(job->runs_on[i]);
	for (size_t i = 0; i < job->n_env; i++)
		n += 8 + strlen(job->env[i].key) + strlen(job->env[i].value);
	for (size_t i = 0; i < job->n_secrets; i++)
		n += 8 + strlen(job->secrets[i]);
	for (size_t i = 0; i < job->n_artifacts; i++)
		n += 8 + strlen(job->artifacts[i]);
	for (size_t i = 0; i < job->n_caches; i++) {
		n += 32 + strlen(job->caches[i].key);
		for (size_t j = 0; j < job->caches[i].n_paths; j++)
			n += 8 + strlen(job->caches[i].paths[j]);
	}
	for (size_t i = 0; i < job->n_matrix; i++)
		n += 8 + strlen(job->matrix[i].key) + strlen(job->matrix[i].value);
	for (size_t i = 0; i < job->n_steps; i++) {
		const struct spec_step *st = &job->steps[i];
		n += 128 + strlen(st->name) + strlen(st->run) + strlen(st->shell);
		if (st->working_directory)
			n += strlen(st->working_directory);
		for (size_t j = 0; j < st->n_env; j++)
			n += 8 + strlen(st->env[j].key) + strlen(st->env[j].value);
	}
	return n;
}
