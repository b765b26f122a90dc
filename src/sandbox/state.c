/*
 * state: the per-sandbox entries in the state directory and the cleanup of
 * what dead kiln processes left behind.
 *
 * Layout (the state dir is 0700):
 *
 *   <state>/<id>        one file per live sandbox: flock(LOCK_EX) held by the
 *                       owning process (CLOEXEC fd), content "kiln-sandbox 1"
 *                       then "cgroup v1|v2 PATH" lines, written before the
 *                       directories are created
 *   <state>/<id>.kept/  the writable layer of a --keep sandbox (on disk)
 *
 * One inode per sandbox: creating and deleting inodes on ext4 is what the
 * state dir costs (the inode allocator scans for recently deleted ones).
 * Without --keep the writable layer is a tmpfs that the sandbox mounts over
 * the state dir itself, inside its own mount namespace.
 *
 * Nothing is ever mounted on the host: all of a sandbox's mounts live in its
 * own mount namespace and vanish with it. So a leftover is at most a file
 * and cgroups, both removable by the next start: an entry whose lock can be
 * taken belongs to a dead process. Entries are written as ".new-<id>" and
 * renamed once locked, so the cleanup never sees a live entry unlocked.
 */
#include "sandbox-internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>

char *sandbox_state_dir_default(void)
{
	if (geteuid() == 0)
		return xstrdup("/var/lib/kiln/sandbox");
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	if (xdg && xdg[0] == '/')
		return xasprintf("%s/kiln/sandbox", xdg);
	return xasprintf("/tmp/kiln-%u/sandbox", (unsigned)geteuid());
}

int state_entry_create(const char *state_dir, const char *id, const struct cg_sandbox *cg,
		       bool keep, uid_t uid, gid_t gid, struct state_entry *ret, struct kiln_err *err)
{
	_cleanup_free_ char *path = path_join(state_dir, id);
	_cleanup_free_ char *tmp_name = xasprintf(".new-%s", id);
	_cleanup_free_ char *tmp = path_join(state_dir, tmp_name);
	_cleanup_free_ char *kept = keep ? xasprintf("%s.kept", path) : NULL;
	int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return kiln_err_set(err, -errno, "cannot create state entry '%s': %s", tmp,
				    strerror(errno));
	struct buf b = BUF_INIT;
	buf_puts(&b, "kiln-sandbox 1\n");
	for (size_t i = 0; cg && i < cg->n; i++)
		buf_printf(&b, "cgroup %s %s\n", cg->dir[i].v2 ? "v2" : "v1", cg->dir[i].path);
	int r = flock(fd, LOCK_EX | LOCK_NB) < 0 ? -errno : write_all(fd, b.data, b.len);
	buf_release(&b);
	if (r >= 0 && kept) {
		/* The kept layer, owned by the sandbox's root. */
		if (mkdir(kept, 0700) < 0 ||
		    (geteuid() == 0 && chown(kept, uid, gid) < 0))
			r = -errno;
	}
	if (r >= 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		close(fd);
		(void)unlink(tmp);
		if (kept)
			(void)rmdir(kept);
		return kiln_err_set(err, r, "cannot set up state entry '%s': %s", path, strerror(-r));
	}
	ret->path = TAKE_PTR(path);
	ret->stage = keep ? TAKE_PTR(kept) : xstrdup(state_dir);
	ret->lock_fd = fd;
	return 0;
}

int state_entry_remove(struct state_entry *e, bool keep)
{
	(void)keep; /* a kept layer stays in <id>.kept */
	int r = 0;
	if (e->path && unlink(e->path) < 0 && errno != ENOENT)
		r = -errno;
	if (e->lock_fd >= 0)
		close(e->lock_fd);
	e->lock_fd = -1;
	free(e->path);
	free(e->stage);
	e->path = e->stage = NULL;
	return r;
}

/* Validates a recorded cgroup path: absolute, no "..", ends in "/<id>". */
static bool cgroup_path_ok(const char *path, const char *id)
{
	if (path[0] != '/' || strstr(path, "/../") || strstr(path, "/./") || !endswith(path, id))
		return false;
	size_t pl = strlen(path), il = strlen(id);
	return pl > il && path[pl - il - 1] == '/';
}

static bool valid_id(const char *name)
{
	size_t n = strlen(name);
	if (n != 16)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
			return false;
	return true;
}

