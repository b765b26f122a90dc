/*
 * artifacts: files a job keeps, stored content-addressed.
 *
 * Upload (agent, fenced): PUT /v1/jobs/{id}/artifacts/{path}?fence=F streams
 * the body into an unnamed temporary file (O_TMPFILE) while hashing it
 * (SHA-256, libsodium), refuses it past artifact_max (413), checks the
 * client's sha256 if one was sent, fsyncs it and links it as
 * <state>/artifacts/blobs/<aa>/<sha256> (an existing blob is kept: same
 * content), then records (job, path, sha256, size) in the store,
 * conditionally on the fence. A crash mid-upload leaves no file behind.
 *
 * Paths are checked (relative, no "." or ".." components, no backslash or
 * control characters) before anything is read; downloads go by the stored
 * hash, never by the path on disk.
 */
#include "server-internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <sys/stat.h>

struct upload {
	int fd;
	char *tmp_path; /* when O_TMPFILE is not available */
	crypto_hash_sha256_state h;
	uint64_t size;
	int64_t job_id, fence, attempt;
	char *path;
	char expect[65];
	char hex[65];
};

void upload_free(struct upload *u)
{
	if (!u)
		return;
	if (u->fd >= 0)
		close(u->fd);
	if (u->tmp_path) {
		unlink(u->tmp_path);
		free(u->tmp_path);
	}
	free(u->path);
	free(u);
}

static char *blob_dir(struct server *s, const char *hex)
{
	return xasprintf("%s/%.2s", s->blobs_dir, hex);
}

static char *blob_path(struct server *s, const char *hex)
{
	return xasprintf("%s/%.2s/%s", s->blobs_dir, hex, hex);
}

static bool is_hex64(const char *s)
{
	if (strlen(s) != 64)
		return false;
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
			return false;
	return true;
}

static int open_tmp(struct server *s, struct upload *u)
{
	u->fd = open(s->tmp_dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
	if (u->fd >= 0)
		return 0;
	if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
		return -errno;
	u->tmp_path = xasprintf("%s/upload.XXXXXX", s->tmp_dir);
	u->fd = mkostemp(u->tmp_path, O_CLOEXEC);
	if (u->fd < 0) {
		int r = -errno;
		free(u->tmp_path);
		u->tmp_path = NULL;
		return r;
	}
	return 0;
}

/* First call, before the body: check everything that can be checked. */
void h_artifact_put(struct req *r)
{
	struct server *s = r->srv;
	int64_t id, fence;
	if (req_param_id(r, 0, "job", &id) < 0 ||
	    req_query_int(r, "fence", 1, INT64_MAX, 0, &fence) < 0)
		return;
	if (!fence) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"query parameter 'fence' (the lease's fence) is required");
		return;
	}
	if (access_job_write(r, id, fence) < 0)
		return;
	const char *path = r->n_params > 1 ? r->params[1] : "";
	struct kiln_err err = {0};
	if (proto_artifact_path_check(path, &err) < 0) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_path", "%s", err.msg);
		return;
	}
	const char *sha = req_query(r, "sha256");
	if (!sha)
		sha = req_header(r, "X-Kiln-Sha256");
	if (sha && !is_hex64(sha)) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
				"sha256 '%s' is not 64 lower-case hex digits", sha);
		return;
	}
	pthread_mutex_lock(&s->lock);
	struct sjob *j = sched_job(s, id);
	bool ok = j && job_state_is_active(j->state) && j->fence == fence;
	int64_t attempt = j ? j->attempt : 0;
	pthread_mutex_unlock(&s->lock);
	if (!ok) {
		req_reply_error(r, MHD_HTTP_CONFLICT, "stale_fence",
				"job %" PRId64 ": fence %" PRId64 " is not the current lease (the job "
				"is not running under it); stop working on it",
				id, fence);
		return;
	}
	struct upload *u = xcalloc(1, sizeof(*u));
	u->fd = -1;
	int rc = open_tmp(s, u);
	if (rc < 0) {
		upload_free(u);
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"cannot create a temporary file: %s", strerror(-rc));
		return;
	}
	crypto_hash_sha256_init(&u->h);
	u->job_id = id;
	u->fence = fence;
	u->attempt = attempt;
	u->path = xstrdup(path);
	if (sha)
		snprintf(u->expect, sizeof(u->expect), "%s", sha);
	r->upload = u;
}

static void artifact_done(struct store_mut *m, void *ud)
{
	struct req *r = ud;
	struct upload *u = r->upload;
	if (m->result < 0) {
		req_reply_error(r, MHD_HTTP_CONFLICT, "stale_fence",
				"job %" PRId64 ": fence %" PRId64 " is no longer the current lease; "
				"the artifact was not recorded",
				u->job_id, u->fence);
		return;
	}
	req_reply_json(r, MHD_HTTP_CREATED,
		       json_pack("{s:I,s:s,s:s,s:I}", "job_id", (json_int_t)u->job_id, "path",
				 u->path, "sha256", u->hex, "size", (json_int_t)u->size));
}

