/*
 * Unit tests of src/sandbox's pure parts: option parsing, the cgroup layout
 * (from mountinfo and /proc/self/cgroup text), cgroup path logic and
 * planning, and the seccomp filter (installed in a forked child, which then
 * tries the syscalls it must not make).
 */
#include "tap.h"

#include "sandbox/remote.h"
#include "sandbox/sandbox-internal.h"

#include <fcntl.h>

#include <linux/sched.h>
#include <sys/ioctl.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

/* ---- options --------------------------------------------------------------- */

TEST(bind_parse)
{
	struct sandbox_bind b = {0};
	struct kiln_err err = {0};
	CHECK_EQ(sandbox_bind_parse("/src:/dst", &b, &err), 0);
	CHECK_STREQ(b.src, "/src");
	CHECK_STREQ(b.dst, "/dst");
	CHECK(!b.readonly);
	free(b.storage);
	CHECK_EQ(sandbox_bind_parse("rel/dir:/a/b:ro", &b, &err), 0);
	CHECK_STREQ(b.src, "rel/dir");
	CHECK_STREQ(b.dst, "/a/b");
	CHECK(b.readonly);
	free(b.storage);
	CHECK_EQ(sandbox_bind_parse("/x:/y:rw", &b, &err), 0);
	CHECK(!b.readonly);
	free(b.storage);
}

TEST(bind_parse_rejects)
{
	struct sandbox_bind b = {0};
	struct kiln_err err = {0};
	CHECK_EQ(sandbox_bind_parse("", &b, &err), -EINVAL);
	CHECK_EQ(sandbox_bind_parse("/only", &b, &err), -EINVAL);
	CHECK(strstr(err.msg, "SRC:DST") != NULL);
	CHECK_EQ(sandbox_bind_parse(":/dst", &b, &err), -EINVAL);
	CHECK_EQ(sandbox_bind_parse("/a:relative", &b, &err), -EINVAL);
	CHECK(strstr(err.msg, "absolute") != NULL);
	CHECK_EQ(sandbox_bind_parse("/a:/b:rx", &b, &err), -EINVAL);
	CHECK(strstr(err.msg, "unknown mode 'rx'") != NULL);
	CHECK_EQ(sandbox_bind_parse("/a:/b/../etc", &b, &err), -EINVAL);
	CHECK(strstr(err.msg, "..") != NULL);
}

TEST(cpus_parse)
{
	uint32_t m = 0;
	CHECK_EQ(sandbox_cpus_parse("1.5", &m), 0);
	CHECK_EQ(m, 1500);
	CHECK_EQ(sandbox_cpus_parse("2", &m), 0);
	CHECK_EQ(m, 2000);
	CHECK_EQ(sandbox_cpus_parse("0.25", &m), 0);
	CHECK_EQ(m, 250);
	CHECK_EQ(sandbox_cpus_parse("500m", &m), 0);
	CHECK_EQ(m, 500);
	CHECK_EQ(sandbox_cpus_parse("0.001", &m), -ERANGE);
	CHECK_EQ(sandbox_cpus_parse("0", &m), -ERANGE);
	CHECK_EQ(sandbox_cpus_parse("2000", &m), -ERANGE);
	CHECK_EQ(sandbox_cpus_parse("1.2345", &m), -EINVAL);
	CHECK_EQ(sandbox_cpus_parse("1.", &m), -EINVAL);
	CHECK_EQ(sandbox_cpus_parse(".5", &m), -EINVAL);
	CHECK_EQ(sandbox_cpus_parse("1cpu", &m), -EINVAL);
	CHECK_EQ(sandbox_cpus_parse("", &m), -EINVAL);
	CHECK_EQ(sandbox_cpus_parse("-1", &m), -EINVAL);
	CHECK_EQ(m, 500); /* untouched on failure */
}

/* ---- cgroup layout ----------------------------------------------------------- */

/* This development VM: v1 controllers + an empty cgroup2 ("hybrid"). */
static const char hybrid_mountinfo[] =
	"23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw\n"
	"31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
	"32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
	"33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n"
	"35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
	"37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n"
	"38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio\n"
	"39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
	"40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
	"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

