/*
 * matrix: expands `matrix:` into combinations, with GitHub Actions'
 * semantics: the cartesian product of the axes (first axis outermost), minus
 * the combinations `exclude` matches, then `include` entries either extend
 * every original combination they do not contradict or, when they extend
 * none, add a combination of their own.
 *
 * Bounded: the product is computed with overflow checks before anything is
 * expanded; more than PRODUCT_MAX is refused outright, and at most
 * SPEC_MAX_MATRIX combinations are ever materialised.
 */
#include "spec-internal.h"

#include <inttypes.h>

#define MAX_AXES        32
#define MAX_AXIS_VALUES 256
#define MAX_ENTRIES     256 /* include / exclude entries */
#define MAX_ENTRY_KEYS  64
#define MAX_VALUE_LEN   1024
#define PRODUCT_MAX     (SPEC_MAX_MATRIX * 16) /* combinations considered before exclude */

struct mctx {
	struct spec_diags *d;
	struct buf path;
	bool failed;
};

static void merr(struct mctx *c, const struct node *n, const char *fmt, ...) KILN_PRINTF(3, 4);
static void merr(struct mctx *c, const struct node *n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	_cleanup_free_ char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	spec_diags_add(c->d, n->line, n->col, c->path.data, "%s", msg);
	c->failed = true;
}

static size_t mpush(struct mctx *c, const char *fmt, ...) KILN_PRINTF(2, 3);
static size_t mpush(struct mctx *c, const char *fmt, ...)
{
	size_t old = c->path.len;
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&c->path, fmt, ap);
	va_end(ap);
	return old;
}

static void mpop(struct mctx *c, size_t old)
{
	c->path.len = old;
	c->path.data[old] = '\0';
}

static char *quoted(const char *s)
{
	struct buf b = BUF_INIT;
	quote_value(&b, s);
	return buf_steal(&b);
}

/* Axis and include keys: [A-Za-z_][A-Za-z0-9_-]*, at most 64 bytes. */
static bool matrix_key_ok(const char *k)
{
	if (!*k || strlen(k) > 64 || (*k >= '0' && *k <= '9') || *k == '-')
		return false;
	for (; *k; k++)
		if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') ||
		      (*k >= '0' && *k <= '9') || *k == '_' || *k == '-'))
			return false;
	return true;
}

static bool check_key(struct mctx *c, const struct node *k)
{
	if (k->bad) {
		c->failed = true;
		return false;
	}
	if (!matrix_key_ok(k->text)) {
		_cleanup_free_ char *qk = quoted(k->text);
		merr(c, k,
		     "%s is not a matrix key (letters, digits, _ and -, starting with a letter)",
		     qk);
		return false;
	}
	return true;
}

/* A matrix value: a non-null scalar without ${{; its text as written. */
static const char *value_of(struct mctx *c, const struct node *n)
{
	if (n->bad) {
		c->failed = true;
		return NULL;
	}
	if (n->type != NODE_SCALAR || scalar_kind(n->text, n->plain) == SK_NULL) {
		merr(c, n, "a matrix value is a string, number or boolean, not %s",
		     node_type_name(n));
		return NULL;
	}
	if (strstr(n->text, "${{")) {
		merr(c, n, "a matrix value cannot use ${{ }}");
		return NULL;
	}
	if (n->len > MAX_VALUE_LEN) {
		merr(c, n, "is %zu bytes long; the limit is %d", n->len, MAX_VALUE_LEN);
		return NULL;
	}
	return n->text;
}

static int axis_index(const struct matrix *m, const char *k)
{
	for (size_t i = 0; i < m->n_axes; i++)
		if (streq(m->keys[i], k))
			return (int)i;
	return -1;
}

static void add_word(char ***v, size_t *n, const char *k)
{
	for (size_t i = 0; i < *n; i++)
		if (streq((*v)[i], k))
			return;
	*v = xrealloc(*v, (*n + 1) * sizeof(**v));
	(*v)[(*n)++] = xstrdup(k);
}

