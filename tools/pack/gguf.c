/* gguf.c - GGUF v2/v3 files (llama.cpp): importer, and the exporter moe-pack synth uses. */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/error.h"
#include "common/fileio.h"
#include "common/util.h"
#include "pack.h"
#include "quant/quant.h"
#include "source.h"
#include "text/tokenizer.h"

enum gguf_vtype {
	GV_U8, GV_I8, GV_U16, GV_I16, GV_U32, GV_I32, GV_F32, GV_BOOL, GV_STRING, GV_ARRAY, GV_U64, GV_I64, GV_F64,
};
enum { GT_F32 = 0, GT_F16 = 1, GT_Q4_0 = 2, GT_Q8_0 = 8, GT_BF16 = 30 };

static const char *ggml_type_name(uint32_t t)
{
	static const char *const names[] = {
		"F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K",
		"Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S",
		"IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8",
		"TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",
	};
	return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

/* ---- reading: a bounds-checked cursor over the mapped header ---- */

struct cur {
	const uint8_t *p;
	uint64_t pos, size;
	const char *path;
	int err;
};

static int need(struct cur *c, uint64_t n)
{
	if (c->err)
		return 0;
	if (n > c->size - c->pos) {
		c->err = moe_fail(MOE_EFORMAT, "%s: truncated header (needs %llu bytes at offset %llu, file has %llu)",
				  c->path, (unsigned long long)n, (unsigned long long)c->pos, (unsigned long long)c->size);
		return 0;
	}
	return 1;
}

#define GET(T)                                              \
	static T get_##T(struct cur *c)                     \
	{                                                   \
		T v = 0;                                    \
		if (need(c, sizeof v)) {                    \
			memcpy(&v, c->p + c->pos, sizeof v); \
			c->pos += sizeof v;                 \
		}                                           \
		return v;                                   \
	}
GET(uint32_t)
GET(uint64_t)
#undef GET

/* A string as (pointer into the map, length). */
static const char *get_str(struct cur *c, uint64_t *len)
{
	*len = get_uint64_t(c);
	if (!need(c, *len))
		return NULL;
	const char *s = (const char *)c->p + c->pos;
	c->pos += *len;
	return s;
}

static uint64_t vtype_size(uint32_t t)
{
	static const uint8_t sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
	return t < sizeof sz ? sz[t] : 0;
}

/* A scalar value read as double/u64, or a string; arrays are skipped (count kept). */
struct kv {
	char key[128];
	uint32_t type;
	double num;
	const char *str;
	uint64_t str_len, arr_len;
	uint64_t arr_pos; /* an array's first element: offset in the file */
	uint32_t arr_type;
};

static void skip_value(struct cur *c, uint32_t type, struct kv *kv, int depth)
{
	if (c->err)
		return;
	if (type == GV_STRING) {
		uint64_t len;
		const char *s = get_str(c, &len);
		if (kv) {
			kv->str = s;
			kv->str_len = len;
		}
		return;
	}
	if (type == GV_ARRAY) {
		uint32_t et = get_uint32_t(c);
		uint64_t n = get_uint64_t(c);
		if (kv) {
			kv->arr_type = et;
			kv->arr_len = n;
			kv->arr_pos = c->pos;
		}
		if (depth > 2) {
			c->err = moe_fail(MOE_EFORMAT, "%s: nested arrays too deep at offset %llu", c->path,
					  (unsigned long long)c->pos);
			return;
		}
		if (et != GV_STRING && et != GV_ARRAY) {
			uint64_t es = vtype_size(et);
			if (!es || n > (c->size - c->pos) / es) {
				if (!c->err)
					c->err = moe_fail(MOE_EFORMAT, "%s: bad array (type %u, %llu elements) at offset %llu",
							  c->path, et, (unsigned long long)n, (unsigned long long)c->pos);
				return;
			}
			c->pos += n * es;
			return;
		}
		for (uint64_t i = 0; i < n && !c->err; i++)
			skip_value(c, et, NULL, depth + 1);
		return;
	}
	uint64_t n = vtype_size(type);
	if (!n) {
		c->err = moe_fail(MOE_EFORMAT, "%s: unknown value type %u at offset %llu", c->path, type,
				  (unsigned long long)c->pos);
		return;
	}
	if (!need(c, n))
		return;
	if (kv) {
		const uint8_t *p = c->p + c->pos;
		union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f32;
			uint64_t u64; int64_t i64; double f64; } u;
		memcpy(&u, p, n);
		switch (type) {
		case GV_U8: case GV_BOOL: kv->num = u.u8; break;
		case GV_I8: kv->num = u.i8; break;
		case GV_U16: kv->num = u.u16; break;
		case GV_I16: kv->num = u.i16; break;
		case GV_U32: kv->num = u.u32; break;
		case GV_I32: kv->num = u.i32; break;
		case GV_F32: kv->num = u.f32; break;
		case GV_U64: kv->num = (double)u.u64; break;
		case GV_I64: kv->num = (double)u.i64; break;
		case GV_F64: kv->num = u.f64; break;
		}
	}
	c->pos += n;
}

struct gguf_kvs {
	struct kv *v;
	size_t n;
	char arch[32];
	const struct kv *bad; /* the first count that is not one (negative, fractional, huge, NaN) */
};

static const struct kv *find_kv(const struct gguf_kvs *k, const char *key)
{
	for (size_t i = 0; i < k->n; i++)
		if (strcmp(k->v[i].key, key) == 0)
			return &k->v[i];
	return NULL;
}

/* "<arch>.<suffix>" as a count; absent leaves *out unchanged. Anything but a whole
 * number in 0..2^53 is noted in k->bad (a cast would be undefined behaviour). */
static void arch_u64(struct gguf_kvs *k, const char *suffix, uint64_t *out)
{
	char key[128];
	snprintf(key, sizeof key, "%s.%s", k->arch, suffix);
	const struct kv *v = find_kv(k, key);
	if (!v || v->type == GV_STRING || v->type == GV_ARRAY)
		return;
	if (v->num >= 0 && v->num <= 0x1p53 && v->num == floor(v->num))
		*out = (uint64_t)v->num;
	else if (!k->bad)
		k->bad = v;
}

static void arch_f64(const struct gguf_kvs *k, const char *suffix, double *out)
{
	char key[128];
	snprintf(key, sizeof key, "%s.%s", k->arch, suffix);
	const struct kv *v = find_kv(k, key);
	if (v && v->type != GV_STRING && v->type != GV_ARRAY)
		*out = v->num;
}

