/* arch.c - per-architecture tensor lists and hyperparameter (de)serialization. */
#include "config.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "common/error.h"
#include "common/util.h"
#include "pack/meta.h"

const char *const moe_kind_names[MOE_KIND_COUNT] = {
	[MOE_KIND_EMBED] = "embed", [MOE_KIND_OUTPUT] = "output", [MOE_KIND_ATTN] = "attn",
	[MOE_KIND_FFN] = "ffn",     [MOE_KIND_EXPERT] = "experts", [MOE_KIND_NORM] = "norm",
	[MOE_KIND_ROUTER] = "router",
};

static const char *const arch_names[MOE_ARCH_COUNT] = {"mixtral", "qwen3_moe", "deepseek_v3", "glm4_moe",
									"gpt_oss", "qwen3_next"};

const char *moe_arch_name(int arch) { return (arch >= 0 && arch < MOE_ARCH_COUNT) ? arch_names[arch] : "?"; }

int moe_arch_from_name(const char *name)
{
	for (int a = 0; a < MOE_ARCH_COUNT; a++)
		if (strcmp(name, arch_names[a]) == 0)
			return a;
	return MOE_EUNSUPPORTED;
}

int moe_layer_is_moe(const struct moe_hparams *hp, uint64_t l)
{
	switch (hp->arch) {
	case MOE_ARCH_QWEN3_MOE:
	case MOE_ARCH_QWEN3_NEXT:
		return l < MOE_MAX_LAYERS && !hp->mlp_only[l] && hp->sparse_step && (l + 1) % hp->sparse_step == 0;
	case MOE_ARCH_DEEPSEEK_V3:
	case MOE_ARCH_GLM4_MOE:
		return l >= hp->first_dense;
	default:
		return 1;
	}
}

int moe_arch_sigmoid_routing(const struct moe_hparams *hp)
{
	return hp->arch == MOE_ARCH_DEEPSEEK_V3 || hp->arch == MOE_ARCH_GLM4_MOE;
}

uint64_t moe_lin_conv_dim(const struct moe_hparams *hp)
{
	return 2 * hp->lin_k_heads * hp->lin_k_dim + hp->lin_v_heads * hp->lin_v_dim;
}

uint64_t moe_rope_dims(const struct moe_hparams *hp)
{
	return hp->rope_dims ? hp->rope_dims : hp->head_dim;
}

/* ---- hyperparameters as metadata: one table drives writing, reading and checks ---- */

enum { HP_U64, HP_F64 };
struct hp_field {
	const char *key;
	int type;
	size_t off;
	unsigned archs; /* bit per arch that requires it (non-zero) */
};
#define ALL ((1u << MOE_ARCH_COUNT) - 1)
#define MX (1u << MOE_ARCH_MIXTRAL)
#define QW (1u << MOE_ARCH_QWEN3_MOE)
#define DS (1u << MOE_ARCH_DEEPSEEK_V3)
#define GL (1u << MOE_ARCH_GLM4_MOE)
#define GO (1u << MOE_ARCH_GPT_OSS)
#define QN (1u << MOE_ARCH_QWEN3_NEXT)
#define F(k, t, m, a) {k, t, offsetof(struct moe_hparams, m), a}
static const struct hp_field hp_fields[] = {
	F("n_layers", HP_U64, n_layers, ALL),
	F("hidden_size", HP_U64, hidden, ALL),
	F("n_heads", HP_U64, n_heads, ALL),
	F("n_kv_heads", HP_U64, n_kv_heads, MX | QW | GL | GO | QN),
	F("head_dim", HP_U64, head_dim, MX | QW | GL | GO | QN),
	F("vocab_size", HP_U64, vocab, ALL),
	F("n_experts", HP_U64, n_experts, ALL),
	F("n_experts_used", HP_U64, n_experts_used, ALL),
	F("expert_ff", HP_U64, expert_ff, ALL),
	F("dense_ff", HP_U64, dense_ff, 0),
	F("max_position", HP_U64, max_pos, 0),
	F("rope_theta", HP_F64, rope_theta, ALL),
	F("rms_eps", HP_F64, rms_eps, ALL),
	F("norm_topk_prob", HP_U64, norm_topk_prob, 0),
	F("tie_embeddings", HP_U64, tie_embeddings, 0),
	F("sparse_step", HP_U64, sparse_step, QW | QN),
	F("first_dense", HP_U64, first_dense, 0),
	F("n_shared_experts", HP_U64, n_shared, 0),
	F("n_group", HP_U64, n_group, DS | GL),
	F("topk_group", HP_U64, topk_group, DS | GL),
	F("q_lora_rank", HP_U64, q_lora_rank, 0),
	F("kv_lora_rank", HP_U64, kv_lora_rank, DS),
	F("qk_nope_head_dim", HP_U64, qk_nope_dim, DS),
	F("qk_rope_head_dim", HP_U64, qk_rope_dim, DS),
	F("v_head_dim", HP_U64, v_head_dim, DS),
	F("routed_scaling_factor", HP_F64, routed_scale, GL),
	F("scoring_sigmoid", HP_U64, scoring_sigmoid, 0),
	F("rope_scaling.factor", HP_F64, rope_factor, 0),
	F("rope_scaling.original_max_position", HP_F64, rope_orig_max, 0),
	F("rope_scaling.beta_fast", HP_F64, rope_beta_fast, 0),
	F("rope_scaling.beta_slow", HP_F64, rope_beta_slow, 0),
	F("rope_scaling.mscale", HP_F64, rope_mscale, 0),
	F("rope_scaling.mscale_all_dim", HP_F64, rope_mscale_all, 0),
	F("rope_dims", HP_U64, rope_dims, 0),
	F("attn_bias", HP_U64, attn_bias, 0),
	F("qk_norm", HP_U64, qk_norm, 0),
	F("sliding_window", HP_U64, sliding_window, GO),
	F("rope_scaling.truncate", HP_U64, rope_truncate, 0),
	F("swiglu_limit", HP_F64, swiglu_limit, GO),
	F("linear_key_heads", HP_U64, lin_k_heads, QN),
	F("linear_value_heads", HP_U64, lin_v_heads, QN),
	F("linear_key_head_dim", HP_U64, lin_k_dim, QN),
	F("linear_value_head_dim", HP_U64, lin_v_dim, QN),
	F("linear_conv_kernel", HP_U64, lin_conv, QN),
	F("linear_value_tiled", HP_U64, lin_v_tiled, 0),
	F("shared_expert_ff", HP_U64, shared_ff, QN),
};
#undef F