static void add_key(struct matrix *m, const char *k)
{
	add_word(&m->keys, &m->n_keys, k);
}

/* Collects every key written in the matrix, whether valid or not. */
static void collect_names(const struct node *node, struct matrix *m)
{
	if (node->type != NODE_MAP)
		return;
	for (size_t i = 0; i + 1 < node->n; i += 2) {
		const struct node *k = node->kids[i], *v = node->kids[i + 1];
		if (k->type != NODE_SCALAR || k->bad)
			continue;
		if (!streq(k->text, "include")) {
			if (!streq(k->text, "exclude"))
				add_word(&m->names, &m->n_names, k->text);
			continue;
		}
		for (size_t j = 0; v->type == NODE_SEQ && j < v->n; j++) {
			const struct node *e = v->kids[j];
			for (size_t l = 0; e->type == NODE_MAP && l + 1 < e->n; l += 2)
				if (e->kids[l]->type == NODE_SCALAR && !e->kids[l]->bad)
					add_word(&m->names, &m->n_names, e->kids[l]->text);
		}
	}
}

static void parse_axis(struct mctx *c, const struct node *k, const struct node *v, struct matrix *m)
{
	if (!check_key(c, k))
		return;
	size_t old = mpush(c, ".%s", k->text);
	if (m->n_axes >= MAX_AXES) {
		merr(c, k, "the matrix has more than %d axes", MAX_AXES);
	} else if (v->type != NODE_SEQ) {
		if (v->bad)
			c->failed = true;
		else
			merr(c, v, "expected a list of values (e.g. %s: [a, b]), got %s", k->text,
			     node_type_name(v));
	} else if (v->n == 0) {
		merr(c, v, "is empty; an axis needs at least one value");
	} else if (v->n > MAX_AXIS_VALUES) {
		merr(c, v, "has %zu values; the limit is %d", v->n, MAX_AXIS_VALUES);
	} else {
		/* Axes come before include keys in m->keys: insert at n_axes. */
		m->keys = xrealloc(m->keys, (m->n_keys + 1) * sizeof(*m->keys));
		memmove(m->keys + m->n_axes + 1, m->keys + m->n_axes,
		        (m->n_keys - m->n_axes) * sizeof(*m->keys));
		m->keys[m->n_axes] = xstrdup(k->text);
		m->n_keys++;
		m->axis_values = xrealloc(m->axis_values, (m->n_axes + 1) * sizeof(char **));
		m->n_axis_values = xrealloc(m->n_axis_values, (m->n_axes + 1) * sizeof(size_t));
		char **vals = xcalloc(v->n, sizeof(*vals));
		size_t n = 0;
		for (size_t i = 0; i < v->n; i++) {
			size_t o = mpush(c, "[%zu]", i);
			const char *s = value_of(c, v->kids[i]);
			bool dup = false;
			for (size_t j = 0; s && j < n && !dup; j++)
				dup = streq(vals[j], s);
			if (dup) {
				_cleanup_free_ char *qs = quoted(s);
				merr(c, v->kids[i], "%s is listed twice", qs);
			} else if (s) {
				vals[n++] = xstrdup(s);
			}
			mpop(c, o);
		}
		m->axis_values[m->n_axes] = vals;
		m->n_axis_values[m->n_axes] = n;
		m->n_axes++;
	}
	mpop(c, old);
}

