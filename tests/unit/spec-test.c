/* Unit tests of src/spec through its public header: parsing, validation,
 * messages, limits, the matrix, the normalised JSON and labels. */
#include "tap.h"
#include "spec/spec.h"

/* Loads a document; returns the formatted diagnostics ("" when valid). */
static char *load_errors(const char *yaml, size_t len, size_t *ret_n_jobs)
{
	struct spec_diags d = {0};
	struct spec_job **jobs = NULL;
	size_t n = 0;
	int r = spec_load("t.yaml", yaml, len, &jobs, &n, &d);
	struct buf b = BUF_INIT;
	buf_puts(&b, "");
	spec_diags_format(&d, &b);
	if (r >= 0) {
		CHECK_EQ(d.n, 0);
		CHECK(n >= 1);
	} else {
		CHECK(d.n > 0);
		CHECK(jobs == NULL);
	}
	if (ret_n_jobs)
		*ret_n_jobs = r >= 0 ? n : 0;
	spec_jobs_free(jobs, n);
	spec_diags_release(&d);
	return buf_steal(&b);
}

static char *errs(const char *yaml)
{
	return load_errors(yaml, strlen(yaml), NULL);
}

/* Checks that loading `yaml` gives exactly the diagnostic lines `want`. */
#define CHECK_ERRS(yaml, want)         \
	do {                           \
		char *_e = errs(yaml); \
		CHECK_STREQ(_e, want); \
		free(_e);              \
	} while (0)

/* Loads a valid document and returns its jobs as a JSON array. */
static json_t *load_json(const char *yaml)
{
	struct spec_diags d = {0};
	struct spec_job **jobs = NULL;
	size_t n = 0;
	json_t *a = json_array();
	if (spec_load("t.yaml", yaml, strlen(yaml), &jobs, &n, &d) < 0) {
		struct buf b = BUF_INIT;
		spec_diags_format(&d, &b);
		printf("# unexpected errors:\n# %s", b.data);
		buf_release(&b);
		tap_failed = 1;
	}
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, spec_job_to_json(jobs[i]));
	spec_jobs_free(jobs, n);
	spec_diags_release(&d);
	return a;
}

static const char *jstr(json_t *o, const char *path)
{
	json_t *v = json_object_get(o, path);
	return json_is_string(v) ? json_string_value(v) : NULL;
}

#define MIN_JOB "name: build\nsteps:\n  - run: make\n"

/* ---- defaults and normal form --------------------------------------------------- */

TEST(minimal_job_gets_defaults)
{
	json_t *a = load_json(MIN_JOB);
	CHECK_EQ(json_array_size(a), 1);
	json_t *j = json_array_get(a, 0);
	char *s = json_dumps(j, JSON_COMPACT);
	CHECK_STREQ(s,
	            "{\"name\":\"build\",\"runs-on\":[],\"image\":null,\"resources\":{\"cpus\":0,"
	            "\"memory\":0,\"disk\":0,\"pids\":0,\"gpus\":0},\"timeout\":\"1h\","
	            "\"retries\":0,\"priority\":0,\"env\":{},\"secrets\":[],\"network\":\"none\","
	            "\"steps\":[{\"name\":\"make\",\"run\":\"make\",\"shell\":\"bash\",\"env\":{},"
	            "\"timeout\":null,\"working-directory\":null,\"continue-on-error\":false}],"
	            "\"artifacts\":[],\"cache\":[],\"matrix-values\":{}}");
	free(s);
	json_decref(a);
}

TEST(values_are_normalised)
{
	json_t *a =
	    load_json("name: '  t  '\n"
	              "runs-on: [Linux, GPU, linux, 'image:Node:18-alpine']\n"
	              "resources: {cpus: 0.25, memory: 512Mi, disk: 1.5G, pids: 100, gpus: 2}\n"
	              "timeout: 90m\n"
	              "env: {B: 1, A: true, C: 1.50, D: yes, E: ''}\n"
	              "secrets: [ZED, ALPHA]\n"
	              "network: host\n"
	              "artifacts: [./out//a.txt, out/a.txt, 'dist/**/*.whl', .]\n"
	              "steps:\n"
	              "  - run: \"\\n  ./configure   \\n  make\\n\"\n"
	              "    working-directory: ./src/.\n"
	              "    timeout: 1h30m\n"
	              "    continue-on-error: true\n");
	json_t *j = json_array_get(a, 0);
	CHECK_STREQ(jstr(j, "name"), "t");
	char *s = json_dumps(json_object_get(j, "runs-on"), JSON_COMPACT);
	CHECK_STREQ(s, "[\"linux\",\"gpu\",\"image:node:18-alpine\"]");
	free(s);
	s = json_dumps(json_object_get(j, "resources"), JSON_COMPACT);
	CHECK_STREQ(s, "{\"cpus\":0.25,\"memory\":536870912,\"disk\":1500000000,\"pids\":100,"
	               "\"gpus\":2}");
	free(s);
	CHECK_STREQ(jstr(j, "timeout"), "1h30m");
	s = json_dumps(json_object_get(j, "env"), JSON_COMPACT);
	CHECK_STREQ(s, "{\"A\":\"true\",\"B\":\"1\",\"C\":\"1.50\",\"D\":\"yes\",\"E\":\"\"}");
	free(s);
	s = json_dumps(json_object_get(j, "secrets"), JSON_COMPACT);
	CHECK_STREQ(s, "[\"ALPHA\",\"ZED\"]");
	free(s);
	CHECK_STREQ(jstr(j, "network"), "host");
	s = json_dumps(json_object_get(j, "artifacts"), JSON_COMPACT);
	CHECK_STREQ(s, "[\"out/a.txt\",\"dist/**/*.whl\",\".\"]");
	free(s);
	json_t *st = json_array_get(json_object_get(j, "steps"), 0);
	CHECK_STREQ(jstr(st, "name"), "./configure");
	CHECK_STREQ(jstr(st, "working-directory"), "src");
	CHECK_STREQ(jstr(st, "timeout"), "1h30m");
	CHECK(json_is_true(json_object_get(st, "continue-on-error")));
	json_decref(a);
}

