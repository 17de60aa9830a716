/*
 * pack.c - source -> pack. Dense tensors are streamed a few rows at a time;
 * experts are built by worker threads (read, quantize, hash, maybe compress),
 * at most `slots` blobs in flight so memory stays bounded whatever the model's
 * size, and handed to the writer in (layer, expert) order.
 */
#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "common/error.h"
#include "common/fileio.h"
#include "cli/progress.h"
#include "pack.h"
#include "pack/format.h"
#include "pack/meta.h"
#include "pack/writer.h"
#include "quant/quant.h"
#include "text/tokenizer.h"

#define CHUNK_FLOATS (1u << 20) /* rows are converted 4 MB of floats at a time */

void pack_options_default(struct pack_options *o)
{
	memset(o, 0, sizeof *o);
	for (int k = 0; k < MOE_KIND_COUNT; k++)
		o->quant[k] = PACK_AUTO;
	o->quant[MOE_KIND_NORM] = o->quant[MOE_KIND_ROUTER] = MOE_TYPE_F32;
	snprintf(o->quant_desc, sizeof o->quant_desc, "auto");
	o->alignment = PACK_MIN_ALIGN;
	o->zstd_level = 3;
	o->zstd_min_saving = 25.0; /* quantized experts save 4-11 %: not worth decoding (moe-tuning(7)) */
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	o->threads = n > 0 ? (int)n : 1;
	o->memory_budget = 512ull << 20;
}

static int parse_type(const char *s, size_t len)
{
	char name[16];
	if (len >= sizeof name)
		return MOE_EINVAL;
	memcpy(name, s, len);
	name[len] = '\0';
	if (strcmp(name, "keep") == 0)
		return PACK_KEEP;
	if (strcmp(name, "auto") == 0)
		return PACK_AUTO;
	return moe_type_from_name(name);
}

/*
 * llama.cpp's K-quant mixes, its llama-quant.cpp rules for the tensors MoE models
 * have: a base type, more bits where they pay (attn_v, ffn_down in the first and
 * last eighths and every third layer between, output), q8 attention keys and
 * values with 8 experts.
 */
enum { MIX_NONE, MIX_Q2_K, MIX_Q3_K_M, MIX_Q4_K_M, MIX_Q5_K_M };
static const struct {
	const char *name;
	int base;
} pack_mixes[] = {
	[MIX_Q2_K] = {"q2_k_m", MOE_TYPE_Q2_K},
	[MIX_Q3_K_M] = {"q3_k_m", MOE_TYPE_Q3_K},
	[MIX_Q4_K_M] = {"q4_k_m", MOE_TYPE_Q4_K},
	[MIX_Q5_K_M] = {"q5_k_m", MOE_TYPE_Q5_K},
};

static int use_more_bits(uint64_t l, uint64_t n) { return l < n / 8 || l >= 7 * n / 8 || (l - n / 8) % 3 == 2; }

/* The mix's type for the tensor named name (canonical: blk.L.ROLE[.E], output, token_embd). */
static int mix_type(int mix, const struct moe_hparams *hp, const char *name, int t)
{
	unsigned long long l = 0;
	char role[32] = "";
	if (sscanf(name, "blk.%llu.%31[a-z_]", &l, role) != 2)
		snprintf(role, sizeof role, "%s", name);
	const uint64_t n = hp->n_layers;
	const int more = use_more_bits(l, n), eight = hp->n_experts == 8;
	if (strcmp(role, "output") == 0)
		return MOE_TYPE_Q6_K;
	if (eight && (strcmp(role, "attn_v") == 0 || strcmp(role, "attn_k") == 0))
		return MOE_TYPE_Q8; /* llama.cpp: "bumping this to Q8_0 trades just ~128MB" */
	if (strcmp(role, "attn_v") == 0) {
		switch (mix) {
		case MIX_Q2_K: return hp->n_kv_heads && hp->n_heads / hp->n_kv_heads >= 4 ? MOE_TYPE_Q4_K : MOE_TYPE_Q3_K;
		case MIX_Q3_K_M: return l < 2 ? MOE_TYPE_Q5_K : MOE_TYPE_Q4_K;
		default: return more ? MOE_TYPE_Q6_K : t;
		}
	}
	if (strcmp(role, "attn_output") == 0) {
		if (eight)
			return mix == MIX_Q5_K_M ? t : MOE_TYPE_Q5_K;
		return mix == MIX_Q2_K ? MOE_TYPE_Q3_K : mix == MIX_Q3_K_M ? MOE_TYPE_Q4_K : t;
	}
	if (strncmp(role, "ffn_down", 8) == 0) {
		switch (mix) {
		case MIX_Q2_K: return MOE_TYPE_Q3_K;
		case MIX_Q3_K_M: return l < n / 16 ? MOE_TYPE_Q5_K : MOE_TYPE_Q4_K;
		default: return more ? MOE_TYPE_Q6_K : t;
		}
	}
	return t;
}

