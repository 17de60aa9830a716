/* safetensors.c - a Hugging Face folder: config.json, tokenizer files, and
 * one or several .safetensors files (model.safetensors.index.json). */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/error.h"
#include "common/fileio.h"
#include "pack.h"
#include "quant/quant.h"
#include "source.h"

#define MAX_HEADER (256u << 20) /* DeepSeek-V3 shards have ~1 MB headers */

static int dtype_from_name(const char *s, uint64_t *size)
{
	static const struct { const char *name; int dtype; uint64_t size; } map[] = {
		{"F32", SRC_F32, 4}, {"F16", SRC_F16, 2}, {"BF16", SRC_BF16, 2},
		{"F64", SRC_F64, 8}, {"F8_E4M3", SRC_F8_E4M3, 1}, {"U8", SRC_U8, 1},
	};
	for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
		if (strcmp(s, map[i].name) == 0) {
			*size = map[i].size;
			return map[i].dtype;
		}
	return -1;
}

static int parse_file(struct moe_source *src, const char *path)
{
	int fi = src_add_file(src, path);
	if (fi < 0)
		return fi;
	struct src_file *f = &src->files[fi];
	uint64_t hlen;
	if (f->size < 8)
		return moe_fail(MOE_EFORMAT, "%s: truncated (%llu bytes, no header length)", path, (unsigned long long)f->size);
	int rc = moe_pread_full(f->fd, &hlen, 8, 0, path);
	if (rc)
		return rc;
	if (hlen > f->size - 8 || hlen > MAX_HEADER)
		return moe_fail(MOE_EFORMAT, "%s: header length %llu runs past the end of the file (%llu bytes)", path,
				(unsigned long long)hlen, (unsigned long long)f->size);
	char *hdr = malloc(hlen + 1);
	if (!hdr)
		return moe_fail(MOE_ENOMEM, "out of memory");
	if ((rc = moe_pread_full(f->fd, hdr, hlen, 8, path))) {
		free(hdr);
		return rc;
	}
	f->header_xxh3 = XXH3_64bits(hdr, hlen);
	json_error_t jerr;
	json_t *root = json_loadb(hdr, hlen, 0, &jerr);
	free(hdr);
	if (!root)
		return moe_fail(MOE_EFORMAT, "%s: header JSON malformed at byte %d (line %d, column %d): %s", path,
				jerr.position + 8, jerr.line, jerr.column, jerr.text);
	if (!json_is_object(root)) {
		json_decref(root);
		return moe_fail(MOE_EFORMAT, "%s: header is not a JSON object", path);
	}
	const uint64_t data0 = 8 + hlen, data_len = f->size - data0;
	const char *name;
	json_t *t;
	json_object_foreach(root, name, t) {
		if (strcmp(name, "__metadata__") == 0)
			continue;
		json_t *jd = json_object_get(t, "dtype"), *js = json_object_get(t, "shape"),
		       *jo = json_object_get(t, "data_offsets");
		if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2) {
			rc = moe_fail(MOE_EFORMAT, "%s: tensor %s: needs dtype, shape and data_offsets [begin, end]", path, name);
			break;
		}
		uint64_t esize;
		int dtype = dtype_from_name(json_string_value(jd), &esize);
		if (dtype < 0) {
			rc = moe_fail(MOE_EUNSUPPORTED, "%s: tensor %s: dtype %s is not supported (F32, F16, BF16, F64, F8_E4M3, U8 are)",
				      path, name, json_string_value(jd));
			break;
		}
		/* up to 4 dimensions (gpt-oss's stacked experts): the leading ones make the rows */
		size_t nd = json_array_size(js);
		if (nd < 1 || nd > 4) {
			rc = moe_fail(MOE_EUNSUPPORTED, "%s: tensor %s: %zu dimensions (1 to 4 expected)", path, name, nd);
			break;
		}
		uint64_t dims[2] = {1, 1};
		for (size_t d = 0; d < nd && !rc; d++) {
			json_t *v = json_array_get(js, d);
			if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > (1ll << 40))
				rc = moe_fail(MOE_EFORMAT, "%s: tensor %s: bad shape", path, name);
			else if (d + 1 == nd && nd > 1)
				dims[1] = (uint64_t)json_integer_value(v);
			else if (__builtin_mul_overflow(dims[0], (uint64_t)json_integer_value(v), &dims[0]))
				rc = moe_fail(MOE_EFORMAT, "%s: tensor %s: bad shape", path, name);
		}
		if (rc)
			break;
		json_t *b = json_array_get(jo, 0), *e = json_array_get(jo, 1);
		if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 ||
		    json_integer_value(e) < json_integer_value(b) || (uint64_t)json_integer_value(e) > data_len) {
			rc = moe_fail(MOE_EFORMAT, "%s: tensor %s: data_offsets outside the file's %llu data bytes", path, name,
				      (unsigned long long)data_len);
			break;
		}
		uint64_t begin = (uint64_t)json_integer_value(b), end = (uint64_t)json_integer_value(e);
		uint64_t bytes;
		if (__builtin_mul_overflow(dims[0], dims[1], &bytes) || __builtin_mul_overflow(bytes, esize, &bytes) ||
		    end - begin != bytes) {
			rc = moe_fail(MOE_EFORMAT, "%s: tensor %s: %llu bytes for shape [%llu, %llu] of %s", path, name,
				      (unsigned long long)(end - begin), (unsigned long long)dims[0],
				      (unsigned long long)dims[1], json_string_value(jd));
			break;
		}
		struct src_entry *se = src_add(src, name);
		if (!se) {
			rc = moe_fail(MOE_ENOMEM, "out of memory");
			break;
		}
		se->dtype = dtype;
		se->n_dims = (int)nd; /* more than 2: used only through views (gpt_oss_views) */
		se->rows = dims[0];
		se->cols = dims[1];
		se->file = fi;
		se->offset = data0 + begin;
		if (dtype == SRC_F8_E4M3) {
			/* DeepSeek-V3: W.weight has its block scales in W.weight_scale_inv */
			size_t n = strlen(name) + 16;
			se->scale_name = malloc(n);
			if (!se->scale_name) {
				rc = moe_fail(MOE_ENOMEM, "out of memory");
				break;
			}
			snprintf(se->scale_name, n, "%s_scale_inv", name);
		}
	}
	json_decref(root);
	return rc;
}

