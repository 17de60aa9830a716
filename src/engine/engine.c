/*
 * engine.c - Mixtral, Qwen3-MoE, GLM-4.5, gpt-oss and Qwen3-Next forward pass (the
 * semantics of Hugging Face transformers' modeling_{mixtral,qwen3_moe,glm4_moe,gpt_oss,
 * qwen3_next}.py): RMSNorm, GQA attention with rotate-half RoPE (Qwen3, GLM-4.5 and
 * Qwen3-Next: per-head q/k RMSNorm first; GLM-4.5 and Qwen3-Next: RoPE on part of each
 * head; GLM-4.5: q/k/v biases; gpt-oss: biases, sinks, YaRN, sliding windows kept in ring
 * caches; Qwen3-Next: a sigmoid gate on each head's output), Qwen3-Next's Gated DeltaNet
 * layers with their recurrent state, softmax top-k routing, SwiGLU experts batched per
 * expert (gpt-oss's with biases, clamped; Qwen3-Next's shared expert gated). DeepSeek-V3's
 * attention and the sigmoid routing it shares with GLM-4.5 are in deepseek.c, sharing
 * the session, norms and expert path.
 */
#include "config.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/sim.h"
#include "common/error.h"
#include "engine/engine.h"
#include "engine/internal.h"
#include "quant/quant.h"

/* ---- loading ---- */

static int find(struct moe_model *m, const char *name, int optional, const moe_tensor **out)
{
	size_t n = moe_pack_tensor_count(m->pack);
	for (size_t i = 0; i < n; i++)
		if (strcmp(m->tensors[i].name, name) == 0) {
			*out = &m->tensors[i];
			return 0;
		}
	*out = NULL;
	return optional ? 0 : moe_fail(MOE_ENOTFOUND, "pack has no tensor %s", name);
}

static int as_matrix(const moe_tensor *t, struct moe_wmat *w)
{
	if (t->n_dims != 2)
		return moe_fail(MOE_EFORMAT, "tensor %s is not a matrix", t->name);
	if (t->type == MOE_TYPE_BF16)
		return moe_fail(MOE_EUNSUPPORTED, "tensor %s is bf16: the kernels take every type but bf16 (repack with -q)",
				t->name);
	*w = moe_wmat_at(t->type, t->dims[0], t->dims[1], t->data);
	return 0;
}

static int vector(struct moe_model *m, const char *name, uint64_t len, const float **out)
{
	const moe_tensor *t;
	int rc = find(m, name, 0, &t);
	if (rc)
		return rc;
	if (t->type != MOE_TYPE_F32 || t->n_dims != 1 || t->dims[0] != len)
		return moe_fail(MOE_EFORMAT, "tensor %s: expected f32 [%llu]", name, (unsigned long long)len);
	*out = t->data;
	return 0;
}

static int matrix(struct moe_model *m, const char *name, uint64_t rows, uint64_t cols, struct moe_wmat *w)
{
	const moe_tensor *t;
	int rc = find(m, name, 0, &t);
	if (!rc)
		rc = as_matrix(t, w);
	if (!rc && (w->rows != rows || w->cols != cols))
		rc = moe_fail(MOE_EFORMAT, "tensor %s: [%llu, %llu], expected [%llu, %llu]", name,
			      (unsigned long long)w->rows, (unsigned long long)w->cols, (unsigned long long)rows,
			      (unsigned long long)cols);
	return rc;
}

/* an f32 matrix read as floats (gpt-oss's expert biases) */
static int matrix_f32(struct moe_model *m, const char *name, uint64_t rows, uint64_t cols, const float **out)
{
	const moe_tensor *t;
	int rc = find(m, name, 0, &t);
	if (rc)
		return rc;
	if (t->type != MOE_TYPE_F32 || t->n_dims != 2 || t->dims[0] != rows || t->dims[1] != cols)
		return moe_fail(MOE_EFORMAT, "tensor %s: expected f32 [%llu, %llu]", name, (unsigned long long)rows,
				(unsigned long long)cols);
	*out = t->data;
	return 0;
}

/* RoPE's inverse frequencies for the rot rotated dimensions of a head: theta^(-2i/rot),
 * or with YaRN (gpt-oss; transformers' _compute_yarn_parameters) blended between those
 * and the interpolated ones theta^(-2i/rot) / factor over the correction range, with
 * cos and sin scaled by 0.1 ln(factor) + 1 */
static int rope_table(struct moe_model *m)
{
	const struct moe_hparams *hp = &m->hp;
	const size_t rot = moe_rope_dims(hp), half = rot / 2;
	m->rope_inv = malloc((half ? half : 1) * sizeof *m->rope_inv);
	if (!m->rope_inv)
		return moe_fail(MOE_ENOMEM, "out of memory");
	m->rope_scale = 1.0;
	for (size_t i = 0; i < half; i++)
		m->rope_inv[i] = pow(hp->rope_theta, -2.0 * (double)i / (double)rot);
	if (hp->arch != MOE_ARCH_GPT_OSS || !(hp->rope_factor > 1))
		return 0;
	const double f = hp->rope_factor, d = (double)rot, base = hp->rope_theta;
	const double orig = hp->rope_orig_max > 0 ? hp->rope_orig_max : (double)hp->max_pos;
	const double fast = hp->rope_beta_fast > 0 ? hp->rope_beta_fast : 32, slow = hp->rope_beta_slow > 0 ? hp->rope_beta_slow : 1;
#define CORRECTION_DIM(rots) (d * log(orig / ((rots) * 2 * M_PI)) / (2 * log(base)))
	double lo = CORRECTION_DIM(fast), hi = CORRECTION_DIM(slow);
#undef CORRECTION_DIM
	if (hp->rope_truncate)
		lo = floor(lo), hi = ceil(hi);
	lo = fmax(lo, 0), hi = fmin(hi, d - 1);
	if (lo == hi)
		hi += 0.001;
	for (size_t i = 0; i < half; i++) {
		const double ramp = fmin(fmax(((double)i - lo) / (hi - lo), 0), 1); /* 1: fully interpolated */
		m->rope_inv[i] = m->rope_inv[i] / f * ramp + m->rope_inv[i] * (1 - ramp);
	}
	m->rope_scale = 0.1 * log(f) + 1.0;
	return 0;
}

int moe_model_load(const moe_pack *pack, int threads, struct moe_model **out)
{
	*out = NULL;
	struct moe_model *m = calloc(1, sizeof *m);
	if (!m)
		return moe_fail(MOE_ENOMEM, "out of memory");
	m->pack = pack;
	int rc = moe_hparams_from_pack(pack, &m->hp);
	if (rc)
		goto fail;
	const struct moe_hparams *hp = &m->hp;
	const int ds = hp->arch == MOE_ARCH_DEEPSEEK_V3;
	const size_t nt = moe_pack_tensor_count(pack);
	m->tensors = calloc(nt ? nt : 1, sizeof *m->tensors);
	m->layers = calloc(hp->n_layers, sizeof *m->layers);
	if (!m->tensors || !m->layers) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < nt; i++)
		moe_pack_tensor_at(pack, i, &m->tensors[i]);
	const uint64_t H = hp->hidden, hd = hp->head_dim, q = hp->n_heads * hd, kv = hp->n_kv_heads * hd;
	if ((rc = find(m, "token_embd", 0, &m->embed)))
		goto fail;
	if (m->embed->n_dims != 2 || m->embed->dims[0] != hp->vocab || m->embed->dims[1] != H) {
		rc = moe_fail(MOE_EFORMAT, "token_embd: expected [%llu, %llu]", (unsigned long long)hp->vocab,
			      (unsigned long long)H);
		goto fail;
	}
	const moe_tensor *outp;
	if ((rc = find(m, "output", 1, &outp)))
		goto fail;
	if ((rc = outp ? matrix(m, "output", hp->vocab, H, &m->output) : as_matrix(m->embed, &m->output)))
		goto fail;
	if ((rc = vector(m, "output_norm", H, &m->output_norm)))
		goto fail;
	char name[64];
