/* quant.c - reference (scalar) conversions and block quantizers. */
#include "config.h"

#include <math.h>
#include <string.h>

#include "kernels/blocks.h"
#include "quant.h"

/* The float and split types; GGUF's block types are described by kernels/blocks.c. */
static const struct {
	const char *name;
	uint32_t block, code_bytes, scale_bytes; /* weights per block, bytes of codes and of scale per block */
} split_or_float[MOE_TYPE_Q4 + 1] = {
	[MOE_TYPE_F32] = {"f32", 1, 4, 0},
	[MOE_TYPE_F16] = {"f16", 1, 2, 0},
	[MOE_TYPE_BF16] = {"bf16", 1, 2, 0},
	[MOE_TYPE_Q8] = {"q8", MOE_QBLOCK, MOE_QBLOCK, 2},
	[MOE_TYPE_Q4] = {"q4", MOE_QBLOCK, MOE_QBLOCK / 2, 2},
};

const char *moe_type_name(int type)
{
	if (type >= 0 && type <= MOE_TYPE_Q4)
		return split_or_float[type].name;
	const struct moe_block_format *f = moe_block_format(type);
	return f ? f->name : NULL;
}

int moe_type_from_name(const char *name)
{
	for (int t = 0; t < MOE_TYPE_COUNT; t++)
		if (strcmp(name, moe_type_name(t)) == 0)
			return t;
	return MOE_EINVAL;
}

int moe_type_is_blocks(int type) { return moe_block_format(type) != NULL; }

uint32_t moe_type_block(int type)
{
	if (type >= 0 && type <= MOE_TYPE_Q4)
		return split_or_float[type].block;
	const struct moe_block_format *f = moe_block_format(type);
	return f ? f->weights : 0;
}

uint64_t moe_type_row_bytes(int type, uint64_t cols)
{
	if (type >= 0 && type <= MOE_TYPE_Q4)
		return cols % split_or_float[type].block ? 0 : cols / split_or_float[type].block * split_or_float[type].code_bytes;
	const struct moe_block_format *f = moe_block_format(type);
	return f ? moe_block_row_bytes(f, cols) : 0;
}

uint64_t moe_type_matrix_bytes(int type, uint64_t rows, uint64_t cols)
{
	const uint64_t row = moe_type_row_bytes(type, cols);
	return row ? rows * (row + (moe_type_is_split(type) ? cols / MOE_QBLOCK * 2 : 0)) : 0;
}

/* ---- scalar conversions ---- */

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float moe_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
	if (exp == 0x1f)
		return bits_f32(sign | 0x7f800000u | (man << 13));
	if (exp == 0) {
		/* subnormal: man * 2^-24 */
		float v = (float)man * 0x1p-24f;
		return sign ? -v : v;
	}
	return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t moe_f32_to_f16(float f)
{
	uint32_t x = f32_bits(f);
	uint32_t sign = (x >> 16) & 0x8000;
	uint32_t absx = x & 0x7fffffffu;
	if (absx >= 0x7f800000u) /* inf or nan */
		return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
	if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
		return (uint16_t)(sign | 0x7c00);
	if (absx < 0x38800000u) {
		/* result is subnormal (or zero): round absx * 2^24 to an integer, ties to even */
		float v = bits_f32(absx) * 0x1p24f;
		return (uint16_t)(sign | (uint32_t)nearbyintf(v));
	}
	uint32_t r = absx + 0xfffu + ((absx >> 13) & 1); /* round to nearest even at bit 13 */
	return (uint16_t)(sign | ((r - (112u << 23)) >> 13));
}

