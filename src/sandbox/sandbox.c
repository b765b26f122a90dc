/*
 * sandbox: the parent side — create, exec, wait, kill, stats, destroy.
 *
 * sandbox_create() prepares everything the child will need (struct sb_plan,
 * the cgroup, the state entry, the seccomp program, the kiln-init fd),
 * then clone3()s one child straight into all new namespaces (and, on v2,
 * into its cgroup), writes its id maps, makes the idmapped trees it will
 * mount, and sends GO. The child builds the root, pivots, drops privileges
 * and execs kiln-init, which says READY on the control socket.
 *
 * Invariants:
 *  - The child is created with exit_signal 0 and CLONE_PIDFD: no SIGCHLD,
 *    and only waitid(P_PIDFD) on our pidfd reaps it. A pid number is only
 *    used while the child is unreaped (so it cannot be recycled).
 *  - Nothing is mounted in the host's mount namespace; the parent's trees
 *    are detached until the child attaches them in its own namespace.
 *  - kiln-init dies when the control socket closes (parent gone, destroy):
 *    a SIGKILLed parent leaves no running sandbox, only a state entry and
 *    empty cgroups for sandbox_cleanup_leftovers().
 *  - Process-wide state (kiln-init fds, the seccomp program, the id
 *    range, the cgroup layout) is written once under a lock or
 *    pthread_once and read-only afterwards.
 */
#include "sandbox-internal.h"
#include "init-proto.h"

#include <fcntl.h>
#include <libgen.h>
#include <linux/sched.h>
#include <poll.h>
#include <net/if.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef KILN_LIBEXECDIR
#define KILN_LIBEXECDIR "/usr/local/libexec"
#endif
#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

#define READY_TIMEOUT_MS 30000
#define START_TIMEOUT_MS 60000

struct sandbox {
	char id[17];
	int ctl;        /* control socket to kiln-init */
	int init_pidfd; /* kiln-init (the clone3 child) */
	pid_t init_pid;
	bool reaped;
	bool rootless, idmap, keep, has_workspace;
	uint64_t disk_bytes; /* the limit asked for (warnings) */
	bool has_cg;
	struct cg_sandbox cg;
	enum sandbox_cgroup_layout layout;
	struct state_entry st;
	/* Root mode: the host ids root inside maps to, and how many. */
	uint32_t uid_base, uid_count, gid_base, gid_count;
	int id_slice_fd; /* holds the lock of this sandbox's id slice, or -1 */
	char *upper_dir;
	char *warning;
	pthread_mutex_t lock; /* guards reaped */
	struct sb_trace *tr;  /* during sandbox_create only */
	atomic_bool used;     /* a process was started in it */
};

struct sandbox_process {
	struct sandbox *sb;
	int sock;  /* this process's socket to kiln-init */
	int pidfd; /* a pidfd of the process (from kiln-init) */
	pid_t pid; /* inside the sandbox */
	uint64_t oom_before;
	bool done;
	struct sandbox_exit exit;
};

/* ---- process-wide state -------------------------------------------------- */

static pthread_mutex_t global_lock = PTHREAD_MUTEX_INITIALIZER;

struct init_copy {
	char *path;
	int fd;
};
static struct init_copy init_copies[8]; /* guarded by global_lock */

static bool ids_loaded;                    /* guarded by global_lock */
static uint32_t subuid_base, subuid_count; /* ditto */
static uint32_t subgid_base, subgid_count;
static int cap_last = -1;

static char *exe_dir(void)
{
	char buf[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
	if (n <= 0)
		return NULL;
	buf[n] = '\0';
	return xstrdup(dirname(buf));
}

static char *resolve_init_path(const char *path)
{
	if (path && *path)
		return xstrdup(path);
	const char *env = getenv("KILN_INIT");
	if (env && *env)
		return xstrdup(env);
	_cleanup_free_ char *dir = exe_dir();
	if (dir) {
		/* Installed side by side, then the build tree (src/cli, src/init). */
		char *p = path_join(dir, "kiln-init");
		if (access(p, X_OK) == 0)
			return p;
		free(p);
		p = path_join(dir, "../init/kiln-init");
		if (access(p, X_OK) == 0)
			return p;
		free(p);
	}
	return xstrdup(KILN_LIBEXECDIR "/kiln/kiln-init");
}

static int open_init(const char *path, int *ret, struct kiln_err *err)
{
	_cleanup_close_ int src = open(path, O_RDONLY | O_CLOEXEC);
	if (src < 0)
		return kiln_err_set(err, -errno,
				    "cannot open kiln-init '%s': %s (set KILN_INIT or install it "
				    "next to kiln)",
				    path, strerror(errno));
	struct stat st;
	if (fstat(src, &st) < 0)
		return kiln_err_set(err, -errno, "stat '%s': %s", path, strerror(errno));
	if (!S_ISREG(st.st_mode) || st.st_size <= 0 || st.st_size > 64 << 20)
		return kiln_err_set(err, -EINVAL, "kiln-init '%s' is not a regular file", path);
	/* As root, a kiln-init owned by root and writable by nobody else
	 * cannot be changed from inside any sandbox (whose root is an
	 * unprivileged host uid), even through /proc/1/exe: execute this
	 * pinned fd, sparing every start the copy. Otherwise (rootless: the
	 * sandbox's root is the file's owner) run a sealed copy. */
	if (geteuid() == 0 && st.st_uid == 0 && !(st.st_mode & (S_IWGRP | S_IWOTH))) {
		*ret = TAKE_FD(src);
		return 0;
	}
	int fd = memfd_create("kiln-init", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
	if (fd < 0 && errno == EINVAL)
		fd = memfd_create("kiln-init", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return kiln_err_set(err, -errno, "memfd_create: %s", strerror(errno));
	off_t off = 0;
	while (off < st.st_size) {
		ssize_t n = sendfile(fd, src, &off, (size_t)(st.st_size - off));
		if (n <= 0) {
			int r = n < 0 ? -errno : -EIO;
			close(fd);
			return kiln_err_set(err, r, "copying kiln-init: %s", strerror(-r));
		}
	}
	/* Sealed: nothing (not even a process that reaches /proc/1/exe) can
	 * change what runs as PID 1 of the next sandbox (CVE-2019-5736). */
	(void)fchmod(fd, 0555);
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0) {
		int r = -errno;
		close(fd);
		return kiln_err_set(err, r, "sealing the kiln-init copy: %s", strerror(-r));
	}
	(void)fcntl(fd, F_ADD_SEALS, F_SEAL_EXEC);
	(void)fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL);
	*ret = fd;
	return 0;
}

int sandbox_init_memfd(const char *path, int *ret_fd, struct kiln_err *err)
{
	_cleanup_free_ char *p = resolve_init_path(path);
	pthread_mutex_lock(&global_lock);
	for (size_t i = 0; i < ARRAY_SIZE(init_copies); i++)
		if (init_copies[i].path && streq(init_copies[i].path, p)) {
			*ret_fd = init_copies[i].fd;
			pthread_mutex_unlock(&global_lock);
			return 0;
		}
	int fd = -1;
	int r = open_init(p, &fd, err);
	if (r >= 0) {
		size_t slot = ARRAY_SIZE(init_copies);
		for (size_t i = 0; i < ARRAY_SIZE(init_copies); i++)
			if (!init_copies[i].path) {
				slot = i;
				break;
			}
		if (slot < ARRAY_SIZE(init_copies)) {
			init_copies[slot].path = TAKE_PTR(p);
			init_copies[slot].fd = fd;
		} else {
			/* Table full (many different paths): leak one fd per path
			 * rather than close a copy another thread may use. */
		}
		*ret_fd = fd;
	}
	pthread_mutex_unlock(&global_lock);
	return r;
}

/* Reads "kiln:BASE:COUNT" from /etc/subuid or /etc/subgid. */
static void subid_lookup(const char *file, uint32_t *base, uint32_t *count)
{
	struct buf b = BUF_INIT;
	if (read_file(file, 1 << 20, &b) < 0)
		return;
	for (char *line = b.data; line && *line;) {
		char *eol = strchr(line, '\n');
		if (eol)
			*eol = '\0';
		if (startswith(line, "kiln:")) {
			char *c2 = strchr(line + 5, ':');
			int64_t bv, cv;
			if (c2) {
				*c2 = '\0';
				if (parse_int64(line + 5, 1, UINT32_MAX, &bv) >= 0 &&
				    parse_int64(c2 + 1, 1, UINT32_MAX, &cv) >= 0) {
					*base = (uint32_t)bv;
					*count = (uint32_t)cv;
					break;
				}
			}
		}
		line = eol ? eol + 1 : NULL;
	}
	buf_release(&b);
}

static void load_globals(void)
{
	pthread_mutex_lock(&global_lock);
	if (!ids_loaded) {
		subuid_base = subgid_base = SANDBOX_ID_BASE_DEFAULT;
		subuid_count = subgid_count = SANDBOX_ID_COUNT_DEFAULT;
		subid_lookup("/etc/subuid", &subuid_base, &subuid_count);
		subid_lookup("/etc/subgid", &subgid_base, &subgid_count);
		struct buf b = BUF_INIT;
		int64_t v;
		cap_last = 40;
		if (read_file("/proc/sys/kernel/cap_last_cap", 64, &b) >= 0) {
			if (b.len && b.data[b.len - 1] == '\n')
				b.data[--b.len] = '\0';
			if (parse_int64(b.data, 0, 63, &v) >= 0)
				cap_last = (int)v;
			buf_release(&b);
		}
		ids_loaded = true;
	}
	pthread_mutex_unlock(&global_lock);
}

/* ---- small helpers ------------------------------------------------------- */

static void random_id(char out[17])
{
	uint8_t b[8];
	size_t got = 0;
	while (got < sizeof(b)) {
		ssize_t n = getrandom(b + got, sizeof(b) - got, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			abort(); /* getrandom cannot fail for 8 bytes after boot */
		got += (size_t)n;
	}
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < 8; i++) {
		out[2 * i] = hex[b[i] >> 4];
		out[2 * i + 1] = hex[b[i] & 15];
	}
	out[16] = '\0';
}

static int write_proc(pid_t pid, const char *file, const char *text)
{
	char path[96];
	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
	else
		snprintf(path, sizeof(path), "/proc/%s", file); /* ours (this thread's netns) */
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, text, strlen(text));
	if (n < 0)
		return -errno;
	return 0;
}

