/*
 * cmd-top: `kiln top` — a terminal view of the fleet in the spirit of htop
 * and k9s: the queue by org and labels, the agents with their slots, load
 * and GPUs, the jobs with elapsed time, CPU and memory; a job's log followed
 * live; cancel with confirmation; a filter.
 *
 * Data: GET /v1/overview (the scheduler's memory) and GET
 * /v1/jobs?state=queued once per --interval; the log of the selected job by
 * GET /v1/jobs/{id}/log?offset=N every 250 ms while its panel is open (the
 * offset makes each poll return only what is new).
 *
 * Drawing: werase + draw + wnoutrefresh + doupdate each time something
 * changed — ncurses sends only the difference, so there is no flicker.
 * KEY_RESIZE (ncurses' SIGWINCH handling) redraws at the new size. Only
 * w* functions on the window newterm made (ncurses is loaded on first use,
 * src/lazylib). SIGINT/SIGTERM end the loop so the terminal is restored.
 */
#include "cli.h"
#include "human.h"
#include "lazylib/lazylib.h"
#include "output.h"

#include <curses.h>
#include <getopt.h>
#include <inttypes.h>
#include <locale.h>
#include <math.h>
#include <signal.h>

const char cmd_top_help[] =
    "usage: kiln top [--interval DURATION] [--server URL] [--token TOKEN]\n"
    "\n"
    "A live terminal view of the fleet: the queue by org and labels, the\n"
    "agents (slots, GPUs, load, memory), and the jobs (running first, then\n"
    "queued) with elapsed time, CPU and memory. Redraws every interval from\n"
    "the API; works over ssh and in tmux.\n"
    "\n"
    "keys:\n"
    "  up/down, j/k      select a job (PgUp/PgDn, g/G: page, first, last)\n"
    "  enter             follow the selected job's log live (esc closes it)\n"
    "  c                 cancel the selected job (asks y/n first)\n"
    "  /                 filter jobs, queue and agents by text (esc clears)\n"
    "  r                 refresh now\n"
    "  q                 quit\n"
    "\n"
    "options:\n"
    "  --interval DURATION  refresh period (default 1s; at least 100ms)\n"
    "  --server URL, --token TOKEN  as for every client command\n"
    "\n"
    "exit codes: 0 quit, 1 no terminal or the server could not be reached at\n"
    "start, 2 usage error.\n";

enum { PAIR_HEAD = 1, PAIR_OK, PAIR_WARN, PAIR_BAD, PAIR_DIM };

#define LOG_LINES  2000
#define QUEUED_MAX 200

struct logview {
	bool open;
	int64_t job, attempt;
	uint64_t offset;
	bool ended;
	char *lines[LOG_LINES]; /* ring */
	size_t first, n;
	struct buf partial; /* the last line, not yet ended */
};

struct top {
	struct kiln_client *c;
	WINDOW *w;
	bool color;
	uint64_t interval_ms;
	json_t *ov;     /* the last overview */
	json_t *queued; /* queued jobs (oldest first) */
	json_t *rows;   /* the selectable jobs: running then queued, after the filter */
	char error[600];
	char status[700];
	uint64_t status_until;
	int64_t sel_id;
	size_t sel, scroll;
	char filter[64];
	bool typing;  /* the filter prompt is open */
	bool confirm; /* "cancel job N?" is open */
	int64_t confirm_id;
	struct logview log;
	bool dirty;
};

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

/* ---- small helpers -------------------------------------------------------- */

static double jnum(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);
	return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *jstr(const json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "";
}

static void set_status(struct top *t, const char *fmt, ...) KILN_PRINTF(2, 3);
static void set_status(struct top *t, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(t->status, sizeof(t->status), fmt, ap);
	va_end(ap);
	t->status_until = now_mono_ns() + 5 * NSEC_PER_SEC;
	t->dirty = true;
}

static bool icontains(const char *hay, const char *needle)
{
	if (!*needle)
		return true;
	size_t n = strlen(needle);
	for (; *hay; hay++) {
		size_t i = 0;
		while (i < n && hay[i] && (hay[i] | 0x20) == (needle[i] | 0x20))
			i++;
		if (i == n)
			return true;
	}
	return false;
}

