/* time: clocks, and the duration and size grammar shared by specs and flags. */
#include "base.h"

#include <math.h>
#include <time.h>

uint64_t now_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

uint64_t now_real_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

void format_rfc3339(uint64_t real_ns, char out[32])
{
	time_t sec = (time_t)(real_ns / NSEC_PER_SEC);
	unsigned ms = (unsigned)((real_ns % NSEC_PER_SEC) / NSEC_PER_MSEC);
	struct tm tm;
	gmtime_r(&sec, &tm);
	if (snprintf(out, 32, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
		     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms % 1000) >= 32)
		out[31] = '\0'; /* years past 9999 only */
}

/*
 * Reads a non-negative decimal number "12" or "1.5" at *p. Digits only, at
 * most 15 significant characters, so the result is exact enough and bounded.
 */
static int scan_number(const char **p, double *ret)
{
	const char *s = *p;
	double v = 0, scale = 0;
	size_t digits = 0;
	for (; (*s >= '0' && *s <= '9') || *s == '.'; s++) {
		if (*s == '.') {
			if (scale != 0)
				return -EINVAL;
			scale = 1;
			continue;
		}
		if (++digits > 15)
			return -ERANGE;
		v = v * 10 + (*s - '0');
		if (scale != 0)
			scale *= 10;
	}
	if (digits == 0 || s[-1] == '.')
		return -EINVAL;
	*ret = scale != 0 ? v / scale : v;
	*p = s;
	return 0;
}

int parse_duration_ms(const char *s, uint64_t *ret_ms)
{
	static const struct {
		const char *unit;
		double ms;
	} units[] = {
		{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
	};
	const double max_ms = 365.0 * 86400000;
	if (!s || !*s)
		return -EINVAL;
	double total = 0;
	const char *p = s;
	while (*p) {
		double v;
		int r = scan_number(&p, &v);
		if (r < 0)
			return r;
		size_t best = ARRAY_SIZE(units);
		for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
			size_t n = strlen(units[i].unit);
			if (strncmp(p, units[i].unit, n) == 0 &&
			    (best == ARRAY_SIZE(units) || n > strlen(units[best].unit)))
				best = i;
		}
		if (best == ARRAY_SIZE(units))
			return -EINVAL;
		p += strlen(units[best].unit);
		total += v * units[best].ms;
		if (total > max_ms)
			return -ERANGE;
	}
	*ret_ms = (uint64_t)llround(total);
	return 0;
}

void format_duration_ms(uint64_t ms, char out[32])
{
	if (ms == 0) {
		snprintf(out, 32, "0s");
		return;
	}
	if (ms % 1000) {
		snprintf(out, 32, "%llums", (unsigned long long)ms);
		return;
	}
	uint64_t s = ms / 1000;
	uint64_t h = s / 3600, m = (s % 3600) / 60, sec = s % 60;
	int n = 0;
	if (h)
		n += snprintf(out + n, 32 - (size_t)n, "%lluh", (unsigned long long)h);
	if (m)
		n += snprintf(out + n, 32 - (size_t)n, "%llum", (unsigned long long)m);
	if (sec)
		snprintf(out + n, 32 - (size_t)n, "%llus", (unsigned long long)sec);
}

int parse_size(const char *s, uint64_t *ret_bytes)
{
	static const struct {
		const char *unit;
		double mult;
	} units[] = {
		{"Ki", 1024.0}, {"Mi", 1048576.0}, {"Gi", 1073741824.0}, {"Ti", 1099511627776.0},
		{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"", 1},
	};
	const double max = 1125899906842624.0; /* 1 PiB */
	if (!s || !*s)
		return -EINVAL;
	const char *p = s;
	double v;
	int r = scan_number(&p, &v);
	if (r < 0)
		return r;
	for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
		if (!streq(p, units[i].unit))
			continue;
		double bytes = v * units[i].mult;
		if (bytes > max)
			return -ERANGE;
		if (units[i].mult == 1 && bytes != (double)(uint64_t)bytes)
			return -EINVAL; /* fractional bytes */
		*ret_bytes = (uint64_t)llround(bytes);
		return 0;
	}
	return -EINVAL;
}

void format_size(uint64_t bytes, char out[32])
{
	static const char *const units[] = {"Ti", "Gi", "Mi", "Ki"};
	static const uint64_t mult[] = {1ULL << 40, 1ULL << 30, 1ULL << 20, 1ULL << 10};
	for (size_t i = 0; i < ARRAY_SIZE(units); i++)
		if (bytes && bytes % mult[i] == 0) {
			snprintf(out, 32, "%llu%s", (unsigned long long)(bytes / mult[i]), units[i]);
			return;
		}
	snprintf(out, 32, "%llu", (unsigned long long)bytes);
}