static int link_blob(struct server *s, struct upload *u)
{
	if (fdatasync(u->fd) < 0)
		return -errno;
	_cleanup_free_ char *dir = blob_dir(s, u->hex);
	_cleanup_free_ char *dst = blob_path(s, u->hex);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	int rc;
	if (u->tmp_path) {
		rc = link(u->tmp_path, dst);
	} else {
		char proc[64];
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", u->fd);
		rc = linkat(AT_FDCWD, proc, AT_FDCWD, dst, AT_SYMLINK_FOLLOW);
	}
	if (rc < 0 && errno != EEXIST)
		return -errno;
	_cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0 && fsync(dfd) < 0)
		return -errno;
	return 0;
}

static void artifact_finish(void *p);

void h_artifact_put_data(struct req *r, const char *data, size_t len)
{
	struct server *s = r->srv;
	struct upload *u = r->upload;
	if (!u)
		return;
	if (len) {
		if (u->size + len > s->cfg.artifact_max) {
			char lim[32];
			format_size(s->cfg.artifact_max, lim);
			req_reply_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
					"artifact '%s' is larger than the limit of %s", u->path, lim);
			return;
		}
		int rc = write_all(u->fd, data, len);
		if (rc < 0) {
			req_reply_error(r, rc == -ENOSPC ? 507 : MHD_HTTP_INTERNAL_SERVER_ERROR,
					"write_failed", "cannot store artifact '%s': %s", u->path,
					strerror(-rc));
			return;
		}
		crypto_hash_sha256_update(&u->h, (const unsigned char *)data, len);
		u->size += len;
		return;
	}
	unsigned char digest[crypto_hash_sha256_BYTES];
	crypto_hash_sha256_final(&u->h, digest);
	sodium_bin2hex(u->hex, sizeof(u->hex), digest, sizeof(digest));
	if (u->expect[0] && !streq(u->expect, u->hex)) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "sha256_mismatch",
				"artifact '%s': the body's sha256 is %s, not %s as announced (was it "
				"cut short?)",
				u->path, u->hex, u->expect);
		return;
	}
	/* fsync of up to artifact_max bytes: on the worker, not the HTTP thread. */
	server_defer(s, artifact_finish, r);
}

static void artifact_finish(void *p)
{
	struct req *r = p;
	struct server *s = r->srv;
	struct upload *u = r->upload;
	int rc = link_blob(s, u);
	if (rc < 0) {
		req_reply_error(r, rc == -ENOSPC ? 507 : MHD_HTTP_INTERNAL_SERVER_ERROR,
				"write_failed", "cannot store artifact '%s': %s", u->path,
				strerror(-rc));
		return;
	}
	r->mut = (struct store_mut){.kind = STORE_ARTIFACT_PUT,
				    .artifact = {.job_id = u->job_id, .fence = u->fence,
						 .attempt = u->attempt, .path = u->path,
						 .sha256 = u->hex, .size = u->size,
						 .now = proto_now_ms()},
				    .done = artifact_done,
				    .userdata = r};
	req_audit_target(r, "job %" PRId64 " artifact %s", u->job_id, u->path);
	req_submit(r, &r->mut, 201);
}

static int job_exists(struct req *r, int64_t id) { return access_job_visible(r, id); }

void h_artifacts_list(struct req *r)
{
	int64_t id;
	if (req_param_id(r, 0, "job", &id) < 0 || job_exists(r, id) < 0)
		return;
	struct proto_artifact *v = NULL;
	size_t n = 0;
	int rc = store_artifact_list(r->srv->store, id, &v, &n);
	if (rc < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"cannot list artifacts: %s", strerror(-rc));
		return;
	}
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(arr, proto_artifact_to_json(&v[i]));
	proto_artifacts_free(v, n);
	req_reply_json(r, MHD_HTTP_OK, json_pack("{s:o}", "artifacts", arr));
}

void h_artifact_get(struct req *r)
{
	struct server *s = r->srv;
	int64_t id;
	if (req_param_id(r, 0, "job", &id) < 0)
		return;
	const char *path = r->n_params > 1 ? r->params[1] : "";
	struct kiln_err err = {0};
	if (proto_artifact_path_check(path, &err) < 0) {
		req_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_path", "%s", err.msg);
		return;
	}
	if (job_exists(r, id) < 0)
		return;
	struct proto_artifact a;
	int rc = store_artifact_get(s->store, id, path, &a);
	if (rc == -ENOENT) {
		if (job_exists(r, id) == 0)
			req_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found",
					"job %" PRId64 " has no artifact '%s'", id, path);
		return;
	}
	if (rc < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"cannot read artifact: %s", strerror(-rc));
		return;
	}
	_cleanup_free_ char *bp = blob_path(s, a.sha256);
	int fd = is_hex64(a.sha256) ? open(bp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW) : -1;
	if (fd < 0) {
		req_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
				"the content of artifact '%s' (sha256 %s) is missing from the store",
				path, a.sha256);
		proto_artifact_release(&a);
		return;
	}
	struct MHD_Response *resp = MHD_create_response_from_fd64(a.size, fd);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
	MHD_add_response_header(resp, "X-Kiln-Sha256", a.sha256);
	char etag[80];
	snprintf(etag, sizeof(etag), "\"%s\"", a.sha256);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
	proto_artifact_release(&a);
	req_reply_response(r, MHD_HTTP_OK, resp);
}
