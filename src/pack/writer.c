/* writer.c - pack writer: layout, streaming writes, checksums, atomic rename. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/error.h"
#include "common/fileio.h"
#include "common/util.h"
#include "format.h"
#include "moe.h"
#include "quant/quant.h"
#include "writer.h"

struct wtensor {
	char *name;
	int type;
	uint64_t dims[2];
	uint64_t offset, size, written;
	XXH3_state_t *hash;
	uint64_t xxh3;
};

struct moe_packw {
	char *path, *tmp;
	int fd, force;
	uint32_t alignment, flags;
	uint8_t *meta;
	size_t meta_len;
	struct wtensor *t;
	size_t nt, cap_t;
	struct pack_expert_header eh;       /* its matrices are layout 0 */
	struct pack_expert_layout *lay;     /* every layout, [0] included */
	uint32_t n_lay;
	struct pack_expert_rec *e;
	size_t ne, cap_e;
	int laid_out;
	uint64_t meta_off, tdir_off, tdir_size, etab_off, etab_size, dense_off, dense_end, exp_off, exp_end;
	int next_tensor; /* tensors are streamed in order */
	uint64_t written; /* tensor and expert bytes so far, for progress */
	size_t next_expert;
};

int packw_create(const char *path, int force, uint32_t alignment, struct moe_packw **out)
{
	*out = NULL;
	struct stat st;
	if (!force && stat(path, &st) == 0)
		return moe_fail(MOE_EEXIST, "%s: exists (use --force to overwrite)", path);
	if (alignment < PACK_MIN_ALIGN || (alignment & (alignment - 1)))
		return moe_fail(MOE_EINVAL, "alignment %u: must be a power of two >= %d", alignment, PACK_MIN_ALIGN);
	struct moe_packw *w = calloc(1, sizeof *w);
	if (!w)
		return moe_fail(MOE_ENOMEM, "out of memory");
	w->fd = -1;
	w->force = force;
	w->alignment = alignment;
	int rc;
	if (!(w->path = strdup(path)))
		rc = moe_fail(MOE_ENOMEM, "out of memory");
	else
		rc = moe_out_create(path, &w->tmp, &w->fd);
	if (rc) {
		packw_abort(w);
		return rc;
	}
	*out = w;
	return 0;
}

int packw_set_meta(struct moe_packw *w, const struct moe_meta_writer *meta, uint32_t flags)
{
	w->meta = malloc(meta->len);
	if (!w->meta)
		return moe_fail(MOE_ENOMEM, "out of memory");
	memcpy(w->meta, meta->buf, meta->len);
	w->meta_len = meta->len;
	w->flags = flags;
	return 0;
}