int moe_hparams_check(const struct moe_hparams *hp)
{
	if (hp->arch < 0 || hp->arch >= MOE_ARCH_COUNT)
		return moe_fail(MOE_EUNSUPPORTED, "unknown architecture id %d", hp->arch);
	for (size_t i = 0; i < sizeof hp_fields / sizeof hp_fields[0]; i++) {
		const struct hp_field *f = &hp_fields[i];
		if (!(f->archs & (1u << hp->arch)))
			continue;
		const char *p = (const char *)hp + f->off;
		if (f->type == HP_F64 && isnan(*(const double *)p))
			return moe_fail(MOE_EFORMAT, "%s: hyperparameter %s is not a number", moe_arch_name(hp->arch), f->key);
		int zero = f->type == HP_U64 ? *(const uint64_t *)p == 0 : !(*(const double *)p > 0);
		if (zero)
			return moe_fail(MOE_EFORMAT, "%s: hyperparameter %s missing or zero", moe_arch_name(hp->arch), f->key);
	}
	/* Every count in a range far beyond any real model (DeepSeek-V3: hidden 7168, 256
	 * experts, vocab 129280), so that no size computed from them can wrap 64 bits. */
	const uint64_t E = hp->n_experts;
	const struct { const char *name; uint64_t v, lo, hi; } lim[] = {
		{"n_layers", hp->n_layers, 1, MOE_MAX_LAYERS},
		{"hidden_size", hp->hidden, 1, 1u << 16},
		{"n_heads", hp->n_heads, 1, 1u << 10},
		{"n_kv_heads", hp->n_kv_heads, hp->arch == MOE_ARCH_DEEPSEEK_V3 ? 0 : 1, hp->n_heads},
		{"head_dim", hp->head_dim, 0, 1u << 12},
		{"vocab_size", hp->vocab, 1, MOE_MAX_VOCAB},
		{"n_experts", E, 1, 1u << 12},
		{"n_experts_used", hp->n_experts_used, 1, E},
		{"expert_ff", hp->expert_ff, 1, 1u << 18},
		{"dense_ff", hp->dense_ff, 0, 1u << 18},
		{"max_position", hp->max_pos, 0, 1u << 24},
		{"norm_topk_prob", hp->norm_topk_prob, 0, 1},
		{"tie_embeddings", hp->tie_embeddings, 0, 1},
		{"scoring_sigmoid", hp->scoring_sigmoid, 0, 1},
		{"sparse_step", hp->sparse_step, 0, MOE_MAX_LAYERS},
		{"first_dense", hp->first_dense, 0, hp->n_layers},
		{"n_shared_experts", hp->n_shared, 0, 64},
		/* group-limited routing: whole groups, at most 256, enough experts in the kept ones */
		{"n_group", hp->n_group, 0, E < 256 ? E : 256},
		{"topk_group", hp->topk_group, 0, hp->n_group},
		{"q_lora_rank", hp->q_lora_rank, 0, 1u << 16},
		{"kv_lora_rank", hp->kv_lora_rank, 0, 1u << 16},
		{"qk_nope_head_dim", hp->qk_nope_dim, 0, 1u << 12},
		{"qk_rope_head_dim", hp->qk_rope_dim, 0, 1u << 12},
		{"v_head_dim", hp->v_head_dim, 0, 1u << 12},
		{"rope_dims", hp->rope_dims, 0, hp->head_dim},
		{"attn_bias", hp->attn_bias, 0, 1},
		{"qk_norm", hp->qk_norm, 0, 1},
		{"sliding_window", hp->sliding_window, 0, 1u << 24},
		{"rope_scaling.truncate", hp->rope_truncate, 0, 1},
		/* a Gated DeltaNet state is heads x key dim x value dim floats per session */
		{"linear_key_heads", hp->lin_k_heads, 0, 256},
		{"linear_value_heads", hp->lin_v_heads, 0, 256},
		{"linear_key_head_dim", hp->lin_k_dim, 0, 1024},
		{"linear_value_head_dim", hp->lin_v_dim, 0, 1024},
		{"linear_conv_kernel", hp->lin_conv, 0, 64},
		{"linear_value_tiled", hp->lin_v_tiled, 0, 1},
		{"shared_expert_ff", hp->shared_ff, 0, 1u << 18},
	};
	for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++)
		if (lim[i].v < lim[i].lo || lim[i].v > lim[i].hi)
			return moe_fail(MOE_EFORMAT, "%s: hyperparameter %s = %llu is out of range (%llu..%llu)",
					moe_arch_name(hp->arch), lim[i].name, (unsigned long long)lim[i].v,
					(unsigned long long)lim[i].lo, (unsigned long long)lim[i].hi);
	/* rotary embeddings rotate pairs: an even number of dimensions */
	const uint64_t rope_dims = hp->arch == MOE_ARCH_DEEPSEEK_V3 ? hp->qk_rope_dim : moe_rope_dims(hp);
	if (rope_dims % 2)
		return moe_fail(MOE_EFORMAT, "%s: hyperparameter %s = %llu: rotary embeddings need an even number",
				moe_arch_name(hp->arch),
				hp->arch == MOE_ARCH_DEEPSEEK_V3 ? "qk_rope_head_dim" : hp->rope_dims ? "rope_dims" : "head_dim",
				(unsigned long long)rope_dims);
	const struct { const char *name; double v, lo, hi; } flim[] = {
		{"rope_theta", hp->rope_theta, 0, 1e12},
		{"rms_eps", hp->rms_eps, 0, 1},
		{"routed_scaling_factor", hp->routed_scale, 0, 1e6},
		{"rope_scaling.factor", hp->rope_factor, 0, 1e6},
		{"rope_scaling.original_max_position", hp->rope_orig_max, 0, 1u << 24},
		{"rope_scaling.beta_fast", hp->rope_beta_fast, 0, 1e6},
		{"rope_scaling.beta_slow", hp->rope_beta_slow, 0, 1e6},
		{"rope_scaling.mscale", hp->rope_mscale, 0, 1e6},
		{"rope_scaling.mscale_all_dim", hp->rope_mscale_all, 0, 1e6},
		{"swiglu_limit", hp->swiglu_limit, 0, 1e6},
	};
	for (size_t i = 0; i < sizeof flim / sizeof flim[0]; i++)
		if (!(flim[i].v >= flim[i].lo && flim[i].v <= flim[i].hi)) /* NaN fails too */
			return moe_fail(MOE_EFORMAT, "%s: hyperparameter %s = %g is out of range (%g..%g)",
					moe_arch_name(hp->arch), flim[i].name, flim[i].v, flim[i].lo, flim[i].hi);
	if (hp->arch != MOE_ARCH_DEEPSEEK_V3 && hp->n_heads % hp->n_kv_heads)
		return moe_fail(MOE_EFORMAT, "attention heads (%llu) not a multiple of kv heads (%llu)",
				(unsigned long long)hp->n_heads, (unsigned long long)hp->n_kv_heads);
	if (moe_arch_sigmoid_routing(hp) && hp->n_group) {
		if (E % hp->n_group)
			return moe_fail(MOE_EFORMAT, "experts (%llu) not divisible into %llu groups",
					(unsigned long long)E, (unsigned long long)hp->n_group);
		if (hp->n_experts_used > hp->topk_group * (E / hp->n_group))
			return moe_fail(MOE_EFORMAT, "hyperparameter n_experts_used = %llu: more than the %llu experts of "
					"the topk_group (%llu) groups kept", (unsigned long long)hp->n_experts_used,
					(unsigned long long)(hp->topk_group * (E / hp->n_group)),
					(unsigned long long)hp->topk_group);
	}
	if (hp->arch == MOE_ARCH_QWEN3_NEXT && hp->lin_v_heads % hp->lin_k_heads)
		return moe_fail(MOE_EFORMAT, "linear attention: value heads (%llu) not a multiple of key heads (%llu)",
				(unsigned long long)hp->lin_v_heads, (unsigned long long)hp->lin_k_heads);
	for (uint64_t l = 0; l < hp->n_layers; l++)
		if (hp->linear[l] && hp->arch != MOE_ARCH_QWEN3_NEXT)
			return moe_fail(MOE_EFORMAT, "%s: layer %llu is marked linear attention, which only qwen3_next has",
					moe_arch_name(hp->arch), (unsigned long long)l);
	for (uint64_t l = 0; l < hp->n_layers; l++)
		if (!moe_layer_is_moe(hp, l) && hp->dense_ff == 0)
			return moe_fail(MOE_EFORMAT, "layer %llu is a dense MLP but intermediate_size is missing",
					(unsigned long long)l);
	return 0;
}

