/*
 * sandbox-fuzz: the sandbox module's text parsers — --bind and --cpus (user
 * input) and the cgroup layout from /proc/self/mountinfo and
 * /proc/self/cgroup (kernel text, but containers can show odd mounts).
 * The first byte picks the parser; the rest is its input.
 */
#include "sandbox/sandbox-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 1 << 16)
		return 0;
	char *s = xstrndup((const char *)data + 1, size - 1);
	switch (data[0] % 4) {
	case 0: {
		struct sandbox_bind b = {0};
		struct kiln_err err = {0};
		if (sandbox_bind_parse(s, &b, &err) == 0) {
			if (b.dst[0] != '/' || !b.src[0])
				abort();
			free(b.storage);
		}
		break;
	}
	case 1: {
		uint32_t m = 0;
		if (sandbox_cpus_parse(s, &m) == 0 && (m < 10 || m > 1024000))
			abort();
		break;
	}
	case 2: {
		struct cg_layout *l = xcalloc(1, sizeof(*l));
		if (cg_layout_parse_mountinfo(l, "/sys/fs/cgroup", s) == 0) {
			cg_layout_resolve(l, "cpu memory pids io");
			struct cg_sandbox cg;
			struct sandbox_limits lim = {.cpu_millis = 100, .memory_bytes = 1, .pids = 2};
			(void)cg_sandbox_plan(l, "/kiln", "0123456789abcdef", &lim, &cg, NULL);
		}
		free(l);
		break;
	}
	case 3: {
		struct cg_layout *l = xcalloc(1, sizeof(*l));
		(void)cg_layout_parse_mountinfo(l, "/sys/fs/cgroup",
						"1 2 0:1 / /sys/fs/cgroup/memory rw - cgroup c rw,memory\n");
		cg_layout_resolve(l, NULL);
		if (cg_layout_parse_self(l, s) == 0) {
			char out[CG_PATH];
			(void)cg_sandbox_path(l->v1[0].mount, l->own_v1[0], s, "id", out, sizeof(out));
			(void)cg_sandbox_path("/m", l->own_v2, "rel", s, out, sizeof(out));
		}
		free(l);
		break;
	}
	}
	free(s);
	return 0;
}