static bool path_has_dotdot(const char *p)
{
	for (const char *s = p; *s;) {
		while (*s == '/')
			s++;
		const char *e = s;
		while (*e && *e != '/')
			e++;
		if (e - s == 2 && s[0] == '.' && s[1] == '.')
			return true;
		s = e;
	}
	return false;
}

/* ---- the plan ------------------------------------------------------------ */

static int plan_host_root(struct sb_plan *plan, struct kiln_err *err)
{
	static const char *const dirs[] = {"usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32"};
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		char path[64];
		snprintf(path, sizeof(path), "/%s", dirs[i]);
		struct stat st;
		if (lstat(path, &st) < 0) {
			if (i < 2)
				return kiln_err_set(err, -errno, "host rootfs: '%s': %s", path,
						    strerror(errno));
			continue;
		}
		if (S_ISLNK(st.st_mode) && plan->n_links < SB_MAX_LINKS) {
			struct sb_link *l = &plan->links[plan->n_links];
			ssize_t n = readlink(path, l->target, sizeof(l->target) - 1);
			if (n <= 0)
				continue;
			l->target[n] = '\0';
			snprintf(l->name, sizeof(l->name), "%s", dirs[i]);
			plan->n_links++;
		} else if (S_ISDIR(st.st_mode) && plan->n_lowers < SB_MAX_LOWERS) {
			struct sb_lower *lw = &plan->lowers[plan->n_lowers++];
			snprintf(lw->name, sizeof(lw->name), "%s", dirs[i]);
			snprintf(lw->src, sizeof(lw->src), "%s", path);
			lw->mask_etc = streq(dirs[i], "etc");
		}
	}
	return 0;
}

static int plan_mount(struct sb_plan *plan, const char *src, const char *dst, bool ro,
		      const char *what, struct kiln_err *err)
{
	if (plan->n_mounts >= plan->cap_mounts)
		return kiln_err_set(err, -E2BIG, "too many binds (at most %d)", SANDBOX_MAX_BINDS);
	if (!dst || dst[0] != '/' || path_has_dotdot(dst) || streq(dst, "/"))
		return kiln_err_set(err, -EINVAL,
				    "%s target '%s' must be an absolute path other than / without '..'",
				    what, dst ? dst : "");
	if (streq(dst, "/proc") || startswith(dst, "/proc/") || streq(dst, "/dev") ||
	    startswith(dst, "/dev/"))
		return kiln_err_set(err, -EINVAL, "%s target '%s': /proc and /dev are kiln's", what,
				    dst);
	_cleanup_free_ char *real = realpath(src, NULL);
	struct stat st;
	if (!real || stat(real, &st) < 0)
		return kiln_err_set(err, -errno, "%s source '%s': %s", what, src, strerror(errno));
	struct sb_mount *m = &plan->mounts[plan->n_mounts];
	if (strlen(real) >= sizeof(m->src) || strlen(dst) >= sizeof(m->dst))
		return kiln_err_set(err, -ENAMETOOLONG, "%s path too long", what);
	snprintf(m->src, sizeof(m->src), "%s", real);
	snprintf(m->dst, sizeof(m->dst), "%s", dst);
	m->ro = ro;
	m->is_dir = S_ISDIR(st.st_mode);
	plan->n_mounts++;
	return 0;
}

/* The workspace (at /workspace) and binds into plan->mounts. */
static int plan_mounts(struct sb_plan *plan, const char *workspace,
		       const struct sandbox_bind *binds, size_t n_binds, struct kiln_err *err)
{
	if (n_binds > SANDBOX_MAX_BINDS)
		return kiln_err_set(err, -E2BIG, "too many binds (at most %d)", SANDBOX_MAX_BINDS);
	/* Sized to what is asked (at most 8 KiB each): a plan with room for
	 * every possible bind would be half a megabyte to clear per start. */
	plan->cap_mounts = n_binds + (workspace ? 1 : 0);
	plan->mounts = xcalloc(MAX(plan->cap_mounts, (size_t)1), sizeof(*plan->mounts));
	int r;
	if (workspace && (r = plan_mount(plan, workspace, "/workspace", false, "workspace", err)) < 0)
		return r;
	for (size_t i = 0; i < n_binds; i++)
		if ((r = plan_mount(plan, binds[i].src, binds[i].dst, binds[i].readonly, "bind",
				    err)) < 0)
			return r;
	return 0;
}

static void plan_free(struct sb_plan *plan)
{
	if (!plan)
		return;
	free(plan->mounts);
	free(plan);
}

static int build_plan(const struct sandbox_config *cfg, struct sb_plan *plan, struct kiln_err *err)
{
	int r;
	if (!cfg->rootfs || streq(cfg->rootfs, "host")) {
		plan->host_root = true;
		r = plan_host_root(plan, err);
		if (r < 0)
			return r;
	} else {
		_cleanup_free_ char *real = realpath(cfg->rootfs, NULL);
		struct stat st;
		if (!real || stat(real, &st) < 0)
			return kiln_err_set(err, -errno, "rootfs '%s': %s", cfg->rootfs,
					    strerror(errno));
		if (!S_ISDIR(st.st_mode))
			return kiln_err_set(err, -ENOTDIR, "rootfs '%s' is not a directory",
					    cfg->rootfs);
		if (streq(real, "/"))
			return kiln_err_set(err, -EINVAL,
					    "rootfs '/' would expose the whole host; use --rootfs host");
		if (strchr(real, ':') || strchr(real, ',') || strlen(real) >= PATH_MAX / 2)
			return kiln_err_set(err, -EINVAL,
					    "rootfs path '%s' must not contain ':' or ','", real);
		struct sb_lower *lw = &plan->lowers[plan->n_lowers++];
		snprintf(lw->src, sizeof(lw->src), "%s", real);
	}
	if ((r = plan_mounts(plan, cfg->workspace, cfg->binds, cfg->n_binds, err)) < 0)
		return r;
	plan->new_net = cfg->net != SANDBOX_NET_HOST;
	const char *hn = cfg->hostname ? cfg->hostname : "sandbox";
	if (!*hn || strlen(hn) >= sizeof(plan->hostname))
		return kiln_err_set(err, -EINVAL, "hostname '%s' must be 1 to 64 characters", hn);
	snprintf(plan->hostname, sizeof(plan->hostname), "%s", hn);
	plan->disk_bytes = cfg->limits.disk_bytes;
	plan->stage_tmpfs = !cfg->keep;
	plan->cap_last = cap_last;
	plan->keep_caps = 0;
	for (size_t i = 0; i < sandbox_kept_caps_count; i++)
		plan->keep_caps |= 1ULL << sandbox_kept_caps[i];
	return 0;
}

