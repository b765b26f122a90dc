/*
 * fake-nvml: a stand-in libnvidia-ml for tests on machines without NVIDIA
 * GPUs. It reports two "NVIDIA H100 80GB HBM3" (compute capability 9.0, 80 GiB)
 * under a CUDA 12.4 driver, the second in MIG mode. Loaded by the agent's
 * host probe through KILN_NVML_LIBRARY.
 */
#include <stdio.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

struct nvml_memory {
	unsigned long long total, free, used;
};

static int devices[2];

EXPORT int nvmlInit_v2(void);
EXPORT int nvmlShutdown(void);
EXPORT const char *nvmlErrorString(int r);
EXPORT int nvmlSystemGetDriverVersion(char *v, unsigned len);
EXPORT int nvmlSystemGetCudaDriverVersion_v2(int *v);
EXPORT int nvmlDeviceGetCount_v2(unsigned *n);
EXPORT int nvmlDeviceGetHandleByIndex_v2(unsigned i, void **d);
EXPORT int nvmlDeviceGetName(void *d, char *name, unsigned len);
EXPORT int nvmlDeviceGetUUID(void *d, char *uuid, unsigned len);
EXPORT int nvmlDeviceGetMemoryInfo(void *d, struct nvml_memory *m);
EXPORT int nvmlDeviceGetCudaComputeCapability(void *d, int *major, int *minor);
EXPORT int nvmlDeviceGetMigMode(void *d, unsigned *cur, unsigned *pending);

int nvmlInit_v2(void) { return 0; }
int nvmlShutdown(void) { return 0; }
const char *nvmlErrorString(int r) { return r ? "fake error" : "success"; }
int nvmlSystemGetDriverVersion(char *v, unsigned len)
{
	snprintf(v, len, "550.54.15");
	return 0;
}
int nvmlSystemGetCudaDriverVersion_v2(int *v)
{
	*v = 12040;
	return 0;
}
int nvmlDeviceGetCount_v2(unsigned *n)
{
	*n = 2;
	return 0;
}
int nvmlDeviceGetHandleByIndex_v2(unsigned i, void **d)
{
	if (i >= 2)
		return 2; /* NVML_ERROR_INVALID_ARGUMENT */
	*d = &devices[i];
	return 0;
}
int nvmlDeviceGetName(void *d, char *name, unsigned len)
{
	(void)d;
	snprintf(name, len, "NVIDIA H100 80GB HBM3");
	return 0;
}
int nvmlDeviceGetUUID(void *d, char *uuid, unsigned len)
{
	snprintf(uuid, len, "GPU-fake-%d", (int)((int *)d - devices));
	return 0;
}
int nvmlDeviceGetMemoryInfo(void *d, struct nvml_memory *m)
{
	(void)d;
	m->total = 80ULL << 30;
	m->free = m->total;
	m->used = 0;
	return 0;
}
int nvmlDeviceGetCudaComputeCapability(void *d, int *major, int *minor)
{
	(void)d;
	*major = 9;
	*minor = 0;
	return 0;
}
int nvmlDeviceGetMigMode(void *d, unsigned *cur, unsigned *pending)
{
	*cur = *pending = (d == &devices[1]);
	return 0;
}
