/* test_invariants.c - a pack whose checksums are all right but whose contents do not
 * add up is refused when its model is loaded, by an error naming the field, before
 * any weight is read: hyperparameters out of range, group routing that cannot be
 * done, tensors or experts of another shape than the hyperparameters imply (the
 * expert blobs of a model with a larger hidden size), an expert table with experts
 * missing or foreign. Each pack is written with the library's own pack writer. */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "check.h"
#include "engine/engine.h"
#include "model/arch.h"
#include "moe.h"
#include "pack/meta.h"
#include "pack/writer.h"

static char path[256];
static int nan_routers; /* write the routers' weights as NaN */

static struct moe_hparams mixtral(void)
{
	struct moe_hparams hp = {.arch = MOE_ARCH_MIXTRAL, .n_layers = 2, .hidden = 64, .n_heads = 4, .n_kv_heads = 2,
				 .head_dim = 16, .vocab = 96, .n_experts = 4, .n_experts_used = 2, .expert_ff = 96,
				 .max_pos = 128, .rope_theta = 1e6, .rms_eps = 1e-5, .norm_topk_prob = 1};
	return hp;
}

static struct moe_hparams deepseek(void)
{
	struct moe_hparams hp = {.arch = MOE_ARCH_DEEPSEEK_V3, .n_layers = 2, .hidden = 64, .n_heads = 4, .vocab = 96,
				 .n_experts = 8, .n_experts_used = 2, .expert_ff = 32, .dense_ff = 64, .max_pos = 128,
				 .rope_theta = 1e4, .rms_eps = 1e-6, .norm_topk_prob = 1, .first_dense = 1, .n_shared = 1,
				 .n_group = 4, .topk_group = 2, .kv_lora_rank = 32, .qk_nope_dim = 16, .qk_rope_dim = 8,
				 .v_head_dim = 16, .routed_scale = 2.5, .scoring_sigmoid = 1};
	return hp;
}

/* A pack whose metadata says `meta` and whose tensors and experts have the shapes
 * `shapes` implies (minus `drop` experts at the end), f32 throughout, small values. */
static int write_model(const struct moe_hparams *meta, const struct moe_hparams *shapes, size_t drop)
{
	struct moe_meta_writer m;
	meta_init(&m);
	moe_hparams_to_meta(meta, &m);
	CHECK(meta_finish(&m) == 0, "meta");
	struct moe_packw *w;
	int rc = packw_create(path, 1, 4096, &w);
	CHECK(rc == 0, "create %s", path);
	packw_set_meta(w, &m, 0);
	meta_free(&m);
	const size_t n = moe_arch_dense_tensors(shapes, NULL, 0);
	struct moe_tensor_spec *spec = calloc(n, sizeof *spec);
	moe_arch_dense_tensors(shapes, spec, n);
	size_t declared = 0;
	for (size_t i = 0; i < n; i++) {
		if (spec[i].optional)
			continue;
		uint64_t dims[2] = {spec[i].dims[0], spec[i].n_dims == 2 ? spec[i].dims[1] : 0};
		CHECK(packw_declare_tensor(w, spec[i].name, MOE_TYPE_F32, dims) == (int)declared, "declare %s",
		      spec[i].name);
		declared++;
	}
	struct moe_tensor_spec ex[3];
	uint64_t first = 0;
	while (!moe_layer_is_moe(shapes, first))
		first++;
	moe_arch_expert_tensors(shapes, first, 0, ex);
	const int type[3] = {MOE_TYPE_F32, MOE_TYPE_F32, MOE_TYPE_F32};
	const uint64_t rows[3] = {ex[0].dims[0], ex[1].dims[0], ex[2].dims[0]};
	const uint64_t cols[3] = {ex[0].dims[1], ex[1].dims[1], ex[2].dims[1]};
	const int layout = packw_declare_expert_layout(w, type, rows, cols);
	size_t n_experts = 0;
	for (uint64_t l = 0; l < shapes->n_layers; l++)
		for (uint64_t e = 0; moe_layer_is_moe(shapes, l) && e < shapes->n_experts; e++)
			n_experts++;
	n_experts -= drop;
	for (size_t i = 0, k = 0; k < n_experts; i++) {
		const uint64_t l = first + i / shapes->n_experts;
		if (moe_layer_is_moe(shapes, l))
			packw_declare_expert(w, (uint32_t)l, (uint32_t)(i % shapes->n_experts), layout), k++;
	}
	size_t t = 0;
	for (size_t i = 0; i < n && !rc; i++) {
		if (spec[i].optional)
			continue;
		const uint64_t count = spec[i].dims[0] * (spec[i].n_dims == 2 ? spec[i].dims[1] : 1);
		float *v = malloc(count * sizeof *v);
		for (uint64_t j = 0; j < count; j++)
			v[j] = spec[i].kind == MOE_KIND_NORM ? 1.0f
			       : spec[i].kind == MOE_KIND_ROUTER && nan_routers ? NAN
			       : (float)((j * 7919 % 201) - 100) * 1e-3f;
		rc = packw_tensor_append(w, (int)t++, v, count * sizeof *v);
		free(v);
	}
	const uint64_t raw = packw_expert_raw_size(w, layout);
	float *blob = calloc(1, raw);
	for (size_t i = 0; i < n_experts && !rc; i++)
		rc = packw_expert_write(w, i, blob, raw, MOE_CODEC_RAW, XXH3_64bits(blob, raw));
	free(blob);
	free(spec);
	if (rc) {
		packw_abort(w);
		return rc;
	}
	return packw_finish(w);
}

