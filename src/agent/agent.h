/*
 * agent: the host agent. Registers with a server, long-polls for leases and
 * runs each job in a sandbox, shipping its output and artifacts.
 *
 * This header so far holds the host probe: what this machine offers (os,
 * arch, cpus, memory, GPUs through NVML), turned into labels and capacity
 * for registration.
 */
#pragma once

#include "base/base.h"

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
