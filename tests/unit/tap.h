/*
 * tap.h: a minimal unit-test harness speaking TAP (meson test protocol 'tap').
 *
 *   TEST(parse_size_units) { CHECK_EQ(parse_size("1Ki", &v), 0); ... }
 *   int main(void) { return tap_run(); }
 *
 * Each TEST registers itself; a failed CHECK prints file:line and the values
 * and marks the test failed but lets it go on, so one run shows every
 * failure.
 */
#pragma once

#include "base/base.h"

#include <inttypes.h>

struct tap_test {
	const char *name;
	void (*fn)(void);
	struct tap_test *next;
};

extern struct tap_test *tap_tests;
extern int tap_failed;

void tap_register(struct tap_test *t);
int tap_run(void);

#define TEST(name)                                                             \
	static void test_##name(void);                                         \
	static struct tap_test tap_##name = {#name, test_##name, NULL};        \
	__attribute__((constructor)) static void tap_reg_##name(void)          \
	{                                                                      \
		tap_register(&tap_##name);                                     \
	}                                                                      \
	static void test_##name(void)

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			printf("# %s:%d: CHECK(%s) failed\n", __FILE__,        \
			       __LINE__, #cond);                               \
			tap_failed = 1;                                        \
		}                                                              \
	} while (0)

#define CHECK_EQ(a, b)                                                         \
	do {                                                                   \
		intmax_t _a = (intmax_t)(a), _b = (intmax_t)(b);               \
		if (_a != _b) {                                                \
			printf("# %s:%d: %s == %s failed: %jd != %jd\n",       \
			       __FILE__, __LINE__, #a, #b, _a, _b);            \
			tap_failed = 1;                                        \
		}                                                              \
	} while (0)

#define CHECK_STREQ(a, b)                                                      \
	do {                                                                   \
		const char *_a = (a), *_b = (b);                               \
		if (!_a || !_b || strcmp(_a, _b) != 0) {                       \
			printf("# %s:%d: %s == %s failed: '%s' != '%s'\n",     \
			       __FILE__, __LINE__, #a, #b, _a ? _a : "(null)",  \
			       _b ? _b : "(null)");                            \
			tap_failed = 1;                                        \
		}                                                              \
	} while (0)
