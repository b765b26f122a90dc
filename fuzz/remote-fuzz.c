/*
 * remote-fuzz: the decoders of kiln sandbox serve's wire format (a request
 * from a client, a result from the server, a cancel, a status request, the
 * front's argv request) and the frame reader over a socket. The first byte picks one; the rest is
 * its input. A request that decodes must satisfy what the server relies on.
 */
#include "sandbox/remote.h"

#include <sys/socket.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 1 << 18)
		return 0;
	const char *s = (const char *)data + 1;
	size_t n = size - 1;
	struct kiln_err err = {0};
	switch (data[0] % 6) {
	case 0: {
		struct sandbox_request r;
		if (sandbox_request_decode(s, n, &r, &err) == 0) {
			if (!r.argv || !r.argv[0] || !r.argv[0][0] || r.stdio > 7 ||
			    (r.cwd && r.cwd[0] != '/') || r.uid > 65535 ||
			    (r.cfg.rootfs && !streq(r.cfg.rootfs, "host") && r.cfg.rootfs[0] != '/') ||
			    (r.cfg.workspace && r.cfg.workspace[0] != '/') ||
			    r.cfg.n_binds > SANDBOX_MAX_BINDS)
				abort();
			for (size_t i = 0; i < r.cfg.n_binds; i++)
				if (r.cfg.binds[i].src[0] != '/' || r.cfg.binds[i].dst[0] != '/')
					abort();
			/* Re-encoding gives the same request. */
			struct buf b = BUF_INIT;
			struct sandbox_request again;
			sandbox_request_encode(&r, &b);
			if (sandbox_request_decode(b.data, b.len, &again, &err) != 0)
				abort();
			sandbox_request_free(&again);
			buf_release(&b);
			sandbox_request_free(&r);
		} else if (!err.msg[0]) {
			abort(); /* every refusal says why */
		}
		break;
	}
	case 1: {
		struct sandbox_result r;
		if (sandbox_result_decode(s, n, &r, &err) == 0) {
			if (strlen(r.id) > 16 || r.exit.exit_code < -1 || r.exit.exit_code > 255)
				abort();
			sandbox_result_free(&r);
		}
		break;
	}
	case 2: {
		int sig = sandbox_cancel_decode(s, n);
		if (sig == 0 || sig > 64)
			abort();
		break;
	}
	case 3:
		(void)sandbox_status_is_request(s, n);
		break;
	case 4: {
		/* The bytes as they would arrive on the socket. */
		int sp[2];
		if (n > 100000 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0)
			return 0;
		if (write_all(sp[0], s, n) < 0) {
			close(sp[0]);
			close(sp[1]);
			return 0;
		}
		close(sp[0]);
		struct buf b = BUF_INIT;
		int fds[3];
		size_t nfds;
		while (sandbox_frame_recv(sp[1], &b, fds, 3, &nfds) > 0)
			if (b.len > SANDBOX_REMOTE_MAX_FRAME || b.data[b.len] != '\0')
				abort();
		close(sp[1]);
		buf_release(&b);
		break;
	}
	case 5: {
		struct sandbox_argv_request r;
		if (sandbox_argv_decode(s, n, &r, &err) == 0) {
			if (!sandbox_argv_is_request(s, n) || r.stdio > 7 || !r.cwd || r.cwd[0] != '/' ||
			    r.argc < 1 || r.argv[r.argc] || !r.envp)
				abort();
			/* Every string lies inside the input, NUL-terminated. */
			for (size_t i = 0; i < r.argc; i++)
				if (!r.argv[i] || r.argv[i] < s || r.argv[i] + strlen(r.argv[i]) >= s + n)
					abort();
			for (char **e = r.envp; *e; e++)
				if (*e < s || *e + strlen(*e) >= s + n)
					abort();
			sandbox_argv_request_free(&r);
		} else if (!err.msg[0]) {
			abort();
		}
		break;
	}
	}
	return 0;
}
