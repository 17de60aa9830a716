/* test_quant.c - scalar conversions and q8/q4 quantizers against float64 math. */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quant/quant.h"

static uint64_t rng = 88172645463325252ull;
static double uniform(void) /* xorshift64, [0, 1) */
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (double)(rng >> 11) * 0x1p-53;
}
static double gauss(void)
{
	double u = uniform() + 1e-300, v = uniform();
	return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

/* f16 value of bits h, in double, from the IEEE definition */
static double f16_ref(uint16_t h)
{
	int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
	double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
	return s ? -v : v;
}

static void test_f16(void)
{
	for (uint32_t h = 0; h < 65536; h++) {
		double ref = f16_ref((uint16_t)h);
		float f = moe_f16_to_f32((uint16_t)h);
		if (isnan(ref)) {
			CHECK(isnan(f), "f16 %04x should be NaN", h);
			continue;
		}
		CHECK((double)f == ref, "f16 %04x -> %g, expected %g", h, f, ref);
		CHECK(moe_f32_to_f16(f) == h, "f16 %04x does not round-trip", h);
	}
	/* nearest, ties to even: for random floats no other f16 is closer */
	for (int i = 0; i < 200000; i++) {
		float x = (float)(gauss() * ldexp(1, (int)(uniform() * 40) - 25));
		uint16_t h = moe_f32_to_f16(x);
		double err = fabs(f16_ref(h) - x);
		uint16_t up = (uint16_t)(h + 1), dn = (uint16_t)(h - 1);
		int ok = err <= fabs(f16_ref(up) - x) || isnan(f16_ref(up)) || ((up ^ h) & 0x8000);
		ok = ok && (err <= fabs(f16_ref(dn) - x) || isnan(f16_ref(dn)) || ((dn ^ h) & 0x8000));
		CHECK(ok, "f32 %.9g -> f16 %04x is not the nearest", x, h);
		if (!ok)
			break;
	}
	CHECK(moe_f32_to_f16(65520.0f) == 0x7c00, "65520 rounds to infinity in f16");
	CHECK(moe_f32_to_f16(65519.0f) == 0x7bff, "65519 rounds to the largest finite f16");
}

static void test_bf16(void)
{
	for (int i = 0; i < 200000; i++) {
		float x = (float)(gauss() * ldexp(1, (int)(uniform() * 60) - 30));
		uint16_t b = moe_f32_to_bf16(x);
		double v = moe_bf16_to_f32(b);
		/* bf16 keeps 8 significant bits: half an ulp is at most 2^-8 of the value */
		CHECK(fabs(v - x) <= ldexp(fabs(x), -8), "bf16(%g) = %g", x, v);
		uint32_t u;
		memcpy(&u, &x, 4);
		CHECK(moe_f32_to_bf16(moe_bf16_to_f32(b)) == b, "bf16 %04x does not round-trip", b);
		if (i == 0) {
			/* tie: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7; even is 1 */
			CHECK(moe_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80, "bf16 tie goes to even");
		}
	}
}

static double fp8_ref(uint8_t c)
{
	int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
	if (e == 15 && m == 7)
		return NAN;
	double v = e == 0 ? ldexp(m, -9) : ldexp(8 + m, e - 10);
	return s ? -v : v;
}

static void test_fp8(void)
{
	for (int c = 0; c < 256; c++) {
		double ref = fp8_ref((uint8_t)c);
		float f = moe_fp8_e4m3_to_f32((uint8_t)c);
		CHECK(isnan(ref) ? isnan(f) : (double)f == ref, "fp8 %02x -> %g, expected %g", c, f, ref);
	}
	CHECK(fp8_ref(0x7e) == 448.0, "E4M3 max is 448");
	for (int i = 0; i < 20000; i++) {
		float x = (float)(gauss() * ldexp(1, (int)(uniform() * 16) - 8));
		uint8_t c = moe_f32_to_fp8_e4m3(x);
		double err = fabs(fp8_ref(c) - fmin(fmax(x, -448), 448));
		int best = 1;
		for (int o = 0; o < 256; o++)
			if (!isnan(fp8_ref((uint8_t)o)) && fabs(fp8_ref((uint8_t)o) - x) < err)
				best = 0;
		CHECK(best, "fp8(%g) = %02x (%g) is not the nearest", x, c, fp8_ref(c));
	}
}

/* q8/q4 against GGUF's algorithm evaluated in float64 */
static void test_blocks(int type, int rows, int cols, double spread)
{
	const int n = rows * cols, nb = n / 32;
	float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
	uint8_t *codes = malloc(n);
	uint16_t *scales = malloc(nb * sizeof *scales);
	for (int i = 0; i < n; i++)
		x[i] = (float)(gauss() * spread * (i % 97 == 0 ? 10 : 1));
	for (int b = 0; b < 3; b++) /* an all-zero block must not divide by zero */
		x[b] = 0;
	memset(x + 64, 0, 32 * sizeof *x);
	moe_quantize_rows(type, x, rows, cols, codes, scales);
	moe_dequantize_rows(type, codes, scales, rows, cols, y);
	int code_mismatch = 0;
	double sq = 0, sq_ref = 0;
	for (int b = 0; b < nb; b++) {
		const float *xb = x + b * 32;
		double amax = 0, mx = 0;
		for (int j = 0; j < 32; j++)
			if (fabs(xb[j]) > amax) {
				amax = fabs(xb[j]);
				mx = xb[j];
			}
		double d = type == MOE_TYPE_Q8 ? amax / 127 : mx / -8;
		double d16 = f16_ref(scales[b]);
		CHECK(fabs(d16 - d) <= ldexp(fabs(d), -11) + 1e-30, "block %d: scale %g, float64 gives %g", b, d16, d);
		for (int j = 0; j < 32; j++) {
			int q;
			if (type == MOE_TYPE_Q8) {
				q = d ? (int)lround(xb[j] / d) : 0;
				code_mismatch += (int8_t)codes[b * 32 + j] != q;
			} else {
				q = d ? (int)fmin(15, trunc(xb[j] / d + 8.5)) : 8;
				int got = j < 16 ? codes[b * 16 + j] & 15 : codes[b * 16 + j - 16] >> 4;
				code_mismatch += got != q;
			}
			double ref = type == MOE_TYPE_Q8 ? q * d16 : (q - 8) * d16;
			double err = fabs(y[b * 32 + j] - xb[j]);
			/* half a step, plus the clamp at +7 for q4, plus the fp16 rounding of the scale */
			double bound = (type == MOE_TYPE_Q8 ? 0.5 : 1.0) * fabs(d) + 8 * fabs(d16 - d) * 16 + 1e-7;
			CHECK(err <= bound, "block %d elem %d: |%g - %g| > %g", b, j, y[b * 32 + j], xb[j], bound);
			sq += err * err;
			sq_ref += (ref - xb[j]) * (ref - xb[j]);
		}
	}
	/* float32 arithmetic may land a code on the other side of a .5 tie: vanishingly rare */
	CHECK(code_mismatch <= n / 10000, "%d of %d codes differ from the float64 reference", code_mismatch, n);
	CHECK(fabs(sq - sq_ref) <= 1e-3 * sq_ref + 1e-12, "squared error %g vs float64 reference %g", sq, sq_ref);
	/* GGUF block round trip is lossless */
	if (type == MOE_TYPE_Q8) {
		gguf_block_q8_0 *g = malloc(nb * sizeof *g);
		uint8_t *c2 = malloc(n);
		uint16_t *s2 = malloc(nb * 2);
		moe_q8_to_gguf((int8_t *)codes, scales, nb, g);
		moe_q8_from_gguf(g, nb, (int8_t *)c2, s2);
		CHECK(memcmp(c2, codes, n) == 0 && memcmp(s2, scales, nb * 2) == 0, "q8 <-> GGUF Q8_0 not lossless");
		CHECK(g[1].d == scales[1] && g[1].qs[5] == (int8_t)codes[32 + 5], "Q8_0 block layout");
		free(g), free(c2), free(s2);
	} else {
		gguf_block_q4_0 *g = malloc(nb * sizeof *g);
		uint8_t *c2 = malloc(n / 2);
		uint16_t *s2 = malloc(nb * 2);
		moe_q4_to_gguf(codes, scales, nb, g);
		moe_q4_from_gguf(g, nb, c2, s2);
		CHECK(memcmp(c2, codes, n / 2) == 0 && memcmp(s2, scales, nb * 2) == 0, "q4 <-> GGUF Q4_0 not lossless");
		free(g), free(c2), free(s2);
	}
	free(x), free(y), free(codes), free(scales);
}

static void test_sizes(void)
{
	CHECK(moe_type_matrix_bytes(MOE_TYPE_Q8, 4096, 14336) == 4096ull * 14336 / 32 * 34, "q8 matrix bytes");
	CHECK(moe_type_matrix_bytes(MOE_TYPE_Q4, 4096, 14336) == 4096ull * 14336 / 32 * 18, "q4 matrix bytes");
	CHECK(moe_type_matrix_bytes(MOE_TYPE_Q4, 3, 33) == 0, "q4 needs whole blocks");
	CHECK(moe_type_matrix_bytes(MOE_TYPE_BF16, 3, 33) == 198, "bf16 matrix bytes");
	CHECK(moe_type_from_name("q4") == MOE_TYPE_Q4 && moe_type_from_name("q5") == MOE_EINVAL, "type names");
	/* GGUF's block types: sizeof(block_*) in ggml-common.h per 32 or 256 weights */
	static const struct {
		const char *name;
		int type;
		uint64_t weights, bytes;
	} gguf[] = {{"q4_1", MOE_TYPE_Q4_1, 32, 20},    {"q5_0", MOE_TYPE_Q5_0, 32, 22},
		    {"q5_1", MOE_TYPE_Q5_1, 32, 24},    {"q2_k", MOE_TYPE_Q2_K, 256, 84},
		    {"q3_k", MOE_TYPE_Q3_K, 256, 110},  {"q4_k", MOE_TYPE_Q4_K, 256, 144},
		    {"q5_k", MOE_TYPE_Q5_K, 256, 176},  {"q6_k", MOE_TYPE_Q6_K, 256, 210},
		    {"iq4_nl", MOE_TYPE_IQ4_NL, 32, 18}, {"iq4_xs", MOE_TYPE_IQ4_XS, 256, 136},
		    {"mxfp4", MOE_TYPE_MXFP4, 32, 17}};
	for (size_t i = 0; i < sizeof gguf / sizeof gguf[0]; i++) {
		const int t = gguf[i].type;
		CHECK(moe_type_from_name(gguf[i].name) == t && strcmp(moe_type_name(t), gguf[i].name) == 0, "%s name",
		      gguf[i].name);
		CHECK(moe_type_is_blocks(t) && !moe_type_is_split(t) && moe_type_block(t) == gguf[i].weights, "%s block",
		      gguf[i].name);
		CHECK(moe_type_matrix_bytes(t, 7, 14336) == 7 * 14336 / gguf[i].weights * gguf[i].bytes, "%s bytes",
		      gguf[i].name);
		CHECK(moe_type_matrix_bytes(t, 7, gguf[i].weights + 16) == 0, "%s needs whole blocks", gguf[i].name);
	}
	CHECK(moe_type_name(MOE_TYPE_COUNT) == NULL && !moe_type_is_blocks(MOE_TYPE_Q8), "no more types");
}

/* Blocks the K quantizers must get right whatever the weights: all zero, one value
 * repeated, a lone outlier, one sign only, values near fp16's ends. Decoded, zeros
 * stay zero, everything is finite, and a repeated value comes back within the
 * format's step of it (1.5 steps: the group's min and scale are rounded too). */
static void test_kquant_edges(void)
{
	static const int types[] = {MOE_TYPE_Q2_K, MOE_TYPE_Q3_K, MOE_TYPE_Q4_K, MOE_TYPE_Q5_K, MOE_TYPE_Q6_K};
	static const double step[] = {1.0 / 3, 1.0 / 4, 1.0 / 15, 1.0 / 31, 1.0 / 32}; /* of the largest magnitude */
	float x[256], y[256];
	uint8_t blk[256];
	for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
		for (int c = 0; c < 7; c++) {
			for (int i = 0; i < 256; i++) {
				const float r = (float)((i * 37 % 101) - 50) / 50.0f; /* -1 .. 1, no two neighbours equal */
				x[i] = c == 0 ? 0.0f
				     : c == 1 ? -0.75f
				     : c == 2 ? (i == 77 ? 1000.0f : r)
				     : c == 3 ? fabsf(r) + 0.5f
				     : c == 4 ? -fabsf(r) - 0.5f
				     : c == 5 ? r * 60000.0f
				     : r * 1e-6f;
			}
			moe_quantize_rows(types[t], x, 1, 256, blk, NULL);
			moe_dequantize_rows(types[t], blk, NULL, 1, 256, y);
			double amax = 0, worst = 0;
			int finite = 1;
			for (int i = 0; i < 256; i++) {
				amax = fmax(amax, fabs(x[i]));
				finite &= isfinite(y[i]);
				worst = fmax(worst, fabs((double)y[i] - x[i]));
			}
			CHECK(finite, "%s case %d: a weight decodes to a non-finite value", moe_type_name(types[t]), c);
			if (c == 0)
				CHECK(worst == 0, "%s: zeros decode to %g", moe_type_name(types[t]), worst);
			else if (c != 2 && c != 6) /* an outlier widens its group's step; 1e-6 is below fp16's scale range */
				CHECK(worst <= step[t] * amax * 1.5, "%s case %d: error %g, more than 1.5 steps of %g",
				      moe_type_name(types[t]), c, worst, amax);
		}
}

int main(void)
{
	test_f16();
	test_bf16();
	test_fp8();
	test_blocks(MOE_TYPE_Q8, 64, 256, 0.02);
	test_blocks(MOE_TYPE_Q4, 64, 256, 0.02);
	test_blocks(MOE_TYPE_Q8, 16, 4096, 3.0);
	test_blocks(MOE_TYPE_Q4, 16, 4096, 3.0);
	test_sizes();
	test_kquant_edges();
	return check_report("test_quant");
}