#define DISK_WORKSPACE_WARNING                                                              \
	"the disk limit covers the writable layer, /tmp and /dev/shm, not the workspace "   \
	"(that would take filesystem project quotas)"

/* Appends msg to the sandbox's warning ("; " between sentences). */
static void add_warning(char **warning, const char *msg)
{
	char *old = *warning;
	*warning = old ? xasprintf("%s; %s", old, msg) : xstrdup(msg);
	free(old);
}

/* ---- trees (root mode) --------------------------------------------------- */

/*
 * Makes a detached copy of every lower and mount, idmapped to the child's
 * user namespace when the filesystem allows it (then host root's files are
 * root's inside). Returns the number of fds in trees[].
 */
static int make_trees(const struct sb_plan *plan, pid_t pid, int *trees, bool *ret_idmap,
		      char **warning, struct kiln_err *err)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
	_cleanup_close_ int userns = open(path, O_RDONLY | O_CLOEXEC);
	if (userns < 0)
		return kiln_err_set(err, -errno, "open '%s': %s", path, strerror(errno));
	size_t n = 0;
	bool idmap = true;
	size_t total = plan->n_lowers + plan->n_mounts + (plan->etc_mask[0] ? 1 : 0);
	for (size_t i = 0; i < total; i++) {
		bool lower = i < plan->n_lowers;
		bool mount = !lower && i < plan->n_lowers + plan->n_mounts;
		const char *src = lower ? plan->lowers[i].src
				  : mount ? plan->mounts[i - plan->n_lowers].src
					  : plan->etc_mask;
		bool ro = !mount || plan->mounts[i - plan->n_lowers].ro;
		int t = open_tree(AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
		if (t < 0) {
			int r = -errno;
			for (size_t k = 0; k < n; k++)
				close(trees[k]);
			return kiln_err_set(err, r, "cannot clone mount '%s': %s", src, strerror(-r));
		}
		struct mount_attr a = {.attr_set = MOUNT_ATTR_NODEV | (ro ? MOUNT_ATTR_RDONLY : 0)};
		if (idmap) {
			struct mount_attr ai = a;
			ai.attr_set |= MOUNT_ATTR_IDMAP;
			ai.userns_fd = (uint64_t)userns;
			if (mount_setattr(t, "", AT_EMPTY_PATH, &ai, sizeof(ai)) < 0) {
				if (errno != EINVAL && errno != EPERM && errno != EOPNOTSUPP) {
					int r = -errno;
					close(t);
					for (size_t k = 0; k < n; k++)
						close(trees[k]);
					return kiln_err_set(err, r, "idmapping '%s': %s", src,
							    strerror(-r));
				}
				/* This filesystem cannot be idmapped: no idmap for any
				 * tree, so ownership is consistent. Start over. */
				close(t);
				for (size_t k = 0; k < n; k++)
					close(trees[k]);
				n = 0;
				i = (size_t)-1;
				idmap = false;
				if (!*warning)
					*warning = xasprintf(
						"'%s' cannot be idmapped: host files appear owned by "
						"nobody inside and root cannot change them",
						src);
				continue;
			}
		} else if (mount_setattr(t, "", AT_EMPTY_PATH, &a, sizeof(a)) < 0) {
			int r = -errno;
			close(t);
			for (size_t k = 0; k < n; k++)
				close(trees[k]);
			return kiln_err_set(err, r, "mount attributes of '%s': %s", src, strerror(-r));
		}
		trees[n++] = t;
	}
	*ret_idmap = idmap;
	return (int)n;
}

static int send_go(int sock, bool idmap, const int *fds, size_t n)
{
	struct sb_go go = {.idmap = idmap, .n_fds = (uint32_t)n};
	struct iovec iov = {.iov_base = &go, .iov_len = sizeof(go)};
	char cbuf[CMSG_SPACE(sizeof(int) * (SB_MAX_LOWERS + SB_MAX_MOUNTS + 1))];
	memset(cbuf, 0, sizeof(cbuf));
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (n) {
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * n);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * n);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * n);
	}
	ssize_t r = sendmsg(sock, &mh, MSG_NOSIGNAL);
	return r == (ssize_t)sizeof(go) ? 0 : r < 0 ? -errno : -EIO;
}

/* "WHAT failed at 'STEP': DETAIL: ERROR" from a child's report. */
static int child_err_set(struct kiln_err *err, const char *what, struct sb_child_err *e)
{
	e->detail[sizeof(e->detail) - 1] = '\0';
	return kiln_err_set(err, -e->err, "%s failed at '%s'%s%s: %s", what, sb_step_name(e->step),
			    e->detail[0] ? ": " : "", e->detail, strerror(e->err));
}

/* Waits for READY from kiln-init, or the child's error report. */
static int wait_ready(struct sandbox *sb, struct kiln_err *err)
{
	union {
		struct sb_child_err e;
		struct kiln_init_ready ready;
	} m;
	struct pollfd pfd = {.fd = sb->ctl, .events = POLLIN};
	int r;
	do
		r = poll(&pfd, 1, READY_TIMEOUT_MS);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return kiln_err_set(err, -ETIMEDOUT, "sandbox set-up did not finish in %d s",
				    READY_TIMEOUT_MS / 1000);
	ssize_t n;
	/* A peer that closed with our FINISH unread makes the first recv fail
	 * with ECONNRESET even though its error report is queued: the kernel
	 * reports (and clears) the socket error before the queue. */
	int resets = 0;
	do
		n = recv(sb->ctl, &m, sizeof(m), MSG_DONTWAIT);
	while (n < 0 && (errno == EINTR || (errno == ECONNRESET && resets++ == 0)));
	if (n < 0 && errno == EAGAIN)
		n = 0;
	if (n == (ssize_t)sizeof(m.e) && m.e.magic == SB_CHILD_ERR_MAGIC) {
		return child_err_set(err, "sandbox set-up", &m.e);
	}
	if (n == (ssize_t)sizeof(m.ready) && m.ready.type == KILN_INIT_READY) {
		if (m.ready.version != KILN_INIT_PROTO_VERSION)
			return kiln_err_set(err, -EPROTO,
					    "kiln-init speaks protocol %u, kiln %d: install matching "
					    "versions",
					    m.ready.version, KILN_INIT_PROTO_VERSION);
		return 0;
	}
	if (n == 0)
		return kiln_err_set(err, -ECHILD,
				    "sandbox set-up process exited without reporting (is kiln-init "
				    "a kiln-init binary?)");
	return kiln_err_set(err, n < 0 ? -errno : -EPROTO, "bad message from the sandbox");
}

static void reap_init(struct sandbox *sb)
{
	pthread_mutex_lock(&sb->lock);
	if (!sb->reaped && sb->init_pidfd >= 0) {
		siginfo_t si;
		while (waitid((idtype_t)P_PIDFD, (id_t)sb->init_pidfd, &si, WEXITED | __WALL) < 0 &&
		       errno == EINTR)
			;
		sb->reaped = true;
	}
	pthread_mutex_unlock(&sb->lock);
}

/* ---- network namespace (root mode) -------------------------------------- */

