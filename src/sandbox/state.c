/*
 * state: the records of live sandboxes in the state directory, and the
 * cleanup of what dead kiln processes left behind.
 *
 * Layout (the state dir is 0700):
 *
 *   <state>/sandboxes   a journal of 4 KiB slots, one per live sandbox: the
 *                       owner holds an OFD lock (fcntl F_OFD_SETLK) on its
 *                       slot through its own open file description; the slot
 *                       reads "kiln-sandbox 1 <id>" then "cgroup v1|v2 PATH"
 *                       lines, written before the directories are created,
 *                       and is zeroed when the sandbox is gone
 *   <state>/<id>.kept/  the writable layer of a --keep sandbox (on disk)
 *   <state>/.etc-mask-* the shared /etc whiteout layer of host mode
 *
 * No file is created or deleted per sandbox: on ext4, inode creation and
 * the directory operations around it cost more than everything else the
 * state dir does (measured with perf; docs/internals/sandbox.md). Without
 * --keep the writable layer is a tmpfs the sandbox mounts over the state
 * dir itself, inside its own mount namespace.
 *
 * Nothing is ever mounted on the host: all of a sandbox's mounts live in its
 * own mount namespace and vanish with it. So a leftover is at most a slot
 * and cgroups, both removable by the next start: a non-empty slot whose lock
 * can be taken belongs to a dead process (OFD locks die with their last fd).
 */
#include "sandbox-internal.h"
#include "sandbox/remote-argv.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <time.h>

#define STATE_FILE "sandboxes"
#define SLOT_SIZE 4096
#define MAX_SLOTS 65536

char *sandbox_state_dir_for(uid_t uid, const char *xdg_runtime_dir)
{
	char dir[PATH_MAX];
	if (sandbox_state_dir_into(dir, sizeof(dir), uid, xdg_runtime_dir) == 0)
		return xstrdup(dir);
	/* Only a $XDG_RUNTIME_DIR of about PATH_MAX bytes gets here. */
	return xasprintf("%s/kiln/sandbox", xdg_runtime_dir);
}

char *sandbox_default_state_dir(void)
{
	return sandbox_state_dir_for(geteuid(), getenv("XDG_RUNTIME_DIR"));
}

static int slot_lock(int fd, uint32_t slot, short type)
{
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET,
			   .l_start = (off_t)slot * SLOT_SIZE, .l_len = SLOT_SIZE};
	return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

int state_entry_create(const char *state_dir, const char *id, const struct cg_sandbox *cg,
		       bool keep, uid_t uid, gid_t gid, struct state_entry *ret, struct kiln_err *err)
{
	char *rec = xcalloc(1, SLOT_SIZE);
	size_t len = (size_t)snprintf(rec, SLOT_SIZE, "kiln-sandbox 1 %s\n", id);
	for (size_t i = 0; cg && i < cg->n && len < SLOT_SIZE; i++)
		len += (size_t)snprintf(rec + len, SLOT_SIZE - len, "cgroup %s %s\n",
					cg->dir[i].v2 ? "v2" : "v1", cg->dir[i].path);
	if (len >= SLOT_SIZE) {
		free(rec);
		return kiln_err_set(err, -ENAMETOOLONG,
				    "the cgroup paths of sandbox %s do not fit its state record", id);
	}
	_cleanup_free_ char *path = path_join(state_dir, STATE_FILE);
	/* Our own open file description: the slot lock is ours alone. */
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	int r = fd < 0 ? -errno : -EAGAIN;
	uint32_t slot = 0;
	for (; fd >= 0 && slot < MAX_SLOTS; slot++) {
		r = slot_lock(fd, slot, F_WRLCK);
		if (r != -EAGAIN && r != -EACCES)
			break;
	}
	bool locked = r >= 0;
	if (locked && pwrite(fd, rec, SLOT_SIZE, (off_t)slot * SLOT_SIZE) != SLOT_SIZE)
		r = -EIO;
	free(rec);
	char *kept = NULL;
	if (r >= 0 && keep) {
		/* The kept layer, owned by the sandbox's root. */
		kept = xasprintf("%s/%s.kept", state_dir, id);
		if (mkdir(kept, 0700) < 0 || (geteuid() == 0 && chown(kept, uid, gid) < 0))
			r = -errno;
	}
	if (r < 0) {
		if (fd >= 0) {
			static const char zero[SLOT_SIZE];
			if (locked)
				(void)!pwrite(fd, zero, SLOT_SIZE, (off_t)slot * SLOT_SIZE);
			close(fd);
		}
		if (kept)
			(void)rmdir(kept);
		free(kept);
		return kiln_err_set(err, r, "cannot record sandbox %s in '%s': %s", id, path,
				    r == -EAGAIN ? "all slots are in use" : strerror(-r));
	}
	ret->fd = fd;
	ret->slot = slot;
	ret->stage = kept ? kept : xstrdup(state_dir);
	return 0;
}