static int has_suffix(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && strcmp(s + a - b, suf) == 0;
}

static int is_safetensors(const struct dirent *d) { return has_suffix(d->d_name, ".safetensors"); }

static char *join(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s/%s", dir, name);
	return p;
}

/* Optional side file: absent is fine, unreadable is not. */
static int read_optional(const char *dir, const char *name, char **data, size_t *len)
{
	char *p = join(dir, name);
	if (!p)
		return moe_fail(MOE_ENOMEM, "out of memory");
	int rc = moe_read_file(p, data, len);
	free(p);
	if (rc == MOE_ENOTFOUND) {
		*data = NULL;
		*len = 0;
		return 0;
	}
	return rc;
}

/* Shard files named by model.safetensors.index.json, each once, in the order first seen. */
static int open_sharded(struct moe_source *src, const char *dir, const char *text, size_t len, const char *what)
{
	json_error_t jerr;
	json_t *root = json_loadb(text, len, 0, &jerr);
	if (!root)
		return moe_fail(MOE_EFORMAT, "%s:%d:%d: malformed JSON: %s", what, jerr.line, jerr.column, jerr.text);
	json_t *wm = json_object_get(root, "weight_map");
	int rc = 0;
	if (!json_is_object(wm)) {
		rc = moe_fail(MOE_EFORMAT, "%s: no \"weight_map\" object", what);
		goto out;
	}
	const char **seen = calloc(json_object_size(wm) + 1, sizeof *seen);
	size_t n_seen = 0;
	const char *key;
	json_t *v;
	json_object_foreach(wm, key, v) {
		if (!json_is_string(v) || strchr(json_string_value(v), '/')) {
			rc = moe_fail(MOE_EFORMAT, "%s: weight_map[\"%s\"] is not a file name in the folder", what, key);
			break;
		}
		const char *file = json_string_value(v);
		size_t i;
		for (i = 0; i < n_seen && strcmp(seen[i], file); i++)
			;
		if (i < n_seen)
			continue;
		seen[n_seen++] = file;
		char *p = join(dir, file);
		rc = p ? parse_file(src, p) : moe_fail(MOE_ENOMEM, "out of memory");
		free(p);
		if (rc)
			break;
	}
	free(seen);
out:
	json_decref(root);
	return rc;
}

