/* source.c - the table of source tensors and the generic row reader. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fileio.h"
#include "pack/format.h"
#include "quant/quant.h"
#include "source.h"

const char *const src_dtype_names[] = {"F32", "F16", "BF16", "F64", "F8_E4M3", "Q8_0", "Q4_0", "GGUF blocks", "attn_k_b + attn_v_b",
				       "synthetic", "U8", "MXFP4 blocks + scales", "strided view", "rows view"};

int src_open(const char *path, struct moe_source **out)
{
	*out = NULL;
	struct stat st;
	if (stat(path, &st) != 0)
		return moe_fail(moe_errno_code(errno), "%s: %s", path, strerror(errno));
	struct moe_source *src = calloc(1, sizeof *src);
	if (!src)
		return moe_fail(MOE_ENOMEM, "out of memory");
	src->path = strdup(path);
	int rc = S_ISDIR(st.st_mode) ? src_open_safetensors(path, src) : src_open_gguf(path, src);
	if (rc) {
		src_close(src);
		return rc;
	}
	src_index(src);
	*out = src;
	return 0;
}

void src_close(struct moe_source *src)
{
	if (!src)
		return;
	for (size_t i = 0; i < src->n_files; i++) {
		if (src->files[i].fd >= 0)
			close(src->files[i].fd);
		free(src->files[i].path);
	}
	free(src->files);
	for (size_t i = 0; i < src->n_entries; i++) {
		free(src->entries[i].name);
		free(src->entries[i].scale_name);
		free(src->entries[i].kb_name);
		free(src->entries[i].base_name);
		free(src->entries[i].vb_name);
	}
	free(src->entries);
	free(src->tokenizer_json);
	free(src->tokenizer_bin);
	free(src->chat_template);
	free(src->tokenizer_config);
	free(src->generation_config);
	free(src->config_json);
	free(src->path);
	free(src);
}

struct src_entry *src_add(struct moe_source *src, const char *name)
{
	if (src->n_entries == src->cap_entries) {
		size_t cap = src->cap_entries ? src->cap_entries * 2 : 1024;
		struct src_entry *ne = realloc(src->entries, cap * sizeof *ne);
		if (!ne)
			return NULL;
		src->entries = ne;
		src->cap_entries = cap;
	}
	struct src_entry *e = &src->entries[src->n_entries];
	memset(e, 0, sizeof *e);
	e->name = strdup(name);
	if (!e->name)
		return NULL;
	src->n_entries++;
	return e;
}

int src_add_file(struct moe_source *src, const char *path)
{
	struct src_file *nf = realloc(src->files, (src->n_files + 1) * sizeof *nf);
	if (!nf)
		return moe_fail(MOE_ENOMEM, "out of memory");
	src->files = nf;
	struct src_file *f = &src->files[src->n_files];
	memset(f, 0, sizeof *f);
	f->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (f->fd < 0)
		return moe_fail(moe_errno_code(errno), "%s: %s", path, strerror(errno));
	struct stat st;
	fstat(f->fd, &st);
	f->size = (uint64_t)st.st_size;
	f->dev = (uint64_t)st.st_dev;
	f->ino = (uint64_t)st.st_ino;
	f->path = strdup(path);
	src->n_files++;
	return (int)src->n_files - 1;
}

static int same_file(const struct stat *a, const char *path)
{
	struct stat b;
	return path && stat(path, &b) == 0 && a->st_dev == b.st_dev && a->st_ino == b.st_ino;
}

/* the names st_write_folder writes: config.json, model.safetensors,
 * model-NNNNN-of-NNNNN.safetensors and model.safetensors.index.json */
static int written_by_us(const char *name)
{
	unsigned a, b;
	int end = 0;
	if (!strcmp(name, "config.json") || !strcmp(name, "model.safetensors") ||
	    !strcmp(name, "model.safetensors.index.json"))
		return 1;
	return sscanf(name, "model-%5u-of-%5u.safetensors%n", &a, &b, &end) == 2 && end &&
	       name[end] == '\0' && strlen(name) == strlen("model-00001-of-00001.safetensors");
}

