/*
 * base: the helpers every kiln module shares.
 *
 * Errors (struct kiln_err), logging (one line per event, logfmt or JSON lines
 * on stderr), growable buffers, time, size/duration parsing and file helpers.
 * Nothing here knows about jobs, HTTP or sandboxes.
 *
 * Conventions (docs/ARCHITECTURE.md, ../shared/CONVENTIONS.md):
 *  - functions return >= 0 on success and -errno on failure;
 *  - allocation failure aborts (x* family), so callers never check for NULL;
 *  - output parameters are ret_* and are written only on success.
 */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

/* ---- compiler helpers ---------------------------------------------------- */

#define KILN_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define KILN_NORETURN __attribute__((noreturn))
#define KILN_UNUSED __attribute__((unused))
#define KILN_WUR __attribute__((warn_unused_result))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- allocation: failure aborts ------------------------------------------ */

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
/* Grows an array of *cap elements of size `size` to hold at least `need`. */
void *xgrow(void *p, size_t *cap, size_t need, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) KILN_PRINTF(1, 2);
char *xvasprintf(const char *fmt, va_list ap) KILN_PRINTF(1, 0);

/* ---- cleanup ------------------------------------------------------------- */

static inline void freep(void *p) { free(*(void **)p); }
static inline void closep(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}
static inline void fclosep(FILE **f)
{
	if (*f)
		fclose(*f);
}

#define _cleanup_(fn) __attribute__((cleanup(fn)))
#define _cleanup_free_ _cleanup_(freep)
#define _cleanup_close_ _cleanup_(closep)
#define _cleanup_fclose_ _cleanup_(fclosep)

/* Hands ownership on: returns the value and clears the variable. */
#define TAKE_PTR(p)                                                            \
	({                                                                     \
		__typeof__(p) _tp = (p);                                       \
		(p) = NULL;                                                    \
		_tp;                                                           \
	})
#define TAKE_FD(fd)                                                            \
	({                                                                     \
		int _tf = (fd);                                                \
		(fd) = -1;                                                     \
		_tf;                                                           \
	})

/* ---- errors -------------------------------------------------------------- */

/*
 * A human-readable error: filled by the callee, on the caller's stack. `code`
 * is a negative errno; `msg` is a sentence without a trailing newline that
 * says what went wrong and, where obvious, what to do.
 */
struct kiln_err {
	int code;
	char msg[512];
};

/* Sets err (if not NULL) and returns code (a negative errno). */
int kiln_err_set(struct kiln_err *err, int code, const char *fmt, ...) KILN_PRINTF(3, 4);
/* Prefixes err->msg with "<context>: " and returns err->code. */
int kiln_err_prefix(struct kiln_err *err, const char *fmt, ...) KILN_PRINTF(2, 3);

/* ---- logging ------------------------------------------------------------- */

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };
enum log_format { LOG_FORMAT_LOGFMT, LOG_FORMAT_JSON };

extern enum log_level log_max_level;

void log_set_level(enum log_level level);
void log_set_format(enum log_format fmt);
/* Parses "error|warn|info|debug" or "logfmt|json"; -EINVAL if unknown. */
int log_level_from_string(const char *s, enum log_level *ret);
int log_format_from_string(const char *s, enum log_format *ret);

/*
 * Writes one line to stderr. `fmt` expands to a message followed by
 * logfmt fields, e.g. log_info("lease granted job=%s agent=%s", id, a): the
 * text before the first `key=` is the message. Values with spaces must be
 * quoted by the caller ("key=\"%s\""). Returns `r`, so that
 * `return log_error_errno(r, ...)` logs and returns in one line.
 */
int log_emit(enum log_level level, int r, const char *fmt, ...) KILN_PRINTF(3, 4);

#define log_at(level, r, ...)                                                  \
	((level) <= log_max_level ? log_emit((level), (r), __VA_ARGS__) : (r))
#define log_error(...) ((void)log_at(LOG_ERROR, 0, __VA_ARGS__))
#define log_warn(...) ((void)log_at(LOG_WARN, 0, __VA_ARGS__))
#define log_info(...) ((void)log_at(LOG_INFO, 0, __VA_ARGS__))
#define log_debug(...) ((void)log_at(LOG_DEBUG, 0, __VA_ARGS__))
#define log_error_errno(r, ...) log_at(LOG_ERROR, (r), __VA_ARGS__)

/*
 * A value for a key=value field: s itself when it is non-empty and has no
 * space, quote, backslash, '=' or control character; else s quoted and
 * escaped into buf (cut to fit n). For names and messages users control:
 * log_info("agent registered agent=%s", log_field(name, b, sizeof(b))).
 */
const char *log_field(const char *s, char *buf, size_t n);
/*
 * A library's own log message (libmicrohttpd's logger callback): at debug
 * level, as `SOURCE msg=...` with trailing line breaks dropped.
 */
__attribute__((format(printf, 2, 0))) void log_debug_library(const char *source,
                                                             const char *fmt, va_list ap);
#define log_warn_errno(r, ...) log_at(LOG_WARN, (r), __VA_ARGS__)

/* ---- buffers ------------------------------------------------------------- */

/* A growable byte buffer, always NUL-terminated after `len` once allocated. */
struct buf {
	char *data;
	size_t len;
	size_t cap;
};

#define BUF_INIT {NULL, 0, 0}

void buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *data, size_t len);
void buf_puts(struct buf *b, const char *s);
void buf_putc(struct buf *b, char c);
void buf_printf(struct buf *b, const char *fmt, ...) KILN_PRINTF(2, 3);
void buf_vprintf(struct buf *b, const char *fmt, va_list ap) KILN_PRINTF(2, 0);
void buf_reset(struct buf *b);
/* Frees the storage; the buffer can be reused afterwards. */
void buf_release(struct buf *b);
/* Returns the (NUL-terminated, possibly empty) storage; the caller frees it. */
char *buf_steal(struct buf *b);
/* Appends s as a JSON string literal (with quotes, escaped). */
void buf_put_json_string(struct buf *b, const char *s, size_t len);

/* ---- strings ------------------------------------------------------------- */

static inline bool streq(const char *a, const char *b) { return strcmp(a, b) == 0; }
bool startswith(const char *s, const char *prefix);
bool endswith(const char *s, const char *suffix);
/* Levenshtein distance, capped at `cap` (returns cap when larger). */
size_t str_edit_distance(const char *a, const char *b, size_t cap);
/* True when the bytes are valid UTF-8 (no overlongs, no surrogates). */
bool utf8_valid(const char *s, size_t len);
/* The length of the longest valid UTF-8 prefix (== len when all is valid). */
size_t utf8_valid_prefix(const char *s, size_t len);
/* Appends s with every byte that is not part of valid UTF-8 replaced by
 * U+FFFD: text from users or programs, made safe for JSON and terminals. */
void buf_put_utf8_lossy(struct buf *b, const char *s, size_t len);
/* The code point at *p, which must start valid UTF-8; advances *p past it. */
uint32_t utf8_next(const unsigned char **p);
/* Parses a whole decimal integer in [min, max]; -EINVAL / -ERANGE. */
int parse_int64(const char *s, int64_t min, int64_t max, int64_t *ret);

/* ---- time ---------------------------------------------------------------- */

#define NSEC_PER_USEC 1000ULL
#define NSEC_PER_MSEC 1000000ULL
#define NSEC_PER_SEC 1000000000ULL

uint64_t now_mono_ns(void);
uint64_t now_real_ns(void);
/* Formats a wall-clock time as RFC 3339 UTC with milliseconds (24 chars + NUL). */
void format_rfc3339(uint64_t real_ns, char out[32]);

/*
 * Parses a duration: a number with unit ms, s, m, h or d ("30s", "1.5h",
 * "1h30m"). A bare number is rejected (the unit is always explicit).
 * Returns -EINVAL if malformed, -ERANGE above 365 days.
 */
int parse_duration_ms(const char *s, uint64_t *ret_ms);
/* Writes a duration as the shortest of "250ms", "30s", "10m", "2h", "1h30m". */
void format_duration_ms(uint64_t ms, char out[32]);

/*
 * Parses a size: a number with unit Ki/Mi/Gi/Ti (powers of 1024), K/M/G/T
 * (powers of 1000) or none (bytes): "512Mi", "4Gi", "1.5G". Returns -EINVAL if
 * malformed, -ERANGE above 1 PiB.
 */
int parse_size(const char *s, uint64_t *ret_bytes);
/* Writes a size with the largest binary unit that keeps it whole ("512Mi"). */
void format_size(uint64_t bytes, char out[32]);

/* ---- files --------------------------------------------------------------- */

/*
 * Reads a whole file (or stdin for "-") into *ret (NUL-terminated). Files
 * larger than max_size fail with -EFBIG before their contents are read.
 */
int read_file(const char *path, size_t max_size, struct buf *ret);
/* Reads all of fd until EOF, at most max_size bytes (-EFBIG beyond). */
int read_fd_all(int fd, size_t max_size, struct buf *ret);
/* Writes all bytes, retrying on EINTR and short writes. */
int write_all(int fd, const void *data, size_t len);
/* Writes a file atomically (temp file, fsync, rename, fsync dir). */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);
/* mkdir -p with the given mode for created directories. */
int mkdir_p(const char *path, mode_t mode);
/*
 * Removes a tree like rm -rf, never crossing into another filesystem (a
 * mount point inside the tree fails with -EBUSY rather than being emptied).
 * A missing path is success.
 */
int rm_rf(const char *path);
/* Sets O_CLOEXEC|O_NONBLOCK etc. */
int fd_set_nonblock(int fd, bool on);
/* Joins a directory and a name with one '/'; the caller frees. */
char *path_join(const char *dir, const char *name);

/* ---- listen addresses (net.c) ---- */
/*
 * Parses HOST:PORT or [IPV6]:PORT (an empty HOST: every address; with
 * allow_http an "http://" prefix is skipped) into *ss (and *len). Errors
 * read "WHAT 'LISTEN': ...", the missing-port one giving EXAMPLE.
 */
int listen_addr_parse(const char *listen, const char *what, const char *example,
                      bool allow_http, struct sockaddr_storage *ss, socklen_t *len,
                      struct kiln_err *err);
/* "HOST:PORT" or "[IPV6]:PORT" of an IPv4/IPv6 address, else "?". */
void sockaddr_format(const struct sockaddr_storage *ss, char *out, size_t n);

/* Last: poisons unsafe libc calls for every file that includes base.h. */
#include "banned.h"
