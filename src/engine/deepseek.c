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
 * numpy reference computes), at the cost of one kv_lora_rank-wide dot per position. */
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
	float *wuk;   /* [n_heads][nope][kv_lora]: this layer's W_UK, dequantized */
	float *qabs;  /* [n_heads][kv_lora] */
	float *ctx;   /* [n_heads][kv_lora] */
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

size_t moe_mla_bytes(const struct moe_model *m, size_t B)
{
	const struct moe_hparams *hp = &m->hp;
	const size_t nh = hp->n_heads, qk = hp->qk_nope_dim + hp->qk_rope_dim, kvl = hp->kv_lora_rank;
	return (B * (nh * qk + hp->q_lora_rank + kvl + hp->qk_rope_dim) + nh * hp->qk_nope_dim * kvl + 2 * nh * kvl +
		hp->qk_rope_dim) * sizeof(float);
}

int moe_mla_init(struct moe_session *s)
{
	const struct moe_hparams *hp = &s->m->hp;
	const size_t B = s->max_batch, nh = hp->n_heads, nope = hp->qk_nope_dim, rope = hp->qk_rope_dim;
	const size_t kvl = hp->kv_lora_rank;
	struct moe_mla *a = calloc(1, sizeof *a);
	if (!a)
		return moe_fail(MOE_ENOMEM, "out of memory");
	s->mla = a;
	a->q = malloc(B * nh * (nope + rope) * sizeof(float));
	a->qa = malloc((B * hp->q_lora_rank + 1) * sizeof(float));
	a->kv = malloc(B * (kvl + rope) * sizeof(float));
	a->wuk = malloc(nh * nope * kvl * sizeof(float));
	a->qabs = malloc(nh * kvl * sizeof(float));
	a->ctx = malloc(nh * kvl * sizeof(float));
	a->inv_freq = malloc((rope / 2 + 1) * sizeof(float));
	if (!a->q || !a->qa || !a->kv || !a->wuk || !a->qabs || !a->ctx || !a->inv_freq)
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
	free(a->q), free(a->qa), free(a->kv), free(a->wuk), free(a->qabs), free(a->ctx), free(a->inv_freq);
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

struct absorb {
	struct moe_session *s;
	const struct moe_layer_weights *w;
	size_t t, pos;
};

static void head_range(const struct moe_hparams *hp, int i, int n, size_t *h0, size_t *h1)
{
	*h0 = hp->n_heads * (size_t)i / (size_t)n;
	*h1 = hp->n_heads * (size_t)(i + 1) / (size_t)n;
}

static void dequant_uk(void *arg, int i, int n)
{
	const struct absorb *j = arg;
	const struct moe_hparams *hp = &j->s->m->hp;
	const size_t nope = hp->qk_nope_dim, kvl = hp->kv_lora_rank, vd = hp->v_head_dim;
	size_t h0, h1;
	head_range(hp, i, n, &h0, &h1);
	for (size_t h = h0; h < h1; h++) {
		const struct moe_wmat uk = moe_wmat_rows(&j->w->wkv_b, h * (nope + vd), nope);
		moe_dequantize_rows(uk.type, uk.codes, uk.scales, nope, kvl, j->s->mla->wuk + h * nope * kvl);
	}
}

/* token t's queries: RoPE on q_pe, q_abs = W_UK^T q_nope */
static void absorb_queries(void *arg, int i, int n)
{
	const struct absorb *j = arg;
	const struct moe_hparams *hp = &j->s->m->hp;
	struct moe_mla *a = j->s->mla;
	const size_t nope = hp->qk_nope_dim, rope = hp->qk_rope_dim, kvl = hp->kv_lora_rank, qk = nope + rope;
	size_t h0, h1;
	head_range(hp, i, n, &h0, &h1);
	for (size_t h = h0; h < h1; h++) {
		float *qh = a->q + (j->t * hp->n_heads + h) * qk, *qabs = a->qabs + h * kvl;
		rope_pairs(a, qh + nope, rope, j->pos);
		memset(qabs, 0, kvl * sizeof *qabs);
		for (size_t d = 0; d < nope; d++) {
			const float qi = qh[d], *wr = a->wuk + (h * nope + d) * kvl;
			for (size_t c = 0; c < kvl; c++)
				qabs[c] += qi * wr[c];
		}
	}
}

int moe_mla_attention(struct moe_session *s, size_t l, size_t n)
{
	const struct moe_model *m = s->m;
	const struct moe_hparams *hp = &m->hp;
	const struct moe_layer_weights *w = &m->layers[l];
	struct moe_mla *a = s->mla;
	const size_t nh = hp->n_heads, nope = hp->qk_nope_dim, rope = hp->qk_rope_dim, vd = hp->v_head_dim;
	const size_t kvl = hp->kv_lora_rank, qk = nope + rope, row = kvl + rope;
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
	/* W_UK of every head, once per call; then each token's queries absorbed through it.
	 * Both split by heads over the pool's threads (each head's arithmetic is the same
	 * whatever the split, so are the results). */
	struct absorb job = {s, w, 0, 0};
	moe_pool_run(m->pool, dequant_uk, &job);
	for (size_t t = 0; t < n; t++) {
		const size_t pos = s->n_past + t, len = pos + 1;
		float *q = a->q + t * nh * qk, *sc = s->scores; /* [head][position] */
		job.t = t, job.pos = pos;
		moe_pool_run(m->pool, absorb_queries, &job);
		/* each cached row is read (and converted) once for all heads */
		for (size_t j = 0; j < len; j++) {
			const float *cj = moe_kv_row(s, s->k_cache, l, j, s->kv_row), *pe = cj + kvl;
			for (size_t h = 0; h < nh; h++) {
				const float *qabs = a->qabs + h * kvl, *qpe = q + h * qk + nope;
				float d = 0, dp = 0;
				for (size_t c = 0; c < kvl; c++)
					d += qabs[c] * cj[c];
				for (size_t c = 0; c < rope; c++)
					dp += qpe[c] * pe[c];
				sc[h * len + j] = (d + dp) * a->scale;
			}
		}
		moe_softmax_rows(sc, nh, len);
		memset(a->ctx, 0, nh * kvl * sizeof(float));
		for (size_t j = 0; j < len; j++) {
			const float *cj = moe_kv_row(s, s->k_cache, l, j, s->kv_row);
			for (size_t h = 0; h < nh; h++) {
				const float p = sc[h * len + j];
				float *ch = a->ctx + h * kvl;
				for (size_t c = 0; c < kvl; c++)
					ch[c] += p * cj[c];
			}
		}
		/* out_h = W_UV_h ctx_h, straight from the (quantized) kv_b rows */
		for (size_t h = 0; h < nh; h++) {
			const struct moe_wmat uv = moe_wmat_rows(&w->wkv_b, h * (nope + vd) + nope, vd);
			if ((rc = moe_session_matmul(s, &uv, a->ctx + h * kvl, 1, s->att + (t * nh + h) * vd)))
				return rc;
		}
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
		for (size_t k = 0; k < K; k++) {
			/* K distinct experts, even when NaN makes every comparison false */
			size_t best = SIZE_MAX;
			for (size_t e = 0; e < E; e++) {
				int taken = 0;
				for (size_t j = 0; j < k; j++)
					taken |= idx[j] == (int)e;
				if (!taken && (best == SIZE_MAX || choice[e] > choice[best]))
					best = e;
			}
			idx[k] = (int)best;
			wt[k] = s->topp[t * K + k] = sc[best]; /* the weight is the unbiased score */
			tot += wt[k];
			choice[best] = -INFINITY;
		}
		for (size_t k = 0; k < K; k++)
			wt[k] = (hp->norm_topk_prob ? wt[k] / (tot + 1e-20f) : wt[k]) * (float)hp->routed_scale;
	}
}
