/*
 * seccomp-rules: the filter every sandbox process runs under, and its
 * compilation to BPF with libseccomp.
 *
 * A deny list (default: allow) that blocks at least what Docker's default
 * profile blocks for a container without CAP_SYS_ADMIN, plus io_uring (it
 * bypasses seccomp observation of the operations it performs), the new
 * mount API, pidfd_getfd and TIOCSTI/TIOCLINUX. Arguments are filtered
 * where Docker filters them: clone with namespace flags, personality, and
 * socket(AF_VSOCK). clone3 fails with ENOSYS (its flags live in memory a
 * filter cannot read), so libc falls back to clone, whose flags are checked.
 * Other architectures (i386, x32) are killed: the kernel would otherwise
 * run their syscall numbers past a filter written for x86_64 numbers.
 *
 * Compiled at build time (seccomp-gen writes the BPF into seccomp-bpf.h, so
 * a start costs no compilation and kiln needs no libseccomp at run time) and,
 * where that is not possible (cross builds), once per process (seccomp.c).
 * The unit test checks that the two are the same program.
 */
#include "sandbox-internal.h"

#include <linux/sched.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/socket.h>

const struct seccomp_rule_desc sandbox_seccomp_denied[] = {
	{"acct", -1, "process accounting is host-wide"},
	{"add_key", -1, "kernel keyrings are not namespaced"},
	{"keyctl", -1, "kernel keyrings are not namespaced"},
	{"request_key", -1, "kernel keyrings are not namespaced"},
	{"bpf", -1, "eBPF: large kernel attack surface"},
	{"perf_event_open", -1, "performance counters leak host information"},
	{"userfaultfd", -1, "used to win kernel races in exploits"},
	{"io_uring_setup", -1, "io_uring operations bypass seccomp"},
	{"io_uring_enter", -1, "io_uring operations bypass seccomp"},
	{"io_uring_register", -1, "io_uring operations bypass seccomp"},
	{"kexec_load", -1, "replaces the host kernel"},
	{"kexec_file_load", -1, "replaces the host kernel"},
	{"init_module", -1, "kernel modules"},
	{"finit_module", -1, "kernel modules"},
	{"delete_module", -1, "kernel modules"},
	{"create_module", -1, "kernel modules"},
	{"query_module", -1, "kernel modules"},
	{"get_kernel_syms", -1, "kernel modules"},
	{"mount", -1, "no new mounts inside the sandbox"},
	{"umount2", -1, "no unmounting of the sandbox's mounts (would reveal what they cover)"},
	{"pivot_root", -1, "no new mounts inside the sandbox"},
	{"chroot", -1, "CAP_SYS_CHROOT is not kept"},
	{"fsopen", -1, "new mount API"},
	{"fsconfig", -1, "new mount API"},
	{"fsmount", -1, "new mount API"},
	{"fspick", -1, "new mount API"},
	{"move_mount", -1, "new mount API"},
	{"open_tree", -1, "new mount API"},
	{"mount_setattr", -1, "new mount API"},
	{"open_tree_attr", 467, "new mount API"},
	{"unshare", -1, "no nested namespaces"},
	{"setns", -1, "no joining other namespaces"},
	{"name_to_handle_at", -1, "file handles bypass path checks (the 'shocker' escape)"},
	{"open_by_handle_at", -1, "file handles bypass path checks (the 'shocker' escape)"},
	{"clock_settime", -1, "the clock is host-wide"},
	{"clock_adjtime", -1, "the clock is host-wide"},
	{"settimeofday", -1, "the clock is host-wide"},
	{"stime", -1, "the clock is host-wide"},
	{"reboot", -1, "host-wide"},
	{"swapon", -1, "host-wide"},
	{"swapoff", -1, "host-wide"},
	{"syslog", -1, "the kernel log leaks host information"},
	{"quotactl", -1, "host-wide"},
	{"quotactl_fd", 443, "host-wide"},
	{"ioperm", -1, "raw I/O ports"},
	{"iopl", -1, "raw I/O ports"},
	{"vhangup", -1, "CAP_SYS_TTY_CONFIG is not kept"},
	{"lookup_dcookie", -1, "needs CAP_SYS_ADMIN"},
	{"fanotify_init", -1, "needs CAP_SYS_ADMIN"},
	{"nfsservctl", -1, "obsolete"},
	{"uselib", -1, "obsolete"},
	{"ustat", -1, "obsolete"},
	{"sysfs", -1, "obsolete"},
	{"_sysctl", -1, "obsolete"},
	{"vm86", -1, "obsolete"},
	{"vm86old", -1, "obsolete"},
	{"afs_syscall", -1, "unimplemented"},
	{"tuxcall", -1, "unimplemented"},
	{"security", -1, "unimplemented"},
	{"vserver", -1, "unimplemented"},
	{"getpmsg", -1, "unimplemented"},
	{"putpmsg", -1, "unimplemented"},
	{"kcmp", -1, "compares kernel objects (Docker: CAP_SYS_PTRACE only)"},
	{"pidfd_getfd", -1, "steals fds from other processes"},
	{"mbind", -1, "NUMA policy (Docker: CAP_SYS_NICE only)"},
	{"get_mempolicy", -1, "NUMA policy (Docker: CAP_SYS_NICE only)"},
	{"set_mempolicy", -1, "NUMA policy (Docker: CAP_SYS_NICE only)"},
	{"set_mempolicy_home_node", 450, "NUMA policy (Docker: CAP_SYS_NICE only)"},
	{"move_pages", -1, "NUMA policy (Docker: CAP_SYS_NICE only)"},
	{"migrate_pages", -1, "NUMA policy (Docker: CAP_SYS_NICE only)"},
};
const size_t sandbox_seccomp_denied_count = ARRAY_SIZE(sandbox_seccomp_denied);