/* GGUF metadata -> hyperparameters. */
static int map_hparams(struct moe_source *src, struct gguf_kvs *k)
{
	struct moe_hparams *hp = &src->hp;
	memset(hp, 0, sizeof *hp);
	if (strcmp(k->arch, "llama") == 0 || strcmp(k->arch, "mixtral") == 0)
		hp->arch = MOE_ARCH_MIXTRAL;
	else if (strcmp(k->arch, "qwen3moe") == 0)
		hp->arch = MOE_ARCH_QWEN3_MOE;
	else if (strcmp(k->arch, "deepseek2") == 0)
		hp->arch = MOE_ARCH_DEEPSEEK_V3;
	else if (strcmp(k->arch, "glm4moe") == 0)
		hp->arch = MOE_ARCH_GLM4_MOE;
	else if (strcmp(k->arch, "gpt-oss") == 0)
		hp->arch = MOE_ARCH_GPT_OSS;
	else if (strcmp(k->arch, "qwen3next") == 0 || strcmp(k->arch, "qwen35moe") == 0)
		hp->arch = MOE_ARCH_QWEN3_NEXT;
	else
		return moe_fail(MOE_EUNSUPPORTED,
				"%s: architecture \"%s\" is not supported (llama/Mixtral, qwen3moe, deepseek2, glm4moe, gpt-oss, "
				"qwen3next, qwen35moe are)", src->path, k->arch);
	uint64_t ff = 0, key_len = 0, val_len = 0, rope_dim = 0, gating = 0;
	hp->rope_theta = 10000.0;
	hp->max_pos = 4096;
	arch_u64(k, "block_count", &hp->n_layers);
	arch_u64(k, "embedding_length", &hp->hidden);
	arch_u64(k, "attention.head_count", &hp->n_heads);
	arch_u64(k, "attention.head_count_kv", &hp->n_kv_heads);
	arch_u64(k, "attention.key_length", &key_len);
	arch_u64(k, "attention.value_length", &val_len);
	arch_u64(k, "rope.dimension_count", &rope_dim);
	arch_u64(k, "vocab_size", &hp->vocab);
	arch_u64(k, "context_length", &hp->max_pos);
	arch_u64(k, "expert_count", &hp->n_experts);
	arch_u64(k, "expert_used_count", &hp->n_experts_used);
	arch_u64(k, "feed_forward_length", &ff);
	arch_u64(k, "expert_feed_forward_length", &hp->expert_ff);
	arch_f64(k, "rope.freq_base", &hp->rope_theta);
	arch_f64(k, "attention.layer_norm_rms_epsilon", &hp->rms_eps);
	if (k->bad)
		return moe_fail(MOE_EFORMAT, "%s: %s = %g is not a count", src->path, k->bad->key, k->bad->num);
	if (hp->n_experts == 0)
		return moe_fail(MOE_EUNSUPPORTED, "%s: %s model without experts (%s.expert_count): not a Mixture-of-Experts model",
				src->path, k->arch, k->arch);
	switch (hp->arch) {
	case MOE_ARCH_MIXTRAL:
		hp->expert_ff = ff;
		hp->norm_topk_prob = 1;
		if (!hp->n_kv_heads)
			hp->n_kv_heads = hp->n_heads;
		hp->head_dim = key_len ? key_len : rope_dim ? rope_dim : hp->n_heads ? hp->hidden / hp->n_heads : 0;
		break;
	case MOE_ARCH_QWEN3_MOE:
		/* llama.cpp treats every qwen3moe layer as MoE */
		hp->sparse_step = 1;
		hp->dense_ff = ff;
		hp->norm_topk_prob = 1;
		hp->head_dim = key_len;
		if (!hp->n_kv_heads)
			hp->n_kv_heads = hp->n_heads;
		break;
	case MOE_ARCH_DEEPSEEK_V3:
		hp->dense_ff = ff;
		arch_u64(k, "leading_dense_block_count", &hp->first_dense);
		arch_u64(k, "expert_shared_count", &hp->n_shared);
		arch_u64(k, "expert_group_count", &hp->n_group);
		arch_u64(k, "expert_group_used_count", &hp->topk_group);
		arch_u64(k, "attention.q_lora_rank", &hp->q_lora_rank);
		arch_u64(k, "attention.kv_lora_rank", &hp->kv_lora_rank);
		arch_u64(k, "expert_weights_norm", &hp->norm_topk_prob);
		arch_u64(k, "expert_gating_func", &gating);
		hp->routed_scale = 1.0;
		arch_f64(k, "expert_weights_scale", &hp->routed_scale);
		arch_f64(k, "rope.scaling.factor", &hp->rope_factor);
		arch_f64(k, "rope.scaling.original_context_length", &hp->rope_orig_max);
		/* llama.cpp's current converter stores MLA as MQA: key/value lengths are the latent's,
		 * the heads' own in the *_mla keys */
		arch_u64(k, "attention.key_length_mla", &key_len);
		arch_u64(k, "attention.value_length_mla", &val_len);
		hp->qk_rope_dim = rope_dim;
		hp->qk_nope_dim = key_len > rope_dim ? key_len - rope_dim : 0;
		hp->v_head_dim = val_len;
		hp->scoring_sigmoid = gating == 2; /* llama.cpp: 1 softmax, 2 sigmoid */
		if (!hp->n_group) {
			hp->n_group = 1;
			hp->topk_group = 1;
		}
		if (hp->rope_factor > 0) { /* YaRN, as llama.cpp's converter writes it */
			double ylm = 0;
			arch_f64(k, "rope.scaling.yarn_log_multiplier", &ylm);
			hp->rope_beta_fast = 32;
			hp->rope_beta_slow = 1;
			hp->rope_mscale = 1.0;
			hp->rope_mscale_all = ylm > 0 ? ylm / 0.1 : 1.0;
		}
		break;
	case MOE_ARCH_GLM4_MOE: /* llama.cpp's converter: Glm4MoeModel */
		hp->dense_ff = ff;
		hp->head_dim = key_len;
		hp->rope_dims = rope_dim; /* head_dim x partial_rotary_factor */
		if (!hp->n_kv_heads)
			hp->n_kv_heads = hp->n_heads;
		arch_u64(k, "leading_dense_block_count", &hp->first_dense);
		arch_u64(k, "expert_shared_count", &hp->n_shared);
		arch_u64(k, "expert_group_count", &hp->n_group);
		arch_u64(k, "expert_group_used_count", &hp->topk_group);
		arch_u64(k, "expert_weights_norm", &hp->norm_topk_prob);
		hp->routed_scale = 1.0;
		arch_f64(k, "expert_weights_scale", &hp->routed_scale);
		hp->scoring_sigmoid = 1;
		if (!hp->n_group) {
			hp->n_group = 1;
			hp->topk_group = 1;
		}
		/* attn_bias and qk_norm: from the tensors (glm4_tensor_flags) */
		break;
	case MOE_ARCH_QWEN3_NEXT: { /* llama.cpp's converter: Qwen3NextModel, Qwen3_5MoeTextModel */
		uint64_t inner = 0, every = 4;
		hp->head_dim = key_len;
		hp->rope_dims = rope_dim; /* head_dim x partial_rotary_factor */
		if (!hp->n_kv_heads)
			hp->n_kv_heads = hp->n_heads;
		hp->sparse_step = 1;
		hp->dense_ff = ff;
		hp->norm_topk_prob = 1;
		hp->qk_norm = 1;
		arch_u64(k, "expert_shared_feed_forward_length", &hp->shared_ff);
		arch_u64(k, "ssm.conv_kernel", &hp->lin_conv);
		arch_u64(k, "ssm.state_size", &hp->lin_k_dim);
		arch_u64(k, "ssm.group_count", &hp->lin_k_heads);
		arch_u64(k, "ssm.time_step_rank", &hp->lin_v_heads);
		arch_u64(k, "ssm.inner_size", &inner);
		hp->lin_v_dim = hp->lin_v_heads ? inner / hp->lin_v_heads : 0;
		/* qwen35moe's converter puts the value heads in tiled order (ggml_repeat's broadcast) */
		hp->lin_v_tiled = strcmp(k->arch, "qwen35moe") == 0;
		/* which layers are linear: attention.recurrent_layers (read by the caller), else the interval */
		arch_u64(k, "full_attention_interval", &every);
		for (uint64_t l = 0; every && l < MOE_MAX_LAYERS; l++)
			hp->linear[l] = (l + 1) % every != 0;
		break;
	}
	case MOE_ARCH_GPT_OSS: /* llama.cpp's converter: GptOssModel */
		hp->head_dim = key_len;
		hp->attn_bias = 1;
		if (!hp->expert_ff)
			hp->expert_ff = ff;
		arch_u64(k, "attention.sliding_window", &hp->sliding_window);
		for (uint64_t l = 0; l < MOE_MAX_LAYERS; l += 2) /* llama.cpp's pattern 2: the even layers slide */
			hp->sliding[l] = 1;
		arch_f64(k, "rope.scaling.factor", &hp->rope_factor);
		arch_f64(k, "rope.scaling.original_context_length", &hp->rope_orig_max);
		hp->rope_beta_fast = 32;
		hp->rope_beta_slow = 1;
		arch_f64(k, "rope.scaling.yarn_beta_fast", &hp->rope_beta_fast);
		arch_f64(k, "rope.scaling.yarn_beta_slow", &hp->rope_beta_slow);
		hp->rope_truncate = 0; /* the model's config.json says "truncate": false */
		hp->swiglu_limit = 7.0; /* gpt-oss's, which the GGUF does not record */
		break;
	}
	/* multi-token-prediction blocks, when kept, are the last ones: not part of the model we run */
	uint64_t nextn = 0;
	arch_u64(k, "nextn_predict_layers", &nextn);
	if (nextn && nextn < hp->n_layers)
		hp->n_layers -= nextn;
	if (k->bad)
		return moe_fail(MOE_EFORMAT, "%s: %s = %g is not a count", src->path, k->bad->key, k->bad->num);
	return 0;
}