static int check_folder(const char *out)
{
	DIR *d = opendir(out);
	if (!d)
		return moe_fail(moe_errno_code(errno), "%s: %s", out, strerror(errno));
	char foreign[512] = "";
	size_t n_foreign = 0, shown = 0, len = 0;
	for (struct dirent *de; (de = readdir(d));) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") || written_by_us(de->d_name))
			continue;
		n_foreign++;
		if (shown < 8 && len + strlen(de->d_name) + 2 < sizeof foreign) {
			len += (size_t)snprintf(foreign + len, sizeof foreign - len, "%s%s", len ? ", " : "", de->d_name);
			shown++;
		}
	}
	closedir(d);
	if (n_foreign)
		return moe_fail(MOE_EEXIST, "%s: holds %zu file%s moe-pack does not write (%s%s); not replaced, "
				"even with --force", out, n_foreign, n_foreign > 1 ? "s" : "", foreign,
				shown < n_foreign ? ", ..." : "");
	return 0;
}

static int check_file(const char *out, const struct stat *st)
{
	if (!S_ISREG(st->st_mode))
		return moe_fail(MOE_EEXIST, "%s: exists and is not a regular file; not replaced", out);
	if (st->st_size == 0)
		return 0;
	char head[8] = {0};
	const int fd = open(out, O_RDONLY | O_CLOEXEC);
	const ssize_t r = fd >= 0 ? read(fd, head, sizeof head) : -1;
	if (fd >= 0)
		close(fd);
	if (r == (ssize_t)sizeof head && (!memcmp(head, PACK_MAGIC, 8) || !memcmp(head, "GGUF", 4)))
		return 0;
	return moe_fail(MOE_EEXIST, "%s: exists and is neither a moemap pack nor a GGUF; not replaced, even with --force",
			out);
}

int src_check_output(const struct moe_source *src, const char *also_read, const char *out, int folder, int force)
{
	struct stat st;
	if (stat(out, &st) != 0)
		return 0;
	if (!force)
		return moe_fail(MOE_EEXIST, "%s: exists (use --force to overwrite)", out);
	const char *source = same_file(&st, src->path) ? src->path : same_file(&st, also_read) ? also_read : NULL;
	if (source)
		return moe_fail(MOE_EEXIST, "%s: is the source %s; write to another name", out, source);
	for (size_t i = 0; i < src->n_files; i++)
		if (src->files[i].dev == (uint64_t)st.st_dev && src->files[i].ino == (uint64_t)st.st_ino)
			return moe_fail(MOE_EEXIST, "%s: is the source file %s; write to another name", out,
					src->files[i].path);
	if (folder)
		return S_ISDIR(st.st_mode) ? check_folder(out)
					   : moe_fail(MOE_EEXIST, "%s: exists and is not a folder; not replaced", out);
	return S_ISDIR(st.st_mode) ? moe_fail(MOE_EEXIST, "%s: is a folder; not replaced", out) : check_file(out, &st);
}

static int cmp_entry(const void *a, const void *b)
{
	return strcmp(((const struct src_entry *)a)->name, ((const struct src_entry *)b)->name);
}

void src_index(struct moe_source *src)
{
	if (!src->n_entries) /* qsort and bsearch take no NULL array, even empty */
		return;
	qsort(src->entries, src->n_entries, sizeof *src->entries, cmp_entry);
	for (size_t i = 0; i < src->n_entries; i++) {
		struct src_entry *e = &src->entries[i];
		if (e->scale_name)
			e->scale = src_find(src, e->scale_name);
		if (e->kb_name) {
			e->kb = src_find(src, e->kb_name);
			e->vb = src_find(src, e->vb_name);
		}
		if (e->base_name)
			e->base = src_find(src, e->base_name);
	}
}

struct src_entry *src_find(struct moe_source *src, const char *name)
{
	struct src_entry key = {.name = (char *)name};
	if (!src->n_entries)
		return NULL;
	return bsearch(&key, src->entries, src->n_entries, sizeof key, cmp_entry);
}

/* kv_b joined from llama.cpp's parts: k_b per head [kv_lora_rank, qk_nope] (kv_b's key
 * rows, transposed), v_b per head [v_head, kv_lora_rank]; both there, and shaped so. */
