/*
 * artifacts: the files a job keeps, found in its workspace and uploaded.
 *
 * The workspace was written by the job, which is untrusted: every file is
 * opened beneath the workspace without following any symlink
 * (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, or a component-by-component
 * O_NOFOLLOW walk where openat2 is missing), with O_NONBLOCK so a FIFO cannot
 * hang the agent, and kept only if it is a regular file. A symlink to
 * /etc/shadow is skipped, not followed. Globs are matched against a walk of
 * the workspace that does not descend into symlinks either.
 *
 * Patterns (docs/job-spec.md): a path (a file, or a directory: every file
 * under it), or a glob where '*' and '?' and [..] match within one path
 * component and '**' matches any number of components. The sandbox is
 * destroyed before this runs, so no process changes the files meanwhile.
 *
 * Limits: ARTIFACT_MAX_FILES files and ARTIFACT_MAX_WALK directory entries
 * per job; sizes are the server's business (it refuses past its limit).
 */
#include "agent-internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#define ARTIFACT_MAX_FILES 10000
#define ARTIFACT_MAX_WALK 200000
#define ARTIFACT_MAX_DEPTH 64

struct strs {
	char **v;
	size_t n, cap;
};

static void strs_push(struct strs *s, char *x)
{
	s->v = xgrow(s->v, &s->cap, s->n + 1, sizeof(char *));
	s->v[s->n++] = x;
}

static void strs_free(struct strs *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
}

static bool has_glob(const char *p) { return strpbrk(p, "*?[") != NULL; }

/* ---- safe open ------------------------------------------------------------------ */

static int open_beneath_walk(int root, const char *rel, int flags)
{
	_cleanup_free_ char *copy = xstrdup(rel);
	int dir = dup(root);
	if (dir < 0)
		return -errno;
	char *save = NULL, *comp = strtok_r(copy, "/", &save);
	while (comp) {
		char *next = strtok_r(NULL, "/", &save);
		if (streq(comp, "..") || streq(comp, ".")) {
			close(dir);
			return -EINVAL;
		}
		int fd = openat(dir, comp,
				next ? O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
				     : flags | O_NOFOLLOW | O_CLOEXEC);
		int e = errno;
		close(dir);
		if (fd < 0)
			return -e;
		dir = fd;
		comp = next;
	}
	return dir;
}

/* Opens rel beneath root, never following a symlink; -ELOOP for a symlink. */
static int open_beneath(int root, const char *rel, int flags)
{
	static atomic_bool no_openat2;
	if (!atomic_load(&no_openat2)) {
		struct open_how how = {
			.flags = (uint64_t)(flags | O_NOFOLLOW | O_CLOEXEC),
			.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
				   RESOLVE_NO_XDEV,
		};
		long fd = syscall(SYS_openat2, root, rel, &how, sizeof(how));
		if (fd >= 0)
			return (int)fd;
		if (errno != ENOSYS)
			return -errno;
		atomic_store(&no_openat2, true);
	}
	return open_beneath_walk(root, rel, flags);
}

/* ---- matching -------------------------------------------------------------------- */

/* Does path match pattern, with '**' spanning components? */
static bool glob_match(const char *pat, const char *path)
{
	if (startswith(pat, "**")) {
		const char *rest = pat + 2;
		if (*rest == '/')
			rest++;
		else if (*rest)
			goto component; /* "**foo": an ordinary '*' pattern */
		if (!*rest)
			return true;
		for (const char *p = path;;) {
			if (glob_match(rest, p))
				return true;
			p = strchr(p, '/');
			if (!p)
				return false;
			p++;
		}
	}
component:;
	const char *ps = strchr(pat, '/'), *xs = strchr(path, '/');
	size_t pl = ps ? (size_t)(ps - pat) : strlen(pat);
	size_t xl = xs ? (size_t)(xs - path) : strlen(path);
	_cleanup_free_ char *pc = xstrndup(pat, pl);
	_cleanup_free_ char *xc = xstrndup(path, xl);
	if (fnmatch(pc, xc, 0) != 0)
		return false;
	if (!ps && !xs)
		return true;
	if (!ps || !xs)
		return false;
	return glob_match(ps + 1, xs + 1);
}

/* ---- walking --------------------------------------------------------------------- */

struct walk {
	struct strs files; /* everything but directories, relative paths */
	size_t entries;
	bool truncated;
};

static void walk_dir(struct walk *w, int dfd, const char *prefix, unsigned depth)
{
	if (depth > ARTIFACT_MAX_DEPTH)
		return;
	int fd = dup(dfd);
	if (fd < 0)
		return;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		if (streq(e->d_name, ".") || streq(e->d_name, ".."))
			continue;
		if (++w->entries > ARTIFACT_MAX_WALK) {
			w->truncated = true;
			break;
		}
		struct stat st;
		if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		char *rel = *prefix ? xasprintf("%s/%s", prefix, e->d_name) : xstrdup(e->d_name);
		if (!S_ISDIR(st.st_mode)) {
			/* Files, and symlinks and special files too: a pattern that
			 * names them gets a line saying why they were not kept. */
			strs_push(&w->files, rel);
			continue;
		}
		int sub = openat(dfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub >= 0) {
			walk_dir(w, sub, rel, depth + 1);
			close(sub);
		}
		free(rel);
	}
	closedir(d);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- upload ---------------------------------------------------------------------- */

