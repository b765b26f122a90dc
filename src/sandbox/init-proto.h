/*
 * init-proto: the wire protocol between the sandbox library (the parent,
 * outside) and kiln-init (PID 1, inside). Self-contained (only <stdint.h>) so
 * that the static kiln-init can include it.
 *
 * Transport: AF_UNIX SOCK_SEQPACKET, one message per packet, native byte
 * order (both ends are on the same host).
 *
 *  - The control socket is fd KILN_INIT_CONTROL_FD in kiln-init, CLOEXEC, and
 *    never visible to processes started in the sandbox (kiln-init is not
 *    dumpable, so /proc/1/fd is closed to them). kiln-init sends READY once,
 *    then reads EXEC requests. EOF on it means the parent is gone or
 *    destroying the sandbox: kiln-init kills every process and exits.
 *  - Each EXEC carries, as SCM_RIGHTS, a fresh "process socket" (one end of a
 *    new socketpair) and the stdio fds. Replies for that process go on its
 *    process socket: STARTED (with a pidfd of the process) or FAILED, and
 *    later EXITED, after which kiln-init closes it. The parent may send
 *    SIGNAL on it. So each process has its own pollable fd in the parent and
 *    no reader thread or demultiplexing is needed.
 */
#pragma once

#include <stdint.h>

#define KILN_INIT_CONTROL_FD 3
#define KILN_INIT_PROTO_VERSION 1
/* Upper bound of an EXEC message: header + strings. */
#define KILN_INIT_MAX_MSG (200 * 1024)
#define KILN_INIT_MAX_PROCS 256

enum kiln_init_msg_type {
	KILN_INIT_READY = 1, /* init → parent (control): struct kiln_init_ready */
	KILN_INIT_EXEC,      /* parent → init (control): struct kiln_init_exec + strings */
	KILN_INIT_STARTED,   /* init → parent (process): struct kiln_init_started + pidfd */
	KILN_INIT_FAILED,    /* init → parent (process): struct kiln_init_failed */
	KILN_INIT_EXITED,    /* init → parent (process): struct kiln_init_exited */
	KILN_INIT_SIGNAL,    /* parent → init (process): struct kiln_init_signal */
};

struct kiln_init_ready {
	uint32_t type;
	uint32_t version;
};

/* SCM_RIGHTS order: process socket, then stdin, stdout, stderr for each
 * KILN_INIT_HAS_* flag that is set (absent ones are /dev/null). */
enum {
	KILN_INIT_HAS_STDIN = 1 << 0,
	KILN_INIT_HAS_STDOUT = 1 << 1,
	KILN_INIT_HAS_STDERR = 1 << 2,
	/* When this process exits, kill every other process of the pid
	 * namespace and reap them all before sending its EXITED: the EXITED
	 * then also says that nothing else runs in the sandbox. */
	KILN_INIT_SOLE = 1 << 3,
};

struct kiln_init_exec {
	uint32_t type;
	uint32_t flags;
	uint32_t uid, gid;
	uint64_t timeout_ms;
	uint32_t argc, envc;
	uint32_t strings_len; /* argv strings, env strings, cwd: each NUL-terminated */
	uint32_t pad;
};

/* Where starting failed (FAILED.step). */
enum kiln_init_step {
	KILN_INIT_STEP_REQUEST = 1, /* malformed request */
	KILN_INIT_STEP_FORK,
	KILN_INIT_STEP_STDIO,
	KILN_INIT_STEP_USER,
	KILN_INIT_STEP_CWD,
	KILN_INIT_STEP_EXEC,
	KILN_INIT_STEP_LIMIT, /* too many processes */
};

struct kiln_init_started {
	uint32_t type;
	int32_t pid; /* inside the sandbox */
};

struct kiln_init_failed {
	uint32_t type;
	int32_t err; /* positive errno */
	uint32_t step;
	uint32_t pad;
};

struct kiln_init_exited {
	uint32_t type;
	int32_t status; /* wait status */
	uint32_t timed_out;
	uint32_t pad;
	uint64_t wall_ns;
	uint64_t utime_ns, stime_ns;
	uint64_t maxrss_kb;
};

struct kiln_init_signal {
	uint32_t type;
	int32_t sig;
	uint32_t group; /* 1: the process group */
	uint32_t pad;
};
