/*
 * cache.h - the expert cache: a fixed arena of slots, each holding one whole
 * expert, filled by an I/O thread (src/io: O_DIRECT through io_uring, or pread)
 * that checks each blob's XXH3 and decodes zstd as its chunks arrive. It is an
 * expert provider (engine.h): acquire pins a ready expert, waiting for its read if
 * needed; hints from the engine's prefetcher queue reads ahead of need.
 *
 * Experts of a pin list (moe-run --pin) hold slots of their own for good; the
 * policy runs the rest.
 *
 * Eviction never touches a pinned or loading slot, or an expert the layer being
 * computed needs; a prefetch evicts only slots that no request or prediction still
 * covers, so a wrong guess costs bandwidth, never correctness. Policies: LRU, or
 * LFU with aging (counts per expert, halved every layers x experts accesses).
 *
 * Liveness: every acquire is served, whatever the budget (down to two slots),
 * policy, prefetch depth, I/O depth, batch and routing, as long as the caller
 * holds fewer pins than there are slots (the engine holds one at a time):
 *  1. A queued read is never dropped while someone waits on it: a slot leaves
 *     QUEUED/READING only by becoming READY (with the data or an error).
 *  2. The I/O thread issues only reads that can proceed. A raw blob reads straight
 *     into its slot; a compressed one needs one of a few decode streams (a ring of
 *     chunks and a zstd context) and keeps it until its last chunk is decoded. A
 *     stream's chunks are issued whenever its ring has room, and the ring drains
 *     because the same thread decodes in order; so a blob that holds a stream
 *     always finishes, and a queued blob waits at most for one to free. Guesses
 *     never take the last free stream, so a demand does not queue behind them.
 *  3. A demand that finds no slot to reuse waits only while some read is in
 *     flight (it ends as READY, and then its slot can be taken). With nothing in
 *     flight it takes any ready, unpinned slot, even one this layer still wants
 *     (that one is read again later): it never waits on a state that cannot change.
 *  4. A bound on every wait (stall_seconds): an expert that has not arrived by
 *     then fails the acquire with the slots' states and the reads in flight, so a
 *     broken disk or a bug is an error, never a silent freeze.
 */
#ifndef MOE_CACHE_CACHE_H
#define MOE_CACHE_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "moe.h"

struct moe_cache_options {
	uint64_t bytes;        /* for slots and staging; at least moe_cache_min_bytes() */
	unsigned io_depth;     /* reads in flight (default 8) */
	int policy;            /* enum moe_cache_policy */
	int verify;            /* XXH3 of every blob read (stored bytes; decoded bytes for zstd) */
	int mlock;             /* lock the arena in RAM */
	double stall_seconds;  /* longest wait for one expert before acquire fails (default 30) */
	uint64_t chunk_bytes;  /* bytes per read, a multiple of 4096 (default 4 MiB; tests use less) */
	/* experts (layer * n_experts + expert) held for good in slots of their own, read
	 * at start: the first moe_pins_kept(n_pin, slots) of the list (sim.h) */
	const uint32_t *pin;
	size_t n_pin;
};

/* Bytes of one slot, and the least the cache runs with (two slots and staging). */
uint64_t moe_cache_slot_bytes(const moe_pack *pack);
uint64_t moe_cache_min_bytes(const moe_pack *pack);
/* Bytes taken for the decode streams of compressed blobs (0 for a raw pack) with
 * reads of chunk_bytes (0: the default); not usable as slots. */
uint64_t moe_cache_staging_bytes(const moe_pack *pack, uint64_t chunk_bytes);

int moe_experts_cache(const moe_pack *pack, const struct moe_cache_options *o, struct moe_experts **out);

/* What a policy knows of a candidate for eviction. */
struct moe_policy_cand {
	uint64_t last_use; /* clock at its last use */
	uint32_t freq;     /* uses, aged */
	double next_use;   /* layer steps to its expected next use (moe_policy_next_use) */
};

/* The victim among n candidates: LRU takes the least recently used; LFU the least
 * frequently (ties: least recently); NEXT the farthest expected next use (ties:
 * least recently). Shared with the trace simulator so that both evict alike. */
size_t moe_policy_pick(int policy, const struct moe_policy_cand *c, size_t n);

/*
 * When an expert of layer `layer` is expected to be needed next, in layer steps
 * from the step now running at layer `now` (of n_layers): its layer comes round in
 * d steps (n_layers for the layer running now), and each visit uses it with
 * probability p, so the wait is d + n_layers * (1 - p) / p.
 */
double moe_policy_next_use(uint32_t layer, uint32_t now, uint32_t n_layers, float p);
/* p of an expert, updated at each visit of its layer with whether the visit used it:
 * the larger of a slow and a fast moving average, so that both an expert popular
 * over hundreds of tokens and one the last few tokens took (routing comes in runs)
 * count as likely. On the demo model's held-out text this kept 13, 31, 58 and 81 %
 * of uses with 12-75 % of the experts cached, against LRU's 0, 31, 50 and 77 %. */
struct moe_policy_use {
	float slow, fast;
};
void moe_policy_visit(struct moe_policy_use *u, int used);
float moe_policy_p(const struct moe_policy_use *u);


#endif