static const char hybrid_self[] = "9:name=systemd:/\n"
				  "8:pids:/\n"
				  "7:blkio:/\n"
				  "6:freezer:/\n"
				  "4:memory:/process_api/abc\n"
				  "2:cpuacct:/\n"
				  "1:cpu:/\n"
				  "0::/\n";

/* The v1 mount / own cgroup providing controller c, or NULL. */
static const char *v1_mount(const struct cg_layout *l, int c)
{
	int p = l->provider[c];
	return p >= 0 && (size_t)p < l->n_v1 ? l->v1[p].mount : NULL;
}

static const char *v1_own(const struct cg_layout *l, int c)
{
	int p = l->provider[c];
	return p >= 0 && (size_t)p < l->n_v1 ? l->own_v1[p] : NULL;
}

static const char *dir_of(const struct cg_sandbox *cg, int i)
{
	return i >= 0 && (size_t)i < cg->n ? cg->dir[i].path : NULL;
}

TEST(layout_hybrid)
{
	struct cg_layout l;
	CHECK_EQ(cg_layout_parse_mountinfo(&l, "/sys/fs/cgroup", hybrid_mountinfo), 0);
	CHECK_STREQ(l.v2, "/sys/fs/cgroup/unified");
	CHECK_EQ(l.n_v1, 6); /* name=systemd has no controller we use */
	cg_layout_resolve(&l, "");
	CHECK_EQ(cg_layout_kind(&l), SANDBOX_CGROUP_HYBRID);
	CHECK_STREQ(v1_mount(&l, CG_MEMORY), "/sys/fs/cgroup/memory");
	CHECK_STREQ(v1_mount(&l, CG_IO), "/sys/fs/cgroup/blkio");
	CHECK_EQ(cg_layout_parse_self(&l, hybrid_self), 0);
	CHECK_STREQ(v1_own(&l, CG_MEMORY), "/process_api/abc");
	CHECK_STREQ(v1_own(&l, CG_PIDS), "/");
	CHECK_STREQ(l.own_v2, "/");
	/* A v2 that gained controllers wins over v1 for them. */
	cg_layout_resolve(&l, "memory pids\n");
	CHECK_EQ(l.provider[CG_MEMORY], CG_V2);
	CHECK_EQ(l.provider[CG_PIDS], CG_V2);
	CHECK_STREQ(v1_mount(&l, CG_CPU), "/sys/fs/cgroup/cpu");
}

TEST(layout_pure_v2)
{
	static const char mi[] =
		"30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 "
		"cgroup2 rw,nsdelegate,memory_recursiveprot\n";
	struct cg_layout l;
	CHECK_EQ(cg_layout_parse_mountinfo(&l, "/sys/fs/cgroup", mi), 0);
	cg_layout_resolve(&l, "cpuset cpu io memory hugetlb pids rdma misc\n");
	CHECK_EQ(cg_layout_kind(&l), SANDBOX_CGROUP_V2);
	CHECK_STREQ(l.v2, "/sys/fs/cgroup");
	for (int c = 0; c < CG_NCTRL; c++)
		if (c == CG_CPUACCT || c == CG_FREEZER)
			CHECK_EQ(l.provider[c], -1);
		else
			CHECK_EQ(l.provider[c], CG_V2);
	CHECK_EQ(cg_layout_parse_self(&l, "0::/user.slice/user-0.slice/session-1.scope\n"), 0);
	CHECK_STREQ(l.own_v2, "/user.slice/user-0.slice/session-1.scope");
}

TEST(layout_v1_comounted_and_escaped)
{
	/* cpu,cpuacct on one hierarchy; a mount point with an escaped space;
	 * mounts outside the root are ignored. */
	static const char mi[] =
		"32 31 0:29 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
		"33 31 0:30 / /cg/my\\040mem rw shared:9 - cgroup cgroup rw,memory\n"
		"34 31 0:31 / /elsewhere/pids rw - cgroup cgroup rw,pids\n";
	struct cg_layout l;
	CHECK_EQ(cg_layout_parse_mountinfo(&l, "/cg", mi), 0);
	cg_layout_resolve(&l, NULL);
	CHECK_EQ(cg_layout_kind(&l), SANDBOX_CGROUP_V1);
	CHECK_EQ(l.n_v1, 2);
	CHECK_EQ(l.provider[CG_CPU], l.provider[CG_CPUACCT]);
	CHECK_STREQ(v1_mount(&l, CG_MEMORY), "/cg/my mem");
	CHECK_EQ(l.provider[CG_PIDS], -1);
	CHECK_EQ(cg_layout_parse_self(&l, "3:cpu,cpuacct:/a/b\n2:memory:/m\n"), 0);
	CHECK_STREQ(v1_own(&l, CG_CPU), "/a/b");
	CHECK_STREQ(v1_own(&l, CG_MEMORY), "/m");
}

