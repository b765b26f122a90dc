/*
 * seccomp: the sandbox's seccomp program (the rules: seccomp-rules.c) and
 * the capabilities root keeps inside.
 *
 * The program is the BPF seccomp-gen compiled at build time
 * (seccomp-bpf.h): a start costs no compilation, which with libseccomp took
 * ~0.3 ms per process, and kiln loads no libseccomp at run time. Cross
 * builds, which cannot run seccomp-gen, compile it once per process.
 */
#include "sandbox-internal.h"

#include "seccomp-bpf.h"

#if SANDBOX_SECCOMP_PREBUILT

static const struct sock_fprog prog = {
	.len = ARRAY_SIZE(sandbox_seccomp_prebuilt),
	/* sock_fprog.filter is not const; the kernel only reads it. */
	.filter = (struct sock_filter *)(uintptr_t)sandbox_seccomp_prebuilt,
};

int sandbox_seccomp_program(const struct sock_fprog **ret, struct kiln_err *err)
{
	(void)err;
	*ret = &prog;
	return 0;
}

#else

static pthread_once_t prog_once = PTHREAD_ONCE_INIT;
static struct sock_fprog prog;   /* written once under prog_once */
static struct kiln_err prog_err; /* ditto */

static void prog_build(void)
{
	struct buf b = BUF_INIT;
	if (sandbox_seccomp_compile(&b, &prog_err) < 0)
		return;
	prog.len = (unsigned short)(b.len / sizeof(struct sock_filter));
	prog.filter = (struct sock_filter *)(void *)buf_steal(&b);
}

int sandbox_seccomp_program(const struct sock_fprog **ret, struct kiln_err *err)
{
	pthread_once(&prog_once, prog_build);
	if (!prog.filter) {
		if (err)
			*err = prog_err;
		return prog_err.code ? prog_err.code : -EINVAL;
	}
	*ret = &prog;
	return 0;
}

#endif

/* Kept for processes running as root inside (uid 0 of the sandbox's user
 * namespace); each only works on objects that namespace owns. */
const int sandbox_kept_caps[] = {
	0 /* CAP_CHOWN: chown files in the writable layer and workspace */,
	1 /* CAP_DAC_OVERRIDE: root reads/writes its own files whatever the mode */,
	3 /* CAP_FOWNER: chmod/utime of files owned by other sandbox users */,
	4 /* CAP_FSETID: keep setgid bits on chown/write (package managers) */,
	5 /* CAP_KILL: signal the sandbox's other users' processes */,
	6 /* CAP_SETGID: drop to another user (apt's _apt, su, runuser) */,
	7 /* CAP_SETUID: drop to another user */,
	10 /* CAP_NET_BIND_SERVICE: test servers on ports < 1024 */,
	31 /* CAP_SETFCAP: dpkg installing packages with file capabilities */,
};
const size_t sandbox_kept_caps_count = ARRAY_SIZE(sandbox_kept_caps);
