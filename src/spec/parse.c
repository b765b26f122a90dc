/*
 * parse: YAML (and JSON) text into the node tree, with libyaml's event
 * parser, under hard limits.
 *
 * Invariants: the tree never holds more than SPEC_MAX_NODES nodes nor nests
 * deeper than SPEC_MAX_DEPTH (parsing stops the moment either is passed, so
 * time and memory stay proportional to the input); aliases are refused, never
 * expanded (no "billion laughs"); every scalar is valid UTF-8 without NUL and
 * without the characters a JSON dump could not carry back through YAML, so
 * the normalised JSON of anything accepted loads back unchanged.
 */
#include "spec-internal.h"

#include <yaml.h>

/* ---- nodes ------------------------------------------------------------------ */

static struct node *node_new(enum node_type type, int line, int col)
{
	struct node *n = xcalloc(1, sizeof(*n));
	n->type = type;
	n->line = line;
	n->col = col;
	return n;
}

void node_free(struct node *n)
{
	if (!n)
		return;
	/* Recursion is bounded: no tree nests deeper than SPEC_MAX_DEPTH. */
	for (size_t i = 0; i < n->n; i++)
		node_free(n->kids[i]);
	free(n->kids);
	free(n->text);
	free(n);
}

static void node_add(struct node *parent, struct node *kid)
{
	parent->kids = xgrow(parent->kids, &parent->cap, parent->n + 1, sizeof(struct node *));
	parent->kids[parent->n++] = kid;
}

struct node *map_get(const struct node *map, const char *key)
{
	if (!map || map->type != NODE_MAP)
		return NULL;
	for (size_t i = 0; i + 1 < map->n; i += 2) {
		const struct node *k = map->kids[i];
		if (k->type == NODE_SCALAR && !k->bad && streq(k->text, key))
			return map->kids[i + 1];
	}
	return NULL;
}

static bool all_digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

/* [-+]?( \.[0-9]+ | [0-9]+(\.[0-9]*)? )([eE][-+]?[0-9]+)? and .inf/.nan */
static bool is_float(const char *s)
{
	static const char *const special[] = {".inf",  ".Inf",  ".INF",  "-.inf", "-.Inf", "-.INF",
	                                      "+.inf", "+.Inf", "+.INF", ".nan",  ".NaN",  ".NAN"};
	for (size_t i = 0; i < ARRAY_SIZE(special); i++)
		if (streq(s, special[i]))
			return true;
	if (*s == '-' || *s == '+')
		s++;
	size_t digits = 0;
	while (*s >= '0' && *s <= '9')
		s++, digits++;
	if (*s == '.') {
		s++;
		while (*s >= '0' && *s <= '9')
			s++, digits++;
	}
	if (digits == 0)
		return false;
	if (*s == 'e' || *s == 'E') {
		s++;
		if (*s == '-' || *s == '+')
			s++;
		if (!all_digits(s))
			return false;
		return true;
	}
	return *s == '\0';
}

enum scalar_kind scalar_kind(const char *t, bool plain)
{
	if (!plain)
		return SK_STRING;
	if (!*t || streq(t, "~") || streq(t, "null") || streq(t, "Null") || streq(t, "NULL"))
		return SK_NULL;
	if (streq(t, "true") || streq(t, "True") || streq(t, "TRUE") || streq(t, "false") ||
	    streq(t, "False") || streq(t, "FALSE"))
		return SK_BOOL;
	if (all_digits(t + (*t == '-' || *t == '+')))
		return SK_INT;
	if (is_float(t))
		return SK_FLOAT;
	return SK_STRING;
}

const char *node_type_name(const struct node *n)
{
	switch (n->type) {
	case NODE_MAP: return "a mapping";
	case NODE_SEQ: return "a list";
	case NODE_SCALAR: break;
	}
	switch (scalar_kind(n->text, n->plain)) {
	case SK_NULL: return "null";
	case SK_BOOL: return "a boolean";
	case SK_INT:
	case SK_FLOAT: return "a number";
	case SK_STRING: break;
	}
	return "a string";
}

