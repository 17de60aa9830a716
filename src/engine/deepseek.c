/* deepseek.c - DeepSeek-V3/R1: multi-head latent attention (MLA) with YaRN RoPE,
 * and group-limited sigmoid routing. Shared experts and the first dense layers go
 * through the shared engine (engine.c).
 *
 * MLA is computed in its absorbed form for every position, prompt or decode: the
 * cache holds per token and layer only the normalized latent c_kv (kv_lora_rank)
 * and the rotated shared key k_pe (qk_rope_head_dim). Per head h, with kv_b's rows
 * split into W_UK (qk_nope rows) and W_UV (v_head_dim rows):
 *   score_j = (W_UK^T q_nope) . c_j + q_pe . k_pe_j, scaled;  out = W_UV (sum_j p_j c_j)
 * which equals decompressing k_nope and v for every position (the naive form the
 * numpy reference computes), at the cost of one kv_lora_rank-wide dot per position.
 * Everything per head runs split by heads over the kernel pool: W_UK is applied to
 * every token's query row by row as it is dequantized (a float copy of it would be
 * 32 MB per layer to write and read again), each token's scores and latent sums
 * take one pass, and the heads' W_UV products another. */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "engine/internal.h"
#include "kernels/pool.h"
#include "quant/quant.h"

struct moe_mla {
	float *q;     /* [batch][n_heads][nope + rope] */
	float *qa;    /* [batch][q_lora_rank] */
	float *kv;    /* [batch][kv_lora_rank + rope]: c_kv | k_pe of the new tokens */
	float *qabs;  /* [batch][n_heads][kv_lora] */
	float *ctx;   /* [n_heads][kv_lora] */
	float *rows32; /* [ctx][kv_lora + rope]: an f16 cache's rows of one layer as floats */
	float *uk_row; /* [threads][kv_lora]: one dequantized row of W_UK per thread */
	struct moe_wmat *uv; /* [n_heads]: each head's W_UV rows of kv_b */
	float *inv_freq; /* [rope / 2] YaRN frequencies */
	float cs_scale;  /* YaRN's magnitude factor on cos and sin */
	float scale;     /* softmax scale: 1/sqrt(nope + rope), times mscale^2 under YaRN */
};

/* YaRN (DeepSeek's modeling: yarn_find_correction_range, yarn_linear_ramp_mask, yarn_get_mscale) */
static double yarn_mscale(double factor, double m) { return factor <= 1 ? 1.0 : 0.1 * m * log(factor) + 1.0; }

static double yarn_dim(double rotations, double dim, double base, double max_pos)
{
	return dim * log(max_pos / (rotations * 2 * M_PI)) / (2 * log(base));
}

/* threads of the kernel pool (each needs a row of W_UK) */
static size_t pool_threads(const struct moe_session *s) { return (size_t)moe_pool_threads(s->m->pool); }

size_t moe_mla_bytes(const struct moe_session *s)
{
	const struct moe_hparams *hp = &s->m->hp;
	const size_t B = s->max_batch, nh = hp->n_heads, qk = hp->qk_nope_dim + hp->qk_rope_dim;
	const size_t kvl = hp->kv_lora_rank, row = kvl + hp->qk_rope_dim;
	const size_t rows32 = s->kv_type == MOE_KV_F32 ? 0 : s->ctx * row;
	return (B * (nh * qk + hp->q_lora_rank + row + nh * kvl) + nh * kvl + rows32 + pool_threads(s) * kvl +
		hp->qk_rope_dim) * sizeof(float) + nh * sizeof(struct moe_wmat);
}

