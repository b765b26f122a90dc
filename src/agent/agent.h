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