#define LAYER(what) (snprintf(name, sizeof name, "blk.%llu.%s", (unsigned long long)l, what), name)
	const uint64_t nh = hp->n_heads, kvl = hp->kv_lora_rank, qk = hp->qk_nope_dim + hp->qk_rope_dim;
	for (uint64_t l = 0; l < hp->n_layers && !rc; l++) {
		struct moe_layer_weights *w = &m->layers[l];
		rc = vector(m, LAYER("attn_norm"), H, &w->attn_norm);
		if (!rc) rc = vector(m, LAYER("ffn_norm"), H, &w->ffn_norm);
		if (!rc && ds) { /* multi-head latent attention */
			if (hp->q_lora_rank) {
				rc = matrix(m, LAYER("attn_q_a"), hp->q_lora_rank, H, &w->wq_a);
				if (!rc) rc = vector(m, LAYER("attn_q_a_norm"), hp->q_lora_rank, &w->q_a_norm);
				if (!rc) rc = matrix(m, LAYER("attn_q_b"), nh * qk, hp->q_lora_rank, &w->wq_b);
			} else {
				rc = matrix(m, LAYER("attn_q"), nh * qk, H, &w->wq_b);
			}
			if (!rc) rc = matrix(m, LAYER("attn_kv_a_mqa"), kvl + hp->qk_rope_dim, H, &w->wkv_a);
			if (!rc) rc = vector(m, LAYER("attn_kv_a_norm"), kvl, &w->kv_a_norm);
			if (!rc) rc = matrix(m, LAYER("attn_kv_b"), nh * (hp->qk_nope_dim + hp->v_head_dim), kvl, &w->wkv_b);
			if (!rc) rc = matrix(m, LAYER("attn_output"), H, nh * hp->v_head_dim, &w->wo);
		} else if (!rc && hp->linear[l]) { /* Gated DeltaNet */
			const uint64_t nv = hp->lin_v_heads, vd = nv * hp->lin_v_dim, cd = moe_lin_conv_dim(hp);
			w->linear = 1;
			rc = matrix(m, LAYER("attn_qkv"), cd, H, &w->w_qkv);
			if (!rc) rc = matrix(m, LAYER("attn_gate"), vd, H, &w->w_z);
			if (!rc) rc = matrix(m, LAYER("ssm_beta"), nv, H, &w->w_beta);
			if (!rc) rc = matrix(m, LAYER("ssm_alpha"), nv, H, &w->w_alpha);
			if (!rc) rc = matrix_f32(m, LAYER("ssm_conv1d"), cd, hp->lin_conv, &w->conv);
			if (!rc) rc = vector(m, LAYER("ssm_dt.bias"), nv, &w->dt_bias);
			if (!rc) rc = vector(m, LAYER("ssm_a"), nv, &w->ssm_a);
			if (!rc) rc = vector(m, LAYER("ssm_norm"), hp->lin_v_dim, &w->ssm_norm);
			if (!rc) rc = matrix(m, LAYER("ssm_out"), H, vd, &w->wo);
		} else if (!rc) {
			const int gated = hp->arch == MOE_ARCH_QWEN3_NEXT; /* each head's query, then its output gate */
			rc = matrix(m, LAYER("attn_q"), gated ? 2 * q : q, H, &w->wq);
			if (!rc) rc = matrix(m, LAYER("attn_k"), kv, H, &w->wk);
			if (!rc) rc = matrix(m, LAYER("attn_v"), kv, H, &w->wv);
			if (!rc) rc = matrix(m, LAYER("attn_output"), H, q, &w->wo);
			if (!rc && hp->attn_bias) {
				rc = vector(m, LAYER("attn_q.bias"), q, &w->q_bias);
				if (!rc) rc = vector(m, LAYER("attn_k.bias"), kv, &w->k_bias);
				if (!rc) rc = vector(m, LAYER("attn_v.bias"), kv, &w->v_bias);
			}
			if (!rc && hp->arch == MOE_ARCH_GPT_OSS) {
				rc = vector(m, LAYER("attn_output.bias"), H, &w->o_bias);
				if (!rc) rc = vector(m, LAYER("attn_sinks"), hp->n_heads, &w->sinks);
			}
		}
		w->dense = !moe_layer_is_moe(hp, l);
		if (!rc && w->dense) {
			rc = matrix(m, LAYER("ffn_gate"), hp->dense_ff, H, &w->ffn_gate);
			if (!rc) rc = matrix(m, LAYER("ffn_up"), hp->dense_ff, H, &w->ffn_up);
			if (!rc) rc = matrix(m, LAYER("ffn_down"), H, hp->dense_ff, &w->ffn_down);
		} else if (!rc) {
			rc = matrix(m, LAYER("ffn_gate_inp"), hp->n_experts, H, &w->router);
			if (!rc && hp->arch == MOE_ARCH_GPT_OSS) {
				const uint64_t E = hp->n_experts, ff = hp->expert_ff;
				rc = vector(m, LAYER("ffn_gate_inp.bias"), E, &w->router_bias);
				if (!rc) rc = matrix_f32(m, LAYER("ffn_gate_exps.bias"), E, ff, &w->exp_gate_bias);
				if (!rc) rc = matrix_f32(m, LAYER("ffn_up_exps.bias"), E, ff, &w->exp_up_bias);
				if (!rc) rc = matrix_f32(m, LAYER("ffn_down_exps.bias"), E, H, &w->exp_down_bias);
			}
			if (!rc && hp->arch == MOE_ARCH_QWEN3_NEXT) {
				const uint64_t sf = hp->shared_ff;
				w->has_shared = 1;
				rc = matrix(m, LAYER("ffn_gate_shexp"), sf, H, &w->sh_gate);
				if (!rc) rc = matrix(m, LAYER("ffn_up_shexp"), sf, H, &w->sh_up);
				if (!rc) rc = matrix(m, LAYER("ffn_down_shexp"), H, sf, &w->sh_down);
				if (!rc) rc = vector(m, LAYER("ffn_gate_inp_shexp"), H, &w->shared_gate);
			}
			if (!rc && moe_arch_sigmoid_routing(hp)) {
				const moe_tensor *b;
				rc = find(m, LAYER("exp_probs_b"), 1, &b);
				if (!rc && b)
					rc = vector(m, name, hp->n_experts, &w->exp_bias);
				w->has_shared = hp->n_shared > 0;
				const uint64_t sf = hp->n_shared * hp->expert_ff;
				if (!rc && w->has_shared) {
					rc = matrix(m, LAYER("ffn_gate_shexp"), sf, H, &w->sh_gate);
					if (!rc) rc = matrix(m, LAYER("ffn_up_shexp"), sf, H, &w->sh_up);
					if (!rc) rc = matrix(m, LAYER("ffn_down_shexp"), H, sf, &w->sh_down);
				}
			}
		}
		if (!rc && !w->linear && (hp->arch == MOE_ARCH_QWEN3_MOE || hp->arch == MOE_ARCH_QWEN3_NEXT || hp->qk_norm)) {
			rc = vector(m, LAYER("attn_q_norm"), hd, &w->q_norm);
			if (!rc) rc = vector(m, LAYER("attn_k_norm"), hd, &w->k_norm);
		}
	}
#undef LAYER
	if (rc)
		goto fail;
	for (size_t k = 0; k < moe_pack_expert_layouts(pack); k++) {
		moe_expert_layout lay;
		moe_pack_expert_layout_at(pack, k, &lay);
		for (int i = 0; i < 3; i++)
			if (lay.type[i] == MOE_TYPE_BF16) {
				rc = moe_fail(MOE_EUNSUPPORTED, "experts are bf16: the kernels take every type but bf16 (repack with -q)");
				goto fail;
			}
	}
	if (!ds && (rc = rope_table(m)))
		goto fail;
	if ((rc = moe_experts_mapped(pack, &m->experts)))
		goto fail;
	m->kernels = moe_kernels_select();
	if (!m->kernels) {
		rc = moe_fail(MOE_EUNSUPPORTED, "MOE_KERNEL=%s: not an implementation this CPU runs", getenv("MOE_KERNEL"));
		goto fail;
	}
	m->pool = moe_pool_create(threads);
	if (!m->pool) {
		rc = moe_fail(MOE_ENOMEM, "cannot start %d threads", threads);
		goto fail;
	}
	/* the pool's threads call OpenBLAS, each for its own heads: OpenBLAS threading
	 * inside them would only contend for the same cores (decode 2.5x slower at 512
	 * positions on 2 cores). Process-wide, as OpenBLAS knows no other setting. */
	openblas_set_num_threads(1);
	*out = m;
	return 0;
