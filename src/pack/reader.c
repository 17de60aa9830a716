/*
 * reader.c - open and validate a pack, look up metadata, tensors and experts.
 * Every length and offset read from the file is checked against the file size
 * before use; structures are copied out with memcpy (the mapping is untrusted).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include "common/error.h"
#include "common/util.h"
#include "format.h"
#include "moe.h"
#include "quant/quant.h"

struct meta_entry {
	const char *key; /* NUL-terminated copy */
	int type;
	const uint8_t *value; /* into the mapping: for STR/BLOB/ARRAY, the bytes after the length */
	uint64_t len;         /* STR/BLOB: bytes; ARRAY: elements */
	char *str;            /* STR: NUL-terminated copy */
};

struct moe_pack {
	char *path;
	int fd;
	const uint8_t *map;
	uint64_t size;
	struct pack_superblock sb;
	struct pack_section sec[SEC_EXPERT_DATA + 1]; /* by kind */
	struct meta_entry *meta;
	size_t n_meta;
	moe_tensor *tensors;
	size_t n_tensors;
	struct pack_expert_header eh;
	struct pack_expert_rec *experts;
	struct pack_expert_layout *layouts; /* [0] is the header's */
	uint32_t n_layouts;
	uint64_t max_raw;                   /* the largest raw blob of any layout */
};

/* [off, off+len) inside [lo, hi)? Written to avoid overflow. */
static int inside(uint64_t off, uint64_t len, uint64_t lo, uint64_t hi)
{
	return off >= lo && off <= hi && len <= hi - off;
}

static int not_a_pack(const moe_pack *p)
{
	if (p->size >= 4 && memcmp(p->map, "GGUF", 4) == 0)
		return moe_fail(MOE_EFORMAT, "%s: a GGUF file, not a moemap pack: pack it first (moe-pack %s OUT.moe)",
				p->path, p->path);
	return moe_fail(MOE_EFORMAT, "%s: not a moemap pack (no MOEPACK magic): make one with moe-pack", p->path);
}

static int check_superblock(moe_pack *p)
{
	if (p->size < PACK_HEADER_RESERVE + PACK_FOOTER_SIZE) {
		if (p->size >= 8 && memcmp(p->map, PACK_MAGIC, 8) != 0)
			return not_a_pack(p);
		return moe_fail(MOE_EFORMAT, "%s: truncated: %llu bytes is smaller than a pack header", p->path,
				(unsigned long long)p->size);
	}
	struct pack_superblock *sb = &p->sb;
	memcpy(sb, p->map, sizeof *sb);
	if (memcmp(sb->magic, PACK_MAGIC, 8) != 0)
		return not_a_pack(p);
	if (sb->major != PACK_MAJOR)
		return moe_fail(MOE_EVERSION, "%s: pack format version %u.%u; this build reads version %u.x", p->path,
				sb->major, sb->minor, PACK_MAJOR);
	if (XXH3_64bits(p->map, offsetof(struct pack_superblock, checksum)) != sb->checksum)
		return moe_fail(MOE_ECHECKSUM, "%s: superblock checksum mismatch (header corrupt)", p->path);
	if ((sb->flags & PACK_F_INCOMPAT_MASK) & ~PACK_F_KNOWN_INCOMPAT)
		return moe_fail(MOE_EUNSUPPORTED, "%s: pack needs features 0x%08x this build lacks", p->path,
				sb->flags & PACK_F_INCOMPAT_MASK);
	if (sb->file_size != p->size)
		return moe_fail(MOE_EFORMAT, "%s: truncated or extended: header says %llu bytes, file has %llu", p->path,
				(unsigned long long)sb->file_size, (unsigned long long)p->size);
	struct pack_footer ft;
	memcpy(&ft, p->map + p->size - PACK_FOOTER_SIZE, sizeof ft);
	if (memcmp(ft.magic, PACK_FOOTER_MAGIC, 8) != 0 || XXH3_64bits(&ft, 24) != ft.checksum ||
	    ft.superblock_checksum != sb->checksum || ft.file_size != p->size)
		return moe_fail(MOE_EFORMAT, "%s: footer missing or does not match the superblock (truncated or corrupt)",
				p->path);
	if (sb->alignment < PACK_MIN_ALIGN || (sb->alignment & (sb->alignment - 1)))
		return moe_fail(MOE_EFORMAT, "%s: bad expert alignment %u", p->path, sb->alignment);
	if (sb->n_sections > PACK_MAX_SECTIONS)
		return moe_fail(MOE_EFORMAT, "%s: %u sections (at most %d)", p->path, sb->n_sections, PACK_MAX_SECTIONS);
	const uint64_t body_end = p->size - PACK_FOOTER_SIZE;
	for (uint32_t i = 0; i < sb->n_sections; i++) {
		struct pack_section *s = &sb->sections[i];
		if (s->kind < SEC_META || s->kind > SEC_EXPERT_DATA)
			continue; /* unknown kinds are for future minor versions */
		if (!inside(s->offset, s->size, PACK_HEADER_RESERVE, body_end))
			return moe_fail(MOE_EFORMAT, "%s: section %u [%llu, +%llu) lies outside the file", p->path, s->kind,
					(unsigned long long)s->offset, (unsigned long long)s->size);
		if (s->kind <= SEC_EXPERT_TABLE && XXH3_64bits(p->map + s->offset, s->size) != s->xxh3)
			return moe_fail(MOE_ECHECKSUM, "%s: %s checksum mismatch", p->path,
					s->kind == SEC_META ? "metadata" : s->kind == SEC_TENSOR_DIR ? "tensor directory" : "expert table");
		p->sec[s->kind] = *s;
	}
	for (int k = SEC_META; k <= SEC_EXPERT_DATA; k++)
		if (p->sec[k].kind != (uint32_t)k)
			return moe_fail(MOE_EFORMAT, "%s: section %d missing", p->path, k);
	return 0;
}

