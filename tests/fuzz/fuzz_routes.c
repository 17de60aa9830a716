/* fuzz_routes - what moe-bench sim and profile and moe-run --routes-from and --pin
 * read: a route trace (moe-run --trace-out), NUL, a pin list. The trace's routing is
 * summed up, it is replayed through the cache simulator with the pins and mapped onto
 * a deeper model. */
#include "fuzz.h"

#include "cache/sim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, 0, size);
	const size_t trace_len = nul ? (size_t)(nul - data) : size;
	char trace_path[64], pin_path[64];
	const int tfd = fuzz_file(data, trace_len, trace_path, sizeof trace_path);
	const int pfd = nul ? fuzz_file(nul + 1, size - trace_len - 1, pin_path, sizeof pin_path) : -1;
	struct moe_replay *r;
	if (tfd >= 0 && moe_replay_open(trace_path, &r) == 0) {
		const struct moe_trace *t = &r->t;
		uint32_t *pins = NULL;
		size_t n_pins = 0;
		if (pfd >= 0 && moe_pin_load(pin_path, t->n_layers, t->n_experts, &pins, &n_pins))
			n_pins = 0;
		struct moe_trace_routing ro;
		moe_trace_routing(t, &ro);
		struct moe_sim_result res;
		for (int policy = 0; policy <= MOE_POLICY_BELADY; policy++)
			moe_cache_sim(t, 8, policy, pins, moe_pins_kept(n_pins, 8), &res);
		int experts[8];
		float scores[8];
		for (uint64_t pos = 0; pos < 4; pos++)
			for (uint32_t l = 0; l < 2 * t->n_layers + 1; l++)
				moe_replay_route(r, pos, l, 3 * t->n_experts, 8, experts, scores);
		free(pins);
		moe_replay_free(r);
	}
	if (tfd >= 0)
		close(tfd);
	if (pfd >= 0)
		close(pfd);
	return 0;
}