fail:
	moe_model_free(m);
	return rc;
}

uint64_t moe_model_dense_bytes(const struct moe_model *m)
{
	uint64_t n = 0;
	for (size_t i = 0; i < moe_pack_tensor_count(m->pack); i++)
		n += m->tensors[i].size;
	return n;
}

void moe_model_free(struct moe_model *m)
{
	if (!m)
		return;
	if (m->experts)
		m->experts->destroy(m->experts);
	moe_pool_destroy(m->pool);
	free(m->rope_inv);
	free(m->layers);
	free(m->tensors);
	free(m);
}

/* ---- session ---- */

static size_t lin_value_dim(const struct moe_hparams *hp) { return hp->lin_v_heads * hp->lin_v_dim; }

/* one linear layer's state: its conv's last inputs, then the delta rule's matrices */
static size_t lin_state_floats(const struct moe_hparams *hp)
{
	return hp->lin_v_heads * hp->lin_k_dim * hp->lin_v_dim;
}

static size_t lin_conv_floats(const struct moe_hparams *hp)
{
	return (hp->lin_conv - 1) * moe_lin_conv_dim(hp);
}

/* Qwen3-Next: the state of each linear layer and the batch's scratch; nothing else */
static int lin_init(struct moe_session *s)
{
	const struct moe_hparams *hp = &s->m->hp;
	const size_t B = s->max_batch;
	if (hp->arch != MOE_ARCH_QWEN3_NEXT)
		return 0;
	s->lin_slot = malloc(hp->n_layers * sizeof *s->lin_slot);
	if (!s->lin_slot)
		return -1;
	for (size_t l = 0; l < hp->n_layers; l++)
		s->lin_slot[l] = hp->linear[l] ? s->lin_layers++ : SIZE_MAX;
	const size_t q = hp->n_heads * hp->head_dim;
	s->lin_conv_state = calloc(s->lin_layers * lin_conv_floats(hp) + 1, sizeof(float));
	s->lin_state = calloc(s->lin_layers * lin_state_floats(hp) + 1, sizeof(float));
	s->lin_qkv = malloc(B * moe_lin_conv_dim(hp) * sizeof(float));
	s->lin_last = malloc((lin_conv_floats(hp) + 1) * sizeof(float));
	s->lin_z = malloc(B * lin_value_dim(hp) * sizeof(float));
	s->lin_b = malloc(B * hp->lin_v_heads * sizeof(float));
	s->lin_a = malloc(B * hp->lin_v_heads * sizeof(float));
	s->q_gated = malloc(B * 2 * q * sizeof(float));
	s->gate = malloc(B * q * sizeof(float));
	return s->lin_conv_state && s->lin_state && s->lin_qkv && s->lin_last && s->lin_z && s->lin_b && s->lin_a && s->q_gated &&
		       s->gate ? 0 : -1;
}

static void lin_free(struct moe_session *s)
{
	void *bufs[] = {s->lin_slot, s->lin_conv_state, s->lin_state, s->lin_qkv, s->lin_last, s->lin_z, s->lin_b, s->lin_a,
			s->q_gated, s->gate};
	for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
		free(bufs[i]);
}

static size_t lin_bytes(const struct moe_session *s)
{
	const struct moe_hparams *hp = &s->m->hp;
	if (hp->arch != MOE_ARCH_QWEN3_NEXT)
		return 0;
	const size_t B = s->max_batch, q = hp->n_heads * hp->head_dim;
	return (s->lin_layers * (lin_conv_floats(hp) + lin_state_floats(hp)) + lin_conv_floats(hp) +
		B * (moe_lin_conv_dim(hp) + 2 * lin_value_dim(hp) + 2 * hp->lin_v_heads + 3 * q)) * sizeof(float);
}

/* Attention reads its rows as f32 in place from an f32 cache; an f16 cache or a
 * window's ring is converted into kv_f32 first (one layer's K, then V rows). */
static int kv_converted(const struct moe_session *s)
{
	if (s->m->hp.arch == MOE_ARCH_DEEPSEEK_V3)
		return 0; /* MLA converts its latents itself */
	int ring = 0;
	for (size_t l = 0; l < s->m->hp.n_layers; l++)
		ring |= s->kv_cap[l] && s->kv_cap[l] < s->ctx;
	return s->kv_type != MOE_KV_F32 || ring;
}

int moe_session_create(const struct moe_model *m, size_t ctx, size_t max_batch, int kv_type, struct moe_session **out)
{
	*out = NULL;
	const struct moe_hparams *hp = &m->hp;
	if (ctx == 0 || max_batch == 0 || max_batch > MOE_MAX_BATCH)
		return moe_fail(MOE_EINVAL, "context %zu, batch %zu: need context >= 1 and batch 1..%d", ctx, max_batch,
				MOE_MAX_BATCH);
	struct moe_session *s = calloc(1, sizeof *s);
	if (!s)
		return moe_fail(MOE_ENOMEM, "out of memory");
	s->m = m;
	s->ctx = ctx;
	s->max_batch = max_batch;
	s->kv_type = kv_type;
	const int ds = hp->arch == MOE_ARCH_DEEPSEEK_V3;
	const size_t H = hp->hidden, hd = hp->head_dim;
	/* q: what the attention writes for o_proj; kv: values cached per layer and position */
	const size_t q = ds ? hp->n_heads * hp->v_head_dim : hp->n_heads * hd;
	const size_t kv = ds ? hp->kv_lora_rank + hp->qk_rope_dim : hp->n_kv_heads * hd;
	const size_t E = hp->n_experts, B = max_batch;
	const size_t kv_elt = kv_type == MOE_KV_F16 ? 2 : 4;
	s->kv_dim = kv;
	s->kv_cap = malloc(hp->n_layers * sizeof *s->kv_cap);
	s->kv_off = malloc(hp->n_layers * sizeof *s->kv_off);
	size_t rows = 0;
	for (size_t l = 0; s->kv_cap && s->kv_off && l < hp->n_layers; l++) {
		/* a window's ring holds what the first token of a batch still sees, and the batch
		 * (MLA has no windows: its cache is read whole, whatever a pack says) */
		const size_t ring = !ds && hp->sliding[l] && hp->sliding_window ? hp->sliding_window + B - 1 : ctx;
		s->kv_cap[l] = hp->linear[l] ? 0 : ring < ctx ? ring : ctx; /* a linear layer keeps a state instead */
		s->kv_off[l] = rows;
		rows += s->kv_cap[l];
	}
	s->k_cache = calloc(rows * kv, kv_elt);
	s->v_cache = ds ? NULL : calloc(rows * kv, kv_elt);
	s->shared_out = malloc(B * H * sizeof(float));
	if (ds && moe_mla_init(s)) {
		moe_session_free(s);
		return moe_fail(MOE_ENOMEM, "out of memory for MLA scratch");
	}
	if (lin_init(s)) {
		moe_session_free(s);
		return moe_fail(MOE_ENOMEM, "out of memory for the linear attention layers' state");
	}
	s->x = malloc(B * H * sizeof(float));
	s->xn = malloc(B * H * sizeof(float));
	s->q = malloc(B * q * sizeof(float));
	s->k = malloc(B * kv * sizeof(float));
	s->v = malloc(B * kv * sizeof(float));
	s->att = malloc(B * (q > lin_value_dim(hp) ? q : lin_value_dim(hp)) * sizeof(float));
	s->tmp = malloc(B * H * sizeof(float));
	s->router = malloc(B * E * sizeof(float));
	s->moe_out = malloc(B * H * sizeof(float));
	s->gather = malloc(B * H * sizeof(float));
	s->expert_out = malloc(B * H * sizeof(float));
	/* one token's scores, every head's (decode) or one KV head's group (a batch) */
	s->scores = malloc(ctx * hp->n_heads * sizeof(float));
	s->kv_f32 = s->kv_cap && s->kv_off && kv_converted(s) ? malloc(2 * ctx * kv * sizeof(float)) : NULL;
	s->topk = malloc(B * hp->n_experts_used * sizeof(int));
	s->routed = malloc(B * sizeof(size_t));
	s->topw = malloc(B * hp->n_experts_used * sizeof(float));
	s->topp = malloc(B * hp->n_experts_used * sizeof(float));
	s->pair_out = malloc(B * hp->n_experts_used * H * sizeof(float));
	s->look_xn = malloc(B * H * sizeof(float));
	s->look_router = malloc(B * E * sizeof(float));
	s->look_score = malloc((E + 1) * sizeof(float));
	s->look_list = malloc((E + 1) * sizeof(uint32_t));
	s->look_topk = malloc(hp->n_experts_used * sizeof(int));
	s->look_topp = malloc(hp->n_experts_used * sizeof(float));
	s->prev_experts = malloc((hp->n_layers * hp->n_experts_used + 1) * sizeof(uint32_t));
	s->prefetch_depth = 1;
	if (s->prev_experts)
		for (size_t i = 0; i < hp->n_layers * hp->n_experts_used; i++)
			s->prev_experts[i] = UINT32_MAX; /* nothing yet */
	if (!s->kv_cap || !s->kv_off || !s->shared_out || (!ds && !s->v_cache) || !s->topp || !s->pair_out || !s->look_topk || !s->look_topp ||
	    !s->look_xn || !s->look_router || !s->look_score || !s->look_list || !s->prev_experts || !s->k_cache || !s->x || !s->xn || !s->q || !s->k || !s->v || !s->att || !s->tmp ||
	    !s->router || !s->moe_out || !s->gather || !s->expert_out || !s->scores || !s->topk || !s->routed || !s->topw ||
	    (kv_converted(s) && !s->kv_f32)) {
		moe_session_free(s);
		return moe_fail(MOE_ENOMEM, "out of memory for a %zu-token context", ctx);
	}
	*out = s;
	return 0;
}

