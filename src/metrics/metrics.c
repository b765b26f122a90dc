/*
 * metrics: families hold series keyed by their label values; rendering
 * walks them under each family's lock. Label values are escaped as the
 * exposition format requires (backslash, double quote, newline).
 */
#include "metrics.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <sys/resource.h>

struct series {
	char **values;
	double value;     /* counter / gauge */
	uint64_t *counts; /* histogram: per bucket (not cumulative) + overflow */
	double sum;
	uint64_t count;
};

struct metric {
	enum metric_type type;
	char *name;
	char *help;
	char **labels;
	size_t n_labels;
	double *buckets;
	size_t n_buckets;
	pthread_mutex_t lock;
	struct series *series;
	size_t n_series, cap_series;
};

struct collector {
	void (*fn)(struct metrics *m, void *ud);
	void *ud;
	bool owned; /* ud is freed with the registry */
};

struct metrics {
	pthread_mutex_t lock;
	pthread_mutex_t render_lock; /* one render (collectors + text) at a time */
	struct metric **families;
	size_t n, cap;
	struct collector *collectors;
	size_t n_collectors, cap_collectors;
};

const double metrics_latency_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
					  0.05,   0.1,   0.25,   0.5,   1,    2.5,
					  5,      10,    30,     60};
const size_t metrics_latency_buckets_n = ARRAY_SIZE(metrics_latency_buckets);
const double metrics_duration_buckets[] = {1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400};
const size_t metrics_duration_buckets_n = ARRAY_SIZE(metrics_duration_buckets);
const double metrics_bytes_buckets[] = {16777216.0,   67108864.0,   268435456.0,  1073741824.0,
					4294967296.0, 17179869184.0, 68719476736.0, 274877906944.0};
const size_t metrics_bytes_buckets_n = ARRAY_SIZE(metrics_bytes_buckets);

struct metrics *metrics_new(void)
{
	struct metrics *m = xcalloc(1, sizeof(*m));
	pthread_mutex_init(&m->lock, NULL);
	pthread_mutex_init(&m->render_lock, NULL);
	return m;
}

static void series_release(struct series *s, size_t n_labels)
{
	for (size_t i = 0; i < n_labels; i++)
		free(s->values[i]);
	free(s->values);
	free(s->counts);
}

static void family_free(struct metric *f)
{
	for (size_t i = 0; i < f->n_series; i++)
		series_release(&f->series[i], f->n_labels);
	free(f->series);
	for (size_t i = 0; i < f->n_labels; i++)
		free(f->labels[i]);
	free(f->labels);
	free(f->buckets);
	free(f->name);
	free(f->help);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

void metrics_free(struct metrics *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n; i++)
		family_free(m->families[i]);
	free(m->families);
	for (size_t i = 0; i < m->n_collectors; i++)
		if (m->collectors[i].owned)
			free(m->collectors[i].ud);
	free(m->collectors);
	pthread_mutex_destroy(&m->lock);
	pthread_mutex_destroy(&m->render_lock);
	free(m);
}

static struct series *series_get(struct metric *f, const char *const *values);

static struct metric *family_new(struct metrics *m, enum metric_type type, const char *name,
				 const char *help, const char *const *labels,
				 const double *buckets, size_t n_buckets)
{
	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < m->n; i++)
		if (streq(m->families[i]->name, name)) {
			pthread_mutex_unlock(&m->lock);
			return m->families[i];
		}
	struct metric *f = xcalloc(1, sizeof(*f));
	f->type = type;
	f->name = xstrdup(name);
	f->help = xstrdup(help);
	f->labels = xcalloc(1, sizeof(char *));
	for (size_t i = 0; labels && labels[i]; i++) {
		f->labels = xrealloc(f->labels, (i + 2) * sizeof(char *));
		f->labels[i] = xstrdup(labels[i]);
		f->n_labels = i + 1;
	}
	if (n_buckets) {
		f->buckets = xmalloc(n_buckets * sizeof(double));
		memcpy(f->buckets, buckets, n_buckets * sizeof(double));
		f->n_buckets = n_buckets;
	}
	pthread_mutex_init(&f->lock, NULL);
	/* A family without labels has its one series from the start, at 0: a
	 * scraper sees 0 -> N, so rate() and increase() count the first events. */
	if (f->n_labels == 0)
		series_get(f, NULL);
	m->families = xgrow(m->families, &m->cap, m->n + 1, sizeof(*m->families)); // NOLINT(bugprone-sizeof-expression): an array of pointers
	m->families[m->n++] = f;
	pthread_mutex_unlock(&m->lock);
	return f;
}

