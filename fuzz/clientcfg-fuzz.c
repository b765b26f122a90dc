/*
 * clientcfg-fuzz: the client's config file parser on arbitrary bytes.
 * Properties (abort otherwise): a refused file has a message naming
 * "file:LINE:" (or the NUL byte); an accepted one yields values without
 * newlines, '#', or surrounding whitespace.
 */
#include "client/client.h"

#include <ctype.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_value(const char *v)
{
	if (!v)
		return;
	size_t n = strlen(v);
	if (strchr(v, '\n') || strchr(v, '#'))
		abort();
	if (n && (isspace((unsigned char)v[0]) || isspace((unsigned char)v[n - 1])))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 65536)
		return 0;
	char *server = NULL, *token = NULL;
	struct kiln_err err = {0};
	int r = client_config_parse("config", (const char *)data, size, &server, &token, &err);
	if (r < 0) {
		if (!startswith(err.msg, "config:"))
			abort();
	} else {
		check_value(server);
		check_value(token);
	}
	free(server);
	free(token);
	return 0;
}