static int check_mla_kv_b(const struct moe_source *src, const struct src_entry *e)
{
	const struct src_entry *kb = e->kb, *vb = e->vb;
	const uint64_t h = kb ? kb->heads : 0;
	if (!kb || !vb || !h || kb->heads != vb->heads || kb->rows != h * e->cols || vb->cols != e->cols ||
	    vb->rows % h || e->rows != h * (kb->cols + vb->rows / h))
		return moe_fail(MOE_EFORMAT, "%s: %s and %s do not make %s [%llu, %llu]", src->path, e->kb_name, e->vb_name,
				e->name, (unsigned long long)e->rows, (unsigned long long)e->cols);
	return 0;
}

/* A view's rows and columns fall inside what it reads: an MXFP4 pair's blocks are
 * [rows, cols / 32 * 16] bytes and its scales [rows, cols / 32], as the release has them. */
static int check_view(const struct moe_source *src, const struct src_entry *e)
{
	const struct src_entry *b = e->base, *s = e->scale;
	if (e->dtype == SRC_VIEW) {
		if (!b || b->n_dims > 2 || b->dtype == SRC_U8 || e->rows != b->rows || !e->col_step ||
		    e->col_off + (e->cols - 1) * e->col_step >= b->cols)
			return moe_fail(MOE_EFORMAT, "%s: %s does not hold %s [%llu, %llu]", src->path, e->base_name, e->name,
					(unsigned long long)e->rows, (unsigned long long)e->cols);
		return 0;
	}
	const uint64_t groups = e->cols / 32, last = e->base_row0 + (e->rows - 1) * e->row_step;
	if (!b || !s || b->dtype != SRC_U8 || s->dtype != SRC_U8 || e->cols % 32 || b->cols != 16 || s->cols != groups ||
	    b->rows != s->rows * groups || last >= s->rows)
		return moe_fail(MOE_EFORMAT, "%s: %s and %s do not hold %s [%llu, %llu] as MXFP4 blocks and scales",
				src->path, e->base_name, e->scale_name, e->name, (unsigned long long)e->rows,
				(unsigned long long)e->cols);
	return 0;
}

struct src_entry *src_add_rows(struct moe_source *src, const char *name, const char *base, uint64_t cols)
{
	struct src_entry *v = src_add(src, name);
	if (!v || !(v->base_name = strdup(base)))
		return NULL;
	v->dtype = SRC_ROWS;
	v->n_dims = 2;
	v->cols = cols;
	return v;
}

void src_rows_segment(struct src_entry *v, uint64_t rows, uint64_t row0, uint64_t run, uint64_t stride)
{
	int k = 0;
	while (k < 2 && v->seg_rows[k])
		k++;
	v->seg_rows[k] = rows, v->seg_row0[k] = row0, v->seg_run[k] = run, v->seg_stride[k] = stride;
	v->rows += rows;
}

int src_add_qwen3_next_views(struct moe_source *src, const char *qkvz, const char *ba, const char *const out[4])
{
	const struct moe_hparams *hp = &src->hp;
	const uint64_t nk = hp->lin_k_heads, nv = hp->lin_v_heads, dk = hp->lin_k_dim, dv = hp->lin_v_dim;
	const uint64_t r = nk ? nv / nk : 0, group = 2 * dk + 2 * r * dv, H = hp->hidden;
	struct src_entry *v;
	if (qkvz) {
		if (!(v = src_add_rows(src, out[0], qkvz, H)))
			return moe_fail(MOE_ENOMEM, "out of memory");
		src_rows_segment(v, nk * dk, 0, dk, group);
		src_rows_segment(v, nk * dk, dk, dk, group);
		src_rows_segment(v, nv * dv, 2 * dk, r * dv, group);
		if (!(v = src_add_rows(src, out[1], qkvz, H)))
			return moe_fail(MOE_ENOMEM, "out of memory");
		src_rows_segment(v, nv * dv, 2 * dk + r * dv, r * dv, group);
	}
	for (int m = 0; ba && m < 2; m++) {
		if (!(v = src_add_rows(src, out[2 + m], ba, H)))
			return moe_fail(MOE_ENOMEM, "out of memory");
		src_rows_segment(v, nv, m ? r : 0, r, 2 * r);
	}
	return 0;
}

/* base's row for row r of a SRC_ROWS view (checked by check_rows) */
static uint64_t view_row(const struct src_entry *e, uint64_t r)
{
	int k = 0;
	while (k < 2 && r >= e->seg_rows[k])
		r -= e->seg_rows[k++];
	return e->seg_row0[k] + (r / e->seg_run[k]) * e->seg_stride[k] + r % e->seg_run[k];
}

