/*
 * diag: the list of errors a document produced, their text and JSON forms,
 * and the message helpers (quoting user values, did-you-mean).
 *
 * Invariants: at most SPEC_MAX_DIAGS + 1 entries (the last one saying that
 * more were dropped); no two entries are identical (a job validated once per
 * matrix combination reports a shared mistake once); every string a message
 * quotes is escaped, so one diagnostic is always one line.
 */
#include "spec-internal.h"

void spec_diags_init(struct spec_diags *d, const char *file)
{
	*d = (struct spec_diags){.file = xstrdup(file ? file : "<input>")};
}

void spec_diags_release(struct spec_diags *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n; i++) {
		free(d->v[i].path);
		free(d->v[i].msg);
	}
	free(d->v);
	free(d->file);
	*d = (struct spec_diags){0};
}

static void diags_push(struct spec_diags *d, int line, int col, const char *path, char *msg)
{
	d->v = xgrow(d->v, &d->cap, d->n + 1, sizeof(*d->v));
	d->v[d->n++] = (struct spec_diag){line, col, xstrdup(path ? path : ""), msg};
}

void spec_diags_add(struct spec_diags *d, int line, int col, const char *path, const char *fmt, ...)
{
	if (d->n > SPEC_MAX_DIAGS)
		return;
	va_list ap;
	va_start(ap, fmt);
	char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	if (!path)
		path = "";
	for (size_t i = 0; i < d->n; i++) {
		const struct spec_diag *o = &d->v[i];
		if (o->line == line && o->col == col && streq(o->path, path) &&
		    streq(o->msg, msg)) {
			free(msg);
			return;
		}
	}
	if (d->n == SPEC_MAX_DIAGS) {
		free(msg);
		msg = xasprintf("too many errors; stopped after the first %d", SPEC_MAX_DIAGS);
		line = col = 0;
		path = "";
	}
	diags_push(d, line, col, path, msg);
}

void diags_sort(struct spec_diags *d, size_t from)
{
	/* Insertion sort: stable, and n is at most SPEC_MAX_DIAGS + 1. The final
	 * "too many errors" note stays last. */
	size_t end = d->n > SPEC_MAX_DIAGS ? SPEC_MAX_DIAGS : d->n;
	for (size_t i = from + 1; i < end; i++) {
		struct spec_diag g = d->v[i];
		size_t j = i;
		while (j > from && (d->v[j - 1].line > g.line ||
		                    (d->v[j - 1].line == g.line && d->v[j - 1].col > g.col))) {
			d->v[j] = d->v[j - 1];
			j--;
		}
		d->v[j] = g;
	}
}

void spec_diags_format(const struct spec_diags *d, struct buf *out)
{
	const char *file = d->file ? d->file : "<input>";
	for (size_t i = 0; i < d->n; i++) {
		const struct spec_diag *g = &d->v[i];
		buf_puts(out, file);
		if (g->line > 0)
			buf_printf(out, ":%d:%d", g->line, g->col);
		buf_puts(out, ": ");
		if (g->path[0])
			buf_printf(out, "%s: ", g->path);
		buf_puts(out, g->msg);
		buf_putc(out, '\n');
	}
}

json_t *spec_diags_to_json(const struct spec_diags *d)
{
	json_t *a = json_array();
	for (size_t i = 0; i < d->n; i++) {
		const struct spec_diag *g = &d->v[i];
		json_array_append_new(a, json_pack("{s:i, s:i, s:s, s:s}", "line", g->line, "col",
		                                   g->col, "path", g->path, "message", g->msg));
	}
	return a;
}

void quote_value(struct buf *b, const char *s)
{
	enum { MAX = 64 };
	size_t len = strlen(s);
	if (len <= MAX) {
		buf_put_json_string(b, s, len);
		return;
	}
	/* Cut at a character boundary and say so. */
	size_t cut = MAX;
	while (cut > 0 && ((unsigned char)s[cut] & 0xc0) == 0x80)
		cut--;
	struct buf t = BUF_INIT;
	buf_append(&t, s, cut);
	buf_puts(&t, "...");
	buf_put_json_string(b, t.data, t.len);
	buf_release(&t);
}

/* Lower-cases and maps '_' to '-', so runs_on and RUNS-ON find runs-on. */
static void fold_word(const char *s, char out[72])
{
	size_t i = 0;
	for (; i < 71 && s[i]; i++) {
		char c = s[i];
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		out[i] = c == '_' ? '-' : c;
	}
	out[i] = '\0';
}

const char *closest_word(const char *word, const char *const *cands, size_t n)
{
	size_t len = strlen(word);
	if (len == 0 || len > 64)
		return NULL;
	char fw[72], fc[72];
	fold_word(word, fw);
	/* Short words tolerate one edit, longer ones two. */
	size_t cap = len <= 4 ? 2 : 3, best_d = cap;
	const char *best = NULL;
	for (size_t i = 0; i < n; i++) {
		fold_word(cands[i], fc);
		if (streq(fw, fc))
			return cands[i];
		size_t dist = str_edit_distance(fw, fc, cap);
		if (dist < best_d) {
			best_d = dist;
			best = cands[i];
		}
	}
	return best;
}