/* Removes one dead entry: its cgroups, then the file. Returns 1 if removed. */
static int cleanup_entry(int sfd, const char *id, const char *cgroup_root)
{
	_cleanup_close_ int fd = openat(sfd, id, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return 0;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0)
		return 0; /* alive */
	struct buf info = BUF_INIT;
	int r = read_fd_all(fd, 1 << 16, &info);
	if (r < 0)
		return r;
	for (char *line = info.data; line && *line;) {
		char *eol = strchr(line, '\n');
		if (eol)
			*eol = '\0';
		bool v2 = startswith(line, "cgroup v2 ");
		if ((v2 || startswith(line, "cgroup v1 ")) && cgroup_path_ok(line + 10, id) &&
		    (!cgroup_root || startswith(line + 10, cgroup_root))) {
			int c = cg_dir_kill_and_remove(line + 10, v2);
			if (c < 0 && r == 0)
				r = c;
		}
		line = eol ? eol + 1 : NULL;
	}
	buf_release(&info);
	if (r < 0)
		return r;
	if (unlinkat(sfd, id, 0) < 0 && errno != ENOENT)
		return -errno;
	return 1;
}

int sandbox_cleanup_leftovers(const char *state_dir, const char *cgroup_root)
{
	_cleanup_free_ char *def = state_dir ? NULL : sandbox_state_dir_default();
	if (!state_dir)
		state_dir = def;
	int sfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sfd < 0)
		return errno == ENOENT ? 0 : -errno;
	DIR *d = fdopendir(sfd);
	if (!d) {
		int r = -errno;
		close(sfd);
		return r;
	}
	int removed = 0, ret = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (startswith(de->d_name, ".new-") && valid_id(de->d_name + 5)) {
			/* A creation that died before its rename (no cgroups yet). */
			struct stat st;
			if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			    (time_t)st.st_mtime < time(NULL) - 60 &&
			    unlinkat(dirfd(d), de->d_name, 0) == 0)
				removed++;
			continue;
		}
		if (!valid_id(de->d_name))
			continue; /* <id>.kept and anything else stay */
		int r = cleanup_entry(dirfd(d), de->d_name, cgroup_root);
		if (r > 0)
			removed++;
		else if (r < 0 && ret == 0)
			ret = r;
	}
	closedir(d);
	return ret < 0 ? ret : removed;
}

/* /etc entries hidden in host mode (whiteouts in a lower layer above /etc). */
const char *const sandbox_etc_hidden[] = {
	"shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d", "ssh", "ssl/private",
	"pki", "kiln", "krb5.keytab", "security/opasswd", "credstore", "credstore.encrypted",
	"NetworkManager/system-connections", "wpa_supplicant", "ipsec.secrets", "ipsec.d", "ppp",
	"docker", "containerd", "libvirt", "letsencrypt", "openvpn", "wireguard", "netplan",
	"subuid", "subuid-", "subgid", "subgid-",
};
const size_t sandbox_etc_hidden_count = ARRAY_SIZE(sandbox_etc_hidden);

static int make_whiteouts(const char *dir)
{
	if (mkdir(dir, 0755) < 0)
		return -errno;
	_cleanup_close_ int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dfd < 0)
		return -errno;
	for (size_t i = 0; i < sandbox_etc_hidden_count; i++) {
		const char *e = sandbox_etc_hidden[i];
		/* Parents of nested entries (ssl/private): plain directories,
		 * merged with /etc's own. */
		for (const char *slash = strchr(e, '/'); slash; slash = strchr(slash + 1, '/')) {
			_cleanup_free_ char *parent = xstrndup(e, (size_t)(slash - e));
			if (mkdirat(dfd, parent, 0755) < 0 && errno != EEXIST)
				return -errno;
		}
		/* A whiteout: character device 0/0 (unprivileged since 5.8). */
		if (mknodat(dfd, e, S_IFCHR | 0, 0) < 0)
			return -errno;
	}
	return 0;
}

int state_etc_mask(const char *state_dir, char **ret, struct kiln_err *err)
{
	uint32_t h = 2166136261u; /* FNV-1a of the list names the layer */
	for (size_t i = 0; i < sandbox_etc_hidden_count; i++)
		for (const char *p = sandbox_etc_hidden[i];; p++) {
			h = (h ^ (uint8_t)*p) * 16777619u;
			if (!*p)
				break;
		}
	_cleanup_free_ char *name = xasprintf(".etc-mask-%08x", h);
	char *path = path_join(state_dir, name);
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
		*ret = path;
		return 0;
	}
	/* Built aside and renamed: concurrent creators race harmlessly. */
	_cleanup_free_ char *tmp = xasprintf("%s.tmp-%d-%lx", path, (int)getpid(),
					     (unsigned long)pthread_self());
	int r = make_whiteouts(tmp);
	if (r >= 0 && rename(tmp, path) < 0 && errno != EEXIST && errno != ENOTEMPTY)
		r = -errno;
	(void)rm_rf(tmp);
	if (r < 0) {
		kiln_err_set(err, r, "cannot create the /etc mask '%s': %s", path, strerror(-r));
		free(path);
		return r;
	}
	*ret = path;
	return 0;
}
