/* synth.c - deterministic random models of any shape: a source whose tensors are
 * generated on demand (so a 50 GB model costs no memory), plus named presets. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/error.h"
#include "pack.h"

struct preset {
	const char *name, *what;
	struct moe_hparams hp;
};

#define MIXTRAL(L, H, NH, KV, V, E, K, FF) \
	{.arch = MOE_ARCH_MIXTRAL, .n_layers = L, .hidden = H, .n_heads = NH, .n_kv_heads = KV, .head_dim = (H) / (NH), \
	 .vocab = V, .n_experts = E, .n_experts_used = K, .expert_ff = FF, .max_pos = 32768, .rope_theta = 1e6,          \
	 .rms_eps = 1e-5, .norm_topk_prob = 1}
#define QWEN3(L, H, NH, KV, HD, V, E, K, EFF, FF) \
	{.arch = MOE_ARCH_QWEN3_MOE, .n_layers = L, .hidden = H, .n_heads = NH, .n_kv_heads = KV, .head_dim = HD, \
	 .vocab = V, .n_experts = E, .n_experts_used = K, .expert_ff = EFF, .dense_ff = FF, .max_pos = 40960,     \
	 .rope_theta = 1e6, .rms_eps = 1e-6, .norm_topk_prob = 1, .sparse_step = 1}
#define DEEPSEEK(L, FD, H, NH, QL, KVL, NOPE, ROPE, VD, V, E, K, SH, G, TG, EFF, FF)                                \
	{.arch = MOE_ARCH_DEEPSEEK_V3, .n_layers = L, .first_dense = FD, .hidden = H, .n_heads = NH, .q_lora_rank = QL, \
	 .kv_lora_rank = KVL, .qk_nope_dim = NOPE, .qk_rope_dim = ROPE, .v_head_dim = VD, .vocab = V, .n_experts = E,   \
	 .n_experts_used = K, .n_shared = SH, .n_group = G, .topk_group = TG, .expert_ff = EFF, .dense_ff = FF,         \
	 .max_pos = 163840, .rope_theta = 10000, .rms_eps = 1e-6, .norm_topk_prob = 1, .routed_scale = 2.5,             \
	 .scoring_sigmoid = 1, .rope_factor = 40, .rope_orig_max = 4096, .rope_beta_fast = 32, .rope_beta_slow = 1,      \
	 .rope_mscale = 1, .rope_mscale_all = 1}

#define GLM4(L, FD, H, NH, KV, HD, V, E, K, SH, EFF, FF, SCALE, QKN)                                          \
	{.arch = MOE_ARCH_GLM4_MOE, .n_layers = L, .first_dense = FD, .hidden = H, .n_heads = NH, .n_kv_heads = KV,  \
	 .head_dim = HD, .rope_dims = (HD) / 2, .vocab = V, .n_experts = E, .n_experts_used = K, .n_shared = SH,      \
	 .n_group = 1, .topk_group = 1, .expert_ff = EFF, .dense_ff = FF, .max_pos = 131072, .rope_theta = 1e6,      \
	 .rms_eps = 1e-5, .norm_topk_prob = 1, .routed_scale = SCALE, .scoring_sigmoid = 1, .attn_bias = 1,          \
	 .qk_norm = QKN}

#define GPT_OSS(L, E)                                                                                            \
	{.arch = MOE_ARCH_GPT_OSS, .n_layers = L, .hidden = 2880, .n_heads = 64, .n_kv_heads = 8, .head_dim = 64,    \
	 .vocab = 201088, .n_experts = E, .n_experts_used = 4, .expert_ff = 2880, .max_pos = 131072,                \
	 .rope_theta = 150000, .rms_eps = 1e-5, .attn_bias = 1, .sliding_window = 128, .swiglu_limit = 7.0,         \
	 .rope_factor = 32, .rope_orig_max = 4096, .rope_beta_fast = 32, .rope_beta_slow = 1}

/* Qwen3-Next / Qwen3.5-MoE: every fourth layer gated attention (head_dim 256, RoPE on a
 * quarter), the others Gated DeltaNet (key heads NK, value heads NV, 128 dims each) */