/* Does any string field (or id) of o contain the filter? */
static bool matches(const struct top *t, json_t *o)
{
	if (!t->filter[0])
		return true;
	const char *key;
	json_t *v;
	json_object_foreach(o, key, v)
	{
		char b[64];
		const char *s =
		    json_is_string(v) ? json_string_value(v)
		    : json_is_integer(v)
		        ? (snprintf(b, sizeof(b), "%" JSON_INTEGER_FORMAT, json_integer_value(v)),
		           b)
		        : NULL;
		if (s && icontains(s, t->filter))
			return true;
		if (json_is_array(v)) {
			size_t i;
			const json_t *e;
			json_array_foreach(
			    v, i, e) if (json_is_string(e) &&
			                 icontains(json_string_value(e), t->filter)) return true;
		}
	}
	return false;
}

/* ---- fetching ------------------------------------------------------------- */

static void rebuild_rows(struct top *t)
{
	json_decref(t->rows);
	t->rows = json_array();
	size_t i;
	json_t *j;
	json_array_foreach(json_object_get(t->ov, "running"), i, j) if (matches(t, j))
	    json_array_append(t->rows, j);
	json_array_foreach(t->queued, i, j) if (matches(t, j)) json_array_append(t->rows, j);
	/* Keep the selection on the same job when it is still there. */
	size_t n = json_array_size(t->rows);
	bool found = false;
	json_array_foreach(t->rows, i,
	                   j) if (json_integer_value(json_object_get(j, "id")) == t->sel_id)
	{
		t->sel = i;
		found = true;
		break;
	}
	if (!found)
		t->sel = n ? MIN(t->sel, n - 1) : 0;
	t->sel_id =
	    n ? json_integer_value(json_object_get(json_array_get(t->rows, t->sel), "id")) : 0;
}

static int fetch(struct top *t)
{
	json_t *ov = NULL, *q = NULL;
	struct kiln_err err = {0};
	if (client_json(t->c, "GET", "/v1/overview", NULL, NULL, &ov, &err) < 0) {
		snprintf(t->error, sizeof(t->error), "%s", err.msg);
		json_decref(ov);
		t->dirty = true;
		return -EIO;
	}
	char path[96];
	snprintf(path, sizeof(path), "/v1/jobs?state=queued&limit=%d", QUEUED_MAX);
	if (client_json(t->c, "GET", path, NULL, NULL, &q, &err) < 0) {
		snprintf(t->error, sizeof(t->error), "%s", err.msg);
		json_decref(ov);
		json_decref(q);
		t->dirty = true;
		return -EIO;
	}
	t->error[0] = '\0';
	json_decref(t->ov);
	t->ov = ov;
	/* The list is newest first: show the oldest (next to run) first. */
	json_decref(t->queued);
	t->queued = json_array();
	json_t *jobs = json_object_get(q, "jobs");
	for (size_t i = json_array_size(jobs); i > 0; i--) {
		json_t *j = json_array_get(jobs, i - 1);
		json_t *labels = json_object_get(j, "runs_on");
		struct buf l = BUF_INIT;
		buf_puts(&l, "");
		size_t k;
		json_t *x;
		json_array_foreach(labels, k, x)
		{
			if (k)
				buf_putc(&l, ',');
			buf_puts(&l, json_string_value(x));
		}
		const char *org = json_string_value(json_object_get(j, "org"));
		json_t *row = json_pack(
		    "{s:O,s:O,s:s,s:s,s:s,s:O,s:s}", "id", json_object_get(j, "id"), "name",
		    json_object_get(j, "name"), "org", org ? org : "-", "state", "queued", "agent", "",
		    "attempt", json_object_get(j, "attempt"), "labels", l.data);
		buf_release(&l);
		uint64_t sub = 0;
		if (json_is_string(json_object_get(j, "submitted_at")) &&
		    proto_parse_time(jstr(j, "submitted_at"), &sub) >= 0) {
			uint64_t now = proto_now_ms();
			json_object_set_new(row, "elapsed_seconds",
			                    json_real(now > sub ? (double)(now - sub) / 1e3 : 0));
		}
		if (json_is_false(json_object_get(j, "schedulable")))
			json_object_set_new(row, "unschedulable", json_true());
		json_array_append_new(t->queued, row);
	}
	json_decref(q);
	rebuild_rows(t);
	t->dirty = true;
	return 0;
}

