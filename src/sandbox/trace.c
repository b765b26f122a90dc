/*
 * trace: where a sandbox's start and end spend their time, on request.
 *
 * With KILN_SANDBOX_TRACE set in the environment, sandbox_create(),
 * sandbox_exec() and sandbox_destroy() record CLOCK_MONOTONIC marks — the
 * parent's into a struct sb_trace, the clone child's (one per set-up step)
 * into a page shared with the parent (MAP_SHARED, mapped before clone3, so
 * the child only stores numbers) — and print them to stderr, one line per
 * mark with the time since the start and since the previous mark:
 *
 *     sandbox-trace id=... op=create   0.412 +0.105 child  make mounts private
 *
 * Without the variable nothing is mapped or recorded: one predictable branch
 * per mark. A developer's diagnostic (like LD_DEBUG), so it writes stderr
 * directly rather than kiln's log.
 */
#include "sandbox-internal.h"

#include <sys/mman.h>
#include <time.h>

static pthread_once_t trace_once = PTHREAD_ONCE_INIT;
static bool trace_on; /* written once under trace_once */

static void trace_init(void)
{
	const char *v = getenv("KILN_SANDBOX_TRACE");
	trace_on = v && *v && !streq(v, "0");
}

bool sb_trace_enabled(void)
{
	pthread_once(&trace_once, trace_init);
	return trace_on;
}

uint64_t sb_trace_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

void sb_trace_begin(struct sb_trace *t, const char *op)
{
	t->on = sb_trace_enabled();
	t->n = 0;
	t->op = op;
	t->child = NULL;
	if (!t->on)
		return;
	t->start = sb_trace_now();
}

void sb_trace_mark(struct sb_trace *t, const char *name)
{
	if (!t || !t->on || t->n >= SB_TRACE_MAX)
		return;
	t->mark[t->n].name = name;
	t->mark[t->n].ns = sb_trace_now();
	t->n++;
}

uint64_t *sb_trace_child_page(struct sb_trace *t)
{
	if (!t->on)
		return NULL;
	void *p = mmap(NULL, SB_TRACE_CHILD_MAX * sizeof(uint64_t), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	t->child = p == MAP_FAILED ? NULL : p;
	return t->child;
}

void sb_trace_end(struct sb_trace *t, const char *id)
{
	if (!t->on)
		return;
	/* Merge the parent's marks (in order) with the child's (by time). */
	struct {
		const char *who, *name;
		uint64_t ns;
	} all[SB_TRACE_MAX + SB_TRACE_CHILD_MAX];
	size_t n = 0;
	for (size_t i = 0; i < t->n; i++)
		all[n].who = "parent", all[n].name = t->mark[i].name, all[n++].ns = t->mark[i].ns;
	for (size_t s = 0; t->child && s < SB_TRACE_CHILD_MAX; s++)
		if (t->child[s])
			all[n].who = "child", all[n].name = sb_step_name((enum sb_step)s),
			all[n++].ns = t->child[s];
	for (size_t i = 1; i < n; i++) /* insertion sort: a few dozen marks */
		for (size_t k = i; k > 0 && all[k].ns < all[k - 1].ns; k--) {
			__typeof__(all[0]) tmp = all[k];
			all[k] = all[k - 1];
			all[k - 1] = tmp;
		}
	uint64_t prev = t->start;
	for (size_t i = 0; i < n; i++) {
		fprintf(stderr, "sandbox-trace id=%s op=%s %8.3f %+7.3f %-6s %s\n", id ? id : "-",
			t->op, (double)(all[i].ns - t->start) / 1e6, (double)(all[i].ns - prev) / 1e6,
			all[i].who, all[i].name);
		prev = all[i].ns;
	}
	if (t->child)
		munmap(t->child, SB_TRACE_CHILD_MAX * sizeof(uint64_t));
	t->child = NULL;
}
