/*
 * sandbox: isolated, limited, accounted process containers from Linux
 * primitives. Knows processes, mounts and cgroups; knows nothing about jobs.
 *
 * A sandbox is a set of fresh namespaces (user, pid, mount, uts, ipc,
 * cgroup and, with SANDBOX_NET_NONE, net), a root filesystem under an overlay
 * whose upper layer is thrown away, a cgroup with limits, and `kiln-init` as
 * PID 1. kiln-init starts nothing by itself: processes are started in the
 * sandbox one by one with sandbox_exec(), each with its own stdio fds, exit
 * status, accounting and optional timeout (the agent runs a job's steps this
 * way; `kiln sandbox run` runs one command).
 *
 * Life cycle:
 *
 *     sandbox_create(cfg)  → struct sandbox *   (namespaces, rootfs, cgroup, kiln-init)
 *     sandbox_exec(sb, …)  → struct sandbox_process *   (any number, in any order)
 *     sandbox_process_fd() pollable: readable once the process has exited
 *     sandbox_process_wait/kill/free
 *     sandbox_stats(sb)    cgroup accounting (any time)
 *     sandbox_kill(sb)     kills every process in the sandbox (cgroup kill)
 *     sandbox_destroy(sb)  kills, reaps, reads final stats, removes cgroup and
 *                          state; frees sb
 *
 * Threads: every function is thread-safe with respect to other sandboxes and
 * processes; calls on one sandbox may come from different threads except
 * that sandbox_destroy() must not race with anything else on that sandbox
 * (and a process handle must not be used after sandbox_destroy()). The
 * library installs no signal handlers and never relies on SIGCHLD: kiln-init
 * is created with exit_signal 0 and waited for through its pidfd. The
 * thread that calls sandbox_create() may exit; nothing is tied to it.
 *
 * Errors: functions return >= 0 or -errno; where a sentence helps, `err` is
 * filled ("set-up step 'mount overlay on /usr': Invalid argument"). Errors in
 * the sandbox's own set-up (inside the new namespaces) travel back to the
 * parent with the step that failed.
 *
 * Design and invariants: docs/internals/sandbox.md; the choice of an exec
 * protocol over a private kiln-init socket: docs/decisions/.
 */
#pragma once

#include "base/base.h"

#include <sys/types.h>

/* ---- configuration ------------------------------------------------------- */

enum sandbox_net {
	SANDBOX_NET_NONE, /* a new network namespace with only loopback (default) */
	SANDBOX_NET_HOST, /* the host's network namespace */
};

struct sandbox_bind {
	const char *src; /* host path (must exist) */
	const char *dst; /* absolute path inside; created if missing */
	bool readonly;
	char *storage; /* set by sandbox_bind_parse(), else NULL */
};

/* Limits: 0 means "no limit". */
struct sandbox_limits {
	uint32_t cpu_millis;   /* 1500 = 1.5 CPUs (CFS quota over a 100 ms period) */
	uint64_t memory_bytes; /* hard limit; swap is off for the sandbox */
	uint32_t pids;         /* includes kiln-init itself */
	uint64_t disk_bytes;   /* size of the writable layer (upper + /tmp + /dev/shm) */
};

#define SANDBOX_MAX_BINDS 64

struct sandbox_config {
	/* NULL or "host": the host's /usr, /bin, /lib*, /etc (secrets hidden),
	 * read-only under an overlay. Otherwise a directory holding a root
	 * filesystem (e.g. made by debootstrap), read-only under an overlay. */
	const char *rootfs;
	const char *workspace; /* host dir bound read-write at /workspace, or NULL */
	const struct sandbox_bind *binds;
	size_t n_binds;
	enum sandbox_net net;
	struct sandbox_limits limits;
	const char *hostname; /* NULL: "sandbox" */
	/* Keep the writable layer after destroy (under the state dir; its path
	 * is in sandbox_info().upper_dir). The writable layer is then on disk,
	 * not tmpfs, and limits.disk_bytes cannot be enforced. */
	bool keep;
	/* NULL: /var/lib/kiln/sandbox as root, $XDG_RUNTIME_DIR/kiln/sandbox
	 * (or /tmp/kiln-UID/sandbox) otherwise. */
	const char *state_dir;
	/* cgroup parent of the sandboxes: "/abs" is relative to each
	 * hierarchy's root, "rel" to kiln's own cgroup. NULL: "/kiln" as root,
	 * "" (kiln's own cgroup, if delegated) rootless. */
	const char *cgroup_parent;
	/* Where cgroup hierarchies are mounted; NULL: /sys/fs/cgroup. */
	const char *cgroup_root;
	/* kiln-init binary; NULL: $KILN_INIT, then next to the running binary,
	 * then the installed libexec path. Opened once per process; executed
	 * from that fd when only host root can write it (kiln running as
	 * root), else from a sealed memfd copy (CVE-2019-5736). */
	const char *init_path;
	/* Root mode only: the host uid/gid that is root inside, and how many
	 * ids are mapped. id_base 0: the "kiln" entry of /etc/subuid and
	 * /etc/subgid, else SANDBOX_ID_BASE_DEFAULT and SANDBOX_ID_COUNT_DEFAULT;
	 * that range is cut in slices of SANDBOX_ID_SLICE ids and each live
	 * sandbox of the host gets a slice of its own (the whole range, shared,
	 * when it holds fewer than two slices or all are taken). An explicit
	 * id_base maps id_base.. for every sandbox (no slices). */
	uint32_t id_base;
	uint32_t id_count;
};