/* ---- the log panel -------------------------------------------------------- */

static void log_reset(struct logview *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->lines[(l->first + i) % LOG_LINES]);
	l->first = l->n = 0;
	l->offset = 0;
	l->ended = false;
	buf_release(&l->partial);
}

static void log_push(struct logview *l, const char *s, size_t n)
{
	char *line = xstrndup(s, n);
	if (l->n == LOG_LINES) {
		free(l->lines[l->first]);
		l->lines[l->first] = line;
		l->first = (l->first + 1) % LOG_LINES;
	} else {
		l->lines[(l->first + l->n++) % LOG_LINES] = line;
	}
}

static int on_log_data(const void *data, size_t len, void *ud)
{
	struct logview *l = ud;
	const char *p = data;
	l->offset += len;
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\n') {
			log_push(l, l->partial.data ? l->partial.data : "", l->partial.len);
			buf_reset(&l->partial);
		} else if (l->partial.len < 4096) {
			char c = p[i];
			buf_putc(&l->partial, (unsigned char)c < 0x20 && c != '\t' ? '?' : c);
		}
	}
	return 0;
}

static void fetch_log(struct top *t)
{
	struct logview *l = &t->log;
	if (!l->open || l->attempt < 1)
		return;
	char path[128];
	snprintf(path, sizeof(path), "/v1/jobs/%" PRId64 "/log?attempt=%" PRId64 "&offset=%" PRIu64,
	         l->job, l->attempt, l->offset);
	uint64_t before = l->offset;
	struct kiln_err err = {0};
	if (client_stream(t->c, path, NULL, on_log_data, l, NULL, &err) < 0) {
		set_status(t, "log of job %" PRId64 ": %s", l->job, err.msg);
		return;
	}
	if (l->offset != before)
		t->dirty = true;
}

static void open_log(struct top *t)
{
	json_t *j = json_array_get(t->rows, t->sel);
	if (!j)
		return;
	log_reset(&t->log);
	t->log.open = true;
	t->log.job = json_integer_value(json_object_get(j, "id"));
	t->log.attempt = json_integer_value(json_object_get(j, "attempt"));
	if (t->log.attempt < 1)
		set_status(t, "job %" PRId64 " has not started: its log begins when it runs",
		           t->log.job);
	fetch_log(t);
	t->dirty = true;
}

/* The log's job moved on (a new attempt) or ended: follow it. */
static void log_track(struct top *t)
{
	struct logview *l = &t->log;
	if (!l->open)
		return;
	size_t i;
	json_t *j;
	json_array_foreach(json_object_get(t->ov, "running"), i, j)
	{
		if (json_integer_value(json_object_get(j, "id")) != l->job)
			continue;
		int64_t a = json_integer_value(json_object_get(j, "attempt"));
		if (a != l->attempt) {
			log_reset(l);
			l->attempt = a;
		}
		l->ended = false;
		return;
	}
	l->ended = true;
}

/* ---- drawing -------------------------------------------------------------- */

static void put(struct top *t, int y, int x, int width, const char *s)
{
	if (width <= 0)
		return;
	wmove(t->w, y, x);
	waddnstr(t->w, s, width);
}

static void attr(struct top *t, int pair, attr_t extra, bool on)
{
	attr_t a = extra | (t->color && pair ? COLOR_PAIR(pair) : 0);
	if (on)
		wattr_on(t->w, a, NULL);
	else
		wattr_off(t->w, a, NULL);
}

/* A whole-width line (padded), e.g. headers in reverse video. */
static void bar(struct top *t, int y, int cols, const char *s, int pair, attr_t a)
{
	char *line = xmalloc((size_t)cols + 1);
	snprintf(line, (size_t)cols + 1, "%-*s", cols, s);
	attr(t, pair, a, true);
	put(t, y, 0, cols, line);
	attr(t, pair, a, false);
	free(line);
}

