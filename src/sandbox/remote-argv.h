/*
 * The argv request: how the front (src/front/kiln.c, the small static
 * `kiln`) hands a whole `kiln sandbox run` command line to a running
 * `kiln sandbox serve`. Shared by the front (musl, no other kiln header)
 * and the server, like kiln-init's init-proto.h.
 *
 * One frame (the 4-byte native length, then the payload; remote.h) with the
 * client's open fds among 0, 1, 2 as SCM_RIGHTS. The payload is a list of
 * NUL-terminated strings:
 *
 *   SANDBOX_ARGV_MAGIC  STDIO  CWD  ARGC  ARGV[0..ARGC)  ENVC  ENV[0..ENVC)
 *
 * STDIO is the decimal bit mask of the fds that came (bit i: fd i), CWD the
 * client's working directory (absolute), ARGV the arguments from "run" on,
 * ENV the client's environment. Counts are decimal.
 *
 * The server answers with one frame:
 *   "local"     it does not take this run (options that need the client's
 *               own process such as --keep, a usage error, --help, another
 *               state dir, another uid): the
 *               client runs the full kiln with the same arguments; nothing
 *               was read from or written to the client's fds.
 *   "exit N"    the run is over and reported on the client's stdout/stderr
 *               exactly as the full kiln would; the client exits with N.
 * Meanwhile the client may send {"cancel": SIGNO} frames (remote.h), and
 * its closing the connection cancels the run.
 */
#pragma once

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#define SANDBOX_ARGV_MAGIC "kiln-argv 1"
#define SANDBOX_ARGV_SOCKET "serve.sock"
#define SANDBOX_ARGV_MAX_FRAME (1024 * 1024)
/* At most this many arguments and environment entries each. */
#define SANDBOX_ARGV_MAX_STRINGS 65536

/*
 * The default state dir of a process of uid with $XDG_RUNTIME_DIR xdg (or
 * NULL) into out: /var/lib/kiln/sandbox as root, else $XDG_RUNTIME_DIR/
 * kiln/sandbox, else /tmp/kiln-UID/sandbox. 0, or -1 if it does not fit.
 * (Here so that the front and the sandbox library share the one rule.)
 */
static inline int sandbox_state_dir_into(char *out, size_t size, uid_t uid, const char *xdg)
{
	int n;
	if (uid == 0)
		n = snprintf(out, size, "/var/lib/kiln/sandbox");
	else if (xdg && xdg[0] == '/')
		n = snprintf(out, size, "%s/kiln/sandbox", xdg);
	else
		n = snprintf(out, size, "/tmp/kiln-%u/sandbox", (unsigned)uid);
	return n >= 0 && (size_t)n < size ? 0 : -1;
}

/*
 * Sends one frame (a native 4-byte length, then len bytes of data) with
 * nfds (0..3) fds riding on its first byte. 0, or -errno. The caller
 * checks len and nfds.
 */
static inline int sandbox_frame_sendmsg(int sock, const void *data, size_t len, const int *fds,
					size_t nfds)
{
	uint32_t hdr = (uint32_t)len;
	struct iovec iov[2] = {{.iov_base = &hdr, .iov_len = sizeof(hdr)},
			       {.iov_base = (void *)(uintptr_t)data, .iov_len = len}};
	char cbuf[CMSG_SPACE(sizeof(int) * 3)];
	struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
	if (nfds) {
		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
	}
	size_t total = sizeof(hdr) + len, sent = 0;
	while (sent < total) {
		ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		sent += (size_t)n;
		/* The fds went with the first byte; the rest is plain data. */
		mh.msg_control = NULL;
		mh.msg_controllen = 0;
		size_t skip = (size_t)n;
		while (mh.msg_iovlen && skip >= mh.msg_iov[0].iov_len) {
			skip -= mh.msg_iov[0].iov_len;
			mh.msg_iov++;
			mh.msg_iovlen--;
		}
		if (mh.msg_iovlen) {
			mh.msg_iov[0].iov_base = (char *)mh.msg_iov[0].iov_base + skip;
			mh.msg_iov[0].iov_len -= skip;
		}
	}
	return 0;
}
