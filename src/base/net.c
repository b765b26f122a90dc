/* Listen addresses: parsing HOST:PORT / [IPV6]:PORT and printing a bound one. */
#include "base.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

int listen_addr_parse(const char *listen, const char *what, const char *example,
                      bool allow_http, struct sockaddr_storage *ss, socklen_t *len,
                      struct kiln_err *err)
{
	_cleanup_free_ char *copy = xstrdup(listen);
	char *host = copy, *port;
	if (allow_http && startswith(copy, "http://"))
		host += strlen("http://");
	if (*host == '[') {
		char *e = strchr(host, ']');
		if (!e || e[1] != ':')
			return kiln_err_set(err, -EINVAL, "%s '%s': expected [IPV6]:PORT", what,
			                    listen);
		*e = '\0';
		host++;
		port = e + 2;
	} else {
		port = strrchr(host, ':');
		if (!port)
			return kiln_err_set(err, -EINVAL,
			                    "%s '%s': expected HOST:PORT (e.g. %s; port 0 picks a "
			                    "free one)",
			                    what, listen, example);
		*port++ = '\0';
	}
	int64_t p;
	if (parse_int64(port, 0, 65535, &p) < 0)
		return kiln_err_set(err, -EINVAL, "%s '%s': bad port '%s'", what, listen, port);
	struct addrinfo hints = {.ai_family = AF_UNSPEC,
	                         .ai_socktype = SOCK_STREAM,
	                         .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
	                *res = NULL;
	int rc = getaddrinfo(*host ? host : NULL, port, &hints, &res);
	if (rc != 0)
		return kiln_err_set(err, -EINVAL, "%s '%s': %s", what, listen, gai_strerror(rc));
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	if (len)
		*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

void sockaddr_format(const struct sockaddr_storage *ss, char *out, size_t n)
{
	char host[INET6_ADDRSTRLEN] = "?";
	if (ss->ss_family == AF_INET) {
		struct sockaddr_in in;
		memcpy(&in, ss, sizeof(in));
		inet_ntop(AF_INET, &in.sin_addr, host, sizeof(host));
		snprintf(out, n, "%s:%d", host, ntohs(in.sin_port));
	} else if (ss->ss_family == AF_INET6) {
		struct sockaddr_in6 in6;
		memcpy(&in6, ss, sizeof(in6));
		inet_ntop(AF_INET6, &in6.sin6_addr, host, sizeof(host));
		snprintf(out, n, "[%s]:%d", host, ntohs(in6.sin6_port));
	} else {
		snprintf(out, n, "?");
	}
}