static int state_pair(const char *state)
{
	if (streq(state, "running") || streq(state, "ready"))
		return PAIR_OK;
	if (streq(state, "queued") || streq(state, "leased") || streq(state, "draining"))
		return PAIR_WARN;
	return PAIR_BAD;
}

static void draw_header(struct top *t, int cols)
{
	char now[32] = "", line[720];
	const json_t *ov = t->ov;
	const char *ts = jstr(ov, "now");
	if (strlen(ts) >= 19)
		snprintf(now, sizeof(now), "%.8s", ts + 11);
	snprintf(line, sizeof(line), " kiln top  %s  kiln %s  %s", client_server(t->c),
	         ov ? jstr(ov, "version") : "?", now);
	bar(t, 0, cols, line, PAIR_HEAD, A_REVERSE | A_BOLD);
	const json_t *n = json_object_get(ov, "totals");
	if (t->error[0]) {
		attr(t, PAIR_BAD, A_BOLD, true);
		snprintf(line, sizeof(line), " cannot refresh: %s", t->error);
		put(t, 1, 0, cols, line);
		attr(t, PAIR_BAD, A_BOLD, false);
		return;
	}
	snprintf(line, sizeof(line),
	         " Jobs: %.0f queued (%.0f unschedulable), %.0f running   Slots: %.0f/%.0f busy   "
	         "GPUs: %.0f/%.0f   Agents: %.0f ready, %.0f draining, %.0f offline",
	         jnum(n, "queued"), jnum(n, "unschedulable"),
	         jnum(n, "running") + jnum(n, "leased"), jnum(n, "busy_slots"), jnum(n, "slots"),
	         jnum(n, "busy_gpus"), jnum(n, "gpus"), jnum(n, "agents_ready"),
	         jnum(n, "agents_draining"), jnum(n, "agents_offline"));
	put(t, 1, 0, cols, line);
}

static int draw_queue(struct top *t, int y, int cols, int max_rows)
{
	const json_t *queue = json_object_get(t->ov, "queue");
	bar(t, y++, cols, " QUEUE by org and labels", PAIR_HEAD, A_BOLD);
	char line[512];
	snprintf(line, sizeof(line), " %-10s %-32s %7s %9s  %s", "ORG", "LABELS", "QUEUED",
	         "OLDEST", "STATUS");
	attr(t, 0, A_UNDERLINE, true);
	put(t, y++, 0, cols, line);
	attr(t, 0, A_UNDERLINE, false);
	int shown = 0, total = 0;
	size_t i;
	json_t *q;
	json_array_foreach(queue, i, q)
	{
		if (!matches(t, q))
			continue;
		total++;
		if (shown >= max_rows)
			continue;
		char wait[32];
		human_secs(jnum(q, "oldest_wait_seconds"), wait);
		bool ok = json_is_true(json_object_get(q, "schedulable"));
		const char *labels = jstr(q, "labels");
		snprintf(line, sizeof(line), " %-10s %-32s %7.0f %9s  %s", jstr(q, "org"),
		         *labels ? labels : "(any)", jnum(q, "queued"), wait,
		         ok ? "waiting for a slot" : jstr(q, "reason"));
		attr(t, ok ? 0 : PAIR_BAD, 0, true);
		put(t, y++, 0, cols, line);
		attr(t, ok ? 0 : PAIR_BAD, 0, false);
		shown++;
	}
	if (!total)
		put(t, y++, 0, cols, " (nothing queued)");
	else if (total > shown) {
		snprintf(line, sizeof(line), " ... %d more label sets", total - shown);
		put(t, y++, 0, cols, line);
	}
	return y;
}

static void slot_bar(char *out, size_t n, double busy, double total)
{
	int width = 8, fill = total > 0 ? (int)lround(width * busy / total) : 0;
	snprintf(out, n, "[%.*s%.*s] %.0f/%.0f", fill, "########", width - fill, "........", busy,
	         total);
}

