/* hfconfig.c - Hugging Face config.json <-> hyperparameters. */
#include "config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "source.h"

/* Integer field: absent leaves *out alone; present but not a non-negative integer is an error. */
static int get_u64(json_t *o, const char *what, const char *key, uint64_t *out)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return 0;
	if (json_is_boolean(v)) {
		*out = json_is_true(v);
		return 0;
	}
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return moe_fail(MOE_EFORMAT, "%s: \"%s\" must be a non-negative integer", what, key);
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

static int get_f64(json_t *o, const char *what, const char *key, double *out)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_number(v))
		return moe_fail(MOE_EFORMAT, "%s: \"%s\" must be a number", what, key);
	*out = json_number_value(v);
	return 0;
}

/* DeepSeek-V3's and GLM-4.5's routed and shared experts (the routing is sigmoid) */
static int sigmoid_moe_fields(json_t *root, const char *what, struct moe_hparams *hp, uint64_t *n_exp)
{
	int rc = get_u64(root, what, "n_routed_experts", n_exp);
	if (!rc) rc = get_u64(root, what, "n_shared_experts", &hp->n_shared);
	if (!rc) rc = get_u64(root, what, "first_k_dense_replace", &hp->first_dense);
	if (!rc) rc = get_u64(root, what, "n_group", &hp->n_group);
	if (!rc) rc = get_u64(root, what, "topk_group", &hp->topk_group);
	hp->routed_scale = 1.0;
	if (!rc) rc = get_f64(root, what, "routed_scaling_factor", &hp->routed_scale);
	return rc;
}

/* rope_scaling's YaRN fields, as DeepSeek-V3 and gpt-oss have them */
static int yarn_fields(json_t *rs, const char *what, struct moe_hparams *hp)
{
	int rc = get_f64(rs, what, "factor", &hp->rope_factor);
	if (!rc) rc = get_f64(rs, what, "original_max_position_embeddings", &hp->rope_orig_max);
	if (!rc) rc = get_f64(rs, what, "beta_fast", &hp->rope_beta_fast);
	if (!rc) rc = get_f64(rs, what, "beta_slow", &hp->rope_beta_slow);
	return rc;
}

/* RoPE on the first partial_rotary_factor of each head (GLM-4.5, Qwen3-Next); newer
 * releases keep it and rope_theta in rope_parameters */
static int partial_rope(json_t *root, const char *what, double partial, struct moe_hparams *hp)
{
	int rc = get_f64(root, what, "partial_rotary_factor", &partial);
	json_t *rp = json_object_get(root, "rope_parameters");
	if (!rc && json_is_object(rp)) {
		rc = get_f64(rp, what, "partial_rotary_factor", &partial);
		if (!rc) rc = get_f64(rp, what, "rope_theta", &hp->rope_theta);
	}
	if (!rc && !(partial > 0 && partial <= 1))
		rc = moe_fail(MOE_EFORMAT, "%s: \"partial_rotary_factor\" %g is not in (0, 1]", what, partial);
	if (!hp->head_dim && hp->n_heads)
		hp->head_dim = hp->hidden / hp->n_heads;
	if (!rc) /* partial in (0, 1]: no larger than head_dim */
		hp->rope_dims = (uint64_t)((double)hp->head_dim * partial);
	return rc;
}

/* Qwen3-Next's layer_types ("linear_attention" / "full_attention"), or without them
 * every full_attention_interval-th layer full (4 by default) */
static int linear_layers(json_t *root, const char *what, struct moe_hparams *hp)
{
	json_t *types = json_object_get(root, "layer_types"), *v;
	size_t i;
	if (json_is_array(types)) {
		json_array_foreach(types, i, v) {
			if (!json_is_string(v) || i >= MOE_MAX_LAYERS)
				return moe_fail(MOE_EFORMAT, "%s: layer_types[%zu] is not an attention type", what, i);
			hp->linear[i] = strcmp(json_string_value(v), "linear_attention") == 0;
		}
		return 0;
	}
	uint64_t every = 4;
	int rc = get_u64(root, what, "full_attention_interval", &every);
	if (!rc && !every)
		rc = moe_fail(MOE_EFORMAT, "%s: \"full_attention_interval\" is 0", what);
	for (i = 0; !rc && i < MOE_MAX_LAYERS; i++)
		hp->linear[i] = (i + 1) % every != 0;
	return rc;
}