struct metric *metrics_counter(struct metrics *m, const char *name, const char *help,
			       const char *const *labels)
{
	return family_new(m, METRIC_COUNTER, name, help, labels, NULL, 0);
}

struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help,
			     const char *const *labels)
{
	return family_new(m, METRIC_GAUGE, name, help, labels, NULL, 0);
}

struct metric *metrics_histogram(struct metrics *m, const char *name, const char *help,
				 const char *const *labels, const double *buckets,
				 size_t n_buckets)
{
	return family_new(m, METRIC_HISTOGRAM, name, help, labels, buckets, n_buckets);
}

/* The j-th label value; NULL values (or a NULL list) read as "". */
static const char *label_value(const char *const *values, size_t j)
{
	return values && values[j] ? values[j] : "";
}

/* Finds or creates the series; called with f->lock held. */
static struct series *series_get(struct metric *f, const char *const *values)
{
	for (size_t i = 0; i < f->n_series; i++) {
		struct series *s = &f->series[i];
		size_t j;
		for (j = 0; j < f->n_labels; j++)
			if (!streq(s->values[j], label_value(values, j)))
				break;
		if (j == f->n_labels)
			return s;
	}
	f->series = xgrow(f->series, &f->cap_series, f->n_series + 1, sizeof(*f->series));
	struct series *s = &f->series[f->n_series++];
	memset(s, 0, sizeof(*s));
	s->values = xcalloc(f->n_labels ? f->n_labels : 1, sizeof(char *));
	for (size_t j = 0; j < f->n_labels; j++)
		s->values[j] = xstrdup(label_value(values, j));
	if (f->type == METRIC_HISTOGRAM)
		s->counts = xcalloc(f->n_buckets + 1, sizeof(uint64_t));
	return s;
}

void metric_add(struct metric *f, const char *const *values, double v)
{
	if (f->type == METRIC_COUNTER && !(v >= 0))
		return; /* counters only go up */
	pthread_mutex_lock(&f->lock);
	series_get(f, values)->value += v;
	pthread_mutex_unlock(&f->lock);
}

void metric_set(struct metric *f, const char *const *values, double v)
{
	pthread_mutex_lock(&f->lock);
	series_get(f, values)->value = v;
	pthread_mutex_unlock(&f->lock);
}

void metric_observe(struct metric *f, const char *const *values, double v)
{
	if (isnan(v))
		return;
	pthread_mutex_lock(&f->lock);
	struct series *s = series_get(f, values);
	size_t b = 0;
	while (b < f->n_buckets && v > f->buckets[b])
		b++;
	s->counts[b]++;
	s->sum += v;
	s->count++;
	pthread_mutex_unlock(&f->lock);
}

void metric_histogram_set(struct metric *f, const char *const *values, const uint64_t *counts,
			  double sum)
{
	if (f->type != METRIC_HISTOGRAM)
		return;
	pthread_mutex_lock(&f->lock);
	struct series *s = series_get(f, values);
	uint64_t total = 0;
	for (size_t b = 0; b <= f->n_buckets; b++) {
		s->counts[b] = counts[b];
		total += counts[b];
	}
	s->count = total;
	s->sum = sum;
	pthread_mutex_unlock(&f->lock);
}

void metric_reset(struct metric *f)
{
	pthread_mutex_lock(&f->lock);
	for (size_t i = 0; i < f->n_series; i++)
		series_release(&f->series[i], f->n_labels);
	f->n_series = 0;
	pthread_mutex_unlock(&f->lock);
}

static void put_escaped(struct buf *out, const char *s, bool help)
{
	for (; *s; s++) {
		if (*s == '\\')
			buf_puts(out, "\\\\");
		else if (*s == '\n')
			buf_puts(out, "\\n");
		else if (*s == '"' && !help)
			buf_puts(out, "\\\"");
		else
			buf_putc(out, *s);
	}
}

