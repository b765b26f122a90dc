/*
 * cmd-tenancy: `kiln org`, `kiln token`, `kiln whoami` and `kiln admin`
 * (tokens minted from the state directory, master key rotation).
 */
#include "output.h"
#include "server/server.h"

#include <getopt.h>
#include <inttypes.h>
#include <termios.h>

const char cmd_org_help[] =
	"usage: kiln org create NAME [-o FORMAT] [--server URL] [--token TOKEN]\n"
	"       kiln org list [-o FORMAT] [--server URL] [--token TOKEN]\n"
	"       kiln org limits NAME --max-running N|default [--server URL] [--token TOKEN]\n"
	"\n"
	"Orgs are kiln's tenants: every job, agent pool, log, artifact, secret and\n"
	"token belongs to one, and no org can see another's. 'default' always\n"
	"exists. Creating an org needs an admin token; listing shows the orgs the\n"
	"token may see (an admin sees all).\n"
	"\n"
	"Names: 1..63 of a-z, 0-9 and '-'. 'limits' sets an org's cap on its leased\n"
	"and running jobs ('default': the server's --max-running-per-org); admin only.\n"
	"\n"
	"options:\n"
	"  -o FORMAT    table (default), json or yaml\n"
	"\n"
	"exit codes: 0 done, 1 refused or server error, 2 usage error.\n";

const char cmd_token_help[] =
	"usage: kiln token create --role ROLE [--org NAME] [--name TEXT] [--expires DURATION]\n"
	"                         [--shared] [--server URL] [--token TOKEN]\n"
	"       kiln token list [--org NAME] [-o FORMAT] [--server URL] [--token TOKEN]\n"
	"       kiln token revoke ID... [--server URL] [--token TOKEN]\n"
	"\n"
	"API tokens: 256 random bits with a type prefix and a checksum (kiln_pat_,\n"
	"kiln_agt_, kiln_met_), shown once, stored only as a hash. 'create' prints\n"
	"the new token alone on stdout, for scripts; keep it safe.\n"
	"\n"
	"Roles: admin (server-wide), owner (their org, its tokens and secrets),\n"
	"member (submit, read, cancel), viewer (read), agent (register and lease\n"
	"for the org's pool; --shared: the shared pool, admin only), metrics\n"
	"(/metrics only). An owner creates owner, member, viewer and agent tokens\n"
	"of their own org; an admin any token of any org.\n"
	"\n"
	"Revocation takes effect at once. An expired or revoked token gets 401.\n"
	"\n"
	"options:\n"
	"  --role ROLE         admin, owner, member, viewer, agent or metrics\n"
	"  --org NAME          the token's org (default: the caller's)\n"
	"  --name TEXT         what the token is for (shown in lists and the audit log)\n"
	"  --expires DURATION  expire after this long (e.g. 30d, 12h; default: never)\n"
	"  --shared            an agent token for the shared pool (admin only)\n"
	"  -o FORMAT           table (default), json or yaml\n"
	"\n"
	"exit codes: 0 done, 1 refused or server error, 2 usage error.\n";

const char cmd_whoami_help[] =
	"usage: kiln whoami [-o FORMAT] [--server URL] [--token TOKEN]\n"
	"\n"
	"Prints which token the client uses: its id, name, role and org.\n"
	"\n"
	"exit codes: 0 done, 1 the token was refused or server error, 2 usage error.\n";

const char cmd_admin_help[] =
	"usage: kiln admin token [--state-dir DIR] [--name TEXT]\n"
	"       kiln admin rotate-key [--new-key-file FILE] [--server URL] [--token TOKEN]\n"
	"\n"
	"token: mints an admin token directly in a server's state directory (the\n"
	"default one of 'kiln server' unless --state-dir) and prints it alone on\n"
	"stdout: for when no admin token is at hand. It needs write access to the\n"
	"directory's database, works whether the server runs or not, and is\n"
	"recorded in the audit log.\n"
	"\n"
	"rotate-key: re-wraps every org's data key under a new master key, online,\n"
	"in one transaction (needs an admin token). With a file-backed master key\n"
	"the server generates the new key and replaces its key file; a key from\n"
	"KILN_MASTER_KEY needs --new-key-file, and KILN_MASTER_KEY must be set to\n"
	"the new key before the server's next start.\n"
	"\n"
	"exit codes: 0 done, 1 failed, 2 usage error.\n";

#define COMMON_OPTS                                                                         \
	{"help", no_argument, NULL, 'h'}, {"server", required_argument, NULL, 's'},          \
		{"token", required_argument, NULL, 't'}, {"output", required_argument, NULL, 'o'}

struct common {
	const char *cmd;
	const char *server, *token;
	enum cli_output out;
};

