/*
 * log: kiln's own log, one line per event on stderr, logfmt or JSON lines.
 *
 * A call formats "message key=value key=\"quoted value\" ...". The text before
 * the first key=value token is the message. The line is written with a single
 * write(2) so concurrent threads never interleave within a line.
 */
#include "base.h"

#include <ctype.h>

enum log_level log_max_level = LOG_INFO;
static enum log_format log_format = LOG_FORMAT_LOGFMT;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(enum log_level level) { log_max_level = level; }
void log_set_format(enum log_format fmt) { log_format = fmt; }

int log_level_from_string(const char *s, enum log_level *ret)
{
	for (size_t i = 0; i < ARRAY_SIZE(level_names); i++)
		if (streq(s, level_names[i])) {
			*ret = (enum log_level)i;
			return 0;
		}
	if (streq(s, "warning")) {
		*ret = LOG_WARN;
		return 0;
	}
	return -EINVAL;
}

int log_format_from_string(const char *s, enum log_format *ret)
{
	if (streq(s, "logfmt"))
		*ret = LOG_FORMAT_LOGFMT;
	else if (streq(s, "json"))
		*ret = LOG_FORMAT_JSON;
	else
		return -EINVAL;
	return 0;
}

/* Is `p` the start of a `key=` token (key: [A-Za-z0-9_.-]+)? */
static bool at_field(const char *p)
{
	const char *q = p;
	while (isalnum((unsigned char)*q) || *q == '_' || *q == '.' || *q == '-')
		q++;
	return q > p && *q == '=';
}

/* Scans one value starting at p (quoted or bare); returns the end. */
static const char *scan_value(const char *p, struct buf *out)
{
	if (*p == '"') {
		p++;
		while (*p && *p != '"') {
			if (*p == '\\' && p[1])
				p++;
			buf_putc(out, *p++);
		}
		return *p ? p + 1 : p;
	}
	while (*p && *p != ' ')
		buf_putc(out, *p++);
	return p;
}

static bool needs_quotes(const char *s)
{
	if (!*s)
		return true;
	for (; *s; s++)
		if (*s == ' ' || *s == '"' || *s == '=' || (unsigned char)*s < 0x20)
			return true;
	return false;
}

static void put_logfmt_value(struct buf *b, const char *s)
{
	if (!needs_quotes(s)) {
		buf_puts(b, s);
		return;
	}
	buf_putc(b, '"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			buf_putc(b, '\\');
		if (*s == '\n')
			buf_puts(b, "\\n");
		else
			buf_putc(b, *s);
	}
	buf_putc(b, '"');
}

const char *log_field(const char *s, char *buf, size_t n)
{
	if (!s)
		s = "";
	if (!needs_quotes(s) && !strchr(s, '\\'))
		return s;
	size_t k = 0;
	if (n < 3)
		return "\"\"";
	buf[k++] = '"';
	for (; *s && k + 4 < n; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			buf[k++] = '\\';
			buf[k++] = (char)c;
		} else if (c < 0x20) {
			buf[k++] = ' ';
		} else {
			buf[k++] = (char)c;
		}
	}
	buf[k++] = '"';
	buf[k] = '\0';
	return buf;
}

int log_emit(enum log_level level, int r, const char *fmt, ...)
{
	int saved = errno;
	struct buf text = BUF_INIT, line = BUF_INIT, val = BUF_INIT;
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&text, fmt, ap);
	va_end(ap);

	/* Split message / fields. */
	const char *p = text.data ? text.data : "";
	const char *msg_end = p;
	while (*msg_end) {
		if ((msg_end == p || msg_end[-1] == ' ') && at_field(msg_end))
			break;
		msg_end++;
	}
	size_t msg_len = (size_t)(msg_end - p);
	while (msg_len && p[msg_len - 1] == ' ')
		msg_len--;

	char ts[32];
	format_rfc3339(now_real_ns(), ts);
	if (log_format == LOG_FORMAT_JSON) {
		buf_printf(&line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":", ts, level_names[level]);
		buf_put_json_string(&line, p, msg_len);
	} else {
		char *m = xstrndup(p, msg_len);
		buf_printf(&line, "ts=%s level=%s msg=", ts, level_names[level]);
		put_logfmt_value(&line, m);
		free(m);
	}
	if (r < 0) {
		const char *e = strerror(-r);
		if (log_format == LOG_FORMAT_JSON) {
			buf_puts(&line, ",\"err\":");
			buf_put_json_string(&line, e, strlen(e));
		} else {
			buf_puts(&line, " err=");
			put_logfmt_value(&line, e);
		}
	}
	const char *f = msg_end;
	while (*f) {
		while (*f == ' ')
			f++;
		if (!*f)
			break;
		const char *eq = strchr(f, '=');
		if (!eq || !at_field(f)) {
			/* Stray text after fields: keep it rather than drop it. */
			eq = NULL;
		}
		if (!eq) {
			const char *end = strchr(f, ' ');
			size_t n = end ? (size_t)(end - f) : strlen(f);
			if (log_format == LOG_FORMAT_JSON) {
				buf_puts(&line, ",\"extra\":");
				buf_put_json_string(&line, f, n);
			} else {
				buf_putc(&line, ' ');
				buf_append(&line, f, n);
			}
			f += n;
			continue;
		}
		buf_reset(&val);
		const char *next = scan_value(eq + 1, &val);
		if (log_format == LOG_FORMAT_JSON) {
			buf_putc(&line, ',');
			buf_put_json_string(&line, f, (size_t)(eq - f));
			buf_putc(&line, ':');
			buf_put_json_string(&line, val.data ? val.data : "", val.len);
		} else {
			buf_putc(&line, ' ');
			buf_append(&line, f, (size_t)(eq - f) + 1);
			put_logfmt_value(&line, val.data ? val.data : "");
		}
		f = next;
	}
	if (log_format == LOG_FORMAT_JSON)
		buf_putc(&line, '}');
	buf_putc(&line, '\n');
	(void)!write(STDERR_FILENO, line.data, line.len);
	buf_release(&text);
	buf_release(&line);
	buf_release(&val);
	errno = saved;
	return r;
}

void log_debug_library(const char *source, const char *fmt, va_list ap)
{
	if (log_max_level < LOG_DEBUG)
		return;
	_cleanup_free_ char *msg = xvasprintf(fmt, ap);
	size_t n = strlen(msg);
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
	char b[300];
	log_debug("%s msg=%s", source, log_field(msg, b, sizeof(b)));
}