int moe_hparams_to_meta(const struct moe_hparams *hp, struct moe_meta_writer *w)
{
	char key[96];
	meta_put_str(w, "general.architecture", moe_arch_name(hp->arch));
	for (size_t i = 0; i < sizeof hp_fields / sizeof hp_fields[0]; i++) {
		const struct hp_field *f = &hp_fields[i];
		const char *p = (const char *)hp + f->off;
		snprintf(key, sizeof key, "hparams.%s", f->key);
		if (f->type == HP_U64)
			meta_put_u64(w, key, *(const uint64_t *)p);
		else
			meta_put_f64(w, key, *(const double *)p);
	}
	int64_t dense[MOE_MAX_LAYERS];
	uint64_t n = 0;
	for (uint64_t l = 0; l < hp->n_layers && l < MOE_MAX_LAYERS; l++)
		if (hp->mlp_only[l])
			dense[n++] = (int64_t)l;
	meta_put_i64_array(w, "hparams.mlp_only_layers", dense, n);
	n = 0;
	for (uint64_t l = 0; l < hp->n_layers && l < MOE_MAX_LAYERS; l++)
		if (hp->sliding[l])
			dense[n++] = (int64_t)l;
	meta_put_i64_array(w, "hparams.sliding_layers", dense, n);
	n = 0;
	for (uint64_t l = 0; l < hp->n_layers && l < MOE_MAX_LAYERS; l++)
		if (hp->linear[l])
			dense[n++] = (int64_t)l;
	meta_put_i64_array(w, "hparams.linear_layers", dense, n);
	return w->err;
}