TEST(layout_rejects_malformed)
{
	struct cg_layout l;
	CHECK_EQ(cg_layout_parse_mountinfo(&l, "/sys/fs/cgroup", "1 2 3\n"), -EINVAL);
	CHECK_EQ(cg_layout_parse_mountinfo(&l, "/sys/fs/cgroup", "1 2 0:1 / /x rw no-separator\n"),
		 -EINVAL);
	CHECK_EQ(cg_layout_parse_mountinfo(&l, "/sys/fs/cgroup", ""), 0);
	cg_layout_resolve(&l, NULL);
	CHECK_EQ(cg_layout_kind(&l), SANDBOX_CGROUP_NONE);
	CHECK_EQ(cg_layout_parse_self(&l, "garbage\n"), -EINVAL);
	CHECK_EQ(cg_layout_parse_self(&l, "0::relative\n"), -EINVAL);
}

TEST(cgroup_paths)
{
	char out[CG_PATH];
	CHECK_EQ(cg_sandbox_path("/sys/fs/cgroup/memory", "/own", "/kiln", "abc", out, sizeof(out)), 0);
	CHECK_STREQ(out, "/sys/fs/cgroup/memory/kiln/abc");
	CHECK_EQ(cg_sandbox_path("/sys/fs/cgroup/memory", "/own/x", "sub", "abc", out, sizeof(out)), 0);
	CHECK_STREQ(out, "/sys/fs/cgroup/memory/own/x/sub/abc");
	CHECK_EQ(cg_sandbox_path("/sys/fs/cgroup/", "/", "", "abc", out, sizeof(out)), 0);
	CHECK_STREQ(out, "/sys/fs/cgroup/abc");
	CHECK_EQ(cg_sandbox_path("/cg", "/", "//a///b/", "id", out, sizeof(out)), 0);
	CHECK_STREQ(out, "/cg/a/b/id");
	CHECK_EQ(cg_sandbox_path("/cg", "/", "/a/../b", "id", out, sizeof(out)), -EINVAL);
	CHECK_EQ(cg_sandbox_path("/cg", "/", "/a", "../id", out, sizeof(out)), -EINVAL);
	CHECK_EQ(cg_sandbox_path("/cg", "/", "/a", "x/y", out, sizeof(out)), -EINVAL);
	CHECK_EQ(cg_sandbox_path("/cg", "/", "/a", "", out, sizeof(out)), -EINVAL);
	char tiny[12];
	CHECK_EQ(cg_sandbox_path("/cg", "/", "/kiln", "abcdef", tiny, sizeof(tiny)), -ENAMETOOLONG);
}

TEST(cgroup_plan_hybrid)
{
	struct cg_layout l;
	CHECK_EQ(cg_layout_parse_mountinfo(&l, "/sys/fs/cgroup", hybrid_mountinfo), 0);
	cg_layout_resolve(&l, "");
	CHECK_EQ(cg_layout_parse_self(&l, hybrid_self), 0);
	struct cg_sandbox cg;
	struct kiln_err err = {0};
	struct sandbox_limits none = {0};
	CHECK_EQ(cg_sandbox_plan(&l, "/kiln", "0123456789abcdef", &none, &cg, &err), 0);
	/* v2 (kill, cpu.stat) + memory, pids, blkio; no cpu without a limit. */
	CHECK_EQ(cg.n, 4);
	CHECK_STREQ(dir_of(&cg, cg.v2_index), "/sys/fs/cgroup/unified/kiln/0123456789abcdef");
	CHECK_STREQ(dir_of(&cg, cg.where[CG_MEMORY]), "/sys/fs/cgroup/memory/kiln/0123456789abcdef");
	CHECK_EQ(cg.where[CG_CPU], -1);
	CHECK_EQ(cg.where[CG_FREEZER], -1);
	struct sandbox_limits cpu = {.cpu_millis = 1500};
	CHECK_EQ(cg_sandbox_plan(&l, "rel", "0123456789abcdef", &cpu, &cg, &err), 0);
	CHECK_EQ(cg.n, 5);
	CHECK_STREQ(dir_of(&cg, cg.where[CG_CPU]), "/sys/fs/cgroup/cpu/rel/0123456789abcdef");
	/* Relative parents are under kiln's own cgroup of each hierarchy. */
	CHECK_STREQ(dir_of(&cg, cg.where[CG_MEMORY]),
		    "/sys/fs/cgroup/memory/process_api/abc/rel/0123456789abcdef");
}

