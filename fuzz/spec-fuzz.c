/*
 * spec-fuzz: spec_load() on arbitrary bytes. Properties (abort otherwise):
 *  - a rejected input has at least one diagnostic, and each is one line;
 *  - an accepted input gives 1..SPEC_MAX_MATRIX jobs, and each job's
 *    normalised JSON is a fixed point: to_json → from_json → to_json is the
 *    identity, and the JSON text loads back through spec_load() to one job
 *    with the same JSON;
 *  - the label grammar agrees with itself on the input as a label.
 * Leaks and memory errors are caught by the sanitizers the target is built
 * with; time and memory by libFuzzer's -timeout and -rss_limit_mb.
 */
#include "spec/spec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_diags(const struct spec_diags *d)
{
	if (d->n == 0 || d->n > SPEC_MAX_DIAGS + 1)
		abort();
	for (size_t i = 0; i < d->n; i++)
		if (strchr(d->v[i].msg, '\n') || strchr(d->v[i].path, '\n') || !d->v[i].msg[0])
			abort();
	struct buf b = BUF_INIT;
	spec_diags_format(d, &b);
	size_t lines = 0;
	for (size_t i = 0; i < b.len; i++)
		lines += b.data[i] == '\n';
	if (lines != d->n)
		abort();
	buf_release(&b);
}

static void check_roundtrip(const struct spec_job *job)
{
	json_t *j1 = spec_job_to_json(job);
	struct spec_job *back = NULL;
	struct kiln_err err = {0};
	if (spec_job_from_json(j1, &back, &err) < 0) {
		fprintf(stderr, "from_json refused a normalised job: %s\n", err.msg);
		abort();
	}
	json_t *j2 = spec_job_to_json(back);
	if (!json_equal(j1, j2))
		abort();
	char *text = json_dumps(j1, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
	struct spec_diags d = {0};
	struct spec_job **again = NULL;
	size_t n = 0;
	if (spec_load("normalised.json", text, strlen(text), &again, &n, &d) < 0 || n != 1) {
		struct buf b = BUF_INIT;
		spec_diags_format(&d, &b);
		fprintf(stderr, "normalised JSON does not load back:\n%s%s\n", b.data ? b.data : "",
		        text);
		abort();
	}
	json_t *j3 = spec_job_to_json(again[0]);
	if (!json_equal(j1, j3))
		abort();
	json_decref(j3);
	spec_jobs_free(again, n);
	spec_diags_release(&d);
	free(text);
	json_decref(j2);
	json_decref(j1);
	spec_job_free(back);
}

static void check_label(const uint8_t *data, size_t size)
{
	if (size > 2 * SPEC_LABEL_MAX)
		return;
	char *s = xstrndup((const char *)data, size);
	struct spec_label l = {0};
	struct kiln_err err = {0};
	int r = spec_label_parse(s, &l, &err);
	if ((r == 0) != spec_label_valid(s) || (r < 0 && !err.msg[0]))
		abort();
	if (r == 0) {
		for (const char *p = l.key; *p; p++)
			if (*p >= 'A' && *p <= 'Z')
				abort();
		if (!spec_label_eq(s, l.value ? s : l.key))
			abort();
	}
	spec_label_release(&l);
	free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct spec_diags d = {0};
	struct spec_job **jobs = NULL;
	size_t n = 0;
	int r = spec_load("fuzz.yaml", (const char *)data, size, &jobs, &n, &d);
	if (r < 0) {
		if (jobs || n)
			abort();
		check_diags(&d);
	} else {
		if (d.n != 0 || n == 0 || n > SPEC_MAX_MATRIX)
			abort();
		for (size_t i = 0; i < n; i++)
			check_roundtrip(jobs[i]);
	}
	spec_jobs_free(jobs, n);
	spec_diags_release(&d);
	check_label(data, size);
	return 0;
}
