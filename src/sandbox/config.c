/* config: parsing of the user-facing sandbox options (pure; unit-tested and fuzzed). */
#include "sandbox-internal.h"

int sandbox_bind_parse(const char *spec, struct sandbox_bind *ret, struct kiln_err *err)
{
	if (!spec || !*spec)
		return kiln_err_set(err, -EINVAL, "empty bind; use SRC:DST[:ro]");
	if (strlen(spec) >= 2 * PATH_MAX)
		return kiln_err_set(err, -ENAMETOOLONG, "bind '%.40s...' is too long", spec);
	char *copy = xstrdup(spec);
	char *dst = strchr(copy, ':');
	if (!dst || dst == copy) {
		free(copy);
		return kiln_err_set(err, -EINVAL, "bind '%s': expected SRC:DST[:ro]", spec);
	}
	*dst++ = '\0';
	bool ro = false;
	char *mode = strchr(dst, ':');
	if (mode) {
		*mode++ = '\0';
		if (streq(mode, "ro"))
			ro = true;
		else if (!streq(mode, "rw")) {
			kiln_err_set(err, -EINVAL, "bind '%s': unknown mode '%s' (use ro or rw)", spec,
				     mode);
			free(copy);
			return -EINVAL;
		}
	}
	if (dst[0] != '/') {
		kiln_err_set(err, -EINVAL, "bind '%s': target '%s' must be absolute", spec, dst);
		free(copy);
		return -EINVAL;
	}
	for (const char *s = dst; *s;) {
		while (*s == '/')
			s++;
		const char *e = s;
		while (*e && *e != '/')
			e++;
		if (e - s == 2 && s[0] == '.' && s[1] == '.') {
			free(copy);
			return kiln_err_set(err, -EINVAL, "bind '%s': target must not contain '..'",
					    spec);
		}
		s = e;
	}
	ret->storage = copy;
	ret->src = copy;
	ret->dst = dst;
	ret->readonly = ro;
	return 0;
}

int sandbox_cpus_parse(const char *s, uint32_t *ret_millis)
{
	if (!s || !*s)
		return -EINVAL;
	size_t n = strlen(s);
	uint64_t millis = 0;
	if (n > 1 && s[n - 1] == 'm') {
		/* "500m": millicpus, as Kubernetes writes them. */
		int64_t v;
		char buf[32];
		if (n - 1 >= sizeof(buf))
			return -EINVAL;
		memcpy(buf, s, n - 1);
		buf[n - 1] = '\0';
		if (parse_int64(buf, 0, 1024000, &v) < 0)
			return -EINVAL;
		millis = (uint64_t)v;
	} else {
		/* "1", "1.5", "0.25": at most three decimals. */
		uint64_t whole = 0, frac = 0;
		int fd = 0;
		const char *p = s;
		if (*p < '0' || *p > '9')
			return -EINVAL;
		while (*p >= '0' && *p <= '9') {
			whole = whole * 10 + (uint64_t)(*p++ - '0');
			if (whole > 1024)
				return -ERANGE;
		}
		if (*p == '.') {
			p++;
			if (*p < '0' || *p > '9')
				return -EINVAL;
			while (*p >= '0' && *p <= '9') {
				if (fd == 3)
					return -EINVAL;
				frac = frac * 10 + (uint64_t)(*p++ - '0');
				fd++;
			}
			while (fd < 3)
				frac *= 10, fd++;
		}
		if (*p)
			return -EINVAL;
		millis = whole * 1000 + frac;
	}
	if (millis < 10 || millis > 1024000)
		return -ERANGE;
	*ret_millis = (uint32_t)millis;
	return 0;
}
