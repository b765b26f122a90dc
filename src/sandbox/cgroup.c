/*
 * cgroup: one cgroup per sandbox, on whatever layout the host has.
 *
 * Layouts: pure v2 (one cgroup2 mount), pure v1 (one mount per hierarchy)
 * and hybrid (v1 hierarchies with the controllers plus a cgroup2 mount that
 * may have none, as on systemd's "hybrid" hosts and kiln's development VMs).
 * The layout is read from /proc/self/mountinfo, never guessed from paths,
 * and only mounts under the configured root (default /sys/fs/cgroup) count,
 * so tests can describe any layout as text (cg_layout_parse_*).
 *
 * Invariants:
 *  - A controller is used from v2 when v2 has it, else from the v1
 *    hierarchy that has it. Where a cgroup2 mount exists the sandbox always
 *    gets a v2 directory too, even without controllers: its core files
 *    (cgroup.kill, cgroup.procs, cpu.stat) work everywhere, and CLONE_INTO_
 *    CGROUP puts kiln-init there atomically.
 *  - Every directory kiln creates is recorded in the state entry before it
 *    is created (state.c), so a crash leaves a record for the cleanup.
 *  - Limits are written before any process enters.
 */
#include "sandbox-internal.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

static const char *const ctrl_v1_names[CG_NCTRL] = {
	[CG_CPU] = "cpu",   [CG_CPUACCT] = "cpuacct", [CG_MEMORY] = "memory",
	[CG_PIDS] = "pids", [CG_IO] = "blkio",        [CG_FREEZER] = "freezer",
};
static const char *const ctrl_v2_names[CG_NCTRL] = {
	[CG_CPU] = "cpu",   [CG_CPUACCT] = NULL, [CG_MEMORY] = "memory",
	[CG_PIDS] = "pids", [CG_IO] = "io",      [CG_FREEZER] = NULL,
};

const char *cg_ctrl_name(enum cg_ctrl c, bool v2)
{
	if ((unsigned)c >= CG_NCTRL)
		return NULL;
	return v2 ? ctrl_v2_names[c] : ctrl_v1_names[c];
}

static int ctrl_from_name(const char *s, size_t n, bool v2)
{
	for (int c = 0; c < CG_NCTRL; c++) {
		const char *name = cg_ctrl_name(c, v2);
		if (name && strlen(name) == n && memcmp(name, s, n) == 0)
			return c;
	}
	return -1;
}

/* ---- small file helpers ------------------------------------------------- */