/* A cursor over one section. */
struct cur {
	const uint8_t *p;
	uint64_t left;
};

static int take(struct cur *c, void *dst, uint64_t n)
{
	if (n > c->left)
		return -1;
	if (dst)
		memcpy(dst, c->p, n);
	c->p += n;
	c->left -= n;
	return 0;
}

static int parse_meta(moe_pack *p)
{
	struct cur c = {p->map + p->sec[SEC_META].offset, p->sec[SEC_META].size};
	uint32_t count, zero;
	if (take(&c, &count, 4) || take(&c, &zero, 4))
		return moe_fail(MOE_EFORMAT, "%s: metadata section too short", p->path);
	if (count > c.left / 4)
		return moe_fail(MOE_EFORMAT, "%s: metadata claims %u entries, too many for its size", p->path, count);
	p->meta = calloc(count ? count : 1, sizeof *p->meta);
	if (!p->meta)
		return moe_fail(MOE_ENOMEM, "%s: out of memory", p->path);
	for (uint32_t i = 0; i < count; i++) {
		uint8_t hdr[4];
		if (take(&c, hdr, 4))
			return moe_fail(MOE_EFORMAT, "%s: metadata entry %u truncated", p->path, i);
		uint16_t klen = (uint16_t)(hdr[0] | hdr[1] << 8);
		struct meta_entry *m = &p->meta[i];
		p->n_meta = i + 1;
		m->type = hdr[2];
		char *key = calloc(1, (size_t)klen + 1);
		if (!key)
			return moe_fail(MOE_ENOMEM, "%s: out of memory", p->path);
		m->key = key;
		if (take(&c, key, klen))
			return moe_fail(MOE_EFORMAT, "%s: metadata entry %u: key truncated", p->path, i);
		uint64_t n;
		switch (m->type) {
		case MOE_META_U64:
		case MOE_META_I64:
		case MOE_META_F64:
			m->value = c.p;
			m->len = 8;
			if (take(&c, NULL, 8))
				return moe_fail(MOE_EFORMAT, "%s: metadata '%s': value truncated", p->path, key);
			break;
		case MOE_META_STR:
		case MOE_META_BLOB:
		case MOE_META_I64_ARRAY:
			if (take(&c, &n, 8))
				return moe_fail(MOE_EFORMAT, "%s: metadata '%s': length truncated", p->path, key);
			m->value = c.p;
			m->len = n;
			if (m->type == MOE_META_I64_ARRAY && n > UINT64_MAX / 8)
				return moe_fail(MOE_EFORMAT, "%s: metadata '%s': bad length", p->path, key);
			if (take(&c, NULL, m->type == MOE_META_I64_ARRAY ? n * 8 : n))
				return moe_fail(MOE_EFORMAT, "%s: metadata '%s': %llu bytes past the section end", p->path, key,
						(unsigned long long)n);
			if (m->type == MOE_META_STR) {
				m->str = malloc(n + 1);
				if (!m->str)
					return moe_fail(MOE_ENOMEM, "%s: out of memory", p->path);
				memcpy(m->str, m->value, n);
				m->str[n] = '\0';
			}
			break;
		default:
			return moe_fail(MOE_EFORMAT, "%s: metadata '%s': unknown type %u", p->path, key, m->type);
		}
	}
	return 0;
}

