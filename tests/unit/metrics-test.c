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

TEST(promtool_accepts)
{
	if (access("/usr/bin/promtool", X_OK) != 0) {
		printf("# skip: promtool not installed (Debian package prometheus)\n");
		return;
	}
	struct metrics *m = sample();
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
