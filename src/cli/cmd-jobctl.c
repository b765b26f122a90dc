/* cmd-jobctl: `kiln logs`, `kiln cancel`, `kiln retry`, `kiln artifacts`. */
#include "output.h"

#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <sodium.h>

const char cmd_logs_help[] =
	"usage: kiln logs [-f] [--attempt N] [--offset BYTES] JOB [--server URL] [--token TOKEN]\n"
	"\n"
	"Prints a job's output (its current or last attempt). With -f, follows it\n"
	"live until the job ends, moving on to the next attempt if the job is\n"
	"queued again; a job still queued is waited for.\n"
	"\n"
	"options:\n"
	"  -f, --follow        follow the output while the job runs\n"
	"  --attempt N         this attempt's log (1 is the first)\n"
	"  --offset BYTES      start at this byte of the log\n"
	"\n"
	"exit codes: 0 printed, 1 unknown job or server error, 2 usage error.\n";

const char cmd_cancel_help[] =
	"usage: kiln cancel JOB... [--server URL] [--token TOKEN]\n"
	"\n"
	"Cancels jobs: a queued job ends at once; a running job ends as cancelled\n"
	"and its agent is told to stop it at its next heartbeat.\n"
	"\n"
	"exit codes: 0 all cancelled, 1 a job was unknown or had already ended, 2 usage error.\n";

const char cmd_retry_help[] =
	"usage: kiln retry JOB... [--server URL] [--token TOKEN]\n"
	"\n"
	"Submits a finished job again, as a new job with the same spec (its\n"
	"retry_of names the original). Prints the new job ids.\n"
	"\n"
	"exit codes: 0 all retried, 1 a job was unknown or still running, 2 usage error.\n";

const char cmd_artifacts_help[] =
	"usage: kiln artifacts JOB [--get PATH [-o FILE]] [--server URL] [--token TOKEN]\n"
	"\n"
	"Lists a job's artifacts, or downloads one: to FILE (default: the artifact's\n"
	"file name in the current directory; '-' for stdout). A download is checked\n"
	"against the artifact's sha256 and written atomically.\n"
	"\n"
	"exit codes: 0 done, 1 unknown job or artifact, checksum mismatch, server\n"
	"error, 2 usage error.\n";

struct common {
	const char *server, *token;
};

#define SERVER_OPT {"server", required_argument, NULL, 's'}
#define TOKEN_OPT {"token", required_argument, NULL, 't'}

/* ---- logs ----------------------------------------------------------------- */

int cmd_logs(int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},	  {"follow", no_argument, NULL, 'f'},
		{"attempt", required_argument, NULL, 'a'}, {"offset", required_argument, NULL, 'O'},
		SERVER_OPT, TOKEN_OPT,		   {0},
	};
	struct common co = {0};
	bool follow = false;
	int64_t attempt = 0, offset = 0;
	int c;
	while ((c = getopt_long(argc, argv, "hf", opts, NULL)) != -1) {
		switch (c) {
		case 'h': return cli_print_help(cli_find_command("logs"));
		case 'f': follow = true; break;
		case 'a':
			if (parse_int64(optarg, 1, INT64_MAX, &attempt) < 0)
				return cli_usage_error("logs", "--attempt: '%s' is not a positive number", optarg);
			break;
		case 'O':
			if (parse_int64(optarg, 0, INT64_MAX, &offset) < 0)
				return cli_usage_error("logs", "--offset: '%s' is not a number of bytes", optarg);
			break;
		case 's': co.server = optarg; break;
		case 't': co.token = optarg; break;
		default: return cli_usage_error("logs", "unknown option");
		}
	}
	if (argc - optind != 1)
		return cli_usage_error("logs", "expected one job id");
	int64_t id;
	if (parse_int64(argv[optind], 1, INT64_MAX, &id) < 0)
		return cli_usage_error("logs", "'%s' is not a job id", argv[optind]);
	struct kiln_client *cl = cli_connect("logs", co.server, co.token);
	if (!cl)
		return EXIT_FAIL;
	struct kiln_err err = {0};
	int rc = EXIT_OK;
	if (cli_follow_log(cl, id, attempt, (uint64_t)offset, follow, stdout, &err) < 0)
		rc = cli_client_fail("logs", &err);
	client_free(cl);
	return rc;
}

