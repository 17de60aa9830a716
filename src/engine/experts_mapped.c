/* experts_mapped.c - the simplest expert provider: everything through the mapping.
 * Raw blobs are used in place (checked by moe-pack --verify, not on every use);
 * zstd blobs are decoded, with both checksums checked, into a buffer per acquire. */
#include "config.h"

#include <stdlib.h>

#include "common/error.h"
#include "engine/engine.h"

struct mapped {
	struct moe_experts base;
	const moe_pack *pack;
	moe_expert_layout lay;
};

static void views(const struct mapped *x, const uint8_t *blob, struct moe_expert_weights *w)
{
	struct moe_wmat *m[3] = {&w->gate, &w->up, &w->down};
	for (int i = 0; i < 3; i++) {
		const uint8_t *base = blob + x->lay.offset[i];
		const uint64_t rows = x->lay.rows[i], cols = x->lay.cols[i];
		const int t = x->lay.type[i];
		const uint64_t code_bytes = t == MOE_TYPE_Q8 ? rows * cols : t == MOE_TYPE_Q4 ? rows * cols / 2 : 0;
		*m[i] = (struct moe_wmat){t, rows, cols, base, code_bytes ? (const uint16_t *)(base + code_bytes) : NULL};
	}
}

static int acquire(struct moe_experts *base, uint32_t layer, uint32_t expert, struct moe_expert_weights *out)
{
	struct mapped *x = (struct mapped *)base;
	const void *data;
	moe_expert_info info;
	int rc = moe_pack_expert_stored(x->pack, layer, expert, &data, &info);
	if (rc)
		return rc;
	out->handle = NULL;
	if (info.codec == MOE_CODEC_RAW) {
		views(x, data, out);
		return 0;
	}
	void *buf = aligned_alloc(64, (info.raw_size + 63) / 64 * 64);
	if (!buf)
		return moe_fail(MOE_ENOMEM, "out of memory decoding layer %u expert %u", layer, expert);
	if ((rc = moe_pack_expert_read(x->pack, layer, expert, buf))) {
		free(buf);
		return rc;
	}
	out->handle = buf;
	views(x, buf, out);
	return 0;
}

static void release(struct moe_experts *base, struct moe_expert_weights *w)
{
	free(w->handle);
	w->handle = NULL;
}

static void destroy(struct moe_experts *base) { free(base); }

int moe_experts_mapped(const moe_pack *pack, struct moe_experts **out)
{
	struct mapped *x = calloc(1, sizeof *x);
	if (!x)
		return moe_fail(MOE_ENOMEM, "out of memory");
	x->base = (struct moe_experts){acquire, release, destroy};
	x->pack = pack;
	moe_pack_expert_layout(pack, &x->lay);
	*out = &x->base;
	return 0;
}