static int open_folder(const char *dir, struct moe_source *src);

/*
 * gpt-oss as released: each layer's experts are fused, mlp.experts.gate_up_proj_blocks
 * [E, 2I, H/32, 16] and _scales [E, 2I, H/32] (MXFP4, gate rows even and up rows odd),
 * down_proj_blocks/_scales [E, H, I/32 ...], biases gate_up_proj_bias [E, 2I] and
 * down_proj_bias [E, H]. Each expert's gate, up and down become entries of the names
 * the other families have, reading their rows of the pair; the biases are split the
 * same way. Nothing is copied.
 */
static int gpt_oss_views(struct moe_source *src)
{
	const struct moe_hparams *hp = &src->hp;
	const uint64_t E = hp->n_experts, ff = hp->expert_ff, H = hp->hidden;
	char name[192], base[192], scale[192];
	for (uint64_t l = 0; l < hp->n_layers; l++) {
		snprintf(name, sizeof name, "model.layers.%llu.mlp.experts.gate_up_proj", (unsigned long long)l);
		if (src_find(src, name))
			return moe_fail(MOE_EUNSUPPORTED, "%s: %s is a float tensor: gpt-oss's experts are read in the "
					"release's MXFP4 form (_blocks, _scales)", src->path, name);
		for (uint64_t e = 0; e < E; e++)
			for (int m = 0; m < 3; m++) {
				struct moe_tensor_spec ex[3];
				moe_arch_expert_tensors(hp, l, e, ex);
				const char *which = m == 2 ? "down" : "gate_up";
				snprintf(base, sizeof base, "model.layers.%llu.mlp.experts.%s_proj_blocks", (unsigned long long)l, which);
				snprintf(scale, sizeof scale, "model.layers.%llu.mlp.experts.%s_proj_scales", (unsigned long long)l, which);
				struct src_entry *v = src_add(src, ex[m].hf_name);
				if (!v || !(v->base_name = strdup(base)) || !(v->scale_name = strdup(scale)))
					return moe_fail(MOE_ENOMEM, "out of memory");
				v->dtype = SRC_MXFP4_HF;
				v->n_dims = 2;
				v->rows = ex[m].dims[0];
				v->cols = ex[m].dims[1];
				v->base_row0 = m == 2 ? e * H : e * 2 * ff + (uint64_t)m; /* gate even, up odd */
				v->row_step = m == 2 ? 1 : 2;
			}
		for (int m = 0; m < 2; m++) {
			snprintf(name, sizeof name, "model.layers.%llu.mlp.experts.%s_proj_bias", (unsigned long long)l,
				 m ? "up" : "gate");
			snprintf(base, sizeof base, "model.layers.%llu.mlp.experts.gate_up_proj_bias", (unsigned long long)l);
			struct src_entry *v = src_add(src, name);
			if (!v || !(v->base_name = strdup(base)))
				return moe_fail(MOE_ENOMEM, "out of memory");
			v->dtype = SRC_VIEW;
			v->n_dims = 2;
			v->rows = E;
			v->cols = ff;
			v->col_off = (uint64_t)m;
			v->col_step = 2;
		}
	}
	return 0;
}

/* the entry model.layers.L.WHAT, or NULL */
static struct src_entry *layer_entry(struct moe_source *src, uint64_t l, const char *what)
{
	char name[192];
	snprintf(name, sizeof name, "model.layers.%llu.%s", (unsigned long long)l, what);
	return src_find(src, name);
}

static void mark(struct moe_source *src, uint64_t l, const char *what, int xform)
{
	struct src_entry *e = l == UINT64_MAX ? src_find(src, what) : layer_entry(src, l, what);
	if (e)
		e->xform = xform;
}

