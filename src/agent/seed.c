/*
 * seed: copies a directory (or a list of files in it) into a fresh
 * workspace — what an embedded `kiln run` does with the user's directory, as
 * `act` does, so that a job sees the files it was started next to.
 *
 * The copy is made with directory fds and O_NOFOLLOW: symlinks are copied as
 * symlinks (never followed), special files are skipped, and nothing outside
 * the source tree is read. Sizes are bounded (SEED_MAX_BYTES in all) so a
 * mistaken `kiln run` in $HOME fails clearly instead of filling the disk.
 */
#include "agent-internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#define SEED_MAX_BYTES (4ULL << 30)
#define SEED_MAX_DEPTH 128

struct seed {
	uint64_t bytes;
	const char *root;
	/* Never copied: the agent's own state directory, when it lies inside
	 * the source (kiln run in /tmp with TMPDIR=/tmp), and the destination. */
	dev_t skip_dev[2];
	ino_t skip_ino[2];
};

static bool skipped(const struct seed *s, const struct stat *st)
{
	for (size_t i = 0; i < ARRAY_SIZE(s->skip_ino); i++)
		if (s->skip_ino[i] && st->st_dev == s->skip_dev[i] && st->st_ino == s->skip_ino[i])
			return true;
	return false;
}

static int copy_file(struct seed *s, int sdir, int ddir, const char *name, const struct stat *st)
{
	if ((s->bytes += (uint64_t)st->st_size) > SEED_MAX_BYTES)
		return -EFBIG;
	_cleanup_close_ int in = openat(sdir, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
	if (in < 0)
		return -errno;
	_cleanup_close_ int out = openat(ddir, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
					 st->st_mode & 07777);
	if (out < 0)
		return -errno;
	char buf[65536];
	for (;;) {
		ssize_t n = read(in, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		int r = write_all(out, buf, (size_t)n);
		if (r < 0)
			return r;
	}
	if (fchmod(out, st->st_mode & 07777) < 0)
		return -errno;
	return 0;
}

static int copy_link(int sdir, int ddir, const char *name)
{
	char target[4096];
	ssize_t n = readlinkat(sdir, name, target, sizeof(target) - 1);
	if (n < 0)
		return -errno;
	target[n] = '\0';
	return symlinkat(target, ddir, name) < 0 ? -errno : 0;
}

static int copy_dir(struct seed *s, int sdir, int ddir, unsigned depth);

static int copy_entry(struct seed *s, int sdir, int ddir, const char *name, unsigned depth)
{
	struct stat st;
	if (fstatat(sdir, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (S_ISREG(st.st_mode))
		return copy_file(s, sdir, ddir, name, &st);
	if (S_ISLNK(st.st_mode))
		return copy_link(sdir, ddir, name);
	if (!S_ISDIR(st.st_mode))
		return 0; /* sockets, fifos, devices: not part of a source tree */
	if (skipped(s, &st))
		return 0;
	if (depth >= SEED_MAX_DEPTH)
		return -ELOOP;
	if (mkdirat(ddir, name, (st.st_mode & 07777) | 0700) < 0 && errno != EEXIST)
		return -errno;
	_cleanup_close_ int sd =
		openat(sdir, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	_cleanup_close_ int dd =
		openat(ddir, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (sd < 0 || dd < 0)
		return -errno;
	return copy_dir(s, sd, dd, depth + 1);
}

static int copy_dir(struct seed *s, int sdir, int ddir, unsigned depth)
{
	int fd = dup(sdir);
	if (fd < 0)
		return -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	int r = 0;
	struct dirent *e;
	while (r >= 0 && (e = readdir(d))) {
		if (streq(e->d_name, ".") || streq(e->d_name, ".."))
			continue;
		r = copy_entry(s, sdir, ddir, e->d_name, depth);
	}
	closedir(d);
	return r;
}

/* Copies one relative path (made of clean components) with its parents. */
static int copy_path(struct seed *s, int sroot, int droot, const char *rel)
{
	_cleanup_free_ char *copy = xstrdup(rel);
	int sdir = dup(sroot), ddir = dup(droot);
	int r = sdir < 0 || ddir < 0 ? -errno : 0;
	char *save = NULL, *comp = strtok_r(copy, "/", &save);
	while (r >= 0 && comp) {
		char *next = strtok_r(NULL, "/", &save);
		if (streq(comp, ".") || streq(comp, "..")) {
			r = -EINVAL;
			break;
		}
		if (!next) {
			struct stat st;
			if (fstatat(ddir, comp, &st, AT_SYMLINK_NOFOLLOW) == 0)
				break; /* already there (a directory listed before its files) */
			r = copy_entry(s, sdir, ddir, comp, 0);
			break;
		}
		struct stat st;
		if (fstatat(sdir, comp, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode) ||
		    skipped(s, &st)) {
			r = 0; /* vanished, not a directory any more, or kiln's own: skip */
			break;
		}
		if (mkdirat(ddir, comp, (st.st_mode & 07777) | 0700) < 0 && errno != EEXIST) {
			r = -errno;
			break;
		}
		int ns = openat(sdir, comp, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		int nd = openat(ddir, comp, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		close(sdir);
		close(ddir);
		sdir = ns;
		ddir = nd;
		if (sdir < 0 || ddir < 0)
			r = -errno;
		comp = next;
	}
	if (sdir >= 0)
		close(sdir);
	if (ddir >= 0)
		close(ddir);
	return r == -ENOENT ? 0 : r; /* a listed file that is gone is not an error */
}

int copy_tree(const char *src, const char *dst, const char *skip, char *const *files,
	      size_t n_files, struct kiln_err *err)
{
	struct seed s = {.root = src};
	struct stat st;
	if (skip && stat(skip, &st) == 0) {
		s.skip_dev[0] = st.st_dev;
		s.skip_ino[0] = st.st_ino;
	}
	if (stat(dst, &st) == 0) {
		s.skip_dev[1] = st.st_dev;
		s.skip_ino[1] = st.st_ino;
	}
	_cleanup_close_ int sfd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sfd < 0)
		return kiln_err_set(err, -errno, "cannot open '%s': %s", src, strerror(errno));
	_cleanup_close_ int dfd = open(dst, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dfd < 0)
		return kiln_err_set(err, -errno, "cannot open '%s': %s", dst, strerror(errno));
	int r = 0;
	if (files) {
		for (size_t i = 0; i < n_files && r >= 0; i++)
			r = copy_path(&s, sfd, dfd, files[i]);
	} else {
		r = copy_dir(&s, sfd, dfd, 0);
	}
	if (r == -EFBIG)
		return kiln_err_set(err, r, "'%s' holds more than 4Gi of files; it is too big to copy "
				    "into a workspace", src);
	if (r < 0)
		return kiln_err_set(err, r, "cannot copy '%s' into the workspace: %s", src,
				    strerror(-r));
	return 0;
}