void moe_model_use_experts(struct moe_model *m, struct moe_experts *x)
{
	if (m->experts)
		m->experts->destroy(m->experts);
	m->experts = x;
}

void moe_session_free(struct moe_session *s)
{
	if (!s)
		return;
	void *bufs[] = {s->k_cache, s->v_cache, s->x, s->xn, s->q, s->k, s->v, s->att, s->tmp,
			s->router, s->moe_out, s->gather, s->expert_out, s->scores, s->topw, s->kv_f32,
			s->topp, s->pair_out, s->look_topk, s->look_topp, s->look_xn, s->look_router, s->look_score, s->look_list, s->prev_experts};
	for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
		free(bufs[i]);
	free(s->topk);
	free(s->routed);
	free(s->kv_cap);
	free(s->kv_off);
	free(s->shared_out);
	lin_free(s);
	moe_replay_free(s->replay);
	free(s->replay_ids);
	free(s->replay_sc);
	moe_mla_free(s);
	moe_kscratch_free(&s->ks);
	free(s);
}

int moe_session_can_rewind(const struct moe_session *s, size_t pos)
{
	const struct moe_hparams *hp = &s->m->hp;
	if (s->lin_layers && pos != s->n_past && pos != 0)
		return 0; /* a recurrent state is for n_past alone (0: a fresh one) */
	for (size_t l = 0; l < hp->n_layers; l++) {
		const size_t cap = s->kv_cap[l], w = hp->sliding[l] ? hp->sliding_window : 0;
		/* rows of positions below n_past - cap are gone; pos needs pos - w + 1 on */
		if (cap < s->ctx && s->n_past > cap && pos + 1 < w + s->n_past - cap)
			return 0;
	}
	return 1;
}

size_t moe_session_bytes(const struct moe_session *s)
{
	const struct moe_hparams *hp = &s->m->hp;
	const int ds = hp->arch == MOE_ARCH_DEEPSEEK_V3;
	const size_t kv_elt = s->kv_type == MOE_KV_F16 ? 2 : 4, H = hp->hidden, B = s->max_batch;
	const size_t qd = ds ? hp->n_heads * hp->v_head_dim : hp->n_heads * hp->head_dim, kvd = s->kv_dim;
	const size_t scores = s->ctx * hp->n_heads, kv_f32 = kv_converted(s) ? 2 * s->ctx * kvd : 0;
	const size_t scratch = (B * (8 * H + 2 * qd + 2 * kvd + 2 * hp->n_experts) + scores + kv_f32 +
				2 * hp->n_experts + hp->n_layers * hp->n_experts_used + B * hp->n_experts_used * H) * sizeof(float);
	size_t rows = 0;
	for (size_t l = 0; l < hp->n_layers; l++)
		rows += s->kv_cap[l];
	return (ds ? 1 : 2) * rows * kvd * kv_elt + scratch + B * sizeof(size_t) + (ds ? moe_mla_bytes(s) : 0) +
	       lin_bytes(s);
}

/* ---- the pieces ---- */

void moe_rmsnorm(const float *x, const float *w, size_t n, double eps, float *out)
{
	float ss = 0;
	for (size_t i = 0; i < n; i++)
		ss += x[i] * x[i];
	const float r = 1.0f / sqrtf(ss / (float)n + (float)eps);
	for (size_t i = 0; i < n; i++)
		out[i] = x[i] * r * w[i];
}

/* HF rotate-half on the first rot values of a head (all of it but in GLM-4.5):
 * element i pairs with i + rot/2, at the model's frequencies (rope_table) */
static void rope(const struct moe_model *m, float *v, size_t rot, size_t pos)
{
	const size_t half = rot / 2;
	for (size_t i = 0; i < half; i++) {
		const double a = (double)pos * m->rope_inv[i];
		const float c = (float)(cos(a) * m->rope_scale), sn = (float)(sin(a) * m->rope_scale);
		const float x0 = v[i], x1 = v[i + half];
		v[i] = x0 * c - x1 * sn;
		v[i + half] = x1 * c + x0 * sn;
	}
}

int moe_session_matmul(struct moe_session *s, const struct moe_wmat *w, const float *x, size_t n, float *y)
{
	if (moe_matmul(s->m->kernels, s->m->pool, w, x, n, y, &s->ks))
		return moe_fail(MOE_ENOMEM, "out of memory in the kernels' scratch");
	return 0;
}

void moe_softmax_sink(float *p, size_t len, float sink)
{
	float mx = sink, sum = 0;
	for (size_t j = 0; j < len; j++)
		mx = fmaxf(mx, p[j]);
	for (size_t j = 0; j < len; j++)
		sum += (p[j] = expf(p[j] - mx));
	sum += expf(sink - mx); /* 0 without a sink */
	for (size_t j = 0; j < len; j++)
		p[j] /= sum;
}

/* The first position a token at pos sees in layer l: all of them, or the last
 * sliding_window in gpt-oss's sliding layers (transformers: kv > q - window) */
static size_t first_seen(const struct moe_hparams *hp, size_t l, size_t pos)
{
	const size_t w = hp->sliding[l] ? hp->sliding_window : 0;
	return w && pos + 1 > w ? pos + 1 - w : 0;
}

/* row pos of layer l's cache, rounded to f16 for an f16 cache */
void moe_kv_store(struct moe_session *s, void *cache, size_t l, size_t pos, const float *row)
{
	const size_t kvd = s->kv_dim, at = moe_kv_at(s, l, pos);
	if (s->kv_type == MOE_KV_F32)
		memcpy((float *)cache + at, row, kvd * sizeof(float));
	else
		for (size_t i = 0; i < kvd; i++)
			((uint16_t *)cache)[at + i] = moe_f32_to_f16(row[i]);
}

