/*
 * remote: the wire format between `kiln sandbox run` and `kiln sandbox
 * serve` (remote.h): frames over a unix stream socket, JSON bodies.
 */
#include "sandbox/remote.h"

#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

/* ---- encoding ------------------------------------------------------------- */

static void put_str_or_null(struct buf *b, const char *key, const char *v)
{
	buf_printf(b, ",\"%s\":", key);
	if (v)
		buf_put_json_string(b, v, strlen(v));
	else
		buf_puts(b, "null");
}

static void put_str_array(struct buf *b, const char *key, char *const *v)
{
	buf_printf(b, ",\"%s\":[", key);
	for (size_t i = 0; v && v[i]; i++) {
		if (i)
			buf_putc(b, ',');
		buf_put_json_string(b, v[i], strlen(v[i]));
	}
	buf_putc(b, ']');
}

void sandbox_request_encode(const struct sandbox_request *r, struct buf *out)
{
	const struct sandbox_config *c = &r->cfg;
	buf_printf(out, "{\"v\":%d", SANDBOX_REMOTE_VERSION);
	put_str_array(out, "argv", r->argv);
	put_str_array(out, "env", r->envp);
	put_str_or_null(out, "cwd", r->cwd);
	buf_printf(out, ",\"uid\":%u,\"gid\":%u,\"timeout_ms\":%" PRIu64, (unsigned)r->uid,
		   (unsigned)r->gid, r->timeout_ms);
	put_str_or_null(out, "rootfs", c->rootfs);
	buf_printf(out, ",\"net\":\"%s\"", c->net == SANDBOX_NET_HOST ? "host" : "none");
	put_str_or_null(out, "hostname", c->hostname);
	put_str_or_null(out, "workspace", c->workspace);
	buf_puts(out, ",\"binds\":[");
	for (size_t i = 0; i < c->n_binds; i++) {
		buf_puts(out, i ? ",{\"src\":" : "{\"src\":");
		buf_put_json_string(out, c->binds[i].src, strlen(c->binds[i].src));
		buf_puts(out, ",\"dst\":");
		buf_put_json_string(out, c->binds[i].dst, strlen(c->binds[i].dst));
		buf_printf(out, ",\"ro\":%s}", c->binds[i].readonly ? "true" : "false");
	}
	buf_putc(out, ']');
	buf_printf(out,
		   ",\"cpu_millis\":%" PRIu32 ",\"memory_bytes\":%" PRIu64 ",\"pids\":%" PRIu32
		   ",\"disk_bytes\":%" PRIu64 ",\"stats\":%s,\"stdio\":%u}",
		   c->limits.cpu_millis, c->limits.memory_bytes, c->limits.pids,
		   c->limits.disk_bytes, r->want_stats ? "true" : "false", r->stdio & 7);
}

void sandbox_result_encode(const struct sandbox_result *r, struct buf *out)
{
	const struct sandbox_exit *e = &r->exit;
	const struct sandbox_stats *s = &r->stats;
	buf_puts(out, "{\"id\":");
	buf_put_json_string(out, r->id, strlen(r->id));
	buf_printf(out, ",\"warm\":%s", r->warm ? "true" : "false");
	buf_printf(out,
		   ",\"started\":%s,\"exit_code\":%d,\"signal\":%d,\"oom_killed\":%s,"
		   "\"timed_out\":%s,\"lost\":%s,\"wall_ns\":%" PRIu64 ",\"cpu_user_ns\":%" PRIu64
		   ",\"cpu_system_ns\":%" PRIu64 ",\"maxrss_bytes\":%" PRIu64
		   ",\"cancelled\":%s,\"cancel_signal\":%d",
		   r->started ? "true" : "false", e->exit_code, e->signal,
		   e->oom_killed ? "true" : "false", e->timed_out ? "true" : "false",
		   e->lost ? "true" : "false", e->wall_ns, e->cpu_user_ns, e->cpu_system_ns,
		   e->maxrss_bytes, r->cancelled ? "true" : "false", r->cancel_signal);
	if (r->have_stats)
		buf_printf(out,
			   ",\"stats\":{\"have\":%d,\"cpu_user_ns\":%" PRIu64
			   ",\"cpu_system_ns\":%" PRIu64 ",\"memory_current\":%" PRIu64
			   ",\"memory_peak\":%" PRIu64 ",\"pids_current\":%" PRIu64
			   ",\"pids_peak\":%" PRIu64 ",\"io_read\":%" PRIu64 ",\"io_write\":%" PRIu64
			   ",\"oom_kills\":%" PRIu64 "}",
			   (s->have_cpu ? 1 : 0) | (s->have_memory ? 2 : 0) | (s->have_pids ? 4 : 0) |
				   (s->have_io ? 8 : 0),
			   s->cpu_user_ns, s->cpu_system_ns, s->memory_current_bytes,
			   s->memory_peak_bytes, s->pids_current, s->pids_peak, s->io_read_bytes,
			   s->io_write_bytes, s->oom_kills);
	else
		buf_puts(out, ",\"stats\":null");
	buf_printf(out, ",\"cgroup\":%s,\"layout\":%d,\"rootless\":%s,\"idmap\":%s",
		   r->cgroup ? "true" : "false", (int)r->layout, r->rootless ? "true" : "false",
		   r->idmap ? "true" : "false");
	put_str_or_null(out, "warning", r->warning);
	put_str_or_null(out, "error", r->err_msg);
	buf_printf(out, ",\"errno\":%d,\"setup_failed\":%s}", r->err_code < 0 ? -r->err_code : 0,
		   r->setup_failed ? "true" : "false");
}

