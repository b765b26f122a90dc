/*
 * spec: the module's entry points. spec_load() parses a document, expands
 * its matrix and validates one job per combination; spec_job_to_json() and
 * spec_job_from_json() are the normalised JSON the API carries.
 *
 * Invariant (checked by fuzz/spec-fuzz.c): for every job spec_load()
 * returns, to_json → from_json → to_json is the identity, and the JSON text
 * loads back through spec_load() to the same job.
 */
#include "spec-internal.h"

static void jobs_push(struct spec_job ***v, size_t *n, size_t *cap, struct spec_job *job)
{
	*v = xgrow(*v, cap, *n + 1, sizeof(struct spec_job *));
	(*v)[(*n)++] = job;
}

static int load_tree(const struct node *root, struct spec_diags *d, struct spec_job ***ret_jobs,
                     size_t *ret_n)
{
	struct spec_job **jobs = NULL;
	size_t n = 0, cap = 0;
	bool failed = false;
	const struct node *mnode = map_get(root, "matrix");
	struct matrix m = {0};
	if (mnode && !(mnode->type == NODE_SCALAR && !mnode->bad &&
	               scalar_kind(mnode->text, mnode->plain) == SK_NULL)) {
		if (matrix_expand(mnode, d, &m) < 0) {
			failed = true;
			/* Still check the rest of the job, skipping values that use the matrix. */
			spec_job_free(job_from_node(root, SUBST_TOLERANT, &m, NULL, d));
		} else {
			size_t total = 0;
			for (size_t i = 0; i < m.n_combos && d->n <= SPEC_MAX_DIAGS; i++) {
				struct spec_job *job =
				    job_from_node(root, SUBST_COMBO, &m, &m.combos[i], d);
				if (!job) {
					failed = true;
					continue;
				}
				total += job_size(job);
				jobs_push(&jobs, &n, &cap, job);
				if (total > SPEC_MAX_EXPANDED) {
					spec_diags_add(
					    d, mnode->line, mnode->col, "matrix",
					    "the %zu jobs it expands to would hold more than "
					    "%d MiB; make the job or the matrix smaller",
					    m.n_combos, SPEC_MAX_EXPANDED >> 20);
					failed = true;
					break;
				}
			}
		}
	} else {
		struct spec_job *job = job_from_node(root, SUBST_NONE, NULL, NULL, d);
		if (job)
			jobs_push(&jobs, &n, &cap, job);
		else
			failed = true;
	}
	matrix_release(&m);
	if (failed) {
		spec_jobs_free(jobs, n);
		return -EINVAL;
	}
	*ret_jobs = jobs;
	*ret_n = n;
	return 0;
}

int spec_load(const char *file, const char *data, size_t len, struct spec_job ***ret_jobs,
              size_t *ret_n, struct spec_diags *diags)
{
	if (!diags->file)
		diags->file = xstrdup(file ? file : "<input>");
	size_t n0 = diags->n;
	struct node *root = NULL;
	int r = spec_parse_yaml(data, len, diags, &root);
	if (r < 0) {
		diags_sort(diags, n0);
		return r == -EFBIG ? -EFBIG : -EINVAL;
	}
	struct spec_job **jobs = NULL;
	size_t n = 0;
	r = load_tree(root, diags, &jobs, &n);
	node_free(root);
	diags_sort(diags, n0);
	if (r < 0)
		return r;
	if (diags->n != n0) { /* non-fatal parse errors: duplicate keys, aliases, tags */
		spec_jobs_free(jobs, n);
		return -EINVAL;
	}
	*ret_jobs = jobs;
	*ret_n = n;
	return 0;
}

/* ---- JSON ---------------------------------------------------------------------------------- */

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static json_t *strv_json(char *const *v, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_string(v[i]));
	return a;
}

static json_t *kv_json(const struct spec_kv *v, size_t n)
{
	json_t *o = json_object();
	for (size_t i = 0; i < n; i++)
		json_object_set_new(o, v[i].key, json_string(v[i].value));
	return o;
}

static json_t *duration_json(uint64_t ms)
{
	if (!ms)
		return json_null();
	char b[32];
	format_duration_ms(ms, b);
	return json_string(b);
}

static const char *network_name(enum spec_network n)
{
	switch (n) {
	case SPEC_NET_EGRESS: return "egress";
	case SPEC_NET_HOST: return "host";
	case SPEC_NET_NONE: break;
	}
	return "none";
}

