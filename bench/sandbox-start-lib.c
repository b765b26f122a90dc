/*
 * sandbox-start-lib: start latency of the sandbox library in-process — the
 * agent's path (no kiln binary start-up). Each iteration: sandbox_create
 * (namespaces, overlay root, cgroup with limits, seccomp, kiln-init READY),
 * sandbox_exec of /bin/true, wait, sandbox_destroy. Prints median and p99 of
 * each phase and of the total, in milliseconds.
 *
 *   sandbox-start-lib [-n RUNS] [--net host] [--state-dir DIR] [--cgroup-parent P]
 *
 * Needs root (or rootless userns) and $KILN_INIT.
 */
#include "sandbox/sandbox.h"

#include <getopt.h>

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void report(const char *name, double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp);
	double p99 = v[(int)((n - 1) * 0.99)];
	printf("%-22s median %7.3f ms   p99 %7.3f ms\n", name, v[n / 2], p99);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"runs", required_argument, NULL, 'n'},
		{"net", required_argument, NULL, 'N'},
		{"state-dir", required_argument, NULL, 's'},
		{"cgroup-parent", required_argument, NULL, 'g'},
		{"warm-exec", no_argument, NULL, 'w'},
		{0},
	};
	int runs = 200, c;
	bool warm = false;
	struct sandbox_config cfg = {.limits = {.cpu_millis = 1000, .memory_bytes = 512 << 20,
						.pids = 256, .disk_bytes = 1 << 30}};
	while ((c = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
			runs = (int)strtol(optarg, NULL, 10);
			break;
		case 'N':
			cfg.net = streq(optarg, "host") ? SANDBOX_NET_HOST : SANDBOX_NET_NONE;
			break;
		case 's':
			cfg.state_dir = optarg;
			break;
		case 'g':
			cfg.cgroup_parent = optarg;
			break;
		case 'w':
			warm = true;
			break;
		default:
			return 2;
		}
	}
	if (runs < 10)
		runs = 10;
	double *tc = xcalloc((size_t)runs, sizeof(double)), *te = xcalloc((size_t)runs, sizeof(double));
	double *td = xcalloc((size_t)runs, sizeof(double)), *tt = xcalloc((size_t)runs, sizeof(double));
	double *tw = xcalloc((size_t)runs, sizeof(double));
	char arg0[] = "/bin/true";
	char *argv_true[] = {arg0, NULL};
	for (int i = -10; i < runs; i++) { /* 10 warm-up rounds */
		struct kiln_err err = {0};
		struct sandbox *sb = NULL;
		uint64_t t0 = now_mono_ns();
		if (sandbox_create(&cfg, &sb, &err) < 0) {
			fprintf(stderr, "sandbox_create: %s\n", err.msg);
			return 1;
		}
		uint64_t t1 = now_mono_ns();
		struct sandbox_exec ex = SANDBOX_EXEC_INIT;
		ex.argv = argv_true;
		struct sandbox_process *p = NULL;
		struct sandbox_exit e;
		if (sandbox_exec(sb, &ex, &p, &err) < 0 || sandbox_process_wait(p, -1, &e) < 0 ||
		    e.exit_code != 0) {
			fprintf(stderr, "exec: %s\n", err.msg);
			return 1;
		}
		sandbox_process_free(p);
		uint64_t t2 = now_mono_ns(), t2w = t2;
		if (warm) {
			/* A second process in the same sandbox (a job's next step). */
			if (sandbox_exec(sb, &ex, &p, &err) < 0 || sandbox_process_wait(p, -1, &e) < 0)
				return 1;
			sandbox_process_free(p);
			t2w = now_mono_ns();
		}
		if (sandbox_destroy(sb, NULL) < 0)
			fprintf(stderr, "destroy: incomplete\n");
		uint64_t t3 = now_mono_ns();
		if (i < 0)
			continue;
		tc[i] = (double)(t1 - t0) / 1e6;
		te[i] = (double)(t2 - t1) / 1e6;
		tw[i] = (double)(t2w - t2) / 1e6;
		td[i] = (double)(t3 - t2w) / 1e6;
		tt[i] = (double)(t3 - t0 - (t2w - t2)) / 1e6;
	}
	printf("kiln sandbox library, in-process, %d runs (%s)\n", runs,
	       cfg.net == SANDBOX_NET_HOST ? "net host" : "net none");
	report("create", tc, runs);
	report("exec /bin/true + wait", te, runs);
	if (warm)
		report("2nd exec (warm)", tw, runs);
	report("destroy", td, runs);
	report("total", tt, runs);
	free(tc), free(te), free(td), free(tt), free(tw);
	return 0;
}