/* Handles the options every subcommand takes; 0 handled, 1 not ours, else an exit code. */
static int common_opt(struct common *co, int c)
{
	switch (c) {
	case 's': co->server = optarg; return 0;
	case 't': co->token = optarg; return 0;
	case 'o':
		if (cli_output_parse(optarg, &co->out) < 0 || co->out == OUT_WIDE)
			return cli_usage_error(co->cmd, "-o: '%s' is not table, json or yaml", optarg);
		return 0;
	case 'h': cli_print_help(cli_find_command(co->cmd)); return -1;
	default: return 1;
	}
}

static int finish(int rc) { return rc < 0 ? EXIT_OK : rc; }

static int request(struct common *co, const char *method, const char *path, json_t *body,
		   json_t **ret)
{
	struct kiln_client *cl = cli_connect(co->cmd, co->server, co->token);
	if (!cl)
		return EXIT_FAIL;
	struct kiln_err err = {0};
	int r = client_json(cl, method, path, body, NULL, ret, &err);
	client_free(cl);
	if (r < 0) {
		if (ret) {
			json_decref(*ret);
			*ret = NULL;
		}
		return cli_client_fail(co->cmd, &err);
	}
	return EXIT_OK;
}

static void print_doc(const struct common *co, const json_t *v)
{
	if (co->out == OUT_YAML)
		cli_print_yaml(stdout, v);
	else
		cli_print_json(stdout, v);
}

/* ---- kiln org ------------------------------------------------------------- */

static void orgs_table(const json_t *orgs)
{
	struct table t;
	table_init(&t, 4, "ID", "NAME", "RUNNING", "MAX_RUNNING");
	size_t i;
	const json_t *o;
	json_array_foreach(orgs, i, o) {
		char id[64], run[64], max[64];
		table_add(&t, cli_str(json_object_get(o, "id"), id),
			  json_string_value(json_object_get(o, "name")),
			  cli_str(json_object_get(o, "running"), run),
			  cli_str(json_object_get(o, "max_running"), max));
	}
	table_print(&t, stdout);
	table_release(&t);
}

int cmd_org(int argc, char **argv)
{
	static const struct option opts[] = {
		COMMON_OPTS, {"max-running", required_argument, NULL, 'm'}, {0}};
	struct common co = {.cmd = "org"};
	const char *max_running = NULL;
	/* Options anywhere; positionals (subcommand, name) in order. */
	char **pos = xcalloc((size_t)argc + 1, sizeof(char *));
	int npos = 0, c;
	while (optind < argc && (c = getopt_long(argc, argv, "-ho:", opts, NULL)) != -1) {
		if (c == 1) {
			pos[npos++] = optarg;
			continue;
		}
		if (c == 'm') {
			max_running = optarg;
			continue;
		}
		int r = common_opt(&co, c);
		if (r) {
			free(pos);
			return r == 1 ? cli_usage_error("org", "unknown option") : finish(r);
		}
	}
	while (optind < argc)
		pos[npos++] = argv[optind++];
	if (npos == 0) {
		free(pos);
		return cli_usage_error("org", "expected 'create NAME', 'list' or 'limits NAME'");
	}
	const char *sub = pos[0];
	/* The rest reads argv[optind..]: point it at the positionals after sub. */
	argv = pos;
	argc = npos;
	optind = 1;
	_cleanup_free_ char **owned = pos;
	json_t *ans = NULL;
	if (streq(sub, "limits")) {
		int64_t n = 0;
		if (argc - optind != 1 || !max_running)
			return cli_usage_error("org", "limits takes an org name and --max-running");
		if (!streq(max_running, "default") && parse_int64(max_running, 1, 1000000, &n) < 0)
			return cli_usage_error("org", "--max-running: '%s' is not a number of jobs or "
						      "'default'",
					       max_running);
		_cleanup_free_ char *e = client_escape(argv[optind], false);
		_cleanup_free_ char *path = xasprintf("/v1/orgs/%s/limits", e);
		json_t *body = json_pack("{s:o}", "max_running", n ? json_integer(n) : json_null());
		int rc = request(&co, "POST", path, body, &ans);
		json_decref(body);
		if (rc == EXIT_OK)
			printf("org %s: max running %s\n", argv[optind], n ? max_running : "default");
		json_decref(ans);
		return rc;
	}
	int rc;
	if (streq(sub, "create")) {
		if (argc - optind != 1)
			return cli_usage_error("org", "create takes one org name");
		json_t *body = json_pack("{s:s}", "name", argv[optind]);
		rc = request(&co, "POST", "/v1/orgs", body, &ans);
		json_decref(body);
		if (rc == EXIT_OK) {
			if (co.out == OUT_TABLE)
				printf("%s\n", json_string_value(json_object_get(ans, "name")));
			else
				print_doc(&co, ans);
		}
	} else if (streq(sub, "list")) {
		if (argc != optind)
			return cli_usage_error("org", "list takes no arguments");
		rc = request(&co, "GET", "/v1/orgs", NULL, &ans);
		if (rc == EXIT_OK) {
			const json_t *orgs = json_object_get(ans, "orgs");
			if (co.out == OUT_TABLE)
				orgs_table(orgs);
			else
				print_doc(&co, orgs);
		}
	} else {
		return cli_usage_error("org", "unknown subcommand '%s' (create, list, limits)", sub);
	}
	json_decref(ans);
	return rc;
}