TEST(json_input_is_accepted)
{
	json_t *a = load_json("{\"name\": \"j\", \"steps\": [{\"run\": \"true\"}], "
	                      "\"resources\": {\"cpus\": 2, \"memory\": 1073741824}}");
	json_t *j = json_array_get(a, 0);
	CHECK_STREQ(jstr(j, "name"), "j");
	json_t *r = json_object_get(j, "resources");
	CHECK_EQ(json_integer_value(json_object_get(r, "cpus")), 2);
	CHECK_EQ(json_integer_value(json_object_get(r, "memory")), 1073741824);
	json_decref(a);
	CHECK_ERRS("{\"name\": \"j\",\n \"steps\": [{\"run\": \"true\"}],\n \"retries\": \"3\"}",
	           "t.yaml:3:13: retries: expected an integer from 0 to 10, got \"3\"\n");
}

TEST(cache_forms)
{
	json_t *a = load_json(MIN_JOB "cache: {key: k1, paths: node_modules}\n");
	char *s = json_dumps(json_object_get(json_array_get(a, 0), "cache"), JSON_COMPACT);
	CHECK_STREQ(s, "[{\"key\":\"k1\",\"paths\":[\"node_modules\"]}]");
	free(s);
	json_decref(a);
	a = load_json(MIN_JOB "cache:\n  - {key: a, paths: [x, y/]}\n  - {key: b, paths: [z]}\n");
	s = json_dumps(json_object_get(json_array_get(a, 0), "cache"), JSON_COMPACT);
	CHECK_STREQ(s,
	            "[{\"key\":\"a\",\"paths\":[\"x\",\"y\"]},{\"key\":\"b\",\"paths\":[\"z\"]}]");
	free(s);
	json_decref(a);
	CHECK_ERRS(MIN_JOB "cache:\n  - {key: a, paths: [x]}\n  - {key: a, paths: [y]}\n",
	           "t.yaml:6:5: cache[1]: cache key \"a\" is used twice\n");
}

/* ---- messages ------------------------------------------------------------------- */

TEST(error_format_and_order)
{
	CHECK_ERRS("name: t\nresources:\n  memory: 4GX\n  cpus: two\nsteps: [{run: x}]\n",
	           "t.yaml:3:11: resources.memory: \"4GX\" is not a size (e.g. 512Mi, 4Gi)\n"
	           "t.yaml:4:9: resources.cpus: expected a number of CPUs (e.g. 2 or 0.5), got "
	           "\"two\"\n");
}

TEST(unknown_keys_did_you_mean)
{
	CHECK_ERRS("name: t\nruns_on: linux\nstep:\n  - run: x\n",
	           "t.yaml:1:1: missing required key \"steps\" (e.g. steps: [{run: make test}])\n"
	           "t.yaml:2:1: unknown key \"runs_on\" (did you mean \"runs-on\"?)\n"
	           "t.yaml:3:1: unknown key \"step\" (did you mean \"steps\"?)\n");
	CHECK_ERRS(MIN_JOB "strategy: {}\n",
	           "t.yaml:4:1: unknown key \"strategy\": kiln has no strategy: write matrix: at "
	           "the top level of the job\n");
	CHECK_ERRS(
	    "name: t\nsteps:\n  - run: x\n    shel: sh\n    uses: actions/checkout@v4\n",
	    "t.yaml:4:5: steps[0]: unknown key \"shel\" (did you mean \"shell\"?)\n"
	    "t.yaml:5:5: steps[0]: unknown key \"uses\": kiln steps run scripts; use run:\n");
	CHECK_ERRS(MIN_JOB "zzzz: 1\n",
	           "t.yaml:4:1: unknown key \"zzzz\" (expected one of: name, runs-on, image, "
	           "resources, timeout, retries, priority, env, secrets, network, steps, "
	           "artifacts, cache, matrix, matrix-values)\n");
}