TEST(cgroup_plan_v1_only_uses_freezer)
{
	static const char mi[] =
		"32 31 0:29 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
		"33 31 0:30 / /cg/memory rw - cgroup cgroup rw,memory\n"
		"34 31 0:31 / /cg/freezer rw - cgroup cgroup rw,freezer\n";
	struct cg_layout l;
	CHECK_EQ(cg_layout_parse_mountinfo(&l, "/cg", mi), 0);
	cg_layout_resolve(&l, NULL);
	CHECK_EQ(cg_layout_parse_self(&l, "0::/\n"), 0);
	struct cg_sandbox cg;
	struct kiln_err err = {0};
	struct sandbox_limits lim = {.cpu_millis = 500, .memory_bytes = 1 << 30};
	CHECK_EQ(cg_sandbox_plan(&l, "/k", "id", &lim, &cg, &err), 0);
	CHECK_EQ(cg.v2_index, -1);
	CHECK(cg.where[CG_FREEZER] >= 0);
	CHECK_EQ(cg.where[CG_CPU], cg.where[CG_CPUACCT]); /* one co-mounted directory */
	CHECK_EQ(cg.n, 3);
	/* pids is missing here: a pids limit cannot be honoured. */
	struct sandbox_limits pids = {.pids = 10};
	CHECK_EQ(cg_sandbox_plan(&l, "/k", "id", &pids, &cg, &err), -ENOTSUP);
	CHECK(strstr(err.msg, "--pids") != NULL);
}

/* ---- seccomp --------------------------------------------------------------- */

static bool denied(const char *name)
{
	for (size_t i = 0; i < sandbox_seccomp_denied_count; i++)
		if (streq(sandbox_seccomp_denied[i].name, name))
			return true;
	return false;
}

TEST(seccomp_list_covers_the_issue)
{
	static const char *const must[] = {
		"keyctl",      "add_key",     "request_key",   "bpf",
		"perf_event_open", "userfaultfd", "kexec_load", "kexec_file_load",
		"init_module", "finit_module", "delete_module", "io_uring_setup",
		"io_uring_enter", "io_uring_register", "mount", "umount2",
		"pivot_root",  "unshare",     "setns",         "open_by_handle_at",
		"fsopen",      "fsmount",     "move_mount",    "open_tree",
		"swapon",      "reboot",      "acct",          "ptrace_is_not_here",
	};
	for (size_t i = 0; i + 1 < ARRAY_SIZE(must); i++)
		if (!denied(must[i])) {
			printf("# '%s' is not denied\n", must[i]);
			tap_failed = 1;
		}
	/* ptrace stays allowed (debuggers); kiln-init is not dumpable instead. */
	CHECK(!denied("ptrace"));
	for (size_t i = 0; i < sandbox_seccomp_denied_count; i++)
		CHECK(sandbox_seccomp_denied[i].why && sandbox_seccomp_denied[i].why[0]);
}