/* ---- kiln token ----------------------------------------------------------- */

static const char *token_state(const json_t *t)
{
	if (!json_is_null(json_object_get(t, "revoked_at")))
		return "revoked";
	const char *exp = json_string_value(json_object_get(t, "expires_at"));
	uint64_t ms;
	if (exp && proto_parse_time(exp, &ms) == 0 && ms <= proto_now_ms())
		return "expired";
	return "active";
}

static void tokens_table(const json_t *tokens)
{
	struct table t;
	table_init(&t, 7, "ID", "NAME", "ROLE", "ORG", "STATE", "CREATED", "LAST_USED");
	size_t i;
	const json_t *o;
	json_array_foreach(tokens, i, o) {
		char id[64], created[32], used[32];
		cli_age(json_object_get(o, "created_at"), created);
		cli_age(json_object_get(o, "last_used_at"), used);
		const char *org = json_string_value(json_object_get(o, "org"));
		table_add(&t, cli_str(json_object_get(o, "id"), id),
			  json_string_value(json_object_get(o, "name")),
			  json_string_value(json_object_get(o, "role")), org ? org : "(shared)",
			  token_state(o), created, used);
	}
	table_print(&t, stdout);
	table_release(&t);
}

enum { OPT_ROLE = 256, OPT_ORG, OPT_NAME, OPT_EXPIRES, OPT_SHARED, OPT_STATE, OPT_NEWKEY };

static int token_create(struct common *co, const char *role, const char *org, const char *name,
			const char *expires, bool shared)
{
	if (!role)
		return cli_usage_error("token", "create needs --role (admin, owner, member, viewer, "
						"agent or metrics)");
	uint64_t ms;
	if (expires && (parse_duration_ms(expires, &ms) < 0 || !ms))
		return cli_usage_error("token", "--expires: '%s' is not a duration (e.g. 30d, 12h)",
				       expires);
	json_t *body = json_pack("{s:s,s:b}", "role", role, "shared", shared);
	if (org)
		json_object_set_new(body, "org", json_string(org));
	if (name)
		json_object_set_new(body, "name", json_string(name));
	if (expires)
		json_object_set_new(body, "expires_in", json_string(expires));
	json_t *ans = NULL;
	int rc = request(co, "POST", "/v1/tokens", body, &ans);
	json_decref(body);
	if (rc == EXIT_OK) {
		if (co->out == OUT_TABLE)
			printf("%s\n", json_string_value(json_object_get(ans, "token")));
		else
			print_doc(co, ans);
	}
	json_decref(ans);
	return rc;
}