static int parse_tensors(moe_pack *p)
{
	struct cur c = {p->map + p->sec[SEC_TENSOR_DIR].offset, p->sec[SEC_TENSOR_DIR].size};
	const struct pack_section *data = &p->sec[SEC_DENSE_DATA];
	uint32_t count, zero;
	if (take(&c, &count, 4) || take(&c, &zero, 4))
		return moe_fail(MOE_EFORMAT, "%s: tensor directory too short", p->path);
	if (count > c.left / sizeof(struct pack_tensor_rec))
		return moe_fail(MOE_EFORMAT, "%s: tensor directory claims %u tensors, too many for its size", p->path, count);
	p->tensors = calloc(count ? count : 1, sizeof *p->tensors);
	if (!p->tensors)
		return moe_fail(MOE_ENOMEM, "%s: out of memory", p->path);
	for (uint32_t i = 0; i < count; i++) {
		struct pack_tensor_rec r;
		if (take(&c, &r, sizeof r))
			return moe_fail(MOE_EFORMAT, "%s: tensor %u: record truncated", p->path, i);
		char *name = calloc(1, (size_t)r.name_len + 1);
		if (!name)
			return moe_fail(MOE_ENOMEM, "%s: out of memory", p->path);
		moe_tensor *t = &p->tensors[i];
		p->n_tensors = i + 1;
		t->name = name;
		uint64_t padded = moe_align_up(r.name_len, 8);
		if (take(&c, name, r.name_len) || take(&c, NULL, padded - r.name_len))
			return moe_fail(MOE_EFORMAT, "%s: tensor %u: name truncated", p->path, i);
		if (r.type >= MOE_TYPE_COUNT)
			return moe_fail(MOE_EUNSUPPORTED, "%s: tensor %s: unknown type id %u", p->path, name, r.type);
		if (r.n_dims < 1 || r.n_dims > 2)
			return moe_fail(MOE_EFORMAT, "%s: tensor %s: %u dimensions", p->path, name, r.n_dims);
		t->type = r.type;
		t->n_dims = r.n_dims;
		t->dims[0] = r.dims[0];
		t->dims[1] = r.n_dims == 2 ? r.dims[1] : 1;
		uint64_t expect = (r.dims[0] && t->dims[1] <= UINT64_MAX / r.dims[0])
					  ? moe_type_matrix_bytes(r.type, t->dims[0], t->dims[1]) : 0;
		if (expect == 0 || expect != r.size)
			return moe_fail(MOE_EFORMAT, "%s: tensor %s: size %llu does not match %s [%llu, %llu]", p->path, name,
					(unsigned long long)r.size, moe_type_name(r.type), (unsigned long long)r.dims[0],
					(unsigned long long)t->dims[1]);
		if (!inside(r.offset, r.size, data->offset, data->offset + data->size) || r.offset % PACK_TENSOR_ALIGN)
			return moe_fail(MOE_EFORMAT, "%s: tensor %s: offset %llu size %llu outside the dense data section",
					p->path, name, (unsigned long long)r.offset, (unsigned long long)r.size);
		t->data = p->map + r.offset;
		t->size = r.size;
		t->offset = r.offset;
		t->xxh3 = r.xxh3;
	}
	return 0;
}

