/*
 * sandbox-internal: what the parts of the sandbox module share (cgroup.c,
 * seccomp.c, state.c, child.c, sandbox.c). Not for other modules; the unit
 * tests use the pure parts (mountinfo and /proc/self/cgroup parsing, cgroup
 * path logic, the seccomp list).
 */
#pragma once

#include "sandbox.h"

#include <inttypes.h>
#include <limits.h>
#include <linux/filter.h>
#include <pthread.h>

/* ---- cgroups (cgroup.c) --------------------------------------------------- */

enum cg_ctrl {
	CG_CPU,
	CG_CPUACCT,
	CG_MEMORY,
	CG_PIDS,
	CG_IO, /* "io" on v2, "blkio" on v1 */
	CG_FREEZER,
	CG_NCTRL,
};

#define CG_MAX_V1 16
#define CG_PATH 512

/* Where each hierarchy is mounted, from /proc/self/mountinfo. */
struct cg_layout {
	char root[CG_PATH]; /* only mounts under this are considered */
	char v2[CG_PATH];   /* cgroup2 mount point, or "" */
	uint32_t v2_ctrls;  /* controllers available in v2 (1 << enum cg_ctrl) */
	size_t n_v1;
	struct {
		char mount[CG_PATH];
		uint32_t ctrls; /* controllers bound to this v1 hierarchy */
	} v1[CG_MAX_V1];
	/* Resolved: the provider of each controller: -1 none, CG_V2, or the
	 * index of a v1 hierarchy. v2 wins where it has the controller. */
	int provider[CG_NCTRL];
	/* kiln's own cgroup in each hierarchy (from /proc/self/cgroup). */
	char own_v2[CG_PATH];
	char own_v1[CG_MAX_V1][CG_PATH];
};

#define CG_V2 100

/* Names of the controllers as v1 mount options / v2 cgroup.controllers. */
const char *cg_ctrl_name(enum cg_ctrl c, bool v2);

/*
 * Fills the mount part of *l from the text of /proc/self/mountinfo (pure).
 * Returns 0, or -EINVAL on a malformed line.
 */
int cg_layout_parse_mountinfo(struct cg_layout *l, const char *root, const char *mountinfo);
/* Records the controllers available on v2 (text of its cgroup.controllers)
 * and resolves provider[] (pure). */
void cg_layout_resolve(struct cg_layout *l, const char *v2_controllers);
/* Fills own_* from the text of /proc/self/cgroup (pure). */
int cg_layout_parse_self(struct cg_layout *l, const char *proc_self_cgroup);
enum sandbox_cgroup_layout cg_layout_kind(const struct cg_layout *l);
/* Reads everything from the running system (cached per root, thread-safe). */
int cg_layout_get(const char *root, struct cg_layout *ret);

/*
 * Joins the cgroup directory of sandbox `id` for one hierarchy: mount +
 * parent (absolute, or relative to own) + id. Pure; -ENAMETOOLONG or
 * -EINVAL (a parent with "..", or an empty id).
 */
int cg_sandbox_path(const char *mount, const char *own, const char *parent, const char *id,
		    char *out, size_t out_size);

/* The cgroup directories of one sandbox. */
#define CG_MAX_DIRS (CG_MAX_V1 + 1)
struct cg_sandbox {
	size_t n;
	struct {
		char path[CG_PATH];
		uint32_t ctrls; /* controllers used from this directory */
		bool v2;
	} dir[CG_MAX_DIRS];
	int where[CG_NCTRL]; /* index into dir[] providing the controller, -1 none */
	int v2_index;        /* dir[] index of the v2 directory, or -1 */
	char v2_mount[CG_PATH];
	int v2_fd;           /* open v2 directory (CLONE_INTO_CGROUP), or -1 */
};

/*
 * Plans the directories of sandbox `id` under `parent` (NULL: default) for
 * the given limits: which hierarchies are needed and their paths. Does not
 * touch the system. -ENOTSUP with a sentence when a limit needs a controller
 * this host lacks.
 */
int cg_sandbox_plan(const struct cg_layout *l, const char *parent, const char *id,
		    const struct sandbox_limits *lim, struct cg_sandbox *ret, struct kiln_err *err);
/* Creates the v2 (v2 true) or the v1 directories (and parents, enabling v2
 * controllers on the way) and writes their limits. On failure removes what
 * it created. */
int cg_sandbox_create(struct cg_sandbox *cg, const struct sandbox_limits *lim, bool v2,
		      struct kiln_err *err);
/* Opens the "tasks" file of every v1 directory (O_WRONLY|O_CLOEXEC) into
 * fds (CG_MAX_V1); returns how many, or -errno (none left open). */