int cmd_token(int argc, char **argv)
{
	static const struct option opts[] = {
		COMMON_OPTS,
		{"role", required_argument, NULL, OPT_ROLE},
		{"org", required_argument, NULL, OPT_ORG},
		{"name", required_argument, NULL, OPT_NAME},
		{"expires", required_argument, NULL, OPT_EXPIRES},
		{"shared", no_argument, NULL, OPT_SHARED},
		{0},
	};
	struct common co = {.cmd = "token"};
	const char *role = NULL, *org = NULL, *name = NULL, *expires = NULL;
	bool shared = false;
	const char *sub = NULL;
	int c;
	/* Subcommand first or after options: collect positionals in order. */
	char **pos = xcalloc((size_t)argc + 1, sizeof(char *));
	int npos = 0, rc = EXIT_OK;
	while (optind < argc) {
		c = getopt_long(argc, argv, "-ho:", opts, NULL);
		if (c == -1)
			break;
		if (c == 1) {
			pos[npos++] = optarg;
			continue;
		}
		switch (c) {
		case OPT_ROLE: role = optarg; continue;
		case OPT_ORG: org = optarg; continue;
		case OPT_NAME: name = optarg; continue;
		case OPT_EXPIRES: expires = optarg; continue;
		case OPT_SHARED: shared = true; continue;
		default: break;
		}
		int r = common_opt(&co, c);
		if (r) {
			free(pos);
			return r == 1 ? cli_usage_error("token", "unknown option") : finish(r);
		}
	}
	while (optind < argc)
		pos[npos++] = argv[optind++];
	if (npos == 0) {
		free(pos);
		return cli_usage_error("token", "expected create, list or revoke");
	}
	sub = pos[0];
	if (streq(sub, "create")) {
		rc = npos == 1 ? token_create(&co, role, org, name, expires, shared)
			       : cli_usage_error("token", "create takes options only");
	} else if (streq(sub, "list")) {
		if (npos != 1) {
			rc = cli_usage_error("token", "list takes options only");
		} else {
			_cleanup_free_ char *path = NULL;
			if (org) {
				_cleanup_free_ char *e = client_escape(org, false);
				path = xasprintf("/v1/tokens?org=%s", e);
			} else {
				path = xstrdup("/v1/tokens");
			}
			json_t *ans = NULL;
			rc = request(&co, "GET", path, NULL, &ans);
			if (rc == EXIT_OK) {
				const json_t *v = json_object_get(ans, "tokens");
				if (co.out == OUT_TABLE)
					tokens_table(v);
				else
					print_doc(&co, v);
			}
			json_decref(ans);
		}
	} else if (streq(sub, "revoke")) {
		if (npos < 2)
			rc = cli_usage_error("token", "revoke needs one or more token ids");
		for (int i = 1; i < npos && rc != EXIT_USAGE; i++) {
			int64_t id;
			if (parse_int64(pos[i], 1, INT64_MAX, &id) < 0) {
				rc = cli_usage_error("token", "'%s' is not a token id", pos[i]);
				break;
			}
			_cleanup_free_ char *path = xasprintf("/v1/tokens/%" PRId64 "/revoke", id);
			if (request(&co, "POST", path, NULL, NULL) != EXIT_OK)
				rc = EXIT_FAIL;
			else
				printf("revoked token %" PRId64 "\n", id);
		}
	} else {
		rc = cli_usage_error("token", "unknown subcommand '%s' (create, list, revoke)", sub);
	}
	free(pos);
	return rc;
}

/* ---- kiln whoami ---------------------------------------------------------- */

int cmd_whoami(int argc, char **argv)
{
	static const struct option opts[] = {COMMON_OPTS, {0}};
	struct common co = {.cmd = "whoami"};
	int c;
	while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		int r = common_opt(&co, c);
		if (r)
			return r == 1 ? cli_usage_error("whoami", "unknown option") : finish(r);
	}
	if (optind != argc)
		return cli_usage_error("whoami", "takes no arguments");
	json_t *ans = NULL;
	int rc = request(&co, "GET", "/v1/whoami", NULL, &ans);
	if (rc == EXIT_OK) {
		if (co.out == OUT_TABLE) {
			const char *org = json_string_value(json_object_get(ans, "org"));
			printf("%s, role %s, org %s\n", json_string_value(json_object_get(ans, "name")),
			       json_string_value(json_object_get(ans, "role")), org ? org : "(none)");
		} else {
			print_doc(&co, ans);
		}
	}
	json_decref(ans);
	return rc;
}

/* ---- kiln admin ----------------------------------------------------------- */

static char *default_state_dir(void)
{
	const char *x = getenv("XDG_STATE_HOME");
	if (x && *x)
		return path_join(x, "kiln");
	const char *home = getenv("HOME");
	return xasprintf("%s/.local/state/kiln", home && *home ? home : "/tmp");
}

static int admin_token(int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"state-dir", required_argument, NULL, OPT_STATE},
		{"name", required_argument, NULL, OPT_NAME},
		{0},
	};
	_cleanup_free_ char *state = NULL;
	const char *name = "admin (kiln admin token)";
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'h': return cli_print_help(cli_find_command("admin"));
		case OPT_STATE:
			free(state);
			state = xstrdup(optarg);
			break;
		case OPT_NAME: name = optarg; break;
		default: return cli_usage_error("admin", "unknown option");
		}
	}
	if (optind != argc)
		return cli_usage_error("admin", "token takes options only");
	if (!state)
		state = default_state_dir();
	char *tok = NULL;
	struct kiln_err err = {0};
	if (server_mint_admin_token(state, NULL, name, &tok, &err) < 0)
		return cli_fail("admin", "%s", err.msg);
	printf("%s\n", tok);
	explicit_bzero(tok, strlen(tok));
	free(tok);
	return EXIT_OK;
}