static int has_entry(const struct moe_source *src, const char *name)
{
	for (size_t i = 0; i < src->n_entries; i++)
		if (strcmp(src->entries[i].name, name) == 0)
			return 1;
	return 0;
}

/* llama.cpp's current DeepSeek layout has no attn_kv_b: one is made of each layer's
 * attn_k_b and attn_v_b, read through them (SRC_MLA_KV_B). */
static int join_mla_kv_b(struct moe_source *src)
{
	const size_t n = src->n_entries;
	for (size_t i = 0; i < n; i++) {
		const char *name = src->entries[i].name;
		const size_t len = strlen(name);
		if (len < 9 || strcmp(name + len - 9, ".attn_k_b") != 0)
			continue;
		char kv[300], vb[300];
		snprintf(kv, sizeof kv, "%.*s.attn_kv_b", (int)(len - 9), name);
		snprintf(vb, sizeof vb, "%.*s.attn_v_b", (int)(len - 9), name);
		int have = 0;
		for (size_t j = 0; j < src->n_entries && !have; j++)
			have = strcmp(src->entries[j].name, kv) == 0;
		if (have)
			continue;
		/* a 2-D tensor named so has no heads: joined into nothing the lookup accepts */
		const uint64_t heads = src->entries[i].heads, kvl = heads ? src->entries[i].rows / heads : 0;
		char *kb_name = strdup(name), *vb_name = strdup(vb);
		struct src_entry *e = kb_name && vb_name ? src_add(src, kv) : NULL;
		if (!e) {
			free(kb_name);
			free(vb_name);
			return moe_fail(MOE_ENOMEM, "out of memory");
		}
		/* rows: heads x (qk_nope + v_head); the v_head comes from v_b, checked at lookup */
		e->dtype = SRC_MLA_KV_B;
		e->block_type = -1;
		e->n_dims = 2;
		e->cols = kvl;
		e->rows = heads * (src->entries[i].cols + (src->hp.v_head_dim ? src->hp.v_head_dim : 0));
		e->kb_name = kb_name;
		e->vb_name = vb_name;
	}
	return 0;
}

/* "blk.3.attn_q.weight" -> "blk.3.attn_q", the routing bias "exp_probs_b.bias" ->
 * "exp_probs_b"; other biases keep their suffix ("blk.3.attn_q.bias") */
static void canonical_name(const char *s, size_t len, char *out, size_t cap)
{
	if (len >= 7 && memcmp(s + len - 7, ".weight", 7) == 0)
		len -= 7;
	else if (len >= 17 && memcmp(s + len - 17, ".exp_probs_b.bias", 17) == 0)
		len -= 5;
	if (len >= cap)
		len = cap - 1;
	memcpy(out, s, len);
	out[len] = '\0';
}

/* GGUF's block types that packs keep as they are, by GGUF type id */
static const struct {
	uint32_t gguf;
	int pack;
} kept_blocks[] = {
	{3, MOE_TYPE_Q4_1}, {6, MOE_TYPE_Q5_0}, {7, MOE_TYPE_Q5_1}, {10, MOE_TYPE_Q2_K}, {11, MOE_TYPE_Q3_K},
	{12, MOE_TYPE_Q4_K}, {13, MOE_TYPE_Q5_K}, {14, MOE_TYPE_Q6_K}, {20, MOE_TYPE_IQ4_NL}, {23, MOE_TYPE_IQ4_XS},
	{39, MOE_TYPE_MXFP4},
};

#define SUPPORTED_TYPES "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4"

static int add_tensor(struct moe_source *src, int file, const char *name, uint32_t type, uint32_t nd,
		      const uint64_t ne[4], uint64_t abs_off, uint64_t file_size, uint64_t head_dim)
{
	int dtype, block_type = -1;
	uint64_t bpb, per_block; /* bytes per block, weights per block */
	switch (type) {
	case GT_F32: dtype = SRC_F32; bpb = 4; per_block = 1; break;
	case GT_F16: dtype = SRC_F16; bpb = 2; per_block = 1; break;
	case GT_BF16: dtype = SRC_BF16; bpb = 2; per_block = 1; break;
	case GT_Q8_0: dtype = SRC_Q8_0; bpb = 34; per_block = 32; break;
	case GT_Q4_0: dtype = SRC_Q4_0; bpb = 18; per_block = 32; break;
	default:
		for (size_t i = 0; i < sizeof kept_blocks / sizeof kept_blocks[0]; i++)
			if (kept_blocks[i].gguf == type)
				block_type = kept_blocks[i].pack;
		if (block_type < 0)
			return moe_fail(MOE_EUNSUPPORTED, "%s: tensor %s has type %s (%u); supported: " SUPPORTED_TYPES,
					src->path, name, ggml_type_name(type), type);
		dtype = SRC_BLOCKS;
		per_block = moe_type_block(block_type);
		bpb = moe_type_row_bytes(block_type, per_block);
	}
	if (nd < 1 || nd > 3)
		return moe_fail(MOE_EUNSUPPORTED, "%s: tensor %s has %u dimensions", src->path, name, nd);
	const uint64_t cols = ne[0], rows = nd >= 2 ? ne[1] : 1, mats = nd == 3 ? ne[2] : 1;
	if (nd == 1 && per_block > 1) /* vectors (norms, biases) are read as floats */
		return moe_fail(MOE_EUNSUPPORTED, "%s: tensor %s is a vector of %s blocks", src->path, name,
				ggml_type_name(type));
	if (cols % per_block)
		return moe_fail(MOE_EFORMAT, "%s: tensor %s: %llu columns is not a multiple of the %s block", src->path, name,
				(unsigned long long)cols, ggml_type_name(type));
	if (cols == 0 || rows == 0 || mats == 0 || cols > (1ull << 32) || rows > (1ull << 32) || mats > (1ull << 16))
		return moe_fail(MOE_EFORMAT, "%s: tensor %s: bad shape", src->path, name);
	uint64_t mat_bytes, all_bytes; /* the file's size bounds them: a product that wraps cannot fit */
	if (__builtin_mul_overflow(rows, cols / per_block * bpb, &mat_bytes) ||
	    __builtin_mul_overflow(mats, mat_bytes, &all_bytes) || abs_off > file_size ||
	    all_bytes > file_size - abs_off)
		return moe_fail(MOE_EFORMAT, "%s: tensor %s: data at offset %llu (%llu bytes) runs past the end of the file",
				src->path, name, (unsigned long long)abs_off, (unsigned long long)(mats * mat_bytes));
	char base[256];
	canonical_name(name, strlen(name), base, sizeof base);
	/* glm4moe, gpt-oss and the Qwen3-Next family name the norm before the MLP after its place,
	 * the other archs after its use */
	const size_t pl = strlen(".post_attention_norm"), nl = strlen(base);
	if (src->hp.arch != MOE_ARCH_MIXTRAL && src->hp.arch != MOE_ARCH_QWEN3_MOE && src->hp.arch != MOE_ARCH_DEEPSEEK_V3 &&
	    nl > pl && strcmp(base + nl - pl, ".post_attention_norm") == 0)
		snprintf(base + nl - pl, sizeof base - (nl - pl), ".ffn_norm");
	/* stacked experts "blk.L.ffn_gate_exps" become "blk.L.ffn_gate.E", one entry per expert */
	const size_t bl = strlen(base);
	if (nd == 3 && bl > 9 && (strcmp(base + bl - 9, ".attn_k_b") == 0 || strcmp(base + bl - 9, ".attn_v_b") == 0)) {
		/* llama.cpp's MLA split of kv_b, one matrix per head: the heads stacked as rows */
		struct src_entry *e = src_add(src, base);
		if (!e)
			return moe_fail(MOE_ENOMEM, "out of memory");
		*e = (struct src_entry){.name = e->name, .dtype = dtype, .block_type = block_type, .rows = rows * mats,
					.cols = cols, .n_dims = 2, .file = file, .offset = abs_off, .heads = (uint32_t)mats};
		return 0;
	}
	char *exps = nd == 3 ? strstr(base, "_exps") : NULL;
	if (nd == 3 && (!exps || exps[5]))
		return moe_fail(MOE_EUNSUPPORTED, "%s: 3-D tensor %s is not a stacked expert tensor", src->path, name);
	if (exps)
		*exps = '\0';
	for (uint64_t m = 0; m < mats; m++) {
		char full[300];
		if (exps)
			snprintf(full, sizeof full, "%s.%llu", base, (unsigned long long)m);
		else
			snprintf(full, sizeof full, "%s", base);
		struct src_entry *e = src_add(src, full);
		if (!e)
			return moe_fail(MOE_ENOMEM, "out of memory");
		e->dtype = dtype;
		e->block_type = block_type;
		e->n_dims = nd == 1 ? 1 : 2;
		e->rows = nd == 1 ? cols : rows;
		e->cols = nd == 1 ? 1 : cols;
		e->file = file;
		e->offset = abs_off + m * mat_bytes;
		/* llama.cpp's llama converter interleaves q/k rows per head (pair-wise RoPE); undo it */
		if (head_dim && bl > 7 && (strcmp(base + bl - 7, ".attn_q") == 0 || strcmp(base + bl - 7, ".attn_k") == 0))
			e->permute_head = (uint32_t)head_dim;
	}
	return 0;
}

