/* test_pack.c - pack writer -> reader gives back identical bytes; damaged packs are
 * refused at open (or by verify) with a message naming what is wrong. */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include "check.h"
#include "moe.h"
#include "pack/format.h"
#include "pack/meta.h"
#include "pack/writer.h"

static char path[256], copy[300];

/* deterministic bytes; `compressible` repeats a short pattern */
static void fill(uint8_t *p, size_t n, uint32_t seed, int compressible)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		p[i] = compressible ? (uint8_t)("moemap"[i % 6] + (i % 4096 == 0)) : (uint8_t)x;
	}
}

static const uint64_t dims[3][2] = {{64, 256}, {256, 0}, {32, 64}};
static const int ttype[3] = {MOE_TYPE_Q8, MOE_TYPE_F32, MOE_TYPE_Q4};
static const int etype[3] = {MOE_TYPE_Q4, MOE_TYPE_Q4, MOE_TYPE_Q8};
static const uint64_t erows[3] = {128, 128, 64}, ecols[3] = {64, 64, 128};
#define N_EXPERTS 6

static int write_pack(uint32_t alignment)
{
	struct moe_packw *w;
	int rc = packw_create(path, 1, alignment, &w);
	if (rc)
		return rc;
	struct moe_meta_writer m;
	meta_init(&m);
	meta_put_str(&m, "general.architecture", "mixtral");
	meta_put_u64(&m, "hparams.n_layers", 3);
	meta_put_i64(&m, "signed", -42);
	meta_put_f64(&m, "hparams.rope_theta", 1e6);
	meta_put_blob(&m, "tokenizer.json", "{\"model\":{}}", 12);
	int64_t arr[3] = {0, 5, -7};
	meta_put_i64_array(&m, "hparams.mlp_only_layers", arr, 3);
	CHECK(meta_finish(&m) == 0, "meta_finish");
	packw_set_meta(w, &m, PACK_F_TOKENIZER);
	meta_free(&m);
	const char *names[3] = {"token_embd", "blk.0.attn_norm", "blk.0.attn_q"};
	for (int i = 0; i < 3; i++)
		CHECK(packw_declare_tensor(w, names[i], ttype[i], dims[i]) == i, "declare %s", names[i]);
	packw_declare_expert_layout(w, etype, erows, ecols);
	for (int i = 0; i < N_EXPERTS; i++)
		packw_declare_expert(w, (uint32_t)(i / 3 + 1), (uint32_t)(i % 3 * 2), 0);
	for (int i = 0; i < 3 && !rc; i++) {
		uint64_t size = moe_type_matrix_bytes(ttype[i], dims[i][0], dims[i][1] ? dims[i][1] : 1);
		uint8_t *b = malloc(size);
		fill(b, size, (uint32_t)i, 0);
		/* in two pieces: appends are streamed */
		rc = packw_tensor_append(w, i, b, size / 3);
		if (!rc)
			rc = packw_tensor_append(w, i, b + size / 3, size - size / 3);
		free(b);
	}
	const uint64_t raw = packw_expert_raw_size(w, 0);
	uint8_t *blob = malloc(raw), *z = malloc(ZSTD_compressBound(raw));
	for (int i = 0; i < N_EXPERTS && !rc; i++) {
		fill(blob, raw, 100 + (uint32_t)i, i % 2);
		if (i % 2) {
			size_t n = ZSTD_compress(z, ZSTD_compressBound(raw), blob, raw, 3);
			rc = packw_expert_write(w, (size_t)i, z, n, MOE_CODEC_ZSTD, XXH3_64bits(blob, raw));
		} else {
			rc = packw_expert_write(w, (size_t)i, blob, raw, MOE_CODEC_RAW, XXH3_64bits(blob, raw));
		}
	}
	free(blob);
	free(z);
	if (rc) {
		packw_abort(w);
		return rc;
	}
	return packw_finish(w);
}