static int admin_rotate(int argc, char **argv)
{
	static const struct option opts[] = {
		COMMON_OPTS,
		{"new-key-file", required_argument, NULL, OPT_NEWKEY},
		{0},
	};
	struct common co = {.cmd = "admin"};
	const char *file = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		if (c == OPT_NEWKEY) {
			file = optarg;
			continue;
		}
		int r = common_opt(&co, c);
		if (r)
			return r == 1 ? cli_usage_error("admin", "unknown option") : finish(r);
	}
	if (optind != argc)
		return cli_usage_error("admin", "rotate-key takes options only");
	json_t *body = json_object();
	if (file) {
		struct buf b = BUF_INIT;
		int r = read_file(file, 4096, &b);
		if (r < 0) {
			json_decref(body);
			buf_release(&b);
			return cli_fail("admin", "cannot read '%s': %s", file, strerror(-r));
		}
		buf_puts(&b, "");
		json_object_set_new(body, "new_key", json_string(b.data));
		explicit_bzero(b.data, b.len);
		buf_release(&b);
	}
	json_t *ans = NULL;
	int rc = request(&co, "POST", "/v1/admin/rotate-key", body, &ans);
	json_decref(body);
	if (rc == EXIT_OK) {
		if (co.out == OUT_TABLE)
			printf("master key rotated to %s; %" JSON_INTEGER_FORMAT " data keys re-wrapped\n",
			       json_string_value(json_object_get(ans, "key_id")),
			       json_integer_value(json_object_get(ans, "rewrapped")));
		else
			print_doc(&co, ans);
	}
	json_decref(ans);
	return rc;
}

int cmd_admin(int argc, char **argv)
{
	if (argc < 2)
		return cli_usage_error("admin", "expected 'token' or 'rotate-key'");
	if (cli_is_help(argv[1]))
		return cli_print_help(cli_find_command("admin"));
	if (streq(argv[1], "token"))
		return admin_token(argc - 1, argv + 1);
	if (streq(argv[1], "rotate-key"))
		return admin_rotate(argc - 1, argv + 1);
	return cli_usage_error("admin", "unknown subcommand '%s' (token, rotate-key)", argv[1]);
}

/* ---- kiln secret ---------------------------------------------------------- */

const char cmd_secret_help[] =
	"usage: kiln secret set NAME [--org ORG] [--server URL] [--token TOKEN] < value\n"
	"       kiln secret list [--org ORG] [-o FORMAT] [--server URL] [--token TOKEN]\n"
	"       kiln secret delete NAME [--org ORG] [--server URL] [--token TOKEN]\n"
	"\n"
	"An org's secrets: values a job receives as environment variables when its\n"
	"spec names them (secrets: [NAME]). 'set' reads the value from stdin (from a\n"
	"terminal: without echo; one trailing newline is removed) and never from the\n"
	"command line; the server seals it at once and never returns it. 'list'\n"
	"shows names and versions. Setting and deleting need an owner (or admin)\n"
	"token; listing, any token of the org.\n"
	"\n"
	"Names: upper-case letters, digits and _, not starting with a digit.\n"
	"Values: UTF-8 text without NUL, at most 48 KiB. In a job's log the values\n"
	"are masked as *** (also split across writes, base64 and URL-encoded): a\n"
	"defence in depth, not a guarantee (docs/security.md).\n"
	"\n"
	"exit codes: 0 done, 1 refused or server error, 2 usage error.\n";


/* Reads a secret value from stdin (no echo on a terminal); strips one '\n'. */
static int read_value(struct buf *out)
{
	struct termios old, quiet;
	bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &old) == 0;
	if (tty) {
		fputs("value (not echoed): ", stderr);
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
	}
	int r;
	if (tty) {
		char line[48 * 1024 + 2];
		r = fgets(line, sizeof(line), stdin) ? 0 : -EIO;
		if (r == 0)
			buf_puts(out, line);
		explicit_bzero(line, sizeof(line));
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
		fputc('\n', stderr);
	} else {
		r = read_fd_all(STDIN_FILENO, 48 * 1024 + 1, out);
	}
	if (r < 0)
		return r;
	if (out->len && out->data[out->len - 1] == '\n')
		out->data[--out->len] = '\0';
	if (out->len && out->data[out->len - 1] == '\r')
		out->data[--out->len] = '\0';
	return 0;
}

static void secrets_table(const json_t *v)
{
	struct table t;
	table_init(&t, 3, "NAME", "VERSION", "UPDATED");
	size_t i;
	const json_t *o;
	json_array_foreach(v, i, o) {
		char ver[64], upd[32];
		cli_age(json_object_get(o, "updated_at"), upd);
		table_add(&t, json_string_value(json_object_get(o, "name")),
			  cli_str(json_object_get(o, "version"), ver), upd);
	}
	table_print(&t, stdout);
	table_release(&t);
}

