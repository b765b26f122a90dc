/*
 * metrics: families hold series keyed by their label values; rendering
 * walks them under each family's lock. Label values are escaped as the
 * exposition format requires (backslash, double quote, newline).
 */
#include "metrics.h"

#include <math.h>
#include <pthread.h>

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

struct metrics {
	pthread_mutex_t lock;
	struct metric **families;
	size_t n, cap;
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
	pthread_mutex_destroy(&m->lock);
	free(m);
}

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
	while (labels && labels[f->n_labels])
		f->n_labels++;
	f->labels = xcalloc(f->n_labels ? f->n_labels : 1, sizeof(char *));
	for (size_t i = 0; i < f->n_labels; i++)
		f->labels[i] = xstrdup(labels[i]);
	if (n_buckets) {
		f->buckets = xmalloc(n_buckets * sizeof(double));
		memcpy(f->buckets, buckets, n_buckets * sizeof(double));
		f->n_buckets = n_buckets;
	}
	pthread_mutex_init(&f->lock, NULL);
	m->families = xgrow(m->families, &m->cap, m->n + 1, sizeof(*m->families));
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

/* Finds or creates the series; called with f->lock held. */
static struct series *series_get(struct metric *f, const char *const *values)
{
	for (size_t i = 0; i < f->n_series; i++) {
		struct series *s = &f->series[i];
		size_t j;
		for (j = 0; j < f->n_labels; j++)
			if (!streq(s->values[j], values[j] ? values[j] : ""))
				break;
		if (j == f->n_labels)
			return s;
	}
	f->series = xgrow(f->series, &f->cap_series, f->n_series + 1, sizeof(*f->series));
	struct series *s = &f->series[f->n_series++];
	memset(s, 0, sizeof(*s));
	s->values = xcalloc(f->n_labels ? f->n_labels : 1, sizeof(char *));
	for (size_t j = 0; j < f->n_labels; j++)
		s->values[j] = xstrdup(values[j] ? values[j] : "");
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
	else
		buf_printf(out, "%.17g", v);
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

void metrics_render(struct metrics *m, struct buf *out)
{
	/* Lock order: registry, then family (registration takes only the first). */
	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < m->n; i++)
		render_family(m->families[i], out);
	pthread_mutex_unlock(&m->lock);
}