int state_entry_remove(struct state_entry *e, bool keep)
{
	(void)keep; /* a kept layer stays in <id>.kept */
	int r = 0;
	if (e->fd >= 0) {
		static const char zero[SLOT_SIZE];
		if (pwrite(e->fd, zero, SLOT_SIZE, (off_t)e->slot * SLOT_SIZE) != SLOT_SIZE)
			r = -EIO;
		close(e->fd); /* releases the lock */
	}
	e->fd = -1;
	free(e->stage);
	e->stage = NULL;
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

/* Cleans one slot we hold the lock of: its cgroups, then the record.
 * Returns 1 if it held a dead sandbox. */
static int cleanup_slot(int fd, uint32_t slot, char *rec, const char *cgroup_root)
{
	rec[SLOT_SIZE - 1] = '\0';
	char id[17] = "";
	if (strncmp(rec, "kiln-sandbox 1 ", 15) != 0 || strlen(rec) < 31 || rec[31] != '\n')
		goto zero; /* garbage: free the slot */
	memcpy(id, rec + 15, 16);
	if (!valid_id(id))
		goto zero;
	int r = 0;
	for (char *line = rec + 32; *line;) {
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
		if (!eol)
			break;
		line = eol + 1;
	}
	if (r < 0)
		return r; /* keep the record: the next start tries again */
zero:;
	static const char zero[SLOT_SIZE];
	if (pwrite(fd, zero, SLOT_SIZE, (off_t)slot * SLOT_SIZE) != SLOT_SIZE)
		return -EIO;
	return id[0] ? 1 : 0;
}

int sandbox_cleanup_leftovers(const char *state_dir, const char *cgroup_root)
{
	_cleanup_free_ char *def = state_dir ? NULL : sandbox_default_state_dir();
	if (!state_dir)
		state_dir = def;
	_cleanup_free_ char *path = path_join(state_dir, STATE_FILE);
	_cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	uint32_t slots = (uint32_t)MIN((uint64_t)st.st_size / SLOT_SIZE, (uint64_t)MAX_SLOTS);
	char *rec = xmalloc(SLOT_SIZE);
	int removed = 0, ret = 0;
	for (uint32_t slot = 0; slot < slots; slot++) {
		if (pread(fd, rec, SLOT_SIZE, (off_t)slot * SLOT_SIZE) != SLOT_SIZE || rec[0] == '\0')
			continue;
		if (slot_lock(fd, slot, F_WRLCK) < 0)
			continue; /* alive */
		/* Re-read under the lock: the owner may have just zeroed it. */
		if (pread(fd, rec, SLOT_SIZE, (off_t)slot * SLOT_SIZE) == SLOT_SIZE && rec[0]) {
			int r = cleanup_slot(fd, slot, rec, cgroup_root);
			if (r > 0)
				removed++;
			else if (r < 0 && ret == 0)
				ret = r;
		}
		(void)slot_lock(fd, slot, F_UNLCK);
	}
	free(rec);
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
