/*
 * child: the set-up that runs inside the new namespaces, between clone3 and
 * the exec of kiln-init.
 *
 * Constraints (the parent may be multi-threaded and sanitised): no
 * allocation, no stdio, no locks — only system calls and the plan the
 * parent prepared (struct sb_plan). Failures are reported to the parent as
 * a struct sb_child_err naming the step, then the child exits 125.
 *
 * Order (each step needs the one before):
 *   close inherited fds → wait for the parent's GO (maps written, trees
 *   ready) → make every mount private → open the stage dir (still as the
 *   host uid) → become root of the user namespace → writable layer (tmpfs) → root: overlays on read-only lowers → /proc
 *   (verified procfs, sensitive paths masked) → /dev → /tmp → binds →
 *   hostname, loopback → pivot_root + detach the old root → the parent's
 *   FINISH (seccomp program, kiln-init memfd, v1 cgroup fds: prepared while
 *   we mounted) → join the v1 cgroups → new cgroup namespace → stdio on
 *   /dev/null, control socket on fd 3, everything else CLOEXEC → bounding
 *   set, capabilities → no_new_privs → seccomp → execveat(kiln-init memfd).
 *
 * Mount targets inside the root are resolved with openat2(RESOLVE_IN_ROOT),
 * so symlinks in a rootfs cannot redirect a mount outside it, and every
 * mount is attached through fds (move_mount), never through a path that
 * could be swapped in between.
 */
#include "sandbox-internal.h"
#include "init-proto.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

/* Files in /proc replaced by /dev/null, directories by an empty read-only
 * tmpfs, and directories made read-only (as OCI runtimes do). */
static const char *const proc_masked[] = {
	"kcore", "keys", "latency_stats", "timer_list", "timer_stats", "sched_debug", "kallsyms",
};
static const char *const proc_masked_dirs[] = {"acpi", "asound", "scsi", "driver"};
static const char *const proc_readonly[] = {"sys", "sysrq-trigger", "irq", "bus", "fs"};

static const char *const dev_nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};

struct child {
	const struct sb_plan *p;
	int sock;
	int init_fd; /* from FINISH */
	int stagefd;
	int rootfd;
	int trees[SB_MAX_LOWERS + SB_MAX_MOUNTS];
	bool have_trees;
	bool idmap;
	char stage[40]; /* "/proc/self/fd/<stagefd>" */
	int mask_tree;  /* the /etc mask as a tree from the parent (root mode) */
	int maskfd;     /* the /etc mask opened by us (rootless) */
	struct sb_finish fin;
	struct sock_fprog prog;
	int tasks[CG_MAX_V1];
};

/* ---- tiny string helpers (no libc state) -------------------------------- */

static size_t s_len(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

/* Appends src to dst (size bytes); returns false if it did not fit. */
static bool s_cat(char *dst, size_t size, const char *src)
{
	size_t d = s_len(dst), n = s_len(src);
	if (d + n + 1 > size)
		return false;
	for (size_t i = 0; i <= n; i++)
		dst[d + i] = src[i];
	return true;
}

static bool s_set(char *dst, size_t size, const char *src)
{
	dst[0] = '\0';
	return s_cat(dst, size, src);
}

static void s_utoa(char *out, unsigned long long v)
{
	char tmp[24];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (int i = 0; i < n; i++)
		out[i] = tmp[n - 1 - i];
	out[n] = '\0';
}

/* KILN_SANDBOX_TRACE: the time a step ended, into the parent's shared page. */
static void mark(struct child *c, enum sb_step step)
{
	if (c->p->trace)
		c->p->trace[step] = sb_trace_now();
}

/* ---- failure ------------------------------------------------------------ */

KILN_NORETURN static void fail(struct child *c, enum sb_step step, int err, const char *detail,
			       const char *detail2)
{
	struct sb_child_err e;
	for (size_t i = 0; i < sizeof(e); i++)
		((char *)&e)[i] = 0;
	e.magic = SB_CHILD_ERR_MAGIC;
	e.step = step;
	e.err = err > 0 ? err : EIO;
	if (detail)
		s_set(e.detail, sizeof(e.detail), detail);
	if (detail2)
		s_cat(e.detail, sizeof(e.detail), detail2);
	(void)!send(c->sock, &e, sizeof(e), MSG_NOSIGNAL);
	_exit(125);
}

/* fsopen/fsconfig explain failures in the fs context's message queue. */
KILN_NORETURN static void fail_fs(struct child *c, enum sb_step step, int err, int fsfd,
				  const char *detail)
{
	char msg[200], full[256];
	s_set(full, sizeof(full), detail);
	if (fsfd >= 0) {
		ssize_t n = read(fsfd, msg, sizeof(msg) - 1);
		if (n > 0) {
			msg[n] = '\0';
			if (n > 0 && msg[n - 1] == '\n')
				msg[n - 1] = '\0';
			s_cat(full, sizeof(full), " (");
			s_cat(full, sizeof(full), msg);
			s_cat(full, sizeof(full), ")");
		}
	}
	fail(c, step, err, full, NULL);
}

/* ---- fd and path helpers -------------------------------------------------- */

static int sys_openat2(int dfd, const char *path, int flags, uint64_t resolve)
{
	struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC), .resolve = resolve};
	return (int)syscall(SYS_openat2, dfd, path, &how, sizeof(how));
}