/* Reads an include/exclude entry: a mapping of key: scalar. */
static bool parse_entry(struct mctx *c, const struct node *n, struct mentry *e)
{
	if (n->type != NODE_MAP) {
		if (n->bad)
			c->failed = true;
		else
			merr(c, n, "expected a mapping of matrix key: value, got %s",
			     node_type_name(n));
		return false;
	}
	if (n->n == 0) {
		merr(c, n, "is empty");
		return false;
	}
	if (n->n / 2 > MAX_ENTRY_KEYS) {
		merr(c, n, "has %zu keys; the limit is %d", n->n / 2, MAX_ENTRY_KEYS);
		return false;
	}
	e->keys = xcalloc(n->n / 2, sizeof(*e->keys));
	e->values = xcalloc(n->n / 2, sizeof(*e->values));
	bool ok = true;
	for (size_t i = 0; i + 1 < n->n; i += 2) {
		const struct node *k = n->kids[i];
		if (!check_key(c, k)) {
			ok = false;
			continue;
		}
		size_t old = mpush(c, ".%s", k->text);
		const char *s = value_of(c, n->kids[i + 1]);
		if (s) {
			e->keys[e->n] = xstrdup(k->text);
			e->values[e->n++] = xstrdup(s);
		} else {
			ok = false;
		}
		mpop(c, old);
	}
	return ok;
}

static void entry_release(struct mentry *e)
{
	for (size_t i = 0; i < e->n; i++) {
		free(e->keys[i]);
		free(e->values[i]);
	}
	free(e->keys);
	free(e->values);
}

/* An exclude entry as (axis, value index) pairs, so matching is integer work. */
struct xentry {
	size_t n;
	int axis[MAX_ENTRY_KEYS];
	size_t value[MAX_ENTRY_KEYS];
};

static void parse_exclude(struct mctx *c, const struct node *n, const struct matrix *m,
                          struct xentry *x)
{
	struct mentry e = {0};
	if (parse_entry(c, n, &e)) {
		for (size_t i = 0; i < e.n; i++) {
			int a = axis_index(m, e.keys[i]);
			size_t old = mpush(c, ".%s", e.keys[i]);
			const struct node *vn = map_get(n, e.keys[i]);
			if (a < 0) {
				_cleanup_free_ char *qk = quoted(e.keys[i]);
				const char *best = closest_word(
				    e.keys[i], (const char *const *)m->keys, m->n_axes);
				if (best)
					merr(c, vn,
					     "%s is not an axis of the matrix (did you mean "
					     "\"%s\"?)",
					     qk, best);
				else
					merr(c, vn, "%s is not an axis of the matrix", qk);
			} else {
				size_t j = 0;
				while (j < m->n_axis_values[a] &&
				       !streq(m->axis_values[a][j], e.values[i]))
					j++;
				if (j == m->n_axis_values[a]) {
					_cleanup_free_ char *qv = quoted(e.values[i]);
					merr(c, vn,
					     "%s is not a value of matrix.%s, so this exclude "
					     "matches nothing",
					     qv, e.keys[i]);
				}
				x->axis[x->n] = a;
				x->value[x->n++] = j;
			}
			mpop(c, old);
		}
	}
	entry_release(&e);
}

static void parse_entries(struct mctx *c, const struct node *k, const struct node *v,
                          struct matrix *m, struct xentry **ret_x, size_t *ret_nx)
{
	bool include = streq(k->text, "include");
	size_t old = mpush(c, ".%s", k->text);
	if (v->type != NODE_SEQ) {
		if (v->bad)
			c->failed = true;
		else
			merr(c, v, "expected a list of mappings (- key: value), got %s",
			     node_type_name(v));
	} else if (v->n > MAX_ENTRIES) {
		merr(c, v, "has %zu entries; the limit is %d", v->n, MAX_ENTRIES);
	} else if (include) {
		m->include = xcalloc(v->n + 1, sizeof(*m->include));
		for (size_t i = 0; i < v->n; i++) {
			size_t o = mpush(c, "[%zu]", i);
			struct mentry *e = &m->include[m->n_include];
			if (parse_entry(c, v->kids[i], e))
				m->n_include++;
			else
				entry_release(e), *e = (struct mentry){0};
			mpop(c, o);
		}
	} else {
		*ret_x = xcalloc(v->n + 1, sizeof(**ret_x));
		for (size_t i = 0; i < v->n; i++) {
			size_t o = mpush(c, "[%zu]", i);
			parse_exclude(c, v->kids[i], m, &(*ret_x)[*ret_nx]);
			(*ret_nx)++;
			mpop(c, o);
		}
	}
	mpop(c, old);
}