static int cg_read(const char *dir, const char *file, char *buf, size_t size)
{
	char path[CG_PATH + 64];
	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
		return -ENAMETOOLONG;
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t len = 0;
	while (len + 1 < size) {
		ssize_t n = read(fd, buf + len, size - 1 - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	return (int)len;
}

static int cg_write(const char *dir, const char *file, const char *value)
{
	char path[CG_PATH + 64];
	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
		return -ENAMETOOLONG;
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t len = strlen(value);
	ssize_t n = write(fd, value, len);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EIO;
}

static int cg_read_u64(const char *dir, const char *file, uint64_t *ret)
{
	char buf[64];
	int r = cg_read(dir, file, buf, sizeof(buf));
	if (r < 0)
		return r;
	if (strncmp(buf, "max", 3) == 0) {
		*ret = UINT64_MAX;
		return 0;
	}
	char *end;
	errno = 0;
	unsigned long long v = strtoull(buf, &end, 10);
	if (errno || end == buf)
		return -EINVAL;
	*ret = v;
	return 0;
}

/* Finds "key N" (space separated, one per line) in text. */
static int keyed_u64(const char *text, const char *key, uint64_t *ret)
{
	size_t kl = strlen(key);
	for (const char *p = text; p && *p;) {
		if (strncmp(p, key, kl) == 0 && p[kl] == ' ') {
			*ret = strtoull(p + kl + 1, NULL, 10);
			return 0;
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return -ENOENT;
}

/* ---- layout: pure parsing ----------------------------------------------- */

/* Copies a mountinfo field, decoding \NNN octal escapes. */
static size_t unescape_field(const char *s, size_t n, char *out, size_t out_size)
{
	size_t o = 0;
	for (size_t i = 0; i < n && o + 1 < out_size; i++) {
		if (s[i] == '\\' && i + 3 < n && s[i + 1] >= '0' && s[i + 1] <= '3' &&
		    s[i + 2] >= '0' && s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
			out[o++] = (char)((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
			i += 3;
		} else {
			out[o++] = s[i];
		}
	}
	out[o] = '\0';
	return o;
}

static bool path_under(const char *path, const char *root)
{
	size_t n = strlen(root);
	while (n > 1 && root[n - 1] == '/')
		n--;
	if (strncmp(path, root, n) != 0)
		return false;
	return path[n] == '\0' || path[n] == '/' || (n == 1 && root[0] == '/');
}

int cg_layout_parse_mountinfo(struct cg_layout *l, const char *root, const char *mountinfo)
{
	memset(l, 0, sizeof(*l));
	for (int c = 0; c < CG_NCTRL; c++)
		l->provider[c] = -1;
	if (strlen(root) >= sizeof(l->root))
		return -ENAMETOOLONG;
	snprintf(l->root, sizeof(l->root), "%s", root);

	for (const char *line = mountinfo; line && *line;) {
		const char *eol = strchr(line, '\n');
		size_t len = eol ? (size_t)(eol - line) : strlen(line);
		/* Fields: id parent maj:min root mountpoint opts [optional...] - type source superopts */
		const char *f[6];
		size_t fl[6];
		const char *p = line, *end = line + len;
		int nf = 0;
		while (nf < 6 && p < end) {
			while (p < end && *p == ' ')
				p++;
			const char *s = p;
			while (p < end && *p != ' ')
				p++;
			if (p > s) {
				f[nf] = s;
				fl[nf] = (size_t)(p - s);
				nf++;
			}
		}
		const char *sep = NULL;
		for (const char *q = p; q < end; q++)
			if (q[0] == '-' && q[-1] == ' ' && (q + 1 == end || q[1] == ' ')) {
				sep = q;
				break;
			}
		if (len == 0) {
			line = eol ? eol + 1 : NULL;
			continue;
		}
		if (nf < 6 || !sep)
			return -EINVAL;
		/* After " - ": type source superopts. */
		const char *t = sep + 1;
		while (t < end && *t == ' ')
			t++;
		const char *te = t;
		while (te < end && *te != ' ')
			te++;
		const char *src = te;
		while (src < end && *src == ' ')
			src++;
		const char *srce = src;
		while (srce < end && *srce != ' ')
			srce++;
		const char *so = srce;
		while (so < end && *so == ' ')
			so++;
		size_t tl = (size_t)(te - t), sol = (size_t)(end - so);

		char mnt[CG_PATH];
		unescape_field(f[4], fl[4], mnt, sizeof(mnt));
		bool is_v2 = tl == 7 && memcmp(t, "cgroup2", 7) == 0;
		bool is_v1 = tl == 6 && memcmp(t, "cgroup", 6) == 0;
		if ((is_v1 || is_v2) && path_under(mnt, root)) {
			if (is_v2) {
				if (!l->v2[0])
					snprintf(l->v2, sizeof(l->v2), "%s", mnt);
			} else {
				uint32_t ctrls = 0;
				const char *o = so, *oe = so + sol;
				while (o < oe) {
					const char *c = o;
					while (o < oe && *o != ',')
						o++;
					int id = ctrl_from_name(c, (size_t)(o - c), false);
					if (id >= 0)
						ctrls |= 1u << id;
					if (o < oe)
						o++;
				}
				bool dup = false;
				for (size_t i = 0; i < l->n_v1; i++)
					if (l->v1[i].ctrls == ctrls)
						dup = true;
				if (ctrls && !dup && l->n_v1 < CG_MAX_V1) {
					snprintf(l->v1[l->n_v1].mount, sizeof(l->v1[0].mount), "%s", mnt);
					l->v1[l->n_v1].ctrls = ctrls;
					l->n_v1++;
				}
			}
		}
		line = eol ? eol + 1 : NULL;
	}
	return 0;
}

void cg_layout_resolve(struct cg_layout *l, const char *v2_controllers)
{
	l->v2_ctrls = 0;
	if (l->v2[0] && v2_controllers) {
		for (const char *p = v2_controllers; *p;) {
			while (*p == ' ' || *p == '\n')
				p++;
			const char *s = p;
			while (*p && *p != ' ' && *p != '\n')
				p++;
			int id = ctrl_from_name(s, (size_t)(p - s), true);
			if (id >= 0)
				l->v2_ctrls |= 1u << id;
		}
	}
	for (int c = 0; c < CG_NCTRL; c++) {
		l->provider[c] = -1;
		if (l->v2_ctrls & (1u << c)) {
			l->provider[c] = CG_V2;
			continue;
		}
		for (size_t i = 0; i < l->n_v1; i++)
			if (l->v1[i].ctrls & (1u << c)) {
				l->provider[c] = (int)i;
				break;
			}
	}
}

int cg_layout_parse_self(struct cg_layout *l, const char *text)
{
	snprintf(l->own_v2, sizeof(l->own_v2), "/");
	for (size_t i = 0; i < CG_MAX_V1; i++)
		snprintf(l->own_v1[i], sizeof(l->own_v1[i]), "/");
	for (const char *line = text; line && *line;) {
		const char *eol = strchr(line, '\n');
		size_t len = eol ? (size_t)(eol - line) : strlen(line);
		const char *c1 = memchr(line, ':', len);
		const char *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - line)) : NULL;
		if (!c1 || !c2)
			return len == 0 ? 0 : -EINVAL;
		const char *path = c2 + 1;
		size_t pl = len - (size_t)(path - line);
		if (pl == 0 || pl >= CG_PATH || path[0] != '/')
			return -EINVAL;
		if (c2 == c1 + 1) {
			memcpy(l->own_v2, path, pl);
			l->own_v2[pl] = '\0';
		} else {
			uint32_t ctrls = 0;
			for (const char *o = c1 + 1; o < c2;) {
				const char *s = o;
				while (o < c2 && *o != ',')
					o++;
				int id = ctrl_from_name(s, (size_t)(o - s), false);
				if (id >= 0)
					ctrls |= 1u << id;
				if (o < c2)
					o++;
			}
			for (size_t i = 0; i < l->n_v1; i++)
				if (ctrls && l->v1[i].ctrls == ctrls) {
					memcpy(l->own_v1[i], path, pl);
					l->own_v1[i][pl] = '\0';
				}
		}
		line = eol ? eol + 1 : NULL;
	}
	return 0;
}

enum sandbox_cgroup_layout cg_layout_kind(const struct cg_layout *l)
{
	if (l->v2[0] && l->n_v1 > 0)
		return SANDBOX_CGROUP_HYBRID;
	if (l->v2[0])
		return SANDBOX_CGROUP_V2;
	if (l->n_v1 > 0)
		return SANDBOX_CGROUP_V1;
	return SANDBOX_CGROUP_NONE;
}

const char *sandbox_cgroup_layout_name(enum sandbox_cgroup_layout k)
{
	switch (k) {
	case SANDBOX_CGROUP_V1: return "v1";
	case SANDBOX_CGROUP_V2: return "v2";
	case SANDBOX_CGROUP_HYBRID: return "hybrid";
	default: return "none";
	}
}

/* ---- layout: from the running system ------------------------------------ */

static pthread_mutex_t layout_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cg_layout *layout_cache; /* guarded by layout_lock */

int cg_layout_get(const char *root, struct cg_layout *ret)
{
	if (!root)
		root = "/sys/fs/cgroup";
	pthread_mutex_lock(&layout_lock);
	if (layout_cache && streq(layout_cache->root, root)) {
		*ret = *layout_cache;
		pthread_mutex_unlock(&layout_lock);
		return 0;
	}
	pthread_mutex_unlock(&layout_lock);

	struct buf mi = BUF_INIT, self = BUF_INIT;
	int r = read_file("/proc/self/mountinfo", 4 << 20, &mi);
	if (r < 0)
		return r;
	struct cg_layout *l = xcalloc(1, sizeof(*l));
	r = cg_layout_parse_mountinfo(l, root, mi.data);
	buf_release(&mi);
	if (r < 0) {
		free(l);
		return r;
	}
	char ctrls[512] = "";
	if (l->v2[0] && cg_read(l->v2, "cgroup.controllers", ctrls, sizeof(ctrls)) < 0)
		ctrls[0] = '\0';
	cg_layout_resolve(l, ctrls);
	if (read_file("/proc/self/cgroup", 1 << 20, &self) >= 0) {
		(void)cg_layout_parse_self(l, self.data);
		buf_release(&self);
	}
	*ret = *l;
	pthread_mutex_lock(&layout_lock);
	free(layout_cache);
	layout_cache = l;
	pthread_mutex_unlock(&layout_lock);
	return 0;
}

/* ---- paths ---------------------------------------------------------------- */

static bool has_dotdot(const char *p)
{
	for (const char *s = p; *s;) {
		while (*s == '/')
			s++;
		const char *e = s;
		while (*e && *e != '/')
			e++;
		if ((e - s == 2 && s[0] == '.' && s[1] == '.') || (e - s == 1 && s[0] == '.'))
			return true;
		s = e;
	}
	return false;
}

/* Appends "/" + component(s) of s to out, collapsing repeated slashes. */
static int append_path(char *out, size_t size, size_t *len, const char *s)
{
	for (; *s;) {
		while (*s == '/')
			s++;
		if (!*s)
			break;
		const char *e = s;
		while (*e && *e != '/')
			e++;
		size_t n = (size_t)(e - s);
		if (*len + 1 + n + 1 > size)
			return -ENAMETOOLONG;
		out[(*len)++] = '/';
		memcpy(out + *len, s, n);
		*len += n;
		out[*len] = '\0';
		s = e;
	}
	return 0;
}

int cg_sandbox_path(const char *mount, const char *own, const char *parent, const char *id,
		    char *out, size_t out_size)
{
	if (!id || !*id || strchr(id, '/') || has_dotdot(id))
		return -EINVAL;
	if (!parent)
		parent = "";
	if (has_dotdot(parent))
		return -EINVAL;
	size_t mlen = strlen(mount);
	while (mlen > 1 && mount[mlen - 1] == '/')
		mlen--;
	if (mlen + 1 > out_size)
		return -ENAMETOOLONG;
	memcpy(out, mount, mlen);
	out[mlen] = '\0';
	if (mlen == 1)
		mlen = 0; /* mount "/": avoid "//" */
	size_t len = mlen;
	int r = 0;
	if (parent[0] != '/')
		r = append_path(out, out_size, &len, own ? own : "/");
	if (r >= 0)
		r = append_path(out, out_size, &len, parent);
	if (r >= 0)
		r = append_path(out, out_size, &len, id);
	return r;
}

/* ---- one sandbox's cgroup ----------------------------------------------- */

static int plan_dir(struct cg_sandbox *cg, const struct cg_layout *l, int provider,
		    const char *parent, const char *id)
{
	bool v2 = provider == CG_V2;
	const char *mount = v2 ? l->v2 : l->v1[provider].mount;
	const char *own = v2 ? l->own_v2 : l->own_v1[provider];
	char path[CG_PATH];
	int r = cg_sandbox_path(mount, own, parent, id, path, sizeof(path));
	if (r < 0)
		return r;
	for (size_t i = 0; i < cg->n; i++)
		if (streq(cg->dir[i].path, path))
			return (int)i;
	if (cg->n >= CG_MAX_DIRS)
		return -E2BIG;
	size_t i = cg->n++;
	snprintf(cg->dir[i].path, sizeof(cg->dir[i].path), "%s", path);
	cg->dir[i].v2 = v2;
	cg->dir[i].ctrls = 0;
	if (v2) {
		cg->v2_index = (int)i;
		snprintf(cg->v2_mount, sizeof(cg->v2_mount), "%s", mount);
	}
	return (int)i;
}

int cg_sandbox_plan(const struct cg_layout *l, const char *parent, const char *id,
		    const struct sandbox_limits *lim, struct cg_sandbox *ret, struct kiln_err *err)
{
	struct cg_sandbox cg = {.v2_index = -1, .v2_fd = -1};
	for (int c = 0; c < CG_NCTRL; c++)
		cg.where[c] = -1;
	if (!parent)
		parent = geteuid() == 0 ? "/kiln" : "";
	if (has_dotdot(parent))
		return kiln_err_set(err, -EINVAL, "cgroup parent '%s' must not contain '.' or '..'",
				    parent);

	/* Controllers needed: accounting always, cpu for a limit, cpuacct for
	 * cpu time where there is no v2 directory, freezer to kill without v2. */
	uint32_t want = 1u << CG_MEMORY | 1u << CG_PIDS | 1u << CG_IO;
	if (lim && lim->cpu_millis)
		want |= 1u << CG_CPU;
	if (!l->v2[0])
		want |= 1u << CG_CPUACCT | 1u << CG_FREEZER;

	static const struct {
		int ctrl;
		const char *flag;
	} limited[] = {{CG_CPU, "--cpus"}, {CG_MEMORY, "--memory"}, {CG_PIDS, "--pids"}};
	for (size_t i = 0; i < ARRAY_SIZE(limited); i++) {
		int c = limited[i].ctrl;
		bool needed = lim && ((c == CG_CPU && lim->cpu_millis) ||
				      (c == CG_MEMORY && lim->memory_bytes) || (c == CG_PIDS && lim->pids));
		if (needed && l->provider[c] < 0)
			return kiln_err_set(err, -ENOTSUP,
					    "%s needs the cgroup controller '%s', which no cgroup "
					    "hierarchy under '%s' provides",
					    limited[i].flag, cg_ctrl_name(c, false), l->root);
	}

	if (l->v2[0]) {
		int r = plan_dir(&cg, l, CG_V2, parent, id);
		if (r < 0)
			return kiln_err_set(err, r, "cgroup path for '%s' under '%s': %s", id, parent,
					    strerror(-r));
	}
	for (int c = 0; c < CG_NCTRL; c++) {
		if (!(want & (1u << c)) || l->provider[c] < 0)
			continue;
		int i = plan_dir(&cg, l, l->provider[c], parent, id);
		if (i < 0)
			return kiln_err_set(err, i, "cgroup path for '%s' under '%s': %s", id, parent,
					    strerror(-i));
		cg.dir[i].ctrls |= 1u << c;
		cg.where[c] = i;
	}
	*ret = cg;
	return 0;
}

/* Enables the v2 controllers of cg on every ancestor from the mount down to
 * the sandbox's parent, so the sandbox directory gets their files. */
static int enable_v2_controllers(const struct cg_sandbox *cg, const char *mount,
				 struct kiln_err *err)
{
	const char *dir = cg->dir[cg->v2_index].path;
	uint32_t ctrls = cg->dir[cg->v2_index].ctrls;
	if (!ctrls)
		return 0;
	char want[128] = "";
	size_t wl = 0;
	for (int c = 0; c < CG_NCTRL; c++)
		if (ctrls & (1u << c) && ctrl_v2_names[c])
			wl += (size_t)snprintf(want + wl, sizeof(want) - wl, "%s+%s", wl ? " " : "",
					       ctrl_v2_names[c]);
	char path[CG_PATH];
	size_t ml = strlen(mount);
	snprintf(path, sizeof(path), "%s", dir);
	/* Walk the ancestors: mount, mount/a, mount/a/b, ... up to dirname(dir). */
	char *last = strrchr(path, '/');
	if (!last)
		return 0;
	*last = '\0';
	for (char *s = path + ml;; s++) {
		if (*s == '/' || *s == '\0') {
			char saved = *s;
			*s = '\0';
			char cur[256] = "";
			(void)cg_read(path, "cgroup.subtree_control", cur, sizeof(cur));
			bool all = true;
			for (int c = 0; c < CG_NCTRL; c++)
				if (ctrls & (1u << c) && ctrl_v2_names[c] && !strstr(cur, ctrl_v2_names[c]))
					all = false;
			if (!all) {
				int r = cg_write(path, "cgroup.subtree_control", want);
				if (r < 0)
					return kiln_err_set(err, r,
							    "cannot enable cgroup controllers '%s' in "
							    "'%s': %s%s",
							    want, path, strerror(-r),
							    r == -EBUSY ? " (the cgroup has processes; "
									  "choose another --cgroup-parent)"
									: "");
			}
			*s = saved;
			if (saved == '\0')
				break;
		}
	}
	return 0;
}

static int write_limits(const struct cg_sandbox *cg, const struct sandbox_limits *lim, bool v2,
			struct kiln_err *err)
{
	char v[64];
	int r = 0;
#define IN_PHASE(c) (cg->where[c] >= 0 && cg->dir[cg->where[c]].v2 == v2)
	if (lim->memory_bytes && IN_PHASE(CG_MEMORY)) {
		const char *d = cg->dir[cg->where[CG_MEMORY]].path;
		snprintf(v, sizeof(v), "%" PRIu64, lim->memory_bytes);
		if (cg->dir[cg->where[CG_MEMORY]].v2) {
			r = cg_write(d, "memory.max", v);
			if (r >= 0) {
				int s = cg_write(d, "memory.swap.max", "0");
				if (s < 0 && s != -ENOENT)
					r = s;
			}
		} else {
			r = cg_write(d, "memory.limit_in_bytes", v);
			if (r >= 0) {
				int s = cg_write(d, "memory.memsw.limit_in_bytes", v);
				if (s < 0 && s != -ENOENT)
					r = s;
			}
		}
		if (r < 0)
			return kiln_err_set(err, r, "cannot set the memory limit in '%s': %s", d,
					    strerror(-r));
	}
	if (lim->cpu_millis && IN_PHASE(CG_CPU)) {
		const char *d = cg->dir[cg->where[CG_CPU]].path;
		uint64_t quota = (uint64_t)lim->cpu_millis * 100; /* period 100000 us */
		if (cg->dir[cg->where[CG_CPU]].v2) {
			snprintf(v, sizeof(v), "%" PRIu64 " 100000", quota);
			r = cg_write(d, "cpu.max", v);
		} else {
			r = cg_write(d, "cpu.cfs_period_us", "100000");
			snprintf(v, sizeof(v), "%" PRIu64, quota);
			if (r >= 0)
				r = cg_write(d, "cpu.cfs_quota_us", v);
		}
		if (r < 0)
			return kiln_err_set(err, r, "cannot set the cpu limit in '%s': %s", d,
					    strerror(-r));
	}
	if (lim->pids && IN_PHASE(CG_PIDS)) {
		const char *d = cg->dir[cg->where[CG_PIDS]].path;
		snprintf(v, sizeof(v), "%" PRIu32, lim->pids);
		r = cg_write(d, "pids.max", v);
		if (r < 0)
			return kiln_err_set(err, r, "cannot set the pids limit in '%s': %s", d,
					    strerror(-r));
	}
#undef IN_PHASE
	return 0;
}

static int mkdir_parents(const char *path)
{
	char p[CG_PATH];
	snprintf(p, sizeof(p), "%s", path);
	char *slash = strrchr(p, '/');
	if (!slash || slash == p)
		return 0;
	*slash = '\0';
	struct stat st;
	if (stat(p, &st) == 0)
		return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
	return mkdir_p(p, 0755);
}

int cg_sandbox_create(struct cg_sandbox *cg, const struct sandbox_limits *lim, bool v2,
		      struct kiln_err *err)
{
	bool made[CG_MAX_DIRS] = {false};
	int r = 0;
	for (size_t i = 0; i < cg->n && r >= 0; i++) {
		if (cg->dir[i].v2 != v2)
			continue;
		const char *path = cg->dir[i].path;
		r = mkdir_parents(path);
		if (r < 0) {
			kiln_err_set(err, r, "cannot create the parents of cgroup '%s': %s", path,
				     strerror(-r));
			break;
		}
		if (v2 && (r = enable_v2_controllers(cg, cg->v2_mount, err)) < 0)
			break;
		if (mkdir(path, 0755) < 0) {
			r = -errno;
			kiln_err_set(err, r, "cannot create cgroup '%s': %s", path, strerror(-r));
			break;
		}
		made[i] = true;
	}
	if (r >= 0 && v2 && cg->v2_index >= 0) {
		cg->v2_fd = open(cg->dir[cg->v2_index].path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (cg->v2_fd < 0) {
			r = -errno;
			kiln_err_set(err, r, "cannot open cgroup '%s': %s",
				     cg->dir[cg->v2_index].path, strerror(-r));
		}
	}
	if (r >= 0 && lim)
		r = write_limits(cg, lim, v2, err);
	if (r < 0) {
		for (size_t i = 0; i < cg->n; i++)
			if (made[i])
				(void)rmdir(cg->dir[i].path);
		if (v2 && cg->v2_fd >= 0) {
			close(cg->v2_fd);
			cg->v2_fd = -1;
		}
	}
	return r;
}

int cg_sandbox_open_tasks(const struct cg_sandbox *cg, int *fds)
{
	int n = 0;
	for (size_t i = 0; i < cg->n; i++) {
		if (cg->dir[i].v2)
			continue;
		char path[CG_PATH + 8];
		snprintf(path, sizeof(path), "%s/tasks", cg->dir[i].path);
		int fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || n >= CG_MAX_V1) {
			int r = fd < 0 ? -errno : -E2BIG;
			if (fd >= 0)
				close(fd);
			while (n > 0)
				close(fds[--n]);
			return r;
		}
		fds[n++] = fd;
	}
	return n;
}

static void io_stat_sum(const char *text, bool v2, uint64_t *rd, uint64_t *wr)
{
	*rd = *wr = 0;
	for (const char *line = text; line && *line;) {
		const char *eol = strchr(line, '\n');
		if (v2) {
			const char *p = strstr(line, "rbytes=");
			if (p && (!eol || p < eol))
				*rd += strtoull(p + 7, NULL, 10);
			p = strstr(line, "wbytes=");
			if (p && (!eol || p < eol))
				*wr += strtoull(p + 7, NULL, 10);
		} else {
			/* "8:0 Read 4096" */
			const char *sp = strchr(line, ' ');
			if (sp && (!eol || sp < eol) && strncmp(line, "Total", 5) != 0) {
				if (strncmp(sp + 1, "Read ", 5) == 0)
					*rd += strtoull(sp + 6, NULL, 10);
				else if (strncmp(sp + 1, "Write ", 6) == 0)
					*wr += strtoull(sp + 7, NULL, 10);
			}
		}
		line = eol ? eol + 1 : NULL;
	}
}

uint64_t cg_sandbox_oom_kills(const struct cg_sandbox *cg)
{
	int m = cg->where[CG_MEMORY];
	if (m < 0)
		return 0;
	char buf[1024];
	uint64_t v = 0;
	bool v2 = cg->dir[m].v2;
	if (cg_read(cg->dir[m].path, v2 ? "memory.events" : "memory.oom_control", buf, sizeof(buf)) >=
	    0)
		(void)keyed_u64(buf, "oom_kill", &v);
	return v;
}

int cg_sandbox_stats(const struct cg_sandbox *cg, struct sandbox_stats *ret)
{
	struct sandbox_stats s = {0};
	char buf[4096];
	if (cg->v2_index >= 0 &&
	    cg_read(cg->dir[cg->v2_index].path, "cpu.stat", buf, sizeof(buf)) >= 0) {
		uint64_t u = 0, sy = 0;
		if (keyed_u64(buf, "user_usec", &u) >= 0 && keyed_u64(buf, "system_usec", &sy) >= 0) {
			s.cpu_user_ns = u * 1000;
			s.cpu_system_ns = sy * 1000;
			s.have_cpu = true;
		}
	}
	if (!s.have_cpu && cg->where[CG_CPUACCT] >= 0) {
		const char *d = cg->dir[cg->where[CG_CPUACCT]].path;
		if (cg_read_u64(d, "cpuacct.usage_user", &s.cpu_user_ns) >= 0 &&
		    cg_read_u64(d, "cpuacct.usage_sys", &s.cpu_system_ns) >= 0)
			s.have_cpu = true;
	}
	int m = cg->where[CG_MEMORY];
	if (m >= 0) {
		const char *d = cg->dir[m].path;
		bool v2 = cg->dir[m].v2;
		if (cg_read_u64(d, v2 ? "memory.current" : "memory.usage_in_bytes",
				&s.memory_current_bytes) >= 0) {
			s.have_memory = true;
			if (cg_read_u64(d, v2 ? "memory.peak" : "memory.max_usage_in_bytes",
					&s.memory_peak_bytes) < 0)
				s.memory_peak_bytes = s.memory_current_bytes;
		}
		s.oom_kills = cg_sandbox_oom_kills(cg);
	}
	int p = cg->where[CG_PIDS];
	if (p >= 0 && cg_read_u64(cg->dir[p].path, "pids.current", &s.pids_current) >= 0) {
		s.have_pids = true;
		if (cg_read_u64(cg->dir[p].path, "pids.peak", &s.pids_peak) < 0)
			s.pids_peak = s.pids_current;
	}
	int io = cg->where[CG_IO];
	if (io >= 0) {
		bool v2 = cg->dir[io].v2;
		if (cg_read(cg->dir[io].path, v2 ? "io.stat" : "blkio.throttle.io_service_bytes_recursive",
			    buf, sizeof(buf)) >= 0) {
			io_stat_sum(buf, v2, &s.io_read_bytes, &s.io_write_bytes);
			s.have_io = true;
		}
	}
	*ret = s;
	return 0;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* SIGKILLs every pid listed in dir/cgroup.procs; returns how many. */
static int kill_listed(const char *dir)
{
	char buf[16384];
	buf[0] = '\0';
	int r = cg_read(dir, "cgroup.procs", buf, sizeof(buf));
	if (r < 0)
		return r;
	int n = 0;
	for (char *p = buf; *p;) {
		char *end;
		long pid = strtol(p, &end, 10);
		if (end == p)
			break;
		if (pid > 0 && kill((pid_t)pid, SIGKILL) == 0)
			n++;
		p = end;
		while (*p == '\n')
			p++;
	}
	return n;
}

static int kill_dir(const char *dir, bool v2, bool freezer)
{
	if (v2) {
		int r = cg_write(dir, "cgroup.kill", "1");
		if (r != -ENOENT)
			return r;
		/* Before 5.14: freeze, kill, thaw. */
		(void)cg_write(dir, "cgroup.freeze", "1");
		for (int i = 0; i < 100 && kill_listed(dir) > 0; i++)
			;
		(void)cg_write(dir, "cgroup.freeze", "0");
		return 0;
	}
	if (freezer) {
		int r = cg_write(dir, "freezer.state", "FROZEN");
		if (r >= 0) {
			char st[32] = "";
			for (int i = 0; i < 1000; i++) {
				if (cg_read(dir, "freezer.state", st, sizeof(st)) < 0 ||
				    strncmp(st, "FROZEN", 6) == 0)
					break;
				sleep_ms(1);
			}
			(void)kill_listed(dir);
			(void)cg_write(dir, "freezer.state", "THAWED");
			return 0;
		}
	}
	/* No freezer: kill until nothing is left (a fork race can add pids). */
	for (int i = 0; i < 100; i++) {
		int n = kill_listed(dir);
		if (n <= 0)
			return n < 0 ? n : 0;
	}
	return -EBUSY;
}

int cg_sandbox_kill(const struct cg_sandbox *cg)
{
	if (cg->v2_index >= 0)
		return kill_dir(cg->dir[cg->v2_index].path, true, false);
	if (cg->where[CG_FREEZER] >= 0)
		return kill_dir(cg->dir[cg->where[CG_FREEZER]].path, false, true);
	if (cg->n > 0)
		return kill_dir(cg->dir[0].path, false, false);
	return 0;
}

static int rmdir_retry(const char *path)
{
	/* Tasks leave a cgroup a moment after they are reaped. */
	for (unsigned i = 0, wait = 1; i < 60; i++) {
		if (rmdir(path) == 0 || errno == ENOENT)
			return 0;
		if (errno != EBUSY)
			return -errno;
		sleep_ms(wait);
		if (wait < 50)
			wait *= 2;
	}
	return -EBUSY;
}

int cg_sandbox_remove(struct cg_sandbox *cg)
{
	int ret = 0;
	if (cg->v2_fd >= 0) {
		close(cg->v2_fd);
		cg->v2_fd = -1;
	}
	for (size_t i = 0; i < cg->n; i++) {
		int r = rmdir_retry(cg->dir[i].path);
		if (r < 0 && ret == 0)
			ret = r;
	}
	return ret;
}

int cg_dir_kill_and_remove(const char *path, bool v2)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	char probe[CG_PATH + 32];
	snprintf(probe, sizeof(probe), "%s/freezer.state", path);
	bool freezer = access(probe, F_OK) == 0;
	(void)kill_dir(path, v2, freezer);
	return rmdir_retry(path);
}
