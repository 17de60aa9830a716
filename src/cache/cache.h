/*
 * cache.h - the expert cache: a fixed arena of slots, each holding one whole
 * expert, filled by an I/O thread (src/io: O_DIRECT through io_uring, or pread)
 * that checks each blob's XXH3 and decodes zstd on completion. It is an expert
 * provider (engine.h): acquire pins a ready expert, waiting for its read if needed;
 * hints from the engine's prefetcher queue reads ahead of need.
 *
 * Eviction never touches a pinned or loading slot, or an expert the layer being
 * computed needs; a prefetch evicts only slots that no request or prediction still
 * covers, so a wrong guess costs bandwidth, never correctness. Policies: LRU, or
 * LFU with aging (counts per expert, halved every layers x experts accesses).
 */
#ifndef MOE_CACHE_CACHE_H
#define MOE_CACHE_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "moe.h"

enum moe_cache_policy { MOE_POLICY_LRU = 0, MOE_POLICY_LFU = 1 };

struct moe_cache_options {
	uint64_t bytes;    /* for slots and staging; at least moe_cache_min_bytes() */
	unsigned io_depth; /* reads in flight */
	int policy;        /* enum moe_cache_policy */
	int verify;        /* XXH3 of every blob read (stored bytes; decoded bytes for zstd) */
	int mlock;         /* lock the arena in RAM */
};

/* Bytes of one slot, and the least the cache runs with (two slots and staging). */
uint64_t moe_cache_slot_bytes(const moe_pack *pack);
uint64_t moe_cache_min_bytes(const moe_pack *pack);
/* Bytes taken for staging compressed blobs (0 for a raw pack); not usable as slots. */
uint64_t moe_cache_staging_bytes(const moe_pack *pack);

int moe_experts_cache(const moe_pack *pack, const struct moe_cache_options *o, struct moe_experts **out);

/* "lru", "lfu" -> enum moe_cache_policy; -1 if unknown */
int moe_cache_policy_parse(const char *name);
const char *moe_cache_policy_name(int policy);

/* The victim among n candidates under a policy: LRU takes the least recently
 * used; LFU the least frequently (ties: least recently). Shared with the trace
 * simulator so that both evict alike. */
size_t moe_policy_pick(int policy, const uint64_t *last_use, const uint32_t *freq, size_t n);

#endif