/* ---- the tokenizer inside: tokenizer.ggml.* compiled as the pack stores it ---- */

static const struct kv *tok_kv(const struct gguf_kvs *kvs, const char *key, uint32_t type, const char *path, int *rc)
{
	char full[128];
	snprintf(full, sizeof full, "tokenizer.ggml.%s", key);
	const struct kv *v = find_kv(kvs, full);
	if (v && v->type != type && !*rc)
		*rc = moe_fail(MOE_EFORMAT, "%s: %s has value type %u, not %u", path, full, v->type, type);
	return v && v->type == type ? v : NULL;
}

static int64_t tok_id(const struct gguf_kvs *kvs, const char *key, const char *path, int *rc)
{
	const struct kv *v = tok_kv(kvs, key, GV_U32, path, rc);
	return v ? (int64_t)v->num : -1;
}

static int tok_flag(const struct gguf_kvs *kvs, const char *key, const char *path, int *rc)
{
	const struct kv *v = tok_kv(kvs, key, GV_BOOL, path, rc);
	return v ? v->num != 0 : -1;
}

/* An array of elem_type (named what) with n elements (n 0: any count) at its place in the map. */
static const struct kv *tok_array(const struct gguf_kvs *kvs, const char *key, uint32_t elem_type, const char *what,
				  uint64_t n, const char *path, int *rc)
{
	const struct kv *v = tok_kv(kvs, key, GV_ARRAY, path, rc);
	if (!v || *rc)
		return NULL;
	if (v->arr_type != elem_type || (n && v->arr_len != n) || v->arr_len > MOE_MAX_VOCAB * 4ull) {
		if (n)
			*rc = moe_fail(MOE_EFORMAT, "%s: tokenizer.ggml.%s is not %llu %s (one per token)", path, key,
				       (unsigned long long)n, what);
		else
			*rc = moe_fail(MOE_EFORMAT, "%s: tokenizer.ggml.%s is not an array of %s", path, key, what);
		return NULL;
	}
	return v;
}

/* The strings of an array: pointers into the map (checked when the keys were read). */
static int tok_strings(const struct cur *map, const struct kv *v, const char ***str, uint32_t **len)
{
	*str = calloc(v->arr_len + 1, sizeof **str);
	*len = calloc(v->arr_len + 1, sizeof **len);
	if (!*str || !*len)
		return moe_fail(MOE_ENOMEM, "out of memory");
	struct cur c = *map;
	c.pos = v->arr_pos;
	for (uint64_t i = 0; i < v->arr_len && !c.err; i++) {
		uint64_t l;
		(*str)[i] = get_str(&c, &l);
		if (l > UINT32_MAX / 2)
			return moe_fail(MOE_EFORMAT, "%s: a token of %llu bytes", c.path, (unsigned long long)l);
		(*len)[i] = (uint32_t)l;
	}
	return c.err;
}

static void *tok_numbers(const struct cur *map, const struct kv *v)
{
	void *p = malloc(v->arr_len * 4 + 4);
	if (p)
		memcpy(p, map->p + v->arr_pos, v->arr_len * 4);
	return p;
}

/*
 * The GGUF's tokenizer, compiled into the pack's binary form now, while the keys
 * are mapped. A kind moemap does not read (another tokenizer.ggml.model or .pre)
 * leaves a note and the pack runs on ids unless --tokenizer gives one; a
 * malformed tokenizer is an error.
 */
static int import_tokenizer(struct moe_source *src, const struct gguf_kvs *kvs, const struct cur *map)
{
	const char *path = map->path;
	int rc = 0;
	const struct kv *model = tok_kv(kvs, "model", GV_STRING, path, &rc), *pre = tok_kv(kvs, "pre", GV_STRING, path, &rc);
	if (rc || !model)
		return rc;
	char model_s[32], pre_s[64];
	snprintf(model_s, sizeof model_s, "%.*s", (int)(model->str_len < 31 ? model->str_len : 31), model->str);
	if (pre)
		snprintf(pre_s, sizeof pre_s, "%.*s", (int)(pre->str_len < 63 ? pre->str_len : 63), pre->str);
	if (strcmp(model_s, "none") == 0) {
		src->no_tokenizer_ok = 1;
		return 0;
	}
	struct moe_gguf_vocab v = {.model = model_s, .pre = pre ? pre_s : NULL};
	const struct kv *tokens = tok_array(kvs, "tokens", GV_STRING, "strings", 0, path, &rc);
	const uint64_t n = tokens ? tokens->arr_len : 0;
	const struct kv *types = tok_array(kvs, "token_type", GV_I32, "int32 values", n, path, &rc);
	const struct kv *scores = tok_array(kvs, "scores", GV_F32, "float32 values", n, path, &rc);
	const struct kv *merges = tok_array(kvs, "merges", GV_STRING, "strings", 0, path, &rc);
	const struct kv *tmpl = find_kv(kvs, "tokenizer.chat_template");
	v.bos = tok_id(kvs, "bos_token_id", path, &rc);
	v.eos = tok_id(kvs, "eos_token_id", path, &rc);
	v.eot = tok_id(kvs, "eot_token_id", path, &rc);
	v.eom = tok_id(kvs, "eom_token_id", path, &rc);
	v.unk = tok_id(kvs, "unknown_token_id", path, &rc);
	v.add_bos = tok_flag(kvs, "add_bos_token", path, &rc);
	v.add_eos = tok_flag(kvs, "add_eos_token", path, &rc);
	v.add_space_prefix = tok_flag(kvs, "add_space_prefix", path, &rc);
	if (!rc && !tokens)
		rc = moe_fail(MOE_EFORMAT, "%s: tokenizer.ggml.model \"%s\" without tokenizer.ggml.tokens", path, model_s);
	if (!rc && n > MOE_MAX_VOCAB)
		rc = moe_fail(MOE_EFORMAT, "%s: %llu tokens (at most %u supported)", path, (unsigned long long)n, MOE_MAX_VOCAB);
	if (!rc && tmpl && tmpl->type != GV_STRING)
		rc = moe_fail(MOE_EFORMAT, "%s: tokenizer.chat_template is not a string", path);
	if (rc)
		return rc;
	v.n_tokens = (uint32_t)n;
	v.n_merges = merges ? (uint32_t)merges->arr_len : 0;
	const char **tok_str = NULL, **merge_str = NULL;
	uint32_t *tok_len = NULL, *merge_len = NULL;
	int32_t *type_v = types ? tok_numbers(map, types) : NULL;
	float *score_v = scores ? tok_numbers(map, scores) : NULL;
	struct moe_tokenizer *t = NULL;
	if ((types && !type_v) || (scores && !score_v))
		rc = moe_fail(MOE_ENOMEM, "out of memory");
	if (!rc)
		rc = tok_strings(map, tokens, &tok_str, &tok_len);
	if (!rc && merges)
		rc = tok_strings(map, merges, &merge_str, &merge_len);
	if (!rc) {
		v.tokens = tok_str, v.token_len = tok_len, v.types = type_v, v.scores = score_v;
		v.merges = merge_str, v.merge_len = merge_len;
		rc = moe_tokenizer_from_gguf(&v, path, &t);
	}
	if (rc == MOE_EUNSUPPORTED) {
		snprintf(src->tokenizer_note, sizeof src->tokenizer_note, "%s; the tokenizer is not imported", moe_last_error());
		rc = 0;
	} else if (!rc) {
		src->tokenizer_ids = moe_tokenizer_vocab(t);
		rc = moe_tokenizer_to_binary(t, &src->tokenizer_bin, &src->tokenizer_bin_len);
		if (!rc && tmpl && !(src->chat_template = strndup(tmpl->str, tmpl->str_len)))
			rc = moe_fail(MOE_ENOMEM, "out of memory");
	}
	moe_tokenizer_free(t);
	free(tok_str);
	free(tok_len);
	free(merge_str);
	free(merge_len);
	free(type_v);
	free(score_v);
	return rc;
}