/*
 * Qwen3-Next and Qwen3.5-MoE as released, into the names and values the pack keeps:
 * Qwen3.5's text model under model.language_model. moved to model.; Qwen3-Next's fused
 * linear-attention projections read as Qwen3.5's (in_proj_qkvz holds, per key head, its
 * q, k, then the v and z of its value heads; in_proj_ba, its heads' b then a); fused
 * experts (gate_up_proj [E, 2I, H], down_proj [E, H, I]) read per expert; the
 * zero-centered norms as 1 + w and A_log as A = -exp(A_log), as llama.cpp stores them;
 * shared_expert_gate [1, H] as the vector it is.
 */
static int qwen3_next_views(struct moe_source *src)
{
	static const char vlm[] = "model.language_model.";
	for (size_t i = 0; i < src->n_entries; i++) { /* a name, and the FP8 scale it names */
		char **names[2] = {&src->entries[i].name, &src->entries[i].scale_name};
		for (int k = 0; k < 2; k++) {
			if (!*names[k] || strncmp(*names[k], vlm, sizeof vlm - 1))
				continue;
			char *moved = malloc(strlen(*names[k]));
			if (!moved)
				return moe_fail(MOE_ENOMEM, "out of memory");
			sprintf(moved, "model.%s", *names[k] + sizeof vlm - 1);
			free(*names[k]);
			*names[k] = moved;
		}
	}
	src_index(src);
	const struct moe_hparams *hp = &src->hp;
	const uint64_t H = hp->hidden, E = hp->n_experts, ff = hp->expert_ff;
	char base[192];
	mark(src, UINT64_MAX, "model.norm.weight", SRC_X_PLUS_ONE);
	/* first what is found (src_find searches the sorted table: nothing added yet) */
	uint8_t fused[MOE_MAX_LAYERS][3] = {{0}};
	for (uint64_t l = 0; l < hp->n_layers; l++) {
		mark(src, l, "input_layernorm.weight", SRC_X_PLUS_ONE);
		mark(src, l, "post_attention_layernorm.weight", SRC_X_PLUS_ONE);
		mark(src, l, "self_attn.q_norm.weight", SRC_X_PLUS_ONE);
		mark(src, l, "self_attn.k_norm.weight", SRC_X_PLUS_ONE);
		mark(src, l, "linear_attn.A_log", SRC_X_NEG_EXP);
		struct src_entry *g = layer_entry(src, l, "mlp.shared_expert_gate.weight");
		if (g && g->n_dims == 2 && g->rows == 1)
			g->n_dims = 1, g->rows = g->cols, g->cols = 1;
		struct src_entry *conv = layer_entry(src, l, "linear_attn.conv1d.weight");
		if (conv && conv->n_dims == 3) /* [channels, 1, taps]: rows are the channels already */
			conv->n_dims = 2;
		fused[l][0] = hp->linear[l] && layer_entry(src, l, "linear_attn.in_proj_qkvz.weight");
		fused[l][1] = hp->linear[l] && layer_entry(src, l, "linear_attn.in_proj_ba.weight");
		fused[l][2] = layer_entry(src, l, "mlp.experts.gate_up_proj") != NULL;
	}
	for (uint64_t l = 0; l < hp->n_layers; l++) { /* then the views */
		struct src_entry *v;
		char qkvz[192], ba[192], out[4][192];
		static const char *const names[4] = {"in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a"};
		for (int k = 0; k < 4; k++)
			snprintf(out[k], sizeof out[k], "model.layers.%llu.linear_attn.%s.weight", (unsigned long long)l,
				 names[k]);
		snprintf(qkvz, sizeof qkvz, "model.layers.%llu.linear_attn.in_proj_qkvz.weight", (unsigned long long)l);
		snprintf(ba, sizeof ba, "model.layers.%llu.linear_attn.in_proj_ba.weight", (unsigned long long)l);
		const char *const outs[4] = {out[0], out[1], out[2], out[3]};
		int rc = src_add_qwen3_next_views(src, fused[l][0] ? qkvz : NULL, fused[l][1] ? ba : NULL, outs);
		if (rc)
			return rc;
		for (uint64_t e = 0; fused[l][2] && e < E; e++)
			for (int m = 0; m < 3; m++) {
				struct moe_tensor_spec ex[3];
				moe_arch_expert_tensors(hp, l, e, ex);
				snprintf(base, sizeof base, "model.layers.%llu.mlp.experts.%s", (unsigned long long)l,
					 m == 2 ? "down_proj" : "gate_up_proj");
				if (!(v = src_add_rows(src, ex[m].hf_name, base, ex[m].dims[1])))
					return moe_fail(MOE_ENOMEM, "out of memory");
				const uint64_t rows = ex[m].dims[0]; /* gate_up: gate's rows, then up's */
				src_rows_segment(v, rows, m == 2 ? e * H : e * 2 * ff + (m ? ff : 0), rows, rows);
			}
	}
	return 0;
}