static json_t *cpus_json(double cpus)
{
	/* Whole numbers as integers ("cpus": 2), fractions as reals (0.5). */
	if (cpus == (double)(int64_t)cpus)
		return json_integer((json_int_t)cpus);
	return json_real(cpus);
}

json_t *spec_job_to_json(const struct spec_job *job)
{
	json_t *steps = json_array();
	for (size_t i = 0; i < job->n_steps; i++) {
		const struct spec_step *st = &job->steps[i];
		json_t *s = json_object();
		json_object_set_new(s, "name", json_string(st->name));
		json_object_set_new(s, "run", json_string(st->run));
		json_object_set_new(s, "shell", json_string(st->shell));
		json_object_set_new(s, "env", kv_json(st->env, st->n_env));
		json_object_set_new(s, "timeout", duration_json(st->timeout_ms));
		json_object_set_new(s, "working-directory", str_or_null(st->working_directory));
		json_object_set_new(s, "continue-on-error", json_boolean(st->continue_on_error));
		json_array_append_new(steps, s);
	}
	json_t *caches = json_array();
	for (size_t i = 0; i < job->n_caches; i++)
		json_array_append_new(
		    caches, json_pack("{s:s, s:o}", "key", job->caches[i].key, "paths",
		                      strv_json(job->caches[i].paths, job->caches[i].n_paths)));
	json_t *res = json_object();
	json_object_set_new(res, "cpus", cpus_json(job->resources.cpus));
	json_object_set_new(res, "memory", json_integer((json_int_t)job->resources.memory));
	json_object_set_new(res, "disk", json_integer((json_int_t)job->resources.disk));
	json_object_set_new(res, "pids", json_integer(job->resources.pids));
	json_object_set_new(res, "gpus", json_integer(job->resources.gpus));

	json_t *o = json_object();
	json_object_set_new(o, "name", json_string(job->name));
	json_object_set_new(o, "runs-on", strv_json(job->runs_on, job->n_runs_on));
	json_object_set_new(o, "image", str_or_null(job->image));
	json_object_set_new(o, "resources", res);
	json_object_set_new(o, "timeout", duration_json(job->timeout_ms));
	json_object_set_new(o, "retries", json_integer(job->retries));
	json_object_set_new(o, "priority", json_integer(job->priority));
	json_object_set_new(o, "env", kv_json(job->env, job->n_env));
	json_object_set_new(o, "secrets", strv_json(job->secrets, job->n_secrets));
	json_object_set_new(o, "network", json_string(network_name(job->network)));
	json_object_set_new(o, "steps", steps);
	json_object_set_new(o, "artifacts", strv_json(job->artifacts, job->n_artifacts));
	json_object_set_new(o, "cache", caches);
	json_object_set_new(o, "matrix-values", kv_json(job->matrix, job->n_matrix));
	return o;
}

int spec_job_from_json(const json_t *obj, struct spec_job **ret, struct kiln_err *err)
{
	struct spec_diags d;
	spec_diags_init(&d, "job");
	struct node *root = NULL;
	struct spec_job *job = NULL;
	if (spec_node_from_json(obj, &d, &root) >= 0) {
		const struct node *m = map_get(root, "matrix");
		if (m && !(m->type == NODE_SCALAR && scalar_kind(m->text, m->plain) == SK_NULL))
			spec_diags_add(
			    &d, 0, 0, "matrix",
			    "a single job has no matrix; load the spec with spec_load()");
		else
			job = job_from_node(root, SUBST_NONE, NULL, NULL, &d);
	}
	node_free(root);
	if (job && d.n == 0) {
		spec_diags_release(&d);
		*ret = job;
		return 0;
	}
	spec_job_free(job);
	int r;
	if (d.n == 0)
		r = kiln_err_set(err, -EINVAL, "not a valid job");
	else if (d.v[0].path[0])
		r = kiln_err_set(err, -EINVAL, "%s: %s%s", d.v[0].path, d.v[0].msg,
		                 d.n > 1 ? " (and more errors)" : "");
	else
		r = kiln_err_set(err, -EINVAL, "%s%s", d.v[0].msg,
		                 d.n > 1 ? " (and more errors)" : "");
	spec_diags_release(&d);
	return r;
}