TEST(value_suggestions)
{
	CHECK_ERRS(MIN_JOB "timeout: 30\n",
	           "t.yaml:4:10: timeout: \"30\" has no unit (did you mean \"30s\"? units: ms, s, "
	           "m, h, d)\n");
	CHECK_ERRS(MIN_JOB "timeout: 10 min\n",
	           "t.yaml:4:10: timeout: \"10 min\" is not a duration (did you mean \"10m\"?)\n");
	CHECK_ERRS(MIN_JOB "timeout: 0s\n",
	           "t.yaml:4:10: timeout: \"0s\" is out of range (1s to 30d)\n");
	CHECK_ERRS(MIN_JOB "resources: {memory: 4GB}\n",
	           "t.yaml:4:21: resources.memory: \"4GB\" is not a size (did you mean \"4G\"?)\n");
	CHECK_ERRS(
	    MIN_JOB "resources: {memory: 4gi}\n",
	    "t.yaml:4:21: resources.memory: \"4gi\" is not a size (did you mean \"4Gi\"?)\n");
	CHECK_ERRS(MIN_JOB "resources: {memory: 512}\n",
	           "t.yaml:4:21: resources.memory: 512 bytes is below the minimum 4Mi (a bare "
	           "number counts bytes; did you mean \"512Mi\"?)\n");
	CHECK_ERRS(MIN_JOB "resources: {cpus: 500m}\n",
	           "t.yaml:4:19: resources.cpus: \"500m\" is not a number (did you mean 0.5?)\n");
	CHECK_ERRS(MIN_JOB "network: egres\n",
	           "t.yaml:4:10: network: \"egres\" is not a network mode (did you mean "
	           "\"egress\"?)\n");
	CHECK_ERRS(MIN_JOB "secrets: [npm-token]\n",
	           "t.yaml:4:11: secrets[0]: \"npm-token\" is not a valid secret name (upper-case "
	           "letters, digits and _; did you mean \"NPM_TOKEN\"?)\n");
	CHECK_ERRS("name: t\nsteps:\n  - make test\n",
	           "t.yaml:3:5: steps[0]: a step is a mapping; write - run: \"make test\"\n");
	CHECK_ERRS("name: t\nsteps:\n  - run: x\n    shell: bsh\n",
	           "t.yaml:4:12: steps[0].shell: \"bsh\" is not a known shell (bash, sh, python); "
	           "for another program write a command with {0} for the script, e.g. \"bsh "
	           "{0}\"\n");
}

TEST(absurd_numbers)
{
	CHECK_ERRS(MIN_JOB "retries: 99999999999\n",
	           "t.yaml:4:10: retries: 99999999999 is out of range (0 to 10)\n");
	CHECK_ERRS(MIN_JOB "retries: 99999999999999999999999999\n",
	           "t.yaml:4:10: retries: 99999999999999999999999999 is out of range (0 to 10)\n");
	CHECK_ERRS(MIN_JOB "resources: {cpus: 1e308}\n",
	           "t.yaml:4:19: resources.cpus: 1e308 is out of range (0.001 to 1024, or 0 for no "
	           "limit)\n");
	CHECK_ERRS(MIN_JOB "resources: {cpus: .nan}\n",
	           "t.yaml:4:19: resources.cpus: .nan is out of range (0.001 to 1024, or 0 for no "
	           "limit)\n");
	CHECK_ERRS(MIN_JOB "resources: {cpus: -1}\n",
	           "t.yaml:4:19: resources.cpus: -1 is out of range (0.001 to 1024, or 0 for no "
	           "limit)\n");
	CHECK_ERRS(
	    MIN_JOB "resources: {memory: 99999999Ti}\n",
	    "t.yaml:4:21: resources.memory: \"99999999Ti\" is out of range (4Mi to 1024Ti, or "
	    "0 for no limit)\n");
	CHECK_ERRS(MIN_JOB "priority: -1e3\n",
	           "t.yaml:4:11: priority: expected an integer from -1000 to 1000, got the number "
	           "\"-1e3\"\n");
	CHECK_ERRS(MIN_JOB "timeout: 99999999999999999999h\n",
	           "t.yaml:4:10: timeout: \"99999999999999999999h\" is out of range (1s to 30d)\n");
	CHECK_ERRS(MIN_JOB "resources: {gpus: 65}\n",
	           "t.yaml:4:19: resources.gpus: 65 is out of range (0 to 64)\n");
}

TEST(types_are_checked)
{
	CHECK_ERRS("name: [a]\nsteps: {run: x}\n",
	           "t.yaml:1:7: name: expected a string, got a list\n"
	           "t.yaml:2:8: steps: expected a list of steps (- run: ...), got a mapping\n");
	CHECK_ERRS("name:\nsteps: []\n",
	           "t.yaml:1:6: name: is empty; expected a string (e.g. name: build)\n"
	           "t.yaml:2:8: steps: is empty; a job needs at least one step (- run: ...)\n");
	CHECK_ERRS(
	    "name: \"a\\nb\"\nsteps: [{run: x, continue-on-error: yes}]\n",
	    "t.yaml:1:7: name: \"a\\nb\" contains a line break or control character; a name "
	    "is one line\n"
	    "t.yaml:2:37: steps[0].continue-on-error: expected true or false, got \"yes\"\n");
	CHECK_ERRS("name: t\nsteps: [{run: '  '}]\nenv: {A: [1]}\n",
	           "t.yaml:2:15: steps[0].run: is empty; write the commands to run\n"
	           "t.yaml:3:10: env.A: expected a string, got a list\n");
	CHECK_ERRS("- a\n",
	           "t.yaml:1:1: a job spec is a mapping (name:, steps:, ...), not a list\n");
	CHECK_ERRS("~\n", "t.yaml:1:1: the document is empty; a job spec needs at least name and "
	                  "steps (see docs/job-spec.md)\n");
}

TEST(names_and_paths)
{
	CHECK_ERRS(
	    MIN_JOB "env: {1X: a, KILN_JOB: b, \"a b\": c}\n",
	    "t.yaml:4:7: env: \"1X\" is not a valid variable name (letters, digits and _, "
	    "not starting with a digit)\n"
	    "t.yaml:4:14: env: \"KILN_JOB\": names starting with KILN_ are reserved for kiln\n"
	    "t.yaml:4:27: env: \"a b\" is not a valid variable name (letters, digits and _, "
	    "not starting with a digit)\n");
	CHECK_ERRS(MIN_JOB "env: {TOKEN: x}\nsecrets: TOKEN\n",
	           "t.yaml:5:10: secrets: \"TOKEN\" is also set in env; a secret and a variable "
	           "cannot share a name\n");
	CHECK_ERRS(
	    MIN_JOB "artifacts: [/etc/passwd, a/../../b, ~/x, '']\n",
	    "t.yaml:4:13: artifacts[0]: \"/etc/passwd\" is absolute; paths are relative to "
	    "the workspace\n"
	    "t.yaml:4:26: artifacts[1]: \"a/../../b\" leaves the workspace ('..'); paths stay "
	    "inside it\n"
	    "t.yaml:4:37: artifacts[2]: \"~/x\": '~' is not expanded; paths are relative to "
	    "the workspace\n"
	    "t.yaml:4:42: artifacts[3]: is empty; give a path relative to the workspace\n");
	CHECK_ERRS(MIN_JOB "image: 'node 18'\n",
	           "t.yaml:4:8: image: \"node 18\" is not an image reference (e.g. debian:12, "
	           "ghcr.io/org/app:1.2)\n");
}