/*
 * As root, "--net none" gets a network namespace made by a helper thread
 * while sandbox_create() does its other work (creating one costs ~0.7 ms,
 * mostly in the kernel's per-namespace set-up): unshare(CLONE_NEWNET) only
 * affects the calling thread. The helper brings loopback up, lets every
 * port and ICMP socket be used without privileges (as Docker does), and
 * hands over an fd; clone3 is then called from a thread that setns()ed into
 * it. The namespace is owned by the host's user namespace, so the sandbox
 * cannot reconfigure it (no addresses, routes, firewall, raw sockets).
 * Rootless, clone3 makes the namespace and the child brings loopback up.
 */
struct netns_prep {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int refs; /* the thread and the creator; the last one frees */
	bool done;
	int fd;
	int err;
};

static void netns_unref(struct netns_prep *n)
{
	pthread_mutex_lock(&n->lock);
	bool last = --n->refs == 0;
	pthread_mutex_unlock(&n->lock);
	if (!last)
		return;
	if (n->fd >= 0)
		close(n->fd);
	pthread_cond_destroy(&n->cond);
	pthread_mutex_destroy(&n->lock);
	free(n);
}

static void netns_make(struct netns_prep *n)
{
	int fd = -1, err = 0;
	if (unshare(CLONE_NEWNET) < 0) {
		err = -errno;
	} else {
		int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		struct ifreq ifr;
		memset(&ifr, 0, sizeof(ifr));
		snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
		ifr.ifr_flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING;
		if (s < 0 || ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
			err = -errno;
		if (s >= 0)
			close(s);
		/* Best effort: older kernels lack one or the other. */
		(void)write_proc(0, "sys/net/ipv4/ip_unprivileged_port_start", "0");
		(void)write_proc(0, "sys/net/ipv4/ping_group_range", "0 2147483647");
		if (err == 0 && (fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) < 0)
			err = -errno;
	}
	pthread_mutex_lock(&n->lock);
	n->fd = fd;
	n->err = err;
	n->done = true;
	pthread_cond_signal(&n->cond);
	pthread_mutex_unlock(&n->lock);
}

static void *netns_main(void *arg)
{
	netns_make(arg);
	netns_unref(arg);
	return NULL; /* exits in its own namespace; nobody waits for that */
}

static struct netns_prep *netns_start(void)
{
	struct netns_prep *n = xcalloc(1, sizeof(*n));
	pthread_mutex_init(&n->lock, NULL);
	pthread_cond_init(&n->cond, NULL);
	n->fd = -1;
	n->refs = 2;
	/* In parallel only with CPUs to spare: on a small or busy machine the
	 * helper would just wait for the CPU its creator holds. */
	cpu_set_t cpus;
	bool spare = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && CPU_COUNT(&cpus) >= 4;
	pthread_attr_t attr;
	pthread_t t;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 64 * 1024);
	if (!spare || pthread_create(&t, &attr, netns_main, n) != 0) {
		/* Here and now, which changes this thread's netns for a moment. */
		int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
		netns_make(n);
		if (home < 0 || setns(home, CLONE_NEWNET) < 0)
			abort(); /* this thread must never stay in the sandbox's network */
		close(home);
		n->refs--;
	}
	pthread_attr_destroy(&attr);
	return n;
}

/* Waits for the namespace; returns a new fd of it (the caller closes). */
static int netns_finish(struct netns_prep *n, struct kiln_err *err)
{
	pthread_mutex_lock(&n->lock);
	while (!n->done)
		pthread_cond_wait(&n->cond, &n->lock);
	int r = n->err < 0 ? n->err : fcntl(n->fd, F_DUPFD_CLOEXEC, 3);
	if (r < 0 && n->err >= 0)
		r = -errno;
	pthread_mutex_unlock(&n->lock);
	if (r < 0)
		kiln_err_set(err, r, "creating the network namespace: %s", strerror(-r));
	return r;
}

/* ---- cgroup choice --------------------------------------------------------- */

static int setup_cgroup(struct sandbox *sb, const struct sandbox_config *cfg,
			struct kiln_err *err)
{
	struct cg_layout *l = xcalloc(1, sizeof(*l));
	int r = cg_layout_get(cfg->cgroup_root, l);
	if (r < 0) {
		free(l);
		return kiln_err_set(err, r, "reading the cgroup layout: %s", strerror(-r));
	}
	sb->layout = cg_layout_kind(l);
	bool limits = cfg->limits.cpu_millis || cfg->limits.memory_bytes || cfg->limits.pids;
	if (sb->layout == SANDBOX_CGROUP_NONE) {
		free(l);
		if (limits)
			return kiln_err_set(err, -ENOTSUP, "limits need cgroups, and none are mounted");
		sb->warning = xstrdup("no cgroups mounted: no accounting beyond rusage");
		return 0;
	}
	r = cg_sandbox_plan(l, cfg->cgroup_parent, sb->id, &cfg->limits, &sb->cg, err);
	free(l);
	if (r < 0)
		return r;
	sb->has_cg = true;
	return 0;
}

/* Creates the v2 (before clone3: CLONE_INTO_CGROUP needs it) or the v1
 * directories (after: in parallel with the child's set-up). */
static int create_cgroup(struct sandbox *sb, const struct sandbox_config *cfg, bool v2,
			 struct kiln_err *err)
{
	if (!sb->has_cg)
		return 0;
	struct kiln_err cerr = {0};
	int r = cg_sandbox_create(&sb->cg, &cfg->limits, v2, &cerr);
	if (r >= 0)
		return 0;
	bool limits = cfg->limits.cpu_millis || cfg->limits.memory_bytes || cfg->limits.pids;
	bool first = v2 || sb->cg.v2_index < 0;
	if (sb->rootless && !limits && first && (r == -EACCES || r == -EPERM || r == -EROFS)) {
		/* Rootless without a delegated cgroup: run without one. */
		sb->has_cg = false;
		sb->warning = xasprintf("no cgroup (%s): not delegated to this user; no cgroup "
					"accounting or limits",
					cerr.msg);
		return 0;
	}
	if (err)
		*err = cerr;
	if (sb->rootless && limits)
		kiln_err_prefix(err, "limits need a writable cgroup (run as root, or delegate one "
				     "and pass its path as the cgroup parent)");
	return r;
}

/* ---- create -------------------------------------------------------------- */

static void sandbox_free_parts(struct sandbox *sb)
{
	if (sb->ctl >= 0)
		close(sb->ctl);
	if (sb->init_pidfd >= 0)
		close(sb->init_pidfd);
	if (sb->cg.v2_fd >= 0)
		close(sb->cg.v2_fd);
	if (sb->id_slice_fd >= 0)
		close(sb->id_slice_fd);
	pthread_mutex_destroy(&sb->lock);
	free(sb->upper_dir);
	free(sb->warning);
	free(sb);
}

static pthread_mutex_t cleaned_lock = PTHREAD_MUTEX_INITIALIZER;
static char *cleaned_dirs[8]; /* state dirs already cleaned by this process */

static void cleanup_once(const char *state_dir, const char *cgroup_root)
{
	pthread_mutex_lock(&cleaned_lock);
	for (size_t i = 0; i < ARRAY_SIZE(cleaned_dirs); i++)
		if (cleaned_dirs[i] && streq(cleaned_dirs[i], state_dir)) {
			pthread_mutex_unlock(&cleaned_lock);
			return;
		}
	int n = sandbox_cleanup_leftovers(state_dir, cgroup_root);
	if (n > 0)
		log_debug("removed sandbox leftovers count=%d dir=%s", n, state_dir);
	for (size_t i = 0; i < ARRAY_SIZE(cleaned_dirs); i++)
		if (!cleaned_dirs[i]) {
			cleaned_dirs[i] = xstrdup(state_dir);
			break;
		}
	pthread_mutex_unlock(&cleaned_lock);
}