int src_open_safetensors(const char *dir, struct moe_source *src)
{
	int rc = open_folder(dir, src);
	if (!rc && src->hp.arch == MOE_ARCH_GPT_OSS)
		rc = gpt_oss_views(src);
	if (!rc && src->hp.arch == MOE_ARCH_QWEN3_NEXT)
		rc = qwen3_next_views(src);
	return rc;
}

static int open_folder(const char *dir, struct moe_source *src)
{
	src->kind = "safetensors";
	char *p = join(dir, "config.json");
	if (!p)
		return moe_fail(MOE_ENOMEM, "out of memory");
	int rc = moe_read_file(p, &src->config_json, &src->config_json_len);
	if (rc == MOE_ENOTFOUND)
		rc = moe_fail(rc, "%s: no config.json: not a Hugging Face model folder", dir);
	if (!rc)
		rc = hf_config_parse(src->config_json, src->config_json_len, p, &src->hp);
	free(p);
	if (rc)
		return rc;
	if ((rc = read_optional(dir, "tokenizer.json", &src->tokenizer_json, &src->tokenizer_json_len)) ||
	    (rc = read_optional(dir, "tokenizer_config.json", &src->tokenizer_config, &src->tokenizer_config_len)) ||
	    (rc = read_optional(dir, "generation_config.json", &src->generation_config, &src->generation_config_len)))
		return rc;

	char *index;
	size_t index_len;
	if ((rc = read_optional(dir, "model.safetensors.index.json", &index, &index_len)))
		return rc;
	if (index) {
		char *what = join(dir, "model.safetensors.index.json");
		rc = what ? open_sharded(src, dir, index, index_len, what) : moe_fail(MOE_ENOMEM, "out of memory");
		free(what);
		free(index);
		return rc;
	}
	struct dirent **names;
	int n = scandir(dir, &names, is_safetensors, alphasort);
	if (n < 0)
		return moe_fail(moe_errno_code(errno), "%s: %s", dir, strerror(errno));
	if (n == 0)
		rc = moe_fail(MOE_ENOTFOUND, "%s: no .safetensors files", dir);
	for (int i = 0; i < n; i++) {
		if (!rc) {
			char *fp = join(dir, names[i]->d_name);
			rc = fp ? parse_file(src, fp) : moe_fail(MOE_ENOMEM, "out of memory");
			free(fp);
		}
		free(names[i]);
	}
	free(names);
	return rc;
}

/* ---- writing (moe-pack synth --format safetensors) ---- */

struct st_tensor {
	struct moe_tensor_spec spec;
	int dtype;             /* SRC_F32, SRC_F16, SRC_BF16, SRC_F8_E4M3 */
	int is_scale;          /* the weight_scale_inv of the tensor before it */
	uint64_t bytes, shard, begin;
};

static uint64_t st_bytes(int dtype, uint64_t n)
{
	return dtype == SRC_F32 ? n * 4 : dtype == SRC_F8_E4M3 ? n : n * 2;
}

static int write_all(FILE *fp, const void *p, size_t n, const char *path)
{
	if (fwrite(p, 1, n, fp) != n)
		return moe_fail(moe_errno_code(errno), "%s: write: %s", path, strerror(errno));
	return 0;
}

