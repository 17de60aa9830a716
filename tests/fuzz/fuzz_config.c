/* fuzz_config - a Hugging Face config.json to hyperparameters, checked. */
#include "fuzz.h"

#include <stdlib.h>

#include "../../tools/pack/source.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *json = malloc(size + 1);
	memcpy(json, data, size);
	json[size] = '\0';
	struct moe_hparams hp;
	if (hf_config_parse(json, size, "fuzz", &hp) == 0) {
		char *back = hf_config_write(&hp);
		free(back);
	}
	free(json);
	return 0;
}