int pack_parse_quant(const char *spec, struct pack_options *o)
{
	snprintf(o->quant_desc, sizeof o->quant_desc, "%s", spec);
	o->mix = MIX_NONE;
	for (int m = 1; m < (int)(sizeof pack_mixes / sizeof pack_mixes[0]); m++)
		if (strcmp(spec, pack_mixes[m].name) == 0) {
			for (int k = 0; k < MOE_KIND_COUNT; k++)
				if (k != MOE_KIND_NORM && k != MOE_KIND_ROUTER)
					o->quant[k] = pack_mixes[m].base;
			o->mix = m;
			return 0;
		}
	const char *p = spec;
	while (*p) {
		size_t len = strcspn(p, ",");
		const char *eq = memchr(p, '=', len);
		int kind = -1;
		const char *tname = p;
		size_t tlen = len;
		if (eq) {
			for (int k = 0; k < MOE_KIND_COUNT; k++)
				if ((size_t)(eq - p) == strlen(moe_kind_names[k]) && memcmp(p, moe_kind_names[k], eq - p) == 0)
					kind = k;
			if (kind < 0)
				return moe_fail(MOE_EINVAL, "--quant %s: unknown tensor kind '%.*s' (embed, output, attn, ffn, experts)",
						spec, (int)(eq - p), p);
			tname = eq + 1;
			tlen = len - (size_t)(eq - p) - 1;
		}
		int type = parse_type(tname, tlen);
		if (type == MOE_EINVAL)
			return moe_fail(MOE_EINVAL, "--quant %s: unknown type '%.*s' (auto, keep, f32, f16, bf16, q8, q4, "
					"q2_k, q3_k, q4_k, q5_k, q6_k, a GGUF block type kept as it is: q4_1, q5_0, q5_1, iq4_nl, "
					"iq4_xs, mxfp4; or a mix alone: q2_k_m, q3_k_m, q4_k_m, q5_k_m)", spec, (int)tlen, tname);
		if ((kind == MOE_KIND_NORM || kind == MOE_KIND_ROUTER) && type != MOE_TYPE_F32)
			return moe_fail(MOE_EINVAL, "--quant %s: %s tensors are always f32", spec, moe_kind_names[kind]);
		for (int k = 0; k < MOE_KIND_COUNT; k++)
			if (k == kind || (kind < 0 && k != MOE_KIND_NORM && k != MOE_KIND_ROUTER))
				o->quant[k] = type;
		p += len;
		if (*p == ',')
			p++;
	}
	return 0;
}

volatile sig_atomic_t pack_interrupted;

int pack_interrupt_check(void) { return pack_interrupted ? moe_fail(MOE_EINVAL, "interrupted") : 0; }

/* ---- choosing types ---- */

/* The pack type for the tensor named name (canonical), of this kind and columns, whose
 * source is e (NULL: a float source, as moe-pack synth plans), or a negative error. */
static int choose_type(const struct pack_options *o, const struct moe_hparams *hp, const char *name, int kind, int n_dims,
		       uint64_t cols, const struct src_entry *e)
{
	if (kind == MOE_KIND_NORM || kind == MOE_KIND_ROUTER || n_dims == 1 || moe_tensor_is_bias(name))
		return MOE_TYPE_F32;
	const int kept = e ? src_pack_type(e) : -1; /* the type that holds the source as it is */
	const int quantized_source = kept >= 0 && (moe_type_is_split(kept) || moe_type_is_blocks(kept));
	int t = o->quant[kind];
	if (t == PACK_AUTO)
		t = quantized_source ? kept : MOE_TYPE_Q8;
	if (t == PACK_KEEP) {
		t = kept;
		if (t < 0)
			t = e && e->dtype == SRC_F8_E4M3 ? MOE_TYPE_BF16 : MOE_TYPE_F32; /* no exact type: nearest */
	}
	if (o->mix)
		t = mix_type(o->mix, hp, name, t);
	if (moe_type_is_blocks(t) && t != kept && !moe_type_is_quantizable_block(t))
		return moe_fail(MOE_EUNSUPPORTED, "%s: %s is %s; moe-pack keeps GGUF's %s blocks but does not quantize into them "
				"(q2_k .. q6_k, mxfp4, q8, q4, f16, bf16 and f32 are made from any source)", e ? e->name : "synthetic tensor",
				moe_kind_names[kind], kept >= 0 ? moe_type_name(kept) : e ? src_dtype_names[e->dtype] : "float",
				moe_type_name(t));
	if (moe_type_is_split(t) && cols % MOE_QBLOCK)
		t = MOE_TYPE_F16; /* blocks need whole 32-column groups */
	if (t != kept && moe_type_is_quantizable_block(t) && cols % moe_type_block(t))
		t = cols % MOE_QBLOCK ? MOE_TYPE_F16 : MOE_TYPE_Q8; /* as llama.cpp falls back for odd rows */
	return t;
}

/* Convert rows [row0, row0+nrows) of e into codes/scales of a matrix of `type`. Lossless when the
 * source already holds that block format (GGUF blocks): no requantization. */
static int convert_rows(struct moe_source *src, const struct src_entry *e, int type, uint64_t row0, uint64_t nrows,
			float *fbuf, uint8_t *codes, uint16_t *scales)
{
	const uint64_t cols = e->cols;
	if ((moe_type_is_split(type) || moe_type_is_blocks(type)) && src_pack_type(e) == type)
		return src_read_blocks(src, e, row0, nrows, codes, scales);
	int rc = src_read_rows(src, e, row0, nrows, fbuf);
	if (!rc)
		moe_quantize_rows(type, fbuf, nrows, cols, codes, scales);
	return rc;
}

