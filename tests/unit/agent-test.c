/* Unit tests of src/agent: the host probe and its labels. */
#include "tap.h"

#include "agent/agent.h"

static bool has(char **labels, size_t n, const char *want)
{
	for (size_t i = 0; i < n; i++)
		if (streq(labels[i], want))
			return true;
	return false;
}

static void free_labels(char **labels, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(labels[i]);
	free(labels);
}

TEST(probe_without_nvml)
{
	setenv("KILN_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1", 1);
	struct host_info h;
	CHECK_EQ(host_probe(&h), 0);
	CHECK(!h.nvml_present);
	CHECK_EQ(h.n_gpus, 0);
	CHECK(strstr(h.nvml_error, "NVML not loaded") != NULL);
	CHECK(h.cpus >= 1);
	CHECK(h.memory > 0);
	CHECK(h.arch[0] != '\0');
	char **labels = NULL;
	size_t n = 0, cap = 0;
	host_labels(&h, &labels, &n, &cap);
	CHECK(has(labels, n, "linux"));
	CHECK(!has(labels, n, "gpu"));
	free_labels(labels, n);
}

TEST(probe_with_fake_nvml)
{
	setenv("KILN_NVML_LIBRARY", FAKE_NVML_PATH, 1);
	struct host_info h;
	CHECK_EQ(host_probe(&h), 0);
	CHECK(h.nvml_present);
	CHECK_EQ(h.n_gpus, 2);
	CHECK_EQ(h.cuda_major, 12);
	CHECK_EQ(h.cuda_minor, 4);
	CHECK_STREQ(h.driver_version, "550.54.15");
	CHECK_STREQ(h.gpus[0].name, "NVIDIA H100 80GB HBM3");
	CHECK_EQ(h.gpus[0].memory, 80ULL << 30);
	CHECK(!h.gpus[0].mig_enabled);
	CHECK(h.gpus[1].mig_enabled);
	char **labels = NULL;
	size_t n = 0, cap = 0;
	host_labels(&h, &labels, &n, &cap);
	CHECK(has(labels, n, "gpu"));
	CHECK(has(labels, n, "nvidia"));
	CHECK(has(labels, n, "gpu-count:2"));
	CHECK(has(labels, n, "cuda-12"));
	CHECK(has(labels, n, "cuda:12.4"));
	CHECK(has(labels, n, "sm_90"));
	CHECK(has(labels, n, "gpu-model:nvidia-h100-80gb-hbm3"));
	CHECK(has(labels, n, "mig"));
	/* Two identical GPUs give one sm_90 label, not two. */
	size_t sm = 0;
	for (size_t i = 0; i < n; i++)
		sm += streq(labels[i], "sm_90");
	CHECK_EQ(sm, 1);
	free_labels(labels, n);
	unsetenv("KILN_NVML_LIBRARY");
}

int main(void)
{
	return tap_run();
}