/* ---- cancel and retry ----------------------------------------------------- */

static int parse_common(const char *cmd, int argc, char **argv, struct common *co)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'}, SERVER_OPT, TOKEN_OPT, {0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'h': cli_print_help(cli_find_command(cmd)); return 1;
		case 's': co->server = optarg; break;
		case 't': co->token = optarg; break;
		default: return cli_usage_error(cmd, "unknown option");
		}
	}
	if (optind >= argc)
		return cli_usage_error(cmd, "which job? give one or more job ids");
	for (int i = optind; i < argc; i++) {
		int64_t id;
		if (parse_int64(argv[i], 1, INT64_MAX, &id) < 0)
			return cli_usage_error(cmd, "'%s' is not a job id", argv[i]);
	}
	return 0;
}

static int job_action(const char *cmd, int argc, char **argv)
{
	struct common co = {0};
	int r = parse_common(cmd, argc, argv, &co);
	if (r)
		return r == 1 ? EXIT_OK : r;
	struct kiln_client *cl = cli_connect(cmd, co.server, co.token);
	if (!cl)
		return EXIT_FAIL;
	int rc = EXIT_OK;
	for (int i = optind; i < argc; i++) {
		_cleanup_free_ char *path = xasprintf("/v1/jobs/%s/%s", argv[i], cmd);
		json_t *ans = NULL;
		struct kiln_err err = {0};
		if (client_json(cl, "POST", path, NULL, NULL, &ans, &err) < 0) {
			rc = cli_client_fail(cmd, &err);
		} else if (streq(cmd, "cancel")) {
			printf("job %s cancelled (was %s)\n", argv[i],
			       json_string_value(json_object_get(ans, "previous_state")));
		} else {
			char b[64];
			json_t *j = json_array_get(json_object_get(ans, "jobs"), 0);
			printf("job %s retried as job %s\n", argv[i], cli_str(json_object_get(j, "id"), b));
		}
		json_decref(ans);
	}
	client_free(cl);
	return rc;
}

int cmd_cancel(int argc, char **argv) { return job_action("cancel", argc, argv); }
int cmd_retry(int argc, char **argv) { return job_action("retry", argc, argv); }

/* ---- artifacts ------------------------------------------------------------ */

struct download {
	int fd;
	crypto_hash_sha256_state h;
	uint64_t size;
	int error;
};

static int download_data(const void *data, size_t len, void *ud)
{
	struct download *d = ud;
	int r = write_all(d->fd, data, len);
	if (r < 0) {
		d->error = r;
		return r;
	}
	crypto_hash_sha256_update(&d->h, data, len);
	d->size += len;
	return 0;
}