/* clone3 into every namespace; with netns_fd, from inside that netns. */
static int do_clone(struct sandbox *sb, struct sb_plan *plan, int netns_fd, struct kiln_err *err)
{
	struct clone_args ca;
	memset(&ca, 0, sizeof(ca));
	int pidfd = -1;
	ca.flags = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC |
		   CLONE_PIDFD;
	if (plan->new_net)
		ca.flags |= CLONE_NEWNET;
	if (sb->has_cg && sb->cg.v2_fd >= 0) {
		ca.flags |= CLONE_INTO_CGROUP;
		ca.cgroup = (uint64_t)sb->cg.v2_fd;
	}
	ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
	ca.exit_signal = 0; /* no SIGCHLD: reaped through the pidfd only */
	int home = -1;
	if (netns_fd >= 0) {
		home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
		if (home < 0 || setns(netns_fd, CLONE_NEWNET) < 0) {
			int r = -errno;
			if (home >= 0)
				close(home);
			return kiln_err_set(err, r, "entering the network namespace: %s",
					    strerror(-r));
		}
	}
	long pid = syscall(SYS_clone3, &ca, sizeof(ca));
	if (pid == 0)
		sb_child_main(plan); /* never returns */
	int saved = errno;
	if (home >= 0) {
		/* This thread must never stay in the sandbox's network. */
		if (setns(home, CLONE_NEWNET) < 0) {
			log_error("cannot return to the host network namespace error=\"%s\"",
				  strerror(errno));
			abort();
		}
		close(home);
	}
	if (pid < 0) {
		int r = -saved;
		return kiln_err_set(err, r, "clone3: %s%s", strerror(-r),
				    r == -ENOSPC || r == -EUSERS
					    ? " (user namespace limit reached: "
					      "/proc/sys/user/max_user_namespaces)"
				    : r == -EPERM ? " (user namespaces disabled for this user?)"
						  : "");
	}
	sb->init_pidfd = pidfd;
	sb->init_pid = (pid_t)pid;
	return 0;
}

/*
 * Root mode: the host id range of this sandbox. With no explicit
 * cfg->id_base and a range of at least two slices of SANDBOX_ID_SLICE ids,
 * each live sandbox on the host gets a slice of its own, so that the
 * kernel's per-user limits (inotify instances and watches, RLIMIT_NPROC,
 * message queue bytes) and per-uid accounting are not shared between
 * sandboxes. A slice is held by an OFD lock on byte N of
 * SANDBOX_ID_SLICES_FILE through our own open file description: it is free
 * again when the sandbox is destroyed or kiln dies. With every slice taken,
 * or that file unusable, the sandbox gets the whole range, shared (as
 * before slices existed).
 */
static void pick_ids(struct sandbox *sb, const struct sandbox_config *cfg)
{
	sb->uid_base = cfg->id_base ? cfg->id_base : subuid_base;
	sb->gid_base = cfg->id_base ? cfg->id_base : subgid_base;
	sb->uid_count = cfg->id_count ? cfg->id_count : subuid_count;
	sb->gid_count = cfg->id_count ? cfg->id_count : subgid_count;
	uint32_t slices = MIN(sb->uid_count, sb->gid_count) / SANDBOX_ID_SLICE;
	if (cfg->id_base || slices < 2)
		return;
	slices = MIN(slices, SANDBOX_ID_SLICES_MAX);
	int fd = open(SANDBOX_ID_SLICES_FILE, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 && errno == ENOENT && mkdir(SANDBOX_ID_SLICES_DIR, 0755) == 0)
		fd = open(SANDBOX_ID_SLICES_FILE, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return;
	for (uint32_t i = 0; i < slices; i++) {
		struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = i, .l_len = 1};
		if (fcntl(fd, F_OFD_SETLK, &fl) == 0) {
			sb->uid_base += i * SANDBOX_ID_SLICE;
			sb->gid_base += i * SANDBOX_ID_SLICE;
			sb->uid_count = sb->gid_count = SANDBOX_ID_SLICE;
			sb->id_slice_fd = fd;
			return;
		}
	}
	close(fd);
}

static int write_maps(struct sandbox *sb)
{
	char map[64];
	int r;
	if (sb->rootless) {
		r = write_proc(sb->init_pid, "setgroups", "deny");
		snprintf(map, sizeof(map), "0 %u 1\n", (unsigned)getegid());
		if (r >= 0)
			r = write_proc(sb->init_pid, "gid_map", map);
		snprintf(map, sizeof(map), "0 %u 1\n", (unsigned)geteuid());
		if (r >= 0)
			r = write_proc(sb->init_pid, "uid_map", map);
		return r;
	}
	snprintf(map, sizeof(map), "0 %u %u\n", sb->gid_base, sb->gid_count);
	r = write_proc(sb->init_pid, "gid_map", map);
	snprintf(map, sizeof(map), "0 %u %u\n", sb->uid_base, sb->uid_count);
	if (r >= 0)
		r = write_proc(sb->init_pid, "uid_map", map);
	return r;
}

/* Work done while the child mounts: v1 cgroups, seccomp, kiln-init. */
static int send_finish(struct sandbox *sb, const struct sandbox_config *cfg, struct kiln_err *err)
{
	int r = create_cgroup(sb, cfg, false, err);
	if (r < 0)
		return r;
	sb_trace_mark(sb->tr, "v1 cgroups created");
	const struct sock_fprog *prog = NULL;
	int init_fd = -1;
	if ((r = sandbox_seccomp_program(&prog, err)) < 0)
		return r;
	sb_trace_mark(sb->tr, "seccomp program");
	if ((r = sandbox_init_memfd(cfg->init_path, &init_fd, err)) < 0)
		return r;
	sb_trace_mark(sb->tr, "kiln-init fd");
	if (prog->len > SB_MAX_BPF)
		return kiln_err_set(err, -E2BIG, "seccomp program too long");
	int fds[1 + CG_MAX_V1];
	fds[0] = init_fd;
	int n = sb->has_cg ? cg_sandbox_open_tasks(&sb->cg, fds + 1) : 0;
	if (n < 0)
		return kiln_err_set(err, n, "opening the cgroups' tasks files: %s", strerror(-n));
	struct sb_finish *fin = xmalloc(sizeof(*fin));
	fin->magic = SB_FINISH_MAGIC;
	fin->n_tasks = (uint32_t)n;
	fin->bpf_len = prog->len;
	fin->pad = 0;
	memcpy(fin->bpf, prog->filter, prog->len * sizeof(struct sock_filter));
	size_t len = sizeof(*fin) - sizeof(fin->bpf) + prog->len * sizeof(struct sock_filter);
	struct iovec iov = {.iov_base = fin, .iov_len = len};
	char cbuf[CMSG_SPACE(sizeof(fds))];
	memset(cbuf, 0, sizeof(cbuf));
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)(n + 1))};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)(n + 1));
	memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)(n + 1));
	ssize_t sent = sendmsg(sb->ctl, &mh, MSG_NOSIGNAL);
	r = sent == (ssize_t)len ? 0 : sent < 0 ? -errno : -EIO;
	sb_trace_mark(sb->tr, "FINISH sent");
	for (int i = 1; i <= n; i++)
		close(fds[i]);
	free(fin);
	return r < 0 ? kiln_err_set(err, r, "starting the sandbox: %s", strerror(-r)) : 0;
}