static int draw_agents(struct top *t, int y, int cols, int max_rows)
{
	const json_t *agents = json_object_get(t->ov, "agents");
	bar(t, y++, cols, " AGENTS", PAIR_HEAD, A_BOLD);
	char line[640];
	snprintf(line, sizeof(line), " %-16s %-8s %-16s %-7s %-14s %-13s %s", "NAME", "STATE",
	         "SLOTS", "GPUS", "LOAD 1/5/15", "MEM", "LABELS");
	attr(t, 0, A_UNDERLINE, true);
	put(t, y++, 0, cols, line);
	attr(t, 0, A_UNDERLINE, false);
	int shown = 0, total = 0;
	size_t i;
	json_t *a;
	json_array_foreach(agents, i, a)
	{
		if (!matches(t, a))
			continue;
		total++;
		if (shown >= max_rows)
			continue;
		char slots[48], gpus[24], load[32] = "-", mem[72] = "-", labels[256] = "";
		slot_bar(slots, sizeof(slots), jnum(a, "busy_slots"), jnum(a, "slots"));
		snprintf(gpus, sizeof(gpus), "%.0f/%.0f", jnum(a, "busy_gpus"), jnum(a, "gpus"));
		const json_t *l = json_object_get(a, "load");
		if (json_is_object(l)) {
			snprintf(load, sizeof(load), "%.2f %.2f %.2f", jnum(l, "load1"),
			         jnum(l, "load5"), jnum(l, "load15"));
			char used[32], tot[32];
			human_bytes(jnum(l, "memory_used_bytes"), used);
			human_bytes(jnum(l, "memory_total_bytes"), tot);
			snprintf(mem, sizeof(mem), "%s/%s", used, tot);
		}
		size_t k;
		json_t *x;
		size_t len = 0;
		json_array_foreach(json_object_get(a, "labels"), k, x) len +=
		    (size_t)snprintf(labels + len, len < sizeof(labels) ? sizeof(labels) - len : 0,
		                     "%s%s", k ? "," : "", json_string_value(x));
		const char *state = jstr(a, "state");
		snprintf(line, sizeof(line), " %-16.16s ", jstr(a, "name"));
		put(t, y, 0, cols, line);
		attr(t, state_pair(state), 0, true);
		snprintf(line, sizeof(line), "%-8s ", state);
		put(t, y, 18, cols - 18, line);
		attr(t, state_pair(state), 0, false);
		snprintf(line, sizeof(line), "%-16s %-7s %-14s %-13s %s", slots, gpus, load, mem,
		         labels);
		put(t, y++, 27, cols - 27, line);
		shown++;
	}
	if (!total)
		put(t, y++, 0, cols, " (no agent registered)");
	else if (total > shown) {
		snprintf(line, sizeof(line), " ... %d more agents", total - shown);
		put(t, y++, 0, cols, line);
	}
	return y;
}

static void job_line(const json_t *j, char *line, size_t n)
{
	char el[32], cpu[32] = "-", mem[32] = "-", cores[16] = "";
	human_secs(jnum(j, "elapsed_seconds"), el);
	if (!isnan(jnum(j, "cpu_seconds")))
		human_secs(jnum(j, "cpu_seconds"), cpu);
	if (!isnan(jnum(j, "cpu_cores")))
		snprintf(cores, sizeof(cores), " %3.0f%%", jnum(j, "cpu_cores") * 100);
	if (!isnan(jnum(j, "memory_bytes")))
		human_bytes(jnum(j, "memory_bytes"), mem);
	char cpucol[48];
	snprintf(cpucol, sizeof(cpucol), "%s%s", cpu, cores);
	const char *labels = jstr(j, "labels");
	snprintf(line, n,
	         " %7" JSON_INTEGER_FORMAT " %-20.20s %-9.9s %-9s %-14.14s %9s %-13s %8s  %s",
	         json_integer_value(json_object_get(j, "id")), jstr(j, "name"), jstr(j, "org"),
	         jstr(j, "state"), jstr(j, "agent"), el, cpucol, mem, *labels ? labels : "(any)");
}