int hf_config_parse(const char *text, size_t len, const char *what, struct moe_hparams *hp)
{
	json_error_t jerr;
	json_t *doc = json_loadb(text, len, 0, &jerr), *root = doc; /* root: where the model's fields are */
	if (!doc)
		return moe_fail(MOE_EFORMAT, "%s:%d:%d: malformed JSON: %s", what, jerr.line, jerr.column, jerr.text);
	int rc = 0;
	memset(hp, 0, sizeof *hp);
	json_t *mt = json_object_get(root, "model_type");
	if (!json_is_object(root) || !json_is_string(mt)) {
		rc = moe_fail(MOE_EFORMAT, "%s: no \"model_type\"", what);
		goto out;
	}
	const char *type = json_string_value(mt);
	json_t *top = doc; /* the whole config: tie_word_embeddings may sit there */
	if (strcmp(type, "qwen3_5_moe") == 0 || strcmp(type, "qwen3_5_moe_text") == 0) {
		/* Qwen3.5-MoE: Qwen3-Next's architecture; the released config nests the text
		 * model's fields in text_config (the vision tower is not imported) */
		json_t *tc = json_object_get(root, "text_config");
		if (json_is_object(tc))
			root = tc;
		type = "qwen3_next";
	}
	hp->arch = moe_arch_from_name(type);
	if (hp->arch < 0) {
		rc = moe_fail(MOE_EUNSUPPORTED, "%s: model_type \"%s\" is not supported (mixtral, qwen3_moe, deepseek_v3, "
			      "glm4_moe, gpt_oss, qwen3_next, qwen3_5_moe are)", what, type);
		goto out;
	}
	uint64_t ff = 0, moe_ff = 0, n_exp = 0;
	hp->rope_theta = 10000.0;
	hp->rms_eps = 1e-6;
	hp->max_pos = 4096;
#define U(k, f) if (!rc) rc = get_u64(root, what, k, f)
#define D(k, f) if (!rc) rc = get_f64(root, what, k, f)
	U("num_hidden_layers", &hp->n_layers);
	U("hidden_size", &hp->hidden);
	U("num_attention_heads", &hp->n_heads);
	U("num_key_value_heads", &hp->n_kv_heads);
	U("head_dim", &hp->head_dim);
	U("vocab_size", &hp->vocab);
	U("num_experts_per_tok", &hp->n_experts_used);
	U("intermediate_size", &ff);
	U("moe_intermediate_size", &moe_ff);
	U("max_position_embeddings", &hp->max_pos);
	if (!rc) rc = get_u64(top, what, "tie_word_embeddings", &hp->tie_embeddings);
	U("tie_word_embeddings", &hp->tie_embeddings);
	U("norm_topk_prob", &hp->norm_topk_prob);
	D("rope_theta", &hp->rope_theta);
	D("rms_norm_eps", &hp->rms_eps);
	switch (hp->arch) {
	case MOE_ARCH_MIXTRAL:
		U("num_local_experts", &n_exp);
		hp->expert_ff = ff;
		hp->norm_topk_prob = 1; /* Mixtral renormalizes its top-k */
		break;
	case MOE_ARCH_QWEN3_NEXT: /* transformers' Qwen3NextConfig and Qwen3_5MoeTextConfig */
		U("linear_num_key_heads", &hp->lin_k_heads);
		U("linear_num_value_heads", &hp->lin_v_heads);
		U("linear_key_head_dim", &hp->lin_k_dim);
		U("linear_value_head_dim", &hp->lin_v_dim);
		hp->lin_conv = 4;
		U("linear_conv_kernel_dim", &hp->lin_conv);
		U("shared_expert_intermediate_size", &hp->shared_ff);
		hp->norm_topk_prob = 1; /* Qwen3.5's router always renormalizes; Qwen3-Next's says so */
		U("norm_topk_prob", &hp->norm_topk_prob);
		hp->qk_norm = 1;
		if (!rc) rc = linear_layers(root, what, hp);
		if (!rc) rc = partial_rope(root, what, 0.25, hp);
		__attribute__((fallthrough)); /* experts and MLP layers as Qwen3-MoE's */
	case MOE_ARCH_QWEN3_MOE: {
		U("num_experts", &n_exp);
		hp->sparse_step = 1;
		U("decoder_sparse_step", &hp->sparse_step);
		hp->expert_ff = moe_ff;
		hp->dense_ff = ff;
		json_t *only = json_object_get(root, "mlp_only_layers");
		size_t i;
		json_t *v;
		json_array_foreach(only, i, v) {
			if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= MOE_MAX_LAYERS) {
				rc = moe_fail(MOE_EFORMAT, "%s: mlp_only_layers[%zu] is not a layer index", what, i);
				break;
			}
			hp->mlp_only[json_integer_value(v)] = 1;
		}
		break;
	}
	case MOE_ARCH_DEEPSEEK_V3: {
		if (!rc) rc = sigmoid_moe_fields(root, what, hp, &n_exp);
		U("q_lora_rank", &hp->q_lora_rank);
		U("kv_lora_rank", &hp->kv_lora_rank);
		U("qk_nope_head_dim", &hp->qk_nope_dim);
		U("qk_rope_head_dim", &hp->qk_rope_dim);
		U("v_head_dim", &hp->v_head_dim);
		json_t *sf = json_object_get(root, "scoring_func");
		hp->scoring_sigmoid = json_is_string(sf) && strcmp(json_string_value(sf), "sigmoid") == 0;
		json_t *rs = json_object_get(root, "rope_scaling");
		if (json_is_object(rs)) {
			if (!rc) rc = yarn_fields(rs, what, hp);
			if (!rc) rc = get_f64(rs, what, "mscale", &hp->rope_mscale);
			if (!rc) rc = get_f64(rs, what, "mscale_all_dim", &hp->rope_mscale_all);
		}
		hp->expert_ff = moe_ff;
		hp->dense_ff = ff;
		break;
	}
	case MOE_ARCH_GLM4_MOE: { /* transformers' Glm4MoeConfig, its defaults where a field is absent */
		hp->n_group = hp->topk_group = 1;
		if (!rc) rc = sigmoid_moe_fields(root, what, hp, &n_exp);
		U("attention_bias", &hp->attn_bias);
		U("use_qk_norm", &hp->qk_norm);
		hp->norm_topk_prob = 1;
		U("norm_topk_prob", &hp->norm_topk_prob);
		hp->scoring_sigmoid = 1;
		if (!rc) rc = partial_rope(root, what, 0.5, hp);
		hp->expert_ff = moe_ff;
		hp->dense_ff = ff;
		break;
	}
	case MOE_ARCH_GPT_OSS: { /* transformers' GptOssConfig */
		U("num_local_experts", &n_exp);
		U("experts_per_token", &hp->n_experts_used);
		U("num_experts_per_tok", &hp->n_experts_used);
		U("sliding_window", &hp->sliding_window);
		hp->attn_bias = 1;
		hp->expert_ff = ff;
		hp->swiglu_limit = 7.0;
		D("swiglu_limit", &hp->swiglu_limit);
		json_t *types = json_object_get(root, "layer_types");
		size_t i;
		json_t *v;
		if (json_is_array(types)) {
			json_array_foreach(types, i, v) {
				if (!json_is_string(v) || i >= MOE_MAX_LAYERS) {
					rc = moe_fail(MOE_EFORMAT, "%s: layer_types[%zu] is not an attention type", what, i);
					break;
				}
				hp->sliding[i] = strcmp(json_string_value(v), "sliding_attention") == 0;
			}
		} else {
			for (i = 0; i < MOE_MAX_LAYERS; i += 2) /* the default: even layers slide */
				hp->sliding[i] = 1;
		}
		json_t *rs = json_object_get(root, "rope_scaling");
		hp->rope_truncate = 1;
		if (json_is_object(rs)) {
			if (!rc) rc = yarn_fields(rs, what, hp);
			if (!rc) rc = get_u64(rs, what, "truncate", &hp->rope_truncate);
		}
		break;
	}
	}
