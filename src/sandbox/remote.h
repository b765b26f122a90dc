/*
 * remote: `kiln sandbox run` handing its command to a running
 * `kiln sandbox serve`, which keeps sandboxes warm (serve.c).
 *
 * Transport: AF_UNIX SOCK_STREAM at <state dir>/serve.sock (0600; the
 * server only answers peers of its own uid, checked with SO_PEERCRED).
 * Frames: a 4-byte length in native byte order (both ends are on one host),
 * then that many bytes of JSON, at most SANDBOX_REMOTE_MAX_FRAME.
 *
 *   client → server   the request (struct sandbox_request), with the
 *                     client's stdio fds as SCM_RIGHTS (those in "stdio")
 *   client → server   {"cancel": SIGNO} any number of times: kill the sandbox
 *   server → client   the result (struct sandbox_result), then close
 *
 * The client closing its end before the result kills the sandbox. The
 * result comes once the command has exited and nothing else of it runs in
 * the sandbox (sandbox_exec.sole); the sandbox's cgroup and kiln-init are
 * removed right after, without the client waiting for them.
 */
#pragma once

#include "sandbox/remote-argv.h"
#include "sandbox/sandbox.h"

#define SANDBOX_SERVE_SOCKET SANDBOX_ARGV_SOCKET
#define SANDBOX_REMOTE_MAX_FRAME SANDBOX_ARGV_MAX_FRAME
#define SANDBOX_REMOTE_VERSION 1

struct sandbox_request {
	/* The shape (rootfs, net, hostname, limits) and the workspace and
	 * binds (absolute host paths); the rest of cfg is the server's. */
	struct sandbox_config cfg;
	char **argv, **envp; /* NULL-terminated */
	const char *cwd;     /* NULL: the default */
	uid_t uid;
	gid_t gid;
	uint64_t timeout_ms;
	bool want_stats;   /* fill sandbox_result.stats (costs a dozen cgroup reads) */
	unsigned stdio;    /* bit i: fd i travels with the request */
	void *owner;       /* decode: what the strings point into */
};

struct sandbox_result {
	char id[17];
	bool started;         /* the command ran (else err_msg says why not) */
	bool warm;            /* in a sandbox made ahead of time */
	struct sandbox_exit exit;
	bool cancelled;
	int cancel_signal;
	bool have_stats;
	struct sandbox_stats stats;
	bool cgroup, rootless, idmap;
	enum sandbox_cgroup_layout layout;
	char *warning; /* or NULL */
	int err_code;  /* -errno of a failed set-up or start, else 0 */
	char *err_msg; /* its sentence, or NULL */
	bool setup_failed; /* the sandbox could not be made (else: the command could not start) */
};

/* The request as JSON into out (appended). */
void sandbox_request_encode(const struct sandbox_request *r, struct buf *out);
/* Parses and checks a request; -EINVAL with a sentence naming the field. */
int sandbox_request_decode(const char *data, size_t len, struct sandbox_request *ret,
			   struct kiln_err *err);
void sandbox_request_free(struct sandbox_request *r);

void sandbox_result_encode(const struct sandbox_result *r, struct buf *out);
int sandbox_result_decode(const char *data, size_t len, struct sandbox_result *ret,
			  struct kiln_err *err);
void sandbox_result_free(struct sandbox_result *r);

/* Copies what sandbox_info() says of sb into r (id, cgroup, layout, rootless,
 * idmap, a copy of the warning). */
void sandbox_result_set_info(struct sandbox_result *r, struct sandbox *sb);

/*
 * Waits for process p of sb to end, killing the whole sandbox when
 * timeout_ms (0: none) passes or a cancel arrives. A cancel is read from
 * cancel_fd (-1: none) by read_cancel, which returns the signal that asks
 * for it, 0 for nothing, or -1 when cancel_fd is done (EOF: taken as
 * SIGTERM, and no longer watched). Fills r->exit, timed_out, cancelled and
 * cancel_signal; the wall time is measured here where the process's own is
 * missing.
 */
void sandbox_run_wait(struct sandbox *sb, struct sandbox_process *p, uint64_t timeout_ms,
		      int cancel_fd, int (*read_cancel)(int fd, void *arg), void *arg,
		      struct sandbox_result *r);