/* write, open (the reader's own checks pass: every checksum is right), load */
static void expect(const char *label, const struct moe_hparams *meta, const struct moe_hparams *shapes, size_t drop,
		   const char *words)
{
	CHECK(write_model(meta, shapes, drop) == 0, "%s: write: %s", label, moe_last_error());
	moe_pack *pk;
	int rc = moe_pack_open(path, &pk);
	CHECK(rc == 0, "%s: open: %s", label, moe_last_error());
	if (rc)
		return;
	CHECK(moe_pack_verify(pk, NULL, NULL) == 0, "%s: verify: %s", label, moe_last_error());
	struct moe_model *m = NULL;
	rc = moe_model_load(pk, 1, &m);
	if (!words) {
		CHECK(rc == 0, "%s: load: %s", label, moe_last_error());
		if (!rc) { /* and it runs */
			struct moe_session *s;
			CHECK(moe_session_create(m, 16, 4, MOE_KV_F32, &s) == 0, "%s: session", label);
			const int32_t ids[3] = {1, 2, 3};
			float *logits = malloc(meta->vocab * sizeof *logits);
			CHECK(moe_forward(s, ids, 3, NULL, logits) == 0, "%s: forward: %s", label, moe_last_error());
			CHECK(isfinite(logits[0]), "%s: finite logits", label);
			free(logits);
			moe_session_free(s);
		}
	} else {
		CHECK(rc != 0 && strstr(moe_last_error(), words), "%s: expected an error with \"%s\", got %d \"%s\"",
		      label, words, rc, rc ? moe_last_error() : "");
	}
	moe_model_free(m);
	moe_pack_close(pk);
}