/* ---- text checks -------------------------------------------------------------- */

bool spec_char_ok(uint32_t cp)
{
	return !(cp == 0 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 ||
	         cp == 0x2029 || cp == 0xfeff || cp == 0xfffe || cp == 0xffff);
}

/*
 * A scalar's value must be carried by JSON and read back by YAML unchanged:
 * no NUL, no DEL or C1 controls, no YAML 1.1 line separators (NEL, LS, PS),
 * no BOM or non-characters. C0 controls are fine (JSON escapes them).
 * Reports and returns false when the text has one.
 */
static bool check_text(const char *s, size_t len, int line, int col, const char *what,
                       struct spec_diags *d)
{
	if (strlen(s) != len) {
		spec_diags_add(d, line, col, "", "%s contains a NUL character", what);
		return false;
	}
	if (!utf8_valid(s, len)) {
		spec_diags_add(d, line, col, "", "%s is not valid UTF-8", what);
		return false;
	}
	const unsigned char *p = (const unsigned char *)s, *end = p + len;
	while (p < end) {
		uint32_t cp = utf8_next(&p);
		if (!spec_char_ok(cp)) {
			spec_diags_add(
			    d, line, col, "",
			    "%s contains the character U+%04X, which a spec cannot carry; "
			    "remove it",
			    what, (unsigned)cp);
			return false;
		}
	}
	return true;
}

/* 1-based line:col (in characters) of byte `off` of data. */
static void offset_to_mark(const char *data, size_t len, size_t off, int *line, int *col)
{
	int l = 1, c = 1;
	for (size_t i = 0; i < off && i < len; i++) {
		unsigned char ch = (unsigned char)data[i];
		if (ch == '\n')
			l++, c = 1;
		else if ((ch & 0xc0) != 0x80)
			c++;
	}
	*line = l;
	*col = c;
}

/* ---- the event parser ------------------------------------------------------------ */

struct builder {
	struct spec_diags *d;
	struct node *root;
	struct node *stack[SPEC_MAX_DEPTH];
	size_t depth;
	size_t n_nodes;
	int docs;
	bool alias_reported; /* one message per document is enough */
};

static int mark_line(const yaml_mark_t *m)
{
	return (int)MIN(m->line, (size_t)INT32_MAX - 1) + 1;
}
static int mark_col(const yaml_mark_t *m)
{
	return (int)MIN(m->column, (size_t)INT32_MAX - 1) + 1;
}

static int cmp_key(const void *a, const void *b)
{
	const struct node *x = *(struct node *const *)a, *y = *(struct node *const *)b;
	int r = strcmp(x->text, y->text);
	if (r)
		return r;
	/* Keep document order among equal keys: compare positions. */
	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	return x->col < y->col ? -1 : x->col > y->col;
}

/* Reports duplicate keys of a finished map: n log n, not n². */
static void check_duplicates(struct node *map, struct spec_diags *d)
{
	size_t n = 0;
	struct node **keys = xmalloc((map->n / 2 + 1) * sizeof(struct node *));
	for (size_t i = 0; i + 1 < map->n; i += 2)
		if (map->kids[i]->type == NODE_SCALAR && !map->kids[i]->bad)
			keys[n++] = map->kids[i];
	qsort(keys, n, sizeof(struct node *), cmp_key);
	for (size_t i = 1; i < n; i++) {
		if (!streq(keys[i]->text, keys[i - 1]->text))
			continue;
		struct buf b = BUF_INIT;
		quote_value(&b, keys[i]->text);
		size_t first = i - 1;
		while (first > 0 && streq(keys[first - 1]->text, keys[i]->text))
			first--;
		spec_diags_add(d, keys[i]->line, keys[i]->col, "",
		               "duplicate key %s (first at line %d); remove one of them", b.data,
		               keys[first]->line);
		buf_release(&b);
		keys[i]->bad = true; /* map_get and the validators skip it */
	}
	free(keys);
}