static int spawn(struct sandbox *sb, struct sb_plan *plan, const struct sandbox_config *cfg,
		 int netns_fd, struct kiln_err *err)
{
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
		return kiln_err_set(err, -errno, "socketpair: %s", strerror(errno));
	plan->sock = sp[1];
	int r = do_clone(sb, plan, netns_fd, err);
	sb_trace_mark(sb->tr, "clone3");
	close(sp[1]);
	if (r < 0) {
		close(sp[0]);
		return r;
	}
	sb->ctl = sp[0];

	/* The id maps: root inside is an unprivileged host range (root mode)
	 * or the calling user (rootless, single-id map). */
	if ((r = write_maps(sb)) < 0)
		return kiln_err_set(err, r, "writing the id maps of the sandbox: %s", strerror(-r));
	sb_trace_mark(sb->tr, "id maps written");

	int trees[SB_MAX_LOWERS + SB_MAX_MOUNTS + 1] = {0};
	int n = 0;
	bool idmap = false;
	if (!sb->rootless) {
		n = make_trees(plan, sb->init_pid, trees, &idmap, &sb->warning, err);
		if (n < 0)
			return n;
	}
	sb->idmap = idmap;
	sb_trace_mark(sb->tr, "trees made");
	r = send_go(sb->ctl, idmap, trees, (size_t)n);
	sb_trace_mark(sb->tr, "GO sent");
	for (int i = 0; i < n; i++)
		close(trees[i]);
	if (r >= 0)
		r = send_finish(sb, cfg, err);
	else
		kiln_err_set(err, r, "starting the sandbox: %s", strerror(-r));
	if (r < 0) {
		/* The child may have failed first: its report is more useful. */
		struct pollfd pfd = {.fd = sb->ctl, .events = POLLIN};
		if (poll(&pfd, 1, 0) == 1) {
			struct kiln_err cerr = {0};
			if (wait_ready(sb, &cerr) < 0 && err)
				*err = cerr;
		}
		return r;
	}
	r = wait_ready(sb, err);
	sb_trace_mark(sb->tr, "READY received");
	return r;
}

int sandbox_create(const struct sandbox_config *cfg, struct sandbox **ret, struct kiln_err *err)
{
	static const struct sandbox_config defaults = {0};
	if (!cfg)
		cfg = &defaults;
	struct sb_trace tr;
	sb_trace_begin(&tr, "create");
	load_globals();
	struct sandbox *sb = xcalloc(1, sizeof(*sb));
	sb->tr = &tr;
	sb->ctl = sb->init_pidfd = sb->id_slice_fd = -1;
	sb->cg.v2_fd = -1;
	sb->st.fd = -1;
	pthread_mutex_init(&sb->lock, NULL);
	random_id(sb->id);
	sb->rootless = geteuid() != 0;
	sb->keep = cfg->keep;
	sb->has_workspace = cfg->workspace != NULL;
	sb->disk_bytes = cfg->limits.disk_bytes;

	int netns_fd = -1;
	bool want_netns = !sb->rootless && cfg->net != SANDBOX_NET_HOST;
	struct netns_prep *netns = want_netns ? netns_start() : NULL; /* runs meanwhile */
	sb_trace_mark(&tr, "netns started");

	struct sb_plan *plan = xcalloc(1, sizeof(*plan));
	plan->mounts = NULL;
	plan->trace = sb_trace_child_page(&tr);
	_cleanup_free_ char *state_default = cfg->state_dir ? NULL : sandbox_default_state_dir();
	const char *state_dir = cfg->state_dir ? cfg->state_dir : state_default;
	int r = build_plan(cfg, plan, err);
	if (r < 0)
		goto fail;
	sb_trace_mark(&tr, "plan");
	plan->rootless = sb->rootless;
	plan->new_net = cfg->net != SANDBOX_NET_HOST && !want_netns;
	if (strlen(state_dir) > 512 || strchr(state_dir, ':') || strchr(state_dir, ',') ||
	    state_dir[0] != '/') {
		r = kiln_err_set(err, -EINVAL,
				 "state dir '%s' must be an absolute path of at most 512 "
				 "characters without ':' or ','",
				 state_dir);
		goto fail;
	}
	if ((r = mkdir_p(state_dir, 0700)) < 0) {
		kiln_err_set(err, r, "cannot create state dir '%s': %s", state_dir, strerror(-r));
		goto fail;
	}
	cleanup_once(state_dir, cfg->cgroup_root);
	sb_trace_mark(&tr, "state dir, leftovers");

	r = setup_cgroup(sb, cfg, err);
	if (r < 0)
		goto fail;
	sb_trace_mark(&tr, "cgroup layout and plan");
	if (!sb->rootless)
		pick_ids(sb, cfg);
	uid_t owner = sb->rootless ? geteuid() : sb->uid_base;
	gid_t gowner = sb->rootless ? getegid() : sb->gid_base;
	r = state_entry_create(state_dir, sb->id, sb->has_cg ? &sb->cg : NULL, cfg->keep, owner,
			       gowner, &sb->st, err);
	if (r < 0)
		goto fail;
	sb_trace_mark(&tr, "state entry");
	snprintf(plan->stage, sizeof(plan->stage), "%s", sb->st.stage);
	if (plan->host_root) {
		char *mask = NULL;
		if ((r = state_etc_mask(state_dir, &mask, err)) < 0)
			goto fail_state;
		snprintf(plan->etc_mask, sizeof(plan->etc_mask), "%s", mask);
		free(mask);
	}
	if (cfg->keep)
		sb->upper_dir = xasprintf("%s/up", plan->stage);
	sb_trace_mark(&tr, "etc mask");
	r = create_cgroup(sb, cfg, true, err);
	if (r < 0)
		goto fail_state;
	sb_trace_mark(&tr, "v2 cgroup created");
	if (netns && (r = netns_fd = netns_finish(netns, err)) < 0)
		goto fail_cg;
	sb_trace_mark(&tr, "netns ready");

	r = spawn(sb, plan, cfg, netns_fd, err);
	if (netns_fd >= 0)
		close(netns_fd); /* the sandbox holds it now */
	plan_free(plan);
	plan = NULL;
	if (r < 0) {
		if (sb->init_pidfd >= 0) {
			(void)syscall(SYS_pidfd_send_signal, sb->init_pidfd, SIGKILL, NULL, 0);
			reap_init(sb);
		}
		goto fail_cg;
	}
	if (netns)
		netns_unref(netns);
	if (cfg->workspace && cfg->limits.disk_bytes)
		add_warning(&sb->warning, DISK_WORKSPACE_WARNING);
	sb->tr = NULL;
	sb_trace_end(&tr, sb->id);
	*ret = sb;
	return 0;

fail_cg:
	if (sb->has_cg) {
		(void)cg_sandbox_kill(&sb->cg);
		(void)cg_sandbox_remove(&sb->cg);
	}
fail_state:
	(void)state_entry_remove(&sb->st, false);
fail:
	if (netns)
		netns_unref(netns);
	plan_free(plan);
	sb_trace_mark(&tr, "failed");
	sb_trace_end(&tr, sb->id);
	sandbox_free_parts(sb);
	return r;
}

void sandbox_info(const struct sandbox *sb, struct sandbox_info *ret)
{
	*ret = (struct sandbox_info){
		.id = sb->id,
		.init_pid = sb->init_pid,
		.rootless = sb->rootless,
		.cgroup = sb->has_cg,
		.idmap = sb->idmap,
		.layout = sb->layout,
		.upper_dir = sb->upper_dir,
		.warning = sb->warning,
	};
}

int sandbox_stats(struct sandbox *sb, struct sandbox_stats *ret)
{
	if (!sb->has_cg) {
		*ret = (struct sandbox_stats){0};
		return 0;
	}
	return cg_sandbox_stats(&sb->cg, ret);
}