/* Every tensor and expert of the pack has the shape the hyperparameters imply, so
 * that nothing computed from them reads past a weight. */
static int check_shapes(const moe_pack *pack, const struct moe_hparams *hp)
{
	const char *path = moe_pack_path(pack);
	const size_t n = moe_arch_dense_tensors(hp, NULL, 0);
	struct moe_tensor_spec *spec = malloc(n * sizeof *spec);
	if (!spec)
		return moe_fail(MOE_ENOMEM, "%s: out of memory", path);
	moe_arch_dense_tensors(hp, spec, n);
	int rc = 0;
	for (size_t i = 0; i < n && !rc; i++) {
		const struct moe_tensor_spec *sp = &spec[i];
		moe_tensor t;
		if (moe_pack_tensor(pack, sp->name, &t)) {
			if (!sp->optional)
				rc = moe_fail(MOE_EFORMAT, "%s: no tensor %s, which the hyperparameters imply", path, sp->name);
			continue;
		}
		const int is_2d = sp->n_dims == 2;
		if (t.n_dims != sp->n_dims || t.dims[0] != sp->dims[0] || (is_2d && t.dims[1] != sp->dims[1]))
			rc = moe_fail(MOE_EFORMAT, "%s: tensor %s is [%llu, %llu]; the hyperparameters imply [%llu, %llu]", path,
				      sp->name, (unsigned long long)t.dims[0], (unsigned long long)(t.n_dims == 2 ? t.dims[1] : 1),
				      (unsigned long long)sp->dims[0], (unsigned long long)(is_2d ? sp->dims[1] : 1));
		else if ((sp->kind == MOE_KIND_NORM || sp->kind == MOE_KIND_ROUTER || !is_2d || moe_tensor_is_bias(sp->name)) &&
			 t.type != MOE_TYPE_F32)
			rc = moe_fail(MOE_EFORMAT, "%s: tensor %s is %s; norms, routers, biases and vectors are f32", path,
				      sp->name, moe_type_name(t.type));
	}
	free(spec);
	if (rc)
		return rc;
	/* the expert table: exactly the experts of the MoE layers, each of the implied shape */
	uint64_t moe_layers = 0, first = 0;
	for (uint64_t l = hp->n_layers; l-- > 0;)
		if (moe_layer_is_moe(hp, l))
			moe_layers++, first = l;
	const size_t count = moe_pack_expert_count(pack);
	if (count != moe_layers * hp->n_experts)
		return moe_fail(MOE_EFORMAT, "%s: %zu experts in the expert table; the hyperparameters imply %llu "
				"(%llu MoE layers of %llu)", path, count, (unsigned long long)(moe_layers * hp->n_experts),
				(unsigned long long)moe_layers, (unsigned long long)hp->n_experts);
	for (size_t i = 0; i < count; i++) { /* sorted and unique (the reader checks): so each one once */
		moe_expert_info e;
		moe_pack_expert_at(pack, i, &e);
		if (e.layer >= hp->n_layers || !moe_layer_is_moe(hp, e.layer) || e.expert >= hp->n_experts)
			return moe_fail(MOE_EFORMAT, "%s: expert table entry %zu is layer %u expert %u, not an expert of "
					"this model", path, i, e.layer, e.expert);
	}
	if (count) {
		moe_expert_layout lay;
		struct moe_tensor_spec ex[3];
		moe_pack_expert_layout(pack, &lay);
		moe_arch_expert_tensors(hp, first, 0, ex);
		for (int m = 0; m < 3; m++)
			if (lay.rows[m] != ex[m].dims[0] || lay.cols[m] != ex[m].dims[1])
				return moe_fail(MOE_EFORMAT, "%s: expert matrix %d (%s) is [%llu, %llu]; the hyperparameters "
						"imply [%llu, %llu]", path, m, m == 0 ? "gate" : m == 1 ? "up" : "down",
						(unsigned long long)lay.rows[m], (unsigned long long)lay.cols[m],
						(unsigned long long)ex[m].dims[0], (unsigned long long)ex[m].dims[1]);
	}
	return 0;
}