/* Attaches a new node to the open collection (or makes it the root). */
static int attach(struct builder *b, struct node *n)
{
	if (++b->n_nodes > SPEC_MAX_NODES) {
		spec_diags_add(b->d, n->line, n->col, "",
		               "the document holds more than %d values; a job spec is far smaller",
		               SPEC_MAX_NODES);
		node_free(n);
		return -EINVAL;
	}
	if (b->depth == 0) {
		b->root = n;
		return 0;
	}
	struct node *parent = b->stack[b->depth - 1];
	if (parent->type == NODE_MAP && parent->n % 2 == 0 && n->type != NODE_SCALAR) {
		spec_diags_add(b->d, n->line, n->col, "", "a key must be a string, not %s",
		               node_type_name(n));
		n->bad = true;
	}
	node_add(parent, n);
	return 0;
}

static bool tag_ok(struct builder *b, const yaml_char_t *tag, const char *allowed,
                   const yaml_mark_t *m)
{
	if (!tag || streq((const char *)tag, "!") || streq((const char *)tag, allowed))
		return true;
	/* Show tags as written: "tag:yaml.org,2002:binary" was "!!binary". */
	const char *t = (const char *)tag;
	_cleanup_free_ char *shown = startswith(t, "tag:yaml.org,2002:")
	                                 ? xasprintf("!!%s", t + strlen("tag:yaml.org,2002:"))
	                                 : xstrdup(t);
	struct buf q = BUF_INIT;
	quote_value(&q, shown);
	spec_diags_add(b->d, mark_line(m), mark_col(m), "",
	               "YAML tag %s is not supported; remove it (write the value as plain text)",
	               q.data);
	buf_release(&q);
	return false;
}

static int on_scalar(struct builder *b, yaml_event_t *e)
{
	const yaml_mark_t *m = &e->start_mark;
	struct node *n = node_new(NODE_SCALAR, mark_line(m), mark_col(m));
	n->text = xstrndup((const char *)e->data.scalar.value, e->data.scalar.length);
	n->len = strlen(n->text);
	const char *tag = (const char *)e->data.scalar.tag;
	n->plain = e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !tag;
	if (!tag_ok(b, e->data.scalar.tag, "tag:yaml.org,2002:str", m))
		n->bad = true;
	if (!check_text((const char *)e->data.scalar.value, e->data.scalar.length, n->line, n->col,
	                "the value", b->d))
		n->bad = true;
	return attach(b, n);
}

static int on_start(struct builder *b, yaml_event_t *e, enum node_type type)
{
	const yaml_mark_t *m = &e->start_mark;
	if (b->depth >= SPEC_MAX_DEPTH) {
		spec_diags_add(b->d, mark_line(m), mark_col(m), "",
		               "nesting deeper than %d levels; a job spec needs a handful",
		               SPEC_MAX_DEPTH);
		return -EINVAL;
	}
	struct node *n = node_new(type, mark_line(m), mark_col(m));
	const yaml_char_t *tag =
	    type == NODE_MAP ? e->data.mapping_start.tag : e->data.sequence_start.tag;
	if (!tag_ok(b, tag, type == NODE_MAP ? "tag:yaml.org,2002:map" : "tag:yaml.org,2002:seq",
	            m))
		n->bad = true;
	int r = attach(b, n);
	if (r < 0)
		return r;
	b->stack[b->depth++] = n;
	return 0;
}

static int on_alias(struct builder *b, yaml_event_t *e)
{
	const yaml_mark_t *m = &e->start_mark;
	if (!b->alias_reported) {
		struct buf q = BUF_INIT;
		buf_putc(&q, '*');
		buf_puts(&q, (const char *)e->data.alias.anchor);
		struct buf v = BUF_INIT;
		quote_value(&v, q.data);
		spec_diags_add(b->d, mark_line(m), mark_col(m), "",
		               "YAML aliases are not supported (found %s); write the value out in "
		               "full",
		               v.data);
		buf_release(&q);
		buf_release(&v);
		b->alias_reported = true;
	}
	struct node *n = node_new(NODE_SCALAR, mark_line(m), mark_col(m));
	n->text = xstrdup("");
	n->plain = true;
	n->bad = true;
	return attach(b, n);
}