void sandbox_result_set_info(struct sandbox_result *r, struct sandbox *sb)
{
	struct sandbox_info info;
	sandbox_info(sb, &info);
	snprintf(r->id, sizeof(r->id), "%s", info.id);
	r->cgroup = info.cgroup;
	r->layout = info.layout;
	r->rootless = info.rootless;
	r->idmap = info.idmap;
	/* sandbox_destroy() frees what info points to. */
	r->warning = info.warning ? xstrdup(info.warning) : NULL;
}

/* ---- decoding ------------------------------------------------------------- */

static json_t *load(const char *data, size_t len, struct kiln_err *err)
{
	json_error_t je;
	json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
	if (!root) {
		kiln_err_set(err, -EINVAL, "not JSON: %s (at byte %d)", je.text, je.position);
		return NULL;
	}
	if (!json_is_object(root)) {
		json_decref(root);
		kiln_err_set(err, -EINVAL, "not a JSON object");
		return NULL;
	}
	return root;
}

/* A string without NUL bytes, or NULL for JSON null/absent; -EINVAL otherwise. */
static int get_str(json_t *root, const char *key, const char **ret, struct kiln_err *err)
{
	json_t *v = json_object_get(root, key);
	*ret = NULL;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
		return kiln_err_set(err, -EINVAL, "'%s' must be a string without NUL bytes", key);
	*ret = json_string_value(v);
	return 0;
}

static int get_u64(json_t *root, const char *key, uint64_t min, uint64_t max, uint64_t *ret,
		   struct kiln_err *err)
{
	json_t *v = json_object_get(root, key);
	if (!v) {
		*ret = 0;
		return min == 0 ? 0 : kiln_err_set(err, -EINVAL, "'%s' is missing", key);
	}
	if (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    (uint64_t)json_integer_value(v) < min || (uint64_t)json_integer_value(v) > max)
		return kiln_err_set(err, -EINVAL,
				    "'%s' must be an integer from %" PRIu64 " to %" PRIu64, key, min,
				    max);
	*ret = (uint64_t)json_integer_value(v);
	return 0;
}

static int get_bool(json_t *root, const char *key, bool *ret, struct kiln_err *err)
{
	json_t *v = json_object_get(root, key);
	*ret = false;
	if (!v)
		return 0;
	if (!json_is_boolean(v))
		return kiln_err_set(err, -EINVAL, "'%s' must be true or false", key);
	*ret = json_is_true(v);
	return 0;
}

