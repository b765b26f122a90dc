/*
 * store-sqlite-vfs: "kiln-walbuf", a thin SQLite VFS over the default one
 * that gathers a commit's WAL frames into one write.
 *
 * SQLite writes each WAL frame as two write(2)s (a 24-byte header, then the
 * page), so a group commit touching 16 pages costs 32 syscalls before its
 * fsync, all on the writer's critical path. Here contiguous writes to the
 * WAL file are appended to a buffer and written with one pwrite when
 * anything else happens to the file.
 *
 * Invariants (why durability and readers are unaffected):
 *  - the buffer is written before the WAL file is synced, read, truncated,
 *    sized, controlled or closed, and before any write that does not extend
 *    it: SQLite never observes the file without its own writes;
 *  - the buffer is written before the database file's xShmBarrier, which
 *    SQLite calls in walIndexWriteHdr before it publishes a new end of log
 *    to the wal-index: a reader (another connection, its own file
 *    descriptor) can only look at frames that are already in the file;
 *  - a failed write is returned by the call that flushes (the commit's
 *    xSync at the latest), so the COMMIT fails and the writer stops
 *    (store.c fail-stop), exactly as a failed pwrite would.
 * Only the writer connection of a durable store uses this VFS (conn_open);
 * every other call goes straight to the default VFS.
 */
#include "store-sqlite.h"

#include <stdatomic.h>

#define WALBUF_NAME "kiln-walbuf"
#define WALBUF_MAX (4 << 20) /* bigger writes (a huge batch) go straight through */
#define WALBUF_CHUNK (124 << 10)

struct wb_file {
	sqlite3_file base;
	sqlite3_file *real; /* the default VFS's file, right after this struct */
	bool wal;
	/* The database file: the WAL file of the same connection (so of the same
	 * thread), linked at the WAL's open (sqlite3_database_file_object). */
	struct wb_file *wal_file;
	/* The WAL file: pending bytes [off, off + len). */
	char *buf;
	size_t len, cap;
	sqlite3_int64 off;
	struct wb_file *db; /* the database file it belongs to, or NULL */
};

static sqlite3_vfs *root;
static sqlite3_vfs walbuf_vfs;
static atomic_uint_fast64_t walbuf_writes; /* flushes of a buffer (tests) */

static struct wb_file *wb(sqlite3_file *f) { return (struct wb_file *)f; }

static int wb_flush(struct wb_file *f)
{
	if (!f->len)
		return SQLITE_OK;
	size_t len = f->len;
	f->len = 0;
	atomic_fetch_add_explicit(&walbuf_writes, 1, memory_order_relaxed);
	/* The unix VFS masks a write's length with 0x1ffff (it only ever writes a
	 * page): give it at most WALBUF_CHUNK bytes at a time. */
	for (size_t done = 0; done < len;) {
		size_t n = MIN(len - done, (size_t)WALBUF_CHUNK);
		int rc = f->real->pMethods->xWrite(f->real, f->buf + done, (int)n,
						   f->off + (sqlite3_int64)done);
		if (rc != SQLITE_OK)
			return rc;
		done += n;
	}
	return SQLITE_OK;
}

static int flush_wal_of(struct wb_file *f)
{
	return f->wal ? wb_flush(f) : f->wal_file ? wb_flush(f->wal_file) : SQLITE_OK;
}

static int wb_close(sqlite3_file *file)
{
	struct wb_file *f = wb(file);
	int rc = flush_wal_of(f);
	if (f->wal && f->db)
		f->db->wal_file = NULL;
	if (!f->wal && f->wal_file)
		f->wal_file->db = NULL;
	int rc2 = f->real->pMethods->xClose(f->real);
	free(f->buf);
	return rc != SQLITE_OK ? rc : rc2;
}

static int wb_read(sqlite3_file *file, void *p, int amt, sqlite3_int64 off)
{
	struct wb_file *f = wb(file);
	int rc = wb_flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, p, amt, off);
}

static int wb_write(sqlite3_file *file, const void *p, int amt, sqlite3_int64 off)
{
	struct wb_file *f = wb(file);
	if (!f->wal)
		return f->real->pMethods->xWrite(f->real, p, amt, off);
	if (f->len && (off != f->off + (sqlite3_int64)f->len || f->len + (size_t)amt > WALBUF_MAX)) {
		int rc = wb_flush(f);
		if (rc != SQLITE_OK)
			return rc;
	}
	if ((size_t)amt > WALBUF_MAX)
		return f->real->pMethods->xWrite(f->real, p, amt, off);
	if (!f->len)
		f->off = off;
	if (f->len + (size_t)amt > f->cap) {
		size_t cap = f->cap ? f->cap : 64 * 1024;
		while (cap < f->len + (size_t)amt)
			cap *= 2;
		f->buf = xrealloc(f->buf, cap);
		f->cap = cap;
	}
	memcpy(f->buf + f->len, p, (size_t)amt);
	f->len += (size_t)amt;
	return SQLITE_OK;
}

