/* internal.h - what the architecture files (deepseek.c) share with engine.c. */
#ifndef MOE_ENGINE_INTERNAL_H
#define MOE_ENGINE_INTERNAL_H

#include "engine/engine.h"

void moe_rmsnorm(const float *x, const float *w, size_t n, double eps, float *out);
/* each of rows rows of len attention scores -> probabilities, in place */
void moe_softmax_rows(float *p, size_t rows, size_t len);
/* y[n][rows] = W x[n][cols] on the session's kernels and pool */
int moe_session_matmul(struct moe_session *s, const struct moe_wmat *w, const float *x, size_t n, float *y);
/* row j of layer l's cache as floats (buf unless the cache is f32); store row at pos */
const float *moe_kv_row(const struct moe_session *s, const void *cache, size_t l, size_t j, float *buf);
void moe_kv_store(struct moe_session *s, void *cache, size_t l, size_t pos, const float *row);

/* DeepSeek-V3 (deepseek.c) */
int moe_mla_init(struct moe_session *s);
void moe_mla_free(struct moe_session *s);
size_t moe_mla_bytes(const struct moe_session *s);
/* attention of n tokens from s->xn (normed) into s->att [n][n_heads * v_head_dim] */
int moe_mla_attention(struct moe_session *s, size_t l, size_t n);
/* sigmoid scores, bias for choosing only, group-limited top-k, weights normalized and
 * scaled: from s->router [n][n_experts] into s->topk, s->topw (and s->topp, the scores) */
void moe_deepseek_route(struct moe_session *s, size_t l, size_t n);

#endif