static void report_yaml_error(yaml_parser_t *p, const char *data, size_t len, struct spec_diags *d)
{
	int line, col;
	struct buf msg = BUF_INIT;
	buf_printf(&msg, "invalid YAML: %s", p->problem ? p->problem : "unknown error");
	if (p->error == YAML_READER_ERROR) {
		offset_to_mark(data, len, p->problem_offset, &line, &col);
		if (p->problem_value >= 0)
			buf_printf(&msg, " (character 0x%02X)", (unsigned)p->problem_value);
	} else {
		line = mark_line(&p->problem_mark);
		col = mark_col(&p->problem_mark);
		if (p->context)
			buf_printf(&msg, " (%s at line %d, column %d)", p->context,
			           mark_line(&p->context_mark), mark_col(&p->context_mark));
	}
	if (p->error == YAML_MEMORY_ERROR)
		line = col = 0;
	spec_diags_add(d, line, col, "", "%s", msg.data);
	buf_release(&msg);
}

/* Checks the bytes before libyaml sees them: NUL and UTF-8, with positions. */
static int check_encoding(const char *data, size_t len, struct spec_diags *d)
{
	int line, col;
	const char *nul = memchr(data, '\0', len);
	size_t ok = utf8_valid_prefix(data, len);
	if (nul && (size_t)(nul - data) <= ok) {
		offset_to_mark(data, len, (size_t)(nul - data), &line, &col);
		spec_diags_add(d, line, col, "",
		               "the file contains a NUL byte; a job spec is UTF-8 text (is this a "
		               "binary file?)");
		return -EINVAL;
	}
	if (ok < len) {
		offset_to_mark(data, len, ok, &line, &col);
		spec_diags_add(d, line, col, "",
		               "invalid UTF-8 (byte 0x%02X); a job spec must be UTF-8 text",
		               (unsigned char)data[ok]);
		return -EINVAL;
	}
	return 0;
}

static int parse_events(yaml_parser_t *p, struct builder *b, const char *data, size_t len)
{
	for (;;) {
		yaml_event_t e;
		if (!yaml_parser_parse(p, &e)) {
			report_yaml_error(p, data, len, b->d);
			return -EINVAL;
		}
		int r = 0;
		yaml_event_type_t type = e.type;
		switch (type) {
		case YAML_DOCUMENT_START_EVENT:
			if (++b->docs > 1) {
				spec_diags_add(
				    b->d, mark_line(&e.start_mark), mark_col(&e.start_mark), "",
				    "a second YAML document ('---'); a spec file holds one "
				    "job, put each job in its own file");
				r = -EINVAL;
			}
			break;
		case YAML_SCALAR_EVENT: r = on_scalar(b, &e); break;
		case YAML_ALIAS_EVENT: r = on_alias(b, &e); break;
		case YAML_MAPPING_START_EVENT: r = on_start(b, &e, NODE_MAP); break;
		case YAML_SEQUENCE_START_EVENT: r = on_start(b, &e, NODE_SEQ); break;
		case YAML_MAPPING_END_EVENT:
		case YAML_SEQUENCE_END_EVENT:
			if (b->depth > 0) {
				struct node *n = b->stack[--b->depth];
				if (n->type == NODE_MAP)
					check_duplicates(n, b->d);
			}
			break;
		default: break;
		}
		yaml_event_delete(&e);
		if (r < 0)
			return r;
		if (type == YAML_STREAM_END_EVENT)
			return 0;
	}
}