#define QWEN3_NEXT(L, H, NH, KV, V, E, K, EFF, SFF, NK, NV)                                                     \
	{.arch = MOE_ARCH_QWEN3_NEXT, .n_layers = L, .hidden = H, .n_heads = NH, .n_kv_heads = KV, .head_dim = 256,  \
	 .rope_dims = 64, .vocab = V, .n_experts = E, .n_experts_used = K, .expert_ff = EFF, .shared_ff = SFF,      \
	 .max_pos = 262144, .rope_theta = 1e7, .rms_eps = 1e-6, .norm_topk_prob = 1, .sparse_step = 1, .qk_norm = 1, \
	 .lin_k_heads = NK, .lin_v_heads = NV, .lin_k_dim = 128, .lin_v_dim = 128, .lin_conv = 4}

static const struct preset presets[] = {
	{"mixtral-tiny", "Mixtral layout, 2 layers, hidden 256, 8 experts top-2 (default)",
	 MIXTRAL(2, 256, 8, 2, 512, 8, 2, 512)},
	{"mixtral-8x7b", "Mixtral 8x7B shapes (47B parameters)", MIXTRAL(32, 4096, 32, 8, 32000, 8, 2, 14336)},
	{"mixtral-8x22b", "Mixtral 8x22B shapes (141B parameters)", MIXTRAL(56, 6144, 48, 8, 32768, 8, 2, 16384)},
	{"qwen3-tiny", "Qwen3-MoE layout, 2 layers, hidden 256, 16 experts top-4",
	 QWEN3(2, 256, 4, 2, 64, 512, 16, 4, 128, 512)},
	{"qwen3-30b-a3b", "Qwen3-30B-A3B shapes", QWEN3(48, 2048, 32, 4, 128, 151936, 128, 8, 768, 6144)},
	{"qwen3-235b-a22b", "Qwen3-235B-A22B shapes", QWEN3(94, 4096, 64, 4, 128, 151936, 128, 8, 1536, 12288)},
	{"deepseek-tiny", "DeepSeek-V3 layout (MLA, shared expert, grouped routing), 3 layers, hidden 256",
	 DEEPSEEK(3, 1, 256, 4, 64, 64, 32, 16, 32, 512, 16, 4, 1, 4, 2, 128, 512)},
	{"deepseek-v3", "DeepSeek-V3/R1 shapes (671B parameters)",
	 DEEPSEEK(61, 3, 7168, 128, 1536, 512, 128, 64, 128, 129280, 256, 8, 1, 8, 4, 2048, 18432)},
	{"glm-tiny", "GLM-4.5 layout (partial RoPE, q/k/v biases, q/k norms, shared expert), 3 layers, hidden 256",
	 GLM4(3, 1, 256, 4, 2, 64, 512, 16, 4, 1, 128, 512, 2.5, 1)},
	{"glm-4.5-air", "GLM-4.5-Air shapes (106B parameters)",
	 GLM4(46, 1, 4096, 96, 8, 128, 151552, 128, 8, 1, 1408, 10944, 1.0, 0)},
	{"glm-4.5", "GLM-4.5 shapes (355B parameters)",
	 GLM4(92, 3, 5120, 96, 8, 128, 151552, 160, 8, 1, 1536, 12288, 2.5, 1)},
	{"gpt-oss-tiny", "gpt-oss layout (sinks, sliding windows, biases, clamped SwiGLU, YaRN), 4 layers, hidden 256",
	 {.arch = MOE_ARCH_GPT_OSS, .n_layers = 4, .hidden = 256, .n_heads = 8, .n_kv_heads = 2, .head_dim = 32,
	  .vocab = 512, .n_experts = 16, .n_experts_used = 4, .expert_ff = 128, .max_pos = 4096, .rope_theta = 150000,
	  .rms_eps = 1e-5, .attn_bias = 1, .sliding_window = 4, .swiglu_limit = 7.0, .rope_factor = 32,
	  .rope_orig_max = 128, .rope_beta_fast = 32, .rope_beta_slow = 1}},
	{"gpt-oss-20b", "gpt-oss-20b shapes (21B parameters)", GPT_OSS(24, 32)},
	{"gpt-oss-120b", "gpt-oss-120b shapes (117B parameters)", GPT_OSS(36, 128)},
	{"qwen3-next-tiny", "Qwen3-Next layout (Gated DeltaNet, gated attention, shared expert), 4 layers, hidden 256",
	 {.arch = MOE_ARCH_QWEN3_NEXT, .n_layers = 4, .hidden = 256, .n_heads = 4, .n_kv_heads = 2, .head_dim = 64,
	  .rope_dims = 16, .vocab = 512, .n_experts = 16, .n_experts_used = 4, .expert_ff = 128, .shared_ff = 128,
	  .max_pos = 4096, .rope_theta = 1e7, .rms_eps = 1e-6, .norm_topk_prob = 1, .sparse_step = 1, .qk_norm = 1,
	  .lin_k_heads = 2, .lin_v_heads = 4, .lin_k_dim = 64, .lin_v_dim = 64, .lin_conv = 4}},
	{"qwen3-next-80b", "Qwen3-Next-80B-A3B shapes", QWEN3_NEXT(48, 2048, 16, 2, 151936, 512, 10, 512, 512, 16, 32)},
	{"qwen3.5-35b-a3b", "Qwen3.5-35B-A3B-class shapes (value heads in llama.cpp's qwen35moe order)",
	 QWEN3_NEXT(40, 2048, 16, 2, 248320, 256, 8, 512, 512, 16, 32)},
	{"qwen3.5-397b-a17b", "Qwen3.5-397B-A17B-class shapes (value heads in llama.cpp's qwen35moe order)",
	 QWEN3_NEXT(60, 4096, 32, 2, 248320, 512, 10, 1024, 1024, 16, 64)},
};

