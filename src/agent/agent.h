/*
 * agent: the host agent. Registers with a server, long-polls for leases and
 * runs each job in a sandbox, shipping its output and artifacts.
 *
 * Embeddable: `kiln agent` runs one; `kiln up` and an embedded `kiln run`
 * run one in-process next to a server (src/server/server.h). Life cycle:
 * agent_new() (state directory, host probe, sandbox probe, leftovers of a
 * previous run removed), agent_run() (blocks: registers, leases and runs
 * jobs until stopped), agent_stop() (from any thread or a signal-handling
 * thread), agent_free(). Internals and the log/lease protocol:
 * docs/internals/agent.md.
 *
 * Also here: the host probe (what this machine offers, turned into labels and
 * capacity) and the streaming secret masker the agent puts on job output.
 */
#pragma once

#include "base/base.h"

struct metrics;

/* ---- the agent ------------------------------------------------------------ */

struct agent;

/* A root filesystem an agent offers as the job `image` NAME. */
struct agent_image {
	const char *name; /* as written in specs: "debian:12" */
	const char *dir;  /* a directory holding a root filesystem */
};

struct agent_config {
	const char *server;    /* "http://host:port" or "host:port" */
	const char *token;     /* bearer token, or NULL */
	const char *name;      /* unique agent name; NULL: the host name */
	const char *state_dir; /* spool, workspaces, sandbox state (created 0700) */
	char *const *labels;   /* extra labels (--labels) */
	size_t n_labels;
	const struct agent_image *images;
	size_t n_images;
	unsigned slots; /* jobs at once; 0: the number of CPUs (at least 1) */
	/* SIGTERM drain: running jobs get this long to finish before they are
	 * killed and released to the server (default 10 min). */
	uint64_t drain_timeout_ms;
	uint64_t lease_wait_ms; /* lease long-poll (default 30 s) */
	/* Warm sandboxes kept ready, of the shape of the last job (default 1;
	 * 0: none — every job creates its own). */
	unsigned warm;
	/* Sandboxes: NULL = defaults (see src/sandbox/sandbox.h). */
	const char *cgroup_parent;
	const char *init_path;
	/* Copied into every job's fresh workspace (embedded `kiln run`: the
	 * user's directory); NULL = workspaces start empty. */
	const char *seed_dir;
	/* With seed_dir: copy only these paths (relative to it; e.g. the files
	 * git does not ignore); NULL = the whole directory. */
	char *const *seed_files;
	size_t n_seed_files;
	/* Metrics (docs/metrics.md): published into `metrics` when set (kiln up:
	 * the server's registry), else into the agent's own; served on
	 * metrics_listen ("HOST:PORT", GET /metrics) when set. */
	struct metrics *metrics;
	const char *metrics_listen;
	/* Called (on the agent's thread) once it is registered, with its id. */
	void (*on_ready)(void *ud, int64_t agent_id);
	void *ud;
};

/* Fills the defaults above (everything else NULL / 0). */
void agent_config_init(struct agent_config *c);

/*
 * Checks the configuration, takes the state directory (one agent per
 * directory: flock), probes the host and the sandbox, removes what a
 * previous agent left in the directory (sandboxes, cgroups, mounts, spools).
 * Does not contact the server. -errno with err set.
 */
int agent_new(const struct agent_config *c, struct agent **ret, struct kiln_err *err);

/*
 * Registers and runs: long-polls for leases while a slot is free, runs each
 * job on its own thread, heartbeats, ships logs and artifacts. Returns 0 when
 * stopped with agent_stop() (after the drain), or -errno with err set when
 * it cannot go on (the state directory failed; an unreachable server is not
 * fatal: it retries). Called once.
 */
int agent_run(struct agent *a, struct kiln_err *err);

/*
 * Asks agent_run() to return; safe from any thread (not from a signal
 * handler). drain: take no new leases, let running jobs finish up to the
 * drain timeout, then kill and release the rest. !drain: kill and release
 * every job now. A second call may turn a drain into an immediate stop.
 */
void agent_stop(struct agent *a, bool drain);

/* Frees the agent (after agent_run() returned, or instead of it). */
void agent_free(struct agent *a);

/* The labels the agent registers with (valid after agent_new()). */
void agent_labels(const struct agent *a, char *const **ret, size_t *ret_n);

#define HOST_MAX_GPUS 64

struct host_gpu {
	unsigned index;
	char name[96];    /* "NVIDIA H100 80GB HBM3" */
	char uuid[96];    /* "GPU-..." */
	uint64_t memory;  /* bytes */
	int cc_major;     /* compute capability, e.g. 9 */
	int cc_minor;     /* e.g. 0 */
	bool mig_enabled; /* MIG mode currently on */
};

struct host_info {
	char os[32];      /* "linux" */
	char arch[65];    /* "x86_64", "aarch64" */
	char hostname[256];
	char kernel[65];  /* uname release */
	double cpus;      /* usable CPUs: affinity, bounded by a cgroup quota */
	uint64_t memory;  /* bytes: MemTotal, bounded by a cgroup limit */

	/* GPUs, from NVML when libnvidia-ml is present. */
	bool nvml_present;
	char nvml_error[128]; /* why there are no GPUs, when nvml_present is false */
	char driver_version[32];
	int cuda_major, cuda_minor; /* driver's CUDA version; 0 when unknown */
	struct host_gpu gpus[HOST_MAX_GPUS];
	unsigned n_gpus;
};

/*
 * Probes the host. Never fails for lack of GPUs: NVML is loaded with dlopen
 * (the library named by $KILN_NVML_LIBRARY, else libnvidia-ml.so.1); without
 * it, nvml_present is false and nvml_error says why.
 */
int host_probe(struct host_info *ret);

/*
 * Appends the labels the host offers to *labels (an array of malloc'ed
 * strings the caller frees): os and arch ("linux", "x86_64", "arch:x86_64"),
 * and with GPUs "gpu", "nvidia", "gpu-count:N", "cuda-MAJOR",
 * "cuda:MAJOR.MINOR", "sm_XY" for each distinct compute capability,
 * "gpu-model:<name>" and "mig" when any GPU is in MIG mode.
 */
void host_labels(const struct host_info *h, char ***labels, size_t *n, size_t *cap);

/* ---- secret masking ------------------------------------------------------ */

/*
 * A streaming masker: replaces every occurrence of a secret value in a byte
 * stream with "***", also when the value is split across writes, and also
 * its base64 forms (at each of the three alignments) and its URL-encoded
 * forms. Defence in depth, not a guarantee: a job can always transform a
 * secret in ways no masker recognises (docs/security.md).
 *
 * The masker holds back at most (longest pattern - 1) bytes that could be
 * the start of a secret; mask_flush() releases them (at the end of a step).
 */
struct mask;

#define MASK_MIN_SECRET 3 /* shorter values are not masked (too many false hits) */

struct mask *mask_new(void);
void mask_free(struct mask *m);
/* Adds a secret value (and its derived forms). Values < MASK_MIN_SECRET are ignored. */
void mask_add_secret(struct mask *m, const char *value, size_t len);
/* Feeds bytes; appends what may be released, masked, to out. */
void mask_write(struct mask *m, const char *data, size_t len, struct buf *out);
/* Releases the held-back bytes (masked) to out. */
void mask_flush(struct mask *m, struct buf *out);
/* How many patterns are registered (for tests and logs). */
size_t mask_patterns(const struct mask *m);
