/*
 * cli: the `kiln` program's commands. main.c dispatches to one function per
 * command; each lives in cmd-<name>.c with its help text.
 *
 * Exit codes (docs/cli.md): 0 success, 1 the thing failed (invalid spec,
 * job failed, server error), 2 usage error. Commands that run jobs document
 * further codes of their own.
 */
#pragma once

#include "base/base.h"

enum {
	EXIT_OK = 0,
	EXIT_FAIL = 1,
	EXIT_USAGE = 2,
};

struct cli_command {
	const char *name;
	const char *summary; /* one line, for `kiln --help` */
	const char *help;    /* full text for `kiln help NAME` / `kiln NAME --help` */
	int (*run)(int argc, char **argv);
};

/* The table of commands, in the order `kiln --help` lists them. */
extern const struct cli_command cli_commands[];
extern const size_t cli_commands_count;

const struct cli_command *cli_find_command(const char *name);

/* Prints "kiln NAME: <message>" and a hint to stderr; returns EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) KILN_PRINTF(2, 3);
/* Prints "kiln NAME: <message>" to stderr; returns EXIT_FAIL. */
int cli_fail(const char *cmd, const char *fmt, ...) KILN_PRINTF(2, 3);
/* cli_fail() to fd (-1: nowhere): a server reporting on a client's stderr. */
int cli_fail_fd(int fd, const char *cmd, const char *fmt, ...) KILN_PRINTF(3, 4);
/* Prints the help of a command to stdout; returns EXIT_OK. */
int cli_print_help(const struct cli_command *c);

/*
 * Handles the options every command accepts: returns 1 if argv[i] was
 * --help/-h (help printed; the caller returns EXIT_OK), 0 otherwise.
 */
int cli_is_help(const char *arg);

/* Commands (cmd-*.c). */
int cmd_version(int argc, char **argv);
int cmd_help(int argc, char **argv);
int cmd_validate(int argc, char **argv);
extern const char cmd_validate_help[];
extern const char cmd_server_help[];
int cmd_server(int argc, char **argv);
extern const char cmd_submit_help[], cmd_get_help[], cmd_describe_help[], cmd_logs_help[],
	cmd_cancel_help[], cmd_retry_help[], cmd_artifacts_help[];
int cmd_submit(int argc, char **argv);
int cmd_get(int argc, char **argv);
int cmd_describe(int argc, char **argv);
int cmd_logs(int argc, char **argv);
int cmd_cancel(int argc, char **argv);
int cmd_retry(int argc, char **argv);
int cmd_artifacts(int argc, char **argv);
int cmd_sandbox(int argc, char **argv);
extern const char cmd_sandbox_help[];
extern const char cmd_agent_help[];
int cmd_agent(int argc, char **argv);
extern const char cmd_usage_help[];
int cmd_usage(int argc, char **argv);
extern const char cmd_stats_help[];
int cmd_stats(int argc, char **argv);
extern const char cmd_top_help[];
int cmd_top(int argc, char **argv);
/* $XDG_STATE_HOME/kiln[/sub] (else ~/.local/state/kiln[/sub]); caller frees. */
char *cli_default_state_dir(const char *sub);
extern const char cmd_up_help[], cmd_run_help[];
int cmd_up(int argc, char **argv);
int cmd_run(int argc, char **argv);
extern const char cmd_org_help[], cmd_token_help[], cmd_whoami_help[], cmd_admin_help[];
int cmd_org(int argc, char **argv);
int cmd_token(int argc, char **argv);
int cmd_whoami(int argc, char **argv);
int cmd_admin(int argc, char **argv);
extern const char cmd_secret_help[], cmd_webhook_help[];
int cmd_secret(int argc, char **argv);
int cmd_webhook(int argc, char **argv);
extern const char cmd_audit_help[];
int cmd_audit(int argc, char **argv);