TEST(labels_in_runs_on)
{
	CHECK_ERRS(MIN_JOB "runs-on: [gpu, 'gpu count:2', 'gpu-count:', -x, 'a@b', 'é']\n",
	           "t.yaml:4:16: runs-on[1]: \"gpu count:2\" is not a valid label: spaces are not "
	           "allowed (a list of labels is written [a, b])\n"
	           "t.yaml:4:31: runs-on[2]: \"gpu-count:\" is not a valid label: the value after "
	           "':' is empty (e.g. gpu-count:2)\n"
	           "t.yaml:4:45: runs-on[3]: \"-x\" is not a valid label: a label starts with a "
	           "letter or digit\n"
	           "t.yaml:4:49: runs-on[4]: \"a@b\" is not a valid label: '@' is allowed only in "
	           "the value of key:value\n"
	           "t.yaml:4:56: runs-on[5]: \"é\" is not a valid label: a label starts with a "
	           "letter or digit\n");
	json_t *a = load_json(MIN_JOB "runs-on: docker\n");
	char *s = json_dumps(json_object_get(json_array_get(a, 0), "runs-on"), JSON_COMPACT);
	CHECK_STREQ(s, "[\"docker\"]");
	free(s);
	json_decref(a);
}

TEST(label_grammar)
{
	struct spec_label l;
	struct kiln_err e;
	CHECK_EQ(spec_label_parse("image:Node:18-Alpine", &l, &e), 0);
	CHECK_STREQ(l.key, "image");
	CHECK_STREQ(l.value, "node:18-alpine");
	spec_label_release(&l);
	CHECK_EQ(spec_label_parse("cuda-12", &l, &e), 0);
	CHECK_STREQ(l.key, "cuda-12");
	CHECK(l.value == NULL);
	spec_label_release(&l);
	CHECK(spec_label_valid("gpu-count:2"));
	CHECK(spec_label_valid("ubuntu-22.04"));
	CHECK(spec_label_valid("image:ghcr.io/org/app@sha256:abc"));
	CHECK(!spec_label_valid(""));
	CHECK(!spec_label_valid(":x"));
	CHECK(!spec_label_valid("a b"));
	CHECK(!spec_label_valid(NULL));
	CHECK_EQ(spec_label_parse("a\nb", &l, &e), -EINVAL);
	CHECK_STREQ(e.msg, "\"a\\nb\" is not a valid label: control characters and line breaks "
	                   "are not allowed");
	char longl[SPEC_LABEL_MAX + 2];
	memset(longl, 'a', sizeof(longl) - 1);
	longl[sizeof(longl) - 1] = '\0';
	CHECK(!spec_label_valid(longl));
	longl[SPEC_LABEL_MAX] = '\0';
	CHECK(spec_label_valid(longl));
	CHECK_EQ(spec_label_parse("bad label", &l, &e), -EINVAL);
	CHECK_STREQ(e.msg, "\"bad label\" is not a valid label: spaces are not allowed (a list of "
	                   "labels is written [a, b])");
	CHECK(spec_label_eq("GPU", "gpu"));
	CHECK(!spec_label_eq("gpu", "gpus"));
}

/* ---- hostile input --------------------------------------------------------------------- */

TEST(empty_and_binary)
{
	CHECK_ERRS("", "t.yaml: the file is empty; a job spec needs at least name and steps (see "
	               "docs/job-spec.md)\n");
	CHECK_ERRS("# nothing\n\n", "t.yaml: the file is empty; a job spec needs at least name and "
	                            "steps (see docs/job-spec.md)\n");
	char *e = load_errors("name: x\n\0\x01\x02", 11, NULL);
	CHECK_STREQ(e, "t.yaml:2:1: the file contains a NUL byte; a job spec is UTF-8 text (is "
	               "this a binary file?)\n");
	free(e);
	CHECK_ERRS("name: caf\xe9\n",
	           "t.yaml:1:10: invalid UTF-8 (byte 0xE9); a job spec must be UTF-8 text\n");
	CHECK_ERRS("name: \xc3\xa9\xed\xa0\x80\n",
	           "t.yaml:1:8: invalid UTF-8 (byte 0xED); a job spec must be UTF-8 text\n");
	CHECK_ERRS("name: \x01\n", "t.yaml:1:7: invalid YAML: control characters are not allowed "
	                           "(character 0x01)\n");
	CHECK_ERRS("name: \"\\0\"\nsteps: [{run: x}]\n",
	           "t.yaml:1:7: the value contains a NUL character\n");
	CHECK_ERRS("name: \"a\\x85b\"\nsteps: [{run: x}]\n",
	           "t.yaml:1:7: the value contains the character U+0085, which a spec cannot "
	           "carry; remove it\n");
}