/* Stream one tensor; an FP8 tensor fills `scales` ([ceil(rows/128), ceil(cols/128)]) for the next one. */
static int st_write_tensor(struct moe_source *src, FILE *fp, const char *path, const struct st_tensor *t, float *scales)
{
	struct src_entry *e;
	int rc = src_lookup(src, &t->spec, &e);
	if (rc)
		return rc;
	const uint64_t rows = e->rows, cols = e->cols, step = t->dtype == SRC_F8_E4M3 ? 128 : (1u << 20) / cols + 1;
	float *x = malloc(step * cols * sizeof(float));
	uint8_t *out = malloc(step * cols * 4);
	if (!x || !out)
		rc = moe_fail(MOE_ENOMEM, "out of memory");
	for (uint64_t r = 0; r < rows && !rc; r += step) {
		const uint64_t n = rows - r < step ? rows - r : step, ne = n * cols;
		if ((rc = src_read_rows(src, e, r, n, x)))
			break;
		switch (t->dtype) {
		case SRC_F32: memcpy(out, x, ne * 4); break;
		case SRC_F16: moe_quantize_rows(MOE_TYPE_F16, x, n, cols, out, NULL); break;
		case SRC_BF16: moe_quantize_rows(MOE_TYPE_BF16, x, n, cols, out, NULL); break;
		case SRC_F8_E4M3: {
			const uint64_t scols = (cols + 127) / 128;
			for (uint64_t bc = 0; bc < scols; bc++) {
				float amax = 0;
				for (uint64_t i = 0; i < n; i++)
					for (uint64_t c = bc * 128; c < cols && c < bc * 128 + 128; c++)
						amax = fmaxf(amax, fabsf(x[i * cols + c]));
				float s = amax > 0 ? amax / 448.0f : 1.0f;
				scales[(r / 128) * scols + bc] = s;
				for (uint64_t i = 0; i < n; i++)
					for (uint64_t c = bc * 128; c < cols && c < bc * 128 + 128; c++)
						out[i * cols + c] = moe_f32_to_fp8_e4m3(x[i * cols + c] / s);
			}
			break;
		}
		}
		rc = write_all(fp, out, st_bytes(t->dtype, ne), path);
	}
	free(x);
	free(out);
	return rc;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) { return remove(p); }