/* Attention of n tokens (a prompt batch or one decoded token), token by token and
 * KV head by KV head: the scores of the query heads that share a KV head against
 * every position the token sees are one OpenBLAS sgemm, softmaxed row by row, then
 * multiplied by V in a second. Each call's shape follows from the token's position
 * alone, never from the batch it came in, so a token's attention has the same bits
 * however the context was split into steps: a session that reuses a prefix other
 * steps computed (moe-server's slots, moe_session_rewind) goes on exactly as one fed
 * the whole text at once. The KV heads are split over the kernel pool. */
struct attention_job {
	struct moe_session *s;
	size_t l, n, base;    /* the steps' tokens see positions from base on */
	const float *kf, *vf; /* rows base .. of K and V as f32, kv_dim apart */
	int gather;           /* an f16 cache or a window's ring: each thread converts its slices */
};

static void attend_kv_heads(void *arg, int i, int n_threads)
{
	const struct attention_job *j = arg;
	struct moe_session *s = j->s;
	const struct moe_hparams *hp = &s->m->hp;
	const size_t hd = hp->head_dim, nh = hp->n_heads, nkv = hp->n_kv_heads, group = nh / nkv, kvd = s->kv_dim;
	const size_t g0 = nkv * (size_t)i / (size_t)n_threads, g1 = nkv * (size_t)(i + 1) / (size_t)n_threads;
	const size_t end = s->n_past + j->n;
	const float scale = 1.0f / sqrtf((float)hd), *sinks = s->m->layers[j->l].sinks;
	for (size_t g = g0; g < g1; g++) {
		for (size_t p = j->base; j->gather && p < end; p++) { /* this head's slice of each row */
			const size_t at = moe_kv_at(s, j->l, p) + g * hd;
			float *k32 = s->kv_f32 + (p - j->base) * kvd + g * hd, *v32 = k32 + s->ctx * kvd;
			if (s->kv_type == MOE_KV_F32) {
				memcpy(k32, (const float *)s->k_cache + at, hd * sizeof(float));
				memcpy(v32, (const float *)s->v_cache + at, hd * sizeof(float));
			} else {
				s->m->kernels->halves((const uint16_t *)s->k_cache + at, hd, k32);
				s->m->kernels->halves((const uint16_t *)s->v_cache + at, hd, v32);
			}
		}
		float *sc = s->scores + g * group * s->ctx; /* [group][seen]: this KV head's, no other thread's */
		for (size_t t = 0; t < j->n; t++) {
			const size_t pos = s->n_past + t, from = first_seen(hp, j->l, pos), seen = pos + 1 - from;
			const float *qg = s->q + (t * nh + g * group) * hd;
			const float *kg = j->kf + (from - j->base) * kvd + g * hd, *vg = j->vf + (from - j->base) * kvd + g * hd;
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)group, (int)seen, (int)hd, scale, qg,
				    (int)hd, kg, (int)kvd, 0.0f, sc, (int)seen);
			for (size_t h = 0; h < group; h++)
				moe_softmax_sink(sc + h * seen, seen, sinks ? sinks[g * group + h] : -INFINITY);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)group, (int)hd, (int)seen, 1.0f, sc,
				    (int)seen, vg, (int)kvd, 0.0f, s->att + (t * nh + g * group) * hd, (int)hd);
		}
	}
}

static void attention(struct moe_session *s, size_t l, size_t n)
{
	/* positions base .. n_past + n - 1: all the steps see (a window's ring holds no more) */
	const size_t base = first_seen(&s->m->hp, l, s->n_past);
	struct attention_job j = {s, l, n, base, NULL, NULL, s->kv_f32 != NULL};
	if (j.gather) { /* converted into kv_f32 by each thread for its heads */
		j.kf = s->kv_f32;
		j.vf = s->kv_f32 + s->ctx * s->kv_dim;
	} else { /* an f32 cache's rows, in place */
		j.kf = (const float *)s->k_cache + moe_kv_at(s, l, base);
		j.vf = (const float *)s->v_cache + moe_kv_at(s, l, base);
	}
	moe_pool_run(s->m->pool, attend_kv_heads, &j);
}

/* softmax over E logits (in place), then the K most probable: ids and
 * probabilities, most probable first; the lowest id wins a tie */
static void softmax_topk(float *p, size_t E, size_t K, int *idx, float *prob)
{
	float mx = -INFINITY, sum = 0;
	for (size_t e = 0; e < E; e++)
		mx = fmaxf(mx, p[e]);
	for (size_t e = 0; e < E; e++)
		sum += (p[e] = expf(p[e] - mx));
	for (size_t k = 0; k < K; k++) {
		/* K distinct experts whatever the values: weights with NaN or infinities make
		 * every comparison false, and the first one not taken is chosen then */
		size_t best = SIZE_MAX;
		float bv = 0;
		for (size_t e = 0; e < E; e++)
			if (p[e] != -2.0f && (best == SIZE_MAX || p[e] > bv)) {
				bv = p[e];
				best = e;
			}
		idx[k] = (int)best;
		prob[k] = bv / sum;
		p[best] = -2; /* taken */
	}
}

void moe_top_k(const float *v, size_t E, size_t K, int *idx)
{
	for (size_t k = 0; k < K; k++) {
		size_t best = SIZE_MAX;
		for (size_t e = 0; e < E; e++) {
			int taken = 0;
			for (size_t j = 0; j < k; j++)
				taken |= idx[j] == (int)e;
			if (!taken && (best == SIZE_MAX || v[e] > v[best]))
				best = e;
		}
		idx[k] = (int)best;
	}
}

/* Mixtral / Qwen3 / GLM-4.5 / gpt-oss attention of n tokens from s->xn into s->att: q,
 * k, v projections and their biases, q/k norms, RoPE, the KV cache, grouped-query
 * attention (with gpt-oss's sinks and windows) */
static int gqa_attention(struct moe_session *s, size_t l, size_t n)
{
	const struct moe_hparams *hp = &s->m->hp;
	const struct moe_layer_weights *w = &s->m->layers[l];
	const size_t hd = hp->head_dim, nh = hp->n_heads, nkv = hp->n_kv_heads, kvd = nkv * hd, rot = moe_rope_dims(hp);
	const int gated = hp->arch == MOE_ARCH_QWEN3_NEXT;
	int rc;
	if ((rc = moe_session_matmul(s, &w->wq, s->xn, n, gated ? s->q_gated : s->q)) ||
	    (rc = moe_session_matmul(s, &w->wk, s->xn, n, s->k)) || (rc = moe_session_matmul(s, &w->wv, s->xn, n, s->v)))
		return rc;
	for (size_t t = 0; t < n && gated; t++) /* [head][query | gate] -> the queries, the gates */
		for (size_t h = 0; h < nh; h++) {
			memcpy(s->q + (t * nh + h) * hd, s->q_gated + (t * nh + h) * 2 * hd, hd * sizeof(float));
			memcpy(s->gate + (t * nh + h) * hd, s->q_gated + (t * nh + h) * 2 * hd + hd, hd * sizeof(float));
		}
	for (size_t t = 0; t < n && w->q_bias; t++) {
		moe_axpy(s->q + t * nh * hd, 1.0f, w->q_bias, nh * hd);
		moe_axpy(s->k + t * kvd, 1.0f, w->k_bias, kvd);
		moe_axpy(s->v + t * kvd, 1.0f, w->v_bias, kvd);
	}
	for (size_t t = 0; t < n; t++) {
		const size_t pos = s->n_past + t;
		for (size_t h = 0; h < nh; h++) {
			float *qh = s->q + t * nh * hd + h * hd;
			if (w->q_norm)
				moe_rmsnorm(qh, w->q_norm, hd, hp->rms_eps, qh);
			rope(s->m, qh, rot, pos);
		}
		for (size_t h = 0; h < nkv; h++) {
			float *kh = s->k + t * kvd + h * hd;
			if (w->k_norm)
				moe_rmsnorm(kh, w->k_norm, hd, hp->rms_eps, kh);
			rope(s->m, kh, rot, pos);
		}
		moe_kv_store(s, s->k_cache, l, pos, s->k + t * kvd);
		moe_kv_store(s, s->v_cache, l, pos, s->v + t * kvd);
	}
	attention(s, l, n);
	for (size_t i = 0; i < n * nh * hd && gated; i++) /* Qwen3-Next: the output gated */
		s->att[i] *= 1.0f / (1.0f + expf(-s->gate[i]));
	return 0;
}

