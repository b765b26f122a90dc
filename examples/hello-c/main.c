#include "hello.h"

#include <stdio.h>

int main(int argc, char **argv)
{
	char buf[256];
	if (greet(argc > 1 ? argv[1] : NULL, buf, sizeof(buf)) < 0) {
		fprintf(stderr, "hello: name too long\n");
		return 1;
	}
	puts(buf);
	return 0;
}
