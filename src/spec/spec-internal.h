/*
 * spec-internal: what the files of the spec module share and nobody else
 * sees: the node tree a document parses into, the validation context, and
 * the matrix.
 *
 * The node tree is our own (not libyaml's document) so that the limits hold
 * while parsing: no alias is ever expanded, nesting stops at SPEC_MAX_DEPTH,
 * the number of nodes at SPEC_MAX_NODES, and every node keeps its 1-based
 * line:col for messages.
 */
#pragma once

#include "spec.h"

/* ---- nodes ------------------------------------------------------------------ */

enum node_type { NODE_SCALAR, NODE_MAP, NODE_SEQ };

struct node {
	enum node_type type;
	int line, col; /* 1-based; 0 for nodes made from JSON */
	bool plain;    /* scalar written without quotes: its type comes from its text */
	bool bad;      /* stands for something already reported (an alias): skip it */
	char *text;    /* scalar: NUL-terminated (a NUL inside was refused) */
	size_t len;
	/* seq: items; map: key, value, key, value... (keys are scalars) */
	struct node **kids;
	size_t n, cap;
};

/* What a plain scalar's text means (YAML 1.2 core schema, decimal numbers). */
enum scalar_kind { SK_NULL, SK_BOOL, SK_INT, SK_FLOAT, SK_STRING };

void node_free(struct node *n);
enum scalar_kind scalar_kind(const char *text, bool plain);
/* The value of `key` in a map (the first, duplicates having been reported). */
struct node *map_get(const struct node *map, const char *key);
/* "a mapping", "a list", "null", "a boolean", "a number", "a string". */
const char *node_type_name(const struct node *n);

/*
 * Parses YAML (or JSON) text into a tree. Reports into `d`. Returns 0 with
 * *ret set (possibly with non-fatal errors reported: duplicate keys,
 * aliases, tags), or -EINVAL when the text could not be parsed at all
 * (syntax, encoding, limits), or -ENODATA for a stream without a document.
 */
int spec_parse_yaml(const char *data, size_t len, struct spec_diags *d, struct node **ret);
/* Converts a JSON value (as jansson holds it) into a tree, same limits. */
int spec_node_from_json(const json_t *v, struct spec_diags *d, struct node **ret);

/* ---- messages ---------------------------------------------------------------- */

/* Sorts d->v[from..] by position (stable), so errors read in file order. */
void diags_sort(struct spec_diags *d, size_t from);
/* Appends s as a quoted, escaped value for a message, cut to ~64 characters. */
void quote_value(struct buf *b, const char *s);
/* Finds the closest of `cands` to `word` (did-you-mean), or NULL. */
const char *closest_word(const char *word, const char *const *cands, size_t n);

/* ---- matrix ------------------------------------------------------------------ */

/* One key: value of a combination; the strings belong to the matrix. */
struct mval {
	const char *key, *value;
	bool original; /* from the axes (include cannot overwrite it) */
};

struct combo {
	struct mval *v; /* axes in order, then keys include added */
	size_t n, cap;
};

struct mentry {
	char **keys, **values;
	size_t n;
};

struct matrix {
	char **keys; /* every key a combination may hold: the axes, then include's */
	size_t n_keys;
	size_t n_axes;       /* keys[0..n_axes) are the axes */
	char ***axis_values; /* per axis */
	size_t *n_axis_values;
	struct mentry *include;
	size_t n_include;
	struct combo *combos;
	size_t n_combos;
	/* Every key written in the matrix (valid or not), for ${{ matrix.KEY }}
	 * checks that must work even when the matrix has errors. */
	char **names;
	size_t n_names;
};

/*
 * Validates `node` (the value of "matrix") and expands it into combinations.
 * Returns 0, or -EINVAL after reporting (m->names is filled either way, for
 * the job's ${{ matrix.KEY }} checks).
 */
int matrix_expand(const struct node *node, struct spec_diags *d, struct matrix *m);
void matrix_release(struct matrix *m);
const char *combo_get(const struct combo *c, const char *key);

/* How ${{ matrix.KEY }} is treated while validating. */
enum subst_mode {
	SUBST_NONE,     /* no matrix: ${{ ... }} is an error */
	SUBST_COMBO,    /* substitute from `combo` */
	SUBST_TOLERANT, /* the matrix is invalid: skip values that use it */
};