/* Parses {"cancel": N}: the signal, or -EINVAL. */
int sandbox_cancel_decode(const char *data, size_t len);

/* Sends one frame with nfds fds (0..3) attached. */
int sandbox_frame_send(int sock, const void *data, size_t len, const int *fds, size_t nfds);
/*
 * Receives one frame into out (reset first) and up to max_fds fds that came
 * with it (*nfds; extra ones are closed). 0 on EOF before a frame, 1 with a
 * frame, -errno (-EPROTO: a bad length or EOF inside a frame).
 */
int sandbox_frame_recv(int sock, struct buf *out, int *fds, size_t max_fds, size_t *nfds);

/*
 * Connects to the server of state_dir (NULL: the default). Returns the
 * socket, or -errno: -ENOENT / -ECONNREFUSED when none runs.
 */
int sandbox_remote_connect(const char *state_dir);

/* ---- the argv request (remote-argv.h: the front's whole command line) ------ */

struct sandbox_argv_request {
	unsigned stdio; /* bit i: fd i came with it */
	const char *cwd;
	char **argv; /* NULL-terminated, from "run" on; point into the frame */
	size_t argc;
	char **envp; /* NULL-terminated */
};

/* Whether a frame is an argv request (it starts with the magic). */
bool sandbox_argv_is_request(const char *data, size_t len);
/* Parses one; the strings point into data. -EINVAL with a sentence. */
int sandbox_argv_decode(const char *data, size_t len, struct sandbox_argv_request *ret,
			struct kiln_err *err);
void sandbox_argv_request_free(struct sandbox_argv_request *r);

/*
 * How a server takes argv requests (the CLI's parser, so that the server
 * reads a command line exactly as `kiln sandbox run` does).
 */
struct sandbox_argv_handler {
	/*
	 * Turns the command line into *req (strings may point into argv and
	 * envp, which outlive the run) and *ctx: 1; or 0: the server answers
	 * "local" (a usage error, --help, options the server does not take).
	 * req->cfg.state_dir must be the absolute state dir the command names.
	 */
	int (*parse)(void *arg, char **argv, size_t argc, char **envp, const char *cwd,
		     struct sandbox_request *req, void **ctx);
	/* Reports r on out_fd / err_fd (-1: the client has none) as the command
	 * would, frees ctx, and returns the command's exit status. */
	int (*finish)(void *arg, void *ctx, const struct sandbox_result *r, int out_fd, int err_fd);
	void *arg;
};

/* ---- the server (serve.c) ------------------------------------------------- */

struct sandbox_server_config {
	const char *state_dir;     /* NULL: the default */
	const char *cgroup_parent; /* as in sandbox_config */
	const char *cgroup_root;
	const char *init_path;
	/* The shape to keep warm at start (rootfs, net, hostname, limits);
	 * afterwards the shape of the last request. */
	struct sandbox_config shape;
	unsigned warm; /* sandboxes kept ready (0: none, every run is cold) */
	/* argv requests (parse NULL: every one is answered "local"). */
	struct sandbox_argv_handler argv;
};

/*
 * Listens on <state dir>/serve.sock and runs requests until stop_fd becomes
 * readable (then running sandboxes are killed, their clients told so, and
 * every warm sandbox is destroyed). ready_cb, if set, is called once the
 * socket listens. -errno with a sentence in err if it cannot start (another
 * server holds the state dir, the socket cannot be made).
 */
int sandbox_serve(const struct sandbox_server_config *cfg, int stop_fd,
		  void (*ready_cb)(const char *socket_path, void *arg), void *arg,
		  struct kiln_err *err);

/* ---- status: {"status":true} → struct sandbox_server_status --------------- */

struct sandbox_server_status {
	unsigned warm_ready; /* sandboxes ready for the pool's shape */
	unsigned warm_want;  /* --warm */
	unsigned teardowns;  /* used sandboxes not yet torn down */
	unsigned active;     /* runs in flight */
};

/* Whether a frame is a status request. */
bool sandbox_status_is_request(const char *data, size_t len);
void sandbox_status_encode(const struct sandbox_server_status *s, struct buf *out);
/* Asks the server on sock (one request per connection). */
int sandbox_remote_status(int sock, struct sandbox_server_status *ret, struct kiln_err *err);