static void put_value(struct buf *out, double v)
{
	if (isinf(v))
		buf_puts(out, v > 0 ? "+Inf" : "-Inf");
	else if (isnan(v))
		buf_puts(out, "NaN");
	else if (v == floor(v) && fabs(v) < 1e15)
		buf_printf(out, "%.0f", v);
	else {
		/* The shortest text that reads back as the same double. */
		char t[40];
		for (int prec = 15; prec <= 17; prec++) {
			snprintf(t, sizeof(t), "%.*g", prec, v);
			if (strtod(t, NULL) == v)
				break;
		}
		buf_puts(out, t);
	}
}

/* Writes {a="x",b="y"[,le="..."]} (nothing if no labels and no le). */
static void put_labels(struct buf *out, const struct metric *f, const struct series *s,
		       const char *le)
{
	if (f->n_labels == 0 && !le)
		return;
	buf_putc(out, '{');
	for (size_t i = 0; i < f->n_labels; i++) {
		if (i)
			buf_putc(out, ',');
		buf_printf(out, "%s=\"", f->labels[i]);
		put_escaped(out, s->values[i], false);
		buf_putc(out, '"');
	}
	if (le)
		buf_printf(out, "%sle=\"%s\"", f->n_labels ? "," : "", le);
	buf_putc(out, '}');
}

static void render_family(struct metric *f, struct buf *out)
{
	static const char *const type_names[] = {"counter", "gauge", "histogram"};
	buf_printf(out, "# HELP %s ", f->name);
	put_escaped(out, f->help, true);
	buf_printf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
	pthread_mutex_lock(&f->lock);
	for (size_t i = 0; i < f->n_series; i++) {
		const struct series *s = &f->series[i];
		if (f->type != METRIC_HISTOGRAM) {
			buf_puts(out, f->name);
			put_labels(out, f, s, NULL);
			buf_putc(out, ' ');
			put_value(out, s->value);
			buf_putc(out, '\n');
			continue;
		}
		uint64_t cum = 0;
		for (size_t b = 0; b <= f->n_buckets; b++) {
			cum += s->counts[b];
			char le[40];
			if (b == f->n_buckets) {
				snprintf(le, sizeof(le), "+Inf");
			} else {
				struct buf tmp = BUF_INIT;
				put_value(&tmp, f->buckets[b]);
				snprintf(le, sizeof(le), "%s", tmp.data);
				buf_release(&tmp);
			}
			buf_printf(out, "%s_bucket", f->name);
			put_labels(out, f, s, le);
			buf_printf(out, " %llu\n", (unsigned long long)cum);
		}
		buf_printf(out, "%s_sum", f->name);
		put_labels(out, f, s, NULL);
		buf_putc(out, ' ');
		put_value(out, s->sum);
		buf_printf(out, "\n%s_count", f->name);
		put_labels(out, f, s, NULL);
		buf_printf(out, " %llu\n", (unsigned long long)s->count);
	}
	pthread_mutex_unlock(&f->lock);
}

static void add_collector(struct metrics *m, void (*fn)(struct metrics *m, void *ud), void *ud,
			  bool owned)
{
	pthread_mutex_lock(&m->lock);
	m->collectors = xgrow(m->collectors, &m->cap_collectors, m->n_collectors + 1,
			      sizeof(*m->collectors));
	m->collectors[m->n_collectors++] = (struct collector){fn, ud, owned};
	pthread_mutex_unlock(&m->lock);
}

void metrics_on_collect(struct metrics *m, void (*fn)(struct metrics *m, void *ud), void *ud)
{
	add_collector(m, fn, ud, false);
}

void metrics_remove_collector(struct metrics *m, void (*fn)(struct metrics *m, void *ud),
			      void *ud)
{
	/* Under the render lock: once this returns, no render is running it. */
	pthread_mutex_lock(&m->render_lock);
	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < m->n_collectors;)
		if (m->collectors[i].fn == fn && m->collectors[i].ud == ud) {
			if (m->collectors[i].owned)
				free(m->collectors[i].ud);
			memmove(&m->collectors[i], &m->collectors[i + 1],
				(m->n_collectors - i - 1) * sizeof(*m->collectors));
			m->n_collectors--;
		} else {
			i++;
		}
	pthread_mutex_unlock(&m->lock);
	pthread_mutex_unlock(&m->render_lock);
}