int synth_preset(const char *name, struct moe_hparams *hp)
{
	for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
		if (strcmp(name, presets[i].name) == 0) {
			*hp = presets[i].hp;
			for (int l = 0; hp->arch == MOE_ARCH_GPT_OSS && l < MOE_MAX_LAYERS; l += 2)
				hp->sliding[l] = 1; /* gpt-oss: the even layers slide */
			for (int l = 0; hp->arch == MOE_ARCH_QWEN3_NEXT && l < MOE_MAX_LAYERS; l++)
				hp->linear[l] = (l + 1) % 4 != 0; /* Qwen3-Next: three linear layers, then attention */
			/* synthetic weights have no order of their own: Qwen3.5's presets take the one
			 * llama.cpp's qwen35moe GGUF uses, so that --format gguf writes that */
			hp->lin_v_tiled = strncmp(name, "qwen3.5", 7) == 0;
			return 0;
		}
	return moe_fail(MOE_EINVAL, "unknown preset '%s' (moe-pack synth --list-presets)", name);
}

void synth_list_presets(void)
{
	for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
		printf("%-16s %s\n", presets[i].name, presets[i].what);
}

/* Does this tensor write into the residual stream? The output projections do, with
 * their biases, and so does the value bias: attention weights sum to one, so it
 * reaches the output projection whatever the token. */
static int writes_residual(const char *name)
{
	return strstr(name, ".attn_output") || strstr(name, ".ssm_out") || strstr(name, ".ffn_down") ||
	       strstr(name, ".attn_v.bias");
}

