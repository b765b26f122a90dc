/*
 * metrics: a Prometheus metrics registry — counters, gauges and histograms
 * with labels — rendered in the text exposition format (version 0.0.4).
 *
 * Thread-safe: each family has its own lock, so hot paths (HTTP requests,
 * dispatch) contend only per metric. Series are created on first use; label
 * values must come from bounded sets (routes, states, orgs), never job ids.
 */
#pragma once

#include "base/base.h"

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

struct metrics;
struct metric;

struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/*
 * Registers a family. `labels` is a NULL-terminated list of label names (or
 * NULL; such a family exports its one series, at 0, from the start). For histograms, `buckets` holds n_buckets ascending upper bounds
 * (the +Inf bucket is implicit).
 * Registering the same name twice returns the existing family.
 */
struct metric *metrics_counter(struct metrics *m, const char *name, const char *help,
			       const char *const *labels);
struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help,
			     const char *const *labels);
struct metric *metrics_histogram(struct metrics *m, const char *name, const char *help,
				 const char *const *labels, const double *buckets,
				 size_t n_buckets);

/* `values` has one entry per label name (or is NULL for unlabelled families). */
void metric_add(struct metric *f, const char *const *values, double v);
void metric_set(struct metric *f, const char *const *values, double v);
void metric_observe(struct metric *f, const char *const *values, double v);
/* Removes every series of a gauge (to re-publish a snapshot). */
void metric_reset(struct metric *f);

/*
 * Sets a histogram series from a snapshot kept elsewhere (lock-free counters
 * on a hot path): `counts` holds n_buckets + 1 per-bucket (not cumulative)
 * counts, the last one for observations above every bound.
 */
void metric_histogram_set(struct metric *f, const char *const *values, const uint64_t *counts,
			  double sum);

/*
 * Registers a collector: fn runs at the start of every metrics_render, with
 * no family lock held, to refresh gauges (or snapshot counters) from state
 * kept elsewhere. Renders are serialised, so a collector that resets and
 * refills a family is never seen half-done by another scrape.
 */
void metrics_on_collect(struct metrics *m, void (*fn)(struct metrics *m, void *ud), void *ud);
/* Removes a collector (fn, ud): from then on, no render calls it. The
 * families it filled stay, with their last values. */
void metrics_remove_collector(struct metrics *m, void (*fn)(struct metrics *m, void *ud),
			      void *ud);

/*
 * Adds the standard process_* families (process_cpu_seconds_total,
 * process_resident_memory_bytes, process_virtual_memory_bytes,
 * process_open_fds, process_max_fds, process_start_time_seconds), read from
 * /proc/self at each scrape.
 */
void metrics_add_process(struct metrics *m);

/* Appends the exposition text of every family, in registration order. */
void metrics_render(struct metrics *m, struct buf *out);

/* Buckets suited to latencies in seconds: 0.5 ms .. 60 s. */
extern const double metrics_latency_buckets[];
extern const size_t metrics_latency_buckets_n;
/* Buckets for job durations in seconds: 1 s .. 24 h. */
extern const double metrics_duration_buckets[];
extern const size_t metrics_duration_buckets_n;
/* Buckets for memory in bytes: 16 MiB .. 256 GiB. */
extern const double metrics_bytes_buckets[];
extern const size_t metrics_bytes_buckets_n;
