/* fuzz_tokenizer_bin - the binary tokenizer a pack carries (tokenizer.bin), read and
 * used on awkward text both ways, streaming detokenization included. */
#include "fuzz.h"

#include <stdlib.h>

#include "text/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	void *copy = malloc(size ? size : 1); /* exactly the input: a read past it is seen */
	memcpy(copy, data, size);
	struct moe_tokenizer *t = NULL;
	if (moe_tokenizer_from_binary(copy, size, "fuzz", &t) == 0) {
		static const char text[] = "Hello \xe2\x96\x81world\n<s> \xff 42";
		int32_t *ids = NULL;
		size_t n = 0;
		if (moe_tokenize(t, text, sizeof text - 1, 1, &ids, &n) == 0) {
			char *back = NULL;
			size_t bl;
			if (moe_detokenize(t, ids, n, 1, &back, &bl) == 0)
				free(back);
			struct moe_detok_stream d;
			moe_detok_stream_init(&d, t, 1);
			const char *piece;
			size_t pl;
			for (size_t i = 0; i < n; i++)
				moe_detok_stream_push(&d, ids[i], &piece, &pl);
			moe_detok_stream_finish(&d, &piece, &pl);
			moe_detok_stream_free(&d);
			free(ids);
		}
		const int32_t all[4] = {0, 1, (int32_t)moe_tokenizer_vocab(t) - 1, 7};
		char *back = NULL;
		size_t bl;
		if (moe_detokenize(t, all, 4, 0, &back, &bl) == 0)
			free(back);
		moe_tokenizer_free(t);
	}
	free(copy);
	return 0;
}
