/*
 * source.h - a model as users have it, opened for import. Every importer
 * (safetensors folder, GGUF file, synthetic generator) produces the same thing:
 * hyperparameters, side files, and a table of named matrices that one generic
 * row reader turns into floats, a few rows at a time (bounded memory).
 */
#ifndef MOE_PACK_SOURCE_H
#define MOE_PACK_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "model/arch.h"

enum src_dtype {
	SRC_F32, SRC_F16, SRC_BF16, SRC_F64,
	SRC_F8_E4M3, /* with a 128x128 block scale (DeepSeek-V3) */
	SRC_Q8_0, SRC_Q4_0, /* GGUF blocks, kept in the pack's split q8/q4 layout */
	SRC_BLOCKS,         /* GGUF blocks of the pack type block_type, kept as they are */
	SRC_MLA_KV_B,       /* DeepSeek's kv_b put back together from llama.cpp's attn_k_b and attn_v_b */
	SRC_SYNTH,          /* generated: N(mean, std) from a counter-based RNG */
	SRC_U8,             /* raw bytes (gpt-oss's MXFP4 blocks and scales): read only through the two below */
	SRC_MXFP4_HF,       /* rows of a Hugging Face MXFP4 pair (base: *_blocks, scale: *_scales), as GGUF MXFP4 */
	SRC_VIEW,           /* every col_step-th column of base's rows from col_off (gpt-oss's interleaved biases) */
	SRC_ROWS,           /* rows of base, segment after segment (Qwen3-Next's fused projections, fused experts) */
};
/* what is done to the values read (Hugging Face checkpoints store some as the model uses them) */
enum src_xform {
	SRC_X_NONE,
	SRC_X_PLUS_ONE, /* a zero-centered RMSNorm's weights w, used as 1 + w */
	SRC_X_NEG_EXP,  /* Gated DeltaNet's A_log, used as A = -exp(A_log) */
};
extern const char *const src_dtype_names[];

struct src_entry {
	char *name;          /* key: HF name (safetensors) or canonical name (GGUF, synth) */
	int dtype;
	int block_type;      /* SRC_BLOCKS: the moe_type of its blocks */
	uint64_t rows, cols; /* cols = 1 for 1-D */
	int n_dims;
	int file;            /* index into source files */
	uint64_t offset;     /* absolute file offset of row 0 */
	uint32_t permute_head; /* GGUF llama q/k: rows pair-interleaved within heads of this size */
	char *scale_name;        /* F8_E4M3: name of its weight_scale_inv ... */
	struct src_entry *scale; /* ... resolved by src_index() */
	char *kb_name, *vb_name;     /* SRC_MLA_KV_B: its two parts ... */
	struct src_entry *kb, *vb;   /* ... resolved by src_index() */
	uint32_t heads;              /* attn_k_b / attn_v_b: heads stacked in the rows */
	char *base_name;             /* SRC_MXFP4_HF, SRC_VIEW: what it reads ... */
	struct src_entry *base;      /* ... resolved by src_index() */
	uint64_t base_row0, row_step; /* SRC_MXFP4_HF: row r is the pair's row base_row0 + r * row_step */
	uint64_t col_off, col_step;   /* SRC_VIEW: column c is base's column col_off + c * col_step */
	/* SRC_ROWS: row i of segment k (seg_rows[k] rows, one after another) is base's row
	 * seg_row0[k] + (i / seg_run[k]) * seg_stride[k] + i % seg_run[k]: runs at a stride */
	uint64_t seg_rows[3], seg_row0[3], seg_run[3], seg_stride[3];
	int xform;                    /* enum src_xform, on what src_read_rows returns */
	uint64_t seed;       /* SRC_SYNTH */
	float mean, std;
	int used;
};

struct src_file {
	char *path;
	int fd;
	uint64_t size;
	uint64_t dev, ino;    /* to refuse writing the output over a source */
	uint64_t header_xxh3; /* provenance: hash of the header that describes every tensor */
};

