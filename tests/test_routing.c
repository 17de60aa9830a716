/* test_routing.c - DeepSeek-V3's group-limited sigmoid routing on hand-built scores:
 * the group limit changes the choice; the correction bias changes the choice but
 * not the weights; weights are the unbiased scores, normalized, times the scale. */
#include "config.h"

#include <math.h>
#include <string.h>

#include "check.h"
#include "engine/internal.h"

enum { E = 8, K = 2 };

static float logit(double p) { return (float)log(p / (1 - p)); }

/* route one token whose sigmoid scores are p, with bias b (may be NULL) */
static void route(const double p[E], const float *b, int idx[K], float wt[K])
{
	static struct moe_model m;
	static struct moe_layer_weights layer;
	static struct moe_session s;
	static float router[E], topw[K], topp[K], look[E + 1];
	static int topk[K];
	memset(&m, 0, sizeof m);
	m.hp.arch = MOE_ARCH_DEEPSEEK_V3;
	m.hp.n_experts = E, m.hp.n_experts_used = K, m.hp.n_group = 4, m.hp.topk_group = 2;
	m.hp.norm_topk_prob = 1, m.hp.routed_scale = 2.5;
	layer.exp_bias = b;
	m.layers = &layer;
	s.m = &m;
	s.router = router, s.topk = topk, s.topw = topw, s.topp = topp, s.look_score = look;
	for (int e = 0; e < E; e++)
		router[e] = logit(p[e]);
	moe_deepseek_route(&s, 0, 1);
	memcpy(idx, topk, sizeof topk);
	memcpy(wt, topw, sizeof topw);
}

int main(void)
{
	/* groups of two: {0.9, 0.1} = 1.0, {0.85, 0.05} = 0.9, {0.6, 0.6} = 1.2, {0.55, 0.55} = 1.1.
	 * Unlimited, experts 0 and 2 would win; the best two groups are 2 and 3, so 4 and 5. */
	const double p[E] = {0.9, 0.1, 0.85, 0.05, 0.6, 0.6, 0.55, 0.55};
	int idx[K];
	float wt[K];
	route(p, NULL, idx, wt);
	CHECK(idx[0] == 4 && idx[1] == 5, "group limit: chose %d, %d (want 4, 5)", idx[0], idx[1]);
	CHECK(fabsf(wt[0] - 1.25f) < 1e-5f && fabsf(wt[1] - 1.25f) < 1e-5f, "weights %g %g (want 0.6/1.2 x 2.5)", wt[0],
	      wt[1]);
	/* +0.5 on expert 6: group 3 becomes {1.05, 0.55} = 1.6, the best; 6 then 4 are chosen,
	 * and their weights are their unbiased scores 0.55 and 0.6, normalized, x 2.5 */
	const float bias[E] = {0, 0, 0, 0, 0, 0, 0.5f, 0};
	route(p, bias, idx, wt);
	CHECK(idx[0] == 6 && idx[1] == 4, "bias: chose %d, %d (want 6, 4)", idx[0], idx[1]);
	CHECK(fabsf(wt[0] - 0.55f / 1.15f * 2.5f) < 1e-5f && fabsf(wt[1] - 0.6f / 1.15f * 2.5f) < 1e-5f,
	      "bias: weights %g %g", wt[0], wt[1]);
	/* the single best expert (0.99) sits in the weakest group (0.99 + 0.01 = 1.0 against
	 * 1.4, 1.1, 1.2): out of reach; the kept groups 1 and 3 give experts 2 and 3 */
	const double q[E] = {0.99, 0.01, 0.7, 0.7, 0.5, 0.6, 0.6, 0.6};
	route(q, NULL, idx, wt);
	CHECK(idx[0] == 2 && idx[1] == 3, "q: chose %d, %d (want 2, 3)", idx[0], idx[1]);
	return check_report("test_routing");
}