/* A rows view's segments add up to its rows, and every row they name is one of base's. */
static int check_rows(const struct moe_source *src, const struct src_entry *e)
{
	const struct src_entry *b = e->base;
	uint64_t total = 0;
	int ok = b && b->dtype != SRC_U8 && b->dtype != SRC_ROWS && b->cols == e->cols;
	for (int k = 0; k < 3 && ok; k++) {
		const uint64_t n = e->seg_rows[k], run = e->seg_run[k];
		if (!n)
			continue;
		uint64_t last;
		ok = run && !__builtin_mul_overflow((n - 1) / run, e->seg_stride[k], &last) &&
		     !__builtin_add_overflow(last, e->seg_row0[k] + (n - 1) % run, &last) && last < b->rows;
		total += n;
	}
	if (!ok || total != e->rows || !e->rows)
		return moe_fail(MOE_EFORMAT, "%s: %s does not hold %s [%llu, %llu]", src->path, e->base_name, e->name,
				(unsigned long long)e->rows, (unsigned long long)e->cols);
	return 0;
}

int src_lookup(struct moe_source *src, const struct moe_tensor_spec *spec, struct src_entry **out)
{
	struct src_entry *e = src_find(src, spec->name);
	if (!e)
		e = src_find(src, spec->hf_name);
	*out = e;
	if (!e)
		return moe_fail(MOE_ENOTFOUND, "%s: tensor %s (%s) missing", src->path, spec->hf_name, spec->name);
	uint64_t rows = spec->dims[0], cols = spec->n_dims == 2 ? spec->dims[1] : 1;
	if (e->n_dims != spec->n_dims || e->rows != rows || e->cols != cols)
		return moe_fail(MOE_EFORMAT, "%s: tensor %s has shape [%llu, %llu], the config implies [%llu, %llu]",
				src->path, e->name, (unsigned long long)e->rows, (unsigned long long)e->cols,
				(unsigned long long)rows, (unsigned long long)cols);
	if (e->dtype == SRC_F8_E4M3) {
		const struct src_entry *s = e->scale;
		const uint64_t srows = (rows + 127) / 128, scols = (cols + 127) / 128;
		if (!s)
			return moe_fail(MOE_ENOTFOUND, "%s: FP8 tensor %s has no %s", src->path, e->name, e->scale_name);
		if (s->rows != srows || s->cols != scols || s->dtype == SRC_F8_E4M3)
			return moe_fail(MOE_EFORMAT, "%s: %s has shape [%llu, %llu], [%llu, %llu] expected", src->path,
					s->name, (unsigned long long)s->rows, (unsigned long long)s->cols,
					(unsigned long long)srows, (unsigned long long)scols);
	}
	if (e->dtype == SRC_MLA_KV_B) {
		int rc = check_mla_kv_b(src, e);
		if (rc)
			return rc;
		e->kb->used = e->vb->used = 1;
	}
	if (e->dtype == SRC_ROWS) {
		int rc = check_rows(src, e);
		if (rc)
			return rc;
		e->base->used = 1;
	}
	if (e->dtype == SRC_MXFP4_HF || e->dtype == SRC_VIEW) {
		int rc = check_view(src, e);
		if (rc)
			return rc;
		e->base->used = 1;
	}
	e->used = 1;
	if (e->scale)
		e->scale->used = 1;
	return 0;
}

/* Rows of kv_b from llama.cpp's split form: head h's rows are its qk_nope key rows (columns
 * of k_b's head h, so that head is read whole) then its v_head value rows (rows of v_b). */
static int read_mla_kv_b(struct moe_source *src, const struct src_entry *e, uint64_t row0, uint64_t nrows, float *out)
{
	int rc = check_mla_kv_b(src, e); /* also here: a reader may come without src_lookup */
	if (rc)
		return rc;
	const struct src_entry *kb = e->kb, *vb = e->vb;
	const uint64_t kvl = e->cols, nope = kb->cols, vd = vb->rows / vb->heads, per_head = nope + vd;
	float *head = malloc(kvl * nope * sizeof(float)); /* k_b of one head: [kv_lora_rank][qk_nope] */
	if (!head)
		return moe_fail(MOE_ENOMEM, "out of memory reading %s", e->name);
	uint64_t have = UINT64_MAX;
	for (uint64_t r = row0; r < row0 + nrows && !rc; r++) {
		const uint64_t h = r / per_head, j = r % per_head;
		float *dst = out + (r - row0) * kvl;
		if (j >= nope) {
			rc = src_read_rows(src, vb, h * vd + (j - nope), 1, dst);
			continue;
		}
		if (h != have && !(rc = src_read_rows(src, kb, h * kvl, kvl, head)))
			have = h;
		for (uint64_t c = 0; c < kvl && !rc; c++)
			dst[c] = head[c * nope + j];
	}
	free(head);
	return rc;
}

