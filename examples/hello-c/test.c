/*
 * test: checks greet() and writes a JUnit XML report (test-report.xml), the
 * artifact the example job keeps. Exits 1 if a check failed.
 */
#include "hello.h"

#include <stdio.h>
#include <string.h>

struct result {
	const char *name;
	int ok;
};

int main(void)
{
	char buf[64], tiny[4];
	struct result r[] = {
		{"default name", greet(NULL, buf, sizeof(buf)) == 13 && !strcmp(buf, "hello, world!")},
		{"given name", greet("kiln", buf, sizeof(buf)) == 12 && !strcmp(buf, "hello, kiln!")},
		{"empty name", greet("", buf, sizeof(buf)) == 13 && !strcmp(buf, "hello, world!")},
		{"buffer too small", greet("kiln", tiny, sizeof(tiny)) == -1},
	};
	size_t n = sizeof(r) / sizeof(r[0]), failed = 0;
	for (size_t i = 0; i < n; i++) {
		printf("%s - %s\n", r[i].ok ? "ok" : "FAIL", r[i].name);
		failed += !r[i].ok;
	}
	FILE *f = fopen("test-report.xml", "w");
	if (!f) {
		perror("test-report.xml");
		return 1;
	}
	fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
	fprintf(f, "<testsuite name=\"hello\" tests=\"%zu\" failures=\"%zu\">\n", n, failed);
	for (size_t i = 0; i < n; i++) {
		fprintf(f, "  <testcase classname=\"hello\" name=\"%s\"", r[i].name);
		fputs(r[i].ok ? "/>\n" : "><failure message=\"check failed\"/></testcase>\n", f);
	}
	fprintf(f, "</testsuite>\n");
	if (fclose(f) != 0) {
		perror("test-report.xml");
		return 1;
	}
	printf("%zu tests, %zu failed; report in test-report.xml\n", n, failed);
	return failed ? 1 : 0;
}