TEST(too_large)
{
	size_t len = SPEC_MAX_BYTES + 1;
	char *big = xmalloc(len);
	memset(big, '#', len);
	struct spec_diags d = {0};
	struct spec_job **jobs = NULL;
	size_t n = 0;
	CHECK_EQ(spec_load("big.yaml", big, len, &jobs, &n, &d), -EFBIG);
	struct buf b = BUF_INIT;
	spec_diags_format(&d, &b);
	CHECK_STREQ(b.data, "big.yaml: the file is larger than 1 MiB (1048577 bytes); a spec may "
	                    "hold at most 1048576 bytes\n");
	buf_release(&b);
	spec_diags_release(&d);
	free(big);
}

static char *nested(int levels)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, MIN_JOB "env: ");
	for (int i = 1; i < levels; i++)
		buf_putc(&b, '[');
	for (int i = 1; i < levels; i++)
		buf_putc(&b, ']');
	buf_putc(&b, '\n');
	return buf_steal(&b);
}

TEST(nesting_limit)
{
	/* The root mapping is level 1: 63 brackets make 64 levels, 64 make 65. */
	char *ok = nested(SPEC_MAX_DEPTH);
	CHECK_ERRS(ok, "t.yaml:4:6: env: expected a mapping of NAME: value, got a list\n");
	free(ok);
	char *deep = nested(SPEC_MAX_DEPTH + 1);
	CHECK_ERRS(deep,
	           "t.yaml:4:69: nesting deeper than 64 levels; a job spec needs a handful\n");
	free(deep);
	/* A megabyte of brackets stops at the limit, quickly. */
	size_t len = SPEC_MAX_BYTES - 16;
	char *flood = xmalloc(len + 1);
	memset(flood, '[', len);
	flood[len] = '\0';
	CHECK_ERRS(flood,
	           "t.yaml:1:65: nesting deeper than 64 levels; a job spec needs a handful\n");
	free(flood);
}

TEST(too_many_values)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "a: [");
	for (int i = 0; i < SPEC_MAX_NODES; i++)
		buf_puts(&b, "1,");
	buf_puts(&b, "1]\n");
	char *e = load_errors(b.data, b.len, NULL);
	CHECK(strstr(e, "the document holds more than 100000 values") != NULL);
	free(e);
	buf_release(&b);
}

TEST(duplicate_keys)
{
	CHECK_ERRS("name: a\nsteps: [{run: x, run: y}]\nname: b\nenv: {A: 1, B: 2, A: 3}\n",
	           "t.yaml:2:18: duplicate key \"run\" (first at line 2); remove one of them\n"
	           "t.yaml:3:1: duplicate key \"name\" (first at line 1); remove one of them\n"
	           "t.yaml:4:19: duplicate key \"A\" (first at line 4); remove one of them\n");
}

TEST(aliases_are_refused)
{
	/* Billion laughs: refused at the first alias, nothing is expanded. */
	const char *lol = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
	                  "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
	                  "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
	                  "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
	                  "name: x\nsteps: [{run: x}]\n";
	char *e = errs(lol);
	CHECK(strstr(e, "t.yaml:2:8: YAML aliases are not supported (found \"*a\"); write the "
	                "value out in full\n") != NULL);
	CHECK(strstr(e, "*b") == NULL); /* one message, not one per alias */
	free(e);
	CHECK_ERRS(
	    "name: &n x\nsteps: [{run: *n}]\n",
	    "t.yaml:2:15: YAML aliases are not supported (found \"*n\"); write the value out "
	    "in full\n");
	CHECK_ERRS("name: !!binary eA==\nsteps: [{run: x}]\n",
	           "t.yaml:1:7: YAML tag \"!!binary\" is not supported; remove it "
	           "(write the value as plain text)\n");
}

TEST(yaml_syntax_errors)
{
	CHECK_ERRS("name: x\nsteps: [{run: x}\n",
	           "t.yaml:3:1: invalid YAML: did not find expected ',' or ']' (while parsing a "
	           "flow sequence at line 2, column 8)\n");
	CHECK_ERRS("name: x\n  bad: indent\n",
	           "t.yaml:2:6: invalid YAML: mapping values are not allowed in this context\n");
	CHECK_ERRS(
	    MIN_JOB "---\nname: y\n",
	    "t.yaml:4:1: a second YAML document ('---'); a spec file holds one job, put each "
	    "job in its own file\n");
	CHECK_ERRS("? [a, b]\n: c\n",
	           "t.yaml:1:1: missing required key \"name\" (e.g. name: build)\n"
	           "t.yaml:1:1: missing required key \"steps\" (e.g. steps: [{run: make test}])\n"
	           "t.yaml:1:3: a key must be a string, not a list\n");
}

TEST(diagnostics_are_capped)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, MIN_JOB "env:\n");
	for (int i = 0; i < 200; i++)
		buf_printf(&b, "  %d: x\n", i);
	struct spec_diags d = {0};
	struct spec_job **jobs = NULL;
	size_t n = 0;
	CHECK_EQ(spec_load("t.yaml", b.data, b.len, &jobs, &n, &d), -EINVAL);
	CHECK_EQ(d.n, SPEC_MAX_DIAGS + 1);
	if (d.n == SPEC_MAX_DIAGS + 1)
		CHECK_STREQ(d.v[SPEC_MAX_DIAGS].msg,
		            "too many errors; stopped after the first 100");
	json_t *j = spec_diags_to_json(&d);
	CHECK_EQ(json_array_size(j), SPEC_MAX_DIAGS + 1);
	CHECK_STREQ(jstr(json_array_get(j, 0), "path"), "env");
	CHECK_EQ(json_integer_value(json_object_get(json_array_get(j, 0), "line")), 5);
	json_decref(j);
	spec_diags_release(&d);
	buf_release(&b);
}