/* What a file says about the split it belongs to (split.* keys; a whole file: part 0 of 1). */
struct split_info {
	uint64_t no, count, tensors; /* this part (0-based), parts, tensors in all parts */
	uint64_t n_tokens;           /* tokenizer.ggml.tokens' length (first part) */
};

static uint64_t kv_count(const struct gguf_kvs *kvs, const char *key, uint64_t absent)
{
	const struct kv *v = find_kv(kvs, key);
	return v && v->type != GV_STRING && v->type != GV_ARRAY && v->num >= 0 && v->num < 1e9 ? (uint64_t)v->num
		: absent;
}

/*
 * One GGUF file, whole or a part of a split: header, keys and tensor table. The
 * first (or only) file also gives the hyperparameters; the others of a split carry
 * only their split.* keys and tensors (as llama.cpp's gguf-split writes them).
 */
static int open_part(struct moe_source *src, const char *path, int first, struct split_info *si, uint64_t *n_here)
{
	int fi = src_add_file(src, path);
	if (fi < 0)
		return fi;
	struct src_file *f = &src->files[fi];
	if (f->size < 24)
		return moe_fail(MOE_EFORMAT, "%s: truncated (%llu bytes): not a GGUF file", path, (unsigned long long)f->size);
	void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
	if (map == MAP_FAILED)
		return moe_fail(MOE_EIO, "%s: mmap: %s", path, strerror(errno));
	struct cur c = {map, 0, f->size, path, 0};
	struct gguf_kvs kvs = {0};
	int rc = 0;
	if (memcmp(map, "GGUF", 4) != 0) {
		rc = moe_fail(MOE_EFORMAT, "%s: bad magic (not a GGUF file, and not a folder with config.json)", path);
		goto out;
	}
	c.pos = 4;
	uint32_t version = get_uint32_t(&c);
	if (version != 2 && version != 3) {
		rc = moe_fail(MOE_EVERSION, "%s: GGUF version %u is not supported (2 and 3 are)", path, version);
		goto out;
	}
	uint64_t n_tensors = get_uint64_t(&c), n_kv = get_uint64_t(&c);
	if (n_kv > f->size / 13 || n_tensors > f->size / 24) {
		rc = moe_fail(MOE_EFORMAT, "%s: truncated header: %llu tensors and %llu keys cannot fit in the file", path,
			      (unsigned long long)n_tensors, (unsigned long long)n_kv);
		goto out;
	}
	*n_here = n_tensors;
	kvs.v = calloc(n_kv + 1, sizeof *kvs.v);
	if (!kvs.v) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto out;
	}
	for (uint64_t i = 0; i < n_kv && !c.err; i++) {
		uint64_t klen;
		const char *key = get_str(&c, &klen);
		uint32_t type = get_uint32_t(&c);
		if (c.err)
			break;
		struct kv *kv = &kvs.v[kvs.n++];
		snprintf(kv->key, sizeof kv->key, "%.*s", (int)(klen < 127 ? klen : 127), key);
		kv->type = type;
		skip_value(&c, type, kv, 0);
	}
	if ((rc = c.err))
		goto out;
	si->no = kv_count(&kvs, "split.no", 0);
	si->count = kv_count(&kvs, "split.count", 1);
	si->tensors = kv_count(&kvs, "split.tensors.count", n_tensors);
	if (first && si->no != 0) {
		rc = moe_fail(MOE_EINVAL, "%s is part %llu of a %llu-part GGUF: give the first part (NAME-00001-of-%05llu.gguf)",
			      path, (unsigned long long)si->no + 1, (unsigned long long)si->count,
			      (unsigned long long)si->count);
		goto out;
	}
	if (first) {
		const struct kv *a = find_kv(&kvs, "general.architecture");
		if (!a || a->type != GV_STRING) {
			rc = moe_fail(MOE_ENOTFOUND, "%s: no general.architecture", path);
			goto out;
		}
		snprintf(kvs.arch, sizeof kvs.arch, "%.*s", (int)(a->str_len < 31 ? a->str_len : 31), a->str);
		if ((rc = map_hparams(src, &kvs)))
			goto out;
		char key[160];
		snprintf(key, sizeof key, "%s.attention.recurrent_layers", kvs.arch);
		const struct kv *rl = find_kv(&kvs, key); /* Qwen3-Next: a bool per layer */
		if (rl && rl->type == GV_ARRAY && rl->arr_type == GV_BOOL && src->hp.arch == MOE_ARCH_QWEN3_NEXT)
			for (uint64_t l = 0; l < MOE_MAX_LAYERS; l++)
				src->hp.linear[l] = l < rl->arr_len && ((const uint8_t *)map)[rl->arr_pos + l] != 0;
		if ((rc = import_tokenizer(src, &kvs, &c)))
			goto out;
		const struct kv *vt = find_kv(&kvs, "tokenizer.ggml.tokens");
		si->n_tokens = vt ? vt->arr_len : 0;
		snprintf(src->gguf_arch, sizeof src->gguf_arch, "%s", kvs.arch);
	}
	uint64_t alignment = kv_count(&kvs, "general.alignment", 32);
	if (alignment == 0 || (alignment & (alignment - 1))) {
		rc = moe_fail(MOE_EFORMAT, "%s: general.alignment %llu is not a power of two", path, (unsigned long long)alignment);
		goto out;
	}

	/* tensor infos; permutation applies to the llama arch only */
	const uint64_t head_dim = strcmp(src->gguf_arch, "llama") == 0 ? src->hp.head_dim : 0;
	struct tinfo { char name[256]; uint32_t nd, type; uint64_t ne[4], off; } *ti = calloc(n_tensors + 1, sizeof *ti);
	if (!ti) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto out;
	}
	for (uint64_t i = 0; i < n_tensors && !c.err; i++) {
		uint64_t nlen;
		const char *name = get_str(&c, &nlen);
		ti[i].nd = get_uint32_t(&c);
		if (c.err)
			break;
		snprintf(ti[i].name, sizeof ti[i].name, "%.*s", (int)(nlen < 255 ? nlen : 255), name);
		if (ti[i].nd > 4) {
			rc = moe_fail(MOE_EFORMAT, "%s: tensor %s has %u dimensions", path, ti[i].name, ti[i].nd);
			break;
		}
		for (uint32_t d = 0; d < ti[i].nd; d++)
			ti[i].ne[d] = get_uint64_t(&c);
		ti[i].type = get_uint32_t(&c);
		ti[i].off = get_uint64_t(&c);
	}
	if (!rc)
		rc = c.err;
	const uint64_t data0 = moe_align_up(c.pos, alignment);
	for (uint64_t i = 0; i < n_tensors && !rc; i++) {
		if (ti[i].off > f->size) {
			rc = moe_fail(MOE_EFORMAT, "%s: tensor %s: offset %llu outside the file", path, ti[i].name,
				      (unsigned long long)ti[i].off);
			break;
		}
		rc = add_tensor(src, fi, ti[i].name, ti[i].type, ti[i].nd, ti[i].ne, data0 + ti[i].off, f->size, head_dim);
		if (!rc && !src->hp.vocab && strcmp(ti[i].name, "token_embd.weight") == 0)
			src->hp.vocab = ti[i].nd == 2 ? ti[i].ne[1] : 0;
	}
	free(ti);
	f->header_xxh3 = XXH3_64bits(map, data0 < f->size ? data0 : f->size);