void metrics_render(struct metrics *m, struct buf *out)
{
	pthread_mutex_lock(&m->render_lock);
	/* Collectors may register families: run them without the registry lock. */
	pthread_mutex_lock(&m->lock);
	size_t n = m->n_collectors;
	struct collector *cs = xmalloc((n ? n : 1) * sizeof(*cs));
	if (n)
		memcpy(cs, m->collectors, n * sizeof(*cs));
	pthread_mutex_unlock(&m->lock);
	for (size_t i = 0; i < n; i++)
		cs[i].fn(m, cs[i].ud);
	free(cs);
	/* Lock order: registry, then family (registration takes only the first). */
	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < m->n; i++)
		render_family(m->families[i], out);
	pthread_mutex_unlock(&m->lock);
	pthread_mutex_unlock(&m->render_lock);
}

/* ---- process_* families --------------------------------------------------- */

struct process_families {
	struct metric *cpu, *rss, *vsz, *fds, *max_fds, *start;
};

/* Fields 14 (utime), 15 (stime), 22 (starttime), 23 (vsize), 24 (rss) of /proc/self/stat. */
static int read_proc_stat(uint64_t *utime, uint64_t *stime, uint64_t *start, uint64_t *vsize,
			  uint64_t *rss)
{
	struct buf b = BUF_INIT;
	int r = read_file("/proc/self/stat", 4096, &b);
	if (r < 0)
		return r;
	/* The command name (field 2) may hold spaces and ')': skip to the last ')'. */
	const char *p = strrchr(b.data, ')');
	if (!p) {
		buf_release(&b);
		return -EINVAL;
	}
	p++;
	uint64_t v[25] = {0};
	int field = 2;
	while (*p && field < 24) {
		while (*p == ' ')
			p++;
		field++;
		char *end;
		v[field] = strtoull(p, &end, 10);
		p = end;
		while (*p && *p != ' ')
			p++;
	}
	buf_release(&b);
	if (field < 24)
		return -EINVAL;
	*utime = v[14];
	*stime = v[15];
	*start = v[22];
	*vsize = v[23];
	*rss = v[24];
	return 0;
}

static double boot_time_s(void)
{
	struct buf b = BUF_INIT;
	double bt = 0;
	if (read_file("/proc/stat", 1 << 20, &b) >= 0) {
		const char *p = strstr(b.data, "\nbtime ");
		if (p)
			bt = strtod(p + strlen("\nbtime "), NULL);
	}
	buf_release(&b);
	return bt;
}

static void collect_process(struct metrics *m, void *ud)
{
	(void)m;
	struct process_families *pf = ud;
	uint64_t ut, st, start, vsize, rss;
	long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	if (tck > 0 && page > 0 && read_proc_stat(&ut, &st, &start, &vsize, &rss) >= 0) {
		metric_set(pf->cpu, NULL, (double)(ut + st) / (double)tck);
		metric_set(pf->rss, NULL, (double)rss * (double)page);
		metric_set(pf->vsz, NULL, (double)vsize);
		double bt = boot_time_s();
		if (bt > 0)
			metric_set(pf->start, NULL, bt + (double)start / (double)tck);
	}
	DIR *d = opendir("/proc/self/fd");
	if (d) {
		size_t n = 0;
		struct dirent *de;
		while ((de = readdir(d)))
			if (de->d_name[0] != '.')
				n++;
		closedir(d);
		metric_set(pf->fds, NULL, (double)(n > 0 ? n - 1 : 0)); /* minus opendir's own */
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
		metric_set(pf->max_fds, NULL,
			   rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur);
}

void metrics_add_process(struct metrics *m)
{
	struct process_families *p = xcalloc(1, sizeof(*p));
	p->cpu = metrics_counter(m, "process_cpu_seconds_total",
				 "Total user and system CPU time spent in seconds.", NULL);
	p->rss = metrics_gauge(m, "process_resident_memory_bytes",
			       "Resident memory size in bytes.", NULL);
	p->vsz = metrics_gauge(m, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
			       NULL);
	p->fds = metrics_gauge(m, "process_open_fds", "Number of open file descriptors.", NULL);
	p->max_fds = metrics_gauge(m, "process_max_fds",
				   "Maximum number of open file descriptors.", NULL);
	p->start = metrics_gauge(m, "process_start_time_seconds",
				 "Start time of the process since unix epoch in seconds.", NULL);
	add_collector(m, collect_process, p, true);
}