int packw_declare_tensor(struct moe_packw *w, const char *name, int type, const uint64_t dims[2])
{
	uint64_t cols = dims[1] ? dims[1] : 1;
	uint64_t size = moe_type_matrix_bytes(type, dims[0], cols);
	if (size == 0)
		return moe_fail(MOE_EINVAL, "tensor %s: [%llu, %llu] cannot be stored as %s", name,
				(unsigned long long)dims[0], (unsigned long long)dims[1], moe_type_name(type));
	if (strlen(name) > 0xffff)
		return moe_fail(MOE_EINVAL, "tensor name too long");
	if (w->nt == w->cap_t) {
		size_t cap = w->cap_t ? w->cap_t * 2 : 256;
		struct wtensor *nt = realloc(w->t, cap * sizeof *nt);
		if (!nt)
			return moe_fail(MOE_ENOMEM, "out of memory");
		w->t = nt;
		w->cap_t = cap;
	}
	struct wtensor *t = &w->t[w->nt];
	memset(t, 0, sizeof *t);
	t->name = strdup(name);
	t->hash = XXH3_createState();
	if (!t->name || !t->hash) {
		free(t->name);
		XXH3_freeState(t->hash);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	XXH3_64bits_reset(t->hash);
	t->type = type;
	t->dims[0] = dims[0];
	t->dims[1] = dims[1];
	t->size = size;
	return (int)w->nt++;
}

int packw_declare_expert_layout(struct moe_packw *w, const int type[3], const uint64_t rows[3], const uint64_t cols[3])
{
	struct pack_expert_layout l;
	memset(&l, 0, sizeof l);
	uint64_t off = 0;
	for (int m = 0; m < 3; m++) {
		uint64_t size = moe_type_matrix_bytes(type[m], rows[m], cols[m]);
		if (size == 0)
			return moe_fail(MOE_EINVAL, "expert matrix %d: [%llu, %llu] cannot be stored as %s", m,
					(unsigned long long)rows[m], (unsigned long long)cols[m], moe_type_name(type[m]));
		if (w->n_lay && (rows[m] != w->lay[0].matrix[m].rows || cols[m] != w->lay[0].matrix[m].cols))
			return moe_fail(MOE_EINVAL, "expert matrix %d: layouts differ in shape", m);
		struct pack_expert_matrix *x = &l.matrix[m];
		x->type = (uint32_t)type[m];
		x->rows = rows[m];
		x->cols = cols[m];
		x->offset = off;
		x->size = size;
		off = moe_align_up(off + size, PACK_TENSOR_ALIGN);
	}
	l.raw_size = l.matrix[2].offset + l.matrix[2].size;
	for (uint32_t i = 0; i < w->n_lay; i++)
		if (memcmp(&w->lay[i], &l, sizeof l) == 0)
			return (int)i;
	struct pack_expert_layout *nl = realloc(w->lay, (w->n_lay + 1) * sizeof *nl);
	if (!nl)
		return moe_fail(MOE_ENOMEM, "out of memory");
	w->lay = nl;
	w->lay[w->n_lay] = l;
	if (w->n_lay == 0) {
		w->eh.n_matrices = 3;
		memcpy(w->eh.matrix, l.matrix, sizeof l.matrix);
		w->eh.raw_size = l.raw_size;
	}
	return (int)w->n_lay++;
}

uint64_t packw_expert_raw_size(const struct moe_packw *w, int layout) { return w->lay[layout].raw_size; }
uint64_t packw_expert_matrix_offset(const struct moe_packw *w, int layout, int m)
{
	return w->lay[layout].matrix[m].offset;
}

int packw_declare_expert(struct moe_packw *w, uint32_t layer, uint32_t expert, int layout)
{
	if (w->ne && (layer < w->e[w->ne - 1].layer || (layer == w->e[w->ne - 1].layer && expert <= w->e[w->ne - 1].expert)))
		return moe_fail(MOE_EINVAL, "experts must be declared in (layer, expert) order");
	if (layout < 0 || (uint32_t)layout >= w->n_lay)
		return moe_fail(MOE_EINVAL, "expert layout %d not declared", layout);
	if (w->ne == w->cap_e) {
		size_t cap = w->cap_e ? w->cap_e * 2 : 256;
		struct pack_expert_rec *ne = realloc(w->e, cap * sizeof *ne);
		if (!ne)
			return moe_fail(MOE_ENOMEM, "out of memory");
		w->e = ne;
		w->cap_e = cap;
	}
	memset(&w->e[w->ne], 0, sizeof w->e[0]);
	w->e[w->ne].layer = layer;
	w->e[w->ne].expert = expert;
	w->e[w->ne].layout = (uint32_t)layout;
	w->ne++;
	return 0;
}

/* Layouts past the first, after the records (PACK_F_LAYOUTS): their count, then each. */
static uint64_t extra_layouts_bytes(const struct moe_packw *w)
{
	return w->n_lay > 1 ? 8 + (w->n_lay - 1) * sizeof(struct pack_expert_layout) : 0;
}

/* Fix every offset once all declarations are in. */
static void lay_out(struct moe_packw *w)
{
	w->meta_off = PACK_HEADER_RESERVE;
	w->tdir_off = moe_align_up(w->meta_off + w->meta_len, 8);
	w->tdir_size = 8;
	for (size_t i = 0; i < w->nt; i++)
		w->tdir_size += sizeof(struct pack_tensor_rec) + moe_align_up(strlen(w->t[i].name), 8);
	w->etab_off = moe_align_up(w->tdir_off + w->tdir_size, 8);
	w->etab_size = sizeof(struct pack_expert_header) + w->ne * sizeof(struct pack_expert_rec) + extra_layouts_bytes(w);
	w->dense_off = moe_align_up(w->etab_off + w->etab_size, 4096);
	uint64_t off = w->dense_off;
	for (size_t i = 0; i < w->nt; i++) {
		w->t[i].offset = off;
		off = moe_align_up(off + w->t[i].size, PACK_TENSOR_ALIGN);
	}
	w->dense_end = off;
	w->exp_off = moe_align_up(off, w->alignment);
	w->exp_end = w->exp_off;
	w->eh.count = (uint32_t)w->ne;
	w->laid_out = 1;
}

int packw_tensor_append(struct moe_packw *w, int idx, const void *data, size_t n)
{
	if (!w->laid_out)
		lay_out(w);
	if (idx < 0 || (size_t)idx >= w->nt || idx < w->next_tensor)
		return moe_fail(MOE_EINVAL, "tensor %d written out of order", idx);
	struct wtensor *t = &w->t[idx];
	if (n > t->size - t->written)
		return moe_fail(MOE_EINVAL, "tensor %s: %zu bytes more than its %llu", t->name, n, (unsigned long long)t->size);
	int rc = moe_pwrite_full(w->fd, data, n, t->offset + t->written, w->path);
	if (rc)
		return rc;
	XXH3_64bits_update(t->hash, data, n);
	t->written += n;
	w->written += n;
	w->next_tensor = idx;
	return 0;
}

uint64_t packw_bytes_written(const struct moe_packw *w) { return w->written; }

int packw_expert_write(struct moe_packw *w, size_t i, const void *stored, size_t n, int codec, uint64_t xxh3_raw)
{
	if (!w->laid_out)
		lay_out(w);
	if (i != w->next_expert || i >= w->ne)
		return moe_fail(MOE_EINVAL, "expert blob %zu written out of order", i);
	struct pack_expert_rec *e = &w->e[i];
	e->offset = moe_align_up(w->exp_end, w->alignment);
	e->stored_size = n;
	e->codec = (uint32_t)codec;
	e->xxh3_stored = XXH3_64bits(stored, n);
	e->xxh3_raw = xxh3_raw;
	int rc = moe_pwrite_full(w->fd, stored, n, e->offset, w->path);
	if (rc)
		return rc;
	w->exp_end = e->offset + n;
	w->next_expert++;
	w->written += n;
	if (codec == MOE_CODEC_ZSTD)
		w->flags |= PACK_F_ZSTD;
	return 0;
}

static void put_section(struct pack_superblock *sb, uint32_t kind, uint64_t off, uint64_t size, uint64_t xxh3)
{
	struct pack_section *s = &sb->sections[sb->n_sections++];
	s->kind = kind;
	s->offset = off;
	s->size = size;
	s->xxh3 = xxh3;
}

int packw_finish(struct moe_packw *w)
{
	if (!w->laid_out)
		lay_out(w);
	int rc;
	for (size_t i = 0; i < w->nt; i++) {
		if (w->t[i].written != w->t[i].size) {
			rc = moe_fail(MOE_EINVAL, "tensor %s: %llu of %llu bytes written", w->t[i].name,
				      (unsigned long long)w->t[i].written, (unsigned long long)w->t[i].size);
			goto fail;
		}
		w->t[i].xxh3 = XXH3_64bits_digest(w->t[i].hash);
	}
	if (w->next_expert != w->ne) {
		rc = moe_fail(MOE_EINVAL, "%zu of %zu expert blobs written", w->next_expert, w->ne);
		goto fail;
	}
	/* tensor directory */
	uint8_t *dir = calloc(1, w->tdir_size);
	if (!dir) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto fail;
	}
	uint32_t count = (uint32_t)w->nt;
	memcpy(dir, &count, 4);
	size_t pos = 8;
	for (size_t i = 0; i < w->nt; i++) {
		struct wtensor *t = &w->t[i];
		struct pack_tensor_rec r = {0};
		r.name_len = (uint16_t)strlen(t->name);
		r.type = (uint8_t)t->type;
		r.n_dims = t->dims[1] ? 2 : 1;
		r.dims[0] = t->dims[0];
		r.dims[1] = t->dims[1];
		r.offset = t->offset;
		r.size = t->size;
		r.xxh3 = t->xxh3;
		memcpy(dir + pos, &r, sizeof r);
		memcpy(dir + pos + sizeof r, t->name, r.name_len);
		pos += sizeof r + moe_align_up(r.name_len, 8);
	}
	/* expert table */
	uint8_t *etab = malloc(w->etab_size);
	if (!etab) {
		free(dir);
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto fail;
	}
	memcpy(etab, &w->eh, sizeof w->eh);
	if (w->ne)
		memcpy(etab + sizeof w->eh, w->e, w->ne * sizeof *w->e);
	if (w->n_lay > 1) {
		uint8_t *x = etab + sizeof w->eh + w->ne * sizeof *w->e;
		const uint32_t extra[2] = {w->n_lay - 1, 0};
		memcpy(x, extra, sizeof extra);
		memcpy(x + sizeof extra, w->lay + 1, (w->n_lay - 1) * sizeof *w->lay);
		w->flags |= PACK_F_LAYOUTS;
	}

	const uint64_t body_end = w->exp_end > w->exp_off ? w->exp_end : w->exp_off;
	const uint64_t file_size = body_end + PACK_FOOTER_SIZE;
	struct pack_superblock sb;
	memset(&sb, 0, sizeof sb);
	memcpy(sb.magic, PACK_MAGIC, 8);
	sb.major = PACK_MAJOR;
	sb.minor = PACK_MINOR;
	sb.flags = w->flags;
	sb.alignment = w->alignment;
	sb.file_size = file_size;
	put_section(&sb, SEC_META, w->meta_off, w->meta_len, XXH3_64bits(w->meta, w->meta_len));
	put_section(&sb, SEC_TENSOR_DIR, w->tdir_off, w->tdir_size, XXH3_64bits(dir, w->tdir_size));
	put_section(&sb, SEC_EXPERT_TABLE, w->etab_off, w->etab_size, XXH3_64bits(etab, w->etab_size));
	put_section(&sb, SEC_DENSE_DATA, w->dense_off, w->dense_end - w->dense_off, 0);
	put_section(&sb, SEC_EXPERT_DATA, w->exp_off, body_end - w->exp_off, 0);
	sb.checksum = XXH3_64bits(&sb, offsetof(struct pack_superblock, checksum));

	struct pack_footer ft;
	memset(&ft, 0, sizeof ft);
	memcpy(ft.magic, PACK_FOOTER_MAGIC, 8);
	ft.superblock_checksum = sb.checksum;
	ft.file_size = file_size;
	ft.checksum = XXH3_64bits(&ft, 24);

	rc = moe_pwrite_full(w->fd, w->meta, w->meta_len, w->meta_off, w->path);
	if (!rc)
		rc = moe_pwrite_full(w->fd, dir, w->tdir_size, w->tdir_off, w->path);
	if (!rc)
		rc = moe_pwrite_full(w->fd, etab, w->etab_size, w->etab_off, w->path);
	if (!rc)
		rc = moe_pwrite_full(w->fd, &ft, sizeof ft, body_end, w->path);
	free(dir);
	free(etab);
	if (rc)
		goto fail;
	/* The superblock goes last: a crash before this point leaves no valid pack. */
	if ((rc = moe_pwrite_full(w->fd, &sb, sizeof sb, 0, w->tmp)))
		goto fail;
	if ((rc = moe_out_commit(w->fd, w->tmp, w->path, w->force)))
		goto fail;
	free(w->tmp);
	w->tmp = NULL; /* nothing left to remove */
	packw_abort(w);
	return 0;
fail:
	packw_abort(w);
	return rc;
}

void packw_abort(struct moe_packw *w)
{
	if (!w)
		return;
	if (w->fd >= 0)
		close(w->fd);
	if (w->tmp)
		unlink(w->tmp);
	for (size_t i = 0; i < w->nt; i++) {
		free(w->t[i].name);
		XXH3_freeState(w->t[i].hash);
	}
	free(w->t);
	free(w->e);
	free(w->lay);
	free(w->meta);
	free(w->tmp);
	free(w->path);
	free(w);
}
