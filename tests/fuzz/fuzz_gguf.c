/* fuzz_gguf - moe-pack's GGUF importer: the header, metadata and tensor table, the
 * hyperparameters they imply, every tensor the architecture needs looked up, and a
 * few rows of each tensor read as floats (and as blocks where kept). */
#include "fuzz.h"

#include <stdlib.h>

#include "../../tools/pack/source.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[64];
	int fd = fuzz_file(data, size, path, sizeof path);
	if (fd < 0)
		return 0;
	struct moe_source *src;
	if (src_open(path, &src) == 0) {
		size_t n = moe_arch_dense_tensors(&src->hp, NULL, 0);
		struct moe_tensor_spec *spec = n < 100000 ? calloc(n + 1, sizeof *spec) : NULL;
		if (spec) {
			moe_arch_dense_tensors(&src->hp, spec, n);
			for (size_t i = 0; i < n; i++) {
				struct src_entry *e;
				src_lookup(src, &spec[i], &e);
			}
			free(spec);
		}
		for (size_t i = 0; i < src->n_entries && i < 64; i++) {
			const struct src_entry *e = &src->entries[i];
			if (e->cols > (1u << 16))
				continue;
			float *row = malloc(2 * e->cols * sizeof *row);
			if (row && e->rows)
				src_read_rows(src, e, e->rows - 1, 1, row);
			if (row && e->rows >= 2)
				src_read_rows(src, e, 0, 2, row);
			free(row);
		}
		src_close(src);
	}
	close(fd);
	return 0;
}