int sandbox_add_mounts(struct sandbox *sb, const char *workspace,
		       const struct sandbox_bind *binds, size_t n_binds, struct kiln_err *err)
{
	if (!workspace && !n_binds)
		return 0;
	if (sb->rootless)
		return kiln_err_set(err, -EOPNOTSUPP,
				    "mounts are added to a made sandbox in root mode only");
	if (atomic_load(&sb->used))
		return kiln_err_set(err, -EBUSY,
				    "mounts are added to a sandbox before its first process only");
	struct sb_plan *plan = xcalloc(1, sizeof(*plan));
	int trees[SB_MAX_MOUNTS] = {0};
	int n = 0, userns = -1, mntns = -1, sp[2] = {-1, -1}, pidfd = -1;
	int r = plan_mounts(plan, workspace, binds, n_binds, err);
	if (r < 0)
		goto out;
	bool idmap = false;
	char *warning = NULL;
	n = make_trees(plan, sb->init_pid, trees, &idmap, &warning, err);
	free(warning);
	if (n < 0) {
		r = n;
		n = 0;
		goto out;
	}
	if (idmap != sb->idmap) {
		r = kiln_err_set(err, -EAGAIN, "these mounts cannot be idmapped as the sandbox's are");
		goto out;
	}
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)sb->init_pid);
	userns = open(path, O_RDONLY | O_CLOEXEC);
	snprintf(path, sizeof(path), "/proc/%d/ns/mnt", (int)sb->init_pid);
	mntns = open(path, O_RDONLY | O_CLOEXEC);
	if (userns < 0 || mntns < 0 ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
		r = kiln_err_set(err, -errno, "opening the sandbox's namespaces: %s", strerror(errno));
		goto out;
	}
	struct clone_args ca;
	memset(&ca, 0, sizeof(ca));
	ca.flags = CLONE_PIDFD;
	ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
	ca.exit_signal = 0; /* reaped through the pidfd only */
	long pid = syscall(SYS_clone3, &ca, sizeof(ca));
	if (pid == 0)
		sb_attach_main(plan, sp[1], userns, mntns, trees); /* never returns */
	if (pid < 0) {
		r = kiln_err_set(err, -errno, "clone3: %s", strerror(errno));
		goto out;
	}
	close(sp[1]);
	sp[1] = -1;
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &si, WEXITED | __WALL) < 0 && errno == EINTR)
		;
	struct sb_child_err e;
	ssize_t got = recv(sp[0], &e, sizeof(e), MSG_DONTWAIT);
	if (got == (ssize_t)sizeof(e) && e.magic == SB_CHILD_ERR_MAGIC) {
		r = child_err_set(err, "adding mounts to the sandbox", &e);
	} else if (si.si_code != CLD_EXITED || si.si_status != 0) {
		r = kiln_err_set(err, -ECHILD, "the helper adding mounts to the sandbox died");
	} else {
		if (workspace)
			sb->has_workspace = true;
		if (workspace && sb->disk_bytes)
			add_warning(&sb->warning, DISK_WORKSPACE_WARNING);
	}
out:
	for (int i = 0; i < n; i++)
		close(trees[i]);
	for (int i = 0; i < 2; i++)
		if (sp[i] >= 0)
			close(sp[i]);
	if (userns >= 0)
		close(userns);
	if (mntns >= 0)
		close(mntns);
	if (pidfd >= 0)
		close(pidfd);
	plan_free(plan);
	return r < 0 ? r : 0;
}

int sandbox_kill(struct sandbox *sb)
{
	int r = 0;
	if (sb->has_cg)
		r = cg_sandbox_kill(&sb->cg);
	/* PID 1 takes its pid namespace with it: whatever the cgroup missed. */
	pthread_mutex_lock(&sb->lock);
	if (!sb->reaped && syscall(SYS_pidfd_send_signal, sb->init_pidfd, SIGKILL, NULL, 0) < 0 &&
	    errno != ESRCH && r == 0)
		r = -errno;
	pthread_mutex_unlock(&sb->lock);
	return r;
}

int sandbox_destroy(struct sandbox *sb, struct sandbox_stats *ret_stats)
{
	if (!sb)
		return 0;
	struct sb_trace tr;
	sb_trace_begin(&tr, "destroy");
	/* EOF on the control socket makes kiln-init kill everything; the
	 * cgroup kill and SIGKILL to PID 1 make sure of it. */
	close(sb->ctl);
	sb->ctl = -1;
	int ret = sandbox_kill(sb);
	sb_trace_mark(&tr, "kill");
	reap_init(sb);
	sb_trace_mark(&tr, "kiln-init reaped");
	if (ret_stats)
		(void)sandbox_stats(sb, ret_stats);
	sb_trace_mark(&tr, "stats");
	if (sb->has_cg) {
		int r = cg_sandbox_remove(&sb->cg);
		if (r < 0 && ret >= 0)
			ret = r;
	}
	sb_trace_mark(&tr, "cgroups removed");
	int r = state_entry_remove(&sb->st, sb->keep);
	if (r < 0 && ret >= 0)
		ret = r;
	sb_trace_mark(&tr, "state entry removed");
	sb_trace_end(&tr, sb->id);
	sandbox_free_parts(sb);
	return ret;
}

/* ---- processes -------------------------------------------------------------- */

static char env_path[] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
static char env_home_root[] = "HOME=/root";
static char env_home_user[] = "HOME=/";
static char *const default_env_root[] = {env_path, env_home_root, NULL};
static char *const default_env_user[] = {env_path, env_home_user, NULL};

static const char *init_step_name(uint32_t step)
{
	switch (step) {
	case KILN_INIT_STEP_REQUEST: return "request";
	case KILN_INIT_STEP_FORK: return "fork";
	case KILN_INIT_STEP_STDIO: return "stdio";
	case KILN_INIT_STEP_USER: return "switch user";
	case KILN_INIT_STEP_CWD: return "working directory";
	case KILN_INIT_STEP_EXEC: return "exec";
	case KILN_INIT_STEP_LIMIT: return "process limit";
	}
	return "start";
}

static int recv_with_fd(int sock, void *buf, size_t size, int *ret_fd, int timeout_ms)
{
	if (timeout_ms >= 0) {
		struct pollfd pfd = {.fd = sock, .events = POLLIN};
		int r;
		do
			r = poll(&pfd, 1, timeout_ms);
		while (r < 0 && errno == EINTR);
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
	}
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {.iov_base = buf, .iov_len = size};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = sizeof(cbuf)};
	ssize_t n;
	int resets = 0;
	/* ECONNRESET comes before data still queued (see wait_ready). */
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && (errno == EINTR || (errno == ECONNRESET && resets++ == 0)));
	if (n < 0)
		return errno == ECONNRESET ? 0 : -errno;
	if (ret_fd) {
		*ret_fd = -1;
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
		    cm->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(ret_fd, CMSG_DATA(cm), sizeof(int));
	}
	return (int)n;
}