int st_write_folder(struct moe_source *src, const char *dir, const char *dtype_name, uint64_t shard_bytes, int force)
{
	const struct moe_hparams *hp = &src->hp;
	int wdtype;
	if (strcmp(dtype_name, "f32") == 0) wdtype = SRC_F32;
	else if (strcmp(dtype_name, "f16") == 0) wdtype = SRC_F16;
	else if (strcmp(dtype_name, "bf16") == 0) wdtype = SRC_BF16;
	else if (strcmp(dtype_name, "f8") == 0) wdtype = SRC_F8_E4M3;
	else return moe_fail(MOE_EINVAL, "--dtype %s: safetensors output takes f32, f16, bf16 or f8", dtype_name);
	if (hp->arch == MOE_ARCH_GPT_OSS)
		return moe_fail(MOE_EUNSUPPORTED, "safetensors output of gpt_oss is not implemented (its fused expert layout)");
	if (hp->arch == MOE_ARCH_QWEN3_NEXT) /* its norms and A are stored as the model uses them, not as released */
		return moe_fail(MOE_EUNSUPPORTED, "safetensors output of qwen3_next is not implemented (pack the model directly)");
	int rc = src_check_output(src, NULL, dir, 1, force);
	if (rc)
		return rc;

	/* the tensor list in model order: layer by layer, experts after the layer's router */
	size_t nd = moe_arch_dense_tensors(hp, NULL, 0);
	uint64_t n_exp = 0;
	for (uint64_t l = 0; l < hp->n_layers; l++)
		n_exp += moe_layer_is_moe(hp, l) ? hp->n_experts * 3 : 0;
	struct moe_tensor_spec *dense = calloc(nd, sizeof *dense);
	struct st_tensor *t = calloc(2 * (nd + n_exp), sizeof *t);
	if (!dense || !t) {
		free(dense);
		free(t);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	moe_arch_dense_tensors(hp, dense, nd);
	size_t n = 0;
	for (size_t i = 0; i < nd; i++) {
		if (dense[i].optional && !src_find(src, dense[i].name))
			continue;
		const int k = dense[i].kind;
		const int linear = dense[i].n_dims == 2 && (k == MOE_KIND_ATTN || k == MOE_KIND_FFN);
		t[n].spec = dense[i];
		t[n].dtype = wdtype == SRC_F8_E4M3 && !linear ? SRC_BF16 : wdtype;
		if (k == MOE_KIND_ROUTER && wdtype != SRC_F8_E4M3)
			t[n].dtype = wdtype;
		n++;
		if (t[n - 1].dtype == SRC_F8_E4M3) {
			t[n].spec = dense[i];
			t[n].is_scale = 1;
			t[n].dtype = SRC_F32;
			n++;
		}
		if (k == MOE_KIND_ROUTER && strstr(dense[i].name, "ffn_gate_inp")) {
			uint64_t l = strtoull(dense[i].name + 4, NULL, 10);
			for (uint64_t e = 0; e < hp->n_experts; e++) {
				struct moe_tensor_spec ex[3];
				moe_arch_expert_tensors(hp, l, e, ex);
				for (int m = 0; m < 3; m++) {
					t[n].spec = ex[m];
					t[n].dtype = wdtype;
					n++;
					if (wdtype == SRC_F8_E4M3) {
						t[n].spec = ex[m];
						t[n].is_scale = 1;
						t[n].dtype = SRC_F32;
						n++;
					}
				}
			}
		}
	}
	/* shapes, sizes and shards */
	uint64_t shard = 0, in_shard = 0;
	for (size_t i = 0; i < n; i++) {
		struct moe_tensor_spec *s = &t[i].spec;
		if (t[i].is_scale) {
			s->dims[0] = (s->dims[0] + 127) / 128;
			s->dims[1] = (s->dims[1] + 127) / 128;
			snprintf(s->hf_name + strlen(s->hf_name), sizeof s->hf_name - strlen(s->hf_name), "_scale_inv");
		}
		t[i].bytes = st_bytes(t[i].dtype, s->dims[0] * (s->n_dims == 2 ? s->dims[1] : 1));
		/* a weight and its scale stay in one shard */
		if (shard_bytes && in_shard && in_shard + t[i].bytes > shard_bytes && !t[i].is_scale) {
			shard++;
			in_shard = 0;
		}
		t[i].shard = shard;
		t[i].begin = in_shard;
		in_shard += t[i].bytes;
	}
	const uint64_t n_shards = shard + 1;

	size_t dl = strlen(dir) + 32;
	char *tmp = malloc(dl), *path = malloc(dl + 64);
	snprintf(tmp, dl, "%s.tmp.XXXXXX", dir);
	if (!mkdtemp(tmp)) {
		rc = moe_fail(moe_errno_code(errno), "%s: %s", tmp, strerror(errno));
		goto out;
	}
	chmod(tmp, 0755);
	char *cfg = hf_config_write(hp);
	snprintf(path, dl + 64, "%s/config.json", tmp);
	FILE *fp = fopen(path, "w");
	if (!fp || !cfg || fputs(cfg, fp) < 0 || fputc('\n', fp) < 0)
		rc = moe_fail(moe_errno_code(errno), "%s: %s", path, strerror(errno));
	if (fp && fclose(fp) != 0 && !rc)
		rc = moe_fail(moe_errno_code(errno), "%s: %s", path, strerror(errno));
	free(cfg);
	json_t *wmap = json_object();
	float *scales = NULL;
	for (uint64_t sh = 0; sh < n_shards && !rc; sh++) {
		char fname[96];
		if (n_shards == 1)
			snprintf(fname, sizeof fname, "model.safetensors");
		else
			snprintf(fname, sizeof fname, "model-%05llu-of-%05llu.safetensors", (unsigned long long)sh + 1,
				 (unsigned long long)n_shards);
		json_t *hdr = json_object();
		json_t *md = json_object();
		json_object_set_new(md, "format", json_string("pt"));
		json_object_set_new(hdr, "__metadata__", md);
		for (size_t i = 0; i < n; i++) {
			if (t[i].shard != sh)
				continue;
			const struct moe_tensor_spec *s = &t[i].spec;
			static const char *const dn[] = {[SRC_F32] = "F32", [SRC_F16] = "F16", [SRC_BF16] = "BF16", [SRC_F8_E4M3] = "F8_E4M3"};
			json_t *o = json_object(), *shape = json_array(), *offs = json_array();
			json_array_append_new(shape, json_integer((json_int_t)s->dims[0]));
			if (s->n_dims == 2)
				json_array_append_new(shape, json_integer((json_int_t)s->dims[1]));
			json_array_append_new(offs, json_integer((json_int_t)t[i].begin));
			json_array_append_new(offs, json_integer((json_int_t)(t[i].begin + t[i].bytes)));
			json_object_set_new(o, "dtype", json_string(dn[t[i].dtype]));
			json_object_set_new(o, "shape", shape);
			json_object_set_new(o, "data_offsets", offs);
			json_object_set_new(hdr, s->hf_name, o);
			json_object_set_new(wmap, s->hf_name, json_string(fname));
		}
		char *text = json_dumps(hdr, JSON_COMPACT);
		json_decref(hdr);
		uint64_t hl = strlen(text), padded = (hl + 7) / 8 * 8;
		snprintf(path, dl + 64, "%s/%s", tmp, fname);
		fp = fopen(path, "wb");
		if (!fp) {
			rc = moe_fail(moe_errno_code(errno), "%s: %s", path, strerror(errno));
			free(text);
			break;
		}
		rc = write_all(fp, &padded, 8, path);
		if (!rc)
			rc = write_all(fp, text, hl, path);
		for (uint64_t i = hl; i < padded && !rc; i++)
			rc = write_all(fp, " ", 1, path);
		free(text);
		for (size_t i = 0; i < n && !rc && !(rc = pack_interrupt_check()); i++) {
			if (t[i].shard != sh)
				continue;
			if (t[i].is_scale) {
				rc = write_all(fp, scales, t[i].bytes, path);
				continue;
			}
			if (t[i].dtype == SRC_F8_E4M3) {
				free(scales);
				scales = malloc(t[i + 1].bytes);
				if (!scales) {
					rc = moe_fail(MOE_ENOMEM, "out of memory");
					break;
				}
			}
			rc = st_write_tensor(src, fp, path, &t[i], scales);
		}
		if (!rc && (fflush(fp) != 0 || fsync(fileno(fp)) != 0))
			rc = moe_fail(moe_errno_code(errno), "%s: %s", path, strerror(errno));
		if (fclose(fp) != 0 && !rc)
			rc = moe_fail(moe_errno_code(errno), "%s: %s", path, strerror(errno));
	}
	free(scales);
	if (!rc && n_shards > 1) {
		json_t *idx = json_object(), *md = json_object();
		uint64_t total = 0;
		for (size_t i = 0; i < n; i++)
			total += t[i].bytes;
		json_object_set_new(md, "total_size", json_integer((json_int_t)total));
		json_object_set_new(idx, "metadata", md);
		json_object_set(idx, "weight_map", wmap);
		snprintf(path, dl + 64, "%s/model.safetensors.index.json", tmp);
		if (json_dump_file(idx, path, JSON_INDENT(2)) != 0)
			rc = moe_fail(MOE_EIO, "%s: cannot write", path);
		json_decref(idx);
	}
	json_decref(wmap);
	struct stat st;
	if (!rc && stat(dir, &st) == 0) {
		/* --force: move the old folder aside, then remove it once the new one is in place */
		snprintf(path, dl + 64, "%s.old.XXXXXX", dir);
		if (!mkdtemp(path) || rename(dir, path) != 0)
			rc = moe_fail(moe_errno_code(errno), "%s: cannot replace: %s", dir, strerror(errno));
	} else {
		path[0] = '\0';
	}
	if (!rc && rename(tmp, dir) != 0)
		rc = moe_fail(moe_errno_code(errno), "%s: rename: %s", dir, strerror(errno));
	if (!rc && path[0])
		nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	if (rc)
		nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
out:
	free(tmp);
	free(path);
	free(dense);
	free(t);
	return rc;
}
