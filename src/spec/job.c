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

/* ---- lists -------------------------------------------------------------------------------- */

/* A string or a list of strings: calls fn for each with the path set. */
typedef void (*item_fn)(struct vctx *c, const struct node *n, const char *s, void *ud);

static void each_string(struct vctx *c, const struct node *n, size_t max, const char *item,
                        const char *example, item_fn fn, void *ud)
{
	if (v_is_null(n))
		return;
	if (n->type == NODE_SCALAR) {
		const char *s = v_string(c, n, example);
		if (s)
			fn(c, n, s, ud);
		return;
	}
	if (n->type != NODE_SEQ) {
		if (n->bad)
			c->failed = true;
		else
			v_err(c, n, "expected %s or a list of them, got %s", item,
			      node_type_name(n));
		return;
	}
	if (n->n > max) {
		v_err(c, n, "has %zu entries; the limit is %zu", n->n, max);
		return;
	}
	for (size_t i = 0; i < n->n; i++) {
		size_t old = v_push_index(c, i);
		const struct node *it = n->kids[i];
		if (it->type != NODE_SCALAR) {
			if (it->bad)
				c->failed = true;
			else
				v_err(c, it, "expected %s, got %s", item, node_type_name(it));
		} else {
			const char *s = v_string(c, it, example);
			if (s)
				fn(c, it, s, ud);
		}
		v_pop(c, old);
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
		if (c->d->n > SPEC_MAX_DIAGS) { /* a map of 50000 typos: stop early */
			c->failed = true;
			return false;
		}
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
			v_err(c, k, "unknown key %s: %s", v_quote(c, k->text), hint);
		} else if (best) {
			v_err(c, k, "unknown key %s (did you mean %s?)", v_quote(c, k->text),
			      v_quote(c, best));
		} else {
			struct buf list = BUF_INIT;
			for (size_t j = 0; j < n_keys; j++)
				buf_printf(&list, "%s%s", j ? ", " : "", keys[j]);
			v_err(c, k, "unknown key %s (expected one of: %s)", v_quote(c, k->text),
			      list.data);
			buf_release(&list);
		}
	}
	return ok;
}

/* Looks up `key`; runs the push/pop of its path around the caller's use. */
#define WITH_KEY(c, map, key, var)                                            \
	for (const struct node *var = map_get((map), (key)); var; var = NULL) \
		for (size_t _old = v_push_key((c), (key)), _once = 1; _once;  \
		     v_pop((c), _old), _once = 0)

/* ---- env ----------------------------------------------------------------------------------- */

static int cmp_kv(const void *a, const void *b)
{
	return strcmp(((const struct spec_kv *)a)->key, ((const struct spec_kv *)b)->key);
}

