/*
 * token-fuzz: the token format parser and the webhook signature check, on
 * arbitrary bytes. Properties: no crash; a string token_parse accepts has the
 * exact length and prefix of its kind.
 */
#include "auth/auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool init;
	if (!init) {
		if (auth_init() < 0)
			abort();
		init = true;
	}
	char *s = xstrndup((const char *)data, size);
	enum token_kind kind;
	struct kiln_err err = {0};
	if (token_parse(s, &kind, &err) == 0) {
		if (strlen(s) != TOKEN_LEN || !startswith(s, token_kind_prefix(kind)))
			abort();
	} else if (err.msg[0] == '\0') {
		abort(); /* every rejection explains itself */
	}
	const char *secrets[] = {"secret"};
	int r = webhook_verify(s, data, size, secrets, 1);
	if (r != -EINVAL && r != -EPERM && r != 0)
		abort();
	free(s);
	return 0;
}