out:
	free(kvs.v);
	munmap(map, f->size);
	return rc;
}

/* llama.cpp's qwen3next keeps beta and alpha in one ssm_ba (per key head: its value
 * heads' b, then their a) and older files q, k, v and z in one ssm_in (per key head: q,
 * k, then its value heads' v and z): read as the separate tensors of qwen35moe */
static int qwen3next_views(struct moe_source *src)
{
	int rc = 0;
	for (uint64_t l = 0; l < src->hp.n_layers && src->hp.lin_k_heads && !rc; l++) {
		char in[64], ba[64], out[4][64];
		static const char *const names[4] = {"attn_qkv", "attn_gate", "ssm_beta", "ssm_alpha"};
		for (int k = 0; k < 4; k++)
			snprintf(out[k], sizeof out[k], "blk.%llu.%s", (unsigned long long)l, names[k]);
		snprintf(in, sizeof in, "blk.%llu.ssm_in", (unsigned long long)l);
		snprintf(ba, sizeof ba, "blk.%llu.ssm_ba", (unsigned long long)l);
		const char *const outs[4] = {out[0], out[1], out[2], out[3]};
		rc = src_add_qwen3_next_views(src, has_entry(src, in) && !has_entry(src, out[0]) ? in : NULL,
					      has_entry(src, ba) && !has_entry(src, out[2]) ? ba : NULL, outs);
	}
	return rc;
}

/* "NAME-00001-of-00004.gguf": the stem NAME, or -1 if path is not named as a split */
static int split_stem(const char *path, size_t *stem_len)
{
	const size_t n = strlen(path), tail = strlen("-00001-of-00004.gguf");
	if (n < tail)
		return -1;
	const char *t = path + n - tail;
	unsigned no, count;
	char end[8];
	if (sscanf(t, "-%5u-of-%5u%7s", &no, &count, end) != 3 || strcmp(end, ".gguf") != 0)
		return -1;
	*stem_len = n - tail;
	return 0;
}

int src_open_gguf(const char *path, struct moe_source *src)
{
	src->kind = "gguf";
	struct split_info first = {0};
	uint64_t n_seen = 0;
	int rc = open_part(src, path, 1, &first, &n_seen);
	if (!rc && first.count > 1) {
		/* a split (llama.cpp's gguf-split): the other parts sit beside the first, named by the same pattern */
		size_t stem;
		if (first.count > 999 || split_stem(path, &stem))
			return moe_fail(MOE_EFORMAT, "%s: split.count is %llu but the file is not named NAME-00001-of-%05llu.gguf",
					path, (unsigned long long)first.count, (unsigned long long)first.count);
		char *part = malloc(stem + 32);
		if (!part)
			return moe_fail(MOE_ENOMEM, "out of memory");
		for (uint64_t k = 1; k < first.count && !rc; k++) {
			snprintf(part, stem + 32, "%.*s-%05llu-of-%05llu.gguf", (int)stem, path, (unsigned long long)k + 1,
				 (unsigned long long)first.count);
			struct split_info si = {0};
			uint64_t n_here = 0;
			rc = open_part(src, part, 0, &si, &n_here);
			if (!rc && (si.no != k || si.count != first.count || si.tensors != first.tensors))
				rc = moe_fail(MOE_EFORMAT, "%s: split.no %llu, split.count %llu, split.tensors.count %llu: not part %llu "
					      "of %s's split (%llu parts, %llu tensors)", part, (unsigned long long)si.no,
					      (unsigned long long)si.count, (unsigned long long)si.tensors,
					      (unsigned long long)k, path, (unsigned long long)first.count,
					      (unsigned long long)first.tensors);
			n_seen += n_here;
		}
		free(part);
		if (!rc && n_seen != first.tensors)
			rc = moe_fail(MOE_EFORMAT, "%s: the %llu parts hold %llu tensors, split.tensors.count says %llu", path,
				      (unsigned long long)first.count, (unsigned long long)n_seen,
				      (unsigned long long)first.tensors);
	}
	if (!rc && !src->hp.vocab)
		src->hp.vocab = first.n_tokens;
	if (!rc)
		rc = join_mla_kv_b(src);
	if (!rc && src->hp.arch == MOE_ARCH_GLM4_MOE) { /* GLM-4.5 has q/k norms, GLM-4.5-Air not: as the tensors say */
		src->hp.attn_bias = has_entry(src, "blk.0.attn_q.bias");
		src->hp.qk_norm = has_entry(src, "blk.0.attn_q_norm");
	}
	if (!rc && src->hp.arch == MOE_ARCH_QWEN3_NEXT)
		rc = qwen3next_views(src);
	if (!rc && (rc = moe_hparams_check(&src->hp)))
		rc = moe_fail(rc, "%s: %s", path, moe_last_error());
	return rc;
}

/* ---- writing (moe-pack synth --format gguf) ---- */

static int ends_with(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && strcmp(s + a - b, suf) == 0;
}

struct gw {
	FILE *fp;
	uint64_t n_kv; /* key/values written so far */
};

static void w_bytes(struct gw *g, const void *p, size_t n) { fwrite(p, 1, n, g->fp); }
static void w_u32(struct gw *g, uint32_t v) { w_bytes(g, &v, 4); }
static void w_u64(struct gw *g, uint64_t v) { w_bytes(g, &v, 8); }
static void w_str(struct gw *g, const char *s)
{
	w_u64(g, strlen(s));
	w_bytes(g, s, strlen(s));
}
static void kv_u32(struct gw *g, const char *k, uint32_t v)
{
	g->n_kv++;
	w_str(g, k);
	w_u32(g, GV_U32);
	w_u32(g, v);
}
static void kv_f32(struct gw *g, const char *k, float v)
{
	g->n_kv++;
	w_str(g, k);
	w_u32(g, GV_F32);
	w_bytes(g, &v, 4);
}
static void kv_bool(struct gw *g, const char *k, int v)
{
	const uint8_t b = v != 0;
	g->n_kv++;
	w_str(g, k);
	w_u32(g, GV_BOOL);
	w_bytes(g, &b, 1);
}
/* an array of n values of type et (GV_BOOL: bytes; GV_I32: int32), from v */
static void kv_array(struct gw *g, const char *k, uint32_t et, const void *v, uint64_t n)
{
	g->n_kv++;
	w_str(g, k);
	w_u32(g, GV_ARRAY);
	w_u32(g, et);
	w_u64(g, n);
	w_bytes(g, v, n * (et == GV_BOOL ? 1 : 4));
}
static void kv_str(struct gw *g, const char *k, const char *v)
{
	g->n_kv++;
	w_str(g, k);
	w_u32(g, GV_STRING);
	w_str(g, v);
}

struct gtensor {
	char name[96];
	struct moe_tensor_spec spec[1];
	uint64_t n_experts; /* stacked: spec is expert 0's matrix, experts 0..n-1 follow */
	uint32_t type;
	uint64_t size, off;
	int permute;
};