int spec_parse_yaml(const char *data, size_t len, struct spec_diags *d, struct node **ret)
{
	if (len > SPEC_MAX_BYTES) {
		spec_diags_add(d, 0, 0, "",
		               "the file is larger than 1 MiB (%zu bytes); a spec may "
		               "hold at most %d bytes",
		               len, SPEC_MAX_BYTES);
		return -EFBIG;
	}
	int r = check_encoding(data, len, d);
	if (r < 0)
		return r;

	yaml_parser_t p;
	if (!yaml_parser_initialize(&p))
		abort(); /* allocation failure, as xmalloc */
	yaml_parser_set_input_string(&p, (const unsigned char *)data, len);
	yaml_parser_set_encoding(&p, YAML_UTF8_ENCODING);
	struct builder b = {.d = d};
	r = parse_events(&p, &b, data, len);
	yaml_parser_delete(&p);
	if (r < 0) {
		node_free(b.root);
		return r;
	}
	if (!b.root) {
		spec_diags_add(d, 0, 0, "",
		               "the file is empty; a job spec needs at least name and "
		               "steps (see docs/job-spec.md)");
		return -ENODATA;
	}
	*ret = b.root;
	return 0;
}

/* ---- from JSON ------------------------------------------------------------------- */

static struct node *from_json(const json_t *v, size_t depth, size_t *count, struct spec_diags *d)
{
	if (depth > SPEC_MAX_DEPTH) {
		spec_diags_add(d, 0, 0, "", "nesting deeper than %d levels", SPEC_MAX_DEPTH);
		return NULL;
	}
	if (++*count > SPEC_MAX_NODES) {
		spec_diags_add(d, 0, 0, "", "the document holds more than %d values",
		               SPEC_MAX_NODES);
		return NULL;
	}
	struct node *n;
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		n = node_new(NODE_MAP, 0, 0);
		const char *key;
		json_t *val;
		/* jansson's iteration API takes a non-const object; it does not modify it. */
		json_t *obj = (json_t *)(uintptr_t)v;
		json_object_foreach(obj, key, val)
		{
			struct node *k = node_new(NODE_SCALAR, 0, 0);
			k->text = xstrdup(key);
			k->len = strlen(key);
			node_add(n, k);
			if (!check_text(key, k->len, 0, 0, "a key", d))
				k->bad = true;
			struct node *kid = from_json(val, depth + 1, count, d);
			if (!kid) {
				node_free(n);
				return NULL;
			}
			node_add(n, kid);
		}
		return n;
	}
	case JSON_ARRAY: {
		n = node_new(NODE_SEQ, 0, 0);
		size_t i;
		json_t *val;
		json_array_foreach(v, i, val)
		{
			struct node *kid = from_json(val, depth + 1, count, d);
			if (!kid) {
				node_free(n);
				return NULL;
			}
			node_add(n, kid);
		}
		return n;
	}
	case JSON_STRING:
		n = node_new(NODE_SCALAR, 0, 0);
		n->len = json_string_length(v);
		n->text = xstrndup(json_string_value(v), n->len);
		if (!check_text(json_string_value(v), n->len, 0, 0, "a string", d))
			n->bad = true;
		n->len = strlen(n->text);
		return n;
	case JSON_INTEGER:
		n = node_new(NODE_SCALAR, 0, 0);
		n->text = xasprintf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
		break;
	case JSON_REAL: {
		n = node_new(NODE_SCALAR, 0, 0);
		double x = json_real_value(v);
		n->text = xasprintf("%.17g", x);
		if (!strpbrk(n->text, ".eEni")) {
			char *t = xasprintf("%s.0", n->text);
			free(n->text);
			n->text = t;
		}
		break;
	}
	case JSON_TRUE:
	case JSON_FALSE:
		n = node_new(NODE_SCALAR, 0, 0);
		n->text = xstrdup(json_is_true(v) ? "true" : "false");
		break;
	case JSON_NULL:
	default:
		n = node_new(NODE_SCALAR, 0, 0);
		n->text = xstrdup("null");
		break;
	}
	n->plain = true;
	n->len = strlen(n->text);
	return n;
}

int spec_node_from_json(const json_t *v, struct spec_diags *d, struct node **ret)
{
	size_t count = 0;
	struct node *n = from_json(v, 1, &count, d);
	if (!n)
		return -EINVAL;
	*ret = n;
	return 0;
}
