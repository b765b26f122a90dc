/*
 * main: `kiln [GLOBAL OPTIONS] COMMAND [ARGS]`. Parses the global options
 * (log level and format), then hands argv to the command.
 */
#include "cli.h"

#include <getopt.h>

static void print_main_help(FILE *f)
{
	fputs("kiln " KILN_VERSION " - self-hosted CI and job execution\n"
	      "\n"
	      "usage: kiln [--log-level LEVEL] [--log-format FORMAT] COMMAND [ARGS...]\n"
	      "       kiln help COMMAND\n"
	      "\n"
	      "commands:\n",
	      f);
	for (size_t i = 0; i < cli_commands_count; i++)
		fprintf(f, "  %-12s %s\n", cli_commands[i].name, cli_commands[i].summary);
	fputs("\n"
	      "global options:\n"
	      "  --log-level LEVEL    error, warn, info (default) or debug\n"
	      "  --log-format FORMAT  logfmt (default) or json; kiln's own log goes to stderr\n"
	      "  -h, --help           show this help\n"
	      "  --version            show the version\n"
	      "\n"
	      "exit codes: 0 success, 1 failure (invalid spec, failed job, ...), 2 usage error.\n"
	      "See docs/cli.md for every command.\n",
	      f);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{"log-level", required_argument, NULL, 'l'},
		{"log-format", required_argument, NULL, 'f'},
		{0},
	};
	const char *env = getenv("KILN_LOG_LEVEL");
	enum log_level level;
	if (env && log_level_from_string(env, &level) >= 0)
		log_set_level(level);
	env = getenv("KILN_LOG_FORMAT");
	enum log_format fmt;
	if (env && log_format_from_string(env, &fmt) >= 0)
		log_set_format(fmt);

	/* '+': stop at the first non-option, the command name. */
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+hV", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			print_main_help(stdout);
			return EXIT_OK;
		case 'V':
			return cmd_version(1, argv);
		case 'l':
			if (log_level_from_string(optarg, &level) < 0)
				return cli_usage_error(NULL, "unknown log level '%s' (use error, warn, info or debug)", optarg);
			log_set_level(level);
			break;
		case 'f':
			if (log_format_from_string(optarg, &fmt) < 0)
				return cli_usage_error(NULL, "unknown log format '%s' (use logfmt or json)", optarg);
			log_set_format(fmt);
			break;
		default:
			if (optopt)
				return cli_usage_error(NULL, "unknown option '-%c'", optopt);
			return cli_usage_error(NULL, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc) {
		print_main_help(stderr);
		return EXIT_USAGE;
	}
	const char *name = argv[optind];
	const struct cli_command *cmd = cli_find_command(name);
	if (!cmd) {
		const char *best = NULL;
		size_t best_d = 3;
		for (size_t i = 0; i < cli_commands_count; i++) {
			size_t d = str_edit_distance(name, cli_commands[i].name, best_d);
			if (d < best_d)
				best = cli_commands[i].name, best_d = d;
		}
		if (best)
			return cli_usage_error(NULL, "unknown command '%s' (did you mean '%s'?)", name, best);
		return cli_usage_error(NULL, "unknown command '%s'", name);
	}
	/* The command sees argv[0] = its own name; getopt starts afresh. */
	int first = optind;
	optind = 0;
	opterr = 1;
	return cmd->run(argc - first, argv + first);
}
