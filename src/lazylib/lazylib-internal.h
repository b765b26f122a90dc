/* lazylib-internal: resolving symbols of a lazily opened library. */
#pragma once

#include "lazylib.h"

#include <pthread.h>

struct lazy_lib {
	const char *soname;  /* "libcurl.so.4" */
	const char *package; /* Debian package providing it, for the error */
	void *handle;        /* set once, under lazylib.c's lock */
	char error[256];
};

/* Opens lib once (thread-safe); -ENOENT with err set on failure. */
int lazy_open(struct lazy_lib *lib, struct kiln_err *err);
/* Resolves name in lib, aborting with a clear message if it cannot. */
void *lazy_sym(struct lazy_lib *lib, const char *name);

/*
 * Defines a forwarder `ret name(params)` that resolves `name` once and calls
 * it with `args`.
 */
#define LAZY_RESOLVE(lib, fn, name)                                             \
	__typeof__(fn##_slot) fn = __atomic_load_n(&fn##_slot, __ATOMIC_ACQUIRE); \
	if (!fn) {                                                              \
		fn = (__typeof__(fn##_slot))lazy_sym(&(lib), name);             \
		__atomic_store_n(&fn##_slot, fn, __ATOMIC_RELEASE);             \
	}

#define LAZY_FORWARD(lib, ret, name, params, args)                              \
	ret name params                                                         \
	{                                                                       \
		static ret(*fn_slot) params;                                    \
		LAZY_RESOLVE(lib, fn, #name)                     \
		return fn args;                                                 \
	}

#define LAZY_FORWARD_VOID(lib, name, params, args)                              \
	void name params                                                        \
	{                                                                       \
		static void(*fn_slot) params;                                   \
		LAZY_RESOLVE(lib, fn, #name)                    \
		fn args;                                                        \
	}