#undef U
#undef D
	if (rc)
		goto out;
	hp->n_experts = n_exp;
	if (hp->arch != MOE_ARCH_DEEPSEEK_V3) {
		if (!hp->n_kv_heads)
			hp->n_kv_heads = hp->n_heads;
		if (!hp->head_dim && hp->n_heads)
			hp->head_dim = hp->hidden / hp->n_heads;
	}
	rc = moe_hparams_check(hp);
	if (rc)
		rc = moe_fail(rc, "%s: %s", what, moe_last_error());
out:
	json_decref(doc);
	return rc;
}

/* DeepSeek-V3's and GLM-4.5's routed and shared experts */
static void sigmoid_moe_json(json_t *o, const struct moe_hparams *hp)
{
	json_object_set_new(o, "n_routed_experts", json_integer((json_int_t)hp->n_experts));
	json_object_set_new(o, "n_shared_experts", json_integer((json_int_t)hp->n_shared));
	json_object_set_new(o, "moe_intermediate_size", json_integer((json_int_t)hp->expert_ff));
	json_object_set_new(o, "intermediate_size", json_integer((json_int_t)hp->dense_ff));
	json_object_set_new(o, "first_k_dense_replace", json_integer((json_int_t)hp->first_dense));
	json_object_set_new(o, "n_group", json_integer((json_int_t)hp->n_group));
	json_object_set_new(o, "topk_group", json_integer((json_int_t)hp->topk_group));
	json_object_set_new(o, "routed_scaling_factor", json_real(hp->routed_scale));
	json_object_set_new(o, "norm_topk_prob", json_boolean(hp->norm_topk_prob));
	json_object_set_new(o, "num_nextn_predict_layers", json_integer(0)); /* not imported */
}

