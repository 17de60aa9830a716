/* fuzz_gguf - moe-pack's GGUF importer: the header, metadata and tensor table, the
 * hyperparameters they imply, every tensor the architecture needs looked up, and a
 * few rows of each tensor read back as floats. */
#include "fuzz.h"

#include <stdlib.h>

#include "fuzz_source.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[64];
	int fd = fuzz_file(data, size, path, sizeof path);
	if (fd < 0)
		return 0;
	struct moe_source *src;
	if (src_open(path, &src) == 0) {
		fuzz_use_source(src);
		src_close(src);
	}
	close(fd);
	return 0;
}