static char *secret_path(const char *name, const char *org)
{
	_cleanup_free_ char *n = client_escape(name ? name : "", false);
	_cleanup_free_ char *o = org ? client_escape(org, false) : NULL;
	return name ? xasprintf("/v1/secrets/%s%s%s", n, o ? "?org=" : "", o ? o : "")
		    : xasprintf("/v1/secrets%s%s", o ? "?org=" : "", o ? o : "");
}

int cmd_secret(int argc, char **argv)
{
	static const struct option opts[] = {COMMON_OPTS, {"org", required_argument, NULL, OPT_ORG},
					     {0}};
	struct common co = {.cmd = "secret"};
	const char *org = NULL;
	char **pos = xcalloc((size_t)argc + 1, sizeof(char *));
	int npos = 0, c;
	while (optind < argc && (c = getopt_long(argc, argv, "-ho:", opts, NULL)) != -1) {
		if (c == 1) {
			pos[npos++] = optarg;
			continue;
		}
		if (c == OPT_ORG) {
			org = optarg;
			continue;
		}
		int r = common_opt(&co, c);
		if (r) {
			free(pos);
			return r == 1 ? cli_usage_error("secret", "unknown option") : finish(r);
		}
	}
	while (optind < argc)
		pos[npos++] = argv[optind++];
	int rc;
	const char *sub = npos ? pos[0] : "";
	if (streq(sub, "set") && npos == 2) {
		struct buf v = BUF_INIT;
		if (read_value(&v) < 0) {
			rc = cli_fail("secret", "cannot read the value from stdin");
		} else if (v.len == 0) {
			rc = cli_usage_error("secret", "the value (stdin) is empty");
		} else {
			struct kiln_client *cl = cli_connect("secret", co.server, co.token);
			rc = EXIT_FAIL;
			if (cl) {
				_cleanup_free_ char *path = secret_path(pos[1], org);
				struct kiln_err err = {0};
				json_t *ans = NULL;
				if (client_request(cl, "PUT", path, "application/octet-stream", v.data,
						   v.len, NULL, &ans, &err) < 0) {
					rc = cli_client_fail("secret", &err);
				} else {
					rc = EXIT_OK;
					fprintf(stderr, "set secret %s (version %" JSON_INTEGER_FORMAT ")\n",
						pos[1], json_integer_value(json_object_get(ans, "version")));
				}
				json_decref(ans);
				client_free(cl);
			}
		}
		if (v.data)
			explicit_bzero(v.data, v.len);
		buf_release(&v);
	} else if (streq(sub, "list") && npos == 1) {
		_cleanup_free_ char *path = secret_path(NULL, org);
		json_t *ans = NULL;
		rc = request(&co, "GET", path, NULL, &ans);
		if (rc == EXIT_OK) {
			const json_t *v = json_object_get(ans, "secrets");
			if (co.out == OUT_TABLE)
				secrets_table(v);
			else
				print_doc(&co, v);
		}
		json_decref(ans);
	} else if (streq(sub, "delete") && npos == 2) {
		_cleanup_free_ char *path = secret_path(pos[1], org);
		rc = request(&co, "DELETE", path, NULL, NULL);
		if (rc == EXIT_OK)
			printf("deleted secret %s\n", pos[1]);
	} else {
		rc = cli_usage_error("secret", "expected 'set NAME', 'list' or 'delete NAME'");
	}
	free(pos);
	return rc;
}

/* ---- kiln webhook --------------------------------------------------------- */

const char cmd_webhook_help[] =
	"usage: kiln webhook secret [--org ORG] [--server URL] [--token TOKEN] < secret\n"
	"       kiln webhook drop-previous [--org ORG] [--server URL] [--token TOKEN]\n"
	"       kiln webhook deliveries [--org ORG] [--limit N] [-o FORMAT]\n"
	"\n"
	"GitHub workflow_job intake. Point a GitHub webhook (content type\n"
	"application/json, event 'Workflow jobs') at\n"
	"  http://SERVER/v1/webhooks/github/ORG   (or /v1/webhooks/github: 'default')\n"
	"with a secret, and give kiln the same secret: 'secret' reads it from stdin\n"
	"(from a terminal without echo) and keeps the one it replaces accepted too,\n"
	"for a rotation; 'drop-previous' stops accepting the replaced one. Needs an\n"
	"owner (or admin) token.\n"
	"\n"
	"A 'queued' job whose labels (without 'self-hosted') an agent of the org's\n"
	"pools has becomes a kiln job running the server's --github-runner-command;\n"
	"'completed' for such a job kiln never started cancels it; the rest is\n"
	"recorded. 'deliveries' lists what kiln did with the latest deliveries.\n"
	"\n"
	"exit codes: 0 done, 1 refused or server error, 2 usage error.\n";

