/*
 * state: the per-sandbox entries in the state directory and the cleanup of
 * what dead kiln processes left behind.
 *
 * Layout (0700 directories: the sandbox's set-up opens its stage while it
 * still has the host's uid, and uses the fd afterwards):
 *
 *   <state>/<id>/lock    flock(LOCK_EX) held by the owning process (CLOEXEC fd)
 *   <state>/<id>/info    "cgroup v1|v2 PATH" lines, written before the
 *                        directories are created
 *   <state>/<id>/stage   mount point of the writable layer (tmpfs, mounted
 *                        only inside the sandbox's mount namespace) or,
 *                        with keep, the layer itself on disk
 *   <state>/<id>/kept    present when the layer was kept on purpose
 *
 * Nothing is ever mounted on the host: all of a sandbox's mounts live in its
 * own mount namespace and vanish with it. So a leftover is at most a
 * directory tree and cgroups, both removable by the next start: an entry
 * whose lock can be taken belongs to a dead process.
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

static int write_info(int dfd, const struct cg_sandbox *cg)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "kiln-sandbox 1\n");
	for (size_t i = 0; cg && i < cg->n; i++)
		buf_printf(&b, "cgroup %s %s\n", cg->dir[i].v2 ? "v2" : "v1", cg->dir[i].path);
	int fd = openat(dfd, "info", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	int r = fd < 0 ? -errno : write_all(fd, b.data, b.len);
	if (fd >= 0)
		close(fd);
	buf_release(&b);
	return r;
}

int state_entry_create(const char *state_dir, const char *id, const struct cg_sandbox *cg,
		       bool keep, uid_t uid, gid_t gid, struct state_entry *ret, struct kiln_err *err)
{
	/* Built under a name the cleanup ignores, then renamed: the cleanup
	 * must never see an entry whose lock is not held yet. */
	_cleanup_free_ char *dir = path_join(state_dir, id);
	_cleanup_free_ char *tmp_name = xasprintf(".new-%s", id);
	_cleanup_free_ char *tmp = path_join(state_dir, tmp_name);
	if (mkdir(tmp, 0700) < 0)
		return kiln_err_set(err, -errno, "cannot create state directory '%s': %s", tmp,
				    strerror(errno));
	int r;
	_cleanup_close_ int dfd = open(tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int lock = -1;
	if (dfd < 0) {
		r = -errno;
		goto fail;
	}
	lock = openat(dfd, "lock", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (lock < 0 || flock(lock, LOCK_EX | LOCK_NB) < 0) {
		r = -errno;
		goto fail;
	}
	r = write_info(dfd, cg);
	if (r < 0)
		goto fail;
	if (mkdirat(dfd, "stage", 0700) < 0) {
		r = -errno;
		goto fail;
	}
	/* The sandbox's root (uid 0 inside) owns its stage. */
	if (geteuid() == 0 && fchownat(dfd, "stage", uid, gid, AT_SYMLINK_NOFOLLOW) < 0) {
		r = -errno;
		goto fail;
	}
	(void)keep;
	if (rename(tmp, dir) < 0) {
		r = -errno;
		goto fail;
	}
	ret->dir = TAKE_PTR(dir);
	ret->lock_fd = lock;
	return 0;
fail:
	if (lock >= 0)
		close(lock);
	(void)rm_rf(tmp);
	return kiln_err_set(err, r, "cannot set up state directory '%s': %s", tmp, strerror(-r));
}

int state_entry_remove(struct state_entry *e, bool keep)
{
	if (!e->dir)
		return 0;
	int r = 0;
	if (keep) {
		_cleanup_free_ char *marker = path_join(e->dir, "kept");
		int fd = open(marker, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd < 0)
			r = -errno;
		else
			close(fd);
	} else {
		r = rm_rf(e->dir);
	}
	if (e->lock_fd >= 0)
		close(e->lock_fd);
	e->lock_fd = -1;
	free(e->dir);
	e->dir = NULL;
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

/* Removes one dead entry: its cgroups, then the directory. */
static int cleanup_entry(int sfd, const char *state_dir, const char *id, const char *cgroup_root)
{
	_cleanup_free_ char *dir = path_join(state_dir, id);
	_cleanup_close_ int dfd = openat(sfd, id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (faccessat(dfd, "kept", F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		return 0;
	_cleanup_close_ int lock = openat(dfd, "lock", O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (lock >= 0) {
		if (flock(lock, LOCK_EX | LOCK_NB) < 0)
			return 0; /* alive */
	} else {
		/* No lock yet: being created, or died right after mkdir. */
		struct stat st;
		if (fstat(dfd, &st) < 0 || (time_t)st.st_mtime > time(NULL) - 60)
			return 0;
	}
	int r = 0;
	struct buf info = BUF_INIT;
	_cleanup_free_ char *info_path = path_join(dir, "info");
	if (read_file(info_path, 1 << 16, &info) >= 0) {
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
	}
	if (r < 0)
		return r;
	r = rm_rf(dir);
	return r < 0 ? r : 1;
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
			    (time_t)st.st_mtime < time(NULL) - 60) {
				_cleanup_free_ char *p = path_join(state_dir, de->d_name);
				if (rm_rf(p) >= 0)
					removed++;
			}
			continue;
		}
		if (!valid_id(de->d_name))
			continue;
		int r = cleanup_entry(dirfd(d), state_dir, de->d_name, cgroup_root);
		if (r > 0)
			removed++;
		else if (r < 0 && ret == 0)
			ret = r;
	}
	closedir(d);
	return ret < 0 ? ret : removed;
}
