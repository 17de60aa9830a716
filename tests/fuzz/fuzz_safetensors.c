/* fuzz_safetensors - moe-pack's Hugging Face folder importer. The input is
 * config.json, a NUL byte, then model.safetensors; both go into a folder that the
 * importer opens, looks every tensor up in and reads rows of. */
#include "fuzz.h"

#include <stdlib.h>

#include "fuzz_source.h"

static char dir[64];

static int write_all(const char *name, const uint8_t *p, size_t n)
{
	char path[128];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	const int bad = fwrite(p, 1, n, f) != n;
	return fclose(f) != 0 || bad ? -1 : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!dir[0]) {
		snprintf(dir, sizeof dir, "/tmp/moe-fuzz-st.XXXXXX");
		if (!mkdtemp(dir))
			abort();
	}
	const uint8_t *nul = memchr(data, 0, size);
	if (!nul)
		return 0;
	if (write_all("config.json", data, (size_t)(nul - data)) ||
	    write_all("model.safetensors", nul + 1, size - (size_t)(nul - data) - 1))
		return 0;
	struct moe_source *src;
	if (src_open(dir, &src) == 0) {
		fuzz_use_source(src);
		src_close(src);
	}
	return 0;
}