/* 1: kept; 0: skipped (said so in the log); < 0: stop uploading. */
static int upload_one(struct job *j, struct http *h, int ws, const char *rel, uint64_t *bytes)
{
	struct kiln_err err = {0};
	if (proto_artifact_path_check(rel, &err) < 0) {
		spool_marker(j, "artifact '%s' skipped: %s", rel, err.msg);
		return 0;
	}
	int fd = open_beneath(ws, rel, O_RDONLY | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		spool_marker(j, "artifact '%s' skipped: %s", rel,
			     fd == -ELOOP || fd == -EXDEV ? "it is (or goes through) a symlink"
							  : strerror(-fd));
		return 0;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		spool_marker(j, "artifact '%s' skipped: not a regular file", rel);
		close(fd);
		return 0;
	}
	_cleanup_free_ char *esc = url_escape_path(rel);
	_cleanup_free_ char *path = xasprintf("/v1/jobs/%" PRId64 "/artifacts/%s?fence=%" PRId64,
					      j->id, esc, j->fence);
	int r = 0;
	for (unsigned attempt = 0;; attempt++) {
		enum job_stop stop = job_stop_reason(j);
		if (stop == STOP_LOST || stop == STOP_CANCELLED) {
			r = -ECANCELED;
			break;
		}
		if (lseek(fd, 0, SEEK_SET) < 0) {
			r = -errno;
			break;
		}
		struct http_reply rep;
		r = http_put_fd(h, path, fd, (uint64_t)st.st_size, 600000, &rep, &err);
		if (r == 0 && rep.status == 201) {
			*bytes += (uint64_t)st.st_size;
			http_reply_release(&rep);
			r = 1;
			break;
		}
		if (r == 0 && rep.status == 409) {
			http_reply_release(&rep);
			job_request_stop(j, STOP_LOST, "the server refused an artifact: lease lost");
			r = -ESTALE;
			break;
		}
		if (r == 0 && rep.status >= 400 && rep.status < 500) {
			spool_marker(j, "artifact '%s' not kept: %s", rel, http_error_message(&rep));
			http_reply_release(&rep);
			r = 0;
			break;
		}
		if (r == 0)
			http_reply_release(&rep);
		if (attempt >= 8) {
			spool_marker(j, "artifact '%s' not kept: the server could not take it", rel);
			r = 0;
			break;
		}
		struct timespec ts = {(time_t)(backoff_ms(attempt) / 1000),
				      (long)(backoff_ms(attempt) % 1000) * 1000000L};
		nanosleep(&ts, NULL);
	}
	close(fd);
	return r;
}

/* Which files the patterns name, sorted and without duplicates. */
static void select_files(struct job *j, int ws, struct strs *out)
{
	const struct spec_job *s = j->spec;
	struct walk w = {0};
	bool walked = false;
	for (size_t i = 0; i < s->n_artifacts; i++) {
		const char *pat = s->artifacts[i];
		bool glob = has_glob(pat), dir = false;
		if (!glob) {
			int fd = open_beneath(ws, pat, O_RDONLY | O_NONBLOCK | O_NOCTTY);
			struct stat st;
			if (fd >= 0 && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode))
				dir = true;
			if (fd >= 0)
				close(fd);
			if (!dir) {
				/* A single path: upload_one says why if it cannot be read. */
				if (fd != -ENOENT)
					strs_push(out, xstrdup(pat));
				else
					spool_marker(j, "artifact '%s' not found", pat);
				continue;
			}
		}
		if (!walked) {
			walk_dir(&w, ws, "", 0);
			walked = true;
			if (w.truncated)
				spool_marker(j, "artifacts: the workspace has more than %d entries; "
						"only the first were searched",
					     ARTIFACT_MAX_WALK);
		}
		size_t before = out->n;
		size_t plen = strlen(pat);
		for (size_t k = 0; k < w.files.n; k++) {
			const char *f = w.files.v[k];
			bool m = dir ? (streq(pat, ".") || (strncmp(f, pat, plen) == 0 && f[plen] == '/'))
				     : glob_match(pat, f);
			if (m)
				strs_push(out, xstrdup(f));
		}
		if (out->n == before)
			spool_marker(j, "artifact '%s' matched no file", pat);
	}
	strs_free(&w.files);
	if (out->n > 1)
		qsort(out->v, out->n, sizeof(char *), cmp_str);
	size_t k = 0;
	for (size_t i = 0; i < out->n; i++) {
		if (k && streq(out->v[k - 1], out->v[i])) {
			free(out->v[i]);
			continue;
		}
		out->v[k++] = out->v[i];
	}
	out->n = k;
}

int artifacts_upload(struct job *j, struct http *h)
{
	if (!j->spec || !j->spec->n_artifacts)
		return 0;
	_cleanup_close_ int ws =
		open(j->workspace, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (ws < 0) {
		if (errno == ENOENT)
			return 0; /* the job never got a sandbox */
		spool_marker(j, "artifacts: cannot open the workspace: %s", strerror(errno));
		return -errno;
	}
	struct strs files = {0};
	select_files(j, ws, &files);
	if (files.n > ARTIFACT_MAX_FILES) {
		spool_marker(j, "artifacts: %zu files match; only the first %d are kept", files.n,
			     ARTIFACT_MAX_FILES);
		for (size_t i = ARTIFACT_MAX_FILES; i < files.n; i++)
			free(files.v[i]);
		files.n = ARTIFACT_MAX_FILES;
	}
	uint64_t bytes = 0;
	size_t kept = 0;
	int r = 0;
	for (size_t i = 0; i < files.n && r >= 0; i++) {
		r = upload_one(j, h, ws, files.v[i], &bytes);
		if (r > 0)
			kept++;
	}
	if (files.n && r >= 0)
		spool_marker(j, "artifacts: %zu of %zu file%s kept (%" PRIu64 " bytes)", kept,
			     files.n, files.n == 1 ? "" : "s", bytes);
	strs_free(&files);
	return r;
}
