/*
 * The argv request: how the front (src/front/kiln.c, the small static
 * `kiln`) hands a whole `kiln sandbox run` command line to a running
 * `kiln sandbox serve`. Shared by the front (musl, no other kiln header)
 * and the server, like kiln-init's init-proto.h.
 *
 * One frame (the 4-byte native length, then the payload; remote.h) with the
 * client's open fds among 0, 1, 2 as SCM_RIGHTS. The payload is a list of
 * NUL-terminated strings:
 *
 *   SANDBOX_ARGV_MAGIC  STDIO  CWD  ARGC  ARGV[0..ARGC)  ENVC  ENV[0..ENVC)
 *
 * STDIO is the decimal bit mask of the fds that came (bit i: fd i), CWD the
 * client's working directory (absolute), ARGV the arguments from "run" on,
 * ENV the client's environment. Counts are decimal.
 *
 * The server answers with one frame:
 *   "local"     it does not take this run (options that need the client's
 *               own process such as --keep, a usage error, --help, another
 *               state dir, another uid): the
 *               client runs the full kiln with the same arguments; nothing
 *               was read from or written to the client's fds.
 *   "exit N"    the run is over and reported on the client's stdout/stderr
 *               exactly as the full kiln would; the client exits with N.
 * Meanwhile the client may send {"cancel": SIGNO} frames (remote.h), and
 * its closing the connection cancels the run.
 */
#pragma once

#define SANDBOX_ARGV_MAGIC "kiln-argv 1"
#define SANDBOX_ARGV_SOCKET "serve.sock"
#define SANDBOX_ARGV_MAX_FRAME (1024 * 1024)
/* At most this many arguments and environment entries each. */
#define SANDBOX_ARGV_MAX_STRINGS 65536
