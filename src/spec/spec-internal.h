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
	size_t n_axes;        /* keys[0..n_axes) are the axes */
	char ***axis_values;  /* per axis */
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

/* ---- validation --------------------------------------------------------------- */

enum subst_mode {
	SUBST_NONE,     /* no matrix: ${{ ... }} is an error */
	SUBST_COMBO,    /* substitute from `combo` */
	SUBST_TOLERANT, /* the matrix is invalid: skip values that use it */
};

/*
 * Validates a job mapping into a job. Substitutes ${{ matrix.KEY }} per
 * `mode`. Returns NULL if anything was reported.
 */
struct spec_job *job_from_node(const struct node *root, enum subst_mode mode,
			       const struct matrix *m, const struct combo *combo,
			       struct spec_diags *d);
/* Bytes of strings a job holds (for SPEC_MAX_EXPANDED). */
size_t job_size(const struct spec_job *job);