static void test_round_trip(uint32_t alignment)
{
	CHECK(write_pack(alignment) == 0, "write: %s", moe_last_error());
	moe_pack *p;
	int rc = moe_pack_open(path, &p);
	CHECK(rc == 0, "open: %s", moe_last_error());
	if (rc)
		return;
	CHECK(moe_pack_alignment(p) == alignment, "alignment");
	uint64_t u;
	int64_t i64;
	double f;
	const void *s;
	const int64_t *arr;
	CHECK(moe_pack_meta_u64(p, "hparams.n_layers", &u) == 0 && u == 3, "u64 metadata");
	CHECK(moe_pack_meta_i64(p, "signed", &i64) == 0 && i64 == -42, "i64 metadata");
	CHECK(moe_pack_meta_f64(p, "hparams.rope_theta", &f) == 0 && f == 1e6, "f64 metadata");
	CHECK(moe_pack_meta_bytes(p, "general.architecture", &s, &u) == 0 && u == 7 && strcmp(s, "mixtral") == 0, "str");
	CHECK(moe_pack_meta_bytes(p, "tokenizer.json", &s, &u) == 0 && u == 12 && memcmp(s, "{\"model\":{}}", 12) == 0, "blob");
	CHECK(moe_pack_meta_i64_array(p, "hparams.mlp_only_layers", &arr, &u) == 0 && u == 3, "array");
	CHECK(moe_pack_meta_u64(p, "missing", &u) == MOE_ENOTFOUND, "missing key");
	CHECK(moe_pack_meta_u64(p, "signed", &u) == MOE_EFORMAT, "wrong type");
	CHECK(moe_pack_tensor_count(p) == 3, "tensor count");
	for (int i = 0; i < 3; i++) {
		moe_tensor t;
		CHECK(moe_pack_tensor_at(p, (size_t)i, &t) == 0, "tensor %d", i);
		uint64_t size = moe_type_matrix_bytes(ttype[i], dims[i][0], dims[i][1] ? dims[i][1] : 1);
		uint8_t *b = malloc(size);
		fill(b, size, (uint32_t)i, 0);
		CHECK(t.size == size && memcmp(t.data, b, size) == 0, "tensor %s bytes differ", t.name);
		CHECK(((uintptr_t)t.data % 64) == 0, "tensor %s not 64-byte aligned", t.name);
		CHECK(t.type == ttype[i] && t.dims[0] == dims[i][0], "tensor %s type/shape", t.name);
		free(b);
	}
	moe_tensor t;
	CHECK(moe_pack_tensor(p, "blk.0.attn_q", &t) == 0 && t.type == MOE_TYPE_Q4, "tensor by name");
	CHECK(moe_pack_tensor(p, "nope", &t) == MOE_ENOTFOUND, "missing tensor");
	moe_expert_layout lay;
	moe_pack_expert_layout(p, &lay);
	CHECK(moe_pack_expert_count(p) == N_EXPERTS, "expert count");
	uint8_t *got = malloc(lay.raw_size), *want = malloc(lay.raw_size);
	for (int i = 0; i < N_EXPERTS; i++) {
		moe_expert_info e;
		uint32_t layer = (uint32_t)(i / 3 + 1), ex = (uint32_t)(i % 3 * 2);
		CHECK(moe_pack_expert(p, layer, ex, &e) == 0, "expert %u/%u", layer, ex);
		CHECK(e.offset % alignment == 0, "expert %d offset %llu unaligned", i, (unsigned long long)e.offset);
		CHECK(e.codec == (i % 2 ? MOE_CODEC_ZSTD : MOE_CODEC_RAW), "codec");
		fill(want, lay.raw_size, 100 + (uint32_t)i, i % 2);
		CHECK(moe_pack_expert_read(p, layer, ex, got) == 0 && memcmp(got, want, lay.raw_size) == 0,
		      "expert %d bytes differ", i);
	}
	moe_expert_info e;
	CHECK(moe_pack_expert(p, 1, 1, &e) == MOE_ENOTFOUND, "absent expert");
	for (int m = 0; m < 3; m++)
		CHECK(lay.type[m] == etype[m] && lay.rows[m] == erows[m] && lay.offset[m] % 64 == 0, "layout %d", m);
	CHECK(moe_pack_verify(p, NULL, NULL) == 0, "verify: %s", moe_last_error());
	free(got);
	free(want);
	moe_pack_close(p);
}

/* copy the pack, let `damage` change it, reopen: expect err and a message containing `what` */
static uint8_t *orig;
static size_t orig_len;

