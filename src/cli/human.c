/* human: durations and sizes for people (see human.h). */
#include "human.h"

#include <inttypes.h>
#include <math.h>

void human_secs(double s, char out[32])
{
	if (!(s >= 0)) {
		snprintf(out, 32, "-");
	} else if (s < 1) {
		snprintf(out, 32, "%.0fms", s * 1000);
	} else if (s < 60) {
		snprintf(out, 32, s < 10 ? "%.2fs" : "%.1fs", s);
	} else if (s < 3600) {
		uint64_t t = (uint64_t)llround(s);
		snprintf(out, 32, "%" PRIu64 "m%02" PRIu64 "s", t / 60, t % 60);
	} else if (s < 86400) {
		uint64_t t = (uint64_t)llround(s / 60);
		snprintf(out, 32, "%" PRIu64 "h%02" PRIu64 "m", t / 60, t % 60);
	} else {
		uint64_t t = (uint64_t)llround(s / 3600);
		snprintf(out, 32, "%" PRIu64 "d%02" PRIu64 "h", t / 24, t % 24);
	}
}

void human_bytes(double b, char out[32])
{
	static const char *const units[] = {"B", "Ki", "Mi", "Gi", "Ti", "Pi"};
	size_t u = 0;
	if (!(b >= 0)) {
		snprintf(out, 32, "-");
		return;
	}
	while (b >= 1024 && u + 1 < ARRAY_SIZE(units)) {
		b /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(out, 32, "%.0fB", b);
	else
		snprintf(out, 32, b < 10 ? "%.2f%s" : b < 100 ? "%.1f%s" : "%.0f%s", b, units[u]);
}

void human_pct(double part, double whole, char out[32])
{
	if (whole <= 0)
		snprintf(out, 32, "-");
	else
		snprintf(out, 32, "%.0f%%", 100.0 * part / whole);
}