static uint64_t chunk_rows(uint64_t cols)
{
	uint64_t r = CHUNK_FLOATS / (cols ? cols : 1);
	return r ? r : 1;
}

/* Rows [r0, r1) of one source tensor; codes and scales point at row r0's. */
struct convert_part {
	struct moe_source *src;
	const struct src_entry *e;
	int type;
	uint8_t *codes;
	uint16_t *scales;
	uint64_t r0, r1;
	int rc;
	char err[512]; /* moe_last_error() is per thread: carried back to the caller */
};

static void *convert_part_run(void *arg)
{
	struct convert_part *j = arg;
	const uint64_t cols = j->e->cols, per_row = moe_type_row_bytes(j->type, cols), spr = cols / MOE_QBLOCK;
	const uint64_t step = chunk_rows(cols), rows = j->r1 - j->r0;
	float *fbuf = malloc((step < rows ? step : rows) * cols * sizeof(float));
	j->rc = fbuf ? 0 : moe_fail(MOE_ENOMEM, "out of memory converting %s", j->e->name);
	for (uint64_t r = j->r0; r < j->r1 && !j->rc; r += step) {
		const uint64_t n = j->r1 - r < step ? j->r1 - r : step;
		j->rc = convert_rows(j->src, j->e, j->type, r, n, fbuf, j->codes + (r - j->r0) * per_row,
				     j->scales ? j->scales + (r - j->r0) * spr : NULL);
	}
	if (j->rc)
		snprintf(j->err, sizeof j->err, "%s", moe_last_error());
	free(fbuf);
	return NULL;
}

#define MAX_PARTS 64

/* Convert rows [r0, r1) of e, split over up to n_threads threads (this one included). */
static int convert_parallel(struct moe_source *src, const struct src_entry *e, int type, uint8_t *codes,
			    uint16_t *scales, uint64_t r0, uint64_t r1, int n_threads)
{
	const uint64_t per_row = moe_type_row_bytes(type, e->cols), spr = e->cols / MOE_QBLOCK, rows = r1 - r0;
	uint64_t n = (uint64_t)(n_threads < 1 ? 1 : n_threads > MAX_PARTS ? MAX_PARTS : n_threads);
	if (n > rows)
		n = rows ? rows : 1;
	struct convert_part part[MAX_PARTS];
	pthread_t th[MAX_PARTS];
	int started[MAX_PARTS] = {0};
	for (uint64_t i = 0; i < n; i++) {
		const uint64_t a = r0 + rows * i / n, b = r0 + rows * (i + 1) / n;
		part[i] = (struct convert_part){src, e, type, codes + (a - r0) * per_row,
						scales ? scales + (a - r0) * spr : NULL, a, b, 0, ""};
		if (i > 0)
			started[i] = pthread_create(&th[i], NULL, convert_part_run, &part[i]) == 0;
	}
	convert_part_run(&part[0]);
	for (uint64_t i = 1; i < n; i++) {
		if (started[i])
			pthread_join(th[i], NULL);
		else
			convert_part_run(&part[i]); /* no thread to spare: do it here */
	}
	for (uint64_t i = 0; i < n; i++)
		if (part[i].rc)
			return moe_fail(part[i].rc, "%s", part[i].err);
	return 0;
}

/* One matrix into its place: codes at dst, scales (quant types) right after all the codes. */
static int convert_matrix(struct moe_source *src, const struct src_entry *e, int type, uint8_t *dst, int n_threads)
{
	uint8_t *scales = dst + e->rows * moe_type_row_bytes(type, e->cols);
	return convert_parallel(src, e, type, dst, moe_type_is_split(type) ? (uint16_t *)scales : NULL, 0, e->rows,
				n_threads);
}

/* ---- dense tensors: streamed through the writer ---- */

static int pack_dense(struct moe_source *src, struct moe_packw *w, int idx, const struct src_entry *e, int type,
		      int n_threads)
{
	const uint64_t rows = e->rows, cols = e->cols, step = chunk_rows(cols) * (uint64_t)n_threads;
	const uint64_t per_row = moe_type_row_bytes(type, cols);
	const int quant = moe_type_is_split(type);
	uint8_t *codes = malloc((step < rows ? step : rows) * per_row);
	/* scales follow all the codes; they are 1/17 of a q8 tensor, kept until the codes are out */
	uint16_t *scales = quant ? malloc(rows * (cols / 32) * 2) : NULL;
	int rc = 0;
	if (!codes || (quant && !scales))
		rc = moe_fail(MOE_ENOMEM, "out of memory packing %s", e->name);
	for (uint64_t r = 0; r < rows && !rc; r += step) {
		uint64_t n = rows - r < step ? rows - r : step;
		rc = convert_parallel(src, e, type, codes, quant ? scales + r * (cols / 32) : NULL, r, r + n, n_threads);
		if (!rc)
			rc = packw_tensor_append(w, idx, codes, n * per_row);
	}
	if (!rc && quant)
		rc = packw_tensor_append(w, idx, scales, rows * (cols / 32) * 2);
	free(codes);
	free(scales);
	return rc;
}