/* ---- Qwen3-Next's Gated DeltaNet (modeling_qwen3_next.py: Qwen3NextGatedDeltaNet) ---- */

static float silu(float x) { return x / (1.0f + expf(-x)); }

/* x / sqrt(sum x^2 + 1e-6), as the FLA kernels' l2norm */
static void l2norm(float *x, size_t n)
{
	const float r = 1.0f / sqrtf(moe_dot(x, x, n) + 1e-6f);
	for (size_t i = 0; i < n; i++)
		x[i] *= r;
}

/* The causal depthwise conv of n tokens' channels in place (tap lin_conv - 1 on the token
 * itself, the earlier taps on the ones before, from the state across batches), then SiLU;
 * the state keeps the last lin_conv - 1 inputs. */
static void lin_conv(struct moe_session *s, size_t l, size_t n)
{
	const struct moe_hparams *hp = &s->m->hp;
	const size_t C = moe_lin_conv_dim(hp), K = hp->lin_conv, keep = K - 1;
	const float *w = s->m->layers[l].conv;
	float *state = s->lin_conv_state + s->lin_slot[l] * lin_conv_floats(hp), *x = s->lin_qkv;
	/* input t - j of token t: x's row when t >= j, else the state's row keep - (j - t) */
#define INPUT(t, j) ((t) >= (j) ? x + ((t) - (j)) * C : state + (keep - ((j) - (t))) * C)
	float *last = s->lin_last; /* the state to be: the last keep inputs */
	for (size_t r = 0; r < keep; r++) /* row r: input n - keep + r */
		memcpy(last + r * C, n + r >= keep ? x + (n + r - keep) * C : state + (n + r) * C, C * sizeof(float));
	for (size_t t = n; t-- > 0;) /* from the last token back: each reads inputs at or before it */
		for (size_t c = 0; c < C; c++) {
			float acc = 0;
			for (size_t j = 0; j < K; j++)
				acc += w[c * K + (K - 1 - j)] * INPUT(t, j)[c];
			x[t * C + c] = silu(acc);
		}
#undef INPUT
	memcpy(state, last, keep * C * sizeof(float));
}

struct delta_job {
	struct moe_session *s;
	size_t l, n;
};

/* value heads i/n of them: for each token, the state decays by exp(g), takes beta of the
 * difference between v and what it recalls for k, and is read with q; the output is
 * RMS-normed and gated by SiLU(z) */
static void delta_heads(void *arg, int i, int n)
{
	const struct delta_job *j = arg;
	struct moe_session *s = j->s;
	const struct moe_hparams *hp = &s->m->hp;
	const struct moe_layer_weights *w = &s->m->layers[j->l];
	const size_t nk = hp->lin_k_heads, nv = hp->lin_v_heads, dk = hp->lin_k_dim, dv = hp->lin_v_dim;
	const size_t C = moe_lin_conv_dim(hp), kd = nk * dk, h0 = nv * (size_t)i / (size_t)n, h1 = nv * (size_t)(i + 1) / (size_t)n;
	float *states = s->lin_state + s->lin_slot[j->l] * lin_state_floats(hp);
	float recall[1024], delta[1024];
	for (size_t h = h0; h < h1; h++) {
		const size_t g = hp->lin_v_tiled ? h % nk : h / (nv / nk);
		float *S = states + h * dk * dv;
		for (size_t t = 0; t < j->n; t++) {
			const float *row = s->lin_qkv + t * C, *q = row + g * dk, *k = row + kd + g * dk, *v = row + 2 * kd + h * dv;
			const float a = s->lin_a[t * nv + h] + w->dt_bias[h];
			const float softplus = a > 20 ? a : log1pf(expf(a)); /* torch's threshold */
			const float decay = expf(w->ssm_a[h] * softplus), beta = 1.0f / (1.0f + expf(-s->lin_b[t * nv + h]));
			/* two passes over the state: what it recalls for k (decayed: decay x S^T k), then
			 * S = decay S + k delta^T and its reading q^T S */
			memset(recall, 0, dv * sizeof(float));
			for (size_t r = 0; r < dk; r++)
				moe_axpy(recall, k[r], S + r * dv, dv);
			for (size_t c = 0; c < dv; c++)
				delta[c] = (v[c] - decay * recall[c]) * beta;
			float *o = s->att + t * nv * dv + h * dv;
			memset(o, 0, dv * sizeof(float));
			for (size_t r = 0; r < dk; r++) {
				float *Sr = S + r * dv;
				moe_scale_axpy(Sr, decay, k[r], delta, dv);
				moe_axpy(o, q[r], Sr, dv); /* q carries the 1/sqrt(dk) */
			}
			moe_rmsnorm(o, w->ssm_norm, dv, hp->rms_eps, o);
			const float *z = s->lin_z + t * nv * dv + h * dv;
			for (size_t c = 0; c < dv; c++)
				o[c] *= silu(z[c]);
		}
	}
}

/* A Gated DeltaNet layer on n tokens from s->xn into s->att [n][value heads x dim] (ssm_out,
 * the layer's wo, follows), advancing its state token by token: prefill and decode are
 * the same steps. */
static int linear_attention(struct moe_session *s, size_t l, size_t n)
{
	const struct moe_hparams *hp = &s->m->hp;
	const struct moe_layer_weights *w = &s->m->layers[l];
	const size_t C = moe_lin_conv_dim(hp), nk = hp->lin_k_heads, dk = hp->lin_k_dim;
	int rc;
	if ((rc = moe_session_matmul(s, &w->w_qkv, s->xn, n, s->lin_qkv)) ||
	    (rc = moe_session_matmul(s, &w->w_z, s->xn, n, s->lin_z)) ||
	    (rc = moe_session_matmul(s, &w->w_beta, s->xn, n, s->lin_b)) ||
	    (rc = moe_session_matmul(s, &w->w_alpha, s->xn, n, s->lin_a)))
		return rc;
	lin_conv(s, l, n);
	const float scale = 1.0f / sqrtf((float)dk);
	for (size_t t = 0; t < n; t++) /* q and k of each key head to unit length; q scaled */
		for (size_t g = 0; g < 2 * nk; g++) {
			float *v = s->lin_qkv + t * C + g * dk;
			l2norm(v, dk);
			for (size_t i = 0; g < nk && i < dk; i++)
				v[i] *= scale;
		}
	struct delta_job j = {s, l, n};
	moe_pool_run(s->m->pool, delta_heads, &j);
	return 0;
}

/* a sequence starting at position 0 starts every linear layer's state from zero */
static void lin_fresh(struct moe_session *s)
{
	const struct moe_hparams *hp = &s->m->hp;
	if (s->lin_layers && s->n_past == 0) {
		memset(s->lin_conv_state, 0, s->lin_layers * lin_conv_floats(hp) * sizeof(float));
		memset(s->lin_state, 0, s->lin_layers * lin_state_floats(hp) * sizeof(float));
	}
}

/* each token's top k experts, renormalized over them if the model says so; gpt-oss:
 * the router's bias added, the top k logits chosen, then softmaxed over the k */
static void route(struct moe_session *s, size_t l, size_t n)
{
	const struct moe_hparams *hp = &s->m->hp;
	const size_t E = hp->n_experts, K = hp->n_experts_used;
	const float *bias = s->m->layers[l].router_bias;
	for (size_t t = 0; t < n; t++) {
		float *wt = s->topw + t * K, tot = 0;
		if (bias) {
			float *lg = s->router + t * E;
			moe_axpy(lg, 1.0f, bias, E);
			moe_top_k(lg, E, K, s->topk + t * K);
			for (size_t k = 0; k < K; k++)
				wt[k] = lg[s->topk[t * K + k]];
			moe_softmax_sink(wt, K, -INFINITY);
			memcpy(s->topp + t * K, wt, K * sizeof *wt);
			continue;
		}
		softmax_topk(s->router + t * E, E, K, s->topk + t * K, wt);
		memcpy(s->topp + t * K, wt, K * sizeof *wt);
		for (size_t k = 0; k < K; k++)
			tot += wt[k];
		if (hp->norm_topk_prob)
			for (size_t k = 0; k < K; k++)
				wt[k] /= tot;
	}
}