static int draw_jobs(struct top *t, int y, int cols, int rows)
{
	char line[512];
	size_t n = json_array_size(t->rows);
	snprintf(line, sizeof(line), " JOBS (%zu)%s%s", n, t->filter[0] ? "  filter: " : "",
	         t->filter);
	bar(t, y++, cols, line, PAIR_HEAD, A_BOLD);
	snprintf(line, sizeof(line), " %7s %-20s %-9s %-9s %-14s %9s %-13s %8s  %s", "ID", "NAME",
	         "ORG", "STATE", "AGENT", "ELAPSED", "CPU", "MEM", "LABELS");
	attr(t, 0, A_UNDERLINE, true);
	put(t, y++, 0, cols, line);
	attr(t, 0, A_UNDERLINE, false);
	rows -= 2;
	if (rows < 1)
		return y;
	if (t->sel < t->scroll)
		t->scroll = t->sel;
	if (t->sel >= t->scroll + (size_t)rows)
		t->scroll = t->sel - (size_t)rows + 1;
	if (!n)
		put(t, y, 0, cols, t->filter[0] ? " (no job matches the filter)" : " (no jobs)");
	for (size_t i = t->scroll; i < n && i < t->scroll + (size_t)rows; i++) {
		const json_t *j = json_array_get(t->rows, i);
		job_line(j, line, sizeof(line));
		bool sel = i == t->sel;
		int pair = sel ? 0 : state_pair(jstr(j, "state"));
		if (json_is_true(json_object_get(j, "unschedulable")))
			pair = PAIR_BAD;
		attr(t, pair, sel ? A_REVERSE : 0, true);
		if (sel) {
			char *padded = xasprintf("%-*s", cols, line);
			put(t, y, 0, cols, padded);
			free(padded);
		} else {
			put(t, y, 0, cols, line);
		}
		attr(t, pair, sel ? A_REVERSE : 0, false);
		y++;
	}
	return y;
}

static void draw_log(struct top *t, int y, int cols, int rows)
{
	struct logview *l = &t->log;
	char line[256];
	snprintf(line, sizeof(line), " LOG of job %" PRId64 " (attempt %" PRId64 ")%s   esc closes",
	         l->job, l->attempt, l->ended ? ", ended" : ", following");
	bar(t, y++, cols, line, PAIR_HEAD, A_REVERSE);
	rows--;
	size_t total = l->n + (l->partial.len ? 1 : 0);
	size_t from = total > (size_t)rows ? total - (size_t)rows : 0;
	for (size_t i = from; i < total && rows > 0; i++, rows--) {
		const char *s = i < l->n ? l->lines[(l->first + i) % LOG_LINES] : l->partial.data;
		put(t, y++, 1, cols - 1, s ? s : "");
	}
}

static void draw_footer(struct top *t, int y, int cols)
{
	char line[256];
	if (t->typing) {
		snprintf(line, sizeof(line), " filter: %s_   (enter keeps it, esc clears)",
		         t->filter);
		bar(t, y, cols, line, PAIR_HEAD, A_REVERSE);
	} else if (t->confirm) {
		const char *name = "";
		size_t i;
		json_t *j;
		json_array_foreach(t->rows, i,
		                   j) if (json_integer_value(json_object_get(j, "id")) ==
		                          t->confirm_id) name = jstr(j, "name");
		snprintf(line, sizeof(line), " Cancel job %" PRId64 " '%s'? (y/N)", t->confirm_id,
		         name);
		bar(t, y, cols, line, PAIR_BAD, A_REVERSE | A_BOLD);
	} else if (t->status[0] && now_mono_ns() < t->status_until) {
		bar(t, y, cols, t->status, PAIR_WARN, A_REVERSE);
	} else {
		bar(t, y, cols,
		    " up/down j/k select   enter log   c cancel   / filter   r refresh   q quit", 0,
		    A_REVERSE);
	}
}