/* In a child: install the filter, then each probe must fail with its errno. */
static int seccomp_child(const struct sock_fprog *prog)
{
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return 100;
	if (syscall(SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, 0, prog) < 0)
		return 101;
	struct {
		long nr;
		long a0, a1;
		int want;
	} probes[] = {
		{SYS_keyctl, 0, 0, EPERM},
		{SYS_add_key, 0, 0, EPERM},
		{SYS_bpf, 0, 0, EPERM},
		{SYS_perf_event_open, 0, 0, EPERM},
		{SYS_userfaultfd, 0, 0, EPERM},
		{SYS_io_uring_setup, 1, 0, EPERM},
		{SYS_init_module, 0, 0, EPERM},
		{SYS_finit_module, -1, 0, EPERM},
		{SYS_kexec_load, 0, 0, EPERM},
		{SYS_unshare, CLONE_NEWUSER, 0, EPERM},
		{SYS_setns, -1, 0, EPERM},
		{SYS_mount, 0, 0, EPERM},
		{SYS_open_by_handle_at, -1, 0, EPERM},
		{SYS_clone3, 0, 0, ENOSYS},
		{SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, EPERM},
		{SYS_clone, CLONE_NEWNET, 0, EPERM},
		/* TIOCSTI with junk in the upper 32 bits (CVE-2019-10063). */
		{SYS_ioctl, 0, (long)(0x100000000ULL | TIOCSTI), EPERM},
		{SYS_personality, ADDR_NO_RANDOMIZE, 0, EPERM},
		{SYS_socket, AF_VSOCK, SOCK_STREAM, EPERM},
	};
	for (size_t i = 0; i < ARRAY_SIZE(probes); i++) {
		errno = 0;
		long r = syscall(probes[i].nr, probes[i].a0, probes[i].a1, 0, 0, 0);
		if (r != -1 || errno != probes[i].want)
			return (int)i + 1;
	}
	/* Still allowed: ordinary work. */
	if (syscall(SYS_getpid) <= 0 || personality(PER_LINUX) < 0)
		return 90;
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	if (s < 0)
		return 91;
	close(s);
	pid_t p = fork(); /* libc's fork uses clone without namespace flags */
	if (p < 0)
		return 92;
	if (p == 0)
		_exit(0);
	int st;
	if (waitpid(p, &st, 0) != p || !WIFEXITED(st))
		return 93;
	return 0;
}

TEST(seccomp_filter_blocks_and_allows)
{
	const struct sock_fprog *prog = NULL;
	struct kiln_err err = {0};
	CHECK_EQ(sandbox_seccomp_program(&prog, &err), 0);
	if (!prog)
		return;
	CHECK(prog->len > 20);
	pid_t pid = fork();
	if (pid == 0)
		_exit(seccomp_child(prog));
	int st = 0;
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK(WIFEXITED(st));
	if (WIFEXITED(st) && WEXITSTATUS(st) != 0)
		printf("# seccomp probe %d failed\n", WEXITSTATUS(st));
	CHECK_EQ(WEXITSTATUS(st), 0);
}

TEST(seccomp_prebuilt_is_what_the_rules_compile_to)
{
	/* The program built into kiln (seccomp-gen at build time) must be the
	 * one the rules give now: a stale or foreign one would fail here. */
	const struct sock_fprog *prog = NULL;
	struct kiln_err err = {0};
	struct buf b = BUF_INIT;
	CHECK_EQ(sandbox_seccomp_program(&prog, &err), 0);
	CHECK_EQ(sandbox_seccomp_compile(&b, &err), 0);
	if (!prog || !b.data)
		return;
	CHECK_EQ(b.len, prog->len * sizeof(struct sock_filter));
	CHECK(b.len == prog->len * sizeof(struct sock_filter) &&
	      memcmp(b.data, prog->filter, b.len) == 0);
	buf_release(&b);
}

TEST(kept_caps_are_few)
{
	/* Never CAP_SYS_ADMIN (21), SYS_PTRACE (19), SYS_MODULE (16), NET_ADMIN (12). */
	for (size_t i = 0; i < sandbox_kept_caps_count; i++) {
		int c = sandbox_kept_caps[i];
		CHECK(c != 21 && c != 19 && c != 16 && c != 12 && c != 17 && c != 25);
	}
	CHECK(sandbox_kept_caps_count <= 10);
}

/* ---- remote: the kiln sandbox serve wire format ----------------------------- */

