/*
 * lazy-ncurses: forwarders for the ncurses functions `kiln top` calls (see
 * lazylib.h): only kiln top needs a terminal library, so no other command
 * maps libncursesw and libtinfo at start. kiln top draws on the window
 * lazylib_ncurses_stdscr() returns and uses only w* functions, never the
 * stdscr/LINES/COLS variables (they live in the library).
 */
#include "lazylib-internal.h"

#include <curses.h>

static struct lazy_lib ncurses_lib = {"libncursesw.so.6", "libncursesw6", NULL, ""};

int lazylib_load_ncurses(struct kiln_err *err)
{
	return lazy_open(&ncurses_lib, err);
}

WINDOW *lazylib_ncurses_stdscr(void)
{
	return *(WINDOW **)lazy_sym(&ncurses_lib, "stdscr");
}

LAZY_FORWARD(ncurses_lib, SCREEN *, newterm, (const char *type, FILE *out, FILE *in),
             (type, out, in))
LAZY_FORWARD_VOID(ncurses_lib, delscreen, (SCREEN * sp), (sp))
LAZY_FORWARD(ncurses_lib, int, endwin, (void), ())
LAZY_FORWARD(ncurses_lib, int, cbreak, (void), ())
LAZY_FORWARD(ncurses_lib, int, noecho, (void), ())
LAZY_FORWARD(ncurses_lib, int, nonl, (void), ())
LAZY_FORWARD(ncurses_lib, int, keypad, (WINDOW * w, bool on), (w, on))
LAZY_FORWARD(ncurses_lib, int, curs_set, (int v), (v))
LAZY_FORWARD(ncurses_lib, int, set_escdelay, (int ms), (ms))
LAZY_FORWARD_VOID(ncurses_lib, wtimeout, (WINDOW * w, int ms), (w, ms))
LAZY_FORWARD(ncurses_lib, int, wgetch, (WINDOW * w), (w))
LAZY_FORWARD(ncurses_lib, int, werase, (WINDOW * w), (w))
LAZY_FORWARD(ncurses_lib, int, wnoutrefresh, (WINDOW * w), (w))
LAZY_FORWARD(ncurses_lib, int, doupdate, (void), ())
LAZY_FORWARD(ncurses_lib, int, wmove, (WINDOW * w, int y, int x), (w, y, x))
LAZY_FORWARD(ncurses_lib, int, waddnstr, (WINDOW * w, const char *s, int n), (w, s, n))
LAZY_FORWARD(ncurses_lib, int, wattr_on, (WINDOW * w, attr_t a, void *opts), (w, a, opts))
LAZY_FORWARD(ncurses_lib, int, wattr_off, (WINDOW * w, attr_t a, void *opts), (w, a, opts))
LAZY_FORWARD(ncurses_lib, int, wclrtoeol, (WINDOW * w), (w))
LAZY_FORWARD(ncurses_lib, bool, has_colors, (void), ())
LAZY_FORWARD(ncurses_lib, int, start_color, (void), ())
LAZY_FORWARD(ncurses_lib, int, use_default_colors, (void), ())
LAZY_FORWARD(ncurses_lib, int, init_pair, (short pair, short fg, short bg), (pair, fg, bg))
LAZY_FORWARD(ncurses_lib, int, beep, (void), ())
