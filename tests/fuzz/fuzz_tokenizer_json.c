/* fuzz_tokenizer_json - tokenizer.json (and, after a NUL byte, tokenizer_config.json)
 * compiled, used on awkward text both ways, and round-tripped through the pack's
 * binary form. */
#include "fuzz.h"

#include <stdlib.h>

#include "text/tokenizer.h"

static void use(const struct moe_tokenizer *t)
{
	static const char *const texts[] = {"Hello world", " \xe2\x96\x81x  y\n\n", "<s>[INST] hi [/INST]", "\xff\xfe\xc3",
					    "\xe4\xbd\xa0\xe5\xa5\xbd 123 4567 !!?"};
	for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
		int32_t *ids = NULL;
		size_t n = 0;
		if (moe_tokenize(t, texts[k], strlen(texts[k]), 1, &ids, &n))
			continue;
		char *back = NULL;
		size_t bl;
		if (moe_detokenize(t, ids, n, k & 1, &back, &bl) == 0)
			free(back);
		free(ids);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, 0, size);
	const size_t jl = nul ? (size_t)(nul - data) : size;
	char *json = malloc(jl + 1), *cfg = NULL;
	memcpy(json, data, jl);
	json[jl] = '\0';
	size_t cl = 0;
	if (nul) {
		cl = size - jl - 1;
		cfg = malloc(cl + 1);
		memcpy(cfg, nul + 1, cl);
		cfg[cl] = '\0';
	}
	struct moe_tokenizer *t = NULL, *t2 = NULL;
	if (moe_tokenizer_from_json(json, jl, cfg, cl, "fuzz", &t) == 0) {
		use(t);
		void *bin;
		size_t len;
		if (moe_tokenizer_to_binary(t, &bin, &len) == 0) {
			if (moe_tokenizer_from_binary(bin, len, "fuzz", &t2) == 0)
				use(t2);
			free(bin);
		}
	}
	moe_tokenizer_free(t);
	moe_tokenizer_free(t2);
	free(json);
	free(cfg);
	return 0;
}