/* A layout's matrices: known types, sizes as their shapes imply, inside the raw blob at
 * offsets the writer aligns, and (for layouts past the first) the first's shapes. */
static int check_layout(const moe_pack *p, const struct pack_expert_layout *l, uint32_t i)
{
	for (int m = 0; m < 3; m++) {
		const struct pack_expert_matrix *x = &l->matrix[m];
		uint64_t bytes = x->type < MOE_TYPE_COUNT && x->rows && x->cols <= UINT64_MAX / x->rows
					 ? moe_type_matrix_bytes((int)x->type, x->rows, x->cols) : 0;
		if (bytes == 0 || bytes != x->size || !inside(x->offset, x->size, 0, l->raw_size) ||
		    x->offset % PACK_TENSOR_ALIGN || /* the kernels load scales and codes aligned */
		    (i && (x->rows != p->layouts[0].matrix[m].rows || x->cols != p->layouts[0].matrix[m].cols)))
			return moe_fail(MOE_EFORMAT, "%s: expert table: layout %u matrix %d inconsistent", p->path, i, m);
	}
	return 0;
}

static int parse_experts(moe_pack *p)
{
	struct cur c = {p->map + p->sec[SEC_EXPERT_TABLE].offset, p->sec[SEC_EXPERT_TABLE].size};
	const struct pack_section *data = &p->sec[SEC_EXPERT_DATA];
	struct pack_expert_header *h = &p->eh;
	if (take(&c, h, sizeof *h))
		return moe_fail(MOE_EFORMAT, "%s: expert table too short", p->path);
	if (h->count > c.left / sizeof(struct pack_expert_rec))
		return moe_fail(MOE_EFORMAT, "%s: expert table claims %u experts, too many for its size", p->path, h->count);
	if (h->count && h->n_matrices != 3)
		return moe_fail(MOE_EFORMAT, "%s: expert table: %u matrices per expert (expected 3)", p->path, h->n_matrices);
	p->experts = calloc(h->count ? h->count : 1, sizeof *p->experts);
	if (!p->experts)
		return moe_fail(MOE_ENOMEM, "%s: out of memory", p->path);
	take(&c, p->experts, h->count * sizeof *p->experts);
	uint32_t extra[2] = {0, 0};
	if ((p->sb.flags & PACK_F_LAYOUTS) && (take(&c, extra, sizeof extra) || extra[0] > c.left / sizeof *p->layouts))
		return moe_fail(MOE_EFORMAT, "%s: expert table: its extra layouts do not fit", p->path);
	p->n_layouts = 1 + extra[0];
	p->layouts = calloc(p->n_layouts, sizeof *p->layouts);
	if (!p->layouts)
		return moe_fail(MOE_ENOMEM, "%s: out of memory", p->path);
	memcpy(p->layouts[0].matrix, h->matrix, sizeof h->matrix);
	p->layouts[0].raw_size = h->raw_size;
	take(&c, p->layouts + 1, extra[0] * sizeof *p->layouts);
	for (uint32_t i = 0; h->count && i < p->n_layouts; i++) {
		int rc = check_layout(p, &p->layouts[i], i);
		if (rc)
			return rc;
		if (p->layouts[i].raw_size > p->max_raw)
			p->max_raw = p->layouts[i].raw_size;
	}
	for (uint32_t i = 0; i < h->count; i++) {
		const struct pack_expert_rec *e = &p->experts[i];
		if (i && (e->layer < e[-1].layer || (e->layer == e[-1].layer && e->expert <= e[-1].expert)))
			return moe_fail(MOE_EFORMAT, "%s: expert table not sorted at entry %u", p->path, i);
		if (e->codec > MOE_CODEC_ZSTD)
			return moe_fail(MOE_EUNSUPPORTED, "%s: layer %u expert %u: unknown codec %u", p->path, e->layer,
					e->expert, e->codec);
		if (e->layout >= p->n_layouts)
			return moe_fail(MOE_EFORMAT, "%s: layer %u expert %u: layout %u of %u", p->path, e->layer, e->expert,
					e->layout, p->n_layouts);
		if (!inside(e->offset, e->stored_size, data->offset, data->offset + data->size) ||
		    e->offset % p->sb.alignment ||
		    (e->codec == MOE_CODEC_RAW && e->stored_size != p->layouts[e->layout].raw_size))
			return moe_fail(MOE_EFORMAT, "%s: layer %u expert %u: blob [%llu, +%llu) outside the expert section",
					p->path, e->layer, e->expert, (unsigned long long)e->offset,
					(unsigned long long)e->stored_size);
	}
	return 0;
}

