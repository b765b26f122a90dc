/*
 * lazy-mhd: forwarders for the libmicrohttpd functions kiln calls (see
 * lazylib.h). MHD_start_daemon forwards to MHD_start_daemon_va; the info
 * getters forward one pointer-sized extra argument, which libmicrohttpd reads
 * only for the info types that take one.
 */
#include "lazylib-internal.h"

#include <sys/socket.h>
#include <microhttpd.h>

static struct lazy_lib mhd_lib = {"libmicrohttpd.so.12", "libmicrohttpd12", NULL, ""};

int lazylib_load_mhd(struct kiln_err *err)
{
	return lazy_open(&mhd_lib, err);
}

struct MHD_Daemon *MHD_start_daemon(unsigned int flags, uint16_t port, MHD_AcceptPolicyCallback apc,
				    void *apc_cls, MHD_AccessHandlerCallback dh, void *dh_cls, ...)
{
	va_list ap;
	va_start(ap, dh_cls);
	struct MHD_Daemon *d = MHD_start_daemon_va(flags, port, apc, apc_cls, dh, dh_cls, ap);
	va_end(ap);
	return d;
}

const union MHD_ConnectionInfo *MHD_get_connection_info(struct MHD_Connection *connection,
							enum MHD_ConnectionInfoType info_type,
							...)
{
	static const union MHD_ConnectionInfo *(*fn_slot)(struct MHD_Connection *,
							  enum MHD_ConnectionInfoType, ...);
	LAZY_RESOLVE(mhd_lib, fn, "MHD_get_connection_info")
	va_list ap;
	va_start(ap, info_type);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return fn(connection, info_type, arg);
}

const union MHD_DaemonInfo *MHD_get_daemon_info(struct MHD_Daemon *daemon,
						enum MHD_DaemonInfoType info_type, ...)
{
	static const union MHD_DaemonInfo *(*fn_slot)(struct MHD_Daemon *,
						      enum MHD_DaemonInfoType, ...);
	LAZY_RESOLVE(mhd_lib, fn, "MHD_get_daemon_info")
	va_list ap;
	va_start(ap, info_type);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return fn(daemon, info_type, arg);
}

/* The one option (MHD_CONNECTION_OPTION_TIMEOUT) takes an unsigned int. */
enum MHD_Result MHD_set_connection_option(struct MHD_Connection *c,
					  enum MHD_CONNECTION_OPTION option, ...)
{
	static enum MHD_Result (*fn_slot)(struct MHD_Connection *, enum MHD_CONNECTION_OPTION, ...);
	LAZY_RESOLVE(mhd_lib, fn, "MHD_set_connection_option")
	va_list ap;
	va_start(ap, option);
	unsigned int arg = va_arg(ap, unsigned int);
	va_end(ap);
	return fn(c, option, arg);
}

LAZY_FORWARD(mhd_lib, struct MHD_Daemon *, MHD_start_daemon_va,
	     (unsigned int flags, uint16_t port, MHD_AcceptPolicyCallback apc, void *apc_cls,
	      MHD_AccessHandlerCallback dh, void *dh_cls, va_list ap),
	     (flags, port, apc, apc_cls, dh, dh_cls, ap))
LAZY_FORWARD_VOID(mhd_lib, MHD_stop_daemon, (struct MHD_Daemon * daemon), (daemon))
LAZY_FORWARD(mhd_lib, MHD_socket, MHD_quiesce_daemon, (struct MHD_Daemon * daemon), (daemon))
LAZY_FORWARD(mhd_lib, enum MHD_Result, MHD_queue_response,
	     (struct MHD_Connection * c, unsigned int status, struct MHD_Response *r),
	     (c, status, r))
LAZY_FORWARD_VOID(mhd_lib, MHD_suspend_connection, (struct MHD_Connection * c), (c))
LAZY_FORWARD_VOID(mhd_lib, MHD_resume_connection, (struct MHD_Connection * c), (c))
LAZY_FORWARD(mhd_lib, const char *, MHD_lookup_connection_value,
	     (struct MHD_Connection * c, enum MHD_ValueKind kind, const char *key),
	     (c, kind, key))
LAZY_FORWARD(mhd_lib, int, MHD_get_connection_values,
	     (struct MHD_Connection * c, enum MHD_ValueKind kind, MHD_KeyValueIterator it,
	      void *cls),
	     (c, kind, it, cls))
LAZY_FORWARD(mhd_lib, struct MHD_Response *, MHD_create_response_from_buffer,
	     (size_t size, void *buffer, enum MHD_ResponseMemoryMode mode), (size, buffer, mode))
LAZY_FORWARD(mhd_lib, struct MHD_Response *, MHD_create_response_from_callback,
	     (uint64_t size, size_t block_size, MHD_ContentReaderCallback crc, void *crc_cls,
	      MHD_ContentReaderFreeCallback crfc),
	     (size, block_size, crc, crc_cls, crfc))
LAZY_FORWARD(mhd_lib, struct MHD_Response *, MHD_create_response_from_fd64,
	     (uint64_t size, int fd), (size, fd))
LAZY_FORWARD(mhd_lib, struct MHD_Response *, MHD_create_response_from_fd_at_offset64,
	     (uint64_t size, int fd, uint64_t offset), (size, fd, offset))
LAZY_FORWARD(mhd_lib, enum MHD_Result, MHD_add_response_header,
	     (struct MHD_Response * r, const char *header, const char *content),
	     (r, header, content))
LAZY_FORWARD(mhd_lib, enum MHD_Result, MHD_del_response_header,
	     (struct MHD_Response * r, const char *header, const char *content),
	     (r, header, content))
LAZY_FORWARD_VOID(mhd_lib, MHD_destroy_response, (struct MHD_Response * r), (r))
LAZY_FORWARD(mhd_lib, enum MHD_Result, MHD_run, (struct MHD_Daemon * d), (d))
