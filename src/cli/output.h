/*
 * output: what the client verbs share — connecting (flags, env, config
 * file), output formats (table, wide, json, yaml) and small formatting.
 */
#pragma once

#include "cli.h"
#include "client/client.h"

#include <jansson.h>

enum cli_output { OUT_TABLE, OUT_WIDE, OUT_JSON, OUT_YAML };

/* "table|wide|json|yaml"; -EINVAL otherwise. */
int cli_output_parse(const char *s, enum cli_output *ret);

/* Connects as flags/env/config say; prints the error and returns NULL. */
struct kiln_client *cli_connect(const char *cmd, const char *server, const char *token);

/* Prints a server/transport error ("kiln CMD: message") and returns EXIT_FAIL. */
int cli_client_fail(const char *cmd, const struct kiln_err *err);

void cli_print_json(FILE *f, const json_t *v);
/* YAML 1.2 (block style; strings quoted when they would read as something else). */
void cli_print_yaml(FILE *f, const json_t *v);

/* A table: columns sized to their widest cell, two spaces apart. */
struct table {
	size_t ncols;
	char **cells; /* row-major, header first */
	size_t n, cap;
};

void table_init(struct table *t, size_t ncols, ...);
void table_add(struct table *t, ...); /* ncols strings (NULL prints "-") */
void table_print(struct table *t, FILE *f);
void table_release(struct table *t);

/*
 * Writes a job's log to out: attempt 0 = the current one (the next one when
 * following a queued job); with follow, until the job ends, moving on to the
 * next attempt when the job is queued again.
 */
int cli_follow_log(struct kiln_client *c, int64_t id, int64_t attempt, uint64_t offset,
		   bool follow, FILE *out, struct kiln_err *err);

/*
 * Downloads artifact `art` (an entry of GET .../artifacts) of job to `out`
 * (a path; "-" for stdout; NULL: its base name), checking its sha256. Prints
 * "OUT: N bytes, sha256 H" (or the error) to stderr. Returns an exit code.
 */
int cli_download_artifact(struct kiln_client *cl, const char *job, const json_t *art,
			  const char *out);

/* "5s", "3m", "2h", "4d" since the RFC 3339 time `ts` (JSON string or null: "-"). */
void cli_age(const json_t *ts, char out[32]);
/* kiln describe job: prints the "Usage:" section of a job (cmd-usage.c). */
void cli_describe_usage(const json_t *job);

/* Integer, string, or "-" for null/missing, as text. */
const char *cli_str(const json_t *v, char buf[64]);
