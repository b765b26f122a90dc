/* output: connecting, output formats and tables for the client verbs. */
#include "output.h"

#include <ctype.h>
#include <inttypes.h>

int cli_output_parse(const char *s, enum cli_output *ret)
{
	static const char *const names[] = {"table", "wide", "json", "yaml"};
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (streq(s, names[i])) {
			*ret = (enum cli_output)i;
			return 0;
		}
	return -EINVAL;
}

struct kiln_client *cli_connect(const char *cmd, const char *server, const char *token)
{
	struct client_config cfg;
	struct kiln_err err = {0};
	if (client_config_load(server, token, &cfg, &err) < 0) {
		cli_fail(cmd, "%s", err.msg);
		return NULL;
	}
	struct kiln_client *c = NULL;
	if (client_new(cfg.server, cfg.token, &c, &err) < 0) {
		cli_fail(cmd, "%s (from %s)", err.msg, cfg.source);
		c = NULL;
	}
	client_config_release(&cfg);
	return c;
}

int cli_client_fail(const char *cmd, const struct kiln_err *err)
{
	return cli_fail(cmd, "%s", err->msg);
}

void cli_print_json(FILE *f, const json_t *v)
{
	json_dumpf(v, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	fputc('\n', f);
}

/* ---- YAML ----------------------------------------------------------------- */

static bool yaml_plain_ok(const char *s)
{
	static const char *const special[] = {"true",  "false", "yes", "no", "on", "off",
					      "null",  "~",     "True", "False", "Null",
					      "TRUE", "FALSE", "NULL", "Yes", "No", "Y", "N", "y", "n"};
	if (!*s)
		return false;
	for (size_t i = 0; i < ARRAY_SIZE(special); i++)
		if (streq(s, special[i]))
			return false;
	/* Anything number-like would change type. */
	char *end;
	(void)strtod(s, &end);
	if (*end == '\0')
		return false;
	/* Leading digits may read as numbers, times or dates in YAML 1.1 readers. */
	if (strchr("-?:,[]{}#&*!|>'\"%@`.+", s[0]) || isspace((unsigned char)s[0]) ||
	    isdigit((unsigned char)s[0]))
		return false;
	for (const char *p = s; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c < 0x20 || c == 0x7f)
			return false;
		if ((c == ':' && (p[1] == ' ' || p[1] == '\0')) || (c == ' ' && p[1] == '#'))
			return false;
	}
	size_t n = strlen(s);
	return !isspace((unsigned char)s[n - 1]);
}

static void yaml_scalar(FILE *f, const json_t *v)
{
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		if (yaml_plain_ok(s)) {
			fputs(s, f);
		} else {
			/* A JSON string is a valid YAML double-quoted scalar. */
			char *q = json_dumps(v, JSON_ENCODE_ANY);
			fputs(q, f);
			free(q);
		}
	} else if (json_is_null(v)) {
		fputs("null", f);
	} else {
		char *q = json_dumps(v, JSON_ENCODE_ANY);
		fputs(q, f);
		free(q);
	}
}

static bool yaml_is_block(const json_t *v)
{
	return (json_is_object(v) && json_object_size(v)) || (json_is_array(v) && json_array_size(v));
}

static void yaml_node(FILE *f, const json_t *v, int indent);

static void yaml_key(FILE *f, const char *k)
{
	json_t *s = json_string(k);
	yaml_scalar(f, s);
	json_decref(s);
}

static void yaml_object(FILE *f, const json_t *v, int indent, bool first_inline)
{
	bool first = true;
	for (void *it = json_object_iter((json_t *)(uintptr_t)v); it;
	     it = json_object_iter_next((json_t *)(uintptr_t)v, it)) {
		const char *k = json_object_iter_key(it);
		json_t *x = json_object_iter_value(it);
		if (!(first && first_inline))
			fprintf(f, "%*s", indent, "");
		first = false;
		yaml_key(f, k);
		fputc(':', f);
		if (yaml_is_block(x)) {
			fputc('\n', f);
			yaml_node(f, x, json_is_array(x) ? indent : indent + 2);
		} else {
			fputc(' ', f);
			if (json_is_object(x))
				fputs("{}", f);
			else if (json_is_array(x))
				fputs("[]", f);
			else
				yaml_scalar(f, x);
			fputc('\n', f);
		}
	}
}

