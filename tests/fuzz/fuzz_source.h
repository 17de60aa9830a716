/* fuzz_source.h - what the importer targets do with a source that opened: look up
 * every tensor the architecture needs, and read rows of the first tensors back. */
#ifndef MOE_FUZZ_SOURCE_H
#define MOE_FUZZ_SOURCE_H

#include <stdlib.h>

#include "../../tools/pack/source.h"

static inline void fuzz_use_source(struct moe_source *src)
{
	const size_t n = moe_arch_dense_tensors(&src->hp, NULL, 0);
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
		if (e->cols > (1u << 16) || !e->rows)
			continue;
		float *rows = malloc(2 * e->cols * sizeof *rows);
		if (rows) /* the last row, then the first two */
			src_read_rows(src, e, e->rows - 1, 1, rows);
		if (rows && e->rows >= 2)
			src_read_rows(src, e, 0, 2, rows);
		free(rows);
	}
}

#endif