int moe_hparams_from_pack(const moe_pack *pack, struct moe_hparams *hp)
{
	memset(hp, 0, sizeof *hp);
	const void *name;
	uint64_t len;
	int rc = moe_pack_meta_bytes(pack, "general.architecture", &name, &len);
	if (rc)
		return rc;
	hp->arch = moe_arch_from_name(name);
	if (hp->arch < 0)
		return moe_fail(MOE_EUNSUPPORTED, "pack architecture '%s' is not supported by this build", (const char *)name);
	char key[96];
	for (size_t i = 0; i < sizeof hp_fields / sizeof hp_fields[0]; i++) {
		const struct hp_field *f = &hp_fields[i];
		char *p = (char *)hp + f->off;
		snprintf(key, sizeof key, "hparams.%s", f->key);
		rc = f->type == HP_U64 ? moe_pack_meta_u64(pack, key, (uint64_t *)p)
				       : moe_pack_meta_f64(pack, key, (double *)p);
		if (rc == MOE_ENOTFOUND && !(f->archs & (1u << hp->arch)))
			rc = 0; /* a pack need not store what its architecture does not use (0) */
		if (rc)
			return rc;
	}
	static const struct { const char *key; size_t off; } lists[] = {
		{"hparams.mlp_only_layers", offsetof(struct moe_hparams, mlp_only)},
		{"hparams.sliding_layers", offsetof(struct moe_hparams, sliding)},
		{"hparams.linear_layers", offsetof(struct moe_hparams, linear)},
	};
	for (size_t k = 0; k < sizeof lists / sizeof lists[0]; k++) {
		const int64_t *ls;
		uint64_t n;
		rc = moe_pack_meta_i64_array(pack, lists[k].key, &ls, &n);
		if (rc == MOE_ENOTFOUND && k > 0)
			continue; /* written since sliding windows (linear layers) came: absent in older packs */
		if (rc)
			return rc;
		for (uint64_t i = 0; i < n; i++) {
			int64_t l;
			memcpy(&l, &ls[i], 8); /* may be unaligned in the mapping */
			if (l < 0 || l >= MOE_MAX_LAYERS)
				return moe_fail(MOE_EFORMAT, "%s: layer %lld out of range", lists[k].key, (long long)l);
			((uint8_t *)hp + lists[k].off)[l] = 1;
		}
	}
	if ((rc = moe_hparams_check(hp)))
		return rc;
	return check_shapes(pack, hp);
}