/* ---- expansion ------------------------------------------------------------------------------ */

const char *combo_get(const struct combo *c, const char *key)
{
	for (size_t i = 0; c && i < c->n; i++)
		if (streq(c->v[i].key, key))
			return c->v[i].value;
	return NULL;
}

static void combo_set(struct combo *c, const char *key, const char *value, bool original)
{
	for (size_t i = 0; i < c->n; i++)
		if (streq(c->v[i].key, key)) {
			c->v[i].value = value;
			return;
		}
	c->v = xgrow(c->v, &c->cap, c->n + 1, sizeof(*c->v));
	c->v[c->n++] = (struct mval){key, value, original};
}

static bool excluded(const size_t *digits, const struct xentry *x, size_t nx)
{
	for (size_t i = 0; i < nx; i++) {
		bool all = x[i].n > 0;
		for (size_t j = 0; j < x[i].n && all; j++)
			all = digits[x[i].axis[j]] == x[i].value[j];
		if (all)
			return true;
	}
	return false;
}

/* Include semantics: extend the originals it does not contradict, else add. */
static void apply_include(struct matrix *m, const struct mentry *e, size_t n_orig)
{
	bool matched = false;
	for (size_t i = 0; i < n_orig; i++) {
		struct combo *c = &m->combos[i];
		bool ok = true;
		for (size_t j = 0; j < e->n && ok; j++)
			for (size_t k = 0; k < c->n; k++)
				if (c->v[k].original && streq(c->v[k].key, e->keys[j]))
					ok = streq(c->v[k].value, e->values[j]);
		if (!ok)
			continue;
		matched = true;
		for (size_t j = 0; j < e->n; j++)
			combo_set(c, e->keys[j], e->values[j], false);
	}
	if (!matched) {
		struct combo c = {0};
		for (size_t j = 0; j < e->n; j++)
			combo_set(&c, e->keys[j], e->values[j], false);
		m->combos[m->n_combos++] = c;
	}
}

static void product_text(const struct matrix *m, struct buf *b)
{
	for (size_t i = 0; i < m->n_axes; i++)
		buf_printf(b, "%s%zu", i ? " x " : "", m->n_axis_values[i]);
}

static int expand(struct mctx *c, const struct node *node, struct matrix *m, const struct xentry *x,
                  size_t nx)
{
	/* The product, with overflow checks, before anything is built. */
	uint64_t product = m->n_axes ? 1 : 0;
	bool over = false;
	for (size_t i = 0; i < m->n_axes && !over; i++) {
		if (__builtin_mul_overflow(product, (uint64_t)m->n_axis_values[i], &product))
			over = true;
	}
	if (over || product > PRODUCT_MAX) {
		struct buf b = BUF_INIT;
		product_text(m, &b);
		if (over)
			merr(c, node,
			     "the axes make 2^64 or more combinations (%s); the limit is "
			     "%d jobs",
			     b.data, SPEC_MAX_MATRIX);
		else
			merr(c, node,
			     "the axes make %" PRIu64 " combinations (%s); the limit is %d "
			     "jobs",
			     product, b.data, SPEC_MAX_MATRIX);
		buf_release(&b);
		return -EINVAL;
	}
	/* Room for the survivors we keep plus one per include entry. */
	m->combos = xcalloc(SPEC_MAX_MATRIX + m->n_include + 1, sizeof(*m->combos));
	size_t digits[MAX_AXES] = {0};
	uint64_t survivors = 0;
	for (uint64_t idx = 0; idx < product; idx++) {
		uint64_t r = idx;
		for (size_t a = m->n_axes; a-- > 0;) {
			digits[a] = r % m->n_axis_values[a];
			r /= m->n_axis_values[a];
		}
		if (excluded(digits, x, nx))
			continue;
		if (++survivors > SPEC_MAX_MATRIX)
			continue; /* counted, not built */
		struct combo *cb = &m->combos[m->n_combos++];
		for (size_t a = 0; a < m->n_axes; a++)
			combo_set(cb, m->keys[a], m->axis_values[a][digits[a]], true);
	}
	if (survivors > SPEC_MAX_MATRIX) {
		struct buf b = BUF_INIT;
		product_text(m, &b);
		if (survivors == product)
			merr(c, node, "expands to %" PRIu64 " jobs (%s); the limit is %d",
			     survivors, b.data, SPEC_MAX_MATRIX);
		else
			merr(c, node,
			     "expands to %" PRIu64 " jobs (%s = %" PRIu64 ", minus %" PRIu64
			     " excluded); the limit is %d",
			     survivors, b.data, product, product - survivors, SPEC_MAX_MATRIX);
		buf_release(&b);
		return -EINVAL;
	}
	size_t n_orig = m->n_combos;
	for (size_t i = 0; i < m->n_include; i++)
		apply_include(m, &m->include[i], n_orig);
	if (m->n_combos > SPEC_MAX_MATRIX) {
		merr(c, node,
		     "expands to %zu jobs (%zu from the axes, %zu added by include); the "
		     "limit is %d",
		     m->n_combos, n_orig, m->n_combos - n_orig, SPEC_MAX_MATRIX);
		return -EINVAL;
	}
	if (m->n_combos == 0) {
		merr(c, node, "every combination is excluded; nothing would run");
		return -EINVAL;
	}
	return 0;
}

