/* fuzz_pack - the pack reader: open, the model's invariants, the tokenizer and chat
 * template it carries, every checksum, the expert blobs. The first byte picks the
 * mode: odd recomputes the checksums (fuzz_reseal) so that mutations reach the
 * parsers behind them; even leaves the file as mutated. */
#include "fuzz.h"

#include <stdlib.h>

#include "model/arch.h"
#include "moe.h"
#include "text/template.h"
#include "text/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	moe_pack *p;
	int fd;
	if (size < 1 || fuzz_open_pack(data + 1, size - 1, data[0] & 1, &p, &fd))
		return 0;
	for (size_t i = 0; i < moe_pack_meta_count(p); i++) {
		int type;
		moe_pack_meta_key(p, i, &type);
	}
	struct moe_hparams hp;
	moe_hparams_from_pack(p, &hp);
	struct moe_tokenizer *t = NULL;
	if (moe_tokenizer_from_pack(p, "fuzz", &t) == 0 && t) {
		int32_t *ids = NULL;
		size_t n = 0;
		static const char text[] = "Hello wörld <s> 12345 \xff\n\tend";
		if (moe_tokenize(t, text, sizeof text - 1, 1, &ids, &n) == 0) {
			char *back = NULL;
			size_t bl;
			if (moe_detokenize(t, ids, n, 0, &back, &bl) == 0)
				free(back);
			free(ids);
		}
		moe_tokenizer_free(t);
	}
	const void *tmpl;
	uint64_t tl;
	if (moe_pack_meta_bytes(p, "tokenizer.chat_template", &tmpl, &tl) == 0) {
		char *out = NULL;
		size_t ol;
		if (moe_chat_render(tmpl, "[{\"role\": \"user\", \"content\": \"hi\"}]", "<s>", "</s>", 1, NULL, &out, &ol) == 0)
			free(out);
	}
	const uint64_t raw_size = moe_pack_expert_max_raw(p);
	if (raw_size <= (64u << 20)) { /* the target's own bound on one allocation */
		moe_pack_verify(p, NULL, NULL);
		void *raw = malloc(raw_size ? raw_size : 1);
		for (size_t i = 0; raw && i < moe_pack_expert_count(p) && i < 4; i++) {
			moe_expert_info e;
			if (moe_pack_expert_at(p, i, &e) == 0)
				moe_pack_expert_read(p, e.layer, e.expert, raw);
		}
		free(raw);
	}
	moe_pack_close(p);
	close(fd);
	return 0;
}