TEST(remote_request_round_trip)
{
	char a0[] = "/bin/sh", a1[] = "-c", a2[] = "echo \"hi\"\n\x01", e0[] = "PATH=/bin";
	char *argv[] = {a0, a1, a2, NULL}, *envp[] = {e0, NULL};
	struct sandbox_request in = {
		.cfg = {.rootfs = "/srv/root fs", .net = SANDBOX_NET_HOST, .hostname = "h",
			.limits = {.cpu_millis = 1500, .memory_bytes = 512 << 20, .pids = 64,
				   .disk_bytes = 1 << 30}},
		.argv = argv, .envp = envp, .cwd = "/tmp", .uid = 1000, .gid = 1001,
		.timeout_ms = 30000, .want_stats = true, .stdio = 5};
	struct sandbox_bind binds[2] = {{.src = "/srv/a \"b\"", .dst = "/opt/a", .readonly = true},
					{.src = "/srv/c", .dst = "/c"}};
	in.cfg.workspace = "/home/u/ws";
	in.cfg.binds = binds;
	in.cfg.n_binds = 2;
	struct buf b = BUF_INIT;
	sandbox_request_encode(&in, &b);
	struct sandbox_request out;
	struct kiln_err err = {0};
	CHECK_EQ(sandbox_request_decode(b.data, b.len, &out, &err), 0);
	CHECK_STREQ(out.argv[2], a2);
	CHECK(out.argv[3] == NULL);
	CHECK_STREQ(out.envp[0], e0);
	CHECK_STREQ(out.cwd, "/tmp");
	CHECK_STREQ(out.cfg.rootfs, "/srv/root fs");
	CHECK_STREQ(out.cfg.hostname, "h");
	CHECK_EQ(out.cfg.net, SANDBOX_NET_HOST);
	CHECK_EQ(out.cfg.limits.cpu_millis, 1500);
	CHECK_EQ(out.cfg.limits.memory_bytes, 512u << 20);
	CHECK_EQ(out.cfg.limits.pids, 64);
	CHECK_EQ(out.cfg.limits.disk_bytes, 1u << 30);
	CHECK_EQ(out.uid, 1000);
	CHECK_EQ(out.gid, 1001);
	CHECK_EQ(out.timeout_ms, 30000);
	CHECK(out.want_stats);
	CHECK_EQ(out.stdio, 5);
	CHECK_STREQ(out.cfg.workspace, "/home/u/ws");
	CHECK_EQ(out.cfg.n_binds, 2);
	CHECK_STREQ(out.cfg.binds[0].src, "/srv/a \"b\"");
	CHECK_STREQ(out.cfg.binds[0].dst, "/opt/a");
	CHECK(out.cfg.binds[0].readonly);
	CHECK_STREQ(out.cfg.binds[1].dst, "/c");
	CHECK(!out.cfg.binds[1].readonly);
	sandbox_request_free(&out);
	buf_release(&b);
}

TEST(remote_request_rejects)
{
	static const struct {
		const char *json, *msg;
	} bad[] = {
		{"[]", "not a JSON object"},
		{"{\"v\":1}", "'argv' is missing"},
		{"{\"v\":1,\"argv\":[\"\"]}", "'argv'[0] is empty"},
		{"{\"v\":1,\"argv\":[1]}", "'argv'[0] must be a string"},
		{"{\"v\":1,\"argv\":[\"a\\u0000b\"]}", "is not allowed"},
		{"{\"v\":1,\"argv\":[\"true\"],\"net\":\"bridge\"}", "'net' must be none or host"},
		{"{\"v\":1,\"argv\":[\"true\"],\"rootfs\":\"rel\"}", "'rootfs' must be host"},
		{"{\"v\":1,\"argv\":[\"true\"],\"uid\":70000}", "'uid' must be an integer"},
		{"{\"v\":1,\"argv\":[\"true\"],\"memory_bytes\":1024}", "below its minimum"},
		{"{\"v\":1,\"argv\":[\"true\"],\"stats\":1}", "'stats' must be true or false"},
		{"{\"v\":1,\"v\":1,\"argv\":[\"true\"]}", "duplicate"},
		{"{\"v\":1,\"argv\":[\"true\"],\"workspace\":\"rel\"}", "'workspace' must be an absolute"},
		{"{\"v\":1,\"argv\":[\"true\"],\"binds\":{}}", "'binds' must be an array"},
		{"{\"v\":1,\"argv\":[\"true\"],\"binds\":[1]}", "'binds'[0] must be an object"},
		{"{\"v\":1,\"argv\":[\"true\"],\"binds\":[{\"src\":\"/a\"}]}",
		 "'binds'[0] needs absolute 'src' and 'dst'"},
		{"{\"v\":1,\"argv\":[\"true\"],\"binds\":[{\"src\":\"/a\",\"dst\":\"/b\",\"ro\":1}]}",
		 "'binds'[0]: 'ro' must be true or false"},
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		struct sandbox_request r;
		struct kiln_err err = {0};
		CHECK(sandbox_request_decode(bad[i].json, strlen(bad[i].json), &r, &err) < 0);
		if (!strstr(err.msg, bad[i].msg))
			fprintf(stderr, "# %s: got \"%s\"\n", bad[i].json, err.msg);
		CHECK(strstr(err.msg, bad[i].msg) != NULL);
	}
}

