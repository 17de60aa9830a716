/* experts_mapped.c - the simplest expert provider: everything through the mapping.
 * Raw blobs are used in place (checked by moe-pack --verify, not on every use);
 * zstd blobs are decoded once, both checksums checked, and kept: with the whole
 * pack mapped, memory is no tighter than if they had been stored raw. The expert
 * cache with a RAM budget replaces this provider. */
#include "config.h"

#include <stdlib.h>
#include <sys/mman.h>

#include "common/error.h"
#include "engine/engine.h"

struct mapped {
	struct moe_experts base;
	const moe_pack *pack;
	moe_expert_layout *lays; /* the pack's layouts; each expert names its own */
	size_t n;
	void **decoded; /* per expert record, in table order; NULL until first use */
};

static void views(const struct mapped *x, const uint8_t *blob, int layout, struct moe_expert_weights *w)
{
	const moe_expert_layout *l = &x->lays[layout];
	struct moe_wmat *m[3] = {&w->gate, &w->up, &w->down};
	for (int i = 0; i < 3; i++)
		*m[i] = moe_wmat_at(l->type[i], l->rows[i], l->cols[i], blob + l->offset[i]);
}

/* decoded blobs are kept in whole huge pages */
static size_t decoded_bytes(uint64_t raw) { return (raw + (2u << 20) - 1) / (2u << 20) * (2u << 20); }

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
		views(x, data, info.layout, out);
		return 0;
	}
	/* find the record's index: the table is sorted by (layer, expert) */
	size_t lo = 0, hi = x->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		moe_expert_info e;
		moe_pack_expert_at(x->pack, mid, &e);
		if (e.layer < layer || (e.layer == layer && e.expert < expert))
			lo = mid + 1;
		else
			hi = mid;
	}
	if (!x->decoded[lo]) {
		/* huge pages where the kernel gives them: a 100 MB expert is 50 page faults, not
		 * 25,000 (faults on fresh memory cost more than decoding it, measured on a VM) */
		const size_t bytes = decoded_bytes(info.raw_size);
		void *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (buf == MAP_FAILED)
			return moe_fail(MOE_ENOMEM, "out of memory decoding layer %u expert %u", layer, expert);
		madvise(buf, bytes, MADV_HUGEPAGE);
		if ((rc = moe_pack_expert_read(x->pack, layer, expert, buf))) {
			munmap(buf, bytes);
			return rc;
		}
		x->decoded[lo] = buf;
	}
	views(x, x->decoded[lo], info.layout, out);
	return 0;
}

static void release(struct moe_experts *base, struct moe_expert_weights *w) { (void)base, (void)w; }

static void stats(struct moe_experts *base, struct moe_expert_stats *out)
{
	(void)base;
	*out = (struct moe_expert_stats){.io_mode = "mmap"};
}

static void destroy(struct moe_experts *base)
{
	struct mapped *x = (struct mapped *)base;
	for (size_t i = 0; i < x->n; i++) {
		moe_expert_info e;
		if (x->decoded[i] && moe_pack_expert_at(x->pack, i, &e) == 0)
			munmap(x->decoded[i], decoded_bytes(e.raw_size));
	}
	free(x->decoded);
	free(x->lays);
	free(x);
}

int moe_experts_mapped(const moe_pack *pack, struct moe_experts **out)
{
	struct mapped *x = calloc(1, sizeof *x);
	if (!x)
		return moe_fail(MOE_ENOMEM, "out of memory");
	x->base = (struct moe_experts){acquire, release, destroy, NULL, stats};
	x->pack = pack;
	const size_t n_lays = moe_pack_expert_layouts(pack);
	x->lays = calloc(n_lays, sizeof *x->lays);
	for (size_t i = 0; x->lays && i < n_lays; i++)
		moe_pack_expert_layout_at(pack, i, &x->lays[i]);
	x->n = moe_pack_expert_count(pack);
	x->decoded = calloc(x->n ? x->n : 1, sizeof *x->decoded);
	if (!x->decoded || !x->lays) {
		free(x->decoded);
		free(x->lays);
		free(x);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	*out = &x->base;
	return 0;
}