static void draw(struct top *t)
{
	int rows = getmaxy(t->w), cols = getmaxx(t->w);
	werase(t->w);
	if (rows < 8 || cols < 40) {
		put(t, 0, 0, cols, "kiln top: the terminal is too small");
		wnoutrefresh(t->w);
		doupdate();
		return;
	}
	draw_header(t, cols);
	int y = 2;
	int nq = (int)json_array_size(json_object_get(t->ov, "queue"));
	int na = (int)json_array_size(json_object_get(t->ov, "agents"));
	int body = rows - 3; /* header, summary, footer */
	int qrows = MIN(MAX(nq, 1), MAX(body / 6, 2));
	int arows = MIN(MAX(na, 1), MAX(body / 5, 2));
	y = draw_queue(t, y, cols, qrows);
	y = draw_agents(t, y, cols, arows);
	int left = rows - 1 - y;
	if (t->log.open) {
		int jrows = MAX(left / 3, 3);
		draw_jobs(t, y, cols, jrows);
		draw_log(t, y + jrows, cols, left - jrows);
	} else {
		draw_jobs(t, y, cols, left);
	}
	draw_footer(t, rows - 1, cols);
	wnoutrefresh(t->w);
	doupdate();
	t->dirty = false;
}

/* ---- keys ----------------------------------------------------------------- */

static void select_move(struct top *t, long delta)
{
	size_t n = json_array_size(t->rows);
	if (!n)
		return;
	long s = (long)t->sel + delta;
	t->sel = (size_t)MAX(0, MIN(s, (long)n - 1));
	t->sel_id = json_integer_value(json_object_get(json_array_get(t->rows, t->sel), "id"));
	t->dirty = true;
}

static void do_cancel(struct top *t, int64_t id)
{
	char path[64];
	snprintf(path, sizeof(path), "/v1/jobs/%" PRId64 "/cancel", id);
	json_t *ans = NULL;
	struct kiln_err err = {0};
	if (client_json(t->c, "POST", path, NULL, NULL, &ans, &err) < 0)
		set_status(t, " cancel job %" PRId64 ": %s", id, err.msg);
	else
		set_status(t, " job %" PRId64 " cancelled (it was %s)", id,
		           jstr(ans, "previous_state"));
	json_decref(ans);
	fetch(t);
}

/* Returns false to quit. */
static bool on_key(struct top *t, int ch)
{
	if (t->typing) {
		size_t n = strlen(t->filter);
		if (ch == 27) {
			t->filter[0] = '\0';
			t->typing = false;
		} else if (ch == '\n' || ch == '\r' || ch == KEY_ENTER) {
			t->typing = false;
		} else if (ch == KEY_BACKSPACE || ch == 127 || ch == 8) {
			if (n)
				t->filter[n - 1] = '\0';
		} else if (ch >= 0x20 && ch < 0x7f && n + 1 < sizeof(t->filter)) {
			t->filter[n] = (char)ch;
			t->filter[n + 1] = '\0';
		}
		rebuild_rows(t);
		t->dirty = true;
		return true;
	}
	if (t->confirm) {
		t->confirm = false;
		t->dirty = true;
		if (ch == 'y' || ch == 'Y')
			do_cancel(t, t->confirm_id);
		else
			set_status(t, " not cancelled");
		return true;
	}
	switch (ch) {
	case 'q':
	case 'Q': return false;
	case KEY_UP:
	case 'k': select_move(t, -1); break;
	case KEY_DOWN:
	case 'j': select_move(t, 1); break;
	case KEY_PPAGE: select_move(t, -10); break;
	case KEY_NPAGE: select_move(t, 10); break;
	case KEY_HOME:
	case 'g': select_move(t, -(long)json_array_size(t->rows)); break;
	case KEY_END:
	case 'G': select_move(t, (long)json_array_size(t->rows)); break;
	case '\n':
	case '\r':
	case KEY_ENTER: open_log(t); break;
	case 27:
		if (t->log.open) {
			t->log.open = false;
		} else if (t->filter[0]) {
			t->filter[0] = '\0';
			rebuild_rows(t);
		}
		t->dirty = true;
		break;
	case '/':
		t->typing = true;
		t->dirty = true;
		break;
	case 'c':
		if (json_array_size(t->rows)) {
			t->confirm = true;
			t->confirm_id = t->sel_id;
			t->dirty = true;
		}
		break;
	case 'r': fetch(t); break;
	case KEY_RESIZE: t->dirty = true; break;
	default: break;
	}
	return true;
}