/* ---- experts: a bounded pipeline of worker threads ---- */

struct job {
	uint32_t layer, expert;
	struct src_entry *m[3];
	int type[3];                   /* of gate, up, down: their layout */
	uint64_t offset[3], raw_size;  /* in the blob, as the writer laid that layout out */
};

struct slot {
	int busy, ready, rc;
	size_t job;
	uint8_t *raw, *comp;
	size_t stored;
	int codec;
	uint64_t xxh3_raw;
};

struct pipeline {
	struct moe_source *src;
	const struct pack_options *o;
	struct job *jobs;
	size_t n_jobs, next_job;
	uint64_t raw_size;     /* the largest blob: each slot's buffer */
	double zstd_keep;      /* a frame is kept if at most this share of the raw bytes */
	struct slot *slots;
	int n_slots, zstd_workers, convert_threads, stop;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	char err[512];
	int err_rc;
};

static int build_expert(struct pipeline *p, struct slot *s, ZSTD_CCtx *cctx)
{
	const struct job *j = &p->jobs[s->job];
	for (int m = 0; m < 3; m++) {
		int rc = convert_matrix(p->src, j->m[m], j->type[m], s->raw + j->offset[m], p->convert_threads);
		if (rc)
			return rc;
	}
	s->xxh3_raw = XXH3_64bits(s->raw, j->raw_size);
	s->codec = MOE_CODEC_RAW;
	s->stored = j->raw_size;
	const size_t cap = (size_t)((double)j->raw_size * p->zstd_keep);
	if (cap) {
		/* a frame that does not fit in cap would not save enough: store raw */
		size_t n = ZSTD_compress2(cctx, s->comp, cap, s->raw, j->raw_size);
		if (!ZSTD_isError(n)) {
			s->codec = MOE_CODEC_ZSTD;
			s->stored = n;
		} else if (ZSTD_getErrorCode(n) != ZSTD_error_dstSize_tooSmall) {
			return moe_fail(MOE_EIO, "layer %u expert %u: zstd: %s", j->layer, j->expert, ZSTD_getErrorName(n));
		}
	}
	return 0;
}

static void *worker(void *arg)
{
	struct pipeline *p = arg;
	ZSTD_CCtx *cctx = ZSTD_createCCtx();
	if (cctx) {
		ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, p->o->zstd_level);
		ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 0); /* the pack has its own */
		if (p->zstd_workers > 1)
			ZSTD_CCtx_setParameter(cctx, ZSTD_c_nbWorkers, p->zstd_workers);
	}
	for (;;) {
		pthread_mutex_lock(&p->mu);
		/* take a free slot and the next job together, so the in-flight jobs are always
		 * the lowest unwritten ones and the writer never waits on a job without a slot */
		struct slot *s = NULL;
		while (!p->stop && p->next_job < p->n_jobs) {
			for (int i = 0; i < p->n_slots && !s; i++)
				if (!p->slots[i].busy)
					s = &p->slots[i];
			if (s)
				break;
			pthread_cond_wait(&p->cv, &p->mu);
		}
		if (!s || p->stop || p->next_job >= p->n_jobs) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		s->busy = 1;
		s->ready = 0;
		s->job = p->next_job++;
		pthread_mutex_unlock(&p->mu);

		int rc = !cctx ? moe_fail(MOE_ENOMEM, "out of memory") : build_expert(p, s, cctx);

		pthread_mutex_lock(&p->mu);
		s->rc = rc;
		if (rc && !p->err_rc) {
			p->err_rc = rc;
			snprintf(p->err, sizeof p->err, "%s", moe_last_error());
		}
		s->ready = 1;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
	ZSTD_freeCCtx(cctx);
	return NULL;
}