/* ---- the matrix -------------------------------------------------------------------------- */

static char *names_of(json_t *a)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "");
	for (size_t i = 0; i < json_array_size(a); i++)
		buf_printf(&b, "%s%s", i ? "|" : "", jstr(json_array_get(a, i), "name"));
	json_decref(a);
	return buf_steal(&b);
}

TEST(matrix_product_and_names)
{
	char *s = names_of(load_json("name: test\nmatrix: {os: [linux, macos], node: [18, 20]}\n"
	                             "steps: [{run: make}]\n"));
	CHECK_STREQ(s, "test (linux, 18)|test (linux, 20)|test (macos, 18)|test (macos, 20)");
	free(s);
	/* A name that uses the matrix gets no suffix. */
	s = names_of(load_json("name: 'node ${{ matrix.node }}'\nmatrix: {node: [18, 20]}\n"
	                       "steps: [{run: make}]\n"));
	CHECK_STREQ(s, "node 18|node 20");
	free(s);
}

TEST(matrix_github_include_example)
{
	/* The example of GitHub's documentation for include. */
	json_t *a = load_json("name: t\n"
	                      "matrix:\n"
	                      "  fruit: [apple, pear]\n"
	                      "  animal: [cat, dog]\n"
	                      "  include:\n"
	                      "    - color: green\n"
	                      "    - color: pink\n"
	                      "      animal: cat\n"
	                      "    - fruit: apple\n"
	                      "      shape: circle\n"
	                      "    - fruit: banana\n"
	                      "    - fruit: banana\n"
	                      "      animal: cat\n"
	                      "steps: [{run: x}]\n");
	CHECK_EQ(json_array_size(a), 6);
	struct buf b = BUF_INIT;
	for (size_t i = 0; i < json_array_size(a); i++) {
		char *s = json_dumps(json_object_get(json_array_get(a, i), "matrix-values"),
		                     JSON_COMPACT);
		buf_printf(&b, "%s\n", s);
		free(s);
	}
	CHECK_STREQ(
	    b.data,
	    "{\"fruit\":\"apple\",\"animal\":\"cat\",\"color\":\"pink\",\"shape\":\"circle\"}\n"
	    "{\"fruit\":\"apple\",\"animal\":\"dog\",\"color\":\"green\",\"shape\":\"circle\"}\n"
	    "{\"fruit\":\"pear\",\"animal\":\"cat\",\"color\":\"pink\"}\n"
	    "{\"fruit\":\"pear\",\"animal\":\"dog\",\"color\":\"green\"}\n"
	    "{\"fruit\":\"banana\"}\n"
	    "{\"fruit\":\"banana\",\"animal\":\"cat\"}\n");
	buf_release(&b);
	json_decref(a);
}

TEST(matrix_exclude_and_substitution)
{
	json_t *a = load_json("name: t\n"
	                      "runs-on: ['${{ matrix.os }}']\n"
	                      "image: 'node:${{matrix.node}}'\n"
	                      "timeout: ${{ matrix.t }}\n"
	                      "env: {NODE: '${{ matrix.node }}'}\n"
	                      "matrix:\n"
	                      "  os: [linux, macos]\n"
	                      "  node: [18, 20]\n"
	                      "  t: [5m]\n"
	                      "  exclude:\n"
	                      "    - {os: macos, node: 18}\n"
	                      "steps: [{run: 'echo ${{ matrix.os }}-${{ matrix.node }}'}]\n");
	CHECK_EQ(json_array_size(a), 3);
	json_t *j = json_array_get(a, 2);
	CHECK_STREQ(jstr(j, "name"), "t (macos, 20, 5m)");
	CHECK_STREQ(json_string_value(json_array_get(json_object_get(j, "runs-on"), 0)), "macos");
	CHECK_STREQ(jstr(j, "image"), "node:20");
	CHECK_STREQ(jstr(j, "timeout"), "5m");
	CHECK_STREQ(jstr(json_object_get(j, "env"), "NODE"), "20");
	CHECK_STREQ(jstr(json_array_get(json_object_get(j, "steps"), 0), "run"), "echo macos-20");
	json_decref(a);
	/* Only include: one job per entry; a key some entries lack substitutes "". */
	a = load_json("name: t\nmatrix:\n  include:\n    - {model: a, shots: 5}\n    - {model: b}\n"
	              "steps: [{run: 'eval ${{ matrix.model }} ${{ matrix.shots }}'}]\n");
	CHECK_EQ(json_array_size(a), 2);
	CHECK_STREQ(jstr(json_array_get(json_object_get(json_array_get(a, 1), "steps"), 0), "run"),
	            "eval b ");
	json_decref(a);
}

