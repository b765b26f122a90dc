#include "hello.h"

#include <stdio.h>

int greet(const char *name, char *buf, size_t size)
{
	int n = snprintf(buf, size, "hello, %s!", name && *name ? name : "world");
	return n < 0 || (size_t)n >= size ? -1 : n;
}