int moe_pack_open(const char *path, moe_pack **out)
{
	*out = NULL;
	moe_pack *p = calloc(1, sizeof *p);
	if (!p)
		return moe_fail(MOE_ENOMEM, "%s: out of memory", path);
	p->fd = -1;
	p->path = strdup(path);
	int rc;
	if (!p->path) {
		rc = moe_fail(MOE_ENOMEM, "%s: out of memory", path);
		goto fail;
	}
	p->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (p->fd < 0) {
		rc = moe_fail(moe_errno_code(errno), "%s: %s", path, strerror(errno));
		goto fail;
	}
	struct stat st;
	if (fstat(p->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		rc = moe_fail(MOE_EINVAL, "%s: not a regular file", path);
		goto fail;
	}
	p->size = (uint64_t)st.st_size;
	if (p->size == 0) {
		rc = moe_fail(MOE_EFORMAT, "%s: truncated: empty file, not a pack", path);
		goto fail;
	}
	void *m = mmap(NULL, p->size, PROT_READ, MAP_SHARED, p->fd, 0);
	if (m == MAP_FAILED) {
		rc = moe_fail(MOE_EIO, "%s: mmap: %s", path, strerror(errno));
		goto fail;
	}
	p->map = m;
	if ((rc = check_superblock(p)) || (rc = parse_meta(p)) || (rc = parse_tensors(p)) || (rc = parse_experts(p)))
		goto fail;
	*out = p;
	return 0;
fail:
	moe_pack_close(p);
	return rc;
}

const char *moe_pack_path(const moe_pack *p) { return p->path; }

void moe_pack_close(moe_pack *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n_meta; i++) {
		free((char *)p->meta[i].key);
		free(p->meta[i].str);
	}
	free(p->meta);
	for (size_t i = 0; i < p->n_tensors; i++)
		free((char *)p->tensors[i].name);
	free(p->tensors);
	free(p->experts);
	free(p->layouts);
	if (p->map)
		munmap((void *)p->map, p->size);
	if (p->fd >= 0)
		close(p->fd);
	free(p->path);
	free(p);
}

uint64_t moe_pack_file_size(const moe_pack *p) { return p->size; }
uint32_t moe_pack_alignment(const moe_pack *p) { return p->sb.alignment; }

void moe_pack_version(const moe_pack *p, unsigned *major, unsigned *minor)
{
	*major = p->sb.major;
	*minor = p->sb.minor;
}

/* ---- metadata lookups ---- */

size_t moe_pack_meta_count(const moe_pack *p) { return p->n_meta; }

const char *moe_pack_meta_key(const moe_pack *p, size_t i, int *type)
{
	if (i >= p->n_meta)
		return NULL;
	if (type)
		*type = p->meta[i].type;
	return p->meta[i].key;
}

static int find_meta(const moe_pack *p, const char *key, int type, const struct meta_entry **out)
{
	for (size_t i = 0; i < p->n_meta; i++) {
		if (strcmp(p->meta[i].key, key) != 0)
			continue;
		if (p->meta[i].type != type && !(type == MOE_META_BLOB && p->meta[i].type == MOE_META_STR))
			return moe_fail(MOE_EFORMAT, "%s: metadata '%s' has type %d, expected %d", p->path, key,
					p->meta[i].type, type);
		*out = &p->meta[i];
		return 0;
	}
	return moe_fail(MOE_ENOTFOUND, "%s: metadata key '%s' missing", p->path, key);
}