TEST(matrix_errors)
{
	CHECK_ERRS(
	    "name: t\nmatrix: {os: [a, b]}\nsteps: [{run: 'echo ${{ matrix.oss }}'}]\n",
	    "t.yaml:3:15: steps[0].run: unknown matrix key \"oss\" in ${{ matrix.oss }} (did "
	    "you mean \"os\"?)\n");
	CHECK_ERRS("name: t\nsteps: [{run: 'echo ${{ matrix.os }}'}]\n",
	           "t.yaml:2:15: steps[0].run: \"echo ${{ matrix.os }}\" uses ${{ matrix.os }} but "
	           "the job has no matrix\n");
	CHECK_ERRS("name: t\nsteps: [{run: 'echo ${{ github.sha }}'}]\n",
	           "t.yaml:2:15: steps[0].run: unsupported expression \"${{ github.sha }}\"; kiln "
	           "substitutes only ${{ matrix.NAME }}\n");
	CHECK_ERRS(
	    "name: t\nsteps: [{run: 'echo ${{ matrix.os'}]\n",
	    "t.yaml:2:15: steps[0].run: \"${{ matrix.os\" has an unterminated ${{ (write ${{ "
	    "matrix.NAME }})\n");
	CHECK_ERRS("name: t\nmatrix: {os: [], 1x: [a], v: [a, a], w: [{}]}\nsteps: [{run: x}]\n",
	           "t.yaml:2:14: matrix.os: is empty; an axis needs at least one value\n"
	           "t.yaml:2:18: matrix: \"1x\" is not a matrix key (letters, digits, _ and -, "
	           "starting with a letter)\n"
	           "t.yaml:2:34: matrix.v[1]: \"a\" is listed twice\n"
	           "t.yaml:2:42: matrix.w[0]: a matrix value is a string, number or boolean, not a "
	           "mapping\n");
	CHECK_ERRS("name: t\nmatrix: {os: [a], exclude: [{os: b}, {arch: x}]}\nsteps: [{run: x}]\n",
	           "t.yaml:2:34: matrix.exclude[0].os: \"b\" is not a value of matrix.os, so this "
	           "exclude matches nothing\n"
	           "t.yaml:2:45: matrix.exclude[1].arch: \"arch\" is not an axis of the matrix\n");
	CHECK_ERRS("name: t\nmatrix: {os: [a], exclude: [{os: a}]}\nsteps: [{run: x}]\n",
	           "t.yaml:2:9: matrix: every combination is excluded; nothing would run\n");
	CHECK_ERRS("name: t\nmatrix: {}\nsteps: [{run: x}]\n",
	           "t.yaml:2:9: matrix: has no axes (e.g. matrix: {os: [linux, macos]})\n");
	CHECK_ERRS("name: t\nmatrix: {os: [a]}\nmatrix-values: {os: a}\nsteps: [{run: x}]\n",
	           "t.yaml:3:16: matrix-values: is set by the matrix expansion; remove it\n");
	/* The rest of the job is still checked when the matrix is broken. */
	CHECK_ERRS("name: t\nmatrix: {os: a}\nretries: -1\nsteps: [{run: '${{ matrix.os }}'}]\n",
	           "t.yaml:2:14: matrix.os: expected a list of values (e.g. os: [a, b]), got a "
	           "string\n"
	           "t.yaml:3:10: retries: -1 is out of range (0 to 10)\n");
}

TEST(matrix_limits)
{
	/* 17 x 16 = 272 > 256. */
	struct buf b = BUF_INIT;
	buf_puts(&b, "name: t\nsteps: [{run: x}]\nmatrix:\n  a: [");
	for (int i = 0; i < 17; i++)
		buf_printf(&b, "%s%d", i ? ", " : "", i);
	buf_puts(&b, "]\n  b: [");
	for (int i = 0; i < 16; i++)
		buf_printf(&b, "%s%d", i ? ", " : "", i);
	buf_puts(&b, "]\n");
	char *e = errs(b.data);
	CHECK_STREQ(e, "t.yaml:4:3: matrix: expands to 272 jobs (17 x 16); the limit is 256\n");
	free(e);
	/* ...brought under the limit by exclude: fine. */
	buf_puts(&b, "  exclude: [{a: 0}]\n");
	size_t n = 0;
	e = load_errors(b.data, b.len, &n);
	CHECK_STREQ(e, "");
	CHECK_EQ(n, 256);
	free(e);
	buf_release(&b);

	/* 32 axes of 256 values overflow 64 bits: refused before expanding. */
	buf_puts(&b, "name: t\nsteps: [{run: x}]\nmatrix:\n");
	for (int a = 0; a < 32; a++) {
		buf_printf(&b, "  a%d: [", a);
		for (int i = 0; i < 256; i++)
			buf_printf(&b, "%s%d", i ? "," : "", i);
		buf_puts(&b, "]\n");
	}
	e = errs(b.data);
	CHECK(startswith(e, "t.yaml:4:3: matrix: the axes make 2^64 or more combinations (256 x "));
	CHECK(endswith(e, "); the limit is 256 jobs\n"));
	free(e);
	buf_release(&b);

	buf_puts(&b, "name: t\nsteps: [{run: x}]\nmatrix: {a: [1,2,3,4,5,6,7,8,9,10], b: "
	             "[1,2,3,4,5,6,7,8,9,10], c: [1,2,3,4,5,6,7,8,9,10], d: [1,2,3,4,5]}\n");
	CHECK_ERRS(b.data,
	           "t.yaml:3:9: matrix: the axes make 5000 combinations (10 x 10 x 10 x 5); "
	           "the limit is 256 jobs\n");
	buf_release(&b);
}

TEST(matrix_expansion_is_bounded_in_size)
{
	/* 256 copies of a ~200 KiB script would be 50 MiB: refused. */
	struct buf b = BUF_INIT;
	buf_puts(&b, "name: t\nmatrix: {a: [");
	for (int i = 0; i < 256; i++)
		buf_printf(&b, "%s%d", i ? "," : "", i);
	buf_puts(&b, "]}\nsteps:\n  - run: |\n");
	for (int i = 0; i < 10000; i++)
		buf_puts(&b, "      echo some long line of text\n");
	char *e = errs(b.data);
	CHECK_STREQ(e,
	            "t.yaml:2:9: matrix: the 256 jobs it expands to would hold more than 16 MiB; "
	            "make the job or the matrix smaller\n");
	free(e);
	buf_release(&b);
}

