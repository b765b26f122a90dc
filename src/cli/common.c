/* common: the command table and the helpers commands share. */
#include "cli.h"

const struct cli_command cli_commands[] = {
	{"version", "print the version", "usage: kiln version\n\nPrints kiln's version.\n", cmd_version},
	{"help", "show help for a command", "usage: kiln help [COMMAND]\n", cmd_help},
	{"validate", "check job specs, print them normalised", cmd_validate_help, cmd_validate},
	{"server", "run the control plane (HTTP API, scheduler, store)", cmd_server_help, cmd_server},
	{"submit", "submit a job spec to the server", cmd_submit_help, cmd_submit},
	{"get", "list jobs or agents", cmd_get_help, cmd_get},
	{"describe", "show one job or agent in detail", cmd_describe_help, cmd_describe},
	{"logs", "print or follow a job's output", cmd_logs_help, cmd_logs},
	{"cancel", "cancel jobs", cmd_cancel_help, cmd_cancel},
	{"retry", "submit finished jobs again", cmd_retry_help, cmd_retry},
	{"artifacts", "list or download a job's artifacts", cmd_artifacts_help, cmd_artifacts},
	{"usage", "what jobs used, per org over a period (table, CSV, JSON)", cmd_usage_help,
	 cmd_usage},
	{"stats", "performance report: percentiles, utilisation, recommendations", cmd_stats_help,
	 cmd_stats},
	{"top", "live terminal view: queue, agents, jobs, logs", cmd_top_help, cmd_top},
	{"agent", "run a host agent: lease jobs, run them in sandboxes", cmd_agent_help, cmd_agent},
	{"up", "run a server and an agent in one process (one machine)", cmd_up_help, cmd_up},
	{"run", "run a job or a command and follow it (embedded if no server)", cmd_run_help, cmd_run},
	{"sandbox", "run a command in a sandbox by hand; keep sandboxes warm (serve)",
	 cmd_sandbox_help, cmd_sandbox},
	{"org", "create and list orgs (tenants)", cmd_org_help, cmd_org},
	{"token", "create, list and revoke API tokens", cmd_token_help, cmd_token},
	{"whoami", "show which token the client uses", cmd_whoami_help, cmd_whoami},
	{"admin", "mint an admin token locally; rotate the master key", cmd_admin_help, cmd_admin},
	{"secret", "set, list and delete an org's secrets", cmd_secret_help, cmd_secret},
	{"webhook", "GitHub webhook intake: secret, deliveries", cmd_webhook_help, cmd_webhook},
	{"audit", "show and verify the audit log", cmd_audit_help, cmd_audit},
};
const size_t cli_commands_count = ARRAY_SIZE(cli_commands);

const struct cli_command *cli_find_command(const char *name)
{
	for (size_t i = 0; i < cli_commands_count; i++)
		if (streq(cli_commands[i].name, name))
			return &cli_commands[i];
	return NULL;
}

__attribute__((format(printf, 3, 0))) static int vreport(int fd, const char *cmd, const char *fmt,
							 va_list ap)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, cmd ? "kiln " : "kiln");
	if (cmd)
		buf_puts(&b, cmd);
	buf_puts(&b, ": ");
	buf_vprintf(&b, fmt, ap);
	buf_putc(&b, '\n');
	fflush(stdout);
	if (fd >= 0)
		(void)!write(fd, b.data, b.len);
	buf_release(&b);
	return 0;
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vreport(STDERR_FILENO, cmd, fmt, ap);
	va_end(ap);
	if (cmd)
		fprintf(stderr, "Run 'kiln help %s' for usage.\n", cmd);
	else
		fputs("Run 'kiln --help' for usage.\n", stderr);
	return EXIT_USAGE;
}

int cli_fail(const char *cmd, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vreport(STDERR_FILENO, cmd, fmt, ap);
	va_end(ap);
	return EXIT_FAIL;
}

int cli_fail_fd(int fd, const char *cmd, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vreport(fd, cmd, fmt, ap);
	va_end(ap);
	return EXIT_FAIL;
}

int cli_print_help(const struct cli_command *c)
{
	fputs(c->help, stdout);
	return EXIT_OK;
}

int cli_is_help(const char *arg)
{
	return streq(arg, "-h") || streq(arg, "--help");
}

int cmd_version(int argc, char **argv)
{
	(void)argv;
	if (argc > 1 && !cli_is_help(argv[1]))
		return cli_usage_error("version", "takes no arguments");
	printf("kiln %s\n", KILN_VERSION);
	return EXIT_OK;
}

int cmd_help(int argc, char **argv)
{
	if (argc < 2) {
		fputs("usage: kiln help COMMAND\n\ncommands:\n", stdout);
		for (size_t i = 0; i < cli_commands_count; i++)
			printf("  %-12s %s\n", cli_commands[i].name, cli_commands[i].summary);
		return EXIT_OK;
	}
	if (argc > 2)
		return cli_usage_error("help", "takes one command name");
	const struct cli_command *c = cli_find_command(argv[1]);
	if (!c)
		return cli_usage_error("help", "unknown command '%s'", argv[1]);
	return cli_print_help(c);
}