static void expect_refused(const char *label, size_t new_len, void (*damage)(uint8_t *, size_t), int err,
			   const char *what, int at_verify)
{
	uint8_t *b = malloc(orig_len);
	memcpy(b, orig, orig_len);
	if (damage)
		damage(b, new_len);
	FILE *fp = fopen(copy, "wb");
	fwrite(b, 1, new_len, fp);
	fclose(fp);
	free(b);
	moe_pack *p = NULL;
	int rc = moe_pack_open(copy, &p);
	if (at_verify) {
		CHECK(rc == 0, "%s: open should succeed: %s", label, moe_last_error());
		if (!rc)
			rc = moe_pack_verify(p, NULL, NULL);
	}
	CHECK(rc == err, "%s: got %d (%s), expected %d", label, rc, moe_last_error(), err);
	CHECK(strstr(moe_last_error(), what) != NULL, "%s: message '%s' lacks '%s'", label, moe_last_error(), what);
	CHECK(strchr(moe_last_error(), '\n') == NULL, "%s: message is not one line", label);
	moe_pack_close(p);
}

static void reseal(uint8_t *b, size_t len) /* recompute superblock and footer checksums */
{
	struct pack_superblock sb;
	memcpy(&sb, b, sizeof sb);
	sb.checksum = XXH3_64bits(&sb, offsetof(struct pack_superblock, checksum));
	memcpy(b, &sb, sizeof sb);
	struct pack_footer ft;
	memcpy(&ft, b + len - 32, 32);
	ft.superblock_checksum = sb.checksum;
	ft.checksum = XXH3_64bits(&ft, 24);
	memcpy(b + len - 32, &ft, 32);
}
static void bad_magic(uint8_t *b, size_t n) { b[0] = 'X'; }
static void major2(uint8_t *b, size_t n) { b[8] = 2; reseal(b, n); }
static void sb_flip(uint8_t *b, size_t n) { b[40] ^= 1; }
static void incompat(uint8_t *b, size_t n) { b[15] = 0x80; reseal(b, n); }
static void sec_outside(uint8_t *b, size_t n)
{
	uint64_t off = (uint64_t)n * 4; /* section 1 (tensor dir) offset far past the end */
	memcpy(b + 32 + 32 + 8, &off, 8);
	reseal(b, n);
}
static void footer_bad(uint8_t *b, size_t n) { b[n - 32] = 'X'; }
static void meta_flip(uint8_t *b, size_t n) { b[PACK_HEADER_RESERVE + 9] ^= 0x40; }
static size_t expert_byte;
static void expert_flip(uint8_t *b, size_t n) { b[expert_byte] ^= 0x10; }
static void tensor_outside(uint8_t *b, size_t n)
{
	struct pack_superblock sb;
	memcpy(&sb, b, sizeof sb);
	struct pack_section *dir = &sb.sections[1];
	uint64_t bogus = sb.file_size * 2;
	memcpy(b + dir->offset + 8 + 24, &bogus, 8); /* first record's offset field */
	dir->xxh3 = XXH3_64bits(b + dir->offset, dir->size);
	memcpy(b, &sb, sizeof sb);
	reseal(b, n);
}

static void test_damage(void)
{
	CHECK(write_pack(4096) == 0, "write: %s", moe_last_error());
	FILE *fp = fopen(path, "rb");
	fseek(fp, 0, SEEK_END);
	orig_len = (size_t)ftell(fp);
	rewind(fp);
	orig = malloc(orig_len);
	CHECK(fread(orig, 1, orig_len, fp) == orig_len, "read back");
	fclose(fp);
	expect_refused("empty file", 0, NULL, MOE_EFORMAT, "truncated", 0);
	expect_refused("100 bytes", 100, NULL, MOE_EFORMAT, "truncated", 0);
	expect_refused("half", orig_len / 2, NULL, MOE_EFORMAT, "truncated", 0);
	expect_refused("one byte short", orig_len - 1, NULL, MOE_EFORMAT, "truncated", 0);
	expect_refused("bad magic", orig_len, bad_magic, MOE_EFORMAT, "not a moemap pack (no MOEPACK magic)", 0);
	expect_refused("major 2", orig_len, major2, MOE_EVERSION, "version 2.0", 0);
	expect_refused("superblock bit", orig_len, sb_flip, MOE_ECHECKSUM, "superblock", 0);
	expect_refused("incompatible feature", orig_len, incompat, MOE_EUNSUPPORTED, "features", 0);
	expect_refused("section outside", orig_len, sec_outside, MOE_EFORMAT, "outside the file", 0);
	expect_refused("footer", orig_len, footer_bad, MOE_EFORMAT, "footer", 0);
	expect_refused("metadata bit", orig_len, meta_flip, MOE_ECHECKSUM, "metadata", 0);
	expect_refused("tensor outside", orig_len, tensor_outside, MOE_EFORMAT, "outside the dense data", 0);
	/* every expert: a flipped byte in its blob is caught by verify, naming it */
	moe_pack *p;
	if (moe_pack_open(path, &p) == 0) {
		for (size_t i = 0; i < moe_pack_expert_count(p); i++) {
			moe_expert_info e;
			moe_pack_expert_at(p, i, &e);
			expert_byte = e.offset + (e.stored_size * 7 / 11);
			char label[64], what[64];
			snprintf(label, sizeof label, "expert %zu flip", i);
			snprintf(what, sizeof what, "layer %u expert %u", e.layer, e.expert);
			expect_refused(label, orig_len, expert_flip, MOE_ECHECKSUM, what, 1);
		}
		moe_pack_close(p);
	}
	free(orig);
}