int cli_download_artifact(struct kiln_client *cl, const char *job, const json_t *art,
			  const char *out)
{
	const char *path = json_string_value(json_object_get(art, "path"));
	const char *want = json_string_value(json_object_get(art, "sha256"));
	const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	if (!out)
		out = base;
	bool to_stdout = streq(out, "-");
	_cleanup_free_ char *tmp = to_stdout ? NULL : xasprintf("%s.kiln-part.%d", out, (int)getpid());
	struct download d = {.fd = STDOUT_FILENO};
	if (!to_stdout) {
		d.fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (d.fd < 0)
			return cli_fail("artifacts", "cannot create '%s': %s", tmp, strerror(errno));
	}
	if (sodium_init() < 0)
		return cli_fail("artifacts", "libsodium failed to initialise");
	crypto_hash_sha256_init(&d.h);
	_cleanup_free_ char *esc = client_escape(path, true);
	_cleanup_free_ char *url = xasprintf("/v1/jobs/%s/artifacts/%s", job, esc);
	struct kiln_err err = {0};
	int r = client_stream(cl, url, NULL, download_data, &d, NULL, &err);
	unsigned char digest[crypto_hash_sha256_BYTES];
	char hex[65];
	crypto_hash_sha256_final(&d.h, digest);
	sodium_bin2hex(hex, sizeof(hex), digest, sizeof(digest));
	if (r >= 0 && d.error)
		r = kiln_err_set(&err, d.error, "cannot write '%s': %s", out, strerror(-d.error));
	if (r >= 0 && want && !streq(hex, want))
		r = kiln_err_set(&err, -EBADMSG,
				 "artifact '%s': the download's sha256 is %s, not %s; not saved",
				 path, hex, want);
	if (!to_stdout) {
		if (r >= 0 && fsync(d.fd) < 0)
			r = kiln_err_set(&err, -errno, "cannot write '%s': %s", out, strerror(errno));
		close(d.fd);
		if (r >= 0 && rename(tmp, out) < 0)
			r = kiln_err_set(&err, -errno, "cannot rename to '%s': %s", out, strerror(errno));
		if (r < 0)
			unlink(tmp);
	}
	if (r < 0)
		return cli_client_fail("artifacts", &err);
	if (!to_stdout)
		fprintf(stderr, "%s: %" PRIu64 " bytes, sha256 %s\n", out, d.size, hex);
	return EXIT_OK;
}

int cmd_artifacts(int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},	  {"get", required_argument, NULL, 'g'},
		{"output", required_argument, NULL, 'o'}, SERVER_OPT, TOKEN_OPT, {0},
	};
	struct common co = {0};
	const char *get = NULL, *out = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		switch (c) {
		case 'h': return cli_print_help(cli_find_command("artifacts"));
		case 'g': get = optarg; break;
		case 'o': out = optarg; break;
		case 's': co.server = optarg; break;
		case 't': co.token = optarg; break;
		default: return cli_usage_error("artifacts", "unknown option");
		}
	}
	if (argc - optind != 1)
		return cli_usage_error("artifacts", "expected one job id");
	if (out && !get)
		return cli_usage_error("artifacts", "-o FILE goes with --get PATH");
	const char *job = argv[optind];
	int64_t id;
	if (parse_int64(job, 1, INT64_MAX, &id) < 0)
		return cli_usage_error("artifacts", "'%s' is not a job id", job);
	struct kiln_client *cl = cli_connect("artifacts", co.server, co.token);
	if (!cl)
		return EXIT_FAIL;
	_cleanup_free_ char *path = xasprintf("/v1/jobs/%s/artifacts", job);
	json_t *ans = NULL;
	struct kiln_err err = {0};
	int rc = EXIT_OK;
	if (client_json(cl, "GET", path, NULL, NULL, &ans, &err) < 0) {
		rc = cli_client_fail("artifacts", &err);
	} else if (get) {
		size_t i;
		json_t *a, *found = NULL;
		json_array_foreach(json_object_get(ans, "artifacts"), i, a)
		{
			if (streq(json_string_value(json_object_get(a, "path")), get))
				found = a;
		}
		if (!found)
			rc = cli_fail("artifacts", "job %s has no artifact '%s' (kiln artifacts %s lists them)",
				      job, get, job);
		else
			rc = cli_download_artifact(cl, job, found, out);
	} else {
		json_t *arts = json_object_get(ans, "artifacts");
		if (!json_array_size(arts)) {
			printf("no artifacts\n");
		} else {
			struct table t;
			table_init(&t, 4, "PATH", "SIZE", "ATTEMPT", "SHA256");
			size_t i;
			json_t *a;
			json_array_foreach(arts, i, a)
			{
				char size[32], att[64];
				format_size((uint64_t)json_integer_value(json_object_get(a, "size")), size);
				table_add(&t, json_string_value(json_object_get(a, "path")), size,
					  cli_str(json_object_get(a, "attempt"), att),
					  json_string_value(json_object_get(a, "sha256")));
			}
			table_print(&t, stdout);
			table_release(&t);
		}
	}
	json_decref(ans);
	client_free(cl);
	return rc;
}