int moe_mla_init(struct moe_session *s)
{
	const struct moe_hparams *hp = &s->m->hp;
	const size_t B = s->max_batch, nh = hp->n_heads, nope = hp->qk_nope_dim, rope = hp->qk_rope_dim;
	const size_t kvl = hp->kv_lora_rank, row = kvl + rope;
	struct moe_mla *a = calloc(1, sizeof *a);
	if (!a)
		return moe_fail(MOE_ENOMEM, "out of memory");
	s->mla = a;
	a->q = malloc(B * nh * (nope + rope) * sizeof(float));
	a->qa = malloc((B * hp->q_lora_rank + 1) * sizeof(float));
	a->kv = malloc(B * row * sizeof(float));
	a->qabs = malloc(B * nh * kvl * sizeof(float));
	a->ctx = malloc(nh * kvl * sizeof(float));
	a->rows32 = s->kv_type == MOE_KV_F32 ? NULL : malloc(s->ctx * row * sizeof(float));
	a->uk_row = malloc(pool_threads(s) * kvl * sizeof(float));
	a->uv = malloc(nh * sizeof *a->uv);
	a->inv_freq = malloc((rope / 2 + 1) * sizeof(float));
	if (!a->q || !a->qa || !a->kv || !a->qabs || !a->ctx || (s->kv_type != MOE_KV_F32 && !a->rows32) || !a->uk_row ||
	    !a->uv || !a->inv_freq)
		return moe_fail(MOE_ENOMEM, "out of memory for MLA scratch");
	const double factor = hp->rope_factor, theta = hp->rope_theta;
	double low = 0, high = 0;
	if (factor > 1) {
		low = floor(yarn_dim(hp->rope_beta_fast, (double)rope, theta, hp->rope_orig_max));
		high = ceil(yarn_dim(hp->rope_beta_slow, (double)rope, theta, hp->rope_orig_max));
		low = low < 0 ? 0 : low;
		high = high > (double)rope - 1 ? (double)rope - 1 : high;
		if (low == high)
			high += 0.001;
	}
	for (size_t i = 0; i < rope / 2; i++) {
		const double extra = 1.0 / pow(theta, 2.0 * (double)i / (double)rope);
		if (factor > 1) {
			double ramp = ((double)i - low) / (high - low);
			ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
			const double keep = 1.0 - ramp; /* 1: extrapolate (high frequencies), 0: interpolate */
			a->inv_freq[i] = (float)(extra / factor * (1 - keep) + extra * keep);
		} else {
			a->inv_freq[i] = (float)extra;
		}
	}
	a->cs_scale = factor > 1 ? (float)(yarn_mscale(factor, hp->rope_mscale) / yarn_mscale(factor, hp->rope_mscale_all)) : 1;
	double sc = 1.0 / sqrt((double)(nope + rope));
	if (factor > 1 && hp->rope_mscale_all != 0) {
		const double m = yarn_mscale(factor, hp->rope_mscale_all);
		sc *= m * m;
	}
	a->scale = (float)sc;
	return 0;
}

void moe_mla_free(struct moe_session *s)
{
	struct moe_mla *a = s->mla;
	if (!a)
		return;
	free(a->q), free(a->qa), free(a->kv), free(a->qabs), free(a->ctx), free(a->rows32), free(a->uk_row);
	free(a->uv), free(a->inv_freq);
	free(a);
	s->mla = NULL;
}

/* RoPE on consecutive pairs (x[2i], x[2i+1]); the result laid out de-interleaved
 * (pair i at i and i + rope/2), as DeepSeek's Hugging Face code leaves it. Queries
 * and keys get the same layout, so their dot products are the model's. */
static void rope_pairs(const struct moe_mla *a, float *x, size_t rope, size_t pos)
{
	float tmp[512];
	const size_t half = rope / 2;
	for (size_t i = 0; i < half; i++) {
		const double ang = (double)pos * a->inv_freq[i];
		const float c = (float)cos(ang) * a->cs_scale, sn = (float)sin(ang) * a->cs_scale;
		const float x0 = x[2 * i], x1 = x[2 * i + 1];
		tmp[i] = x0 * c - x1 * sn;
		tmp[i + half] = x1 * c + x0 * sn;
	}
	memcpy(x, tmp, rope * sizeof *x);
}

struct mla_job {
	struct moe_session *s;
	const struct moe_layer_weights *w;
	size_t n;            /* tokens of the call */
	size_t t;            /* the token whose attention runs (attend_heads) */
	const float *rows;   /* this layer's cached rows c_j | k_pe_j as floats */
};

static void head_range(const struct mla_job *j, int i, int n, size_t *h0, size_t *h1)
{
	const size_t nh = j->s->m->hp.n_heads;
	*h0 = nh * (size_t)i / (size_t)n;
	*h1 = nh * (size_t)(i + 1) / (size_t)n;
}

/* every token's queries, for this thread's heads: RoPE on q_pe, and
 * q_abs = W_UK^T q_nope, each row of W_UK dequantized once into this thread's
 * buffer and added to every token's q_abs, scaled by its q_nope element */