int sandbox_exec(struct sandbox *sb, const struct sandbox_exec *ex, struct sandbox_process **ret,
		 struct kiln_err *err)
{
	if (!ex->argv || !ex->argv[0] || !ex->argv[0][0])
		return kiln_err_set(err, -EINVAL, "no command to run");
	const char *cwd = ex->cwd ? ex->cwd : sb->has_workspace ? "/workspace" : "/";
	if (cwd[0] != '/')
		return kiln_err_set(err, -EINVAL, "working directory '%s' must be absolute", cwd);
	char *const *envp = ex->envp				 ? ex->envp
			    : ex->uid == 0 ? default_env_root
					   : default_env_user;
	struct kiln_init_exec req = {.type = KILN_INIT_EXEC, .uid = ex->uid, .gid = ex->gid,
				     .timeout_ms = ex->timeout_ms};
	struct buf b = BUF_INIT;
	buf_append(&b, &req, sizeof(req));
	for (char *const *a = ex->argv; *a; a++, req.argc++)
		buf_append(&b, *a, strlen(*a) + 1);
	for (char *const *e = envp; *e; e++, req.envc++)
		buf_append(&b, *e, strlen(*e) + 1);
	buf_append(&b, cwd, strlen(cwd) + 1);
	if (b.len - sizeof(req) > SANDBOX_EXEC_MAX_BYTES) {
		size_t total = b.len - sizeof(req);
		buf_release(&b);
		return kiln_err_set(err, -E2BIG,
				    "command, environment and working directory take %zu bytes; at "
				    "most %d are allowed",
				    total, SANDBOX_EXEC_MAX_BYTES);
	}
	req.strings_len = (uint32_t)(b.len - sizeof(req));
	int fds[4];
	size_t nfds = 0;
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
		buf_release(&b);
		return kiln_err_set(err, -errno, "socketpair: %s", strerror(errno));
	}
	fds[nfds++] = sp[1];
	if (ex->stdin_fd >= 0)
		req.flags |= KILN_INIT_HAS_STDIN, fds[nfds++] = ex->stdin_fd;
	if (ex->stdout_fd >= 0)
		req.flags |= KILN_INIT_HAS_STDOUT, fds[nfds++] = ex->stdout_fd;
	if (ex->stderr_fd >= 0)
		req.flags |= KILN_INIT_HAS_STDERR, fds[nfds++] = ex->stderr_fd;
	if (ex->sole)
		req.flags |= KILN_INIT_SOLE;
	memcpy(b.data, &req, sizeof(req));

	struct sb_trace tr;
	sb_trace_begin(&tr, "exec");
	/* The OOM kills before this process, to tell its own later. A sandbox's
	 * first process needs no read: its cgroup is new and held only
	 * kiln-init, whose OOM kill would have ended the sandbox. */
	bool first = !atomic_exchange(&sb->used, true);
	uint64_t oom_before = sb->has_cg && !first ? cg_sandbox_oom_kills(&sb->cg) : 0;
	sb_trace_mark(&tr, "oom count read");
	char cbuf[CMSG_SPACE(sizeof(fds))];
	memset(cbuf, 0, sizeof(cbuf));
	struct iovec iov = {.iov_base = b.data, .iov_len = b.len};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = CMSG_SPACE(sizeof(int) * nfds)};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
	memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
	ssize_t sent;
	do
		sent = sendmsg(sb->ctl, &mh, MSG_NOSIGNAL);
	while (sent < 0 && errno == EINTR);
	int saved = errno;
	buf_release(&b);
	close(sp[1]);
	if (sent < 0) {
		close(sp[0]);
		if (saved == EPIPE || saved == ECONNRESET)
			return kiln_err_set(err, -ESRCH, "the sandbox is gone (killed or destroyed)");
		return kiln_err_set(err, -saved, "sending the exec request: %s", strerror(saved));
	}

	union {
		struct kiln_init_started started;
		struct kiln_init_failed failed;
		uint32_t type;
	} rep;
	memset(&rep, 0, sizeof(rep));
	int pidfd = -1;
	sb_trace_mark(&tr, "request sent");
	int n = recv_with_fd(sp[0], &rep, sizeof(rep), &pidfd, START_TIMEOUT_MS);
	sb_trace_mark(&tr, "reply received");
	sb_trace_end(&tr, sb->id);
	if (n == (int)sizeof(rep.started) && rep.type == KILN_INIT_STARTED && pidfd >= 0) {
		struct sandbox_process *p = xcalloc(1, sizeof(*p));
		p->sb = sb;
		p->sock = sp[0];
		p->pidfd = pidfd;
		p->pid = rep.started.pid;
		p->oom_before = oom_before;
		*ret = p;
		return 0;
	}
	close(sp[0]);
	if (pidfd >= 0)
		close(pidfd);
	if (n == (int)sizeof(rep.failed) && rep.type == KILN_INIT_FAILED) {
		int e = rep.failed.err > 0 ? rep.failed.err : EIO;
		return kiln_err_set(err, -e, "cannot start '%s' (%s%s%s): %s%s", ex->argv[0],
				    init_step_name(rep.failed.step),
				    rep.failed.step == KILN_INIT_STEP_CWD ? " " : "",
				    rep.failed.step == KILN_INIT_STEP_CWD ? cwd : "", strerror(e),
				    rep.failed.step == KILN_INIT_STEP_EXEC && e == ENOENT
					    ? " (command not found)"
					    : "");
	}
	if (n == 0)
		return kiln_err_set(err, -ESRCH, "the sandbox is gone (killed or destroyed)");
	return kiln_err_set(err, n < 0 ? n : -EPROTO, "starting '%s': %s", ex->argv[0],
			    n < 0 ? strerror(-n) : "bad reply from kiln-init");
}

int sandbox_process_fd(const struct sandbox_process *p)
{
	return p->sock;
}

pid_t sandbox_process_pid(const struct sandbox_process *p)
{
	return p->pid;
}

int sandbox_process_wait(struct sandbox_process *p, int timeout_ms, struct sandbox_exit *ret)
{
	if (!p)
		return -EINVAL;
	if (!p->done) {
		struct kiln_init_exited ex = {0};
		int n = recv_with_fd(p->sock, &ex, sizeof(ex), NULL, timeout_ms);
		if (n == -ETIMEDOUT)
			return n;
		struct sandbox_exit e = {.exit_code = -1};
		if (n == (int)sizeof(ex) && ex.type == KILN_INIT_EXITED) {
			if (WIFEXITED(ex.status))
				e.exit_code = WEXITSTATUS(ex.status);
			else if (WIFSIGNALED(ex.status))
				e.signal = WTERMSIG(ex.status);
			e.timed_out = ex.timed_out != 0;
			e.wall_ns = ex.wall_ns;
			e.cpu_user_ns = ex.utime_ns;
			e.cpu_system_ns = ex.stime_ns;
			e.maxrss_bytes = ex.maxrss_kb * 1024;
		} else {
			/* kiln-init died (sandbox killed): the process died with it. */
			e.signal = SIGKILL;
			e.lost = true;
		}
		if (e.signal == SIGKILL && p->sb->has_cg &&
		    cg_sandbox_oom_kills(&p->sb->cg) > p->oom_before)
			e.oom_killed = true;
		p->exit = e;
		p->done = true;
	}
	if (ret)
		*ret = p->exit;
	return 0;
}

int sandbox_process_kill(struct sandbox_process *p, int sig, bool group)
{
	if (p->done)
		return -ESRCH;
	if (!group)
		return syscall(SYS_pidfd_send_signal, p->pidfd, sig, NULL, 0) < 0 ? -errno : 0;
	struct kiln_init_signal m = {.type = KILN_INIT_SIGNAL, .sig = sig, .group = 1};
	ssize_t n = send(p->sock, &m, sizeof(m), MSG_NOSIGNAL);
	if (n < 0)
		return errno == EPIPE || errno == ECONNRESET ? -ESRCH : -errno;
	return 0;
}

void sandbox_process_free(struct sandbox_process *p)
{
	if (!p)
		return;
	close(p->sock);
	close(p->pidfd);
	free(p);
}

int sandbox_exit_status(const struct sandbox_exit *e)
{
	if (e->exit_code >= 0)
		return e->exit_code;
	return 128 + e->signal;
}

/* ---- probe --------------------------------------------------------------- */

void sandbox_probe(const struct sandbox_config *cfg, struct sandbox_probe *ret)
{
	struct sandbox_probe p = {.rootless = geteuid() != 0};
	struct sandbox_config def = {0};
	if (!cfg)
		cfg = &def;
	struct cg_layout *l = xcalloc(1, sizeof(*l));
	if (cg_layout_get(cfg->cgroup_root, l) >= 0) {
		p.layout = cg_layout_kind(l);
		static const int map[] = {CG_CPU, CG_MEMORY, CG_PIDS, CG_IO};
		int *out[] = {&p.cpu, &p.memory, &p.pids, &p.io};
		for (size_t i = 0; i < ARRAY_SIZE(map); i++)
			*out[i] = l->provider[map[i]] < 0 ? 0 : l->provider[map[i]] == CG_V2 ? 2 : 1;
	}
	free(l);
	struct kiln_err err = {0};
	struct sandbox *sb = NULL;
	if (sandbox_create(cfg, &sb, &err) < 0 || !sb) {
		snprintf(p.error, sizeof(p.error), "%s", err.msg);
		*ret = p;
		return;
	}
	p.cgroup_writable = sb->has_cg;
	p.idmap = sb->idmap;
	p.overlay = true; /* every sandbox root is an overlay; create fails otherwise */
	char arg0[] = "true";
	char *argv[] = {arg0, NULL};
	struct sandbox_exec ex = SANDBOX_EXEC_INIT;
	ex.argv = argv;
	struct sandbox_process *proc = NULL;
	struct sandbox_exit e;
	if (sandbox_exec(sb, &ex, &proc, &err) >= 0 && sandbox_process_wait(proc, 10000, &e) >= 0 &&
	    e.exit_code == 0)
		p.userns = true;
	else
		snprintf(p.error, sizeof(p.error), "%s", err.msg[0] ? err.msg : "'true' failed");
	sandbox_process_free(proc);
	(void)sandbox_destroy(sb, NULL);
	*ret = p;
}
