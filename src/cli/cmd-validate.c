/*
 * validate: `kiln validate [-o text|json] [-q] FILE...` checks job specs and
 * prints them normalised.
 *
 * Errors go to stderr, one line each ("file:line:col: path: message"); text
 * mode prints "FILE: ok (N jobs)" per valid file; json mode prints one JSON
 * array of every job of every file, and nothing at all on stdout when any
 * file is invalid (no partial output for scripts to consume).
 */
#include "cli.h"
#include "spec/spec.h"

#include <getopt.h>

const char cmd_validate_help[] =
    "usage: kiln validate [-o text|json] [-q] FILE...\n"
    "\n"
    "Checks job specs (YAML or JSON; '-' reads stdin) and reports every error as\n"
    "FILE:LINE:COL: FIELD: MESSAGE on stderr.\n"
    "\n"
    "options:\n"
    "  -o, --output FORMAT  text (default): 'FILE: ok (N jobs)' per valid file;\n"
    "                       json: one JSON array of the normalised jobs of all files,\n"
    "                       one element per matrix combination\n"
    "  -q, --quiet          print nothing on stdout; only errors and the exit code\n"
    "  -h, --help           show this help\n"
    "\n"
    "exit codes: 0 every file is valid, 1 a file is invalid or unreadable, 2 usage error.\n"
    "The spec reference is docs/job-spec.md.\n";

enum output { OUT_TEXT, OUT_JSON };

/* Validates one file; appends its jobs to `all` (json) or prints "ok". */
static bool validate_one(const char *path, enum output out, bool quiet, json_t *all)
{
	const char *name = streq(path, "-") ? "<stdin>" : path;
	struct spec_diags d;
	spec_diags_init(&d, name);
	struct buf data = BUF_INIT;
	int r = read_file(path, SPEC_MAX_BYTES, &data);
	if (r == -EFBIG) {
		spec_diags_add(&d, 0, 0, "",
		               "the file is larger than 1 MiB; a spec may hold at most %d bytes",
		               SPEC_MAX_BYTES);
	} else if (r < 0) {
		spec_diags_release(&d);
		cli_fail("validate", "cannot read '%s': %s", path, strerror(-r));
		return false;
	} else {
		struct spec_job **jobs = NULL;
		size_t n = 0;
		r = spec_load(name, data.data ? data.data : "", data.len, &jobs, &n, &d);
		if (r >= 0) {
			if (out == OUT_JSON)
				for (size_t i = 0; i < n; i++)
					json_array_append_new(all, spec_job_to_json(jobs[i]));
			else if (!quiet)
				printf("%s: ok (%zu job%s)\n", name, n, n == 1 ? "" : "s");
			spec_jobs_free(jobs, n);
		}
	}
	buf_release(&data);
	bool ok = d.n == 0;
	if (!ok) {
		struct buf b = BUF_INIT;
		spec_diags_format(&d, &b);
		fflush(stdout);
		(void)!write(STDERR_FILENO, b.data, b.len);
		buf_release(&b);
	}
	spec_diags_release(&d);
	return ok;
}

int cmd_validate(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"output", required_argument, NULL, 'o'},
	    {"quiet", no_argument, NULL, 'q'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	enum output out = OUT_TEXT;
	bool quiet = false;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+o:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			if (streq(optarg, "text"))
				out = OUT_TEXT;
			else if (streq(optarg, "json"))
				out = OUT_JSON;
			else
				return cli_usage_error(
				    "validate", "unknown output format '%s' (use text or json)",
				    optarg);
			break;
		case 'q': quiet = true; break;
		case 'h': fputs(cmd_validate_help, stdout); return EXIT_OK;
		default:
			if (optopt == 'o')
				return cli_usage_error("validate",
				                       "-o needs a format (text or json)");
			if (optopt)
				return cli_usage_error("validate", "unknown option '-%c'", optopt);
			return cli_usage_error("validate", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cli_usage_error("validate", "no files given (use '-' for stdin)");
	int stdin_uses = 0;
	for (int i = optind; i < argc; i++)
		stdin_uses += streq(argv[i], "-");
	if (stdin_uses > 1)
		return cli_usage_error("validate", "'-' (stdin) can be given only once");

	json_t *all = json_array();
	bool ok = true;
	for (int i = optind; i < argc; i++)
		ok &= validate_one(argv[i], out, quiet, all);
	if (ok && out == OUT_JSON && !quiet) {
		char *s = json_dumps(all, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
		fputs(s, stdout);
		fputc('\n', stdout);
		free(s);
	}
	json_decref(all);
	if (fflush(stdout) != 0)
		return cli_fail("validate", "writing the output failed: %s", strerror(errno));
	return ok ? EXIT_OK : EXIT_FAIL;
}