/* ---- tensor lists ---- */

struct spec_list {
	struct moe_tensor_spec *out;
	size_t n, max;
};

static void add(struct spec_list *sl, int kind, int optional, uint64_t rows, uint64_t cols,
		const char *name, const char *hf_name)
{
	if (sl->n < sl->max) {
		struct moe_tensor_spec *s = &sl->out[sl->n];
		memset(s, 0, sizeof *s);
		snprintf(s->name, sizeof s->name, "%s", name);
		snprintf(s->hf_name, sizeof s->hf_name, "%s", hf_name);
		s->kind = kind;
		s->optional = optional;
		s->n_dims = cols ? 2 : 1;
		s->dims[0] = rows;
		s->dims[1] = cols;
	}
	sl->n++;
}

/* A per-layer tensor: canonical blk.L.<name>, HF model.layers.L.<hf> */
static void add_layer(struct spec_list *sl, uint64_t l, int kind, uint64_t rows, uint64_t cols,
		      const char *name, const char *hf)
{
	char cn[64], hn[96];
	snprintf(cn, sizeof cn, "blk.%llu.%s", (unsigned long long)l, name);
	snprintf(hn, sizeof hn, "model.layers.%llu.%s", (unsigned long long)l, hf);
	add(sl, kind, 0, rows, cols, cn, hn);
}

