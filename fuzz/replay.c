/*
 * replay: a main() for fuzz targets in builds without libFuzzer. Feeds every
 * file of the given directories (or the files given) to
 * LLVMFuzzerTestOneInput, so the corpus is replayed in every test run.
 */
#include "base/base.h"

#include <dirent.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path)
{
	struct buf b = BUF_INIT;
	int r = read_file(path, 16 << 20, &b);
	if (r < 0) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(-r));
		return 1;
	}
	LLVMFuzzerTestOneInput((const uint8_t *)b.data, b.len);
	buf_release(&b);
	return 0;
}

int main(int argc, char **argv)
{
	int failed = 0, n = 0;
	for (int i = 1; i < argc; i++) {
		struct stat st;
		if (stat(argv[i], &st) < 0) {
			fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
			return 1;
		}
		if (!S_ISDIR(st.st_mode)) {
			failed |= replay_file(argv[i]);
			n++;
			continue;
		}
		DIR *d = opendir(argv[i]);
		if (!d)
			return 1;
		struct dirent *de;
		while ((de = readdir(d))) {
			if (de->d_name[0] == '.')
				continue;
			_cleanup_free_ char *p = path_join(argv[i], de->d_name);
			failed |= replay_file(p);
			n++;
		}
		closedir(d);
	}
	printf("replayed %d inputs\n", n);
	return failed;
}
