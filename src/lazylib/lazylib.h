/*
 * lazylib: libcurl and libmicrohttpd, loaded on first use.
 *
 * Linking them directly makes every `kiln` command map ~30 more shared
 * libraries (GnuTLS, OpenSSL, Kerberos, LDAP, ...) at start-up, ~3 ms on
 * this kind of machine, also for commands that never speak HTTP (`kiln
 * sandbox run`, `kiln validate`). Instead, this module defines the libcurl
 * and libmicrohttpd functions kiln calls as thin forwarders that dlopen the
 * real library the first time any of them is called (docs/decisions).
 *
 * Using a new libcurl or libmicrohttpd function: add one line to
 * lazy-curl.c or lazy-mhd.c (the link fails with "undefined reference"
 * until you do). Including <curl/curl.h> and <microhttpd.h> stays as usual.
 */
#pragma once

#include "base/base.h"

/*
 * Loads the library now; returns 0, or -ENOENT with err naming the missing
 * library and the Debian package that provides it. The forwarders call the
 * same and abort with that message when it fails, so commands that want a
 * clean error call these first.
 */
int lazylib_load_curl(struct kiln_err *err);
int lazylib_load_mhd(struct kiln_err *err);
int lazylib_load_ncurses(struct kiln_err *err);
/* ncurses' stdscr (a variable in the library), once newterm() has run. */
struct _win_st *lazylib_ncurses_stdscr(void);