static void parse_env(struct vctx *c, const struct node *n, struct spec_kv **ret, size_t *ret_n)
{
	if (v_is_null(n))
		return;
	if (n->type != NODE_MAP) {
		v_err(c, n, "expected a mapping of NAME: value, got %s", node_type_name(n));
		return;
	}
	if (n->n / 2 > MAX_ENV) {
		v_err(c, n, "has %zu variables; the limit is %d", n->n / 2, MAX_ENV);
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
		if (!v_var_name_ok(k->text, false) || strlen(k->text) > MAX_VAR_NAME) {
			v_err(c, k,
			      "%s is not a valid variable name (letters, digits and _, not "
			      "starting with a digit)",
			      v_quote(c, k->text));
			continue;
		}
		if (startswith(k->text, "KILN_")) {
			v_err(c, k, "%s: names starting with KILN_ are reserved for kiln",
			      v_quote(c, k->text));
			continue;
		}
		size_t old = v_push_key(c, k->text);
		struct val sv;
		if (v_scalar(c, val, "a string", &sv)) {
			if (sv.kind == SK_NULL)
				v_err(c, val, "has no value; write %s: \"\" for an empty string",
				      k->text);
			else
				v[count++] = (struct spec_kv){xstrdup(k->text), xstrdup(sv.text)};
		}
		v_pop(c, old);
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
	if (strlen(shell) > MAX_SHELL || v_has_control(shell))
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

static const char *const step_keys[] = {
    "name", "run", "shell", "env", "timeout", "working-directory", "continue-on-error"};

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
	if (n->type == NODE_SCALAR && !n->bad && !v_is_null(n)) {
		v_err(c, n, "a step is a mapping; write - run: %s", v_quote(c, n->text));
		return;
	}
	if (n->type != NODE_MAP) {
		if (n->bad)
			c->failed = true;
		else
			v_err(c, n, "expected a step (a mapping with run:), got %s",
			      node_type_name(n));
		return;
	}
	check_keys(c, n, step_keys, ARRAY_SIZE(step_keys));
	if (!map_get(n, "run"))
		v_err(c, n, "missing required key \"run\" (the commands of the step)");
	WITH_KEY(c, n, "run", v)
	{
		const char *s = v_string(c, v, "run: make test");
		if (s) {
			const char *t = s;
			while (*t == ' ' || *t == '\t' || *t == '\n' || *t == '\r')
				t++;
			if (!*t)
				v_err(c, v, "is empty; write the commands to run");
			else
				st->run = xstrdup(s);
		}
	}
	WITH_KEY(c, n, "name", v)
	{
		const char *s = v_is_null(v) ? NULL : v_string(c, v, "name: test");
		if (s)
			st->name = v_name(c, v, s);
	}
	if (!st->name && st->run)
		st->name = default_step_name(st->run);
	WITH_KEY(c, n, "shell", v)
	{
		const char *s = v_is_null(v) ? NULL : v_string(c, v, "shell: bash");
		if (s && !shell_ok(s)) {
			bool word = v_path_word(s);
			v_err(c, v,
			      "%s is not a known shell (bash, sh, python); for another program "
			      "write a command with {0} for the script, e.g. \"%s {0}\"",
			      v_quote(c, s), word ? s : "perl");
		} else if (s) {
			st->shell = xstrdup(s);
		}
	}
	if (!st->shell)
		st->shell = xstrdup("bash");
	WITH_KEY(c, n, "env", v) parse_env(c, v, &st->env, &st->n_env);
	WITH_KEY(c, n, "timeout", v)
	{
		if (!v_is_null(v))
			v_duration(c, v, &st->timeout_ms);
	}
	WITH_KEY(c, n, "working-directory", v)
	{
		const char *s = v_is_null(v) ? NULL : v_string(c, v, "working-directory: src");
		char *p = s ? v_clean_path(c, v, s) : NULL;
		if (p && streq(p, "."))
			free(p);
		else
			st->working_directory = p;
	}
	WITH_KEY(c, n, "continue-on-error", v)
	{
		if (!v_is_null(v))
			v_bool(c, v, &st->continue_on_error);
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
			v_err(c, n, "expected a list of steps (- run: ...), got %s",
			      node_type_name(n));
		return;
	}
	if (n->n == 0) {
		v_err(c, n, "is empty; a job needs at least one step (- run: ...)");
		return;
	}
	if (n->n > MAX_STEPS) {
		v_err(c, n, "has %zu steps; the limit is %d", n->n, MAX_STEPS);
		return;
	}
	job->steps = xcalloc(n->n, sizeof(*job->steps));
	job->n_steps = n->n;
	for (size_t i = 0; i < n->n; i++) {
		size_t old = v_push_index(c, i);
		parse_step(c, n->kids[i], &job->steps[i]);
		v_pop(c, old);
	}
}

/* ---- the other fields ------------------------------------------------------------------------ */

static void add_label(struct vctx *c, const struct node *n, const char *s, void *ud)
{
	struct strv *sv = ud;
	struct spec_label l;
	struct kiln_err e;
	if (spec_label_parse(s, &l, &e) < 0) {
		v_err(c, n, "%s", e.msg);
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
	if (v_is_null(n))
		return;
	const char *s = v_string(c, n, "image: debian:12");
	if (!s)
		return;
	bool ok =
	    *s && strlen(s) <= MAX_IMAGE &&
	    ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9'));
	for (const char *p = s; ok && *p; p++)
		ok = image_char(*p) && !(p[0] == '/' && p[1] == '/');
	if (!ok || s[strlen(s) - 1] == '/' || s[strlen(s) - 1] == ':') {
		v_err(c, n, "%s is not an image reference (e.g. debian:12, ghcr.io/org/app:1.2)",
		      v_quote(c, s));
		return;
	}
	job->image = xstrdup(s);
}

static const char *const resource_keys[] = {"cpus", "memory", "disk", "pids", "gpus"};

static void parse_resources(struct vctx *c, const struct node *n, struct spec_resources *r)
{
	if (v_is_null(n))
		return;
	if (n->type != NODE_MAP) {
		if (n->bad)
			c->failed = true;
		else
			v_err(c, n,
			      "expected a mapping (cpus:, memory:, disk:, pids:, gpus:), got %s",
			      node_type_name(n));
		return;
	}
	check_keys(c, n, resource_keys, ARRAY_SIZE(resource_keys));
	WITH_KEY(c, n, "cpus", v) if (!v_is_null(v)) v_cpus(c, v, &r->cpus);
	WITH_KEY(c, n, "memory", v) if (!v_is_null(v)) v_size(c, v, MIN_MEMORY, &r->memory);
	WITH_KEY(c, n, "disk", v) if (!v_is_null(v)) v_size(c, v, MIN_DISK, &r->disk);
	WITH_KEY(c, n, "pids", v) if (!v_is_null(v)) v_int(c, v, 0, MAX_PIDS, &r->pids);
	WITH_KEY(c, n, "gpus", v) if (!v_is_null(v)) v_int(c, v, 0, MAX_GPUS, &r->gpus);
}

struct secrets_ud {
	struct strv sv;
	const struct spec_job *job;
};

static void add_secret(struct vctx *c, const struct node *n, const char *s, void *ud)
{
	struct secrets_ud *u = ud;
	if (!v_var_name_ok(s, true) || strlen(s) > MAX_VAR_NAME) {
		_cleanup_free_ char *fix = v_upper_fix(s);
		if (v_var_name_ok(fix, true))
			v_err(c, n,
			      "%s is not a valid secret name (upper-case letters, digits and _; "
			      "did you mean %s?)",
			      v_quote(c, s), v_quote(c, fix));
		else
			v_err(c, n,
			      "%s is not a valid secret name (upper-case letters, digits and _, "
			      "not starting with a digit)",
			      v_quote(c, s));
		return;
	}
	if (startswith(s, "KILN_")) {
		v_err(c, n, "%s: names starting with KILN_ are reserved for kiln", v_quote(c, s));
		return;
	}
	if (strv_has(&u->sv, s)) {
		v_err(c, n, "%s is listed twice", v_quote(c, s));
		return;
	}
	for (size_t i = 0; i < u->job->n_env; i++)
		if (streq(u->job->env[i].key, s)) {
			v_err(c, n,
			      "%s is also set in env; a secret and a variable cannot share a name",
			      v_quote(c, s));
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
	char *p = v_clean_path(c, n, s);
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
	if (v_is_null(n))
		return;
	struct val v;
	if (!v_scalar(c, n, "none, egress or host", &v))
		return;
	for (size_t i = 0; i < ARRAY_SIZE(modes); i++)
		if (streq(v.text, modes[i])) {
			job->network = (enum spec_network)i;
			return;
		}
	const char *best = closest_word(v.text, modes, ARRAY_SIZE(modes));
	if (best)
		v_err(c, n, "%s is not a network mode (did you mean %s?)", v_quote(c, v.text),
		      v_quote(c, best));
	else
		v_err(c, n, "%s is not a network mode (none, egress or host)", v_quote(c, v.text));
}

static const char *const cache_keys[] = {"key", "paths"};

static void parse_cache_entry(struct vctx *c, const struct node *n, struct spec_cache *ce)
{
	if (n->type != NODE_MAP) {
		if (n->bad)
			c->failed = true;
		else
			v_err(c, n, "expected a cache (a mapping with key: and paths:), got %s",
			      node_type_name(n));
		return;
	}
	check_keys(c, n, cache_keys, ARRAY_SIZE(cache_keys));
	if (!map_get(n, "key"))
		v_err(c, n, "missing required key \"key\" (e.g. key: deps-v1)");
	if (!map_get(n, "paths"))
		v_err(c, n, "missing required key \"paths\" (e.g. paths: [node_modules])");
	WITH_KEY(c, n, "key", v)
	{
		const char *s = v_string(c, v, "key: deps-v1");
		bool ok = s && *s && strlen(s) <= MAX_CACHE_KEY;
		for (const char *p = s; ok && *p; p++)
			ok = (unsigned char)*p > 0x20;
		if (s && !ok)
			v_err(c, v, "%s is not a cache key (1 to %d characters, no spaces)",
			      v_quote(c, s), MAX_CACHE_KEY);
		else if (s)
			ce->key = xstrdup(s);
	}
	WITH_KEY(c, n, "paths", v)
	{
		struct strv sv = {0};
		each_string(c, v, MAX_CACHE_PATHS, "a path", "node_modules", add_path, &sv);
		if (sv.n == 0 && !c->failed)
			v_err(c, v, "is empty; list the paths to cache (e.g. [node_modules])");
		ce->paths = sv.v;
		ce->n_paths = sv.n;
	}
}

static void parse_cache(struct vctx *c, const struct node *n, struct spec_job *job)
{
	if (v_is_null(n))
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
			v_err(c, n, "expected a cache (key:, paths:) or a list of them, got %s",
			      node_type_name(n));
		return;
	}
	if (n->n > MAX_CACHES) {
		v_err(c, n, "has %zu caches; the limit is %d", n->n, MAX_CACHES);
		return;
	}
	job->caches = xcalloc(n->n + 1, sizeof(*job->caches));
	job->n_caches = n->n;
	for (size_t i = 0; i < n->n; i++) {
		size_t old = v_push_index(c, i);
		parse_cache_entry(c, n->kids[i], &job->caches[i]);
		for (size_t j = 0; j < i && job->caches[i].key; j++)
			if (job->caches[j].key && streq(job->caches[j].key, job->caches[i].key))
				v_err(c, n->kids[i], "cache key %s is used twice",
				      v_quote(c, job->caches[i].key));
		v_pop(c, old);
	}
}

/* A matrix-values mapping written by hand (or carried in normalised JSON). */
static void parse_matrix_values(struct vctx *c, const struct node *n, struct spec_job *job)
{
	if (v_is_null(n))
		return;
	if (c->mode != SUBST_NONE) {
		v_err(c, n, "is set by the matrix expansion; remove it");
		return;
	}
	if (n->type != NODE_MAP) {
		if (n->bad)
			c->failed = true;
		else
			v_err(c, n, "expected a mapping of matrix key: value, got %s",
			      node_type_name(n));
		return;
	}
	if (n->n / 2 > MAX_MATRIX_VALUES) {
		v_err(c, n, "has %zu entries; the limit is %d", n->n / 2, MAX_MATRIX_VALUES);
		return;
	}
	job->matrix = xcalloc(n->n / 2 + 1, sizeof(*job->matrix));
	for (size_t i = 0; i + 1 < n->n; i += 2) {
		const struct node *k = n->kids[i], *v = n->kids[i + 1];
		if (k->bad) {
			c->failed = true;
			continue;
		}
		size_t old = v_push_key(c, k->text);
		bool ok =
		    *k->text && strlen(k->text) <= 64 && !(k->text[0] >= '0' && k->text[0] <= '9');
		for (const char *p = k->text; ok && *p; p++)
			ok = v_key_char(*p);
		struct val sv;
		if (!ok)
			v_err(c, k, "%s is not a matrix key (letters, digits, _ and -)",
			      v_quote(c, k->text));
		else if (v_scalar(c, v, "a string", &sv)) {
			if (sv.kind == SK_NULL)
				v_err(c, v, "has no value");
			else
				job->matrix[job->n_matrix++] =
				    (struct spec_kv){xstrdup(k->text), xstrdup(sv.text)};
		}
		v_pop(c, old);
	}
}

/* ---- the job -------------------------------------------------------------------------------- */

static const char *const job_keys[] = {
    "name",    "runs-on", "image", "resources", "timeout", "retries", "priority",      "env",
    "secrets", "network", "steps", "artifacts", "cache",   "matrix",  "matrix-values",
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
		v_err(c, root, "missing required key \"name\" (e.g. name: build)");
		return;
	}
	size_t old = v_push_key(c, "name");
	const char *s = v_string(c, n, "name: build");
	if (s && c->mode == SUBST_COMBO && !strstr(n->text, "${{") && c->combo->n > 0) {
		struct buf b = BUF_INIT;
		buf_printf(&b, "%s (", s);
		for (size_t i = 0; i < c->combo->n; i++)
			buf_printf(&b, "%s%s", i ? ", " : "", c->combo->v[i].value);
		buf_putc(&b, ')');
		s = v_keep(c, buf_steal(&b));
	}
	if (s)
		job->name = v_name(c, n, s);
	v_pop(c, old);
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
	WITH_KEY(c, root, "timeout", v) if (!v_is_null(v)) v_duration(c, v, &job->timeout_ms);
	WITH_KEY(c, root, "retries", v)
	if (!v_is_null(v)) v_int(c, v, 0, MAX_RETRIES, &job->retries);
	WITH_KEY(c, root, "priority", v)
	{
		if (!v_is_null(v))
			v_int(c, v, -MAX_PRIORITY, MAX_PRIORITY, &job->priority);
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
		v_err(c, root, "missing required key \"steps\" (e.g. steps: [{run: make test}])");
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
		if (v_is_null(root))
			v_err(&c, root,
			      "the document is empty; a job spec needs at least name and "
			      "steps (see docs/job-spec.md)");
		else
			v_err(&c, root, "a job spec is a mapping (name:, steps:, ...), not %s",
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