static void deliveries_table(const json_t *v)
{
	struct table t;
	table_init(&t, 6, "RECEIVED", "DELIVERY", "EVENT", "ACTION", "JOB", "OUTCOME");
	size_t i;
	const json_t *o;
	json_array_foreach(v, i, o) {
		char age[32], job[64];
		cli_age(json_object_get(o, "received_at"), age);
		table_add(&t, age, json_string_value(json_object_get(o, "delivery")),
			  json_string_value(json_object_get(o, "event")),
			  json_string_value(json_object_get(o, "action")),
			  cli_str(json_object_get(o, "job"), job),
			  json_string_value(json_object_get(o, "outcome")));
	}
	table_print(&t, stdout);
	table_release(&t);
}

enum { OPT_LIMIT = 300 };

int cmd_webhook(int argc, char **argv)
{
	static const struct option opts[] = {COMMON_OPTS, {"org", required_argument, NULL, OPT_ORG},
					     {"limit", required_argument, NULL, OPT_LIMIT}, {0}};
	struct common co = {.cmd = "webhook"};
	const char *org = NULL;
	int64_t limit = 50;
	char **pos = xcalloc((size_t)argc + 1, sizeof(char *));
	int npos = 0, c;
	while (optind < argc && (c = getopt_long(argc, argv, "-ho:", opts, NULL)) != -1) {
		if (c == 1) {
			pos[npos++] = optarg;
			continue;
		}
		if (c == OPT_ORG) {
			org = optarg;
			continue;
		}
		if (c == OPT_LIMIT) {
			if (parse_int64(optarg, 1, 1000, &limit) < 0) {
				free(pos);
				return cli_usage_error("webhook", "--limit: '%s' is not in 1..1000",
						       optarg);
			}
			continue;
		}
		int r = common_opt(&co, c);
		if (r) {
			free(pos);
			return r == 1 ? cli_usage_error("webhook", "unknown option") : finish(r);
		}
	}
	while (optind < argc)
		pos[npos++] = argv[optind++];
	const char *sub = npos == 1 ? pos[0] : "";
	free(pos);
	_cleanup_free_ char *oq = org ? client_escape(org, false) : NULL;
	int rc;
	if (streq(sub, "secret")) {
		struct buf v = BUF_INIT;
		if (read_value(&v) < 0 || v.len == 0) {
			buf_release(&v);
			return cli_usage_error("webhook", "give the secret on stdin");
		}
		struct kiln_client *cl = cli_connect("webhook", co.server, co.token);
		rc = EXIT_FAIL;
		if (cl) {
			_cleanup_free_ char *path = xasprintf("/v1/github/webhook-secret%s%s",
							      oq ? "?org=" : "", oq ? oq : "");
			struct kiln_err err = {0};
			json_t *ans = NULL;
			if (client_request(cl, "PUT", path, "application/octet-stream", v.data, v.len,
					   NULL, &ans, &err) < 0) {
				rc = cli_client_fail("webhook", &err);
			} else {
				rc = EXIT_OK;
				fprintf(stderr, "webhook secret set%s\n",
					json_is_true(json_object_get(ans, "previous_kept"))
						? "; the one it replaces is accepted until 'kiln webhook "
						  "drop-previous'"
						: "");
			}
			json_decref(ans);
			client_free(cl);
		}
		explicit_bzero(v.data, v.len);
		buf_release(&v);
	} else if (streq(sub, "drop-previous")) {
		_cleanup_free_ char *path = xasprintf("/v1/github/webhook-secret/previous%s%s",
						      oq ? "?org=" : "", oq ? oq : "");
		rc = request(&co, "DELETE", path, NULL, NULL);
		if (rc == EXIT_OK)
			printf("the previous webhook secret is no longer accepted\n");
	} else if (streq(sub, "deliveries")) {
		_cleanup_free_ char *path = xasprintf("/v1/github/deliveries?limit=%" PRId64 "%s%s",
						      limit, oq ? "&org=" : "", oq ? oq : "");
		json_t *ans = NULL;
		rc = request(&co, "GET", path, NULL, &ans);
		if (rc == EXIT_OK) {
			const json_t *v = json_object_get(ans, "deliveries");
			if (co.out == OUT_TABLE)
				deliveries_table(v);
			else
				print_doc(&co, v);
		}
		json_decref(ans);
	} else {
		rc = cli_usage_error("webhook", "expected 'secret', 'drop-previous' or 'deliveries'");
	}
	return rc;
}

/* ---- kiln audit ----------------------------------------------------------- */

