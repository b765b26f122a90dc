/*
 * spec: the job spec users write (YAML, or the same as JSON) and the label
 * grammar. Parses, validates and expands a document into normalised jobs;
 * every error names file:line:col and the field path. Knows nothing about
 * HTTP, stores or sandboxes. Reference: docs/job-spec.md.
 *
 * Invariants:
 *  - hostile input is bounded: SPEC_MAX_BYTES, SPEC_MAX_DEPTH, no YAML
 *    aliases expanded, SPEC_MAX_MATRIX jobs per document;
 *  - the JSON a job normalises to is itself a valid spec that loads back to
 *    the same JSON (round trip is the identity; the fuzz target checks it);
 *  - a failed load returns every error of the document, not only the first.
 */
#pragma once

#include "base/base.h"

#include <jansson.h>

#define SPEC_MAX_BYTES    (1024 * 1024) /* a spec file or request body */
#define SPEC_MAX_DEPTH    64            /* nesting of mappings/sequences */
#define SPEC_MAX_MATRIX   256           /* jobs one document may expand to */
#define SPEC_MAX_DIAGS    100           /* errors reported per document */
#define SPEC_MAX_NODES    100000        /* values (scalars, mappings, lists) per document */
#define SPEC_MAX_EXPANDED (16 << 20)    /* bytes of strings all expanded jobs may hold */

/* ---- diagnostics ---------------------------------------------------------- */

struct spec_diag {
	int line, col; /* 1-based; 0 when the error is about the whole document */
	char *path;    /* field path: "resources.memory", "steps[2].run"; "" = document */
	char *msg;     /* what was wrong, what was expected, the fix if obvious */
};

struct spec_diags {
	char *file; /* the name used in messages ("job.yaml", "<stdin>", "request body") */
	struct spec_diag *v;
	size_t n, cap;
};

/* Sets up an empty list whose messages name `file`. */
void spec_diags_init(struct spec_diags *d, const char *file);
void spec_diags_release(struct spec_diags *d);
/*
 * Adds one diagnostic (line/col 0 = the whole document; path "" = no field).
 * An exact duplicate is dropped; past SPEC_MAX_DIAGS one final "too many
 * errors" line is added and later ones are dropped.
 */
void spec_diags_add(struct spec_diags *d, int line, int col, const char *path, const char *fmt, ...)
    KILN_PRINTF(5, 6);
/*
 * Appends one line per diagnostic: "file:line:col: path: msg\n"; the parts
 * that are unknown are left out ("file: msg" for a whole-document error).
 */
void spec_diags_format(const struct spec_diags *d, struct buf *out);
/* [{"line":..,"col":..,"path":..,"message":..}, ...] for API error bodies. */
json_t *spec_diags_to_json(const struct spec_diags *d);

/* ---- the job -------------------------------------------------------------- */

enum spec_network {
	SPEC_NET_NONE,   /* only loopback (default) */
	SPEC_NET_EGRESS, /* outbound connections allowed */
	SPEC_NET_HOST,   /* the host's network namespace */
};

struct spec_kv {
	char *key;
	char *value;
};

struct spec_resources {
	double cpus;     /* 0 = no limit; fractional allowed */
	uint64_t memory; /* bytes; 0 = no limit */
	uint64_t disk;   /* bytes; 0 = no limit */
	int64_t pids;    /* 0 = default of the agent */
	int64_t gpus;    /* 0 = none */
};

struct spec_step {
	char *name; /* default: the first line of run */
	char *run;  /* the script */
	char
	    *shell; /* "bash" (default), "sh", "python" or a template with {0}; spec_shell_argv() */
	struct spec_kv *env;
	size_t n_env;
	uint64_t timeout_ms;     /* 0 = bounded by the job's timeout only */
	char *working_directory; /* relative to the workspace; NULL = workspace */
	bool continue_on_error;
};

struct spec_cache {
	char *key;
	char **paths;
	size_t n_paths;
};

struct spec_job {
	char *name;
	char **runs_on; /* labels, lower-cased, without duplicates, in written order */
	size_t n_runs_on;
	char *image; /* NULL = the agent's host rootfs */
	struct spec_resources resources;
	uint64_t timeout_ms; /* always set (a default applies) */
	int64_t retries;
	int64_t priority;
	struct spec_kv *env; /* sorted by key */
	size_t n_env;
	char **secrets; /* names only, sorted */
	size_t n_secrets;
	enum spec_network network;
	struct spec_step *steps; /* at least one */
	size_t n_steps;
	char **artifacts; /* paths and globs relative to the workspace */
	size_t n_artifacts;
	struct spec_cache *caches;
	size_t n_caches;
	/* The combination this job was expanded from (JSON "matrix-values"). */
	struct spec_kv *matrix;
	size_t n_matrix;
};

/*
 * Loads a document: parses (YAML 1.1 via libyaml; JSON is accepted), validates
 * every field and expands the matrix. `file` names the document in messages.
 * On success *ret_jobs is an array of *ret_n (>= 1) jobs the caller frees with
 * spec_jobs_free(). On failure returns -EINVAL (or -EFBIG for > SPEC_MAX_BYTES)
 * and fills `diags` with every error found; nothing is returned.
 */
int spec_load(const char *file, const char *data, size_t len, struct spec_job ***ret_jobs,
              size_t *ret_n, struct spec_diags *diags);

void spec_job_free(struct spec_job *job);
void spec_jobs_free(struct spec_job **jobs, size_t n);

/* The normalised JSON of one job (new reference). */
json_t *spec_job_to_json(const struct spec_job *job);

/*
 * Reads a normalised job back (as the agent does with what the API carries).
 * Validates like spec_load; -EINVAL with err set when the JSON is not a valid
 * single job.
 */
int spec_job_from_json(const json_t *obj, struct spec_job **ret, struct kiln_err *err);

/* ---- labels --------------------------------------------------------------- */

/*
 * The label grammar: a plain label ("docker", "gpu", "cuda-12") or key:value
 * ("gpu-count:2", "image:node:18-alpine": the key ends at the first ':').
 * Characters: letters, digits, '-', '_', '.', '/', '+', ':' after the key;
 * 1..128 bytes. Matching is case-insensitive.
 */
struct spec_label {
	char *key;   /* lower-cased */
	char *value; /* NULL for a plain label; lower-cased */
};

#define SPEC_LABEL_MAX 128

int spec_label_parse(const char *s, struct spec_label *ret, struct kiln_err *err);
void spec_label_release(struct spec_label *l);
/* Checks the grammar only. */
bool spec_label_valid(const char *s);
/*
 * Whether a spec's text may carry code point cp: everything but NUL, DEL,
 * C1 controls, the line separators U+2028/U+2029, the BOM and U+FFFE/U+FFFF
 * (what JSON carries and YAML would not read back unchanged). C0 controls
 * are allowed here; names and some fields refuse them on their own.
 */
bool spec_char_ok(uint32_t cp);
/* Case-insensitive (ASCII) equality of two labels. */
bool spec_label_eq(const char *a, const char *b);

/* ---- shells --------------------------------------------------------------- */

/*
 * The argv a step's shell runs its script with, the script being a file at
 * `script_path`: "bash" → bash --noprofile --norc -eo pipefail PATH, "sh" →
 * sh -e PATH, "python" → python3 PATH; a template such as "perl -w {0}" is
 * split at spaces and {0} replaced by the path. *ret_argv is NULL-terminated;
 * free it with spec_argv_free(). -EINVAL if the shell is not valid.
 */
int spec_shell_argv(const char *shell, const char *script_path, char ***ret_argv);
void spec_argv_free(char **argv);