#define SANDBOX_ID_BASE_DEFAULT 100000000u
#define SANDBOX_ID_SLICE 65536u
#define SANDBOX_ID_COUNT_DEFAULT (1024u * SANDBOX_ID_SLICE)
#define SANDBOX_ID_SLICES_MAX 65536u
/* One byte per slice, each locked (F_OFD_SETLK) by the sandbox holding it. */
#define SANDBOX_ID_SLICES_DIR "/run/kiln"
#define SANDBOX_ID_SLICES_FILE SANDBOX_ID_SLICES_DIR "/id-slices"

/* Parses "SRC:DST[:ro|:rw]" into *ret; src and dst point into one
 * allocation, ret->storage, that the caller frees. -EINVAL with a sentence
 * in err. */
int sandbox_bind_parse(const char *spec, struct sandbox_bind *ret, struct kiln_err *err);
/* Parses "1.5" / "2" / "500m" (millicpus) into millicpus in [10, 1024000]. */
int sandbox_cpus_parse(const char *s, uint32_t *ret_millis);

/* ---- probe: what this host can do ---------------------------------------- */

enum sandbox_cgroup_layout {
	SANDBOX_CGROUP_NONE,
	SANDBOX_CGROUP_V1,     /* only v1 hierarchies */
	SANDBOX_CGROUP_V2,     /* only the unified hierarchy */
	SANDBOX_CGROUP_HYBRID, /* v1 hierarchies + a cgroup2 mount */
};

const char *sandbox_cgroup_layout_name(enum sandbox_cgroup_layout l);

struct sandbox_probe {
	enum sandbox_cgroup_layout layout;
	/* Which hierarchy provides each controller: 0 none, 1 v1, 2 v2. */
	int cpu, memory, pids, io;
	bool cgroup_writable; /* a sandbox cgroup could be created */
	bool rootless;        /* kiln is not root: single-id user namespace map */
	bool userns;          /* a sandbox could be created and ran a command */
	bool overlay;         /* the root filesystem was an overlay */
	bool idmap;           /* binds and lower layers are idmapped (root mode) */
	char error[512];      /* why userns is false, if it is */
};

/*
 * Probes the host: cgroup layout from /proc/self/mountinfo, then creates a
 * real sandbox (with cfg, or defaults when cfg is NULL) and runs /bin/true
 * in it. Never fails: what did not work is false in *ret.
 */
void sandbox_probe(const struct sandbox_config *cfg, struct sandbox_probe *ret);

/* ---- sandboxes ------------------------------------------------------------ */

struct sandbox;

/*
 * Creates a sandbox and waits until kiln-init runs in it. cfg and everything
 * it points to are only read during the call. Removes leftovers of dead kiln
 * processes from the state dir first (sandbox_cleanup_leftovers()).
 */
int sandbox_create(const struct sandbox_config *cfg, struct sandbox **ret, struct kiln_err *err);

struct sandbox_info {
	const char *id;        /* 16 hex digits; also the cgroup's and state entry's name */
	pid_t init_pid;        /* kiln-init's pid on the host */
	bool rootless;
	bool cgroup;           /* false when running without a cgroup (rootless, not delegated) */
	bool idmap;            /* binds and lower layers are idmapped */
	enum sandbox_cgroup_layout layout;
	const char *upper_dir; /* the kept writable layer (cfg.keep), else NULL */
	const char *warning;   /* a sentence about a degraded feature, or NULL */
};

void sandbox_info(const struct sandbox *sb, struct sandbox_info *ret);

/* Cgroup accounting; have_* says which values this host could provide. */
struct sandbox_stats {
	bool have_cpu, have_memory, have_pids, have_io;
	uint64_t cpu_user_ns, cpu_system_ns;
	uint64_t memory_current_bytes, memory_peak_bytes;
	uint64_t pids_current, pids_peak;
	uint64_t io_read_bytes, io_write_bytes;
	uint64_t oom_kills; /* processes the kernel OOM killer killed in the sandbox */
};

int sandbox_stats(struct sandbox *sb, struct sandbox_stats *ret);