int main(void)
{
	snprintf(path, sizeof path, "%s/moe-invariants-%d.moe", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
		 (int)getpid());
	struct moe_hparams mx = mixtral(), ds = deepseek(), a, b;
	/* the writer and the model are right: loads and runs */
	expect("mixtral", &mx, &mx, 0, NULL);
	expect("deepseek", &ds, &ds, 0, NULL);

	/* shapes that are not those of the hyperparameters */
	b = mx, b.hidden = 128;
	expect("every tensor and expert of a larger hidden size", &mx, &b, 0,
	       "tensor token_embd is [96, 128]; the hyperparameters imply [96, 64]");
	b = mx, b.expert_ff = 192;
	expect("experts of a larger expert_ff", &mx, &b, 0, "expert matrix 0 (gate) is [192, 64]; the hyperparameters imply [96, 64]");
	b = mx, b.n_experts = 8;
	expect("more experts than n_experts", &mx, &b, 0, "tensor blk.0.ffn_gate_inp is [8, 64]; the hyperparameters imply [4, 64]");
	expect("an expert missing", &mx, &mx, 1, "7 experts in the expert table; the hyperparameters imply 8");
	b = ds, b.n_shared = 2;
	expect("a shared expert of another size", &ds, &b, 0, "tensor blk.1.ffn_gate_shexp is [64, 64]; the hyperparameters imply [32, 64]");

	/* hyperparameters out of range, shapes consistent with them where they have any */
	a = ds, a.topk_group = 5;
	expect("topk_group > n_group", &a, &a, 0, "topk_group = 5 is out of range (0..4)");
	a = ds, a.n_group = 8, a.topk_group = 1, a.n_experts_used = 2;
	expect("group routing that cannot fill the experts per token", &a, &a, 0, "n_experts_used = 2: more than the 1 experts");
	a = ds, a.n_experts = 512, a.n_group = 512, a.topk_group = 1, a.n_experts_used = 1;
	expect("n_group over 256", &a, &a, 0, "n_group = 512 is out of range (0..256)");
	a = mx, a.head_dim = 15, a.n_heads = 4;
	expect("odd head_dim", &a, &a, 0, "head_dim = 15: rotary embeddings need an even number");
	a = mx, a.n_experts_used = 5;
	expect("experts per token > experts", &a, &a, 0, "n_experts_used = 5 is out of range (1..4)");
	a = mx, a.rms_eps = NAN;
	expect("rms_eps NaN", &a, &a, 0, "rms_eps");
	a = mx, a.rope_theta = INFINITY;
	expect("rope_theta infinite", &a, &a, 0, "rope_theta = inf is out of range");
	a = mx, a.norm_topk_prob = 7;
	expect("a flag that is not 0 or 1", &a, &a, 0, "norm_topk_prob = 7 is out of range (0..1)");
	a = ds, a.first_dense = 3;
	expect("first_dense past the layers", &a, &a, 0, "first_dense = 3 is out of range (0..2)");
	/* weights that are NaN load (nothing checks values) and run without a wrong
	 * memory access: routing still picks distinct experts (regression: a fuzzed pack
	 * routed every token to expert 0 twice, overflowing the gather buffer) */
	nan_routers = 1;
	for (int arch = 0; arch < 2; arch++) {
		struct moe_hparams hp = arch ? deepseek() : mixtral();
		CHECK(write_model(&hp, &hp, 0) == 0, "NaN routers: write");
		moe_pack *pk;
		struct moe_model *m;
		struct moe_session *s;
		if (moe_pack_open(path, &pk) || moe_model_load(pk, 1, &m)) {
			CHECK(0, "NaN routers: load: %s", moe_last_error());
			continue;
		}
		CHECK(moe_session_create(m, 16, 4, MOE_KV_F32, &s) == 0, "NaN routers: session");
		const int32_t ids[4] = {1, 2, 3, 4};
		float *logits = malloc(hp.vocab * sizeof *logits);
		CHECK(moe_forward(s, ids, 4, NULL, logits) == 0, "NaN routers: forward: %s", moe_last_error());
		const size_t K = hp.n_experts_used;
		for (size_t t = 0; t < 4; t++)
			for (size_t i = 0; i < K; i++)
				for (size_t j = i + 1; j < K; j++)
					CHECK(s->topk[t * K + i] != s->topk[t * K + j], "%s: token %zu routed twice to expert %d",
					      arch ? "deepseek" : "mixtral", t, s->topk[t * K + i]);
		free(logits);
		moe_session_free(s);
		moe_model_free(m);
		moe_pack_close(pk);
	}
	unlink(path);
	return check_report("test_invariants");
}