size_t moe_arch_dense_tensors(const struct moe_hparams *hp, struct moe_tensor_spec *out, size_t max)
{
	struct spec_list sl = {out, 0, max};
	const uint64_t H = hp->hidden, V = hp->vocab;
	add(&sl, MOE_KIND_EMBED, 0, V, H, "token_embd", "model.embed_tokens.weight");
	for (uint64_t l = 0; l < hp->n_layers; l++) {
		add_layer(&sl, l, MOE_KIND_NORM, H, 0, "attn_norm", "input_layernorm.weight");
		if (hp->arch == MOE_ARCH_DEEPSEEK_V3) {
			const uint64_t nh = hp->n_heads, qk = hp->qk_nope_dim + hp->qk_rope_dim;
			if (hp->q_lora_rank) {
				add_layer(&sl, l, MOE_KIND_ATTN, hp->q_lora_rank, H, "attn_q_a", "self_attn.q_a_proj.weight");
				add_layer(&sl, l, MOE_KIND_NORM, hp->q_lora_rank, 0, "attn_q_a_norm", "self_attn.q_a_layernorm.weight");
				add_layer(&sl, l, MOE_KIND_ATTN, nh * qk, hp->q_lora_rank, "attn_q_b", "self_attn.q_b_proj.weight");
			} else {
				add_layer(&sl, l, MOE_KIND_ATTN, nh * qk, H, "attn_q", "self_attn.q_proj.weight");
			}
			add_layer(&sl, l, MOE_KIND_ATTN, hp->kv_lora_rank + hp->qk_rope_dim, H, "attn_kv_a_mqa",
				  "self_attn.kv_a_proj_with_mqa.weight");
			add_layer(&sl, l, MOE_KIND_NORM, hp->kv_lora_rank, 0, "attn_kv_a_norm", "self_attn.kv_a_layernorm.weight");
			add_layer(&sl, l, MOE_KIND_ATTN, nh * (hp->qk_nope_dim + hp->v_head_dim), hp->kv_lora_rank,
				  "attn_kv_b", "self_attn.kv_b_proj.weight");
			add_layer(&sl, l, MOE_KIND_ATTN, H, nh * hp->v_head_dim, "attn_output", "self_attn.o_proj.weight");
		} else if (hp->linear[l]) { /* Gated DeltaNet: Qwen3.5's names (Qwen3-Next's fused ones are views) */
			const uint64_t nv = hp->lin_v_heads, vd = nv * hp->lin_v_dim;
			add_layer(&sl, l, MOE_KIND_ATTN, moe_lin_conv_dim(hp), H, "attn_qkv", "linear_attn.in_proj_qkv.weight");
			add_layer(&sl, l, MOE_KIND_ATTN, vd, H, "attn_gate", "linear_attn.in_proj_z.weight");
			add_layer(&sl, l, MOE_KIND_ATTN, nv, H, "ssm_beta", "linear_attn.in_proj_b.weight");
			add_layer(&sl, l, MOE_KIND_ATTN, nv, H, "ssm_alpha", "linear_attn.in_proj_a.weight");
			/* small and exact: f32 as the norms (ssm_a is -exp(A_log), as llama.cpp stores it) */
			add_layer(&sl, l, MOE_KIND_NORM, moe_lin_conv_dim(hp), hp->lin_conv, "ssm_conv1d",
				  "linear_attn.conv1d.weight");
			add_layer(&sl, l, MOE_KIND_NORM, nv, 0, "ssm_dt.bias", "linear_attn.dt_bias");
			add_layer(&sl, l, MOE_KIND_NORM, nv, 0, "ssm_a", "linear_attn.A_log");
			add_layer(&sl, l, MOE_KIND_NORM, hp->lin_v_dim, 0, "ssm_norm", "linear_attn.norm.weight");
			add_layer(&sl, l, MOE_KIND_ATTN, H, vd, "ssm_out", "linear_attn.out_proj.weight");
		} else {
			const int gated = hp->arch == MOE_ARCH_QWEN3_NEXT; /* q_proj: each head's query, then its gate */
			const uint64_t q = hp->n_heads * hp->head_dim, kv = hp->n_kv_heads * hp->head_dim;
			add_layer(&sl, l, MOE_KIND_ATTN, gated ? 2 * q : q, H, "attn_q", "self_attn.q_proj.weight");
			add_layer(&sl, l, MOE_KIND_ATTN, kv, H, "attn_k", "self_attn.k_proj.weight");
			add_layer(&sl, l, MOE_KIND_ATTN, kv, H, "attn_v", "self_attn.v_proj.weight");
			add_layer(&sl, l, MOE_KIND_ATTN, H, q, "attn_output", "self_attn.o_proj.weight");
			if (hp->attn_bias) { /* vectors, so kept f32 */
				add_layer(&sl, l, MOE_KIND_ATTN, q, 0, "attn_q.bias", "self_attn.q_proj.bias");
				add_layer(&sl, l, MOE_KIND_ATTN, kv, 0, "attn_k.bias", "self_attn.k_proj.bias");
				add_layer(&sl, l, MOE_KIND_ATTN, kv, 0, "attn_v.bias", "self_attn.v_proj.bias");
			}
			if (hp->arch == MOE_ARCH_GPT_OSS) { /* o_proj's bias; a sink logit per head */
				add_layer(&sl, l, MOE_KIND_ATTN, H, 0, "attn_output.bias", "self_attn.o_proj.bias");
				add_layer(&sl, l, MOE_KIND_ATTN, hp->n_heads, 0, "attn_sinks", "self_attn.sinks");
			}
			if (hp->arch == MOE_ARCH_QWEN3_MOE || hp->arch == MOE_ARCH_QWEN3_NEXT || hp->qk_norm) {
				add_layer(&sl, l, MOE_KIND_NORM, hp->head_dim, 0, "attn_q_norm", "self_attn.q_norm.weight");
				add_layer(&sl, l, MOE_KIND_NORM, hp->head_dim, 0, "attn_k_norm", "self_attn.k_norm.weight");
			}
		}
		add_layer(&sl, l, MOE_KIND_NORM, H, 0, "ffn_norm", "post_attention_layernorm.weight");
		if (!moe_layer_is_moe(hp, l)) {
			add_layer(&sl, l, MOE_KIND_FFN, hp->dense_ff, H, "ffn_gate", "mlp.gate_proj.weight");
			add_layer(&sl, l, MOE_KIND_FFN, hp->dense_ff, H, "ffn_up", "mlp.up_proj.weight");
			add_layer(&sl, l, MOE_KIND_FFN, H, hp->dense_ff, "ffn_down", "mlp.down_proj.weight");
			continue;
		}
		const char *router = hp->arch == MOE_ARCH_MIXTRAL ? "block_sparse_moe.gate.weight"
				   : hp->arch == MOE_ARCH_GPT_OSS ? "mlp.router.weight" : "mlp.gate.weight";
		add_layer(&sl, l, MOE_KIND_ROUTER, hp->n_experts, H, "ffn_gate_inp", router);
		if (hp->arch == MOE_ARCH_GPT_OSS) { /* the router's bias; each expert's biases, resident */
			const uint64_t E = hp->n_experts, ff = hp->expert_ff;
			add_layer(&sl, l, MOE_KIND_ROUTER, E, 0, "ffn_gate_inp.bias", "mlp.router.bias");
			add_layer(&sl, l, MOE_KIND_FFN, E, ff, "ffn_gate_exps.bias", "mlp.experts.gate_proj_bias");
			add_layer(&sl, l, MOE_KIND_FFN, E, ff, "ffn_up_exps.bias", "mlp.experts.up_proj_bias");
			add_layer(&sl, l, MOE_KIND_FFN, E, H, "ffn_down_exps.bias", "mlp.experts.down_proj_bias");
		}
		if (hp->arch == MOE_ARCH_QWEN3_NEXT) { /* the shared expert and its gate's weights */
			const uint64_t sf = hp->shared_ff;
			add_layer(&sl, l, MOE_KIND_FFN, sf, H, "ffn_gate_shexp", "mlp.shared_expert.gate_proj.weight");
			add_layer(&sl, l, MOE_KIND_FFN, sf, H, "ffn_up_shexp", "mlp.shared_expert.up_proj.weight");
			add_layer(&sl, l, MOE_KIND_FFN, H, sf, "ffn_down_shexp", "mlp.shared_expert.down_proj.weight");
			add_layer(&sl, l, MOE_KIND_ROUTER, H, 0, "ffn_gate_inp_shexp", "mlp.shared_expert_gate.weight");
		}
		if (moe_arch_sigmoid_routing(hp)) {
			add_layer(&sl, l, MOE_KIND_ROUTER, hp->n_experts, 0, "exp_probs_b", "mlp.gate.e_score_correction_bias");
			if (hp->n_shared) {
				const uint64_t sf = hp->n_shared * hp->expert_ff;
				add_layer(&sl, l, MOE_KIND_FFN, sf, H, "ffn_gate_shexp", "mlp.shared_experts.gate_proj.weight");
				add_layer(&sl, l, MOE_KIND_FFN, sf, H, "ffn_up_shexp", "mlp.shared_experts.up_proj.weight");
				add_layer(&sl, l, MOE_KIND_FFN, H, sf, "ffn_down_shexp", "mlp.shared_experts.down_proj.weight");
			}
		}
	}
	add(&sl, MOE_KIND_NORM, 0, H, 0, "output_norm", "model.norm.weight");
	add(&sl, MOE_KIND_OUTPUT, hp->tie_embeddings != 0, V, H, "output", "lm_head.weight");
	return sl.n;
}