int src_pack_type(const struct src_entry *e)
{
	switch (e->dtype) {
	case SRC_BLOCKS: return e->block_type;
	case SRC_F32: return MOE_TYPE_F32;
	case SRC_F16: return MOE_TYPE_F16;
	case SRC_BF16: return MOE_TYPE_BF16;
	case SRC_Q8_0: return MOE_TYPE_Q8;
	case SRC_Q4_0: return MOE_TYPE_Q4;
	case SRC_MXFP4_HF: return MOE_TYPE_MXFP4;
	case SRC_ROWS: return e->base ? src_pack_type(e->base) : -1;
	}
	return -1;
}

/* nrows rows of an MXFP4 pair as GGUF MXFP4 blocks {e, qs[16]}: the release packs
 * weights 2j and 2j+1 of a block into byte j (low nibble first), ggml weights j and
 * j + 16; the E8M0 scale is the same byte. */
static int mxfp4_rows(struct moe_source *src, const struct src_entry *e, uint64_t row0, uint64_t nrows, uint8_t *out)
{
	int rc = check_view(src, e);
	const struct src_entry *b = e->base, *s = e->scale;
	const uint64_t groups = e->cols / 32;
	uint8_t *q = malloc(groups * 17);
	if (!rc && !q)
		rc = moe_fail(MOE_ENOMEM, "out of memory reading %s", e->name);
	for (uint64_t r = 0; r < nrows && !rc; r++) {
		const uint64_t hf = e->base_row0 + (row0 + r) * e->row_step;
		rc = moe_pread_full(src->files[s->file].fd, q, groups, s->offset + hf * groups, src->files[s->file].path);
		if (!rc)
			rc = moe_pread_full(src->files[b->file].fd, q + groups, groups * 16, b->offset + hf * groups * 16,
					    src->files[b->file].path);
		for (uint64_t g = 0; g < groups && !rc; g++) {
			uint8_t *blk = out + (r * groups + g) * 17, v[32];
			const uint8_t *in = q + groups + g * 16;
			for (int j = 0; j < 16; j++)
				v[2 * j] = in[j] & 15, v[2 * j + 1] = in[j] >> 4;
			blk[0] = q[g];
			for (int j = 0; j < 16; j++)
				blk[1 + j] = (uint8_t)(v[j] | v[j + 16] << 4);
		}
	}
	free(q);
	return rc;
}

/* rows of a strided view: base's rows, every col_step-th column from col_off */
static int read_view(struct moe_source *src, const struct src_entry *e, uint64_t row0, uint64_t nrows, float *out)
{
	int rc = check_view(src, e);
	const uint64_t bc = e->base ? e->base->cols : 0;
	float *row = rc ? NULL : malloc(bc * sizeof(float));
	if (!rc && !row)
		rc = moe_fail(MOE_ENOMEM, "out of memory reading %s", e->name);
	for (uint64_t r = 0; r < nrows && !rc; r++) {
		rc = src_read_rows(src, e->base, row0 + r, 1, row);
		for (uint64_t c = 0; c < e->cols && !rc; c++)
			out[r * e->cols + c] = row[e->col_off + c * e->col_step];
	}
	free(row);
	return rc;
}

/* bytes of one stored row */
static uint64_t row_bytes(const struct src_entry *e, uint64_t cols)
{
	switch (e->dtype) {
	case SRC_BLOCKS: return moe_type_row_bytes(e->block_type, cols);
	case SRC_F32: return cols * 4;
	case SRC_F64: return cols * 8;
	case SRC_F16:
	case SRC_BF16: return cols * 2;
	case SRC_F8_E4M3: return cols;
	case SRC_Q8_0: return cols / 32 * sizeof(gguf_block_q8_0);
	case SRC_Q4_0: return cols / 32 * sizeof(gguf_block_q4_0);
	}
	return 0;
}