int cg_sandbox_open_tasks(const struct cg_sandbox *cg, int *fds);
int cg_sandbox_stats(const struct cg_sandbox *cg, struct sandbox_stats *ret);
uint64_t cg_sandbox_oom_kills(const struct cg_sandbox *cg);
/* Kills every process in the cgroup: v2 cgroup.kill, else v1 freeze, kill, thaw. */
int cg_sandbox_kill(const struct cg_sandbox *cg);
/* rmdir of every directory (retrying briefly while tasks finish exiting). */
int cg_sandbox_remove(struct cg_sandbox *cg);
/* Kills and removes one directory given by path (leftover cleanup). */
int cg_dir_kill_and_remove(const char *path, bool v2);

/* ---- seccomp (seccomp.c) -------------------------------------------------- */

struct seccomp_rule_desc {
	const char *name; /* syscall */
	int x86_64_nr;    /* used when libseccomp does not know the name; -1 none */
	const char *why;
};

/* The syscalls that fail with EPERM whatever their arguments. */
extern const struct seccomp_rule_desc sandbox_seccomp_denied[];
extern const size_t sandbox_seccomp_denied_count;

/* The compiled filter: the build's precompiled program, or (cross builds)
 * compiled once per process; thread-safe, never freed. */
int sandbox_seccomp_program(const struct sock_fprog **ret, struct kiln_err *err);
/* Compiles the filter with libseccomp (seccomp-rules.c) into *ret, raw
 * struct sock_filter instructions; the caller releases it. */
int sandbox_seccomp_compile(struct buf *ret, struct kiln_err *err);

/* ---- capabilities --------------------------------------------------------- */

/* Capabilities processes running as root inside keep (all relative to the
 * sandbox's user namespace); see docs/internals/sandbox.md. */
extern const int sandbox_kept_caps[];
extern const size_t sandbox_kept_caps_count;

/* ---- state directory (state.c) -------------------------------------------- */

struct state_entry {
	int fd;       /* our own open file description of <state>/sandboxes */
	uint32_t slot; /* the slot we hold the OFD lock of */
	char *stage;  /* where the writable layer goes: the state dir (a tmpfs is
		       * mounted over it inside the sandbox), or <id>.kept */
};

/*
 * Records sandbox id, with the cgroup directories it will create (written
 * before they exist, so a crash in between still leaves a record), in a
 * slot of <state>/sandboxes locked while the sandbox lives; with keep,
 * creates <id>.kept owned by uid:gid.
 */
int state_entry_create(const char *state_dir, const char *id, const struct cg_sandbox *cg,
		       bool keep, uid_t uid, gid_t gid, struct state_entry *ret, struct kiln_err *err);
/* Removes the entry (a kept layer stays). */
int state_entry_remove(struct state_entry *e, bool keep);

/* The /etc entries host mode hides. */
extern const char *const sandbox_etc_hidden[];
extern const size_t sandbox_etc_hidden_count;
/*
 * Returns (creating it once, atomically) <state>/.etc-mask-<hash>: a
 * directory of overlay whiteouts for sandbox_etc_hidden, the hash naming
 * the list. The caller frees *ret.
 */
int state_etc_mask(const char *state_dir, char **ret, struct kiln_err *err);

/* ---- the child: set-up inside the new namespaces (child.c) --------------- */

#define SB_MAX_LOWERS 10
#define SB_MAX_LINKS 10
#define SB_MAX_MOUNTS (SANDBOX_MAX_BINDS + 1)

/* A read-only lower layer with an overlay on top. */
struct sb_lower {
	char name[32]; /* host mode: "usr", "etc", ...; rootfs dir: "" (the root) */
	char src[PATH_MAX]; /* host directory */
	bool mask_etc;      /* hide the secrets of /etc (whiteouts) */
};

/* A top-level symlink of the host root (host mode: bin -> usr/bin). */
struct sb_link {
	char name[32];
	char target[128];
};

struct sb_mount {
	char src[PATH_MAX]; /* host path */
	char dst[PATH_MAX]; /* absolute path inside */
	bool ro;
	bool is_dir;
};

/*
 * Everything the child needs, computed by the parent before clone3 so that
 * the child only makes system calls: no allocation, no locks (the parent may
 * be multi-threaded, and is built with sanitizers).
 *
 * Host sources are paths, not fds: a mount can only be cloned (open_tree)
 * from the caller's own mount namespace, and fds the parent opened refer to
 * the host's. In root mode the parent sends ready-made (idmapped) detached
 * trees instead; rootless, the child clones the paths in its copy of the
 * host's namespace.
 */
struct sb_plan {
	int sock; /* child end of the control socket */
	char stage[PATH_MAX];
	bool stage_tmpfs; /* the writable layer is a tmpfs (not cfg.keep) */
	uint64_t disk_bytes;
	bool host_root;
	size_t n_lowers;
	struct sb_lower lowers[SB_MAX_LOWERS];
	size_t n_links;
	struct sb_link links[SB_MAX_LINKS];
	size_t n_mounts, cap_mounts;
	struct sb_mount *mounts; /* cap_mounts of them, owned by the plan */
	char etc_mask[PATH_MAX]; /* host mode: the cached /etc whiteout layer */
	bool rootless;
	bool new_net; /* clone3 made the netns: the child brings loopback up */
	char hostname[65];
	uint64_t keep_caps; /* bit mask */
	int cap_last;
	uint64_t *trace; /* KILN_SANDBOX_TRACE: shared page for the step marks, else NULL */
};