/* A NULL-terminated array of the strings of a JSON array; *bytes adds up their sizes. */
static int get_str_array(json_t *root, const char *key, bool nonempty, char ***ret,
			 size_t *bytes, struct kiln_err *err)
{
	json_t *a = json_object_get(root, key);
	*ret = NULL;
	if (!a || json_is_null(a)) {
		if (nonempty)
			return kiln_err_set(err, -EINVAL, "'%s' is missing", key);
		return 0;
	}
	if (!json_is_array(a) || (nonempty && json_array_size(a) == 0))
		return kiln_err_set(err, -EINVAL, "'%s' must be a%s array of strings", key,
				    nonempty ? " non-empty" : "n");
	size_t n = json_array_size(a);
	if (n > SANDBOX_EXEC_MAX_BYTES / 2)
		return kiln_err_set(err, -E2BIG, "'%s' has too many entries", key);
	char **v = xcalloc(n + 1, sizeof(char *));
	for (size_t i = 0; i < n; i++) {
		json_t *s = json_array_get(a, i);
		if (!json_is_string(s) || strlen(json_string_value(s)) != json_string_length(s)) {
			free(v);
			return kiln_err_set(err, -EINVAL, "'%s'[%zu] must be a string without NUL bytes",
					    key, i);
		}
		v[i] = (char *)(uintptr_t)json_string_value(s);
		*bytes += json_string_length(s) + 1;
	}
	*ret = v;
	return 0;
}

void sandbox_request_free(struct sandbox_request *r)
{
	if (!r)
		return;
	free(r->argv);
	free(r->envp);
	free((void *)(uintptr_t)r->cfg.binds);
	json_decref(r->owner);
	*r = (struct sandbox_request){0};
}

/* "binds": [{"src": ABS, "dst": ABS, "ro": BOOL}, ...] (absent: none). */
static int get_binds(json_t *root, struct sandbox_request *ret, struct kiln_err *err)
{
	json_t *a = json_object_get(root, "binds");
	if (!a || json_is_null(a))
		return 0;
	if (!json_is_array(a) || json_array_size(a) > SANDBOX_MAX_BINDS)
		return kiln_err_set(err, -EINVAL, "'binds' must be an array of at most %d binds",
				    SANDBOX_MAX_BINDS);
	size_t n = json_array_size(a);
	struct sandbox_bind *b = xcalloc(MAX(n, (size_t)1), sizeof(*b));
	ret->cfg.binds = b;
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(a, i);
		const char *src = NULL, *dst = NULL;
		bool ro = false;
		if (!json_is_object(o))
			return kiln_err_set(err, -EINVAL, "'binds'[%zu] must be an object", i);
		if (get_str(o, "src", &src, err) < 0 || get_str(o, "dst", &dst, err) < 0 ||
		    get_bool(o, "ro", &ro, err) < 0)
			return kiln_err_prefix(err, "'binds'[%zu]", i);
		if (!src || src[0] != '/' || !dst || dst[0] != '/')
			return kiln_err_set(err, -EINVAL,
					    "'binds'[%zu] needs absolute 'src' and 'dst' paths", i);
		b[i] = (struct sandbox_bind){.src = src, .dst = dst, .readonly = ro};
	}
	ret->cfg.n_binds = n;
	return 0;
}