/* ---- reading values (value.c) ------------------------------------------------------ */

/* Limits (docs/job-spec.md, "Limits"). */
#define MAX_NAME           256
#define MAX_LABELS         64
#define MAX_IMAGE          512
#define MAX_ENV            256
#define MAX_VAR_NAME       256
#define MAX_SECRETS        64
#define MAX_STEPS          256
#define MAX_PATHS          256
#define MAX_PATH_LEN       1024
#define MAX_CACHES         16
#define MAX_CACHE_PATHS    32
#define MAX_CACHE_KEY      512
#define MAX_SHELL          256
#define MAX_MATRIX_VALUES  64
#define MIN_MEMORY         (4ULL << 20)
#define MIN_DISK           (1ULL << 20)
#define MAX_PIDS           4194304
#define MAX_GPUS           64
#define MAX_RETRIES        10
#define MAX_PRIORITY       1000
#define MIN_TIMEOUT_MS     1000ULL
#define MAX_TIMEOUT_MS     (30ULL * 86400000)
#define DEFAULT_TIMEOUT_MS 3600000ULL

/* The validator's state while it walks one job. */
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

struct val {
	const char *text;
	enum scalar_kind kind;
};

/* Keeps s (malloc'd) until the context is released; returns it. */
char *v_keep(struct vctx *c, char *s);
/* A quoted, escaped user value for a message; lives as long as the context. */
const char *v_quote(struct vctx *c, const char *s);
/* Reports at n's position under the current path; marks the job failed. */
void v_err(struct vctx *c, const struct node *n, const char *fmt, ...) KILN_PRINTF(3, 4);
/* Appends ".key" (or ["odd key"]) / "[i]" to the path; returns the length to
 * give v_pop() to go back. */
size_t v_push_key(struct vctx *c, const char *k);
size_t v_push_index(struct vctx *c, size_t i);
void v_pop(struct vctx *c, size_t old);
/* A word that can be shown bare in a path or message: [A-Za-z0-9_.-], 1..64. */
bool v_path_word(const char *k);
/* A character of a matrix key: [A-Za-z0-9_-]. */
bool v_key_char(char ch);

/*
 * Reads scalar n after ${{ matrix.KEY }} substitution; reports "expected
 * <expected>, got ..." for a mapping or list. False when reported (or
 * skipped: a node already reported, a value using a broken matrix).
 */
bool v_scalar(struct vctx *c, const struct node *n, const char *expected, struct val *v);
/* A plain null scalar (the field takes its default). */
bool v_is_null(const struct node *n);
bool v_has_control(const char *s);
/* Typed readers; each reports and returns false/NULL on a bad value. */
const char *v_string(struct vctx *c, const struct node *n, const char *example);
bool v_int(struct vctx *c, const struct node *n, int64_t min, int64_t max, int64_t *ret);
bool v_bool(struct vctx *c, const struct node *n, bool *ret);
bool v_duration(struct vctx *c, const struct node *n, uint64_t *ret);
bool v_size(struct vctx *c, const struct node *n, uint64_t min, uint64_t *ret);
bool v_cpus(struct vctx *c, const struct node *n, double *ret);
/* A name (job, step): trimmed, one line, 1..MAX_NAME bytes; malloc'd. */
char *v_name(struct vctx *c, const struct node *n, const char *s);
/* [A-Za-z_][A-Za-z0-9_]* (upper-case only when `upper`). */
bool v_var_name_ok(const char *s, bool upper);
/* "npm-token" → "NPM_TOKEN", for suggestions; malloc'd. */
char *v_upper_fix(const char *s);
/* A workspace-relative path, cleaned ("./a//b/" → "a/b"); malloc'd or NULL. */
char *v_clean_path(struct vctx *c, const struct node *n, const char *s);

/* ---- validation --------------------------------------------------------------- */

/*
 * Validates a job mapping into a job. Substitutes ${{ matrix.KEY }} per
 * `mode`. Returns NULL if anything was reported.
 */
struct spec_job *job_from_node(const struct node *root, enum subst_mode mode,
                               const struct matrix *m, const struct combo *combo,
                               struct spec_diags *d);
/* Bytes of strings a job holds (for SPEC_MAX_EXPANDED). */
size_t job_size(const struct spec_job *job);