static uint64_t gguf_bytes(uint32_t type, uint64_t n)
{
	switch (type) {
	case GT_F32: return n * 4;
	case GT_F16: case GT_BF16: return n * 2;
	case GT_Q8_0: return n / 32 * 34;
	case GT_Q4_0: return n / 32 * 18;
	}
	return 0;
}

/* Convert one canonical row to GGUF bytes. */
static void encode_row(uint32_t type, const float *x, uint64_t cols, uint8_t *out, uint8_t *codes, uint16_t *scales)
{
	switch (type) {
	case GT_F32: memcpy(out, x, cols * 4); break;
	case GT_F16: moe_quantize_rows(MOE_TYPE_F16, x, 1, cols, out, NULL); break;
	case GT_BF16: moe_quantize_rows(MOE_TYPE_BF16, x, 1, cols, out, NULL); break;
	case GT_Q8_0:
		moe_quantize_rows(MOE_TYPE_Q8, x, 1, cols, codes, scales);
		moe_q8_to_gguf((const int8_t *)codes, scales, cols / 32, (gguf_block_q8_0 *)out);
		break;
	case GT_Q4_0:
		moe_quantize_rows(MOE_TYPE_Q4, x, 1, cols, codes, scales);
		moe_q4_to_gguf(codes, scales, cols / 32, (gguf_block_q4_0 *)out);
		break;
	}
}