static int run_experts(struct pipeline *p, struct moe_packw *w)
{
	int rc = 0;
	p->slots = calloc((size_t)p->n_slots, sizeof *p->slots);
	if (!p->slots)
		return moe_fail(MOE_ENOMEM, "out of memory");
	const size_t comp_cap = (size_t)((double)p->raw_size * p->zstd_keep);
	for (int i = 0; i < p->n_slots && !rc; i++) {
		p->slots[i].raw = malloc(p->raw_size);
		p->slots[i].comp = comp_cap ? malloc(comp_cap) : NULL;
		if (!p->slots[i].raw || (comp_cap && !p->slots[i].comp))
			rc = moe_fail(MOE_ENOMEM, "out of memory for %d expert buffers of %llu bytes", p->n_slots,
				      (unsigned long long)p->raw_size);
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	int n_threads = p->o->threads < p->n_slots ? p->o->threads : p->n_slots;
	pthread_t *th = calloc((size_t)n_threads, sizeof *th);
	int started = 0;
	for (; !rc && th && started < n_threads; started++)
		if (pthread_create(&th[started], NULL, worker, p) != 0)
			break;
	if (!rc && started == 0)
		rc = moe_fail(MOE_ENOMEM, "cannot start worker threads");
	struct moe_progress bar;
	const uint64_t bytes0 = packw_bytes_written(w);
	moe_progress_start(&bar, p->o->progress, "experts", "experts", p->n_jobs);
	for (size_t next = 0; !rc && next < p->n_jobs && !(rc = pack_interrupt_check()); next++) {
		pthread_mutex_lock(&p->mu);
		struct slot *s = NULL;
		for (;;) {
			for (int i = 0; i < p->n_slots && !s; i++)
				if (p->slots[i].busy && p->slots[i].ready && p->slots[i].job == next)
					s = &p->slots[i];
			if (s || p->err_rc)
				break;
			pthread_cond_wait(&p->cv, &p->mu);
		}
		pthread_mutex_unlock(&p->mu);
		if (!s) {
			rc = moe_fail(p->err_rc, "%s", p->err);
			break;
		}
		rc = packw_expert_write(w, next, s->codec == MOE_CODEC_ZSTD ? s->comp : s->raw, s->stored, s->codec,
					s->xxh3_raw);
		pthread_mutex_lock(&p->mu);
		s->busy = 0;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
		moe_progress_update(&bar, next + 1, packw_bytes_written(w) - bytes0);
	}
	moe_progress_end(&bar);
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	free(th);
	for (int i = 0; i < p->n_slots; i++) {
		free(p->slots[i].raw);
		free(p->slots[i].comp);
	}
	free(p->slots);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	return rc;
}

/* ---- metadata ---- */

/* source tensors of layers past num_hidden_layers: DeepSeek's multi-token-prediction layer */
static size_t count_mtp(const struct moe_source *src)
{
	size_t n = 0;
	for (size_t i = 0; i < src->n_entries; i++) {
		unsigned long long l;
		n += (sscanf(src->entries[i].name, "model.layers.%llu.", &l) == 1 ||
		      sscanf(src->entries[i].name, "blk.%llu.", &l) == 1) && l >= src->hp.n_layers;
	}
	return n;
}

/* tokenizer.json as given (for provenance and other tools), its compiled binary
 * form (what moe-run loads), tokenizer_config.json and the chat template; or a
 * GGUF's own tokenizer, compiled, and its chat template. */
static int add_tokenizer(struct moe_source *src, const struct pack_options *o, struct moe_meta_writer *m, int *has)
{
	char *json = src->tokenizer_json, *config = src->tokenizer_config, *own = NULL, *own_cfg = NULL, *tmpl = NULL;
	size_t len = src->tokenizer_json_len, config_len = src->tokenizer_config_len;
	const char *what = "tokenizer.json";
	void *bin = NULL;
	size_t bin_len;
	struct moe_tokenizer *t = NULL;
	int rc = 0;
	*has = 0;
	if (o->tokenizer_path) { /* its own tokenizer_config.json, if beside it, goes with it */
		if ((rc = moe_tokenizer_read_files(o->tokenizer_path, &own, &len, &own_cfg, &config_len)))
			return rc;
		json = own, what = o->tokenizer_path;
		if (own_cfg)
			config = own_cfg;
		else
			config_len = src->tokenizer_config_len;
	}
	if (!json && src->tokenizer_bin) { /* a GGUF's own, compiled when it was read */
		if (src->tokenizer_ids > src->hp.vocab)
			return moe_fail(MOE_EFORMAT, "%s: %zu tokens, more than the model's vocabulary (%llu)", src->path,
					src->tokenizer_ids, (unsigned long long)src->hp.vocab);
		meta_put_blob(m, "tokenizer.bin", src->tokenizer_bin, src->tokenizer_bin_len);
		if (src->chat_template)
			meta_put_str(m, "tokenizer.chat_template", src->chat_template);
		*has = 1;
		return 0;
	}
	if (!json) {
		if (config)
			goto config_only;
		return 0;
	}
	if ((rc = moe_tokenizer_from_json(json, len, config, config_len, what, &t)))
		goto out;
	if (src->config_json && (rc = moe_tokenizer_add_eos_from_config(t, src->config_json, src->config_json_len,
									 "config.json")))
		goto out;
	if (src->generation_config &&
	    (rc = moe_tokenizer_add_eos_from_config(t, src->generation_config, src->generation_config_len,
						    "generation_config.json")))
		goto out;
	if (moe_tokenizer_vocab(t) > src->hp.vocab) {
		rc = moe_fail(MOE_EFORMAT, "%s: %zu token ids, more than the model's vocabulary (%llu)", what,
			      moe_tokenizer_vocab(t), (unsigned long long)src->hp.vocab);
		goto out;
	}
	if ((rc = moe_tokenizer_to_binary(t, &bin, &bin_len)))
		goto out;
	meta_put_blob(m, "tokenizer.json", json, len);
	meta_put_blob(m, "tokenizer.bin", bin, bin_len);
	*has = 1;
config_only:
	if (config) {
		if ((rc = moe_chat_template_from_config(config, config_len, "tokenizer_config.json", &tmpl)))
			goto out;
		meta_put_blob(m, "tokenizer.config_json", config, config_len);
		if (tmpl)
			meta_put_str(m, "tokenizer.chat_template", tmpl);
	}
out:
	moe_tokenizer_free(t);
	free(bin);
	free(tmpl);
	free(own);
	free(own_cfg);
	return rc;
}

static int build_meta(struct moe_source *src, const struct pack_options *o, struct moe_meta_writer *m, int *tok)
{
	int rc = moe_hparams_to_meta(&src->hp, m);
	if (rc)
		return rc;
	const char *base = strrchr(src->path, '/');
	base = base && base[1] ? base + 1 : src->path;
	meta_put_str(m, "general.name", base);
	if ((rc = add_tokenizer(src, o, m, tok)))
		return rc;
	if (src->config_json)
		meta_put_blob(m, "source.config_json", src->config_json, src->config_json_len);
	XXH3_state_t *h = XXH3_createState();
	if (!h)
		return moe_fail(MOE_ENOMEM, "out of memory");
	XXH3_64bits_reset(h);
	for (size_t i = 0; i < src->n_files; i++)
		XXH3_64bits_update(h, &src->files[i].header_xxh3, 8);
	meta_put_str(m, "provenance.tool", PACKAGE_NAME " moe-pack " PACKAGE_VERSION);
	meta_put_str(m, "provenance.source", src->path);
	meta_put_str(m, "provenance.source_format", src->kind);
	meta_put_u64(m, "provenance.source_headers_xxh3", XXH3_64bits_digest(h));
	meta_put_str(m, "provenance.quant", o->quant_desc);
	meta_put_u64(m, "provenance.zstd_level", (uint64_t)o->zstd_level);
	meta_put_f64(m, "provenance.zstd_min_saving", o->zstd_min_saving);
	const size_t mtp = count_mtp(src);
	if (mtp) /* DeepSeek's multi-token-prediction layer: not imported, and said so in --info */
		meta_put_u64(m, "provenance.skipped_mtp_tensors", mtp);
	XXH3_freeState(h);
	return meta_finish(m);
}

/* Tell the user about source tensors the model does not use (DeepSeek's MTP layer, stray tensors). */
static void report_unused(struct moe_source *src)
{
	size_t unused = 0;
	const char *first = NULL;
	for (size_t i = 0; i < src->n_entries; i++) {
		const struct src_entry *e = &src->entries[i];
		unsigned long long l;
		if (e->used || ((sscanf(e->name, "model.layers.%llu.", &l) == 1 || sscanf(e->name, "blk.%llu.", &l) == 1) &&
				l >= src->hp.n_layers))
			continue;
		if (!first)
			first = e->name;
		unused++;
	}
	const size_t mtp = count_mtp(src);
	if (mtp)
		fprintf(stderr, "moe-pack: note: skipped %zu tensors of layers past the model's (multi-token prediction)\n",
			mtp);
	if (unused)
		fprintf(stderr, "moe-pack: warning: %zu source tensors not used by %s, e.g. %s\n", unused,
			moe_arch_name(src->hp.arch), first);
}

/* Each expert's matrix types. They may differ by layer (GGUF's _M mixes give some
 * layers' ffn_down more bits): each combination is a layout of the pack. */
static int expert_types(const struct pack_options *o, const struct moe_hparams *hp, struct pipeline *p)
{
	for (size_t i = 0; i < p->n_jobs; i++)
		for (int m = 0; m < 3; m++) {
			const struct src_entry *e = p->jobs[i].m[m];
			struct moe_tensor_spec ex[3];
			moe_arch_expert_tensors(hp, p->jobs[i].layer, p->jobs[i].expert, ex);
			const int t = choose_type(o, hp, ex[m].name, MOE_KIND_EXPERT, 2, e->cols, e);
			if (t < 0)
				return t;
			p->jobs[i].type[m] = t;
		}
	return 0;
}

int pack_model(struct moe_source *src, const char *out, const struct pack_options *o)
{
	const struct moe_hparams *hp = &src->hp;
	const double t0 = moe_now();
	struct moe_packw *w = NULL;
	struct moe_meta_writer meta;
	meta_init(&meta);
	size_t n_dense = moe_arch_dense_tensors(hp, NULL, 0);
	struct moe_tensor_spec *specs = calloc(n_dense, sizeof *specs);
	struct src_entry **dsrc = calloc(n_dense, sizeof *dsrc);
	int *dtype = calloc(n_dense, sizeof *dtype), *didx = calloc(n_dense, sizeof *didx);
	struct pipeline p = {.src = src, .o = o};
	int rc = 0, has_tok = 0;
	if (!specs || !dsrc || !dtype || !didx) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto out;
	}
	moe_arch_dense_tensors(hp, specs, n_dense);
	if ((rc = src_check_output(src, o->tokenizer_path, out, 0, o->force)))
		goto out;

	/* 1. find every tensor and check its shape before writing a byte */
	for (size_t i = 0; i < n_dense && !rc; i++) {
		rc = src_lookup(src, &specs[i], &dsrc[i]);
		if (rc == MOE_ENOTFOUND && specs[i].optional) {
			rc = 0;
			dsrc[i] = NULL;
		}
	}
	for (uint64_t l = 0; l < hp->n_layers && !rc; l++) {
		if (!moe_layer_is_moe(hp, l))
			continue;
		struct job *nj = realloc(p.jobs, (p.n_jobs + hp->n_experts) * sizeof *nj);
		if (!nj) {
			rc = moe_fail(MOE_ENOMEM, "out of memory");
			break;
		}
		p.jobs = nj;
		for (uint64_t e = 0; e < hp->n_experts && !rc; e++) {
			struct moe_tensor_spec ex[3];
			moe_arch_expert_tensors(hp, l, e, ex);
			struct job *j = &p.jobs[p.n_jobs++];
			j->layer = (uint32_t)l;
			j->expert = (uint32_t)e;
			for (int m = 0; m < 3 && !rc; m++)
				rc = src_lookup(src, &ex[m], &j->m[m]);
		}
	}
	/* every type chosen before anything is said or written */
	for (size_t i = 0; i < n_dense && !rc; i++)
		if (dsrc[i] && (dtype[i] = choose_type(o, hp, specs[i].name, specs[i].kind, specs[i].n_dims, dsrc[i]->cols,
						       dsrc[i])) < 0)
			rc = dtype[i];
	if (!rc)
		rc = expert_types(o, hp, &p);
	if (rc)
		goto out;
	if ((rc = build_meta(src, o, &meta, &has_tok)))
		goto out;
	if (!has_tok && strcmp(src->kind, "synth") != 0) /* synthetic models have none by design */
		fprintf(stderr, "moe-pack: warning: %s has no tokenizer%s; the pack runs on token ids only\n", src->path,
			strcmp(src->kind, "safetensors") == 0 ? " (no tokenizer.json)"
			: strcmp(src->kind, "gguf") != 0 || src->tokenizer_note[0] ? ""
			: src->no_tokenizer_ok ? " (tokenizer.ggml.model = none)" : " (no tokenizer.ggml.model)");
	if (src->note[0])
		fprintf(stderr, "moe-pack: note: %s\n", src->note);
	if (src->tokenizer_note[0] && !o->tokenizer_path)
		fprintf(stderr, "moe-pack: note: %s; pass --tokenizer tokenizer.json\n", src->tokenizer_note);

	/* 2. declare the layout */
	if ((rc = packw_create(out, o->force, o->alignment, &w)))
		goto out;
	if ((rc = packw_set_meta(w, &meta, has_tok ? PACK_F_TOKENIZER : 0)))
		goto out;
	for (size_t i = 0; i < n_dense && !rc; i++) {
		if (!dsrc[i])
			continue;
		uint64_t dims[2] = {specs[i].dims[0], specs[i].n_dims == 2 ? specs[i].dims[1] : 0};
		didx[i] = packw_declare_tensor(w, specs[i].name, dtype[i], dims);
		if (didx[i] < 0)
			rc = didx[i];
	}
	if (!rc && p.n_jobs) {
		uint64_t rows[3], cols[3];
		for (int m = 0; m < 3; m++) {
			rows[m] = p.jobs[0].m[m]->rows;
			cols[m] = p.jobs[0].m[m]->cols;
		}
		for (size_t i = 0; i < p.n_jobs && !rc; i++) {
			struct job *j = &p.jobs[i];
			const int layout = packw_declare_expert_layout(w, j->type, rows, cols);
			rc = layout < 0 ? layout : packw_declare_expert(w, j->layer, j->expert, layout);
			if (rc)
				break;
			j->raw_size = packw_expert_raw_size(w, layout);
			for (int m = 0; m < 3; m++)
				j->offset[m] = packw_expert_matrix_offset(w, layout, m);
			if (j->raw_size > p.raw_size)
				p.raw_size = j->raw_size;
		}
	}
	if (rc)
		goto out;

	/* 3. dense tensors, in order */
	struct moe_progress bar;
	moe_progress_start(&bar, o->progress, "dense", "tensors", n_dense);
	for (size_t i = 0; i < n_dense && !rc && !(rc = pack_interrupt_check()); i++) {
		if (dsrc[i])
			rc = pack_dense(src, w, didx[i], dsrc[i], dtype[i], o->threads);
		moe_progress_update(&bar, i + 1, packw_bytes_written(w));
	}
	moe_progress_end(&bar);
	if (rc)
		goto out;

	/* 4. experts */
	if (p.n_jobs) {
		p.zstd_keep = o->zstd_min_saving < 100.0 ? 1.0 - o->zstd_min_saving / 100.0 : 0.0;
		const uint64_t comp_cap = (uint64_t)((double)p.raw_size * p.zstd_keep);
		uint64_t per_slot = p.raw_size + comp_cap + CHUNK_FLOATS * sizeof(float);
		uint64_t slots = o->memory_budget / per_slot;
		p.n_slots = (int)(slots < 1 ? 1 : slots > (uint64_t)o->threads + 1 ? (uint64_t)o->threads + 1 : slots);
		/* fewer blobs in flight than cores: each blob's conversion and zstd frame use the rest */
		p.zstd_workers = p.n_slots < o->threads ? o->threads / p.n_slots : 0;
		p.convert_threads = p.n_slots < o->threads ? o->threads / p.n_slots : 1;
		rc = run_experts(&p, w);
		if (rc)
			goto out;
	}
	rc = packw_finish(w);
	w = NULL;
	if (rc)
		goto out;
	report_unused(src);

	moe_pack *pk;
	if ((rc = moe_pack_open(out, &pk)))
		goto out;
	uint64_t raw = 0, stored = 0, zst = 0;
	for (size_t i = 0; i < moe_pack_expert_count(pk); i++) {
		moe_expert_info ei;
		moe_pack_expert_at(pk, i, &ei);
		raw += ei.raw_size;
		stored += ei.stored_size;
		zst += ei.codec == MOE_CODEC_ZSTD;
	}
	printf("packed %s -> %s: %s, %zu dense tensors, %zu experts (%llu zstd, stored/raw %.3f), %.2f GB in %.1f s\n",
	       src->path, out, moe_arch_name(hp->arch), moe_pack_tensor_count(pk), moe_pack_expert_count(pk),
	       (unsigned long long)zst, raw ? (double)stored / (double)raw : 1.0, (double)moe_pack_file_size(pk) / 1e9,
	       moe_now() - t0);
	moe_pack_close(pk);
out:
	if (w)
		packw_abort(w);
	meta_free(&meta);
	free(specs);
	free(dsrc);
	free(dtype);
	free(didx);
	free(p.jobs);
	return rc;
}