/* Opens path (relative to the new root, '/' = the root) as O_PATH. */
static int in_root(struct child *c, const char *path, int flags)
{
	while (*path == '/')
		path++;
	if (!*path)
		path = ".";
	return sys_openat2(c->rootfd, path, O_PATH | flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
}

/* A mount target that a symlink in the rootfs resolved to the root itself
 * would hide the whole root: refuse it. */
static void not_the_root(struct child *c, int fd, enum sb_step step, const char *what)
{
	struct stat a, b;
	if (fstat(fd, &a) < 0 || fstat(c->rootfd, &b) < 0)
		fail(c, step, errno, "stat ", what);
	if (a.st_dev == b.st_dev && a.st_ino == b.st_ino)
		fail(c, step, ELOOP, what, " resolves to / inside the root (a symlink in the rootfs?)");
}

/*
 * Returns an O_PATH fd of path inside the root, creating it (directories
 * 0755 for every missing component, the last one a directory or an empty
 * file) if missing.
 */
static int ensure_in_root(struct child *c, const char *path, bool dir, enum sb_step step)
{
	int fd = in_root(c, path, dir ? O_DIRECTORY : 0);
	if (fd >= 0) {
		not_the_root(c, fd, step, path);
		return fd;
	}
	if (errno != ENOENT)
		fail(c, step, errno, "open ", path);
	char prefix[PATH_MAX];
	size_t n = s_len(path);
	if (n >= sizeof(prefix))
		fail(c, step, ENAMETOOLONG, path, NULL);
	size_t i = 0;
	while (i < n) {
		while (i < n && path[i] == '/')
			i++;
		size_t start = i;
		while (i < n && path[i] != '/')
			i++;
		if (i == start)
			break;
		size_t rest = i;
		while (rest < n && path[rest] == '/')
			rest++;
		bool last = rest >= n;
		for (size_t k = 0; k < i; k++)
			prefix[k] = path[k];
		prefix[i] = '\0';
		int probe = in_root(c, prefix, 0);
		if (probe >= 0) {
			close(probe);
			continue;
		}
		/* Create the component in its parent. */
		char comp[256];
		if (i - start >= sizeof(comp))
			fail(c, step, ENAMETOOLONG, path, NULL);
		for (size_t k = start; k < i; k++)
			comp[k - start] = path[k];
		comp[i - start] = '\0';
		prefix[start] = '\0';
		int parent = in_root(c, prefix, O_DIRECTORY);
		if (parent < 0)
			fail(c, step, errno, "open ", prefix[0] ? prefix : "/");
		int r;
		if (last && !dir) {
			r = openat(parent, comp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW,
				   0644);
			if (r >= 0)
				close(r);
		} else {
			r = mkdirat(parent, comp, 0755);
		}
		if (r < 0 && errno != EEXIST)
			fail(c, step, errno, "create ", path);
		close(parent);
	}
	fd = in_root(c, path, dir ? O_DIRECTORY : 0);
	if (fd < 0)
		fail(c, step, errno, "open ", path);
	not_the_root(c, fd, step, path);
	return fd;
}

static void attach(struct child *c, int from, int to_dfd, const char *to_path, enum sb_step step,
		   const char *what)
{
	unsigned flags = MOVE_MOUNT_F_EMPTY_PATH | (to_path[0] ? 0 : MOVE_MOUNT_T_EMPTY_PATH);
	if (move_mount(from, "", to_dfd, to_path, flags) < 0)
		fail(c, step, errno, "attach ", what);
	close(from);
}

/* A new filesystem mount as a detached fd. opts: "key=value" or "flag". */
static int fs_new(struct child *c, const char *type, const char *const *opts, size_t n,
		  unsigned attrs, enum sb_step step, const char *what)
{
	int fs = fsopen(type, FSOPEN_CLOEXEC);
	if (fs < 0)
		fail(c, step, errno, "fsopen ", type);
	for (size_t i = 0; i < n; i++) {
		char key[64];
		const char *eq = opts[i];
		while (*eq && *eq != '=')
			eq++;
		size_t kl = (size_t)(eq - opts[i]);
		if (kl >= sizeof(key))
			fail(c, step, EINVAL, what, NULL);
		for (size_t k = 0; k < kl; k++)
			key[k] = opts[i][k];
		key[kl] = '\0';
		int r = *eq ? fsconfig(fs, FSCONFIG_SET_STRING, key, eq + 1, 0)
			    : fsconfig(fs, FSCONFIG_SET_FLAG, key, NULL, 0);
		if (r < 0)
			fail_fs(c, step, errno, fs, what);
	}
	if (fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
		fail_fs(c, step, errno, fs, what);
	int m = fsmount(fs, FSMOUNT_CLOEXEC, attrs);
	if (m < 0)
		fail_fs(c, step, errno, fs, what);
	close(fs);
	return m;
}

/* A detached copy (bind) of a path in our mount namespace. */
static int clone_path(struct child *c, int dfd, const char *path, enum sb_step step)
{
	int t = open_tree(dfd, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (path[0] ? 0 : AT_EMPTY_PATH));
	if (t < 0)
		fail(c, step, errno, "bind ", path);
	return t;
}

static void set_attrs(struct child *c, int tree, uint64_t attrs, enum sb_step step, const char *what)
{
	struct mount_attr a = {.attr_set = attrs};
	if (mount_setattr(tree, "", AT_EMPTY_PATH, &a, sizeof(a)) < 0)
		fail(c, step, errno, "set mount attributes of ", what);
}

/* ---- steps -------------------------------------------------------------- */

static void close_inherited(struct child *c)
{
	/* Keep only the control socket, moved high. */
	int s = fcntl(c->p->sock, F_DUPFD_CLOEXEC, 64);
	if (s < 0)
		fail(c, SB_STEP_SYNC, errno, "dup", NULL);
	c->sock = s;
	(void)close_range(0, (unsigned)s - 1, 0);
	(void)close_range((unsigned)s + 1, ~0U, 0);
}

static void wait_finish(struct child *c)
{
	char cbuf[CMSG_SPACE(sizeof(int) * (1 + CG_MAX_V1))];
	struct iovec iov = {.iov_base = &c->fin, .iov_len = sizeof(c->fin)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = sizeof(cbuf)};
	ssize_t n;
	do
		n = recvmsg(c->sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		_exit(125); /* the parent is gone */
	size_t head = sizeof(c->fin) - sizeof(c->fin.bpf);
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	if (n < (ssize_t)head || c->fin.magic != SB_FINISH_MAGIC || c->fin.bpf_len == 0 ||
	    c->fin.bpf_len > SB_MAX_BPF || c->fin.n_tasks > CG_MAX_V1 ||
	    (size_t)n != head + c->fin.bpf_len * sizeof(struct sock_filter) || !cm ||
	    cm->cmsg_type != SCM_RIGHTS ||
	    cm->cmsg_len != CMSG_LEN(sizeof(int) * (1 + c->fin.n_tasks)))
		fail(c, SB_STEP_SYNC, EPROTO, "bad FINISH message", NULL);
	const unsigned char *data = CMSG_DATA(cm);
	for (size_t k = 0; k <= c->fin.n_tasks; k++) {
		int fd = -1;
		for (size_t b = 0; b < sizeof(int); b++)
			((unsigned char *)&fd)[b] = data[k * sizeof(int) + b];
		if (k == 0)
			c->init_fd = fd;
		else
			c->tasks[k - 1] = fd;
	}
	c->prog.len = (unsigned short)c->fin.bpf_len;
	c->prog.filter = c->fin.bpf;
}

static void wait_go(struct child *c)
{
	struct sb_go go;
	char cbuf[CMSG_SPACE(sizeof(int) * (SB_MAX_LOWERS + SB_MAX_MOUNTS + 1))];
	struct iovec iov = {.iov_base = &go, .iov_len = sizeof(go)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = sizeof(cbuf)};
	ssize_t n;
	do
		n = recvmsg(c->sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		_exit(125); /* the parent is gone */
	if (n != (ssize_t)sizeof(go))
		fail(c, SB_STEP_SYNC, n < 0 ? errno : EPROTO, "receive GO", NULL);
	c->idmap = go.idmap != 0;
	size_t want = c->p->n_lowers + c->p->n_mounts + (c->p->etc_mask[0] ? 1 : 0);
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	if (go.n_fds) {
		if (go.n_fds != want || !cm || cm->cmsg_type != SCM_RIGHTS ||
		    cm->cmsg_len != CMSG_LEN(sizeof(int) * want))
			fail(c, SB_STEP_SYNC, EPROTO, "GO without its trees", NULL);
		const unsigned char *data = CMSG_DATA(cm);
		for (size_t k = 0; k < want; k++) {
			int fd = -1;
			for (size_t b = 0; b < sizeof(int); b++)
				((unsigned char *)&fd)[b] = data[k * sizeof(int) + b];
			if (k < c->p->n_lowers + c->p->n_mounts)
				c->trees[k] = fd;
			else
				c->mask_tree = fd;
		}
		c->have_trees = true;
	}
}

static void make_private(struct child *c)
{
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		fail(c, SB_STEP_PRIVATE, errno, NULL, NULL);
	/* Opened while still the host's uid, which owns the (0700) state dir:
	 * root of the sandbox could not traverse it. From here on the stage is
	 * reached through this fd only ("/proc/self/fd/N/..." in overlay
	 * options), which also keeps the host's paths out of mountinfo. */
	c->stagefd = open(c->p->stage, O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (c->stagefd < 0)
		fail(c, SB_STEP_STAGE, errno, "open ", c->p->stage);
	/* Rootless, the /etc mask lives in the state dir, which the stage
	 * tmpfs is about to cover: keep an fd. */
	if (c->p->etc_mask[0] && !c->have_trees) {
		c->maskfd = open(c->p->etc_mask, O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		if (c->maskfd < 0)
			fail(c, SB_STEP_STAGE, errno, "open ", c->p->etc_mask);
	}
}

static void join_cgroups(struct child *c)
{
	/* A real-time policy inherited from the caller is not the job's (and
	 * a v1 cpu cgroup without RT runtime refuses RT tasks). */
	struct sched_param sp = {.sched_priority = 0};
	int policy = sched_getscheduler(0);
	if ((policy == SCHED_FIFO || policy == SCHED_RR) &&
	    sched_setscheduler(0, SCHED_OTHER, &sp) < 0)
		fail(c, SB_STEP_CGROUP, errno, "reset the scheduling policy", NULL);
	for (uint32_t i = 0; i < c->fin.n_tasks; i++) {
		if (write(c->tasks[i], "0", 1) != 1)
			fail(c, SB_STEP_CGROUP, errno, NULL, NULL);
		close(c->tasks[i]);
	}
	/* After joining: the namespace's root is the sandbox's cgroup. */
	if (unshare(CLONE_NEWCGROUP) < 0)
		fail(c, SB_STEP_CGROUPNS, errno, NULL, NULL);
}

static void become_root(struct child *c)
{
	/* Raw syscalls: glibc's setresuid() and friends signal every thread
	 * the parent had (POSIX set*id semantics) and wait for them, which
	 * hangs forever in a clone child of a multi-threaded process. */
	/* Root mode: the gid map allows setgroups; drop the host's groups. */
	if (!c->p->rootless && syscall(SYS_setgroups, 0, NULL) < 0)
		fail(c, SB_STEP_IDS, errno, "setgroups", NULL);
	if (syscall(SYS_setresgid, 0, 0, 0) < 0)
		fail(c, SB_STEP_IDS, errno, "setresgid", NULL);
	if (syscall(SYS_setresuid, 0, 0, 0) < 0)
		fail(c, SB_STEP_IDS, errno, "setresuid", NULL);
}

static void make_stage(struct child *c)
{
	const struct sb_plan *p = c->p;
	if (p->stage_tmpfs) {
		char size[48] = "size=";
		const char *opts[] = {"mode=0755", size};
		if (p->disk_bytes)
			s_utoa(size + 5, p->disk_bytes);
		int m = fs_new(c, "tmpfs", opts, p->disk_bytes ? 2 : 1,
			       MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, SB_STEP_STAGE, "tmpfs");
		if (move_mount(m, "", c->stagefd, "",
			       MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
			fail(c, SB_STEP_STAGE, errno, "mount tmpfs on ", p->stage);
		/* The mount's fd is its root: the stage from now on. */
		close(c->stagefd);
		c->stagefd = m;
	}
	s_set(c->stage, sizeof(c->stage), "/proc/self/fd/");
	s_utoa(c->stage + s_len(c->stage), (unsigned long long)c->stagefd);
	static const struct {
		const char *name;
		mode_t mode;
	} dirs[] = {{"root", 0755}, {"up", 0755},   {"wk", 0755},
		    {"lower", 0755}, {"tmp", 01777}, {"shm", 01777}};
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++)
		if (mkdirat(c->stagefd, dirs[i].name, dirs[i].mode) < 0 && errno != EEXIST)
			fail(c, SB_STEP_STAGE, errno, "mkdir ", dirs[i].name);
}

/* Mounts an overlay of lower i at `target` (a dir fd in the root, or the
 * stage's "root" directory when target_fd is the stage and path "root"). */
static void mount_lower(struct child *c, size_t i, int target_fd, const char *target_path)
{
	const struct sb_lower *l = &c->p->lowers[i];
	const char *name = l->name[0] ? l->name : "_root";
	char up[64] = "up/", wk[64] = "wk/", lo[64] = "lower/";
	if (!s_cat(up, sizeof(up), name) || !s_cat(wk, sizeof(wk), name) ||
	    !s_cat(lo, sizeof(lo), name))
		fail(c, SB_STEP_OVERLAY, ENAMETOOLONG, name, NULL);
	if ((mkdirat(c->stagefd, up, 0755) < 0 && errno != EEXIST) ||
	    (mkdirat(c->stagefd, wk, 0755) < 0 && errno != EEXIST))
		fail(c, SB_STEP_OVERLAY, errno, "mkdir ", up);

	char lowerdir[2 * PATH_MAX + 2] = "";
	if (l->mask_etc) {
		/* The whiteouts hiding /etc's secrets: a layer above it. */
		if (c->mask_tree >= 0) {
			if (mkdirat(c->stagefd, "lower/_etcmask", 0755) < 0 && errno != EEXIST)
				fail(c, SB_STEP_LOWER, errno, "mkdir lower/_etcmask", NULL);
			attach(c, c->mask_tree, c->stagefd, "lower/_etcmask", SB_STEP_LOWER,
			       "/etc mask");
			c->mask_tree = -1;
			s_set(lowerdir, sizeof(lowerdir), c->stage);
			s_cat(lowerdir, sizeof(lowerdir), "/lower/_etcmask:");
		} else {
			s_set(lowerdir, sizeof(lowerdir), "/proc/self/fd/");
			s_utoa(lowerdir + s_len(lowerdir), (unsigned long long)c->maskfd);
			s_cat(lowerdir, sizeof(lowerdir), ":");
		}
	}
	if (c->have_trees) {
		/* The parent's (idmapped) tree, attached under the stage. */
		if (mkdirat(c->stagefd, lo, 0755) < 0 && errno != EEXIST)
			fail(c, SB_STEP_LOWER, errno, "mkdir ", lo);
		attach(c, c->trees[i], c->stagefd, lo, SB_STEP_LOWER, l->src);
		c->trees[i] = -1;
		s_cat(lowerdir, sizeof(lowerdir), c->stage);
		s_cat(lowerdir, sizeof(lowerdir), "/");
		s_cat(lowerdir, sizeof(lowerdir), lo);
	} else if (!s_cat(lowerdir, sizeof(lowerdir), l->src)) {
		fail(c, SB_STEP_OVERLAY, ENAMETOOLONG, l->src, NULL);
	}
	char upperdir[PATH_MAX], workdir[PATH_MAX];
	s_set(upperdir, sizeof(upperdir), c->stage);
	s_cat(upperdir, sizeof(upperdir), "/");
	s_cat(upperdir, sizeof(upperdir), up);
	s_set(workdir, sizeof(workdir), c->stage);
	s_cat(workdir, sizeof(workdir), "/");
	s_cat(workdir, sizeof(workdir), wk);

	char o1[2 * PATH_MAX + 16] = "lowerdir=", o2[PATH_MAX + 16] = "upperdir=",
	     o3[PATH_MAX + 16] = "workdir=";
	s_cat(o1, sizeof(o1), lowerdir);
	s_cat(o2, sizeof(o2), upperdir);
	s_cat(o3, sizeof(o3), workdir);
	/* userxattr: overlay metadata in user.* xattrs, as an overlay mounted
	 * in a user namespace must. */
	const char *opts[] = {o1, o2, o3, "userxattr"};
	char what[64] = "overlay on /";
	s_cat(what, sizeof(what), l->name);
	int m = fs_new(c, "overlay", opts, ARRAY_SIZE(opts), MOUNT_ATTR_NODEV, SB_STEP_OVERLAY, what);
	attach(c, m, target_fd, target_path, SB_STEP_OVERLAY, what);
}

static void make_root(struct child *c)
{
	const struct sb_plan *p = c->p;
	if (!p->host_root) {
		/* A rootfs directory: one overlay is the root. */
		mount_lower(c, 0, c->stagefd, "root");
		c->rootfd = openat(c->stagefd, "root", O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (c->rootfd < 0)
			fail(c, SB_STEP_OVERLAY, errno, "open the root", NULL);
		return;
	}
	/* Host mode: the root is a directory of the writable tmpfs (bound on
	 * itself so that it is a mount point for pivot_root), with one overlay
	 * per host directory and the host's top-level symlinks. */
	int t = clone_path(c, c->stagefd, "root", SB_STEP_SKELETON);
	attach(c, t, c->stagefd, "root", SB_STEP_SKELETON, "root");
	c->rootfd = openat(c->stagefd, "root", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (c->rootfd < 0)
		fail(c, SB_STEP_SKELETON, errno, "open the root", NULL);
	static const struct {
		const char *name;
		mode_t mode;
	} skel[] = {{"proc", 0555}, {"dev", 0755},      {"tmp", 01777}, {"run", 0755},
		    {"var", 0755},  {"var/tmp", 01777}, {"root", 0700}, {"home", 0755},
		    {"mnt", 0755},  {"opt", 0755},      {"srv", 0755}};
	for (size_t i = 0; i < ARRAY_SIZE(skel); i++)
		if (mkdirat(c->rootfd, skel[i].name, skel[i].mode) < 0 && errno != EEXIST)
			fail(c, SB_STEP_SKELETON, errno, "mkdir /", skel[i].name);
	for (size_t i = 0; i < p->n_links; i++)
		if (symlinkat(p->links[i].target, c->rootfd, p->links[i].name) < 0 &&
		    errno != EEXIST)
			fail(c, SB_STEP_SKELETON, errno, "symlink /", p->links[i].name);
	for (size_t i = 0; i < p->n_lowers; i++) {
		if (mkdirat(c->rootfd, p->lowers[i].name, 0755) < 0 && errno != EEXIST)
			fail(c, SB_STEP_SKELETON, errno, "mkdir /", p->lowers[i].name);
		int tfd = openat(c->rootfd, p->lowers[i].name,
				 O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		if (tfd < 0)
			fail(c, SB_STEP_SKELETON, errno, "open /", p->lowers[i].name);
		mount_lower(c, i, tfd, "");
		close(tfd);
	}
}

static bool proc_has(int proc, const char *name)
{
	struct stat st;
	return fstatat(proc, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Attaches a mask over /proc/<name>; false (tree closed) when there is no
 * such entry. Never follows a symlink: a mask must cover the entry itself. */
static bool mask_attach(struct child *c, int tree, int proc, const char *name)
{
	if (move_mount(tree, "", proc, name, MOVE_MOUNT_F_EMPTY_PATH) < 0) {
		if (errno != ENOENT)
			fail(c, SB_STEP_MASK, errno, "attach ", name);
		close(tree);
		return false;
	}
	close(tree);
	return true;
}

static void make_proc(struct child *c)
{
	int target = ensure_in_root(c, "/proc", true, SB_STEP_PROC);
	int m = fs_new(c, "proc", NULL, 0, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
		       SB_STEP_PROC, "proc");
	attach(c, m, target, "", SB_STEP_PROC, "/proc");
	close(target);
	/* Verify that /proc now is procfs (not something a symlink pointed to). */
	int proc = in_root(c, "/proc", O_DIRECTORY | O_NOFOLLOW);
	struct statfs sf;
	if (proc < 0 || fstatfs(proc, &sf) < 0)
		fail(c, SB_STEP_PROC, errno, "open /proc", NULL);
	if (sf.f_type != PROC_SUPER_MAGIC)
		fail(c, SB_STEP_PROC, EINVAL, "/proc is not procfs after mounting it", NULL);

	/* Entries this kernel lacks are skipped by a probe first: closing a
	 * detached tree that was never attached costs an RCU grace period. */
	int devnull = open("/dev/null", O_PATH | O_CLOEXEC);
	if (devnull < 0)
		fail(c, SB_STEP_MASK, errno, "open /dev/null", NULL);
	for (size_t i = 0; i < ARRAY_SIZE(proc_masked); i++) {
		if (!proc_has(proc, proc_masked[i]))
			continue;
		int b = clone_path(c, devnull, "", SB_STEP_MASK);
		mask_attach(c, b, proc, proc_masked[i]);
	}
	/* One empty read-only tmpfs for the masked directories: the first is
	 * a new mount, the others bind it (one superblock, not four). */
	int empty = -1;
	for (size_t i = 0; i < ARRAY_SIZE(proc_masked_dirs); i++) {
		if (!proc_has(proc, proc_masked_dirs[i]))
			continue;
		int m2;
		if (empty < 0) {
			static const char *const o[] = {"size=0", "mode=0555"};
			m2 = fs_new(c, "tmpfs", o, ARRAY_SIZE(o),
				    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV |
					    MOUNT_ATTR_NOEXEC,
				    SB_STEP_MASK, proc_masked_dirs[i]);
		} else {
			m2 = clone_path(c, empty, "", SB_STEP_MASK);
		}
		if (!mask_attach(c, m2, proc, proc_masked_dirs[i]) || empty >= 0)
			continue;
		empty = openat(proc, proc_masked_dirs[i], O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (empty < 0)
			fail(c, SB_STEP_MASK, errno, "open /proc/", proc_masked_dirs[i]);
	}
	if (empty >= 0)
		close(empty);
	for (size_t i = 0; i < ARRAY_SIZE(proc_readonly); i++) {
		int b = open_tree(proc, proc_readonly[i], OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
		if (b < 0) {
			if (errno == ENOENT)
				continue; /* not on this kernel */
			fail(c, SB_STEP_MASK, errno, "bind ", proc_readonly[i]);
		}
		set_attrs(c, b, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
			  SB_STEP_MASK, proc_readonly[i]);
		mask_attach(c, b, proc, proc_readonly[i]);
	}
	close(devnull);
	close(proc);
}

static void make_dev(struct child *c)
{
	int target = ensure_in_root(c, "/dev", true, SB_STEP_DEV);
	static const char *const o[] = {"mode=0755", "size=65536"};
	int m = fs_new(c, "tmpfs", o, ARRAY_SIZE(o), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
		       SB_STEP_DEV, "tmpfs on /dev");
	attach(c, m, target, "", SB_STEP_DEV, "/dev");
	close(target);
	int dev = in_root(c, "/dev", O_DIRECTORY | O_NOFOLLOW);
	if (dev < 0)
		fail(c, SB_STEP_DEV, errno, "open /dev", NULL);

	for (size_t i = 0; i < ARRAY_SIZE(dev_nodes); i++) {
		char host[32] = "/dev/";
		s_cat(host, sizeof(host), dev_nodes[i]);
		int b = open_tree(AT_FDCWD, host, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
		if (b < 0) {
			if (i == 0 || errno != ENOENT)
				fail(c, SB_STEP_DEV, errno, "bind ", host);
			continue; /* e.g. no /dev/tty on this host */
		}
		int f = openat(dev, dev_nodes[i], O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0666);
		if (f < 0)
			fail(c, SB_STEP_DEV, errno, "create ", host);
		close(f);
		attach(c, b, dev, dev_nodes[i], SB_STEP_DEV, host);
	}

	if (mkdirat(dev, "pts", 0755) < 0 || mkdirat(dev, "shm", 01777) < 0)
		fail(c, SB_STEP_DEV, errno, "mkdir /dev/pts", NULL);
	const char *pts_opts[] = {"newinstance", "ptmxmode=0666", "mode=0620", "gid=5"};
	int pts = fs_new(c, "devpts", pts_opts, c->p->rootless ? 3 : 4,
			 MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, SB_STEP_DEV, "devpts");
	attach(c, pts, dev, "pts", SB_STEP_DEV, "/dev/pts");
	/* /dev/shm shares the writable layer's size limit. */
	int shm = clone_path(c, c->stagefd, "shm", SB_STEP_DEV);
	set_attrs(c, shm, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, SB_STEP_DEV, "/dev/shm");
	attach(c, shm, dev, "shm", SB_STEP_DEV, "/dev/shm");

	static const struct {
		const char *name, *target;
	} links[] = {{"ptmx", "pts/ptmx"},
		     {"fd", "/proc/self/fd"},
		     {"stdin", "/proc/self/fd/0"},
		     {"stdout", "/proc/self/fd/1"},
		     {"stderr", "/proc/self/fd/2"}};
	for (size_t i = 0; i < ARRAY_SIZE(links); i++)
		if (symlinkat(links[i].target, dev, links[i].name) < 0)
			fail(c, SB_STEP_DEV, errno, "symlink /dev/", links[i].name);
	close(dev);
}

static void make_tmp(struct child *c)
{
	if (c->p->host_root)
		return; /* a directory of the root tmpfs already */
	int target = ensure_in_root(c, "/tmp", true, SB_STEP_TMP);
	int t = clone_path(c, c->stagefd, "tmp", SB_STEP_TMP);
	set_attrs(c, t, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, SB_STEP_TMP, "/tmp");
	attach(c, t, target, "", SB_STEP_TMP, "/tmp");
	close(target);
}

static void make_binds(struct child *c)
{
	const struct sb_plan *p = c->p;
	for (size_t i = 0; i < p->n_mounts; i++) {
		const struct sb_mount *m = &p->mounts[i];
		int tree;
		if (c->have_trees) {
			tree = c->trees[p->n_lowers + i];
			c->trees[p->n_lowers + i] = -1;
		} else {
			tree = clone_path(c, AT_FDCWD, m->src, SB_STEP_BIND);
			set_attrs(c, tree, MOUNT_ATTR_NODEV | (m->ro ? MOUNT_ATTR_RDONLY : 0),
				  SB_STEP_BIND, m->src);
		}
		int target = ensure_in_root(c, m->dst, m->is_dir, SB_STEP_BIND);
		attach(c, tree, target, "", SB_STEP_BIND, m->dst);
		close(target);
	}
}

void sb_attach_main(const struct sb_plan *plan, int sock, int userns, int mntns,
		    const int *trees)
{
	struct child c;
	for (size_t i = 0; i < sizeof(c); i++)
		((char *)&c)[i] = 0;
	c.p = plan;
	c.sock = sock;
	c.rootfd = -1;
	c.have_trees = true;
	for (size_t i = 0; i < plan->n_mounts; i++)
		c.trees[i] = trees[i];
	if (setns(userns, CLONE_NEWUSER) < 0)
		fail(&c, SB_STEP_BIND, errno, "join the sandbox's user namespace", NULL);
	if (setns(mntns, CLONE_NEWNS) < 0)
		fail(&c, SB_STEP_BIND, errno, "join the sandbox's mount namespace", NULL);
	/* Root of the sandbox, so that mount points are made as it would
	 * make them (raw syscalls: this process was forked from threads). */
	if (syscall(SYS_setresgid, 0, 0, 0) < 0 || syscall(SYS_setresuid, 0, 0, 0) < 0)
		fail(&c, SB_STEP_BIND, errno, "become root of the user namespace", NULL);
	/* setns() put our root at the namespace's root: the sandbox's. */
	c.rootfd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (c.rootfd < 0)
		fail(&c, SB_STEP_BIND, errno, "open the sandbox's root", NULL);
	make_binds(&c);
	_exit(0);
}

static void net_and_name(struct child *c)
{
	if (sethostname(c->p->hostname, s_len(c->p->hostname)) < 0)
		fail(c, SB_STEP_HOSTNAME, errno, c->p->hostname, NULL);
	if (!c->p->new_net)
		return;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		fail(c, SB_STEP_LOOPBACK, errno, "socket", NULL);
	struct ifreq ifr;
	for (size_t i = 0; i < sizeof(ifr); i++)
		((char *)&ifr)[i] = 0;
	s_set(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
	ifr.ifr_flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		fail(c, SB_STEP_LOOPBACK, errno, "lo up", NULL);
	close(s);
}

static void pivot(struct child *c)
{
	if (fchdir(c->rootfd) < 0)
		fail(c, SB_STEP_PIVOT, errno, "chdir to the new root", NULL);
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		fail(c, SB_STEP_PIVOT, errno, "pivot_root", NULL);
	/* The old root is now stacked on top of "/": detach it. */
	if (umount2(".", MNT_DETACH) < 0)
		fail(c, SB_STEP_PIVOT, errno, "detach the old root", NULL);
	if (chdir("/") < 0)
		fail(c, SB_STEP_PIVOT, errno, "chdir /", NULL);
	/* CVE-2024-21626: the cwd must lie inside the new root. */
	char cwd[8];
	if (!getcwd(cwd, sizeof(cwd)) || cwd[0] != '/' || cwd[1] != '\0')
		fail(c, SB_STEP_PIVOT, EPERM, "cwd is not the new root", NULL);
	close(c->rootfd);
	close(c->stagefd);
}

/* Moves fd above the stdio numbers (0..2 are closed since the start, so
 * received and opened fds may land there). */
static int high(struct child *c, int fd)
{
	if (fd >= 64)
		return fd;
	int h = fcntl(fd, F_DUPFD_CLOEXEC, 64);
	if (h < 0)
		fail(c, SB_STEP_EXEC, errno, "dup", NULL);
	close(fd);
	return h;
}

static void final_fds(struct child *c)
{
	c->init_fd = high(c, c->init_fd);
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null < 0)
		fail(c, SB_STEP_EXEC, errno, "open /dev/null", NULL);
	null = high(c, null);
	for (int fd = 0; fd < 3; fd++)
		if (dup2(null, fd) < 0)
			fail(c, SB_STEP_EXEC, errno, "dup2", NULL);
	if (dup2(c->sock, KILN_INIT_CONTROL_FD) < 0)
		fail(c, SB_STEP_EXEC, errno, "dup2 control socket", NULL);
	/* Everything else (the memfd included) closes at exec. */
	if (close_range(KILN_INIT_CONTROL_FD + 1, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
		fail(c, SB_STEP_EXEC, errno, "close_range", NULL);
}

static void drop_privileges(struct child *c)
{
	const struct sb_plan *p = c->p;
	for (int cap = 0; cap <= p->cap_last; cap++)
		if (!(p->keep_caps & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 &&
		    errno != EINVAL)
			fail(c, SB_STEP_CAPS, errno, "drop from the bounding set", NULL);
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
		fail(c, SB_STEP_CAPS, errno, "clear ambient capabilities", NULL);
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct d[2];
	for (size_t i = 0; i < sizeof(d); i++)
		((char *)d)[i] = 0;
	d[0].effective = d[0].permitted = (uint32_t)p->keep_caps;
	d[1].effective = d[1].permitted = (uint32_t)(p->keep_caps >> 32);
	if (syscall(SYS_capset, &h, d) < 0)
		fail(c, SB_STEP_CAPS, errno, "capset", NULL);
	mark(c, SB_STEP_CAPS);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		fail(c, SB_STEP_NNP, errno, NULL, NULL);
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &c->prog) < 0)
		fail(c, SB_STEP_SECCOMP, errno, NULL, NULL);
}

void sb_child_main(const struct sb_plan *plan)
{
	/* struct child holds the seccomp program (32 KiB): not on the stack
	 * of a thread that may be small. The plan is our private (CoW) copy. */
	static struct child c;
	c.p = plan;
	c.sock = plan->sock;
	c.stagefd = c.rootfd = c.init_fd = c.mask_tree = c.maskfd = -1;
	mark(&c, SB_MARK_STARTED);
	close_inherited(&c);
	wait_go(&c);
	mark(&c, SB_MARK_GO);
	make_private(&c);
	mark(&c, SB_STEP_PRIVATE);
	become_root(&c);
	mark(&c, SB_STEP_IDS);
	umask(0);
	make_stage(&c);
	mark(&c, SB_STEP_STAGE);
	make_root(&c);
	mark(&c, SB_STEP_OVERLAY);
	make_proc(&c);
	mark(&c, SB_STEP_MASK);
	make_dev(&c);
	mark(&c, SB_STEP_DEV);
	make_tmp(&c);
	make_binds(&c);
	mark(&c, SB_STEP_BIND);
	net_and_name(&c);
	mark(&c, SB_STEP_HOSTNAME);
	pivot(&c);
	mark(&c, SB_STEP_PIVOT);
	umask(022);
	wait_finish(&c);
	mark(&c, SB_MARK_FINISH);
	join_cgroups(&c);
	mark(&c, SB_STEP_CGROUPNS);
	final_fds(&c);
	drop_privileges(&c);
	mark(&c, SB_STEP_SECCOMP);
	char arg0[] = "kiln-init", arg1[] = "--control";
	char *const argv[] = {arg0, arg1, NULL};
	char *const envp[] = {NULL};
	syscall(SYS_execveat, c.init_fd, "", argv, envp, AT_EMPTY_PATH);
	fail(&c, SB_STEP_EXEC, errno, "execveat kiln-init", NULL);
}

const char *sb_step_name(enum sb_step s)
{
	switch (s) {
	case SB_STEP_SYNC: return "wait for the parent";
	case SB_STEP_IDS: return "become root of the user namespace";
	case SB_STEP_CGROUP: return "join the v1 cgroups";
	case SB_STEP_CGROUPNS: return "new cgroup namespace";
	case SB_STEP_PRIVATE: return "make mounts private";
	case SB_STEP_STAGE: return "writable layer";
	case SB_STEP_LOWER: return "attach lower layer";
	case SB_STEP_OVERLAY: return "mount overlay";
	case SB_STEP_SKELETON: return "root skeleton";
	case SB_STEP_PROC: return "mount /proc";
	case SB_STEP_MASK: return "mask /proc";
	case SB_STEP_DEV: return "mount /dev";
	case SB_STEP_TMP: return "mount /tmp";
	case SB_STEP_BIND: return "bind mount";
	case SB_STEP_PIVOT: return "pivot_root";
	case SB_STEP_HOSTNAME: return "sethostname";
	case SB_STEP_LOOPBACK: return "bring up loopback";
	case SB_STEP_CAPS: return "drop capabilities";
	case SB_STEP_NNP: return "no_new_privs";
	case SB_STEP_SECCOMP: return "install seccomp filter";
	case SB_STEP_EXEC: return "exec kiln-init";
	case SB_MARK_STARTED: return "started";
	case SB_MARK_GO: return "GO received";
	case SB_MARK_FINISH: return "FINISH received";
	case SB_STEP_COUNT: break;
	}
	return "set-up";
}