/* The front's argv request (remote-argv.h): what it parses and what it refuses. */
TEST(remote_argv_request)
{
	static const char ok[] = "kiln-argv 1\0" "5\0" "/home/u\0" "3\0run\0--\0true\0"
				 "2\0PATH=/bin\0E=\0";
	struct sandbox_argv_request r;
	struct kiln_err err = {0};
	CHECK(sandbox_argv_is_request(ok, sizeof(ok) - 1));
	CHECK_EQ(sandbox_argv_decode(ok, sizeof(ok) - 1, &r, &err), 0);
	CHECK_EQ(r.stdio, 5);
	CHECK_STREQ(r.cwd, "/home/u");
	CHECK_EQ(r.argc, 3);
	CHECK_STREQ(r.argv[0], "run");
	CHECK_STREQ(r.argv[2], "true");
	CHECK(r.argv[3] == NULL);
	CHECK_STREQ(r.envp[0], "PATH=/bin");
	CHECK_STREQ(r.envp[1], "E=");
	CHECK(r.envp[2] == NULL);
	sandbox_argv_request_free(&r);
	/* No environment at all is fine. */
	static const char noenv[] = "kiln-argv 1\0" "0\0/\0" "1\0run\0" "0\0";
	CHECK_EQ(sandbox_argv_decode(noenv, sizeof(noenv) - 1, &r, &err), 0);
	CHECK(r.envp[0] == NULL);
	sandbox_argv_request_free(&r);

	static const struct {
		const char *data;
		size_t len;
		const char *msg;
	} bad[] = {
#define B(lit, msg) {lit, sizeof(lit) - 1, msg}
		B("kiln-argv 2\0", "must start with 'kiln-argv 1'"),
		B("kiln-argv 1", "must start with"),
		B("kiln-argv 1\0" "8\0/\0", "stdio must be a number up to 7"),
		B("kiln-argv 1\0" "-1\0/\0", "stdio must be a number"),
		B("kiln-argv 1\0" "7\0rel\0", "cwd must be an absolute path"),
		B("kiln-argv 1\0" "7\0/\0" "0\0" "0\0", "argc must be at least 1"),
		B("kiln-argv 1\0" "7\0/\0" "x\0", "argc must be a number"),
		B("kiln-argv 1\0" "7\0/\0" "65537\0", "argc must be a number up to 65536"),
		B("kiln-argv 1\0" "7\0/\0" "9\0a\0b\0", "argc 9 is more than the 4 bytes"),
		B("kiln-argv 1\0" "7\0/\0" "3\0a\0b\0", "argument 3 of 3 is missing"),
		B("kiln-argv 1\0" "7\0/\0" "2\0a\0bcd", "argument 2 of 2 is missing or not NUL"),
		B("kiln-argv 1\0" "7\0/\0" "1\0a\0", "envc must be a number"),
		B("kiln-argv 1\0" "7\0/\0" "1\0a\0" "1\0E", "environment entry 1 of 1"),
		B("kiln-argv 1\0" "7\0/\0" "1\0a\0" "0\0x", "1 bytes after the environment"),
#undef B
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		struct kiln_err e = {0};
		CHECK(sandbox_argv_decode(bad[i].data, bad[i].len, &r, &e) == -EINVAL);
		if (!strstr(e.msg, bad[i].msg))
			fprintf(stderr, "# bad[%zu]: got \"%s\"\n", i, e.msg);
		CHECK(strstr(e.msg, bad[i].msg) != NULL);
		CHECK(r.argv == NULL && r.envp == NULL);
	}
	CHECK(!sandbox_argv_is_request("{\"v\":1}", 7));
	CHECK(!sandbox_argv_is_request("kiln-argv 1", 11));
}