int sandbox_request_decode(const char *data, size_t len, struct sandbox_request *ret,
			   struct kiln_err *err)
{
	*ret = (struct sandbox_request){0};
	json_t *root = load(data, len, err);
	if (!root)
		return -EINVAL;
	ret->owner = root;
	uint64_t v, uid, gid, stdio, cpu, mem, pids, disk;
	size_t bytes = 0;
	const char *net = NULL;
	int r;
	if ((r = get_u64(root, "v", SANDBOX_REMOTE_VERSION, SANDBOX_REMOTE_VERSION, &v, err)) < 0 ||
	    (r = get_str_array(root, "argv", true, &ret->argv, &bytes, err)) < 0 ||
	    (r = get_str_array(root, "env", false, &ret->envp, &bytes, err)) < 0 ||
	    (r = get_str(root, "cwd", &ret->cwd, err)) < 0 ||
	    (r = get_u64(root, "uid", 0, 65535, &uid, err)) < 0 ||
	    (r = get_u64(root, "gid", 0, 65535, &gid, err)) < 0 ||
	    (r = get_u64(root, "timeout_ms", 0, UINT32_MAX * 1000ULL, &ret->timeout_ms, err)) < 0 ||
	    (r = get_str(root, "rootfs", &ret->cfg.rootfs, err)) < 0 ||
	    (r = get_str(root, "net", &net, err)) < 0 ||
	    (r = get_str(root, "hostname", &ret->cfg.hostname, err)) < 0 ||
	    (r = get_str(root, "workspace", &ret->cfg.workspace, err)) < 0 ||
	    (r = get_u64(root, "cpu_millis", 0, 1024000, &cpu, err)) < 0 ||
	    (r = get_u64(root, "memory_bytes", 0, UINT64_MAX >> 1, &mem, err)) < 0 ||
	    (r = get_u64(root, "pids", 0, 4194304, &pids, err)) < 0 ||
	    (r = get_u64(root, "disk_bytes", 0, UINT64_MAX >> 1, &disk, err)) < 0 ||
	    (r = get_bool(root, "stats", &ret->want_stats, err)) < 0 ||
	    (r = get_u64(root, "stdio", 0, 7, &stdio, err)) < 0)
		goto fail;
	r = -EINVAL;
	if (!ret->argv[0][0]) {
		kiln_err_set(err, r, "'argv'[0] is empty");
		goto fail;
	}
	if (ret->cwd && ret->cwd[0] != '/') {
		kiln_err_set(err, r, "'cwd' must be an absolute path");
		goto fail;
	}
	bytes += ret->cwd ? strlen(ret->cwd) + 1 : 0;
	if (bytes > SANDBOX_EXEC_MAX_BYTES) {
		kiln_err_set(err, -E2BIG, "argv, env and cwd exceed %d bytes", SANDBOX_EXEC_MAX_BYTES);
		r = -E2BIG;
		goto fail;
	}
	if (!net || streq(net, "none")) {
		ret->cfg.net = SANDBOX_NET_NONE;
	} else if (streq(net, "host")) {
		ret->cfg.net = SANDBOX_NET_HOST;
	} else {
		kiln_err_set(err, r, "'net' must be none or host");
		goto fail;
	}
	if (ret->cfg.rootfs && !streq(ret->cfg.rootfs, "host") && ret->cfg.rootfs[0] != '/') {
		kiln_err_set(err, r, "'rootfs' must be host or an absolute path");
		goto fail;
	}
	if ((r = get_binds(root, ret, err)) < 0)
		goto fail;
	r = -EINVAL;
	if (ret->cfg.workspace && ret->cfg.workspace[0] != '/') {
		kiln_err_set(err, r, "'workspace' must be an absolute path");
		goto fail;
	}
	if (ret->cfg.hostname && (!ret->cfg.hostname[0] || strlen(ret->cfg.hostname) > 64)) {
		kiln_err_set(err, r, "'hostname' must have 1 to 64 characters");
		goto fail;
	}
	if ((cpu && cpu < 10) || (mem && mem < (4 << 20)) || pids == 1 || (disk && disk < (1 << 20))) {
		kiln_err_set(err, r, "a limit is below its minimum (cpu 10m, memory 4Mi, pids 2, disk 1Mi)");
		goto fail;
	}
	ret->uid = (uid_t)uid;
	ret->gid = (gid_t)gid;
	ret->stdio = (unsigned)stdio;
	ret->cfg.limits = (struct sandbox_limits){.cpu_millis = (uint32_t)cpu, .memory_bytes = mem,
						  .pids = (uint32_t)pids, .disk_bytes = disk};
	return 0;
fail:
	sandbox_request_free(ret);
	return r;
}

static char *dup_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

void sandbox_result_free(struct sandbox_result *r)
{
	if (!r)
		return;
	free(r->warning);
	free(r->err_msg);
	r->warning = r->err_msg = NULL;
}

