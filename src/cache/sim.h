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

#define MOE_TRACE_MAX_LAYERS 1024
#define MOE_TRACE_MAX_EXPERTS 4096

struct moe_trace {
	uint32_t n_layers, n_experts;
	size_t n_steps;
	uint32_t *layer;     /* [n_steps] */
	size_t *start;       /* [n_steps + 1]: step i needs experts[start[i] .. start[i+1]) */
	uint32_t *experts;
};

/*
 * Routes recorded from one model replayed on another (moe-run --routes-from): the
 * k-th token's experts at pack layer l are those of the trace's layer l mod T (T
 * the trace's layers) at its (k + 7919 g)-th use of that layer, g = l div T, so
 * that pack layers sharing a trace layer do not repeat each other; expert e maps
 * to (e * max(1, E / E') + g) mod E (E the pack's experts, E' the trace's), the
 * next free id on a collision. Scores are the trace's router probabilities.
 */
struct moe_replay {
	struct moe_trace t;
	float *scores;  /* [experts entries]: the router probability of each */
	size_t *steps;  /* the trace's steps grouped by layer: those of layer l are */
	size_t *first;  /* steps[first[l] .. first[l + 1]) */
};
int moe_replay_open(const char *path, struct moe_replay **out);
void moe_replay_free(struct moe_replay *r);
/* The replayed experts of token `pos` at pack layer `layer` of n_layers (n_experts
 * each) into experts/scores, at most k; returns how many (the trace's per token). */
size_t moe_replay_route(const struct moe_replay *r, uint64_t pos, uint32_t layer, uint32_t n_experts, size_t k,
			int *experts, float *scores);

/* How a trace routes, per layer: how evenly its experts are used, and how often a
 * token uses what the token before it used (the locality a cache lives on), each
 * next to what routing at random would give. */
struct moe_trace_routing {
	size_t experts_used;   /* (layer, expert) pairs used at least once */
	double entropy;        /* of each layer's expert use, of its maximum log2(experts): the mean */
	double entropy_min;    /* and the lowest, at layer entropy_min_layer */
	uint32_t entropy_min_layer;
	double repeat;         /* share of a step's experts the layer's previous step used */
	double repeat_random;  /* the same for experts drawn at random: experts per step / experts */
	size_t reuse_median;   /* layer steps between two uses of an expert, the median */
	size_t reuse_median_random;
};
int moe_trace_routing(const struct moe_trace *t, struct moe_trace_routing *out);

struct moe_sim_result {
	uint64_t hits, misses;
};

/* Read a trace file (JSON lines: a header, then {"token", "layer", "experts", ...}). */
int moe_trace_load(const char *path, struct moe_trace *t);
void moe_trace_free(struct moe_trace *t);
/* pinned: NULL, or n_pinned expert ids (layer * n_experts + expert) held in slots of
 * their own from the start and never evicted (at most slots - 1 of them); the
 * policy runs the other slots. */
int moe_cache_sim(const struct moe_trace *t, size_t slots, int policy, const uint32_t *pinned, size_t n_pinned,
		  struct moe_sim_result *out);

/*
 * Pin lists (moe-bench profile writes them, moe-run --pin reads them): text, one
 * expert per line as "LAYER EXPERT" (a third column, its uses, is ignored), '#'
 * starts a comment; the likeliest first. Loaded as ids layer * n_experts + expert,
 * in the file's order; a line out of range, malformed or repeated is an error
 * naming the file and line.
 */
int moe_pin_load(const char *path, uint32_t n_layers, uint32_t n_experts, uint32_t **ids, size_t *n);
/* How many of a list's first experts a cache of `slots` pins: all, but always two
 * slots left to the policy (the engine holds one expert while the next is read). */
static inline size_t moe_pins_kept(size_t listed, size_t slots)
{
	return slots < 3 ? 0 : listed < slots - 2 ? listed : slots - 2;
}

#endif