static int wb_truncate(sqlite3_file *file, sqlite3_int64 size)
{
	struct wb_file *f = wb(file);
	int rc = wb_flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int wb_sync(sqlite3_file *file, int flags)
{
	struct wb_file *f = wb(file);
	int rc = wb_flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int wb_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
	struct wb_file *f = wb(file);
	int rc = wb_flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

static int wb_lock(sqlite3_file *file, int l)
{
	return wb(file)->real->pMethods->xLock(wb(file)->real, l);
}

static int wb_unlock(sqlite3_file *file, int l)
{
	return wb(file)->real->pMethods->xUnlock(wb(file)->real, l);
}

static int wb_check_reserved(sqlite3_file *file, int *out)
{
	return wb(file)->real->pMethods->xCheckReservedLock(wb(file)->real, out);
}

static int wb_file_control(sqlite3_file *file, int op, void *arg)
{
	struct wb_file *f = wb(file);
	int rc = flush_wal_of(f);
	if (rc != SQLITE_OK)
		return rc;
	rc = f->real->pMethods->xFileControl(f->real, op, arg);
	/* SQLITE_FCNTL_VFSNAME: say we are here (as the shims in SQLite do). */
	if (op == SQLITE_FCNTL_VFSNAME && rc == SQLITE_OK && arg) {
		char **name = arg;
		char *n = sqlite3_mprintf("%s/%z", WALBUF_NAME, *name);
		if (n)
			*name = n;
	}
	return rc;
}

static int wb_sector_size(sqlite3_file *file)
{
	return wb(file)->real->pMethods->xSectorSize(wb(file)->real);
}

static int wb_device_characteristics(sqlite3_file *file)
{
	return wb(file)->real->pMethods->xDeviceCharacteristics(wb(file)->real);
}

static int wb_shm_map(sqlite3_file *file, int pg, int pgsz, int extend, void volatile **pp)
{
	sqlite3_file *r = wb(file)->real;
	return r->pMethods->iVersion >= 2 ? r->pMethods->xShmMap(r, pg, pgsz, extend, pp)
					  : SQLITE_IOERR_SHMMAP;
}

static int wb_shm_lock(sqlite3_file *file, int offset, int n, int flags)
{
	sqlite3_file *r = wb(file)->real;
	return r->pMethods->iVersion >= 2 ? r->pMethods->xShmLock(r, offset, n, flags)
					  : SQLITE_IOERR_SHMLOCK;
}

static void wb_shm_barrier(sqlite3_file *file)
{
	struct wb_file *f = wb(file);
	/* A new end of log may be published right after this: its frames must be
	 * in the file first. (In a durable commit the WAL's xSync came first and
	 * the buffer is empty; this is the safety net.) xShmBarrier cannot
	 * return an error, and a reader must never be shown frames that are not
	 * there: a failed write stops the process, like a failed commit. */
	if (f->wal_file && f->wal_file->len) {
		int rc = wb_flush(f->wal_file);
		if (rc != SQLITE_OK) {
			log_error("sqlite WAL write failed, stopping error=\"%s\"", sqlite3_errstr(rc));
			abort();
		}
	}
	if (f->real->pMethods->iVersion >= 2)
		f->real->pMethods->xShmBarrier(f->real);
}

static int wb_shm_unmap(sqlite3_file *file, int del)
{
	sqlite3_file *r = wb(file)->real;
	return r->pMethods->iVersion >= 2 ? r->pMethods->xShmUnmap(r, del) : SQLITE_OK;
}

static int wb_fetch(sqlite3_file *file, sqlite3_int64 off, int amt, void **pp)
{
	struct wb_file *f = wb(file);
	*pp = NULL;
	int rc = wb_flush(f);
	if (rc != SQLITE_OK || f->real->pMethods->iVersion < 3)
		return rc;
	return f->real->pMethods->xFetch(f->real, off, amt, pp);
}

static int wb_unfetch(sqlite3_file *file, sqlite3_int64 off, void *p)
{
	sqlite3_file *r = wb(file)->real;
	return r->pMethods->iVersion >= 3 ? r->pMethods->xUnfetch(r, off, p) : SQLITE_OK;
}

static const sqlite3_io_methods wb_methods = {
	.iVersion = 3,
	.xClose = wb_close,
	.xRead = wb_read,
	.xWrite = wb_write,
	.xTruncate = wb_truncate,
	.xSync = wb_sync,
	.xFileSize = wb_file_size,
	.xLock = wb_lock,
	.xUnlock = wb_unlock,
	.xCheckReservedLock = wb_check_reserved,
	.xFileControl = wb_file_control,
	.xSectorSize = wb_sector_size,
	.xDeviceCharacteristics = wb_device_characteristics,
	.xShmMap = wb_shm_map,
	.xShmLock = wb_shm_lock,
	.xShmBarrier = wb_shm_barrier,
	.xShmUnmap = wb_shm_unmap,
	.xFetch = wb_fetch,
	.xUnfetch = wb_unfetch,
};

static int wb_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags,
		   int *out_flags)
{
	(void)vfs;
	struct wb_file *f = wb(file);
	memset(f, 0, sizeof(*f));
	f->real = (sqlite3_file *)(f + 1);
	int rc = root->xOpen(root, name, f->real, flags, out_flags);
	if (rc != SQLITE_OK) {
		/* SQLite calls xClose only when pMethods is set. */
		if (f->real->pMethods)
			f->real->pMethods->xClose(f->real);
		f->base.pMethods = NULL;
		return rc;
	}
	f->base.pMethods = &wb_methods;
	if (name && (flags & SQLITE_OPEN_WAL)) {
		/* Buffer only a WAL whose database file is ours, so that its
		 * xShmBarrier can write the buffer before anything is published. */
		sqlite3_file *dbf = sqlite3_database_file_object(name);
		if (dbf && dbf->pMethods == &wb_methods && !wb(dbf)->wal_file) {
			wb(dbf)->wal_file = f;
			f->db = wb(dbf);
			f->wal = true;
		}
	}
	return SQLITE_OK;
}

static int wb_delete(sqlite3_vfs *v, const char *name, int sync_dir)
{
	(void)v;
	return root->xDelete(root, name, sync_dir);
}

static int wb_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
	(void)v;
	return root->xAccess(root, name, flags, out);
}