int sandbox_result_decode(const char *data, size_t len, struct sandbox_result *ret,
			  struct kiln_err *err)
{
	*ret = (struct sandbox_result){0};
	json_t *root = load(data, len, err);
	if (!root)
		return -EINVAL;
	const char *id = NULL, *warning = NULL, *emsg = NULL;
	uint64_t code, sig, wall, cu, cs, rss, csig, layout, eno;
	int r;
	struct sandbox_exit *e = &ret->exit;
	if ((r = get_str(root, "id", &id, err)) < 0 ||
	    (r = get_bool(root, "started", &ret->started, err)) < 0 ||
	    (r = get_bool(root, "warm", &ret->warm, err)) < 0 ||
	    (r = get_bool(root, "oom_killed", &e->oom_killed, err)) < 0 ||
	    (r = get_bool(root, "timed_out", &e->timed_out, err)) < 0 ||
	    (r = get_bool(root, "lost", &e->lost, err)) < 0 ||
	    (r = get_u64(root, "signal", 0, 64, &sig, err)) < 0 ||
	    (r = get_u64(root, "wall_ns", 0, UINT64_MAX >> 1, &wall, err)) < 0 ||
	    (r = get_u64(root, "cpu_user_ns", 0, UINT64_MAX >> 1, &cu, err)) < 0 ||
	    (r = get_u64(root, "cpu_system_ns", 0, UINT64_MAX >> 1, &cs, err)) < 0 ||
	    (r = get_u64(root, "maxrss_bytes", 0, UINT64_MAX >> 1, &rss, err)) < 0 ||
	    (r = get_bool(root, "cancelled", &ret->cancelled, err)) < 0 ||
	    (r = get_u64(root, "cancel_signal", 0, 64, &csig, err)) < 0 ||
	    (r = get_bool(root, "cgroup", &ret->cgroup, err)) < 0 ||
	    (r = get_u64(root, "layout", 0, SANDBOX_CGROUP_HYBRID, &layout, err)) < 0 ||
	    (r = get_bool(root, "rootless", &ret->rootless, err)) < 0 ||
	    (r = get_bool(root, "idmap", &ret->idmap, err)) < 0 ||
	    (r = get_str(root, "warning", &warning, err)) < 0 ||
	    (r = get_str(root, "error", &emsg, err)) < 0 ||
	    (r = get_u64(root, "errno", 0, 4095, &eno, err)) < 0 ||
	    (r = get_bool(root, "setup_failed", &ret->setup_failed, err)) < 0)
		goto out;
	json_t *jc = json_object_get(root, "exit_code");
	if (!json_is_integer(jc) || json_integer_value(jc) < -1 || json_integer_value(jc) > 255) {
		r = kiln_err_set(err, -EINVAL, "'exit_code' must be an integer from -1 to 255");
		goto out;
	}
	code = (uint64_t)(json_integer_value(jc) + 1);
	json_t *st = json_object_get(root, "stats");
	if (st && !json_is_null(st)) {
		uint64_t have;
		struct sandbox_stats *s = &ret->stats;
		if (!json_is_object(st)) {
			r = kiln_err_set(err, -EINVAL, "'stats' must be an object or null");
			goto out;
		}
		if ((r = get_u64(st, "have", 0, 15, &have, err)) < 0 ||
		    (r = get_u64(st, "cpu_user_ns", 0, UINT64_MAX, &s->cpu_user_ns, err)) < 0 ||
		    (r = get_u64(st, "cpu_system_ns", 0, UINT64_MAX, &s->cpu_system_ns, err)) < 0 ||
		    (r = get_u64(st, "memory_current", 0, UINT64_MAX, &s->memory_current_bytes, err)) < 0 ||
		    (r = get_u64(st, "memory_peak", 0, UINT64_MAX, &s->memory_peak_bytes, err)) < 0 ||
		    (r = get_u64(st, "pids_current", 0, UINT64_MAX, &s->pids_current, err)) < 0 ||
		    (r = get_u64(st, "pids_peak", 0, UINT64_MAX, &s->pids_peak, err)) < 0 ||
		    (r = get_u64(st, "io_read", 0, UINT64_MAX, &s->io_read_bytes, err)) < 0 ||
		    (r = get_u64(st, "io_write", 0, UINT64_MAX, &s->io_write_bytes, err)) < 0 ||
		    (r = get_u64(st, "oom_kills", 0, UINT64_MAX, &s->oom_kills, err)) < 0)
			goto out;
		s->have_cpu = have & 1;
		s->have_memory = have & 2;
		s->have_pids = have & 4;
		s->have_io = have & 8;
		ret->have_stats = true;
	}
	if (!id || strlen(id) >= sizeof(ret->id)) {
		r = kiln_err_set(err, -EINVAL, "'id' must be a string of at most 16 characters");
		goto out;
	}
	snprintf(ret->id, sizeof(ret->id), "%s", id);
	e->exit_code = (int)code - 1;
	e->signal = (int)sig;
	e->wall_ns = wall;
	e->cpu_user_ns = cu;
	e->cpu_system_ns = cs;
	e->maxrss_bytes = rss;
	ret->cancel_signal = (int)csig;
	ret->layout = (enum sandbox_cgroup_layout)layout;
	ret->warning = dup_or_null(warning);
	ret->err_msg = dup_or_null(emsg);
	ret->err_code = -(int)eno;
	r = 0;
out:
	json_decref(root);
	return r;
}