/* ---- the loop ------------------------------------------------------------- */

static void run(struct top *t)
{
	uint64_t next_fetch = now_mono_ns() + t->interval_ms * NSEC_PER_MSEC, next_log = 0;
	draw(t);
	while (!stop_requested) {
		int ch = wgetch(t->w);
		if (ch != ERR && !on_key(t, ch))
			break;
		uint64_t now = now_mono_ns();
		if (now >= next_fetch) {
			fetch(t);
			log_track(t);
			next_fetch = now + t->interval_ms * NSEC_PER_MSEC;
		}
		if (t->log.open && now >= next_log) {
			fetch_log(t);
			next_log = now + 250 * NSEC_PER_MSEC;
		}
		if (t->status[0] && now >= t->status_until) {
			t->status[0] = '\0';
			t->dirty = true;
		}
		if (t->dirty)
			draw(t);
	}
}

static int screen_open(struct top *t, SCREEN **ret)
{
	struct kiln_err err = {0};
	if (lazylib_load_ncurses(&err) < 0)
		return cli_fail("top", "%s", err.msg);
	setlocale(LC_ALL, "");
	SCREEN *sc = newterm(NULL, stdout, stdin);
	if (!sc)
		return cli_fail("top", "cannot use the terminal '%s' (is TERM set?)",
		                getenv("TERM") ? getenv("TERM") : "");
	t->w = lazylib_ncurses_stdscr();
	cbreak();
	noecho();
	nonl();
	keypad(t->w, TRUE);
	curs_set(0);
	set_escdelay(25);
	wtimeout(t->w, 100);
	if (has_colors()) {
		start_color();
		use_default_colors();
		init_pair(PAIR_HEAD, COLOR_CYAN, -1);
		init_pair(PAIR_OK, COLOR_GREEN, -1);
		init_pair(PAIR_WARN, COLOR_YELLOW, -1);
		init_pair(PAIR_BAD, COLOR_RED, -1);
		init_pair(PAIR_DIM, COLOR_BLUE, -1);
		t->color = true;
	}
	*ret = sc;
	return EXIT_OK;
}

int cmd_top(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},
	    {"server", required_argument, NULL, 's'},
	    {"token", required_argument, NULL, 't'},
	    {"interval", required_argument, NULL, 'i'},
	    {0},
	};
	const char *server = NULL, *token = NULL;
	uint64_t interval = 1000;
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'h': return cli_print_help(cli_find_command("top"));
		case 's': server = optarg; break;
		case 't': token = optarg; break;
		case 'i':
			if (parse_duration_ms(optarg, &interval) < 0 || interval < 100)
				return cli_usage_error(
				    "top",
				    "--interval: '%s' is not a duration of at least "
				    "100ms (e.g. 1s, 500ms)",
				    optarg);
			break;
		default: return cli_usage_error("top", "unknown option");
		}
	}
	if (optind < argc)
		return cli_usage_error("top", "unexpected argument '%s'", argv[optind]);
	if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO))
		return cli_fail("top", "needs a terminal (stdin and stdout); for scripts use kiln "
		                       "get jobs, kiln stats -o json or GET /v1/overview");
	struct top t = {.interval_ms = interval};
	t.c = cli_connect("top", server, token);
	if (!t.c)
		return EXIT_FAIL;
	client_set_timeout(t.c, 5000);
	if (fetch(&t) < 0) {
		int r = cli_fail("top", "%s", t.error);
		client_free(t.c);
		return r;
	}
	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	/* A server that goes away mid-request must not kill the view. */
	signal(SIGPIPE, SIG_IGN);
	SCREEN *sc = NULL;
	int rc = screen_open(&t, &sc);
	if (rc == EXIT_OK) {
		run(&t);
		endwin();
		delscreen(sc);
	}
	log_reset(&t.log);
	json_decref(t.ov);
	json_decref(t.queued);
	json_decref(t.rows);
	client_free(t.c);
	return rc;
}
