/*
 * wire-fuzz: the agent's HTTP/1.1 answer reader (src/agent/wire.c) on
 * arbitrary bytes, through its real read path (a memfd holding the input
 * stands in for the socket: the bytes, then EOF).
 * Properties (abort otherwise): an answer is either refused (-EPROTO with a
 * message, or -EPIPE when cut short) or accepted with a status in 100..599
 * and the body the headers framed, checked here independently: none for
 * 204/304, the Content-Length bytes (all Content-Lengths the same), the
 * de-chunked bytes, or the rest of the input; never over the body limit.
 */
#include "agent/agent-internal.h"

#include <ctype.h>
#include <strings.h>
#include <sys/mman.h>

#define MAX_BODY 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *find(const char *p, const char *end, const char *s)
{
	return memmem(p, (size_t)(end - p), s, strlen(s));
}

/* Trimmed value of the header line [p, eol) if it is `name`. */
static bool field(const char *p, const char *eol, const char *name, const char **v,
		  const char **ve)
{
	size_t nl = strlen(name);
	if ((size_t)(eol - p) <= nl || strncasecmp(p, name, nl) != 0 || p[nl] != ':')
		return false;
	*v = p + nl + 1;
	*ve = eol;
	while (*v < *ve && (**v == ' ' || **v == '\t'))
		(*v)++;
	while (*ve > *v && ((*ve)[-1] == '\r' || (*ve)[-1] == ' ' || (*ve)[-1] == '\t'))
		(*ve)--;
	return true;
}

/* Strict de-chunking of [p, end) into out; false if not well-formed. */
static bool dechunk(const char *p, const char *end, struct buf *out)
{
	for (;;) {
		const char *le = find(p, end, "\r\n");
		if (!le)
			return false;
		uint64_t n = 0;
		const char *q = p;
		for (; q < le && isxdigit((unsigned char)*q); q++) {
			if (n >> 56)
				return false;
			n = n * 16 + (uint64_t)(isdigit((unsigned char)*q) ? *q - '0'
								 : (tolower(*q) - 'a' + 10));
		}
		if (q == p || (q < le && *q != ';' && *q != ' ' && *q != '\t'))
			return false;
		p = le + 2;
		if (n == 0) {
			for (;;) { /* trailers, then an empty line */
				le = find(p, end, "\r\n");
				if (!le)
					return false;
				bool empty = le == p;
				p = le + 2;
				if (empty)
					return true;
			}
		}
		if ((uint64_t)(end - p) < n + 2 || p[n] != '\r' || p[n + 1] != '\n')
			return false;
		buf_append(out, p, (size_t)n);
		p += n + 2;
	}
}

static void check_accepted(const char *d, size_t size, long status, const struct buf *body)
{
	if (status < 100 || status > 599 || body->len > MAX_BODY)
		abort();
	const char *end = d + size, *hs = d, *he;
	for (;;) { /* skip interim 1xx answers as the reader does */
		he = find(hs, end, "\r\n\r\n");
		if (!he || end - hs < 13)
			abort();
		he += 4;
		long s = (hs[9] - '0') * 100 + (hs[10] - '0') * 10 + (hs[11] - '0');
		if (memcmp(hs, "HTTP/1.", 7) != 0 || s < 100 || s > 599)
			abort();
		if (s >= 200 || s == 101) {
			if (s != status)
				abort();
			break;
		}
		hs = he;
	}
	const char *te = NULL, *tee = NULL, *cl = NULL, *cle = NULL;
	bool cl_differ = false;
	for (const char *p = (const char *)memchr(hs, '\n', (size_t)(he - hs)) + 1; p < he;) {
		const char *eol = memchr(p, '\n', (size_t)(he - p)), *v, *ve;
		if (!te && field(p, eol, "Transfer-Encoding", &v, &ve)) {
			te = v;
			tee = ve;
		}
		if (field(p, eol, "Content-Length", &v, &ve)) {
			if (cl && ((ve - v) != (cle - cl) || memcmp(v, cl, (size_t)(ve - v)) != 0))
				cl_differ = true;
			else if (!cl) {
				cl = v;
				cle = ve;
			}
		}
		p = eol + 1;
	}
	struct buf want = BUF_INIT;
	if (status == 204 || status == 304) {
		/* no body */
	} else if (te && tee - te == 7 && strncasecmp(te, "chunked", 7) == 0) {
		if (!dechunk(he, end, &want))
			abort();
	} else if (cl) {
		uint64_t n = 0;
		if (cl_differ) /* must have been refused */
			abort();
		for (const char *q = cl; q < cle; q++) {
			if (!isdigit((unsigned char)*q) || n > MAX_BODY)
				abort();
			n = n * 10 + (uint64_t)(*q - '0');
		}
		if (cl == cle || n > (uint64_t)(end - he))
			abort();
		buf_append(&want, he, (size_t)n);
	} else {
		buf_append(&want, he, (size_t)(end - he));
	}
	if (want.len != body->len || (want.len && memcmp(want.data, body->data, want.len) != 0))
		abort();
	buf_release(&want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 65536)
		return 0;
	int fd = memfd_create("wire-fuzz", MFD_CLOEXEC);
	if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || lseek(fd, 0, SEEK_SET))
		abort();
	long status = 0;
	bool keep = false;
	struct buf body = BUF_INIT;
	struct kiln_err err = {0};
	int r = wire_read_answer_fd(fd, MAX_BODY, &status, &body, &keep, &err);
	if (r == 0)
		check_accepted((const char *)data, size, status, &body);
	else if (!(r == -EPROTO && err.msg[0]) && r != -EPIPE)
		abort();
	buf_release(&body);
	return 0;
}