/*
 * Adds a workspace (at /workspace, read-write; NULL: none) and binds to a
 * sandbox that has run nothing yet, as if they had been in its config: the
 * same checks, idmapping and mount points (a warm sandbox made before its
 * workspace was known). A short-lived helper joins the sandbox's user and
 * mount namespaces as its root to attach them. Root mode only.
 * -EOPNOTSUPP rootless, -EBUSY once a process ran, -EAGAIN when these
 * mounts cannot be idmapped as the sandbox's own are (make a new sandbox
 * with them instead); otherwise -errno with a sentence naming the path.
 */
int sandbox_add_mounts(struct sandbox *sb, const char *workspace,
		       const struct sandbox_bind *binds, size_t n_binds, struct kiln_err *err);

/*
 * Kills every process in the sandbox, kiln-init included (v2 cgroup.kill, or
 * v1 freeze + SIGKILL + thaw, then SIGKILL to kiln-init, which takes the pid
 * namespace with it). Processes then report exit by SIGKILL.
 */
int sandbox_kill(struct sandbox *sb);

/*
 * Kills everything, waits for kiln-init, fills *ret_stats (if not NULL) with
 * the final accounting, removes the cgroup and the state entry (keeping the
 * writable layer if cfg.keep), and frees sb. NULL is a no-op. Returns < 0 if
 * something could not be removed (it is then a leftover for the next
 * sandbox_cleanup_leftovers()); sb is freed either way.
 */
int sandbox_destroy(struct sandbox *sb, struct sandbox_stats *ret_stats);

/*
 * Removes what dead kiln processes left in state_dir (NULL: default): kills
 * processes still in their cgroups, removes the cgroups and state entries.
 * Entries of live sandboxes (their lock is held) and kept layers stay.
 * Returns the number of entries removed, or -errno.
 */
int sandbox_cleanup_leftovers(const char *state_dir, const char *cgroup_root);

/* The default state dir (cfg.state_dir NULL); the caller frees it. */
char *sandbox_default_state_dir(void);
/* The default state dir of a process of uid with $XDG_RUNTIME_DIR (or NULL)
 * (the front's rule too: src/front/kiln.c). */
char *sandbox_state_dir_for(uid_t uid, const char *xdg_runtime_dir);

/* ---- processes inside a sandbox ------------------------------------------ */

#define SANDBOX_EXEC_MAX_BYTES (192 * 1024) /* argv + env + cwd, all strings */

struct sandbox_exec {
	char *const *argv; /* argv[0] is looked up in env's PATH inside */
	char *const *envp; /* NULL: PATH and HOME=/root only */
	const char *cwd;   /* absolute path inside; NULL: /workspace if bound, else / */
	/* stdio: fds the caller keeps owning (passed into the sandbox by copy);
	 * -1 means /dev/null. */
	int stdin_fd, stdout_fd, stderr_fd;
	uint64_t timeout_ms; /* 0: none; on expiry the process group gets SIGKILL */
	uid_t uid;           /* inside the sandbox; 0 is root (with the kept capabilities) */
	gid_t gid;
	/* The sandbox's last process: when it exits, every other process in
	 * the sandbox is killed and reaped before its exit is reported, so a
	 * reported exit means nothing of it still runs (daemons it left
	 * included). kiln-init stays; sandbox_destroy() is still needed. */
	bool sole;
};

#define SANDBOX_EXEC_INIT {.stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1}

struct sandbox_process;

/*
 * Starts a process in the sandbox, in a new session (its own process group).
 * Returns once it runs (or failed to start: -ENOENT / -EACCES / ... with
 * the reason in err; a command not found is -ENOENT).
 */
int sandbox_exec(struct sandbox *sb, const struct sandbox_exec *ex, struct sandbox_process **ret,
		 struct kiln_err *err);

/* An fd that becomes readable when the process has exited (poll it). */
int sandbox_process_fd(const struct sandbox_process *p);
/* The process's pid inside the sandbox. */
pid_t sandbox_process_pid(const struct sandbox_process *p);

struct sandbox_exit {
	int exit_code;   /* 0..255 if it exited, else -1 */
	int signal;      /* the signal that killed it, else 0 */
	bool oom_killed; /* killed by SIGKILL while the cgroup recorded an OOM kill */
	bool timed_out;  /* killed because ex.timeout_ms passed */
	bool lost;       /* the sandbox died (killed/destroyed) before it reported */
	uint64_t wall_ns;
	uint64_t cpu_user_ns, cpu_system_ns; /* the process and its waited-for children */
	uint64_t maxrss_bytes;
};

/*
 * Waits up to timeout_ms (-1: forever) for the process to exit. -ETIMEDOUT
 * if it has not; then the process keeps running and wait can be called
 * again.
 */
int sandbox_process_wait(struct sandbox_process *p, int timeout_ms, struct sandbox_exit *ret);

/* Sends sig to the process, or to its whole process group. */
int sandbox_process_kill(struct sandbox_process *p, int sig, bool group);

/* Frees the handle (the process, if still running, is not killed). */
void sandbox_process_free(struct sandbox_process *p);

/* Shell-style exit status of an exit: code, or 128 + signal. */
int sandbox_exit_status(const struct sandbox_exit *e);