/* Each token's experts replaced by the recorded ones (sim.h says which), the
 * model's own choices after them if the trace has fewer per token, and the
 * weights scaled to the sum the model's had (1 where it renormalizes). */
static void replay_routes(struct moe_session *s, size_t l, size_t n)
{
	const size_t K = s->m->hp.n_experts_used;
	for (size_t t = 0; t < n; t++) {
		int *idx = s->topk + t * K;
		float *wt = s->topw + t * K, *pr = s->topp + t * K, sum = 0, got = 0;
		size_t m = moe_replay_route(s->replay, s->replay_pos + t, (uint32_t)l, (uint32_t)s->m->hp.n_experts, K,
					    s->replay_ids, s->replay_sc);
		for (size_t k = 0; k < K; k++)
			sum += wt[k];
		for (size_t k = 0; k < K && m < K; k++) { /* the model's own, if not replayed */
			int dup = 0;
			for (size_t j = 0; j < m; j++)
				dup |= s->replay_ids[j] == idx[k];
			if (!dup)
				s->replay_ids[m] = idx[k], s->replay_sc[m++] = pr[k];
		}
		for (size_t k = 0; k < K; k++)
			got += s->replay_sc[k];
		for (size_t k = 0; k < K; k++) {
			idx[k] = s->replay_ids[k];
			pr[k] = s->replay_sc[k];
			wt[k] = got > 0 ? s->replay_sc[k] * sum / got : sum / (float)K;
		}
	}
}

/* Guesses for the layers after l, while l's experts compute: each upcoming
 * layer's router applied to the current hidden state (the residual stream moves
 * slowly from layer to layer), likeliest first, then what the last token used
 * there. Past the last layer, the next token's first layers: this token's choices. */
static int lookahead(struct moe_session *s, size_t l, size_t n)
{
	const struct moe_model *m = s->m;
	const struct moe_hparams *hp = &m->hp;
	struct moe_experts *x = m->experts;
	const size_t H = hp->hidden, E = hp->n_experts, K = hp->n_experts_used, L = hp->n_layers;
	for (unsigned d = 1; x->hint && d <= s->prefetch_depth; d++) {
		const size_t target = (l + d) % L;
		const struct moe_layer_weights *w = &m->layers[target];
		if (w->dense)
			continue;
		for (size_t e = 0; e < E; e++)
			s->look_score[e] = -1;
		if (l + d < L && !s->replay) { /* replayed routes owe nothing to this model's routers */
			for (size_t t = 0; t < n; t++)
				moe_rmsnorm(s->x + t * H, w->ffn_norm, H, hp->rms_eps, s->look_xn + t * H);
			int rc = moe_session_matmul(s, &w->router, s->look_xn, n, s->look_router);
			if (rc)
				return rc;
			for (size_t t = 0; t < n && w->router_bias; t++)
				moe_axpy(s->look_router + t * E, 1.0f, w->router_bias, E);
			for (size_t t = 0; t < n; t++) { /* each token's top K, scored by its probability */
				softmax_topk(s->look_router + t * E, E, K, s->look_topk, s->look_topp);
				for (size_t k = 0; k < K; k++)
					s->look_score[s->look_topk[k]] = fmaxf(s->look_score[s->look_topk[k]], s->look_topp[k]);
			}
		}
		for (size_t k = 0; k < K; k++) { /* the last token's choices, after the router's */
			const uint32_t e = s->prev_experts[target * K + k];
			if (e != UINT32_MAX && s->look_score[e] < 0)
				s->look_score[e] = 0;
		}
		size_t nl = 0;
		for (size_t e = 0; e < E; e++)
			if (s->look_score[e] >= 0)
				s->look_list[nl++] = (uint32_t)e;
		for (size_t i = 1; i < nl; i++) { /* likeliest first */
			const uint32_t v = s->look_list[i];
			size_t j = i;
			for (; j > 0 && s->look_score[s->look_list[j - 1]] < s->look_score[v]; j--)
				s->look_list[j] = s->look_list[j - 1];
			s->look_list[j] = v;
		}
		if (nl)
			x->hint(x, (uint32_t)target, s->look_list, nl, d, s->look_score);
	}
	return 0;
}

static void trace_layer(struct moe_session *s, size_t l, size_t n)
{
	const size_t K = s->m->hp.n_experts_used;
	for (size_t t = 0; t < n; t++) {
		fprintf(s->trace, "{\"token\": %zu, \"layer\": %zu, \"experts\": [", s->n_past + t, l);
		for (size_t k = 0; k < K; k++)
			fprintf(s->trace, "%s%d", k ? ", " : "", s->topk[t * K + k]);
		fputs("], \"scores\": [", s->trace);
		for (size_t k = 0; k < K; k++)
			fprintf(s->trace, "%s%.6g", k ? ", " : "", s->topp[t * K + k]);
		fputs("]}\n", s->trace);
	}
}

static int experts(struct moe_session *s, size_t l, size_t n)
{
	const struct moe_hparams *hp = &s->m->hp;
	const size_t H = hp->hidden, K = hp->n_experts_used;
	struct moe_experts *x = s->m->experts;
	if (s->trace)
		trace_layer(s, l, n);
	/* the experts this batch needs, in order of first use */
	uint32_t *list = s->look_list;
	size_t nl = 0;
	for (size_t t = 0; t < n; t++)
		for (size_t k = 0; k < K; k++) {
			const uint32_t e = (uint32_t)s->topk[t * K + k];
			size_t i = 0;
			while (i < nl && list[i] != e)
				i++;
			if (i == nl)
				list[nl++] = e;
		}
	uint32_t order[256], *ord = nl <= 256 ? order : malloc(nl * sizeof *ord);
	if (!ord)
		return moe_fail(MOE_ENOMEM, "out of memory");
	memcpy(ord, list, nl * sizeof *ord);
	if (x->hint)
		x->hint(x, (uint32_t)l, ord, nl, 0, NULL); /* reorders: ready ones first */
	for (size_t k = 0; k < K; k++)
		s->prev_experts[l * K + k] = (uint32_t)s->topk[(n - 1) * K + k];
	int rc = lookahead(s, l, n);
	memset(s->moe_out, 0, n * H * sizeof(float));
	for (size_t i = 0; i < nl && !rc; i++) {
		const uint32_t e = ord[i];
		/* the tokens routed to e, gathered so the expert's weights are read once */
		size_t m = 0;
		for (size_t t = 0; t < n; t++)
			for (size_t k = 0; k < K; k++)
				if (s->topk[t * K + k] == (int)e) {
					memcpy(s->gather + m * H, s->xn + t * H, H * sizeof(float));
					s->routed[m++] = t * K + k;
				}
		struct moe_expert_weights w;
		if ((rc = x->acquire(x, (uint32_t)l, e, &w)))
			break;
		const struct moe_layer_weights *lw = &s->m->layers[l];
		struct moe_ffn_oai oai = {0}; /* gpt-oss: expert e's biases */
		if (lw->exp_gate_bias)
			oai = (struct moe_ffn_oai){lw->exp_gate_bias + e * hp->expert_ff, lw->exp_up_bias + e * hp->expert_ff,
						   lw->exp_down_bias + e * H, (float)hp->swiglu_limit};
		rc = moe_expert_ffn(s->m->kernels, s->m->pool, &w.gate, &w.up, &w.down, s->gather, m, s->expert_out,
				    lw->exp_gate_bias ? &oai : NULL, &s->ks);
		x->release(x, &w);
		if (rc) {
			rc = moe_fail(MOE_ENOMEM, "out of memory in the kernels' scratch");
			break;
		}
		for (size_t j = 0; j < m; j++)
			memcpy(s->pair_out + s->routed[j] * H, s->expert_out + j * H, H * sizeof(float));
	}
	if (ord != order)
		free(ord);
	/* summed in routing order, whatever order the experts became ready in: the same
	 * bits from any provider and any budget */
	for (size_t t = 0; t < n && !rc; t++)
		for (size_t k = 0; k < K; k++) {
			const float wt = s->topw[t * K + k], *y = s->pair_out + (t * K + k) * H;
			for (size_t c = 0; c < H; c++)
				s->moe_out[t * H + c] += wt * y[c];
		}
	return rc;
}