static void absorb_queries(void *arg, int i, int n)
{
	const struct mla_job *j = arg;
	const struct moe_hparams *hp = &j->s->m->hp;
	struct moe_mla *a = j->s->mla;
	const size_t nh = hp->n_heads, nope = hp->qk_nope_dim, rope = hp->qk_rope_dim, kvl = hp->kv_lora_rank;
	const size_t qk = nope + rope, vd = hp->v_head_dim;
	float *row = a->uk_row + (size_t)i * kvl;
	size_t h0, h1;
	head_range(j, i, n, &h0, &h1);
	for (size_t h = h0; h < h1; h++) {
		for (size_t t = 0; t < j->n; t++) {
			rope_pairs(a, a->q + (t * nh + h) * qk + nope, rope, j->s->n_past + t);
			memset(a->qabs + (t * nh + h) * kvl, 0, kvl * sizeof(float));
		}
		const struct moe_wmat uk = moe_wmat_rows(&j->w->wkv_b, h * (nope + vd), nope);
		const size_t row_bytes = moe_type_row_bytes(uk.type, kvl);
		for (size_t d = 0; d < nope; d++) {
			moe_dequantize_rows(uk.type, (const uint8_t *)uk.codes + d * row_bytes,
					    uk.scales ? uk.scales + d * (kvl / 32) : NULL, 1, kvl, row);
			for (size_t t = 0; t < j->n; t++)
				moe_axpy(a->qabs + (t * nh + h) * kvl, a->q[(t * nh + h) * qk + d], row, kvl);
		}
	}
}

/* token t's attention, for this thread's heads: scores against every position it
 * sees, softmax, and the probability-weighted sum of the latents */
static void attend_heads(void *arg, int i, int n)
{
	const struct mla_job *j = arg;
	const struct moe_hparams *hp = &j->s->m->hp;
	struct moe_mla *a = j->s->mla;
	const size_t nh = hp->n_heads, nope = hp->qk_nope_dim, rope = hp->qk_rope_dim, kvl = hp->kv_lora_rank;
	const size_t qk = nope + rope, row = kvl + rope, len = j->s->n_past + j->t + 1;
	size_t h0, h1;
	head_range(j, i, n, &h0, &h1);
	for (size_t h = h0; h < h1; h++) {
		const float *qabs = a->qabs + (j->t * nh + h) * kvl, *qpe = a->q + (j->t * nh + h) * qk + nope;
		float *sc = j->s->scores + h * len, *ch = a->ctx + h * kvl;
		for (size_t p = 0; p < len; p++) {
			const float *cp = j->rows + p * row;
			sc[p] = (moe_dot(qabs, cp, kvl) + moe_dot(qpe, cp + kvl, rope)) * a->scale;
		}
		moe_softmax_sink(sc, len, -INFINITY);
		memset(ch, 0, kvl * sizeof *ch);
		for (size_t p = 0; p < len; p++)
			moe_axpy(ch, sc[p], j->rows + p * row, kvl);
	}
}