int matrix_expand(const struct node *node, struct spec_diags *d, struct matrix *m)
{
	*m = (struct matrix){0};
	struct mctx c = {.d = d};
	buf_puts(&c.path, "matrix");
	struct xentry *x = NULL;
	size_t nx = 0;
	int r = -EINVAL;
	collect_names(node, m);
	if (node->bad) {
		c.failed = true;
		goto out;
	}
	if (node->type != NODE_MAP) {
		merr(&c, node, "expected a mapping of axes (e.g. os: [linux, macos]), got %s",
		     node_type_name(node));
		goto out;
	}
	/* Axes first (include/exclude refer to them), wherever they are written. */
	for (size_t i = 0; i + 1 < node->n; i += 2) {
		const struct node *k = node->kids[i];
		if (k->bad || streq(k->text, "include") || streq(k->text, "exclude"))
			continue;
		parse_axis(&c, k, node->kids[i + 1], m);
	}
	for (size_t i = 0; i + 1 < node->n; i += 2) {
		const struct node *k = node->kids[i];
		if (k->bad) {
			c.failed = true;
			continue;
		}
		if (streq(k->text, "include") || streq(k->text, "exclude"))
			parse_entries(&c, k, node->kids[i + 1], m, &x, &nx);
	}
	for (size_t i = 0; i < m->n_include; i++)
		for (size_t j = 0; j < m->include[i].n; j++)
			add_key(m, m->include[i].keys[j]);
	if (c.failed)
		goto out;
	if (m->n_axes == 0 && m->n_include == 0) {
		merr(&c, node, "has no axes (e.g. matrix: {os: [linux, macos]})");
		goto out;
	}
	r = expand(&c, node, m, x, nx);
out:
	free(x);
	buf_release(&c.path);
	return c.failed ? -EINVAL : r;
}

void matrix_release(struct matrix *m)
{
	for (size_t i = 0; i < m->n_combos; i++)
		free(m->combos[i].v);
	free(m->combos);
	for (size_t i = 0; i < m->n_include; i++)
		entry_release(&m->include[i]);
	free(m->include);
	for (size_t i = 0; i < m->n_axes; i++) {
		for (size_t j = 0; j < m->n_axis_values[i]; j++)
			free(m->axis_values[i][j]);
		free(m->axis_values[i]);
	}
	free(m->axis_values);
	free(m->n_axis_values);
	for (size_t i = 0; i < m->n_keys; i++)
		free(m->keys[i]);
	free(m->keys);
	for (size_t i = 0; i < m->n_names; i++)
		free(m->names[i]);
	free(m->names);
	*m = (struct matrix){0};
}