static int wb_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out)
{
	(void)v;
	return root->xFullPathname(root, name, n, out);
}

static void *wb_dlopen(sqlite3_vfs *v, const char *name)
{
	(void)v;
	return root->xDlOpen(root, name);
}

static void wb_dlerror(sqlite3_vfs *v, int n, char *msg)
{
	(void)v;
	root->xDlError(root, n, msg);
}

static void (*wb_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void)
{
	(void)v;
	return root->xDlSym(root, h, sym);
}

static void wb_dlclose(sqlite3_vfs *v, void *h)
{
	(void)v;
	root->xDlClose(root, h);
}

static int wb_randomness(sqlite3_vfs *v, int n, char *out)
{
	(void)v;
	return root->xRandomness(root, n, out);
}

static int wb_sleep(sqlite3_vfs *v, int us)
{
	(void)v;
	return root->xSleep(root, us);
}

static int wb_current_time(sqlite3_vfs *v, double *t)
{
	(void)v;
	return root->xCurrentTime(root, t);
}

static int wb_last_error(sqlite3_vfs *v, int n, char *msg)
{
	(void)v;
	return root->xGetLastError ? root->xGetLastError(root, n, msg) : 0;
}

static int wb_current_time64(sqlite3_vfs *v, sqlite3_int64 *t)
{
	(void)v;
	if (root->iVersion >= 2 && root->xCurrentTimeInt64)
		return root->xCurrentTimeInt64(root, t);
	double d = 0;
	int rc = root->xCurrentTime(root, &d);
	*t = (sqlite3_int64)(d * 86400000.0);
	return rc;
}

static pthread_once_t walbuf_once = PTHREAD_ONCE_INIT;
static bool walbuf_ok;

static void walbuf_register(void)
{
	root = sqlite3_vfs_find(NULL);
	if (!root)
		return;
	walbuf_vfs = (sqlite3_vfs){
		.iVersion = 2,
		.szOsFile = (int)sizeof(struct wb_file) + root->szOsFile,
		.mxPathname = root->mxPathname,
		.zName = WALBUF_NAME,
		.xOpen = wb_open,
		.xDelete = wb_delete,
		.xAccess = wb_access,
		.xFullPathname = wb_full_pathname,
		.xDlOpen = wb_dlopen,
		.xDlError = wb_dlerror,
		.xDlSym = wb_dlsym,
		.xDlClose = wb_dlclose,
		.xRandomness = wb_randomness,
		.xSleep = wb_sleep,
		.xCurrentTime = wb_current_time,
		.xGetLastError = wb_last_error,
		.xCurrentTimeInt64 = wb_current_time64,
	};
	walbuf_ok = sqlite3_vfs_register(&walbuf_vfs, 0) == SQLITE_OK;
}

uint64_t sq_walbuf_writes(void) { return atomic_load(&walbuf_writes); }

const char *sq_walbuf_vfs(void)
{
	pthread_once(&walbuf_once, walbuf_register);
	return walbuf_ok ? WALBUF_NAME : NULL;
}