/* The attention of layer l: of s's n tokens, or with rows, of each row's token in
 * its own session (its xn row in, its att row out through that session's scratch). */
static int attend(struct moe_session *s, struct moe_session *const *rows, size_t l, size_t n)
{
	const struct moe_hparams *hp = &s->m->hp;
	const int lin = s->m->layers[l].linear;
	if (!rows)
		return lin ? linear_attention(s, l, n) : hp->arch == MOE_ARCH_DEEPSEEK_V3 ? moe_mla_attention(s, l, n) : gqa_attention(s, l, n);
	const size_t H = hp->hidden, A = s->m->layers[l].wo.cols;
	for (size_t t = 0; t < n; t++) {
		struct moe_session *r = rows[t];
		if (r != s || t != 0) /* s as row 0 has its row in place */
			memcpy(r->xn, s->xn + t * H, H * sizeof(float));
		int rc = lin ? linear_attention(r, l, 1) : hp->arch == MOE_ARCH_DEEPSEEK_V3 ? moe_mla_attention(r, l, 1) : gqa_attention(r, l, 1);
		if (rc)
			return rc;
		if (r != s || t != 0)
			memcpy(s->att + t * A, r->att, A * sizeof(float));
	}
	return 0;
}

static int forward(struct moe_session *s, struct moe_session *const *rows, const int32_t *tokens, size_t n,
		   float *logits, float *last_logits)
{
	const struct moe_model *m = s->m;
	const struct moe_hparams *hp = &m->hp;
	const size_t H = hp->hidden;
	if (n == 0 || n > s->max_batch)
		return moe_fail(MOE_EINVAL, "batch of %zu tokens (1..%zu)", n, s->max_batch);
	for (size_t t = 0; rows && t < n; t++) {
		if (rows[t]->m != m)
			return moe_fail(MOE_EINVAL, "a batch of sessions of different models");
		for (size_t u = 0; u < t; u++)
			if (rows[u] == rows[t])
				return moe_fail(MOE_EINVAL, "a session twice in one batch");
		if (rows[t]->n_past + 1 > rows[t]->ctx)
			return moe_fail(MOE_EINVAL, "context full: %zu + 1 tokens > --ctx-size %zu", rows[t]->n_past,
					rows[t]->ctx);
	}
	if (!rows && s->n_past + n > s->ctx)
		return moe_fail(MOE_EINVAL, "context full: %zu + %zu tokens > --ctx-size %zu", s->n_past, n, s->ctx);
	/* embeddings: one row each, dequantized */
	const moe_tensor *em = m->embed;
	const size_t codes_row = moe_type_row_bytes(em->type, H);
	for (size_t t = 0; t < n; t++) {
		if (tokens[t] < 0 || (uint64_t)tokens[t] >= hp->vocab)
			return moe_fail(MOE_EINVAL, "token id %d out of range (vocabulary %llu)", tokens[t],
					(unsigned long long)hp->vocab);
		const uint8_t *codes = (const uint8_t *)em->data + (size_t)tokens[t] * codes_row;
		const uint16_t *scales = moe_type_is_split(em->type)
			? (const uint16_t *)((const uint8_t *)em->data + hp->vocab * codes_row) + (size_t)tokens[t] * (H / 32)
			: NULL;
		moe_dequantize_rows(em->type, codes, scales, 1, H, s->x + t * H);
	}
	if (!rows)
		lin_fresh(s);
	for (size_t t = 0; rows && t < n; t++)
		lin_fresh(rows[t]);
	int rc = 0;
	for (size_t l = 0; l < hp->n_layers && !rc; l++) {
		const struct moe_layer_weights *w = &m->layers[l];
		for (size_t t = 0; t < n; t++)
			moe_rmsnorm(s->x + t * H, w->attn_norm, H, hp->rms_eps, s->xn + t * H);
		if (!rows && s->cancel) {
			rc = moe_fail(MOE_ECANCELED, "canceled");
			break;
		}
		if ((rc = attend(s, rows, l, n)))
			break;
		if ((rc = moe_session_matmul(s, &w->wo, s->att, n, s->tmp)))
			break;
		for (size_t t = 0; t < n && w->o_bias; t++)
			moe_axpy(s->tmp + t * H, 1.0f, w->o_bias, H);
		for (size_t i = 0; i < n * H; i++)
			s->x[i] += s->tmp[i];
		for (size_t t = 0; t < n; t++)
			moe_rmsnorm(s->x + t * H, w->ffn_norm, H, hp->rms_eps, s->xn + t * H);
		if (w->dense) {
			if (moe_expert_ffn(m->kernels, m->pool, &w->ffn_gate, &w->ffn_up, &w->ffn_down, s->xn, n, s->moe_out,
					   NULL, &s->ks)) {
				rc = moe_fail(MOE_ENOMEM, "out of memory in the kernels' scratch");
				break;
			}
		} else {
			if ((rc = moe_session_matmul(s, &w->router, s->xn, n, s->router)))
				break;
			if (moe_arch_sigmoid_routing(hp))
				moe_deepseek_route(s, l, n);
			else
				route(s, l, n);
			if (s->replay)
				replay_routes(s, l, n);
			if ((rc = experts(s, l, n)))
				break;
			if (w->has_shared) { /* always on, resident */
				if (moe_expert_ffn(m->kernels, m->pool, &w->sh_gate, &w->sh_up, &w->sh_down, s->xn, n,
						   s->shared_out, NULL, &s->ks)) {
					rc = moe_fail(MOE_ENOMEM, "out of memory in the kernels' scratch");
					break;
				}
				for (size_t t = 0; t < n; t++) { /* Qwen3-Next: behind a sigmoid gate */
					const float gw = w->shared_gate
						? 1.0f / (1.0f + expf(-moe_dot(s->xn + t * H, w->shared_gate, H))) : 1.0f;
					moe_axpy(s->moe_out + t * H, gw, s->shared_out + t * H, H);
				}
			}
		}
		for (size_t i = 0; i < n * H; i++)
			s->x[i] += s->moe_out[i];
	}
	if (rc) { /* the layers that ran moved their linear states past n_past: start over */
		for (size_t t = 0; rows && t < n; t++)
			if (rows[t]->lin_layers)
				rows[t]->n_past = 0;
		if (!rows && s->lin_layers)
			s->n_past = 0;
		return rc;
	}
	if (logits) {
		for (size_t t = 0; t < n; t++)
			moe_rmsnorm(s->x + t * H, m->output_norm, H, hp->rms_eps, s->xn + t * H);
		rc = moe_session_matmul(s, &m->output, s->xn, n, logits);
	} else if (last_logits) {
		moe_rmsnorm(s->x + (n - 1) * H, m->output_norm, H, hp->rms_eps, s->xn);
		rc = moe_session_matmul(s, &m->output, s->xn, 1, last_logits);
	}
	if (rc)
		return rc;
	if (!rows)
		s->n_past += n;
	s->replay_pos += n;
	for (size_t t = 0; rows && t < n; t++)
		rows[t]->n_past++;
	return 0;
}

int moe_forward(struct moe_session *s, const int32_t *tokens, size_t n, float *logits, float *last_logits)
{
	return forward(s, NULL, tokens, n, logits, last_logits);
}

int moe_forward_rows(struct moe_session *s, struct moe_session *const *rows, const int32_t *tokens, size_t n,
		     float *logits)
{
	return forward(s, rows, tokens, n, logits, NULL);
}