int sandbox_cancel_decode(const char *data, size_t len)
{
	struct kiln_err err = {0};
	json_t *root = load(data, len, &err);
	if (!root)
		return -EINVAL;
	uint64_t sig;
	int r = get_u64(root, "cancel", 1, 64, &sig, &err);
	json_decref(root);
	return r < 0 ? r : (int)sig;
}

/* ---- the argv request ------------------------------------------------------ */

bool sandbox_argv_is_request(const char *data, size_t len)
{
	return len >= sizeof(SANDBOX_ARGV_MAGIC) &&
	       memcmp(data, SANDBOX_ARGV_MAGIC, sizeof(SANDBOX_ARGV_MAGIC)) == 0;
}

struct argv_reader {
	const char *data;
	size_t len, pos;
};

/* The next NUL-terminated string, or NULL at the end or without its NUL. */
static const char *argv_next(struct argv_reader *rd)
{
	if (rd->pos >= rd->len)
		return NULL;
	const char *s = rd->data + rd->pos;
	const char *nul = memchr(s, '\0', rd->len - rd->pos);
	if (!nul)
		return NULL;
	rd->pos += (size_t)(nul - s) + 1;
	return s;
}

static int argv_count(struct argv_reader *rd, const char *what, size_t max, size_t *ret,
		      struct kiln_err *err)
{
	const char *s = argv_next(rd);
	int64_t v;
	if (!s || parse_int64(s, 0, (int64_t)max, &v) < 0)
		return kiln_err_set(err, -EINVAL, "bad argv request: %s must be a number up to %zu",
				    what, max);
	*ret = (size_t)v;
	return 0;
}

static int argv_strings(struct argv_reader *rd, size_t n, const char *count, const char *what,
			char ***ret, struct kiln_err *err)
{
	/* Every string takes at least its NUL: a count beyond what is left is
	 * a lie, refused before allocating for it. */
	if (n > rd->len - rd->pos)
		return kiln_err_set(err, -EINVAL,
				    "bad argv request: %s %zu is more than the %zu bytes that follow",
				    count, n, rd->len - rd->pos);
	char **v = xcalloc(n + 1, sizeof(char *));
	for (size_t i = 0; i < n; i++) {
		const char *s = argv_next(rd);
		if (!s) {
			free(v);
			return kiln_err_set(err, -EINVAL,
					    "bad argv request: %s %zu of %zu is missing or not "
					    "NUL-terminated",
					    what, i + 1, n);
		}
		v[i] = (char *)(uintptr_t)s;
	}
	*ret = v;
	return 0;
}

int sandbox_argv_decode(const char *data, size_t len, struct sandbox_argv_request *ret,
			struct kiln_err *err)
{
	*ret = (struct sandbox_argv_request){0};
	struct argv_reader rd = {data, len, 0};
	const char *magic = argv_next(&rd);
	if (!magic || !streq(magic, SANDBOX_ARGV_MAGIC))
		return kiln_err_set(err, -EINVAL, "bad argv request: it must start with '%s'",
				    SANDBOX_ARGV_MAGIC);
	size_t stdio = 0, envc = 0;
	int r;
	if ((r = argv_count(&rd, "stdio", 7, &stdio, err)) < 0)
		return r;
	ret->stdio = (unsigned)stdio;
	ret->cwd = argv_next(&rd);
	if (!ret->cwd || ret->cwd[0] != '/')
		return kiln_err_set(err, -EINVAL, "bad argv request: cwd must be an absolute path");
	if ((r = argv_count(&rd, "argc", SANDBOX_ARGV_MAX_STRINGS, &ret->argc, err)) < 0)
		return r;
	if (ret->argc == 0)
		return kiln_err_set(err, -EINVAL, "bad argv request: argc must be at least 1");
	if ((r = argv_strings(&rd, ret->argc, "argc", "argument", &ret->argv, err)) < 0)
		return r;
	if ((r = argv_count(&rd, "envc", SANDBOX_ARGV_MAX_STRINGS, &envc, err)) < 0 ||
	    (r = argv_strings(&rd, envc, "envc", "environment entry", &ret->envp, err)) < 0) {
		sandbox_argv_request_free(ret);
		return r;
	}
	if (rd.pos != len) {
		sandbox_argv_request_free(ret);
		return kiln_err_set(err, -EINVAL, "bad argv request: %zu bytes after the environment",
				    len - rd.pos);
	}
	return 0;
}

