/*
 * engine.h - running a pack: the model's weights as kernel views, the KV cache, and
 * the forward pass over a batch of tokens.
 *
 * Experts reach the forward pass only through struct moe_experts (acquire a
 * (layer, expert) -> ready weights; release). This file's implementation serves them
 * straight from the mapping (decoding zstd blobs into a buffer); the expert cache
 * and the io_uring prefetcher plug in behind the same two calls.
 */
#ifndef MOE_ENGINE_H
#define MOE_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>

#include "kernels/kernels.h"
#include "model/arch.h"
#include "moe.h"

struct moe_expert_weights {
	struct moe_wmat gate, up, down;
	void *handle; /* the provider's */
};

/* What a provider has done so far (all counters cumulative). */
struct moe_expert_stats {
	uint64_t hits;            /* uses of an expert resident from an earlier use */
	uint64_t prefetch_hits;   /* uses of an expert a prefetch brought in (or was bringing in) */
	uint64_t misses;          /* uses that had to read the expert on demand */
	uint64_t prefetch_issued; /* reads queued by prefetch hints */
	uint64_t prefetch_unused_bytes;  /* bytes of guesses that left the cache unused */
	uint64_t prefetch_evicted_bytes; /* of those, evicted before the step they were for */
	uint64_t bytes_read;
	uint64_t rereads;         /* blobs read again after a checksum mismatch */
	double io_seconds;        /* wall time with reads in flight */
	double wait_seconds;      /* compute waiting for experts */
	uint64_t slots, slots_used, slots_pinned;
	const char *io_mode;      /* "mmap", "io_uring", "pread" */
};

struct moe_experts {
	int (*acquire)(struct moe_experts *x, uint32_t layer, uint32_t expert, struct moe_expert_weights *out);
	void (*release)(struct moe_experts *x, struct moe_expert_weights *w);
	void (*destroy)(struct moe_experts *x);
	/* Optional. The experts layer will need, likeliest first: distance 0 = the
	 * layer about to run (the list is reordered in place into the order to acquire
	 * them: ready ones first); distance d > 0 = a guess for the layer d steps ahead
	 * (the next token's layers after the last), with prob[e] the router's
	 * probability of expert e there (NULL: unknown). */
	void (*hint)(struct moe_experts *x, uint32_t layer, uint32_t *experts, size_t n, unsigned distance,
		     const float *prob);
	void (*stats)(struct moe_experts *x, struct moe_expert_stats *out);
};

/* The mapping itself: raw blobs used in place, zstd blobs decoded per acquire. */
int moe_experts_mapped(const moe_pack *pack, struct moe_experts **out);

struct moe_layer_weights {
	const float *attn_norm, *ffn_norm, *q_norm, *k_norm; /* q_norm/k_norm: Qwen3, GLM-4.5 */
	const float *q_bias, *k_bias, *v_bias;               /* GLM-4.5's and gpt-oss's attention, or NULL */
	/* gpt-oss: o_proj's bias, a sink logit per head, the router's bias, each expert's
	 * biases ([n_experts][ff], [n_experts][ff], [n_experts][hidden]) */
	const float *o_bias, *sinks, *router_bias, *exp_gate_bias, *exp_up_bias, *exp_down_bias;
	struct moe_wmat wq, wk, wv, wo, router;
	int dense;                           /* a dense MLP layer (Qwen3 mlp_only_layers, DeepSeek's first) */
	struct moe_wmat ffn_gate, ffn_up, ffn_down;
	/* DeepSeek-V3 (deepseek.c): MLA projections (wq_b is the whole q projection when
	 * q_lora_rank is 0); DeepSeek-V3 and GLM-4.5: the routing bias, the always-on
	 * shared experts */
	struct moe_wmat wq_a, wq_b, wkv_a, wkv_b;
	const float *q_a_norm, *kv_a_norm, *exp_bias;
	int has_shared;
	struct moe_wmat sh_gate, sh_up, sh_down;
	/* Qwen3-Next: a Gated DeltaNet layer (linear; wo is its out_proj): the conv channels'
	 * projection (q, k, v of every head), the output gate z, beta and alpha per value head;
	 * conv taps [conv channels][lin_conv], dt bias, A (-exp(A_log)), the gated norm's
	 * weights. In every MoE layer the shared expert's gate, [hidden]. */
	int linear;
	struct moe_wmat w_qkv, w_z, w_beta, w_alpha;
	const float *conv, *dt_bias, *ssm_a, *ssm_norm, *shared_gate;
};

struct moe_model {
	const moe_pack *pack;
	struct moe_hparams hp;
	const moe_tensor *embed;     /* token_embd */
	const float *output_norm;
	struct moe_wmat output;      /* lm head (token_embd when tied) */
	struct moe_layer_weights *layers;
	double *rope_inv;            /* GQA archs: RoPE's inverse frequencies, [rotated dims / 2] */
	double rope_scale;           /* and the factor on cos and sin (YaRN's attention scaling; else 1) */
	struct moe_experts *experts;
	const struct moe_kernel_impl *kernels;
	struct moe_pool *pool;
	moe_tensor *tensors;         /* copies of the directory entries used */
	/* opened through the public API (src/runtime): what it owns and was asked for */
	moe_pack *own_pack;
	struct moe_tokenizer *tok;
	char *chat_template;
	moe_model_params params;     /* n_ctx capped at the model's */
	uint64_t dense_bytes, session_bytes, cache_bytes;
};