/* rope_scaling's YaRN fields, as DeepSeek-V3 and gpt-oss write them */
static json_t *yarn_json(const struct moe_hparams *hp)
{
	json_t *rs = json_object();
	json_object_set_new(rs, "rope_type", json_string("yarn"));
	json_object_set_new(rs, "factor", json_real(hp->rope_factor));
	json_object_set_new(rs, "original_max_position_embeddings", json_integer((json_int_t)hp->rope_orig_max));
	json_object_set_new(rs, "beta_fast", json_real(hp->rope_beta_fast));
	json_object_set_new(rs, "beta_slow", json_real(hp->rope_beta_slow));
	return rs;
}

char *hf_config_write(const struct moe_hparams *hp)
{
	json_t *o = json_object();
	json_object_set_new(o, "model_type", json_string(moe_arch_name(hp->arch)));
#define SETU(k, v) json_object_set_new(o, k, json_integer((json_int_t)(v)))
#define SETF(k, v) json_object_set_new(o, k, json_real(v))
	SETU("num_hidden_layers", hp->n_layers);
	SETU("hidden_size", hp->hidden);
	SETU("num_attention_heads", hp->n_heads);
	SETU("vocab_size", hp->vocab);
	SETU("num_experts_per_tok", hp->n_experts_used);
	SETU("max_position_embeddings", hp->max_pos);
	json_object_set_new(o, "tie_word_embeddings", json_boolean(hp->tie_embeddings));
	SETF("rope_theta", hp->rope_theta);
	SETF("rms_norm_eps", hp->rms_eps);
	switch (hp->arch) {
	case MOE_ARCH_MIXTRAL:
		SETU("num_key_value_heads", hp->n_kv_heads);
		SETU("head_dim", hp->head_dim);
		SETU("num_local_experts", hp->n_experts);
		SETU("intermediate_size", hp->expert_ff);
		break;
	case MOE_ARCH_QWEN3_MOE: {
		SETU("num_key_value_heads", hp->n_kv_heads);
		SETU("head_dim", hp->head_dim);
		SETU("num_experts", hp->n_experts);
		SETU("moe_intermediate_size", hp->expert_ff);
		SETU("intermediate_size", hp->dense_ff);
		SETU("decoder_sparse_step", hp->sparse_step);
		json_object_set_new(o, "norm_topk_prob", json_boolean(hp->norm_topk_prob));
		json_t *only = json_array();
		for (uint64_t l = 0; l < hp->n_layers; l++)
			if (hp->mlp_only[l])
				json_array_append_new(only, json_integer((json_int_t)l));
		json_object_set_new(o, "mlp_only_layers", only);
		break;
	}
	case MOE_ARCH_DEEPSEEK_V3: {
		sigmoid_moe_json(o, hp);
		SETU("q_lora_rank", hp->q_lora_rank);
		SETU("kv_lora_rank", hp->kv_lora_rank);
		SETU("qk_nope_head_dim", hp->qk_nope_dim);
		SETU("qk_rope_head_dim", hp->qk_rope_dim);
		SETU("v_head_dim", hp->v_head_dim);
		json_object_set_new(o, "scoring_func", json_string(hp->scoring_sigmoid ? "sigmoid" : "softmax"));
		if (hp->rope_factor > 0) {
			json_t *rs = yarn_json(hp);
			json_object_set_new(rs, "mscale", json_real(hp->rope_mscale));
			json_object_set_new(rs, "mscale_all_dim", json_real(hp->rope_mscale_all));
			json_object_set_new(o, "rope_scaling", rs);
		}
		break;
	}
	case MOE_ARCH_QWEN3_NEXT: {
		SETU("num_key_value_heads", hp->n_kv_heads);
		SETU("head_dim", hp->head_dim);
		SETF("partial_rotary_factor", (double)moe_rope_dims(hp) / (double)hp->head_dim);
		SETU("num_experts", hp->n_experts);
		SETU("moe_intermediate_size", hp->expert_ff);
		SETU("shared_expert_intermediate_size", hp->shared_ff);
		SETU("intermediate_size", hp->dense_ff);
		SETU("decoder_sparse_step", hp->sparse_step);
		json_object_set_new(o, "norm_topk_prob", json_boolean(hp->norm_topk_prob));
		SETU("linear_num_key_heads", hp->lin_k_heads);
		SETU("linear_num_value_heads", hp->lin_v_heads);
		SETU("linear_key_head_dim", hp->lin_k_dim);
		SETU("linear_value_head_dim", hp->lin_v_dim);
		SETU("linear_conv_kernel_dim", hp->lin_conv);
		json_t *types = json_array();
		for (uint64_t l = 0; l < hp->n_layers; l++)
			json_array_append_new(types, json_string(hp->linear[l] ? "linear_attention" : "full_attention"));
		json_object_set_new(o, "layer_types", types);
		break;
	}
	case MOE_ARCH_GLM4_MOE:
		SETU("num_key_value_heads", hp->n_kv_heads);
		SETU("head_dim", hp->head_dim);
		SETF("partial_rotary_factor", (double)moe_rope_dims(hp) / (double)hp->head_dim);
		json_object_set_new(o, "attention_bias", json_boolean(hp->attn_bias));
		json_object_set_new(o, "use_qk_norm", json_boolean(hp->qk_norm));
		sigmoid_moe_json(o, hp);
		break;
	case MOE_ARCH_GPT_OSS: {
		SETU("num_key_value_heads", hp->n_kv_heads);
		SETU("head_dim", hp->head_dim);
		SETU("num_local_experts", hp->n_experts);
		SETU("intermediate_size", hp->expert_ff);
		SETU("sliding_window", hp->sliding_window);
		SETF("swiglu_limit", hp->swiglu_limit);
		json_object_set_new(o, "attention_bias", json_true());
		json_t *types = json_array();
		for (uint64_t l = 0; l < hp->n_layers; l++)
			json_array_append_new(types, json_string(hp->sliding[l] ? "sliding_attention" : "full_attention"));
		json_object_set_new(o, "layer_types", types);
		if (hp->rope_factor > 0) {
			json_t *rs = yarn_json(hp);
			json_object_set_new(rs, "truncate", json_boolean(hp->rope_truncate));
			json_object_set_new(o, "rope_scaling", rs);
		}
		break;
	}
	}
#undef SETU
#undef SETF
	char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(o);
	return s;
}
