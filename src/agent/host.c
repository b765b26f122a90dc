/*
 * host: the agent's probe of the machine it runs on.
 *
 * NVML is loaded at run time with dlopen, so the agent has no build or run
 * dependency on NVIDIA's packages; only the few entry points it needs are
 * declared here (NVML's ABI for them has been stable since the _v2 symbols).
 */
#include "agent.h"

#include <ctype.h>
#include <dlfcn.h>
#include <sched.h>
#include <sys/utsname.h>

/* ---- NVML (subset) ------------------------------------------------------- */

typedef int nvml_return;
typedef struct nvml_device *nvml_device;
struct nvml_memory {
	unsigned long long total, free, used;
};

struct nvml {
	void *lib;
	nvml_return (*init)(void);
	nvml_return (*shutdown)(void);
	const char *(*error_string)(nvml_return);
	nvml_return (*system_driver_version)(char *, unsigned);
	nvml_return (*system_cuda_version)(int *);
	nvml_return (*device_count)(unsigned *);
	nvml_return (*device_by_index)(unsigned, nvml_device *);
	nvml_return (*device_name)(nvml_device, char *, unsigned);
	nvml_return (*device_uuid)(nvml_device, char *, unsigned);
	nvml_return (*device_memory)(nvml_device, struct nvml_memory *);
	nvml_return (*device_cc)(nvml_device, int *, int *);
	nvml_return (*device_mig_mode)(nvml_device, unsigned *, unsigned *);
};

#define NVML_SUCCESS 0

static int nvml_load(struct nvml *n, char *err, size_t errlen)
{
	const char *path = getenv("KILN_NVML_LIBRARY");
	if (!path || !*path)
		path = "libnvidia-ml.so.1";
	n->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!n->lib) {
		snprintf(err, errlen, "NVML not loaded (%s): no NVIDIA driver on this host", path);
		return -ENOENT;
	}
	struct {
		void **slot;
		const char *name;
		bool required;
	} syms[] = {
		{(void **)&n->init, "nvmlInit_v2", true},
		{(void **)&n->shutdown, "nvmlShutdown", true},
		{(void **)&n->error_string, "nvmlErrorString", false},
		{(void **)&n->system_driver_version, "nvmlSystemGetDriverVersion", false},
		{(void **)&n->system_cuda_version, "nvmlSystemGetCudaDriverVersion_v2", false},
		{(void **)&n->device_count, "nvmlDeviceGetCount_v2", true},
		{(void **)&n->device_by_index, "nvmlDeviceGetHandleByIndex_v2", true},
		{(void **)&n->device_name, "nvmlDeviceGetName", false},
		{(void **)&n->device_uuid, "nvmlDeviceGetUUID", false},
		{(void **)&n->device_memory, "nvmlDeviceGetMemoryInfo", false},
		{(void **)&n->device_cc, "nvmlDeviceGetCudaComputeCapability", false},
		{(void **)&n->device_mig_mode, "nvmlDeviceGetMigMode", false},
	};
	for (size_t i = 0; i < ARRAY_SIZE(syms); i++) {
		*syms[i].slot = dlsym(n->lib, syms[i].name);
		if (!*syms[i].slot && syms[i].required) {
			snprintf(err, errlen, "NVML library '%s' lacks %s", path, syms[i].name);
			dlclose(n->lib);
			n->lib = NULL;
			return -ENOSYS;
		}
	}
	return 0;
}

static const char *nvml_strerror(const struct nvml *n, nvml_return r)
{
	return n->error_string ? n->error_string(r) : "error";
}

static void probe_gpus(struct host_info *h)
{
	struct nvml n = {0};
	if (nvml_load(&n, h->nvml_error, sizeof(h->nvml_error)) < 0)
		return;
	nvml_return r = n.init();
	if (r != NVML_SUCCESS) {
		snprintf(h->nvml_error, sizeof(h->nvml_error), "nvmlInit failed: %s",
			 nvml_strerror(&n, r));
		dlclose(n.lib);
		return;
	}
	h->nvml_present = true;
	if (n.system_driver_version)
		(void)n.system_driver_version(h->driver_version, sizeof(h->driver_version));
	int cuda = 0;
	if (n.system_cuda_version && n.system_cuda_version(&cuda) == NVML_SUCCESS && cuda > 0) {
		h->cuda_major = cuda / 1000;
		h->cuda_minor = (cuda % 1000) / 10;
	}
	unsigned count = 0;
	if (n.device_count(&count) != NVML_SUCCESS)
		count = 0;
	for (unsigned i = 0; i < count && h->n_gpus < HOST_MAX_GPUS; i++) {
		nvml_device d;
		if (n.device_by_index(i, &d) != NVML_SUCCESS)
			continue;
		struct host_gpu *g = &h->gpus[h->n_gpus++];
		g->index = i;
		if (!n.device_name || n.device_name(d, g->name, sizeof(g->name)) != NVML_SUCCESS)
			snprintf(g->name, sizeof(g->name), "unknown");
		if (n.device_uuid)
			(void)n.device_uuid(d, g->uuid, sizeof(g->uuid));
		struct nvml_memory mem;
		if (n.device_memory && n.device_memory(d, &mem) == NVML_SUCCESS)
			g->memory = mem.total;
		if (n.device_cc)
			(void)n.device_cc(d, &g->cc_major, &g->cc_minor);
		unsigned cur = 0, pending = 0;
		if (n.device_mig_mode && n.device_mig_mode(d, &cur, &pending) == NVML_SUCCESS)
			g->mig_enabled = cur == 1;
	}
	n.shutdown();
	dlclose(n.lib);
}