int moe_model_load(const moe_pack *pack, int threads, struct moe_model **out);
/* Bytes of the weights that stay resident: everything but the routed experts. */
uint64_t moe_model_dense_bytes(const struct moe_model *m);
void moe_model_free(struct moe_model *m);

struct moe_session {
	const struct moe_model *m;
	size_t ctx, n_past;
	int kv_type;
	size_t kv_dim;               /* values per layer and position in each cache */
	void *k_cache, *v_cache;     /* [layer][kv_cap[layer]][kv_dim], f16 or f32; MLA: k_cache holds
				      * c_kv | k_pe (kv_lora_rank + qk_rope_head_dim), no v_cache */
	size_t *kv_cap, *kv_off;     /* rows of each layer's cache and where they start: ctx rows, or
				      * for a sliding-window layer a ring of window + max_batch - 1
				      * (position p in row p mod cap; moe_kv_at) */
	/* scratch, sized for max_batch tokens */
	size_t max_batch;
	float *x, *xn, *q, *k, *v, *att, *tmp, *router, *moe_out, *gather, *expert_out, *scores;
	float *kv_f32;               /* an f16 cache's or a ring's rows of one layer as f32: K, then V */
	int *topk;
	size_t *routed;              /* the (token, k) pairs routed to one expert */
	float *topw, *topp;          /* routing weights as used, and the router's probabilities */
	float *pair_out;             /* [token][k][hidden]: each routed expert's output */
	struct moe_kscratch ks;
	/* prefetching: guesses for the next prefetch_depth layers from the current
	 * hidden state, plus the experts the last token used there */
	unsigned prefetch_depth;
	float *look_xn, *look_router, *look_score, *look_topp;
	int *look_topk;
	uint32_t *look_list;
	uint32_t *prev_experts;      /* [layer][n_experts_used]: the last token's choices */
	FILE *trace;                 /* if set: one JSON line per token and MoE layer */
	struct moe_replay *replay;   /* if set: routes replayed from a trace (moe_session_routes_from) */
	uint64_t replay_pos;         /* tokens replayed so far */
	int *replay_ids;             /* [n_experts_used]: scratch */
	float *replay_sc;
	struct moe_mla *mla;         /* DeepSeek-V3's attention scratch and YaRN tables */
	float *shared_out;           /* [batch][hidden]: the shared experts' output */
	/* Qwen3-Next: each linear layer's state, [lin_slot[l]]: the last lin_conv - 1 inputs
	 * of its conv (oldest first) and the delta rule's [v heads][k dim][v dim] matrices,
	 * for the position n_past (a new sequence, n_past 0, starts them from zero); a batch's
	 * conv channels, output gates, beta and alpha; gated attention's q|gate rows and gates */
	size_t *lin_slot, lin_layers;
	float *lin_conv_state, *lin_state;
	float *lin_qkv, *lin_last, *lin_z, *lin_b, *lin_a, *q_gated, *gate;
	volatile sig_atomic_t cancel; /* moe_session_cancel: moe_forward stops between layers */
	/* the public API's (src/runtime): the tokens in the context, the last logits */
	int32_t *tokens;
	float *logits;
	int has_logits;
};

int moe_session_create(const struct moe_model *m, size_t ctx, size_t max_batch, int kv_type, struct moe_session **out);
/* Replace the model's expert provider (the mapped one by default); m owns x after. */
void moe_model_use_experts(struct moe_model *m, struct moe_experts *x);
void moe_session_free(struct moe_session *s);
/* Whether going back to pos (<= n_past) leaves every cached position the next tokens
 * see: a sliding window's ring has overwritten the oldest ones, so a rewind by more
 * than its spare rows (max_batch - 1) cannot be continued from. */
int moe_session_can_rewind(const struct moe_session *s, size_t pos);
/* Bytes the session holds (KV cache and scratch), for --ram-budget accounting. */
size_t moe_session_bytes(const struct moe_session *s);

/*
 * Run n tokens at positions n_past .. n_past+n-1 (n <= max_batch). logits, if not NULL,
 * receives [n][vocab] floats (all positions); else only the last position's logits are
 * computed into last_logits (if not NULL).
 */
int moe_forward(struct moe_session *s, const int32_t *tokens, size_t n, float *logits, float *last_logits);
/*
 * One token for each of n different sessions (rows[t] runs tokens[t] at its own
 * next position), as one batch: attention runs per session, the rest (experts
 * above all) once for all rows, with s's scratch (n <= s->max_batch; s may be one
 * of the rows). logits [n][vocab]. On an error no session advances.
 */
int moe_forward_rows(struct moe_session *s, struct moe_session *const *rows, const int32_t *tokens, size_t n,
		     float *logits);

#endif