void moe_arch_expert_tensors(const struct moe_hparams *hp, uint64_t l, uint64_t e, struct moe_tensor_spec out[3])
{
	static const char *const canon[3] = {"ffn_gate", "ffn_up", "ffn_down"};
	static const char *const hf_mixtral[3] = {"w1", "w3", "w2"};
	static const char *const hf_other[3] = {"gate_proj", "up_proj", "down_proj"};
	for (int m = 0; m < 3; m++) {
		struct moe_tensor_spec *s = &out[m];
		memset(s, 0, sizeof *s);
		snprintf(s->name, sizeof s->name, "blk.%llu.%s.%llu", (unsigned long long)l, canon[m], (unsigned long long)e);
		if (hp->arch == MOE_ARCH_MIXTRAL)
			snprintf(s->hf_name, sizeof s->hf_name, "model.layers.%llu.block_sparse_moe.experts.%llu.%s.weight",
				 (unsigned long long)l, (unsigned long long)e, hf_mixtral[m]);
		else
			snprintf(s->hf_name, sizeof s->hf_name, "model.layers.%llu.mlp.experts.%llu.%s.weight",
				 (unsigned long long)l, (unsigned long long)e, hf_other[m]);
		s->kind = MOE_KIND_EXPERT;
		s->n_dims = 2;
		s->dims[0] = m == 2 ? hp->hidden : hp->expert_ff;
		s->dims[1] = m == 2 ? hp->expert_ff : hp->hidden;
	}
}

int moe_tensor_is_bias(const char *name)
{
	const size_t n = strlen(name);
	return n > 5 && strcmp(name + n - 5, ".bias") == 0;
}

int moe_tensor_kind(const char *name)
{
	const char *base = name;
	if (strncmp(name, "blk.", 4) == 0) {
		const char *dot = strchr(name + 4, '.');
		base = dot ? dot + 1 : name;
	}
	size_t n = strlen(base);
	if (strcmp(base, "token_embd") == 0)
		return MOE_KIND_EMBED;
	if (strcmp(base, "output") == 0)
		return MOE_KIND_OUTPUT;
	if (n >= 5 && strcmp(base + n - 5, "_norm") == 0)
		return MOE_KIND_NORM;
	if (strcmp(base, "ffn_gate_inp") == 0 || strcmp(base, "exp_probs_b") == 0 || strcmp(base, "ffn_gate_inp_shexp") == 0)
		return MOE_KIND_ROUTER;
	if (strcmp(base, "ssm_conv1d") == 0 || strcmp(base, "ssm_a") == 0 || strcmp(base, "ssm_dt.bias") == 0)
		return MOE_KIND_NORM;
	if (strncmp(base, "ssm_", 4) == 0)
		return MOE_KIND_ATTN;
	if (strncmp(base, "attn_", 5) == 0)
		return MOE_KIND_ATTN;
	return MOE_KIND_FFN;
}