/* ---- sizes without writing (moe-pack synth --format plan) ---- */

static uint64_t tensor_bytes(const struct pack_options *o, const struct moe_hparams *hp, const struct moe_tensor_spec *t)
{
	const uint64_t cols = t->n_dims == 2 ? t->dims[1] : t->dims[0], rows = t->n_dims == 2 ? t->dims[0] : 1;
	const int type = choose_type(o, hp, t->name, t->kind, t->n_dims, cols, NULL);
	return type < 0 ? 0 : moe_type_matrix_bytes(type, rows, cols);
}

int pack_plan(const struct moe_hparams *hp, const struct pack_options *o)
{
	const size_t max = 64 + 32 * (size_t)hp->n_layers;
	struct moe_tensor_spec *specs = calloc(max, sizeof *specs);
	if (!specs)
		return moe_fail(MOE_ENOMEM, "out of memory");
	const size_t n = moe_arch_dense_tensors(hp, specs, max);
	uint64_t dense = 0, embed = 0, shared = 0;
	for (size_t i = 0; i < n; i++) {
		if (specs[i].optional && hp->tie_embeddings)
			continue;
		const uint64_t b = tensor_bytes(o, hp, &specs[i]);
		dense += b;
		embed += specs[i].kind == MOE_KIND_EMBED ? b : 0;
		shared += strstr(specs[i].name, "_shexp") ? b : 0;
	}
	free(specs);
	uint64_t n_experts = 0, experts = 0, blob = 0; /* a mix gives some layers' experts more bits */
	for (uint64_t l = 0; l < hp->n_layers; l++) {
		if (!moe_layer_is_moe(hp, l))
			continue;
		struct moe_tensor_spec m[3];
		moe_arch_expert_tensors(hp, l, 0, m);
		uint64_t b = 0;
		for (int i = 0; i < 3; i++)
			b += tensor_bytes(o, hp, &m[i]);
		n_experts += hp->n_experts;
		experts += hp->n_experts * b;
		blob = b > blob ? b : blob;
	}
	/* f16 KV cache: MLA keeps the latent and the rotary key; the others K and V per kv head,
	 * in the attention layers (Qwen3-Next's linear layers keep a fixed f32 state instead) */
	uint64_t attn_layers = 0, linear_state = 0;
	for (uint64_t l = 0; l < hp->n_layers; l++)
		if (hp->linear[l])
			linear_state += (hp->lin_v_heads * hp->lin_k_dim * hp->lin_v_dim + (hp->lin_conv - 1) * moe_lin_conv_dim(hp)) * 4;
		else
			attn_layers++;
	const uint64_t kv_token = hp->arch == MOE_ARCH_DEEPSEEK_V3
		? hp->n_layers * (hp->kv_lora_rank + hp->qk_rope_dim) * 2
		: attn_layers * 2 * hp->n_kv_heads * hp->head_dim * 2;
	const double GB = 1e9;
	printf("plan: %s, %llu layers, -q %s (nothing written)\n", moe_arch_name(hp->arch),
	       (unsigned long long)hp->n_layers, o->quant_desc);
	printf("  resident (dense tensors)     %9.2f GB  (%llu bytes; embeddings %.2f GB, shared experts %.2f GB)\n",
	       dense / GB, (unsigned long long)dense, embed / GB, shared / GB);
	printf("  routed experts               %9.2f GB  (%llu bytes: %llu experts, at most %llu bytes each)\n",
	       (double)experts / GB, (unsigned long long)experts, (unsigned long long)n_experts, (unsigned long long)blob);
	printf("  KV cache (f16) per 1K tokens %9.3f GB\n", kv_token * 1024 / GB);
	if (linear_state)
		printf("  linear attention state       %9.3f GB  (per session, whatever the context)\n", linear_state / GB);
	printf("  least --ram-budget at 4K context: resident + KV%s + two experts = %.2f GB (+ scratch)\n",
	       linear_state ? " + state" : "", (dense + kv_token * 4096 + linear_state + 2 * blob) / GB);
	return 0;
}