TEST(remote_result_round_trip)
{
	struct sandbox_result in = {
		.id = "0123456789abcdef", .started = true, .warm = true,
		.exit = {.exit_code = -1, .signal = 9, .oom_killed = true, .wall_ns = 123456789,
			 .cpu_user_ns = 5, .cpu_system_ns = 6, .maxrss_bytes = 7},
		.cancelled = true, .cancel_signal = 15, .have_stats = true,
		.stats = {.have_memory = true, .have_pids = true, .memory_peak_bytes = 1ULL << 40,
			  .pids_peak = 3, .oom_kills = 1},
		.cgroup = true, .layout = SANDBOX_CGROUP_HYBRID, .idmap = true,
		.warning = (char[]){"degraded \"x\""}};
	struct buf b = BUF_INIT;
	sandbox_result_encode(&in, &b);
	struct sandbox_result out;
	struct kiln_err err = {0};
	CHECK_EQ(sandbox_result_decode(b.data, b.len, &out, &err), 0);
	CHECK_STREQ(out.id, in.id);
	CHECK(out.started && out.warm && out.cancelled && out.have_stats && out.cgroup && out.idmap);
	CHECK_EQ(out.exit.exit_code, -1);
	CHECK_EQ(out.exit.signal, 9);
	CHECK(out.exit.oom_killed);
	CHECK_EQ(out.exit.wall_ns, 123456789);
	CHECK_EQ(out.cancel_signal, 15);
	CHECK(out.stats.have_memory && out.stats.have_pids && !out.stats.have_cpu);
	CHECK_EQ(out.stats.memory_peak_bytes, 1ULL << 40);
	CHECK_EQ(out.layout, SANDBOX_CGROUP_HYBRID);
	CHECK_STREQ(out.warning, "degraded \"x\"");
	CHECK(out.err_msg == NULL);
	sandbox_result_free(&out);
	buf_release(&b);
}

TEST(remote_frames)
{
	int sp[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int fds[2] = {devnull, devnull};
	CHECK_EQ(sandbox_frame_send(sp[0], "{\"a\":1}", 7, fds, 2), 0);
	CHECK_EQ(sandbox_frame_send(sp[0], "{}", 2, NULL, 0), 0);
	struct buf b = BUF_INIT;
	int got[3];
	size_t n = 0;
	CHECK_EQ(sandbox_frame_recv(sp[1], &b, got, 3, &n), 1);
	CHECK_EQ(n, 2);
	CHECK_STREQ(b.data, "{\"a\":1}");
	for (size_t i = 0; i < n; i++)
		close(got[i]);
	CHECK_EQ(sandbox_frame_recv(sp[1], &b, got, 3, &n), 1);
	CHECK_EQ(n, 0);
	CHECK_STREQ(b.data, "{}");
	/* A length over the limit, then EOF inside a frame: -EPROTO; EOF: 0. */
	uint32_t big = SANDBOX_REMOTE_MAX_FRAME + 1;
	CHECK_EQ(write(sp[0], &big, sizeof(big)), (ssize_t)sizeof(big));
	CHECK_EQ(sandbox_frame_recv(sp[1], &b, got, 3, &n), -EPROTO);
	uint32_t len = 10;
	CHECK_EQ(write(sp[0], &len, sizeof(len)), (ssize_t)sizeof(len));
	CHECK_EQ(write(sp[0], "abc", 3), 3);
	close(sp[0]);
	CHECK_EQ(sandbox_frame_recv(sp[1], &b, got, 3, &n), -EPROTO);
	CHECK_EQ(sandbox_frame_recv(sp[1], &b, got, 3, &n), 0);
	CHECK_EQ(sandbox_frame_send(sp[1], "x", SANDBOX_REMOTE_MAX_FRAME + 1, NULL, 0), -EMSGSIZE);
	close(sp[1]);
	close(devnull);
	buf_release(&b);
	CHECK_EQ(sandbox_cancel_decode("{\"cancel\":15}", 13), 15);
	CHECK(sandbox_cancel_decode("{\"cancel\":0}", 12) < 0);
	CHECK(sandbox_status_is_request("{\"status\":true}", 15));
	CHECK(!sandbox_status_is_request("{\"v\":1}", 7));
}

int main(void)
{
	return tap_run();
}