float moe_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t moe_f32_to_bf16(float f)
{
	uint32_t x = f32_bits(f);
	if ((x & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((x >> 16) | 0x40); /* quiet nan */
	return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

/* E4M3 (OCP FP8, "fn" variant): bias 7, no infinities, S.1111.111 is NaN, max 448. */
float moe_fp8_e4m3_to_f32(uint8_t v)
{
	int sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
	float r;
	if (exp == 0xf && man == 7)
		r = NAN;
	else if (exp == 0)
		r = ldexpf((float)man, -9); /* man/8 * 2^-6 */
	else
		r = ldexpf(1.0f + (float)man / 8.0f, exp - 7);
	return sign ? -r : r;
}

uint8_t moe_f32_to_fp8_e4m3(float f)
{
	if (isnan(f))
		return 0x7f;
	uint8_t sign = signbit(f) ? 0x80 : 0;
	float a = fabsf(f);
	if (a >= 448.0f)
		return sign | 0x7e;
	if (a < 0x1p-6f) /* subnormal: steps of 2^-9; rounding up to 8 gives the smallest normal, code 8 */
		return sign | (uint8_t)nearbyintf(a * 512.0f);
	int e;
	float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
	int exp = e - 1;         /* a = (2m) * 2^exp, 2m in [1, 2) */
	int man = (int)nearbyintf((2.0f * m - 1.0f) * 8.0f);
	if (man == 8) {
		man = 0;
		exp++;
	}
	if (exp > 8 || (exp == 8 && man == 7))
		return sign | 0x7e;
	return sign | (uint8_t)(((exp + 7) << 3) | man);
}

/* ---- block quantizers (same arithmetic as ggml's *_ref functions) ---- */

static void quantize_block_q8(const float *x, int8_t *q, uint16_t *d_out)
{
	float amax = 0.0f;
	for (int j = 0; j < MOE_QBLOCK; j++)
		amax = fmaxf(amax, fabsf(x[j]));
	const float d = amax / 127.0f;
	const float id = d != 0.0f ? 1.0f / d : 0.0f;
	*d_out = moe_f32_to_f16(d);
	for (int j = 0; j < MOE_QBLOCK; j++)
		q[j] = (int8_t)roundf(x[j] * id);
}

static void quantize_block_q4(const float *x, uint8_t *q, uint16_t *d_out)
{
	float amax = 0.0f, max = 0.0f;
	for (int j = 0; j < MOE_QBLOCK; j++) {
		if (amax < fabsf(x[j])) {
			amax = fabsf(x[j]);
			max = x[j];
		}
	}
	const float d = max / -8.0f;
	const float id = d != 0.0f ? 1.0f / d : 0.0f;
	*d_out = moe_f32_to_f16(d);
	for (int j = 0; j < MOE_QBLOCK / 2; j++) {
		int lo = (int)(int8_t)(x[j] * id + 8.5f);
		int hi = (int)(int8_t)(x[j + MOE_QBLOCK / 2] * id + 8.5f);
		lo = lo > 15 ? 15 : lo;
		hi = hi > 15 ? 15 : hi;
		q[j] = (uint8_t)(lo | (hi << 4));
	}
}

void moe_quantize_rows(int type, const float *src, size_t nrows, size_t cols, void *codes, uint16_t *scales)
{
	size_t n = nrows * cols;
	if (moe_type_is_quantizable_block(type)) {
		moe_quantize_blocks(type, src, n, codes);
		return;
	}
	switch (type) {
	case MOE_TYPE_F32:
		memcpy(codes, src, n * sizeof(float));
		return;
	case MOE_TYPE_F16:
		for (size_t i = 0; i < n; i++)
			((uint16_t *)codes)[i] = moe_f32_to_f16(src[i]);
		return;
	case MOE_TYPE_BF16:
		for (size_t i = 0; i < n; i++)
			((uint16_t *)codes)[i] = moe_f32_to_bf16(src[i]);
		return;
	case MOE_TYPE_Q8:
		for (size_t b = 0; b < n / MOE_QBLOCK; b++)
			quantize_block_q8(src + b * MOE_QBLOCK, (int8_t *)codes + b * MOE_QBLOCK, scales + b);
		return;
	case MOE_TYPE_Q4:
		for (size_t b = 0; b < n / MOE_QBLOCK; b++)
			quantize_block_q4(src + b * MOE_QBLOCK, (uint8_t *)codes + b * (MOE_QBLOCK / 2), scales + b);
		return;
	}
}

void moe_dequantize_rows(int type, const void *codes, const uint16_t *scales, size_t nrows, size_t cols, float *dst)
{
	size_t n = nrows * cols;
	const struct moe_block_format *f = moe_block_format(type);
	if (f) {
		moe_block_dequantize(f, codes, n, dst);
		return;
	}
	switch (type) {
	case MOE_TYPE_F32:
		memcpy(dst, codes, n * sizeof(float));
		return;
	case MOE_TYPE_F16:
		for (size_t i = 0; i < n; i++)
			dst[i] = moe_f16_to_f32(((const uint16_t *)codes)[i]);
		return;
	case MOE_TYPE_BF16:
		for (size_t i = 0; i < n; i++)
			dst[i] = moe_bf16_to_f32(((const uint16_t *)codes)[i]);
		return;
	case MOE_TYPE_Q8:
		for (size_t b = 0; b < n / MOE_QBLOCK; b++) {
			float d = moe_f16_to_f32(scales[b]);
			const int8_t *q = (const int8_t *)codes + b * MOE_QBLOCK;
			for (int j = 0; j < MOE_QBLOCK; j++)
				dst[b * MOE_QBLOCK + j] = d * (float)q[j];
		}
		return;
	case MOE_TYPE_Q4:
		for (size_t b = 0; b < n / MOE_QBLOCK; b++) {
			float d = moe_f16_to_f32(scales[b]);
			const uint8_t *q = (const uint8_t *)codes + b * (MOE_QBLOCK / 2);
			for (int j = 0; j < MOE_QBLOCK / 2; j++) {
				dst[b * MOE_QBLOCK + j] = d * (float)((q[j] & 0xf) - 8);
				dst[b * MOE_QBLOCK + j + MOE_QBLOCK / 2] = d * (float)((q[j] >> 4) - 8);
			}
		}
		return;
	}
}

void moe_q8_from_gguf(const gguf_block_q8_0 *src, size_t nblocks, int8_t *codes, uint16_t *scales)
{
	for (size_t b = 0; b < nblocks; b++) {
		scales[b] = src[b].d;
		memcpy(codes + b * MOE_QBLOCK, src[b].qs, MOE_QBLOCK);
	}
}

void moe_q4_from_gguf(const gguf_block_q4_0 *src, size_t nblocks, uint8_t *codes, uint16_t *scales)
{
	for (size_t b = 0; b < nblocks; b++) {
		scales[b] = src[b].d;
		memcpy(codes + b * (MOE_QBLOCK / 2), src[b].qs, MOE_QBLOCK / 2);
	}
}

void moe_q8_to_gguf(const int8_t *codes, const uint16_t *scales, size_t nblocks, gguf_block_q8_0 *dst)
{
	for (size_t b = 0; b < nblocks; b++) {
		dst[b].d = scales[b];
		memcpy(dst[b].qs, codes + b * MOE_QBLOCK, MOE_QBLOCK);
	}
}

void moe_q4_to_gguf(const uint8_t *codes, const uint16_t *scales, size_t nblocks, gguf_block_q4_0 *dst)
{
	for (size_t b = 0; b < nblocks; b++) {
		dst[b].d = scales[b];
		memcpy(dst[b].qs, codes + b * (MOE_QBLOCK / 2), MOE_QBLOCK / 2);
	}
}