/* Scale of a tensor's values: like a trained model's, roughly. What writes into the
 * residual stream is scaled by 1/sqrt(2 layers), as GPT-2 initializes its output
 * projections. Without it, a deep random model's nearly uniform attention and its
 * biases add almost the same vector to every token at every layer: deep down the
 * stream no longer tells tokens apart and every token picks the same experts (48
 * layers x 128: 41 experts in use at layer 36, 68 % of a token's shared with the one
 * before, against 6 % by chance), which no trained model does and which flatters
 * the expert cache. */
static void value_shape(const struct moe_tensor_spec *s, uint64_t n_layers, float *mean, float *std)
{
	*mean = 0.0f;
	switch (s->kind) {
	case MOE_KIND_NORM:
		if (strstr(s->name, ".ssm_a") || strstr(s->name, ".ssm_conv1d")) {
			/* Gated DeltaNet: A = -exp(A_log) in about -7 .. -1 (a decay below 1); conv taps around 0 */
			*mean = strstr(s->name, ".ssm_a") ? -4.0f : 0.0f;
			*std = strstr(s->name, ".ssm_a") ? 0.8f : 0.5f;
			return;
		}
		*mean = 1.0f;
		*std = 0.1f;
		return;
	case MOE_KIND_EMBED:
		*std = 1.0f;
		return;
	default:
		if (s->n_dims == 1) /* attention biases as large as a trained model's; the routing bias small */
			*std = strstr(s->name, ".bias") ? 0.5f : 0.01f;
		else
			*std = 1.0f / sqrtf((float)s->dims[1]);
		if (writes_residual(s->name))
			*std /= sqrtf(2.0f * (float)n_layers);
	}
}

static int add_spec(struct moe_source *src, const struct moe_tensor_spec *s, uint64_t n_layers, uint64_t seed)
{
	struct src_entry *e = src_add(src, s->name);
	if (!e)
		return moe_fail(MOE_ENOMEM, "out of memory");
	e->dtype = SRC_SYNTH;
	e->n_dims = s->n_dims;
	e->rows = s->dims[0];
	e->cols = s->n_dims == 2 ? s->dims[1] : 1;
	e->seed = XXH3_64bits_withSeed(s->name, strlen(s->name), seed);
	value_shape(s, n_layers, &e->mean, &e->std);
	return 0;
}

int synth_source(const struct moe_hparams *hp, uint64_t seed, struct moe_source **out)
{
	*out = NULL;
	int rc = moe_hparams_check(hp);
	if (rc)
		return rc;
	struct moe_source *src = calloc(1, sizeof *src);
	if (!src)
		return moe_fail(MOE_ENOMEM, "out of memory");
	src->kind = "synth";
	src->hp = *hp;
	char name[64];
	snprintf(name, sizeof name, "synthetic-%s", moe_arch_name(hp->arch));
	src->path = strdup(name);
	size_t nd = moe_arch_dense_tensors(hp, NULL, 0);
	struct moe_tensor_spec *d = calloc(nd, sizeof *d);
	if (!d || !src->path) {
		free(d);
		src_close(src);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	moe_arch_dense_tensors(hp, d, nd);
	for (size_t i = 0; i < nd && !rc; i++)
		if (!d[i].optional)
			rc = add_spec(src, &d[i], hp->n_layers, seed);
	for (uint64_t l = 0; l < hp->n_layers && !rc; l++) {
		if (!moe_layer_is_moe(hp, l))
			continue;
		for (uint64_t e = 0; e < hp->n_experts && !rc; e++) {
			struct moe_tensor_spec ex[3];
			moe_arch_expert_tensors(hp, l, e, ex);
			for (int m = 0; m < 3 && !rc; m++)
				rc = add_spec(src, &ex[m], hp->n_layers, seed);
		}
	}
	free(d);
	if (rc) {
		src_close(src);
		return rc;
	}
	src->no_tokenizer_ok = 1;
	src_index(src);
	*out = src;
	return 0;
}
