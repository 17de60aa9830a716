/*
 * arch.h - what a model is: its hyperparameters and the tensors its forward pass
 * needs, named canonically (GGUF-style: "blk.3.attn_q"). moe-pack imports a
 * source into this shape; the runtime reads it back from the pack's metadata.
 */
#ifndef MOE_MODEL_ARCH_H
#define MOE_MODEL_ARCH_H

#include <stdint.h>

#include "moe.h"

#define MOE_MAX_LAYERS 256

enum moe_arch {
	MOE_ARCH_MIXTRAL = 0,
	MOE_ARCH_QWEN3_MOE = 1,
	MOE_ARCH_DEEPSEEK_V3 = 2,
	MOE_ARCH_GLM4_MOE = 3, /* GLM-4.5: GQA with partial RoPE, DeepSeek-V3's routing and shared experts */
	MOE_ARCH_GPT_OSS = 4,  /* gpt-oss: sinks, sliding windows, biases everywhere, clamped SwiGLU */
	MOE_ARCH_QWEN3_NEXT = 5, /* Qwen3-Next, Qwen3.5-MoE: Gated DeltaNet layers between gated attention */
	MOE_ARCH_COUNT
};

struct moe_hparams {
	int arch;
	uint64_t n_layers, hidden, n_heads, n_kv_heads, head_dim, vocab;
	uint64_t n_experts, n_experts_used, expert_ff; /* routed experts per MoE layer */
	uint64_t dense_ff;          /* dense MLP layers (Qwen3 mlp_only, DeepSeek first layers) */
	uint64_t max_pos;
	double rope_theta, rms_eps;
	uint64_t norm_topk_prob, tie_embeddings;
	/* Qwen3-MoE: a layer is dense if listed or if (l+1) % sparse_step != 0 */
	uint64_t sparse_step;
	uint8_t mlp_only[MOE_MAX_LAYERS];
	/* DeepSeek-V3 */
	uint64_t first_dense, n_shared, n_group, topk_group;
	uint64_t q_lora_rank, kv_lora_rank, qk_nope_dim, qk_rope_dim, v_head_dim;
	double routed_scale;
	uint64_t scoring_sigmoid;
	double rope_factor, rope_orig_max, rope_beta_fast, rope_beta_slow, rope_mscale, rope_mscale_all;
	/* GLM-4.5: RoPE on the first rope_dims of each head only (0: all of head_dim);
	 * q/k/v projection biases; per-head q/k RMSNorm */
	uint64_t rope_dims, attn_bias, qk_norm;
	/* gpt-oss: layers with sliding[l] attend to the last sliding_window positions only;
	 * YaRN without rounding the correction range when rope_truncate is 0; the SwiGLU's
	 * gate and up clamped to swiglu_limit */
	uint64_t sliding_window, rope_truncate;
	uint8_t sliding[MOE_MAX_LAYERS];
	double swiglu_limit;
	/* Qwen3-Next / Qwen3.5: layers with linear[l] are Gated DeltaNet (a recurrent state
	 * per value head, lin_k_dim x lin_v_dim, after a causal conv of lin_conv taps), the
	 * others gated full attention (q_proj doubled: each head's query, then its output
	 * gate). Value head h reads key head h / (lin_v_heads / lin_k_heads) (grouped, as
	 * Hugging Face stores them), or h % lin_k_heads when lin_v_tiled (llama.cpp's
	 * qwen35moe reorders them so). One shared expert of shared_ff behind a sigmoid gate. */
	uint64_t lin_k_heads, lin_v_heads, lin_k_dim, lin_v_dim, lin_conv, lin_v_tiled, shared_ff;
	uint8_t linear[MOE_MAX_LAYERS];
};

/* What a tensor is for; the quant recipe maps kinds to types. */
enum moe_kind {
	MOE_KIND_EMBED,
	MOE_KIND_OUTPUT,
	MOE_KIND_ATTN,
	MOE_KIND_FFN,    /* dense MLP layers and shared experts */
	MOE_KIND_EXPERT, /* routed experts */
	MOE_KIND_NORM,   /* always f32 */
	MOE_KIND_ROUTER, /* always f32 */
	MOE_KIND_COUNT
};
extern const char *const moe_kind_names[MOE_KIND_COUNT];

struct moe_tensor_spec {
	char name[64];      /* canonical */
	char hf_name[96];   /* Hugging Face safetensors name */
	int kind;
	int n_dims;
	uint64_t dims[2];   /* rows, cols (1-D: dims[0]) */
	int optional;       /* absent is fine (output when embeddings are tied) */
};

const char *moe_arch_name(int arch);   /* "mixtral", "qwen3_moe", "deepseek_v3", "glm4_moe", "gpt_oss", "qwen3_next" */
int moe_arch_from_name(const char *name);
int moe_layer_is_moe(const struct moe_hparams *hp, uint64_t layer);
/* DeepSeek-V3 and GLM-4.5: sigmoid scores with a choice bias, groups, scaling, shared experts */
int moe_arch_sigmoid_routing(const struct moe_hparams *hp);
/* Qwen3-Next's Gated DeltaNet: channels of the causal conv (q, k and v of all heads) */
uint64_t moe_lin_conv_dim(const struct moe_hparams *hp);
/* dimensions of each attention head that RoPE rotates (GQA archs) */
uint64_t moe_rope_dims(const struct moe_hparams *hp);
/* Check that the hyperparameters are complete and consistent; message names the field. */
int moe_hparams_check(const struct moe_hparams *hp);

/* Dense tensors of the model, in pack order. Returns the count; fills at most max. */
size_t moe_arch_dense_tensors(const struct moe_hparams *hp, struct moe_tensor_spec *out, size_t max);
/* The three matrices (gate, up, down) of routed expert e of layer l. */
void moe_arch_expert_tensors(const struct moe_hparams *hp, uint64_t layer, uint64_t e, struct moe_tensor_spec out[3]);

/* Kind of a dense tensor from its canonical name ("blk.3.attn_q" -> MOE_KIND_ATTN). */
int moe_tensor_kind(const char *name);
/* A bias ("blk.3.attn_q.bias", gpt-oss's per-expert "blk.3.ffn_up_exps.bias"): kept f32 as the norms. */
int moe_tensor_is_bias(const char *name);

/* ---- metadata <-> hparams ---- */
struct moe_meta_writer;
int moe_hparams_to_meta(const struct moe_hparams *hp, struct moe_meta_writer *w);
/* The hyperparameters of a pack, checked (moe_hparams_check), and every tensor and
 * expert of it checked to have the shape they imply: the invariants of moepack(5). */
int moe_hparams_from_pack(const moe_pack *pack, struct moe_hparams *hp);

#endif