const char cmd_audit_help[] =
	"usage: kiln audit [--since WHEN] [--org ORG] [--limit N] [-o FORMAT]\n"
	"       kiln audit --verify\n"
	"\n"
	"The audit log: one record per mutating call — when, who (the token, or the\n"
	"webhook), the org, the action, its target, the result, the HTTP status and\n"
	"the client's address — oldest first. Append-only, and hash-chained: each\n"
	"record carries the SHA-256 of the previous one and itself; --verify checks\n"
	"the whole chain (admin). An owner sees their org's records; an admin every\n"
	"org's (or --org's).\n"
	"\n"
	"options:\n"
	"  --since WHEN   RFC 3339 time, or a duration ago (24h, 7d)\n"
	"  --org ORG      one org (admin)\n"
	"  --limit N      at most N records (default 1000)\n"
	"  -o FORMAT      table (default), json or yaml\n"
	"\n"
	"exit codes: 0 done (--verify: the chain is intact), 1 refused, server\n"
	"error or (--verify) a broken chain, 2 usage error.\n";

static void audit_table(const json_t *v)
{
	struct table t;
	table_init(&t, 8, "SEQ", "AT", "ORG", "ACTOR", "ACTION", "TARGET", "RESULT", "SOURCE");
	size_t i;
	const json_t *o;
	json_array_foreach(v, i, o) {
		char seq[64], status[80];
		const char *org = json_string_value(json_object_get(o, "org"));
		snprintf(status, sizeof(status), "%s %" JSON_INTEGER_FORMAT,
			 json_string_value(json_object_get(o, "result")),
			 json_integer_value(json_object_get(o, "status")));
		table_add(&t, cli_str(json_object_get(o, "seq"), seq),
			  json_string_value(json_object_get(o, "at")), org ? org : "-",
			  json_string_value(json_object_get(o, "actor")),
			  json_string_value(json_object_get(o, "action")),
			  json_string_value(json_object_get(o, "target")), status,
			  json_string_value(json_object_get(o, "source")));
	}
	table_print(&t, stdout);
	table_release(&t);
}

enum { OPT_SINCE = 400, OPT_VERIFY };

int cmd_audit(int argc, char **argv)
{
	static const struct option opts[] = {
		COMMON_OPTS,
		{"org", required_argument, NULL, OPT_ORG},
		{"since", required_argument, NULL, OPT_SINCE},
		{"limit", required_argument, NULL, OPT_LIMIT},
		{"verify", no_argument, NULL, OPT_VERIFY},
		{0},
	};
	struct common co = {.cmd = "audit"};
	const char *org = NULL, *since = NULL;
	int64_t limit = 1000;
	bool verify = false;
	int c;
	while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		switch (c) {
		case OPT_ORG: org = optarg; continue;
		case OPT_SINCE: since = optarg; continue;
		case OPT_VERIFY: verify = true; continue;
		case OPT_LIMIT:
			if (parse_int64(optarg, 1, 10000, &limit) < 0)
				return cli_usage_error("audit", "--limit: '%s' is not in 1..10000", optarg);
			continue;
		default: break;
		}
		int r = common_opt(&co, c);
		if (r)
			return r == 1 ? cli_usage_error("audit", "unknown option") : finish(r);
	}
	if (optind != argc)
		return cli_usage_error("audit", "takes options only");
	json_t *ans = NULL;
	if (verify) {
		int rc = request(&co, "GET", "/v1/audit/verify", NULL, &ans);
		if (rc == EXIT_OK) {
			if (co.out != OUT_TABLE)
				print_doc(&co, ans);
			else if (json_is_true(json_object_get(ans, "intact")))
				printf("the audit log is intact: %" JSON_INTEGER_FORMAT " records\n",
				       json_integer_value(json_object_get(ans, "records")));
			else
				printf("the audit log is BROKEN at record %" JSON_INTEGER_FORMAT
				       " (altered or removed behind the server's back)\n",
				       json_integer_value(json_object_get(ans, "first_bad_seq")));
			if (!json_is_true(json_object_get(ans, "intact")))
				rc = EXIT_FAIL;
		}
		json_decref(ans);
		return rc;
	}
	struct buf path = BUF_INIT;
	buf_printf(&path, "/v1/audit?limit=%" PRId64, limit);
	if (org) {
		_cleanup_free_ char *e = client_escape(org, false);
		buf_printf(&path, "&org=%s", e);
	}
	if (since) {
		_cleanup_free_ char *e = client_escape(since, false);
		buf_printf(&path, "&since=%s", e);
	}
	int rc = request(&co, "GET", path.data, NULL, &ans);
	buf_release(&path);
	if (rc == EXIT_OK) {
		const json_t *v = json_object_get(ans, "records");
		if (co.out == OUT_TABLE)
			audit_table(v);
		else
			print_doc(&co, v);
	}
	json_decref(ans);
	return rc;
}