int gguf_write_model(struct moe_source *src, const char *path, const char *type_name, int force)
{
	const struct moe_hparams *hp = &src->hp;
	uint32_t wtype;
	if (strcmp(type_name, "f32") == 0) wtype = GT_F32;
	else if (strcmp(type_name, "f16") == 0) wtype = GT_F16;
	else if (strcmp(type_name, "bf16") == 0) wtype = GT_BF16;
	else if (strcmp(type_name, "q8_0") == 0) wtype = GT_Q8_0;
	else if (strcmp(type_name, "q4_0") == 0) wtype = GT_Q4_0;
	else return moe_fail(MOE_EINVAL, "--dtype %s: GGUF output takes f32, f16, bf16, q8_0 or q4_0", type_name);
	const int glm = hp->arch == MOE_ARCH_GLM4_MOE, oss = hp->arch == MOE_ARCH_GPT_OSS;
	const int q35 = hp->arch == MOE_ARCH_QWEN3_NEXT;
	if (q35 && !hp->lin_v_tiled) /* qwen3next would need beta and alpha joined into ssm_ba */
		return moe_fail(MOE_EUNSUPPORTED, "GGUF output of qwen3_next is written as llama.cpp's qwen35moe, whose "
				"value heads are tiled: this model's are grouped (a qwen3.5 preset's are tiled)");
	const char *arch = hp->arch == MOE_ARCH_MIXTRAL ? "llama" : hp->arch == MOE_ARCH_QWEN3_MOE ? "qwen3moe"
			 : glm ? "glm4moe" : oss ? "gpt-oss" : q35 ? "qwen35moe" : NULL;
	if (!arch)
		return moe_fail(MOE_EUNSUPPORTED,
				"GGUF output of %s is not implemented (mixtral, qwen3_moe, glm4_moe, gpt_oss and qwen3_next are)",
				moe_arch_name(hp->arch));
	for (uint64_t l = 0; l < hp->n_layers && !glm; l++) /* glm4moe's leading dense layers are in its keys */
		if (!moe_layer_is_moe(hp, l))
			return moe_fail(MOE_EUNSUPPORTED, "GGUF cannot express qwen3moe dense layers (layer %llu)",
					(unsigned long long)l);
	int rc = src_check_output(src, NULL, path, 0, force);
	if (rc)
		return rc;

	/* tensor list: dense in model order, then per layer the three stacked expert tensors */
	size_t nd = moe_arch_dense_tensors(hp, NULL, 0);
	size_t cap = nd + 3 * hp->n_layers;
	struct moe_tensor_spec *dense = calloc(nd, sizeof *dense);
	struct gtensor *t = calloc(cap, sizeof *t);
	if (!dense || !t) {
		free(dense);
		free(t);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	moe_arch_dense_tensors(hp, dense, nd);
	size_t n = 0;
	for (size_t i = 0; i < nd; i++) {
		struct src_entry *e = src_find(src, dense[i].name);
		if (!e && dense[i].optional)
			continue;
		struct gtensor *g = &t[n++];
		g->spec[0] = dense[i];
		const size_t len = strlen(dense[i].name);
		if (ends_with(dense[i].name, ".bias") || ends_with(dense[i].name, ".ssm_a")) /* named so already */
			snprintf(g->name, sizeof g->name, "%s", dense[i].name);
		else if ((glm || oss || q35) && ends_with(dense[i].name, ".ffn_norm")) /* named after its place there */
			snprintf(g->name, sizeof g->name, "%.*s.post_attention_norm.weight", (int)(len - 9), dense[i].name);
		else
			snprintf(g->name, sizeof g->name, "%s.%s", dense[i].name,
				 ends_with(dense[i].name, ".exp_probs_b") ? "bias" : "weight");
		const int small = dense[i].n_dims == 1 || dense[i].kind == MOE_KIND_ROUTER || dense[i].kind == MOE_KIND_NORM ||
				  moe_tensor_is_bias(dense[i].name);
		g->type = small || dense[i].dims[1] % 32 ? GT_F32 : wtype;
		g->permute = hp->arch == MOE_ARCH_MIXTRAL &&
			     (ends_with(dense[i].name, ".attn_q") || ends_with(dense[i].name, ".attn_k"));
		/* stacked experts follow the router of their layer */
		if (ends_with(dense[i].name, ".ffn_gate_inp")) {
			uint64_t l = strtoull(dense[i].name + 4, NULL, 10);
			static const char *const mname[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
			struct moe_tensor_spec ex[3];
			moe_arch_expert_tensors(hp, l, 0, ex);
			for (int m = 0; m < 3; m++) {
				struct gtensor *x = &t[n++];
				x->spec[0] = ex[m];
				x->n_experts = hp->n_experts;
				snprintf(x->name, sizeof x->name, "blk.%llu.%s.weight", (unsigned long long)l, mname[m]);
				x->type = ex[m].dims[1] % 32 ? GT_F32 : wtype;
			}
		}
	}
	rc = 0;
	uint64_t off = 0;
	for (size_t i = 0; i < n; i++) {
		const struct moe_tensor_spec *s = t[i].spec;
		uint64_t el = s->dims[0] * (s->n_dims == 2 ? s->dims[1] : 1) * (t[i].n_experts ? t[i].n_experts : 1);
		t[i].size = gguf_bytes(t[i].type, el);
		t[i].off = off;
		off = (off + t[i].size + 31) / 32 * 32;
	}

	char *tmp;
	int fd;
	if ((rc = moe_out_create(path, &tmp, &fd))) {
		free(dense);
		free(t);
		return rc;
	}
	/* key/values go to memory first: the header needs their count */
	char *kvbuf = NULL;
	size_t kvlen = 0;
	struct gw g = {open_memstream(&kvbuf, &kvlen), 0};
	char key[96];
	const int mixtral = hp->arch == MOE_ARCH_MIXTRAL;
	kv_str(&g, "general.architecture", arch);
	kv_str(&g, "general.name", "moemap synthetic");
	kv_u32(&g, "general.alignment", 32);
#define AK(s) (snprintf(key, sizeof key, "%s.%s", arch, s), key)
	kv_u32(&g, AK("block_count"), (uint32_t)hp->n_layers);
	kv_u32(&g, AK("context_length"), (uint32_t)hp->max_pos);
	kv_u32(&g, AK("embedding_length"), (uint32_t)hp->hidden);
	kv_u32(&g, AK("attention.head_count"), (uint32_t)hp->n_heads);
	kv_u32(&g, AK("attention.head_count_kv"), (uint32_t)hp->n_kv_heads);
	kv_f32(&g, AK("rope.freq_base"), (float)hp->rope_theta);
	kv_f32(&g, AK("attention.layer_norm_rms_epsilon"), (float)hp->rms_eps);
	kv_u32(&g, AK("expert_count"), (uint32_t)hp->n_experts);
	kv_u32(&g, AK("expert_used_count"), (uint32_t)hp->n_experts_used);
	kv_u32(&g, AK("vocab_size"), (uint32_t)hp->vocab);
	if (mixtral) {
		kv_u32(&g, AK("feed_forward_length"), (uint32_t)hp->expert_ff);
		kv_u32(&g, AK("rope.dimension_count"), (uint32_t)hp->head_dim);
	} else {
		kv_u32(&g, AK("feed_forward_length"), (uint32_t)(oss ? hp->expert_ff : hp->dense_ff));
		kv_u32(&g, AK("expert_feed_forward_length"), (uint32_t)hp->expert_ff);
		kv_u32(&g, AK("attention.key_length"), (uint32_t)hp->head_dim);
	}
	if (oss) { /* as llama.cpp's converter writes gpt-oss (GptOssModel) */
		kv_u32(&g, AK("attention.value_length"), (uint32_t)hp->head_dim);
		kv_u32(&g, AK("attention.sliding_window"), (uint32_t)hp->sliding_window);
		kv_str(&g, AK("rope.scaling.type"), "yarn");
		kv_f32(&g, AK("rope.scaling.factor"), (float)hp->rope_factor);
		kv_u32(&g, AK("rope.scaling.original_context_length"), (uint32_t)hp->rope_orig_max);
	}
	if (q35) { /* as llama.cpp's converter writes Qwen3.5-MoE (Qwen3_5MoeTextModel) */
		kv_u32(&g, AK("attention.value_length"), (uint32_t)hp->head_dim);
		kv_u32(&g, AK("rope.dimension_count"), (uint32_t)moe_rope_dims(hp));
		static const int32_t sections[4] = {11, 11, 10, 0}; /* interleaved M-RoPE: plain RoPE for text */
		kv_array(&g, AK("rope.dimension_sections"), GV_I32, sections, 4);
		kv_u32(&g, AK("expert_shared_feed_forward_length"), (uint32_t)hp->shared_ff);
		kv_u32(&g, AK("ssm.conv_kernel"), (uint32_t)hp->lin_conv);
		kv_u32(&g, AK("ssm.state_size"), (uint32_t)hp->lin_k_dim);
		kv_u32(&g, AK("ssm.group_count"), (uint32_t)hp->lin_k_heads);
		kv_u32(&g, AK("ssm.time_step_rank"), (uint32_t)hp->lin_v_heads);
		kv_u32(&g, AK("ssm.inner_size"), (uint32_t)(hp->lin_v_heads * hp->lin_v_dim));
		kv_array(&g, AK("attention.recurrent_layers"), GV_BOOL, hp->linear, hp->n_layers);
	}
	if (glm) { /* as llama.cpp's converter writes GLM-4.5 (Glm4MoeModel) */
		kv_u32(&g, AK("attention.value_length"), (uint32_t)hp->head_dim);
		kv_u32(&g, AK("rope.dimension_count"), (uint32_t)moe_rope_dims(hp));
		kv_u32(&g, AK("leading_dense_block_count"), (uint32_t)hp->first_dense);
		kv_u32(&g, AK("expert_shared_count"), (uint32_t)hp->n_shared);
		kv_u32(&g, AK("expert_group_count"), (uint32_t)hp->n_group);
		kv_u32(&g, AK("expert_group_used_count"), (uint32_t)hp->topk_group);
		kv_f32(&g, AK("expert_weights_scale"), (float)hp->routed_scale);
		kv_bool(&g, AK("expert_weights_norm"), (int)hp->norm_topk_prob);
		kv_u32(&g, AK("expert_gating_func"), 2); /* sigmoid */
	}
#undef AK
	kv_str(&g, "tokenizer.ggml.model", "none");
	fclose(g.fp);
	const uint64_t n_kv = g.n_kv;
	g.fp = fdopen(fd, "wb");
	w_bytes(&g, "GGUF", 4);
	w_u32(&g, 3);
	w_u64(&g, n);
	w_u64(&g, n_kv);
	w_bytes(&g, kvbuf, kvlen);
	free(kvbuf);
	for (size_t i = 0; i < n; i++) {
		const struct moe_tensor_spec *s = t[i].spec;
		w_str(&g, t[i].name);
		uint32_t dims = t[i].n_experts ? 3 : (uint32_t)s->n_dims;
		w_u32(&g, dims);
		if (s->n_dims == 1) {
			w_u64(&g, s->dims[0]);
		} else {
			w_u64(&g, s->dims[1]);
			w_u64(&g, s->dims[0]);
			if (t[i].n_experts)
				w_u64(&g, t[i].n_experts);
		}
		w_u32(&g, t[i].type);
		w_u64(&g, t[i].off);
	}
	long pos = ftell(g.fp);
	static const uint8_t zeros[32];
	w_bytes(&g, zeros, (size_t)((32 - pos % 32) % 32));
	const uint64_t data0 = (uint64_t)ftell(g.fp);

	/* data, one canonical row at a time (rows are permuted for llama q/k) */
	for (size_t i = 0; i < n && !rc && !(rc = pack_interrupt_check()); i++) {
		const struct moe_tensor_spec *s = t[i].spec;
		const uint64_t rows = s->dims[0], cols = s->n_dims == 2 ? s->dims[1] : s->dims[0];
		const uint64_t nrows = s->n_dims == 2 ? rows : 1;
		float *x = malloc(cols * sizeof(float));
		uint8_t *out = malloc(cols * 4), *codes = malloc(cols);
		uint16_t *scales = malloc(cols / 32 * 2 + 2);
		if (!x || !out || !codes || !scales)
			rc = moe_fail(MOE_ENOMEM, "out of memory");
		fseeko(g.fp, (off_t)(data0 + t[i].off), SEEK_SET);
		const uint64_t mats = t[i].n_experts ? t[i].n_experts : 1;
		for (uint64_t m = 0; m < mats && !rc; m++) {
			struct moe_tensor_spec spec = *s;
			if (t[i].n_experts) {
				struct moe_tensor_spec ex[3];
				uint64_t l = strtoull(s->name + 4, NULL, 10);
				moe_arch_expert_tensors(hp, l, m, ex);
				int which = strstr(s->name, "ffn_gate") ? 0 : strstr(s->name, "ffn_up") ? 1 : 2;
				spec = ex[which];
			}
			struct src_entry *e;
			if ((rc = src_lookup(src, &spec, &e)))
				break;
			const uint64_t hd = hp->head_dim, half = hd / 2;
			for (uint64_t r = 0; r < nrows && !rc; r++) {
				uint64_t cr = r; /* canonical row stored at GGUF row r */
				if (t[i].permute) {
					uint64_t h = r / hd, k = r % hd, ii = k / 2, j = k % 2;
					cr = h * hd + j * half + ii;
				}
				/* a 1-D source entry is rows x 1: one GGUF row of `rows` values */
				rc = src_read_rows(src, e, s->n_dims == 1 ? 0 : cr, s->n_dims == 1 ? rows : 1, x);
				if (rc)
					break;
				encode_row(t[i].type, x, cols, out, codes, scales);
				w_bytes(&g, out, gguf_bytes(t[i].type, cols));
			}
		}
		free(x);
		free(out);
		free(codes);
		free(scales);
	}
	if (!rc && (fflush(g.fp) != 0 || ferror(g.fp)))
		rc = moe_fail(moe_errno_code(errno), "%s: write: %s", tmp, strerror(errno));
	if (!rc)
		rc = moe_out_commit(fileno(g.fp), tmp, path, force);
	if (fclose(g.fp) != 0 && !rc)
		rc = moe_fail(moe_errno_code(errno), "%s: close: %s", path, strerror(errno));
	if (rc)
		unlink(tmp);
	free(tmp);
	free(dense);
	free(t);
	return rc;
}
