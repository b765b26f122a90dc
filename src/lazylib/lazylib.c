/* lazylib: the dlopen/dlsym part shared by the forwarders. */
#include "lazylib-internal.h"

#include <dlfcn.h>

static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;

int lazy_open(struct lazy_lib *lib, struct kiln_err *err)
{
	void *h = __atomic_load_n(&lib->handle, __ATOMIC_ACQUIRE);
	if (!h) {
		pthread_mutex_lock(&open_lock);
		if (!lib->handle && !lib->error[0]) {
			void *nh = dlopen(lib->soname, RTLD_NOW | RTLD_LOCAL);
			if (nh)
				__atomic_store_n(&lib->handle, nh, __ATOMIC_RELEASE);
			else
				snprintf(lib->error, sizeof(lib->error),
					 "cannot load %s (%s): install the Debian package %s",
					 lib->soname, dlerror(), lib->package);
		}
		h = lib->handle;
		pthread_mutex_unlock(&open_lock);
	}
	if (!h)
		return kiln_err_set(err, -ENOENT, "%s", lib->error);
	return 0;
}
void *lazy_sym(struct lazy_lib *lib, const char *name)
{
	struct kiln_err err = {0};
	if (lazy_open(lib, &err) < 0) {
		fprintf(stderr, "kiln: %s\n", err.msg);
		abort();
	}
	void *p = dlsym(lib->handle, name);
	if (!p) {
		fprintf(stderr, "kiln: %s lacks %s (too old a version?)\n", lib->soname, name);
		abort();
	}
	return p;
}
