/* hello: the greeting the example CI job builds and tests. */
#pragma once

#include <stddef.h>

/* Writes "hello, NAME!" (NAME defaults to "world") into buf; returns its length
 * or -1 if buf is too small. */
int greet(const char *name, char *buf, size_t size);
