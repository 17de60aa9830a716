/* internal.h - what the architecture files (deepseek.c) share with engine.c. */
#ifndef MOE_ENGINE_INTERNAL_H
#define MOE_ENGINE_INTERNAL_H

#include "engine/engine.h"

void moe_rmsnorm(const float *x, const float *w, size_t n, double eps, float *out);

/* sum of a[i] * b[i] in 8 interleaved partial sums, which the compiler keeps in
 * vector registers (a plain float sum must stay in order, so it stays scalar) */
static inline float moe_dot(const float *restrict a, const float *restrict b, size_t n)
{
	float acc[8] = {0};
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
#pragma GCC unroll 8
		for (int k = 0; k < 8; k++)
			acc[k] += a[i + k] * b[i + k];
	for (; i < n; i++)
		acc[0] += a[i] * b[i];
	return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* y += s * x, 8 at a time */
static inline void moe_axpy(float *restrict y, float s, const float *restrict x, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
#pragma GCC unroll 8
		for (int k = 0; k < 8; k++)
			y[i + k] += s * x[i + k];
	for (; i < n; i++)
		y[i] += s * x[i];
}
/* y = a y + s x, 8 at a time (a delta rule's state row: decayed, then corrected) */
static inline void moe_scale_axpy(float *restrict y, float a, float s, const float *restrict x, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
#pragma GCC unroll 8
		for (int k = 0; k < 8; k++)
			y[i + k] = a * y[i + k] + s * x[i + k];
	for (; i < n; i++)
		y[i] = a * y[i] + s * x[i];
}
/* len attention scores -> probabilities, with a sink logit that takes its share of the
 * denominator and is dropped (gpt-oss); -INFINITY: none, the plain softmax */
void moe_softmax_sink(float *p, size_t len, float sink);
/* y[n][rows] = W x[n][cols] on the session's kernels and pool */
int moe_session_matmul(struct moe_session *s, const struct moe_wmat *w, const float *x, size_t n, float *y);
/* where position pos of layer l starts in a cache (in values): rings wrap */
static inline size_t moe_kv_at(const struct moe_session *s, size_t l, size_t pos)
{
	return (s->kv_off[l] + pos % s->kv_cap[l]) * s->kv_dim;
}
/* store a row of layer l's cache at pos */
void moe_kv_store(struct moe_session *s, void *cache, size_t l, size_t pos, const float *row);

/* the ids of the K largest of E values, largest first (the lowest id wins a tie): K
 * distinct ids whatever the values, NaN included (every comparison false) */
void moe_top_k(const float *v, size_t E, size_t K, int *idx);

/* DeepSeek-V3 (deepseek.c) */
int moe_mla_init(struct moe_session *s);
void moe_mla_free(struct moe_session *s);
size_t moe_mla_bytes(const struct moe_session *s);
/* attention of n tokens from s->xn (normed) into s->att [n][n_heads * v_head_dim] */
int moe_mla_attention(struct moe_session *s, size_t l, size_t n);
/* DeepSeek-V3's and GLM-4.5's routing: sigmoid scores, bias for choosing only,
 * group-limited top-k, weights normalized and scaled: from s->router [n][n_experts]
 * into s->topk, s->topw (and s->topp, the scores) */
void moe_deepseek_route(struct moe_session *s, size_t l, size_t n);

#endif