void sandbox_argv_request_free(struct sandbox_argv_request *r)
{
	free(r->argv);
	free(r->envp);
	*r = (struct sandbox_argv_request){0};
}

/* ---- frames ---------------------------------------------------------------- */

int sandbox_frame_send(int sock, const void *data, size_t len, const int *fds, size_t nfds)
{
	if (len > SANDBOX_REMOTE_MAX_FRAME || nfds > 3)
		return -EMSGSIZE;
	return sandbox_frame_sendmsg(sock, data, len, fds, nfds);
}

int sandbox_frame_recv(int sock, struct buf *out, int *fds, size_t max_fds, size_t *nfds)
{
	uint32_t hdr;
	size_t got = 0;
	*nfds = 0;
	buf_reset(out);
	while (got < sizeof(hdr)) {
		char cbuf[CMSG_SPACE(sizeof(int) * 3)];
		struct iovec iov = {.iov_base = (char *)&hdr + got, .iov_len = sizeof(hdr) - got};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
				    .msg_controllen = sizeof(cbuf)};
		ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			size_t cnt = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < cnt; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (*nfds < max_fds)
					fds[(*nfds)++] = fd;
				else
					close(fd);
			}
		}
		if (n == 0)
			goto eof;
		got += (size_t)n;
	}
	if (hdr > SANDBOX_REMOTE_MAX_FRAME)
		goto bad;
	buf_reserve(out, hdr + 1);
	while (out->len < hdr) {
		ssize_t n = read(sock, out->data + out->len, hdr - out->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int r = -errno;
			for (size_t i = 0; i < *nfds; i++)
				close(fds[i]);
			*nfds = 0;
			return r;
		}
		if (n == 0)
			goto bad;
		out->len += (size_t)n;
	}
	out->data[out->len] = '\0';
	return 1;
eof:
	if (got == 0 && *nfds == 0)
		return 0;
bad:
	for (size_t i = 0; i < *nfds; i++)
		close(fds[i]);
	*nfds = 0;
	return -EPROTO;
}

int sandbox_remote_connect(const char *state_dir)
{
	_cleanup_free_ char *def = state_dir ? NULL : sandbox_default_state_dir();
	_cleanup_free_ char *path = path_join(state_dir ? state_dir : def, SANDBOX_SERVE_SOCKET);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

/* ---- status ------------------------------------------------------------------ */

bool sandbox_status_is_request(const char *data, size_t len)
{
	struct kiln_err err = {0};
	json_t *root = load(data, len, &err);
	bool yes = root && json_is_true(json_object_get(root, "status"));
	json_decref(root);
	return yes;
}

void sandbox_status_encode(const struct sandbox_server_status *s, struct buf *out)
{
	buf_printf(out, "{\"warm_ready\":%u,\"warm_want\":%u,\"teardowns\":%u,\"active\":%u}",
		   s->warm_ready, s->warm_want, s->teardowns, s->active);
}

int sandbox_remote_status(int sock, struct sandbox_server_status *ret, struct kiln_err *err)
{
	static const char req[] = "{\"status\":true}";
	int r = sandbox_frame_send(sock, req, sizeof(req) - 1, NULL, 0);
	if (r < 0)
		return kiln_err_set(err, r, "sending to kiln sandbox serve: %s", strerror(-r));
	struct buf b = BUF_INIT;
	size_t nfds;
	r = sandbox_frame_recv(sock, &b, NULL, 0, &nfds);
	if (r <= 0) {
		buf_release(&b);
		return kiln_err_set(err, r ? r : -ECONNRESET,
				    "kiln sandbox serve closed the connection without an answer");
	}
	json_t *root = load(b.data, b.len, err);
	buf_release(&b);
	if (!root)
		return kiln_err_prefix(err, "the status from kiln sandbox serve");
	uint64_t v[4];
	const char *keys[4] = {"warm_ready", "warm_want", "teardowns", "active"};
	for (int i = 0; i < 4; i++)
		if (get_u64(root, keys[i], 0, UINT32_MAX, &v[i], err) < 0) {
			json_decref(root);
			return kiln_err_prefix(err, "the status from kiln sandbox serve");
		}
	json_decref(root);
	*ret = (struct sandbox_server_status){(unsigned)v[0], (unsigned)v[1], (unsigned)v[2],
					      (unsigned)v[3]};
	return 0;
}
