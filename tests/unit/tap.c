/* tap: runs the registered tests in registration order and prints TAP. */
#include "tap.h"

struct tap_test *tap_tests;
int tap_failed;
static struct tap_test **tap_tail = &tap_tests;

void tap_register(struct tap_test *t)
{
	*tap_tail = t;
	tap_tail = &t->next;
}

int tap_run(void)
{
	int n = 0, failures = 0;
	for (struct tap_test *t = tap_tests; t; t = t->next)
		n++;
	printf("1..%d\n", n);
	int i = 0;
	for (struct tap_test *t = tap_tests; t; t = t->next) {
		tap_failed = 0;
		t->fn();
		fflush(stdout);
		printf("%s %d - %s\n", tap_failed ? "not ok" : "ok", ++i, t->name);
		failures += tap_failed;
	}
	return failures ? 1 : 0;
}