int moe_mla_attention(struct moe_session *s, size_t l, size_t n)
{
	const struct moe_model *m = s->m;
	const struct moe_hparams *hp = &m->hp;
	const struct moe_layer_weights *w = &m->layers[l];
	struct moe_mla *a = s->mla;
	const size_t nh = hp->n_heads, nope = hp->qk_nope_dim, rope = hp->qk_rope_dim, vd = hp->v_head_dim;
	const size_t kvl = hp->kv_lora_rank, row = kvl + rope;
	if (rope > 512)
		return moe_fail(MOE_EUNSUPPORTED, "qk_rope_head_dim %zu: at most 512", rope);
	int rc;
	/* queries: through the low-rank q_a / norm / q_b, or one projection */
	if (hp->q_lora_rank) {
		if ((rc = moe_session_matmul(s, &w->wq_a, s->xn, n, a->qa)))
			return rc;
		for (size_t t = 0; t < n; t++)
			moe_rmsnorm(a->qa + t * hp->q_lora_rank, w->q_a_norm, hp->q_lora_rank, hp->rms_eps,
				    a->qa + t * hp->q_lora_rank);
		rc = moe_session_matmul(s, &w->wq_b, a->qa, n, a->q);
	} else {
		rc = moe_session_matmul(s, &w->wq_b, s->xn, n, a->q);
	}
	/* the latent and the shared rotary key: normalized, rotated, cached */
	if (rc || (rc = moe_session_matmul(s, &w->wkv_a, s->xn, n, a->kv)))
		return rc;
	for (size_t t = 0; t < n; t++) {
		float *kv = a->kv + t * row;
		moe_rmsnorm(kv, w->kv_a_norm, kvl, hp->rms_eps, kv);
		rope_pairs(a, kv + kvl, rope, s->n_past + t);
		moe_kv_store(s, s->k_cache, l, s->n_past + t, kv);
	}
	/* this layer's cached rows as floats: an f32 cache in place, an f16 one converted once */
	const size_t total = s->n_past + n;
	struct mla_job job = {s, w, n, 0, (const float *)s->k_cache + moe_kv_at(s, l, 0)};
	if (s->kv_type != MOE_KV_F32) {
		m->kernels->halves((const uint16_t *)s->k_cache + moe_kv_at(s, l, 0), total * row, a->rows32);
		job.rows = a->rows32;
	}
	/* each head's arithmetic is the same whatever the split, so are the results */
	moe_pool_run(m->pool, absorb_queries, &job);
	for (size_t h = 0; h < nh; h++)
		a->uv[h] = moe_wmat_rows(&w->wkv_b, h * (nope + vd) + nope, vd);
	for (size_t t = 0; t < n; t++) {
		job.t = t;
		moe_pool_run(m->pool, attend_heads, &job);
		/* out_h = W_UV_h ctx_h, straight from the (quantized) kv_b rows */
		if (moe_matmul_each(m->kernels, m->pool, a->uv, nh, a->ctx, s->att + t * nh * vd, &s->ks))
			return moe_fail(MOE_ENOMEM, "out of memory in the kernels' scratch");
	}
	return 0;
}

void moe_deepseek_route(struct moe_session *s, size_t l, size_t n)
{
	const struct moe_hparams *hp = &s->m->hp;
	const float *bias = s->m->layers[l].exp_bias;
	const size_t E = hp->n_experts, K = hp->n_experts_used, G = hp->n_group ? hp->n_group : 1;
	const size_t per = E / G, TG = hp->topk_group ? hp->topk_group : G;
	float *choice = s->look_score; /* [E] scratch: the biased scores the choice is made on */
	for (size_t t = 0; t < n; t++) {
		float *sc = s->router + t * E; /* logits -> sigmoid scores, in place */
		for (size_t e = 0; e < E; e++) {
			sc[e] = 1.0f / (1.0f + expf(-sc[e]));
			choice[e] = sc[e] + (bias ? bias[e] : 0.0f);
		}
		/* a group's score: the sum of its two best; keep the TG best groups */
		if (G > 1) {
			float gs[256];
			for (size_t g = 0; g < G && g < 256; g++) {
				float b1 = -INFINITY, b2 = -INFINITY;
				for (size_t e = g * per; e < (g + 1) * per; e++)
					if (choice[e] > b1)
						b2 = b1, b1 = choice[e];
					else if (choice[e] > b2)
						b2 = choice[e];
				gs[g] = per > 1 ? b1 + b2 : b1;
			}
			unsigned char keep[256] = {0};
			for (size_t k = 0; k < TG; k++) {
				size_t best = SIZE_MAX;
				for (size_t g = 0; g < G && g < 256; g++)
					if (!keep[g] && (best == SIZE_MAX || gs[g] > gs[best]))
						best = g;
				keep[best] = 1;
			}
			for (size_t e = 0; e < E; e++)
				if (!keep[e / per])
					choice[e] = -INFINITY; /* out of reach */
		}
		int *idx = s->topk + t * K;
		float *wt = s->topw + t * K, tot = 0;
		moe_top_k(choice, E, K, idx);
		for (size_t k = 0; k < K; k++) {
			wt[k] = s->topp[t * K + k] = sc[idx[k]]; /* the weight is the unbiased score */
			tot += wt[k];
		}
		for (size_t k = 0; k < K; k++)
			wt[k] = (hp->norm_topk_prob ? wt[k] / (tot + 1e-20f) : wt[k]) * (float)hp->routed_scale;
	}
}