static void yaml_node(FILE *f, const json_t *v, int indent)
{
	if (json_is_object(v)) {
		if (!json_object_size(v)) {
			fprintf(f, "%*s{}\n", indent, "");
			return;
		}
		yaml_object(f, v, indent, false);
	} else if (json_is_array(v)) {
		if (!json_array_size(v)) {
			fprintf(f, "%*s[]\n", indent, "");
			return;
		}
		size_t i;
		json_t *x;
		json_array_foreach(v, i, x)
		{
			fprintf(f, "%*s- ", indent, "");
			if (json_is_object(x) && json_object_size(x)) {
				yaml_object(f, x, indent + 2, true);
			} else if (yaml_is_block(x)) {
				fputc('\n', f);
				yaml_node(f, x, indent + 2);
			} else {
				if (json_is_object(x))
					fputs("{}", f);
				else if (json_is_array(x))
					fputs("[]", f);
				else
					yaml_scalar(f, x);
				fputc('\n', f);
			}
		}
	} else {
		fprintf(f, "%*s", indent, "");
		yaml_scalar(f, v);
		fputc('\n', f);
	}
}

void cli_print_yaml(FILE *f, const json_t *v) { yaml_node(f, v, 0); }

/* ---- tables --------------------------------------------------------------- */

static void table_addv(struct table *t, va_list ap)
{
	t->cells = xgrow(t->cells, &t->cap, t->n + t->ncols, sizeof(*t->cells));
	for (size_t i = 0; i < t->ncols; i++) {
		const char *s = va_arg(ap, const char *);
		t->cells[t->n++] = xstrdup(s && *s ? s : "-");
	}
}

void table_init(struct table *t, size_t ncols, ...)
{
	*t = (struct table){.ncols = ncols};
	va_list ap;
	va_start(ap, ncols);
	table_addv(t, ap);
	va_end(ap);
}

void table_add(struct table *t, ...)
{
	va_list ap;
	va_start(ap, t);
	table_addv(t, ap);
	va_end(ap);
}

static size_t display_width(const char *s)
{
	size_t w = 0;
	for (; *s; s++)
		if (((unsigned char)*s & 0xC0) != 0x80)
			w++;
	return w;
}

void table_print(struct table *t, FILE *f)
{
	size_t *w = xcalloc(t->ncols, sizeof(*w));
	for (size_t i = 0; i < t->n; i++)
		w[i % t->ncols] = MAX(w[i % t->ncols], display_width(t->cells[i]));
	for (size_t i = 0; i < t->n; i++) {
		size_t col = i % t->ncols;
		fputs(t->cells[i], f);
		if (col + 1 < t->ncols)
			fprintf(f, "%*s", (int)(w[col] - display_width(t->cells[i]) + 2), "");
		else
			fputc('\n', f);
	}
	free(w);
}

void table_release(struct table *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->cells[i]);
	free(t->cells);
	memset(t, 0, sizeof(*t));
}

void cli_age(const json_t *ts, char out[32])
{
	uint64_t ms;
	if (!json_is_string(ts) || proto_parse_time(json_string_value(ts), &ms) < 0) {
		snprintf(out, 32, "-");
		return;
	}
	uint64_t now = proto_now_ms();
	uint64_t s = now > ms ? (now - ms) / 1000 : 0;
	if (s < 120)
		snprintf(out, 32, "%" PRIu64 "s", s);
	else if (s < 120 * 60)
		snprintf(out, 32, "%" PRIu64 "m", s / 60);
	else if (s < 48 * 3600)
		snprintf(out, 32, "%" PRIu64 "h", s / 3600);
	else
		snprintf(out, 32, "%" PRIu64 "d", s / 86400);
}

const char *cli_str(const json_t *v, char buf[64])
{
	if (json_is_string(v))
		return json_string_value(v);
	if (json_is_integer(v)) {
		snprintf(buf, 64, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		return buf;
	}
	if (json_is_real(v)) {
		snprintf(buf, 64, "%g", json_real_value(v));
		return buf;
	}
	if (json_is_true(v))
		return "true";
	if (json_is_false(v))
		return "false";
	return "-";
}
