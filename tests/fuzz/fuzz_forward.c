/* fuzz_forward - a pack that opens is loaded as a model and runs: a forward pass of
 * three tokens then one, through the mapped experts. Checksums are recomputed
 * (fuzz_reseal) so that weights and shapes, not hashes, are what mutates. Models
 * larger than the target's bounds are skipped: the point is the checks, not size. */
#include "fuzz.h"

#include <stdlib.h>

#include "engine/engine.h"
#include "moe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	moe_pack *p;
	int fd;
	if (fuzz_open_pack(data, size, 1, &p, &fd))
		return 0;
	struct moe_model *m;
	if (moe_model_load(p, 1, &m) == 0) {
		const struct moe_hparams *hp = &m->hp;
		struct moe_session *s;
		if (hp->hidden <= 1024 && hp->vocab <= 65536 && hp->n_layers <= 8 && hp->n_heads <= 64 &&
		    hp->expert_ff <= 4096 && moe_session_create(m, 8, 4, MOE_KV_F32, &s) == 0) {
			float *logits = malloc(hp->vocab * sizeof *logits);
			const int32_t ids[3] = {0, (int32_t)(hp->vocab - 1), 1 % (int32_t)hp->vocab};
			if (logits && moe_forward(s, ids, 3, NULL, logits) == 0)
				moe_forward(s, ids + 1, 1, NULL, logits);
			free(logits);
			moe_session_free(s);
		}
		moe_model_free(m);
	}
	moe_pack_close(p);
	close(fd);
	return 0;
}