static void test_writer_errors(void)
{
	struct moe_packw *w;
	CHECK(packw_create(path, 0, 4096, &w) == MOE_EEXIST, "existing output refused without force");
	CHECK(strstr(moe_last_error(), "--force") != NULL, "message suggests --force");
	CHECK(packw_create(path, 1, 5000, &w) == MOE_EINVAL, "alignment must be a power of two");
	/* an aborted pack leaves nothing behind */
	char fresh[300];
	snprintf(fresh, sizeof fresh, "%s.fresh", path);
	CHECK(packw_create(fresh, 0, 4096, &w) == 0, "create");
	uint64_t d[2] = {33, 33};
	CHECK(packw_declare_tensor(w, "odd", MOE_TYPE_Q8, d) == MOE_EINVAL, "q8 with 33 columns refused");
	packw_abort(w);
	CHECK(access(fresh, F_OK) != 0, "aborted output exists");
	/* finish with a tensor short of bytes fails and leaves nothing */
	CHECK(packw_create(fresh, 0, 4096, &w) == 0, "create");
	struct moe_meta_writer m;
	meta_init(&m);
	meta_put_u64(&m, "x", 1);
	meta_finish(&m);
	packw_set_meta(w, &m, 0);
	meta_free(&m);
	d[1] = 32;
	packw_declare_tensor(w, "t", MOE_TYPE_F32, d);
	uint8_t z[16] = {0};
	packw_tensor_append(w, 0, z, sizeof z);
	CHECK(packw_finish(w) == MOE_EINVAL, "incomplete tensor refused at finish");
	CHECK(access(fresh, F_OK) != 0, "incomplete output exists");
}

/* the size syntax every tool takes (moe_parse_size), hand-computed */
static void test_sizes(void)
{
	static const struct {
		const char *s;
		uint64_t bytes;
	} cases[] = {
		{"4096", 4096}, {"1", 1}, {"4K", 4096}, {"4k", 4096}, {"900M", 900ull << 20}, {"12G", 12ull << 30},
		{"1.5G", 3ull << 29}, {"2MB", 2ull << 20}, {"1T", 1ull << 40}, {"0.5K", 512},
		/* refused: empty, junk, zero, below a byte, negative, unknown or doubled units, past 2^64 */
		{"", 0}, {"abc", 0}, {"0", 0}, {"0.5", 0}, {"-4K", 0}, {"4X", 0}, {"4KK", 0}, {"4 K", 0},
		{"16777216T", 0}, {"1e30", 0}, {"nan", 0}, {"inf", 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		CHECK(moe_parse_size(cases[i].s) == cases[i].bytes, "moe_parse_size(\"%s\") = %llu, not %llu", cases[i].s,
		      (unsigned long long)moe_parse_size(cases[i].s), (unsigned long long)cases[i].bytes);
}

int main(void)
{
	test_sizes();
	const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(path, sizeof path, "%s/test_pack.%d.moe", dir, (int)getpid());
	snprintf(copy, sizeof copy, "%s.copy", path);
	test_round_trip(4096);
	test_round_trip(2u << 20);
	test_damage();
	test_writer_errors();
	unlink(path);
	unlink(copy);
	return check_report("test_pack");
}