/* What the parent sends when the maps are written ("GO"). In root mode the
 * detached trees follow as SCM_RIGHTS: lowers, then mounts (idmapped when
 * idmap is set), then the /etc mask; rootless, there are none. */
struct sb_go {
	uint32_t idmap;
	uint32_t n_fds;
};

/*
 * What the parent sends once the child is busy with its mounts ("FINISH"),
 * work done in parallel with the child's set-up: the seccomp program, and
 * as SCM_RIGHTS the kiln-init memfd followed by one "tasks" fd per v1
 * cgroup. The child joins those cgroups by writing "0" to them: moving
 * one's own thread skips cgroup_threadgroup_rwsem, whose write side costs
 * an RCU grace period (~10 ms) per cold migration; the fds were opened by
 * the parent, and the kernel checks the opener's credentials.
 */
#define SB_MAX_BPF 4096
struct sb_finish {
	uint32_t magic; /* SB_FINISH_MAGIC */
	uint32_t n_tasks;
	uint32_t bpf_len; /* instructions that follow */
	uint32_t pad;
	struct sock_filter bpf[SB_MAX_BPF];
};
#define SB_FINISH_MAGIC 0x6b66696eU

/* The set-up steps, for error messages (child.c reports the step). */
enum sb_step {
	SB_STEP_SYNC = 1,
	SB_STEP_IDS,
	SB_STEP_CGROUP,
	SB_STEP_CGROUPNS,
	SB_STEP_PRIVATE,
	SB_STEP_STAGE,
	SB_STEP_LOWER,
	SB_STEP_OVERLAY,
	SB_STEP_SKELETON,
	SB_STEP_PROC,
	SB_STEP_MASK,
	SB_STEP_DEV,
	SB_STEP_TMP,
	SB_STEP_BIND,
	SB_STEP_PIVOT,
	SB_STEP_HOSTNAME,
	SB_STEP_LOOPBACK,
	SB_STEP_CAPS,
	SB_STEP_NNP,
	SB_STEP_SECCOMP,
	SB_STEP_EXEC,
	/* Marks only (tracing), never failures: */
	SB_MARK_STARTED,
	SB_MARK_GO,
	SB_MARK_FINISH,
	SB_STEP_COUNT,
};

const char *sb_step_name(enum sb_step s);

/* The child's report of a failed step. */
struct sb_child_err {
	uint32_t magic; /* SB_CHILD_ERR_MAGIC */
	uint32_t step;
	int32_t err; /* positive errno */
	uint32_t pad;
	char detail[256];
};
#define SB_CHILD_ERR_MAGIC 0x6b65726eU

/* Runs in the clone3 child. Never returns. */
KILN_NORETURN void sb_child_main(const struct sb_plan *plan);
/*
 * sandbox_add_mounts()'s helper (a fork): joins the user and mount
 * namespaces (userns, mntns fds), becomes root there and attaches trees[i]
 * at plan->mounts[i] (mount points made as in sb_child_main). Reports a
 * failure as a struct sb_child_err on sock and exits 125; exits 0 when done.
 */
KILN_NORETURN void sb_attach_main(const struct sb_plan *plan, int sock, int userns, int mntns,
				  const int *trees);

/* ---- tracing (trace.c) ------------------------------------------------- */

#define SB_TRACE_MAX 48
#define SB_TRACE_CHILD_MAX 64 /* > SB_STEP_COUNT */

/* Marks of one operation (KILN_SANDBOX_TRACE); on the caller's stack. */
struct sb_trace {
	bool on;
	const char *op;
	uint64_t start;
	size_t n;
	struct {
		const char *name; /* a string literal */
		uint64_t ns;
	} mark[SB_TRACE_MAX];
	uint64_t *child; /* shared page: child[step] = time the step ended */
};

bool sb_trace_enabled(void);
uint64_t sb_trace_now(void);
void sb_trace_begin(struct sb_trace *t, const char *op);
void sb_trace_mark(struct sb_trace *t, const char *name);
/* Maps the page the clone child writes its marks to (NULL when off). */
uint64_t *sb_trace_child_page(struct sb_trace *t);
/* Prints the marks to stderr and unmaps the child page. */
void sb_trace_end(struct sb_trace *t, const char *id);

/* ---- misc ----------------------------------------------------------------- */

/* Returns an fd to execute kiln-init from (path NULL: default lookup),
 * opened once per process and path: the binary itself when only host root
 * can write it and we are root, else a sealed memfd copy. */
int sandbox_init_memfd(const char *path, int *ret_fd, struct kiln_err *err);