struct moe_source {
	const char *kind;         /* "safetensors", "gguf", "synth" */
	char gguf_arch[32];       /* GGUF: general.architecture */
	char *path;
	struct moe_hparams hp;
	struct src_file *files;
	size_t n_files;
	struct src_entry *entries; /* sorted by name after src_index() */
	size_t n_entries, cap_entries;
	char *tokenizer_json, *tokenizer_config; /* NUL-terminated, may be NULL */
	size_t tokenizer_json_len, tokenizer_config_len;
	char *config_json, *generation_config; /* NUL-terminated, may be NULL */
	size_t config_json_len, generation_config_len;
	void *tokenizer_bin;      /* a GGUF's own tokenizer, in the pack's form; may be NULL */
	size_t tokenizer_bin_len, tokenizer_ids;
	char *chat_template;      /* a GGUF's tokenizer.chat_template; may be NULL */
	char tokenizer_note[320]; /* why a GGUF's tokenizer was not imported */
	char note[256];          /* e.g. "skipped multi-token-prediction layer 61" */
	int no_tokenizer_ok;     /* the source explicitly has none (GGUF tokenizer.ggml.model = none) */
};

/* Open a folder (config.json + *.safetensors) or a .gguf file. */
int src_open(const char *path, struct moe_source **out);
int src_open_safetensors(const char *dir, struct moe_source *src);
int src_open_gguf(const char *path, struct moe_source *src);
void src_close(struct moe_source *src);

struct src_entry *src_add(struct moe_source *src, const char *name);
int src_add_file(struct moe_source *src, const char *path);
void src_index(struct moe_source *src);

/* May moe-pack write OUT? Without force it must not exist. With force it may
 * replace only what moe-pack writes: a pack or GGUF file (folder = 0), or a
 * safetensors folder holding nothing but the files st_write_folder makes
 * (folder = 1); never a source file (same inode), nor also_read if given. */
int src_check_output(const struct moe_source *src, const char *also_read, const char *out, int folder, int force);
struct src_entry *src_find(struct moe_source *src, const char *name);
/* Find a tensor by canonical or HF name and check its shape; message names both. */
int src_lookup(struct moe_source *src, const struct moe_tensor_spec *spec, struct src_entry **out);

/* nrows rows starting at row0 (canonical row order), as floats. */
int src_read_rows(struct moe_source *src, const struct src_entry *e, uint64_t row0, uint64_t nrows, float *out);
/* GGUF rows copied losslessly: Q8_0/Q4_0 into split layout (codes, scales), other
 * block types as they are (into codes). */
int src_read_blocks(struct moe_source *src, const struct src_entry *e, uint64_t row0, uint64_t nrows,
		    void *codes, uint16_t *scales);
/* The pack type that keeps this tensor losslessly (-1 if none); a source dtype of
 * SRC_BLOCKS needs the entry, for its block_type. */
int src_pack_type(const struct src_entry *e);

/* A view made of rows of base (SRC_ROWS), with one segment; src_rows_segment adds more. */
struct src_entry *src_add_rows(struct moe_source *src, const char *name, const char *base, uint64_t cols);
void src_rows_segment(struct src_entry *v, uint64_t rows, uint64_t row0, uint64_t run, uint64_t stride);

/* Qwen3-Next's fused linear-attention projections read as the separate ones: qkvz (per
 * key head: its q, its k, then its value heads' v and z) as the views out[0] (q|k|v of
 * every head) and out[1] (z); ba (per key head: its value heads' b, then their a) as
 * out[2] and out[3]. A NULL base adds nothing. */
int src_add_qwen3_next_views(struct moe_source *src, const char *qkvz, const char *ba, const char *const out[4]);

/* Synthetic values: element i of a tensor with this seed. */
float synth_value(const struct src_entry *e, uint64_t i);

/* config.json (Hugging Face) <-> hparams */
int hf_config_parse(const char *json, size_t len, const char *what, struct moe_hparams *hp);
char *hf_config_write(const struct moe_hparams *hp); /* malloc'd JSON text */

#endif