/* ---- JSON round trip ----------------------------------------------------------------------- */

static void check_roundtrip(const char *yaml)
{
	struct spec_diags d = {0};
	struct spec_job **jobs = NULL;
	size_t n = 0;
	CHECK_EQ(spec_load("t.yaml", yaml, strlen(yaml), &jobs, &n, &d), 0);
	for (size_t i = 0; i < n; i++) {
		json_t *j1 = spec_job_to_json(jobs[i]);
		struct spec_job *back = NULL;
		struct kiln_err e = {0};
		CHECK_EQ(spec_job_from_json(j1, &back, &e), 0);
		if (!back) {
			printf("# from_json: %s\n", e.msg);
			json_decref(j1);
			continue;
		}
		json_t *j2 = spec_job_to_json(back);
		CHECK(json_equal(j1, j2));
		/* The JSON text is itself a spec that loads to the same job. */
		char *text = json_dumps(j1, JSON_INDENT(2));
		struct spec_diags d2 = {0};
		struct spec_job **again = NULL;
		size_t n2 = 0;
		CHECK_EQ(spec_load("j.json", text, strlen(text), &again, &n2, &d2), 0);
		CHECK_EQ(n2, 1);
		if (n2 == 1) {
			json_t *j3 = spec_job_to_json(again[0]);
			CHECK(json_equal(j1, j3));
			json_decref(j3);
		}
		spec_jobs_free(again, n2);
		spec_diags_release(&d2);
		free(text);
		json_decref(j2);
		json_decref(j1);
		spec_job_free(back);
	}
	spec_jobs_free(jobs, n);
	spec_diags_release(&d);
}

TEST(json_roundtrip_is_identity)
{
	check_roundtrip(MIN_JOB);
	check_roundtrip(
	    "name: t\nruns-on: [GPU, gpu-count:2]\nimage: debian:12\n"
	    "resources: {cpus: 0.1, memory: 1.5Gi, disk: 3G, pids: 64, gpus: 1}\n"
	    "timeout: 36h\nretries: 2\npriority: -5\nenv: {A: \"x\\ty\\u001b\", B: "
	    "\"é ✓ 🔥\"}\nsecrets: [S]\nnetwork: egress\n"
	    "matrix: {os: [a, b], include: [{os: a, extra: 'yes'}]}\n"
	    "steps:\n  - {name: one, run: \"echo '${{ matrix.os }}'\\n\", shell: 'perl {0}', "
	    "timeout: 1500ms, working-directory: x/y, continue-on-error: true, env: {Z: "
	    "'1'}}\n"
	    "artifacts: ['**/*.log']\ncache: [{key: 'k-${{ matrix.os }}', paths: [a, b]}]\n");
}

TEST(from_json_errors)
{
	struct spec_job *job = NULL;
	struct kiln_err e = {0};
	json_t *j =
	    json_pack("{s:s, s:[{s:s}], s:i}", "name", "x", "steps", "run", "y", "retries", 99);
	CHECK_EQ(spec_job_from_json(j, &job, &e), -EINVAL);
	CHECK(job == NULL);
	CHECK_STREQ(e.msg, "retries: 99 is out of range (0 to 10)");
	json_decref(j);
	j = json_pack("{s:s, s:[{s:s}], s:{s:[s]}}", "name", "x", "steps", "run", "y", "matrix",
	              "os", "a");
	CHECK_EQ(spec_job_from_json(j, &job, &e), -EINVAL);
	CHECK_STREQ(e.msg, "matrix: a single job has no matrix; load the spec with spec_load()");
	json_decref(j);
	j = json_pack("[]");
	CHECK_EQ(spec_job_from_json(j, &job, &e), -EINVAL);
	CHECK_STREQ(e.msg, "a job spec is a mapping (name:, steps:, ...), not a list");
	json_decref(j);
	j = json_pack("{s:s, s:[{s:s}]}", "name", "x", "steps", "run",
	              "a\xc2\x85"
	              "b");
	CHECK_EQ(spec_job_from_json(j, &job, &e), -EINVAL);
	CHECK_STREQ(e.msg, "a string contains the character U+0085, which a spec cannot carry; "
	                   "remove it");
	json_decref(j);
}

/* ---- shells --------------------------------------------------------------------------------- */

static char *argv_str(const char *shell)
{
	char **argv = NULL;
	if (spec_shell_argv(shell, "/w/step.sh", &argv) < 0)
		return xstrdup("(invalid)");
	struct buf b = BUF_INIT;
	for (char **p = argv; *p; p++)
		buf_printf(&b, "%s%s", p == argv ? "" : " ", *p);
	spec_argv_free(argv);
	return buf_steal(&b);
}

TEST(shell_argv)
{
	char *s = argv_str("bash");
	CHECK_STREQ(s, "bash --noprofile --norc -eo pipefail /w/step.sh");
	free(s);
	s = argv_str("sh");
	CHECK_STREQ(s, "sh -e /w/step.sh");
	free(s);
	s = argv_str("python");
	CHECK_STREQ(s, "python3 /w/step.sh");
	free(s);
	s = argv_str("  perl  -w {0} --file={0}x ");
	CHECK_STREQ(s, "perl -w /w/step.sh --file=/w/step.shx");
	free(s);
	s = argv_str("zsh");
	CHECK_STREQ(s, "(invalid)");
	free(s);
}

int main(void)
{
	return tap_run();
}