int moe_pack_meta_u64(const moe_pack *p, const char *key, uint64_t *v)
{
	const struct meta_entry *m = NULL;
	int rc = find_meta(p, key, MOE_META_U64, &m);
	if (!rc)
		memcpy(v, m->value, 8);
	return rc;
}

int moe_pack_meta_i64(const moe_pack *p, const char *key, int64_t *v)
{
	const struct meta_entry *m = NULL;
	int rc = find_meta(p, key, MOE_META_I64, &m);
	if (!rc)
		memcpy(v, m->value, 8);
	return rc;
}

int moe_pack_meta_f64(const moe_pack *p, const char *key, double *v)
{
	const struct meta_entry *m = NULL;
	int rc = find_meta(p, key, MOE_META_F64, &m);
	if (!rc)
		memcpy(v, m->value, 8);
	return rc;
}

int moe_pack_meta_bytes(const moe_pack *p, const char *key, const void **data, uint64_t *len)
{
	const struct meta_entry *m = NULL;
	int rc = find_meta(p, key, MOE_META_BLOB, &m);
	if (!rc) {
		*data = m->type == MOE_META_STR ? (const void *)m->str : (const void *)m->value;
		*len = m->len;
	}
	return rc;
}

int moe_pack_meta_i64_array(const moe_pack *p, const char *key, const int64_t **vals, uint64_t *n)
{
	const struct meta_entry *m = NULL;
	int rc = find_meta(p, key, MOE_META_I64_ARRAY, &m);
	if (!rc) {
		*vals = (const int64_t *)m->value;
		*n = m->len;
	}
	return rc;
}

/* ---- tensors ---- */

size_t moe_pack_tensor_count(const moe_pack *p) { return p->n_tensors; }

int moe_pack_tensor_at(const moe_pack *p, size_t i, moe_tensor *out)
{
	if (i >= p->n_tensors)
		return moe_fail(MOE_EINVAL, "tensor index %zu out of range", i);
	*out = p->tensors[i];
	return 0;
}

int moe_pack_tensor(const moe_pack *p, const char *name, moe_tensor *out)
{
	for (size_t i = 0; i < p->n_tensors; i++) {
		if (strcmp(p->tensors[i].name, name) == 0) {
			*out = p->tensors[i];
			return 0;
		}
	}
	return moe_fail(MOE_ENOTFOUND, "%s: tensor '%s' missing", p->path, name);
}

/* ---- experts ---- */

static void layout_out(const struct pack_expert_layout *l, moe_expert_layout *out)
{
	memset(out, 0, sizeof *out);
	for (int m = 0; m < 3; m++) {
		out->type[m] = (int)l->matrix[m].type;
		out->rows[m] = l->matrix[m].rows;
		out->cols[m] = l->matrix[m].cols;
		out->offset[m] = l->matrix[m].offset;
	}
	out->raw_size = l->raw_size;
}

void moe_pack_expert_layout(const moe_pack *p, moe_expert_layout *out) { layout_out(&p->layouts[0], out); }

size_t moe_pack_expert_layouts(const moe_pack *p) { return p->n_layouts; }

int moe_pack_expert_layout_at(const moe_pack *p, size_t i, moe_expert_layout *out)
{
	if (i >= p->n_layouts)
		return moe_fail(MOE_EINVAL, "expert layout %zu out of range", i);
	layout_out(&p->layouts[i], out);
	return 0;
}

uint64_t moe_pack_expert_max_raw(const moe_pack *p) { return p->max_raw; }

size_t moe_pack_expert_count(const moe_pack *p) { return p->eh.count; }

static void fill_info(const moe_pack *p, const struct pack_expert_rec *e, moe_expert_info *out)
{
	out->layer = e->layer;
	out->expert = e->expert;
	out->offset = e->offset;
	out->stored_size = e->stored_size;
	out->raw_size = p->layouts[e->layout].raw_size;
	out->layout = e->layout;
	out->codec = (int)e->codec;
	out->xxh3_stored = e->xxh3_stored;
	out->xxh3_raw = e->xxh3_raw;
}