/* ---- CPU and memory ------------------------------------------------------ */

/* Reads one number from a file; -errno, or -EINVAL for "max"/garbage. */
static int read_u64_file(const char *path, uint64_t *ret)
{
	struct buf b = BUF_INIT;
	int r = read_file(path, 4096, &b);
	if (r < 0)
		return r;
	char *end = NULL;
	errno = 0;
	unsigned long long v = strtoull(b.data, &end, 10);
	r = (end == b.data || errno) ? -EINVAL : 0;
	if (r == 0)
		*ret = v;
	buf_release(&b);
	return r;
}

static double probe_cpus(void)
{
	cpu_set_t set;
	double cpus = 1;
	if (sched_getaffinity(0, sizeof(set), &set) == 0)
		cpus = CPU_COUNT(&set);
	else
		cpus = (double)sysconf(_SC_NPROCESSORS_ONLN);
	/* A cgroup quota (v2 cpu.max, v1 cfs_quota_us) bounds what we may use. */
	struct buf b = BUF_INIT;
	if (read_file("/sys/fs/cgroup/cpu.max", 256, &b) >= 0) {
		/* "QUOTA PERIOD" or "max PERIOD" (no quota). */
		char *end = NULL, *end2 = NULL;
		unsigned long long quota = strtoull(b.data, &end, 10);
		unsigned long long period = end != b.data && *end == ' ' ? strtoull(end + 1, &end2, 10) : 0;
		if (end2 && end2 != end + 1 && period > 0 && !startswith(b.data, "max")) {
			double q = (double)quota / (double)period;
			if (q > 0 && q < cpus)
				cpus = q;
		}
		buf_release(&b);
	} else {
		uint64_t quota = 0, period = 0;
		/* v1: -1 (no quota) fails to parse as unsigned and is ignored. */
		if (read_u64_file("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", &quota) >= 0 &&
		    read_u64_file("/sys/fs/cgroup/cpu/cpu.cfs_period_us", &period) >= 0 &&
		    period > 0 && quota < (1ULL << 40)) {
			double q = (double)quota / (double)period;
			if (q > 0 && q < cpus)
				cpus = q;
		}
	}
	return cpus;
}

static uint64_t probe_memory(void)
{
	uint64_t total = 0;
	_cleanup_fclose_ FILE *f = fopen("/proc/meminfo", "re");
	if (f) {
		char line[256];
		while (fgets(line, sizeof(line), f)) {
			if (!startswith(line, "MemTotal:"))
				continue;
			char *end = NULL;
			unsigned long long kb = strtoull(line + 9, &end, 10);
			if (end != line + 9)
				total = kb * 1024ULL;
			break;
		}
	}
	uint64_t limit = 0;
	if ((read_u64_file("/sys/fs/cgroup/memory.max", &limit) >= 0 ||
	     read_u64_file("/sys/fs/cgroup/memory/memory.limit_in_bytes", &limit) >= 0) &&
	    limit > 0 && limit < total)
		total = limit;
	return total;
}

int host_probe(struct host_info *ret)
{
	struct host_info h;
	memset(&h, 0, sizeof(h));
	struct utsname u;
	if (uname(&u) < 0)
		return -errno;
	snprintf(h.os, sizeof(h.os), "linux");
	snprintf(h.arch, sizeof(h.arch), "%s", u.machine);
	snprintf(h.hostname, sizeof(h.hostname), "%s", u.nodename);
	snprintf(h.kernel, sizeof(h.kernel), "%s", u.release);
	h.cpus = probe_cpus();
	h.memory = probe_memory();
	probe_gpus(&h);
	*ret = h;
	return 0;
}

/* ---- labels -------------------------------------------------------------- */

static void add_label(char ***labels, size_t *n, size_t *cap, char *label)
{
	/* Labels are case-insensitive: store them lower-case, no duplicates. */
	for (char *p = label; *p; p++) {
		*p = (char)tolower((unsigned char)*p);
		if (*p == ' ')
			*p = '-';
	}
	for (size_t i = 0; i < *n; i++)
		if (streq((*labels)[i], label)) {
			free(label);
			return;
		}
	*labels = xgrow(*labels, cap, *n + 1, sizeof(**labels));
	(*labels)[(*n)++] = label;
}

void host_labels(const struct host_info *h, char ***labels, size_t *n, size_t *cap)
{
	add_label(labels, n, cap, xstrdup(h->os));
	add_label(labels, n, cap, xstrdup(h->arch));
	add_label(labels, n, cap, xasprintf("arch:%s", h->arch));
	if (h->n_gpus == 0)
		return;
	add_label(labels, n, cap, xstrdup("gpu"));
	add_label(labels, n, cap, xstrdup("nvidia"));
	add_label(labels, n, cap, xasprintf("gpu-count:%u", h->n_gpus));
	if (h->cuda_major > 0) {
		add_label(labels, n, cap, xasprintf("cuda-%d", h->cuda_major));
		add_label(labels, n, cap, xasprintf("cuda:%d.%d", h->cuda_major, h->cuda_minor));
	}
	bool mig = false;
	for (unsigned i = 0; i < h->n_gpus; i++) {
		const struct host_gpu *g = &h->gpus[i];
		if (g->cc_major > 0)
			add_label(labels, n, cap, xasprintf("sm_%d%d", g->cc_major, g->cc_minor));
		/* "NVIDIA H100 80GB HBM3" -> gpu-model:nvidia-h100-80gb-hbm3 */
		add_label(labels, n, cap, xasprintf("gpu-model:%s", g->name));
		mig |= g->mig_enabled;
	}
	if (mig)
		add_label(labels, n, cap, xstrdup("mig"));
}