/* GGUF's llama converter permuted each head's rows: HF row h*hd + j*hd/2 + i is
 * stored at h*hd + 2*i + j. Return the stored row of canonical row r. */
static uint64_t stored_row(const struct src_entry *e, uint64_t r)
{
	if (!e->permute_head)
		return r;
	uint64_t hd = e->permute_head, h = r / hd, k = r % hd, half = hd / 2;
	uint64_t j = k / half, i = k % half;
	return h * hd + 2 * i + j;
}

/* splitmix64: a counter-based generator, so any chunking yields the same values */
static inline uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

float synth_value(const struct src_entry *e, uint64_t i)
{
	/* sum of 4 uniforms, rescaled to unit variance: cheap, bounded, near-normal */
	uint64_t a = mix64(e->seed ^ (i * 2)), b = mix64(e->seed ^ (i * 2 + 1));
	float s = (float)(a & 0xffffffffu) + (float)(a >> 32) + (float)(b & 0xffffffffu) + (float)(b >> 32);
	float u = s * (1.0f / 4294967296.0f) - 2.0f; /* mean 0, variance 4/12 */
	return e->mean + e->std * u * 1.7320508f;
}

int src_read_rows(struct moe_source *src, const struct src_entry *e, uint64_t row0, uint64_t nrows, float *out)
{
	const uint64_t cols = e->cols;
	if (e->dtype == SRC_MLA_KV_B)
		return read_mla_kv_b(src, e, row0, nrows, out);
	if (e->dtype == SRC_VIEW)
		return read_view(src, e, row0, nrows, out);
	if (e->dtype == SRC_ROWS) {
		int rc = check_rows(src, e); /* also here: a reader may come without src_lookup */
		for (uint64_t r = 0; r < nrows && !rc;) {
			uint64_t run = 1; /* rows that follow each other in base too: one read */
			const uint64_t br = view_row(e, row0 + r);
			while (r + run < nrows && view_row(e, row0 + r + run) == br + run)
				run++;
			rc = src_read_rows(src, e->base, br, run, out + r * cols);
			r += run;
		}
		return rc;
	}
	if (e->dtype == SRC_MXFP4_HF) {
		uint8_t *blk = malloc(nrows * (cols / 32) * 17 + 1);
		int rc = blk ? mxfp4_rows(src, e, row0, nrows, blk) : moe_fail(MOE_ENOMEM, "out of memory reading %s", e->name);
		if (!rc)
			moe_dequantize_rows(MOE_TYPE_MXFP4, blk, NULL, nrows, cols, out);
		free(blk);
		return rc;
	}
	if (e->dtype == SRC_SYNTH) {
		for (uint64_t r = 0; r < nrows; r++)
			for (uint64_t c = 0; c < cols; c++)
				out[r * cols + c] = synth_value(e, (row0 + r) * cols + c);
		return 0;
	}
	const struct src_file *f = &src->files[e->file];
	const uint64_t rb = row_bytes(e, cols);
	uint8_t *buf = malloc(rb * nrows);
	float *scale_row = NULL;
	if (!buf)
		return moe_fail(MOE_ENOMEM, "out of memory reading %s", e->name);
	int rc = 0;
	if (e->permute_head) {
		for (uint64_t r = 0; r < nrows && !rc; r++)
			rc = moe_pread_full(f->fd, buf + r * rb, rb, e->offset + stored_row(e, row0 + r) * rb, f->path);
	} else {
		rc = moe_pread_full(f->fd, buf, rb * nrows, e->offset + row0 * rb, f->path);
	}
	if (rc)
		goto out;
	const uint64_t n = nrows * cols;
	switch (e->dtype) {
	case SRC_F32:
		memcpy(out, buf, n * 4);
		break;
	case SRC_F64:
		for (uint64_t i = 0; i < n; i++) {
			double d;
			memcpy(&d, buf + i * 8, 8);
			out[i] = (float)d;
		}
		break;
	case SRC_F16:
	case SRC_BF16:
		for (uint64_t i = 0; i < n; i++) {
			uint16_t h;
			memcpy(&h, buf + i * 2, 2);
			out[i] = e->dtype == SRC_F16 ? moe_f16_to_f32(h) : moe_bf16_to_f32(h);
		}
		break;
	case SRC_F8_E4M3: {
		const struct src_entry *s = e->scale;
		const uint64_t scols = (cols + 127) / 128;
		scale_row = malloc(scols * sizeof(float));
		if (!scale_row) {
			rc = moe_fail(MOE_ENOMEM, "out of memory");
			goto out;
		}
		uint64_t have = UINT64_MAX;
		for (uint64_t r = 0; r < nrows; r++) {
			uint64_t sr = (row0 + r) / 128;
			if (sr != have) {
				if ((rc = src_read_rows(src, s, sr, 1, scale_row)))
					goto out;
				have = sr;
			}
			for (uint64_t c = 0; c < cols; c++)
				out[r * cols + c] = moe_fp8_e4m3_to_f32(buf[r * cols + c]) * scale_row[c / 128];
		}
		break;
	}
	case SRC_Q8_0:
	case SRC_Q4_0: {
		const int type = e->dtype == SRC_Q8_0 ? MOE_TYPE_Q8 : MOE_TYPE_Q4;
		const uint64_t nb = n / 32;
		uint8_t *codes = malloc(moe_type_row_bytes(type, n));
		uint16_t *scales = malloc(nb * 2);
		if (!codes || !scales) {
			free(codes);
			free(scales);
			rc = moe_fail(MOE_ENOMEM, "out of memory");
			goto out;
		}
		if (type == MOE_TYPE_Q8)
			moe_q8_from_gguf((const gguf_block_q8_0 *)buf, nb, (int8_t *)codes, scales);
		else
			moe_q4_from_gguf((const gguf_block_q4_0 *)buf, nb, codes, scales);
		moe_dequantize_rows(type, codes, scales, nrows, cols, out);
		free(codes);
		free(scales);
		break;
	}
	case SRC_BLOCKS:
		moe_dequantize_rows(e->block_type, buf, NULL, nrows, cols, out);
		break;
	default:
		rc = moe_fail(MOE_EUNSUPPORTED, "%s: unsupported dtype", e->name);
	}
	for (uint64_t i = 0; !rc && e->xform && i < n; i++)
		out[i] = e->xform == SRC_X_PLUS_ONE ? 1.0f + out[i] : -expf(out[i]);
out:
	free(scale_row);
	free(buf);
	return rc;
}