int moe_pack_expert_at(const moe_pack *p, size_t i, moe_expert_info *out)
{
	if (i >= p->eh.count)
		return moe_fail(MOE_EINVAL, "expert index %zu out of range", i);
	fill_info(p, &p->experts[i], out);
	return 0;
}

static const struct pack_expert_rec *find_expert(const moe_pack *p, uint32_t layer, uint32_t expert)
{
	size_t lo = 0, hi = p->eh.count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct pack_expert_rec *e = &p->experts[mid];
		if (e->layer == layer && e->expert == expert)
			return e;
		if (e->layer < layer || (e->layer == layer && e->expert < expert))
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

int moe_pack_expert(const moe_pack *p, uint32_t layer, uint32_t expert, moe_expert_info *out)
{
	const struct pack_expert_rec *e = find_expert(p, layer, expert);
	if (!e)
		return moe_fail(MOE_ENOTFOUND, "%s: layer %u expert %u not in the pack", p->path, layer, expert);
	fill_info(p, e, out);
	return 0;
}

int moe_pack_expert_stored(const moe_pack *p, uint32_t layer, uint32_t expert, const void **data,
			   moe_expert_info *info)
{
	const struct pack_expert_rec *e = find_expert(p, layer, expert);
	if (!e)
		return moe_fail(MOE_ENOTFOUND, "%s: layer %u expert %u not in the pack", p->path, layer, expert);
	fill_info(p, e, info);
	*data = p->map + e->offset;
	return 0;
}

int moe_pack_expert_read(const moe_pack *p, uint32_t layer, uint32_t expert, void *dst)
{
	const struct pack_expert_rec *e = find_expert(p, layer, expert);
	if (!e)
		return moe_fail(MOE_ENOTFOUND, "%s: layer %u expert %u not in the pack", p->path, layer, expert);
	const uint8_t *src = p->map + e->offset;
	if (XXH3_64bits(src, e->stored_size) != e->xxh3_stored)
		return moe_fail(MOE_ECHECKSUM, "%s: layer %u expert %u: checksum mismatch in stored bytes", p->path, layer,
				expert);
	const uint64_t raw = p->layouts[e->layout].raw_size;
	if (e->codec == MOE_CODEC_RAW) {
		memcpy(dst, src, e->stored_size);
	} else {
		size_t n = ZSTD_decompress(dst, raw, src, e->stored_size);
		if (ZSTD_isError(n) || n != raw)
			return moe_fail(MOE_EFORMAT, "%s: layer %u expert %u: zstd frame does not decode to %llu bytes (%s)",
					p->path, layer, expert, (unsigned long long)raw,
					ZSTD_isError(n) ? ZSTD_getErrorName(n) : "wrong size");
	}
	if (XXH3_64bits(dst, raw) != e->xxh3_raw)
		return moe_fail(MOE_ECHECKSUM, "%s: layer %u expert %u: checksum mismatch in decoded bytes", p->path, layer,
				expert);
	return 0;
}

int moe_pack_verify(const moe_pack *p, moe_progress_fn progress, void *user)
{
	const uint64_t total = p->n_tensors + p->eh.count;
	uint64_t done = 0;
	for (size_t i = 0; i < p->n_tensors; i++) {
		const moe_tensor *t = &p->tensors[i];
		if (XXH3_64bits(t->data, t->size) != t->xxh3)
			return moe_fail(MOE_ECHECKSUM, "%s: tensor %s: checksum mismatch", p->path, t->name);
		if (progress && progress(user, ++done, total))
			return 0;
	}
	void *buf = p->eh.count ? malloc(p->max_raw) : NULL;
	if (p->eh.count && !buf)
		return moe_fail(MOE_ENOMEM, "%s: out of memory for a %llu-byte expert", p->path,
				(unsigned long long)p->max_raw);
	int rc = 0;
	for (uint32_t i = 0; i < p->eh.count && rc == 0; i++) {
		rc = moe_pack_expert_read(p, p->experts[i].layer, p->experts[i].expert, buf);
		if (!rc && progress && progress(user, ++done, total))
			break;
	}
	free(buf);
	return rc;
}
