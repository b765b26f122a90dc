/* Unit tests of src/metrics: exposition text, and promtool's verdict on it. */
#include "tap.h"

#include "metrics/metrics.h"

#include <sys/wait.h>

static struct metrics *sample(void)
{
	struct metrics *m = metrics_new();
	static const char *const jl[] = {"state", "org", NULL};
	struct metric *jobs = metrics_counter(m, "kiln_jobs_total", "Jobs that reached a state.", jl);
	metric_add(jobs, (const char *const[]){"succeeded", "acme"}, 3);
	metric_add(jobs, (const char *const[]){"failed", "a\"b\\c\nd"}, 1);
	metric_add(jobs, (const char *const[]){"succeeded", "acme"}, 2);
	metric_add(jobs, (const char *const[]){"succeeded", "acme"}, -5); /* ignored */
	struct metric *depth = metrics_gauge(m, "kiln_queue_depth", "Queued jobs.", NULL);
	metric_set(depth, NULL, 7);
	static const double b[] = {0.001, 0.01, 0.1};
	struct metric *lat = metrics_histogram(m, "kiln_dispatch_latency_seconds",
					       "Submit to lease.", NULL, b, 3);
	metric_observe(lat, NULL, 0.0005);
	metric_observe(lat, NULL, 0.005);
	metric_observe(lat, NULL, 5);
	return m;
}

TEST(render_text)
{
	struct metrics *m = sample();
	struct buf out = BUF_INIT;
	metrics_render(m, &out);
	CHECK(strstr(out.data, "# TYPE kiln_jobs_total counter\n") != NULL);
	CHECK(strstr(out.data, "kiln_jobs_total{state=\"succeeded\",org=\"acme\"} 5\n") != NULL);
	CHECK(strstr(out.data, "org=\"a\\\"b\\\\c\\nd\"} 1\n") != NULL);
	CHECK(strstr(out.data, "kiln_queue_depth 7\n") != NULL);
	CHECK(strstr(out.data, "kiln_dispatch_latency_seconds_bucket{le=\"0.001\"} 1\n") != NULL);
	CHECK(strstr(out.data, "kiln_dispatch_latency_seconds_bucket{le=\"0.01\"} 2\n") != NULL);
	CHECK(strstr(out.data, "kiln_dispatch_latency_seconds_bucket{le=\"0.10000000000000001\"} 2\n") != NULL ||
	      strstr(out.data, "kiln_dispatch_latency_seconds_bucket{le=\"0.1\"} 2\n") != NULL);
	CHECK(strstr(out.data, "kiln_dispatch_latency_seconds_bucket{le=\"+Inf\"} 3\n") != NULL);
	CHECK(strstr(out.data, "kiln_dispatch_latency_seconds_count 3\n") != NULL);
	buf_release(&out);
	metrics_free(m);
}

TEST(same_name_same_family)
{
	struct metrics *m = metrics_new();
	struct metric *a = metrics_counter(m, "x_total", "x", NULL);
	struct metric *b = metrics_counter(m, "x_total", "x", NULL);
	CHECK(a == b);
	metric_reset(a);
	metrics_free(m);
}

struct collect_ctx {
	struct metric *g;
	int calls;
};

static void collect(struct metrics *m, void *ud)
{
	(void)m;
	struct collect_ctx *c = ud;
	c->calls++;
	metric_reset(c->g);
	metric_set(c->g, (const char *const[]){"default"}, c->calls * 10);
}

TEST(collectors_and_snapshots)
{
	struct metrics *m = metrics_new();
	static const char *const ol[] = {"org", NULL};
	struct collect_ctx c = {.g = metrics_gauge(m, "kiln_queue_depth", "Queued jobs.", ol)};
	metrics_on_collect(m, collect, &c);
	static const double b[] = {1, 2};
	struct metric *h = metrics_histogram(m, "x_seconds", "x.", NULL, b, 2);
	metric_histogram_set(h, NULL, (const uint64_t[]){1, 0, 2}, 7.5);
	metrics_add_process(m);
	struct buf out = BUF_INIT;
	metrics_render(m, &out);
	CHECK(c.calls == 1);
	CHECK(strstr(out.data, "kiln_queue_depth{org=\"default\"} 10\n") != NULL);
	CHECK(strstr(out.data, "x_seconds_bucket{le=\"1\"} 1\n") != NULL);
	CHECK(strstr(out.data, "x_seconds_bucket{le=\"2\"} 1\n") != NULL);
	CHECK(strstr(out.data, "x_seconds_bucket{le=\"+Inf\"} 3\n") != NULL);
	CHECK(strstr(out.data, "x_seconds_sum 7.5\n") != NULL);
	CHECK(strstr(out.data, "x_seconds_count 3\n") != NULL);
	CHECK(strstr(out.data, "\nprocess_resident_memory_bytes ") != NULL);
	CHECK(strstr(out.data, "\nprocess_open_fds ") != NULL);
	CHECK(strstr(out.data, "\nprocess_start_time_seconds ") != NULL);
	buf_reset(&out);
	metrics_render(m, &out);
	CHECK(c.calls == 2);
	CHECK(strstr(out.data, "kiln_queue_depth{org=\"default\"} 20\n") != NULL);
	buf_release(&out);
	metrics_free(m);
}

TEST(promtool_accepts)
{
	if (access("/usr/bin/promtool", X_OK) != 0) {
		printf("# skip: promtool not installed (Debian package prometheus)\n");
		return;
	}
	struct metrics *m = sample();
	metrics_add_process(m);
	struct buf out = BUF_INIT;
	metrics_render(m, &out);
	FILE *p = popen("/usr/bin/promtool check metrics >/dev/null 2>&1", "w");
	CHECK(p != NULL);
	if (p) {
		fwrite(out.data, 1, out.len, p);
		int st = pclose(p);
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	buf_release(&out);
	metrics_free(m);
}

int main(void)
{
	return tap_run();
}
