/*
 * sim.h - replay recorded expert routes (moe-run --trace-out) through cache
 * policies, to size a cache and pick a policy without running the model. The
 * replay evicts exactly as the expert cache does with --prefetch-depth 0 and one
 * token per step: the experts a layer needs are protected, a miss evicts the
 * policy's victim among the rest. Belady's policy (evict the expert needed
 * farthest in the future) is the bound no online policy beats.
 */
#ifndef MOE_CACHE_SIM_H
#define MOE_CACHE_SIM_H

#include <stddef.h>
#include <stdint.h>

#define MOE_POLICY_BELADY 3 /* after the cache's own (moe.h) */

struct moe_trace {
	uint32_t n_layers, n_experts;
	size_t n_steps;
	uint32_t *layer;     /* [n_steps] */
	size_t *start;       /* [n_steps + 1]: step i needs experts[start[i] .. start[i+1]) */
	uint32_t *experts;
};

struct moe_sim_result {
	uint64_t hits, misses;
};

/* Read a trace file (JSON lines: a header, then {"token", "layer", "experts", ...}). */
int moe_trace_load(const char *path, struct moe_trace *t);
void moe_trace_free(struct moe_trace *t);
int moe_cache_sim(const struct moe_trace *t, size_t slots, int policy, struct moe_sim_result *out);

#endif
