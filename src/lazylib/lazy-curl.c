/*
 * lazy-curl: forwarders for the libcurl functions kiln calls (see
 * lazylib.h). The variadic setopt/getinfo forward their one argument as a
 * 64-bit value: every libcurl option takes a long, a pointer or a curl_off_t,
 * all passed in the same integer registers on the LP64 ABIs kiln supports.
 */
#define CURL_DISABLE_TYPECHECK 1
#include "lazylib-internal.h"

#include <curl/curl.h>

_Static_assert(sizeof(long) == 8 && sizeof(void *) == 8 && sizeof(curl_off_t) == 8,
	       "lazy-curl forwards variadic arguments as 64-bit values");

static struct lazy_lib curl_lib = {"libcurl.so.4", "libcurl4", NULL, ""};

int lazylib_load_curl(struct kiln_err *err)
{
	return lazy_open(&curl_lib, err);
}

#undef curl_easy_setopt
#undef curl_easy_getinfo

CURLcode curl_easy_setopt(CURL *curl, CURLoption option, ...)
{
	static CURLcode (*fn_slot)(CURL *, CURLoption, ...);
	LAZY_RESOLVE(curl_lib, fn, "curl_easy_setopt")
	va_list ap;
	va_start(ap, option);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return fn(curl, option, arg);
}

CURLcode curl_easy_getinfo(CURL *curl, CURLINFO info, ...)
{
	static CURLcode (*fn_slot)(CURL *, CURLINFO, ...);
	LAZY_RESOLVE(curl_lib, fn, "curl_easy_getinfo")
	va_list ap;
	va_start(ap, info);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return fn(curl, info, arg);
}

LAZY_FORWARD(curl_lib, CURLcode, curl_global_init, (long flags), (flags))
LAZY_FORWARD_VOID(curl_lib, curl_global_cleanup, (void), ())
LAZY_FORWARD(curl_lib, CURL *, curl_easy_init, (void), ())
LAZY_FORWARD_VOID(curl_lib, curl_easy_cleanup, (CURL * curl), (curl))
LAZY_FORWARD_VOID(curl_lib, curl_easy_reset, (CURL * curl), (curl))
LAZY_FORWARD(curl_lib, CURLcode, curl_easy_perform, (CURL * curl), (curl))
LAZY_FORWARD(curl_lib, CURLcode, curl_easy_pause, (CURL * curl, int bitmask), (curl, bitmask))
LAZY_FORWARD(curl_lib, const char *, curl_easy_strerror, (CURLcode code), (code))
LAZY_FORWARD(curl_lib, char *, curl_easy_escape, (CURL * c, const char *s, int len), (c, s, len))
LAZY_FORWARD_VOID(curl_lib, curl_free, (void *p), (p))
LAZY_FORWARD(curl_lib, struct curl_slist *, curl_slist_append,
	     (struct curl_slist * list, const char *s), (list, s))
LAZY_FORWARD_VOID(curl_lib, curl_slist_free_all, (struct curl_slist * list), (list))
LAZY_FORWARD(curl_lib, CURLM *, curl_multi_init, (void), ())
LAZY_FORWARD(curl_lib, CURLMcode, curl_multi_cleanup, (CURLM * m), (m))
LAZY_FORWARD(curl_lib, CURLMcode, curl_multi_add_handle, (CURLM * m, CURL *c), (m, c))
LAZY_FORWARD(curl_lib, CURLMcode, curl_multi_remove_handle, (CURLM * m, CURL *c), (m, c))
LAZY_FORWARD(curl_lib, CURLMcode, curl_multi_perform, (CURLM * m, int *running), (m, running))
LAZY_FORWARD(curl_lib, CURLMcode, curl_multi_poll,
	     (CURLM * m, struct curl_waitfd extra_fds[], unsigned int extra_nfds,
	      int timeout_ms, int *ret),
	     (m, extra_fds, extra_nfds, timeout_ms, ret))
LAZY_FORWARD(curl_lib, CURLMcode, curl_multi_wait,
	     (CURLM * m, struct curl_waitfd extra_fds[], unsigned int extra_nfds,
	      int timeout_ms, int *ret),
	     (m, extra_fds, extra_nfds, timeout_ms, ret))
LAZY_FORWARD(curl_lib, CURLMcode, curl_multi_wakeup, (CURLM * m), (m))
LAZY_FORWARD(curl_lib, CURLMsg *, curl_multi_info_read, (CURLM * m, int *left), (m, left))
LAZY_FORWARD(curl_lib, const char *, curl_multi_strerror, (CURLMcode code), (code))
