/*
 * mask: streaming secret masking for job output.
 *
 * Patterns: each secret value, its URL-encoded forms (upper- and lower-case
 * hex) and the stable middle of its base64 encoding at each of the three
 * byte alignments (the characters that do not depend on neighbouring bytes).
 *
 * Streaming invariant: after mask_write returns, every byte not yet released
 * lies in `held`, and held is shorter than the longest pattern, so a secret
 * split across any number of writes is still seen whole. Matching is
 * leftmost-longest over all patterns; a naive scan is fine because a job has
 * a handful of secrets and the scan is linear in the output times that.
 */
#include "agent.h"

struct mask {
	struct buf *patterns;
	size_t n, cap;
	size_t maxlen;
	bool first[256]; /* bytes a pattern can start with: others are copied fast */
	struct buf held;
};

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

struct mask *mask_new(void)
{
	return xcalloc(1, sizeof(struct mask));
}

void mask_free(struct mask *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n; i++)
		buf_release(&m->patterns[i]);
	free(m->patterns);
	buf_release(&m->held);
	free(m);
}

size_t mask_patterns(const struct mask *m)
{
	return m->n;
}

static void add_pattern(struct mask *m, const char *p, size_t len)
{
	if (len < MASK_MIN_SECRET)
		return;
	for (size_t i = 0; i < m->n; i++)
		if (m->patterns[i].len == len && memcmp(m->patterns[i].data, p, len) == 0)
			return;
	m->patterns = xgrow(m->patterns, &m->cap, m->n + 1, sizeof(*m->patterns));
	struct buf b = BUF_INIT;
	buf_append(&b, p, len);
	m->patterns[m->n++] = b;
	m->maxlen = MAX(m->maxlen, len);
	m->first[(unsigned char)p[0]] = true;
}

static void base64(const unsigned char *in, size_t len, struct buf *out)
{
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < len)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < len)
			v |= in[i + 2];
		buf_putc(out, b64chars[(v >> 18) & 63]);
		buf_putc(out, b64chars[(v >> 12) & 63]);
		buf_putc(out, i + 1 < len ? b64chars[(v >> 6) & 63] : '=');
		buf_putc(out, i + 2 < len ? b64chars[v & 63] : '=');
	}
}

/*
 * The base64 characters that depend only on the secret's bytes when it
 * starts `k` bytes into a 3-byte group. Character j of the encoding covers
 * bits [6j, 6j+6) of the byte stream; it is stable when those bits all lie
 * within [8k, 8(k+len)).
 */
static void add_base64_forms(struct mask *m, const char *value, size_t len)
{
	for (size_t k = 0; k < 3; k++) {
		unsigned char *tmp = xmalloc(len + k);
		memset(tmp, 0, k);
		memcpy(tmp + k, value, len);
		struct buf enc = BUF_INIT;
		base64(tmp, len + k, &enc);
		free(tmp);
		size_t first = (8 * k + 5) / 6;          /* ceil(8k / 6) */
		size_t end = (8 * (k + len)) / 6;        /* floor(8(k+len) / 6) */
		if (end > first && end - first >= 4)
			add_pattern(m, enc.data + first, end - first);
		buf_release(&enc);
	}
}

static void add_url_forms(struct mask *m, const char *value, size_t len)
{
	static const char *const hexes[] = {"0123456789ABCDEF", "0123456789abcdef"};
	for (size_t h = 0; h < 2; h++) {
		struct buf enc = BUF_INIT;
		bool changed = false;
		for (size_t i = 0; i < len; i++) {
			unsigned char c = (unsigned char)value[i];
			bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
					  (c >= '0' && c <= '9') || c == '-' || c == '_' ||
					  c == '.' || c == '~';
			if (unreserved) {
				buf_putc(&enc, (char)c);
			} else {
				char e[3] = {'%', hexes[h][c >> 4], hexes[h][c & 15]};
				buf_append(&enc, e, 3);
				changed = true;
			}
		}
		if (changed)
			add_pattern(m, enc.data, enc.len);
		buf_release(&enc);
	}
}

void mask_add_secret(struct mask *m, const char *value, size_t len)
{
	if (len < MASK_MIN_SECRET)
		return;
	add_pattern(m, value, len);
	add_url_forms(m, value, len);
	add_base64_forms(m, value, len);
}

/* Length of the longest pattern matching at p (0 if none). */
static size_t match_at(const struct mask *m, const char *p, size_t avail, bool *partial)
{
	size_t best = 0;
	for (size_t i = 0; i < m->n; i++) {
		const struct buf *pat = &m->patterns[i];
		if (pat->len <= avail) {
			if (pat->len > best && memcmp(p, pat->data, pat->len) == 0)
				best = pat->len;
		} else if (partial && memcmp(p, pat->data, avail) == 0) {
			*partial = true;
		}
	}
	return best;
}

/*
 * Scans held; releases bytes that can no longer be part of a match. With
 * `final`, releases everything.
 */
static void drain(struct mask *m, struct buf *out, bool final)
{
	const char *d = m->held.data;
	size_t len = m->held.len, i = 0;
	while (i < len) {
		if (!m->first[(unsigned char)d[i]]) {
			size_t j = i + 1;
			while (j < len && !m->first[(unsigned char)d[j]])
				j++;
			buf_append(out, d + i, j - i);
			i = j;
			continue;
		}
		bool partial = false;
		size_t n = match_at(m, d + i, len - i, final ? NULL : &partial);
		if (partial && !final) {
			/*
			 * A pattern could start here and end in data not yet seen:
			 * keep from here on, unless a full match here is already as
			 * long as any pattern that could still complete.
			 */
			break;
		}
		if (n > 0) {
			buf_puts(out, "***");
			i += n;
		} else {
			buf_putc(out, d[i]);
			i++;
		}
	}
	memmove(m->held.data, d + i, len - i);
	m->held.len = len - i;
	m->held.data[m->held.len] = '\0';
}

void mask_write(struct mask *m, const char *data, size_t len, struct buf *out)
{
	if (m->n == 0) {
		buf_append(out, data, len);
		return;
	}
	/* Feed in slices so held stays bounded by maxlen + slice. */
	while (len > 0) {
		size_t take = MIN(len, (size_t)65536);
		buf_append(&m->held, data, take);
		data += take;
		len -= take;
		drain(m, out, false);
	}
}

void mask_flush(struct mask *m, struct buf *out)
{
	if (m->held.len)
		drain(m, out, true);
}