int src_read_blocks(struct moe_source *src, const struct src_entry *e, uint64_t row0, uint64_t nrows,
		    void *codes, uint16_t *scales)
{
	if (e->dtype == SRC_MXFP4_HF)
		return mxfp4_rows(src, e, row0, nrows, codes);
	if (e->dtype == SRC_ROWS) { /* row by row into the pack type's layout */
		const int type = src_pack_type(e);
		const int split = moe_type_is_split(type);
		const uint64_t code_bytes = moe_type_row_bytes(type, e->cols);
		int rc = check_rows(src, e);
		for (uint64_t r = 0; r < nrows && !rc; r++)
			rc = src_read_blocks(src, e->base, view_row(e, row0 + r), 1, (uint8_t *)codes + r * code_bytes,
					     split ? scales + r * (e->cols / 32) : NULL);
		return rc;
	}
	const struct src_file *f = &src->files[e->file];
	const uint64_t rb = row_bytes(e, e->cols), nb_row = e->cols / 32;
	uint8_t *buf = malloc(rb);
	if (!buf)
		return moe_fail(MOE_ENOMEM, "out of memory reading %s", e->name);
	int rc = 0;
	for (uint64_t r = 0; r < nrows && !rc; r++) {
		uint8_t *dst = e->dtype == SRC_BLOCKS ? (uint8_t *)codes + r * rb : buf; /* kept as they are */
		rc = moe_pread_full(f->fd, dst, rb, e->offset + stored_row(e, row0 + r) * rb, f->path);
		if (rc || e->dtype == SRC_BLOCKS)
			continue;
		if (e->dtype == SRC_Q8_0)
			moe_q8_from_gguf((const gguf_block_q8_0 *)buf, nb_row, (int8_t *)codes + r * nb_row * 32,
					 scales + r * nb_row);
		else
			moe_q4_from_gguf((const gguf_block_q4_0 *)buf, nb_row, (uint8_t *)codes + r * nb_row * 16,
					 scales + r * nb_row);
	}
	free(buf);
	return rc;
}