static int resolve(const struct seccomp_rule_desc *d)
{
	int nr = seccomp_syscall_resolve_name(d->name);
	if (nr == __NR_SCMP_ERROR && d->x86_64_nr >= 0 && seccomp_arch_native() == SCMP_ARCH_X86_64)
		nr = d->x86_64_nr;
	return nr;
}

static int build(scmp_filter_ctx ctx, struct kiln_err *err)
{
	const uint32_t eperm = SCMP_ACT_ERRNO(EPERM);
	int r;
	for (size_t i = 0; i < sandbox_seccomp_denied_count; i++) {
		int nr = resolve(&sandbox_seccomp_denied[i]);
		if (nr < 0)
			continue; /* not a syscall on this architecture */
		r = seccomp_rule_add(ctx, eperm, nr, 0);
		if (r < 0)
			return kiln_err_set(err, r, "seccomp rule for '%s': %s",
					    sandbox_seccomp_denied[i].name, strerror(-r));
	}

	/* clone3 passes its flags in memory: make libc fall back to clone. */
	int nr = seccomp_syscall_resolve_name("clone3");
	if (nr >= 0 && (r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), nr, 0)) < 0)
		return kiln_err_set(err, r, "seccomp rule for 'clone3': %s", strerror(-r));

	/* clone: no new namespaces (one rule per flag: rules are OR-ed). */
	static const uint64_t ns_flags[] = {CLONE_NEWNS,  CLONE_NEWUTS, CLONE_NEWIPC,
					    CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET,
					    CLONE_NEWCGROUP};
	for (size_t i = 0; i < ARRAY_SIZE(ns_flags); i++) {
		r = seccomp_rule_add(ctx, eperm, SCMP_SYS(clone), 1,
				     SCMP_A0_64(SCMP_CMP_MASKED_EQ, ns_flags[i], ns_flags[i]));
		if (r < 0)
			return kiln_err_set(err, r, "seccomp rule for 'clone': %s", strerror(-r));
	}

	/* ioctl: terminal input injection into whoever owns the tty
	 * (CVE-2017-5226). The kernel compares the low 32 bits only, so
	 * must the filter (CVE-2019-10063). */
	static const uint64_t bad_ioctls[] = {TIOCSTI, TIOCLINUX};
	for (size_t i = 0; i < ARRAY_SIZE(bad_ioctls); i++) {
		r = seccomp_rule_add(ctx, eperm, SCMP_SYS(ioctl), 1,
				     SCMP_A1_64(SCMP_CMP_MASKED_EQ, 0xffffffffULL, bad_ioctls[i]));
		if (r < 0)
			return kiln_err_set(err, r, "seccomp rule for 'ioctl': %s", strerror(-r));
	}

	/* personality: the flags that weaken the address space (what Docker's
	 * value list keeps out): no ASLR, executable data, a mapped page 0,
	 * legacy layouts. The query value 0xffffffff has them all, so it is
	 * denied too (stricter than Docker). */
	static const uint64_t bad_persona[] = {ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC,
					       MMAP_PAGE_ZERO,    ADDR_COMPAT_LAYOUT,
					       ADDR_LIMIT_32BIT,  ADDR_LIMIT_3GB};
	for (size_t i = 0; i < ARRAY_SIZE(bad_persona); i++) {
		uint64_t b = bad_persona[i];
		r = seccomp_rule_add(ctx, eperm, SCMP_SYS(personality), 1,
				     SCMP_A0_64(SCMP_CMP_MASKED_EQ, b, b));
		if (r < 0)
			return kiln_err_set(err, r, "seccomp rule for 'personality': %s",
					    strerror(-r));
	}

	/* No vsock: it reaches the hypervisor host, not the sandbox's netns. */
	r = seccomp_rule_add(ctx, eperm, SCMP_SYS(socket), 1,
			     SCMP_A0_64(SCMP_CMP_MASKED_EQ, 0xffffffffULL, AF_VSOCK));
	if (r < 0)
		return kiln_err_set(err, r, "seccomp rule for 'socket': %s", strerror(-r));
	return 0;
}

int sandbox_seccomp_compile(struct buf *ret, struct kiln_err *err)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
	if (!ctx)
		return kiln_err_set(err, -ENOMEM, "seccomp_init failed");
	/* Foreign architectures: kill (see the file comment). */
	int r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
	if (r >= 0)
		r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0); /* the child sets it itself */
	/* A binary tree of syscall numbers rather than a list: shorter paths
	 * for every syscall, and a cheaper install (the kernel runs the filter
	 * for each syscall number to build its action cache). */
	if (r >= 0)
		r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
	if (r < 0) {
		seccomp_release(ctx);
		return kiln_err_set(err, r, "seccomp attributes: %s", strerror(-r));
	}
	if ((r = build(ctx, err)) < 0) {
		seccomp_release(ctx);
		return r;
	}
	int fd = memfd_create("kiln-seccomp", MFD_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		seccomp_release(ctx);
		return kiln_err_set(err, r, "memfd_create: %s", strerror(-r));
	}
	r = seccomp_export_bpf(ctx, fd);
	seccomp_release(ctx);
	struct buf b = BUF_INIT;
	if (r >= 0 && lseek(fd, 0, SEEK_SET) < 0)
		r = -errno;
	if (r >= 0)
		r = read_fd_all(fd, 1 << 20, &b);
	close(fd);
	if (r < 0 || b.len == 0 || b.len % sizeof(struct sock_filter) != 0) {
		buf_release(&b);
		return kiln_err_set(err, r < 0 ? r : -EINVAL, "exporting the seccomp filter failed");
	}
	*ret = b;
	return 0;
}
