/* avx2.c - AVX2 + FMA + F16C kernels (Haswell and later, Zen). q8: |w| times
 * sign-adjusted x with vpmaddubsw, a block per register; q4: nibbles (0..15) times x,
 * minus 8 * sum(x), a block per register in decode and 8 tokens per register in
 * prefill. */
#include "kernels/kernels.h"

#if defined(__x86_64__)
#include <cpuid.h>
/* this file's functions may use these instructions (GCC and clang spell it apart) */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
#include <immintrin.h>
#include <math.h>
/* no a * b + c fused unless written so: a token's sums then come out the same whichever
 * tile of a batch computed them */
#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/blocks_x86.h"

static int available(void)
{
	unsigned a, b, c, d; /* F16C from CPUID leaf 1: clang's __builtin_cpu_supports lacks it */
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __get_cpuid(1, &a, &b, &c, &d) &&
	       (c & bit_F16C);
}

static inline float hsum(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* a q4 block's 16 bytes as 32 codes 0..15 in activation order: the bytes in both
 * lanes, the high lane shifted to its high nibbles */
static inline __m256i q4_codes(const uint8_t *b)
{
	const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)b));
	return _mm256_and_si256(_mm256_srlv_epi64(raw, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(15));
}

/* sum(w * x) of a q8 block as 8 int32 lanes, by |w| and sign-adjusted x (vpmaddubsw
 * takes one unsigned operand) */
static inline __m256i q8_block_dot(const __m256i wv, const int8_t *x)
{
	const __m256i xv = _mm256_loadu_si256((const __m256i *)x), ones = _mm256_set1_epi16(1);
	return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv)), ones);
}

/*
 * q8: one row against T tokens (T a constant in each instantiation, so everything
 * stays in registers). Per 8 blocks, the 8 weight scales are converted and multiplied
 * by each token's 8 activation scales at once and stored, and the loop broadcasts
 * them from memory (a load, not a shuffle): per block and token what is left is the
 * integer dot product, a convert and an FMA. Each token has 4 accumulators (block j
 * into j mod 4), so 4 FMA chains are in flight even for one token (one chain ran
 * batch 1 at 14-16 GB/s per thread: every block waited 4 cycles for the previous
 * block's FMA), and a token's sum is made in the same order in any batch: a batch of
 * sessions decodes bit for bit as each alone (with 4 tokens, some of the 16
 * accumulators live in L1).
 */
static inline __attribute__((always_inline)) void q8_row(const int8_t *wr, const uint16_t *sr, size_t nb,
							 const struct moe_qact *a, size_t t0, const int T, float *out)
{
	const int C = 4;
	const size_t cols = a->cols;
	__m256 acc[TILE][4];
	float sc[TILE][8], tail[TILE];
#pragma GCC unroll 4
	for (int k = 0; k < T; k++) {
		tail[k] = 0;
#pragma GCC unroll 4
		for (int c = 0; c < C; c++)
			acc[k][c] = _mm256_setzero_ps();
	}
	size_t b = 0;
	for (; b + 8 <= nb; b += 8) {
		moe_prefetch_ahead(wr + b * 32, 256);
		moe_prefetch_ahead(sr + b, 16);
		const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sr + b)));
#pragma GCC unroll 4
		for (int k = 0; k < T; k++)
			_mm256_storeu_ps(sc[k], _mm256_mul_ps(dw, _mm256_loadu_ps(a->d + (t0 + (size_t)k) * (cols / 32) + b)));
#pragma GCC unroll 8
		for (int j = 0; j < 8; j++) {
			const __m256i wv = _mm256_loadu_si256((const __m256i *)(wr + (b + (size_t)j) * 32));
#pragma GCC unroll 4
			for (int k = 0; k < T; k++) {
				const __m256i p = q8_block_dot(wv, a->q + (t0 + (size_t)k) * cols + (b + (size_t)j) * 32);
				acc[k][j % C] = _mm256_fmadd_ps(_mm256_broadcast_ss(&sc[k][j]), _mm256_cvtepi32_ps(p),
								acc[k][j % C]);
			}
		}
	}
	for (; b < nb; b++) { /* fewer than 8 blocks left */
		const __m256i wv = _mm256_loadu_si256((const __m256i *)(wr + b * 32));
		const float dw = _cvtsh_ss(sr[b]);
#pragma GCC unroll 4
		for (int k = 0; k < T; k++) {
			const size_t i = (t0 + (size_t)k) * (cols / 32) + b;
			const __m256i p = q8_block_dot(wv, a->q + (t0 + (size_t)k) * cols + b * 32);
			tail[k] += dw * (a->d[i] * hsum(_mm256_cvtepi32_ps(p)));
		}
	}
#pragma GCC unroll 4
	for (int k = 0; k < T; k++) {
		__m256 t = acc[k][0];
#pragma GCC unroll 4
		for (int c = 1; c < C; c++)
			t = _mm256_add_ps(t, acc[k][c]);
		out[k] = hsum(t) + tail[k];
	}
}

static void q8(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	const size_t nb = w->cols / 32;
	for (size_t r = r0; r < r1; r++) {
		const int8_t *wr = (const int8_t *)w->codes + r * w->cols;
		const uint16_t *sr = w->scales + r * nb;
		TOKEN_TILES(0, a->batch, q8_row, wr, sr, nb, a);
	}
}

/*
 * q4 by two loops that do the same arithmetic, so that a token's result has the same
 * bits in any batch: per block b, the exact integer sum(codes * q) - 8 sum(q),
 * converted, times the float dw_b * d_b, fused-added into chain b mod 4; the row's
 * value is (c0 + c2) + (c1 + c3).
 *  - q4_row_blocks (decode, a few tokens): a register holds one token's 8 blocks.
 *  - q4_row_octets (prefill): a register holds one block's 8 tokens (moe_qact's q_x8),
 *    so a block's 32 products per token are summed by 8 vpmaddubsw added in 16 bits
 *    (at most 8 * 2 * 15 * 127 = 30480) and one vpmaddwd, and the convert, scale and
 *    FMA serve 8 tokens at once, where a block per register spends all four on each
 *    block of each token.
 */

/* a token's 8 blocks' exact sums of codes * q, one per int32 lane */
static inline __m256i q4_sums8(const uint8_t *wp, const int8_t *x)
{
	const __m256i ones = _mm256_set1_epi16(1);
	__m256i v[8];
#pragma GCC unroll 8
	for (int j = 0; j < 8; j++)
		v[j] = _mm256_madd_epi16(
			_mm256_maddubs_epi16(q4_codes(wp + 16 * j), _mm256_loadu_si256((const __m256i *)(x + 32 * j))), ones);
	return x86_sums8(v);
}

static inline __attribute__((always_inline)) void q4_row_blocks(const uint8_t *wr, const uint16_t *sr, size_t nb,
								const struct moe_qact *a, size_t t0, const int T,
								float *out)
{
	const size_t cols = a->cols;
	__m128 acc[TILE];
	float c[TILE][4];
#pragma GCC unroll 4
	for (int k = 0; k < T; k++)
		acc[k] = _mm_setzero_ps();
	size_t b = 0;
	for (; b + 8 <= nb; b += 8) {
		moe_prefetch_ahead(wr + 16 * b, 128);
		moe_prefetch_ahead(sr + b, 16);
		const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sr + b)));
#pragma GCC unroll 4
		for (int k = 0; k < T; k++) {
			const size_t i = (t0 + (size_t)k) * (cols / 32) + b;
			const __m256i n = _mm256_add_epi32(q4_sums8(wr + 16 * b, a->q + (t0 + (size_t)k) * cols + 32 * b),
							   _mm256_loadu_si256((const __m256i *)(a->nsum8 + i)));
			const __m256 f = _mm256_cvtepi32_ps(n), sc = _mm256_mul_ps(dw, _mm256_loadu_ps(a->d + i));
			/* blocks b..b+3 into chains 0..3, then b+4..b+7 */
			acc[k] = _mm_fmadd_ps(_mm256_castps256_ps128(f), _mm256_castps256_ps128(sc), acc[k]);
			acc[k] = _mm_fmadd_ps(_mm256_extractf128_ps(f, 1), _mm256_extractf128_ps(sc, 1), acc[k]);
		}
	}
#pragma GCC unroll 4
	for (int k = 0; k < T; k++)
		_mm_storeu_ps(c[k], acc[k]);
	for (; b < nb; b++) { /* fewer than 8 blocks left */
		const __m256i wv = q4_codes(wr + 16 * b), ones = _mm256_set1_epi16(1);
		const float dw = _cvtsh_ss(sr[b]);
#pragma GCC unroll 4
		for (int k = 0; k < T; k++) {
			const size_t i = (t0 + (size_t)k) * (cols / 32) + b;
			const __m256i x = _mm256_loadu_si256((const __m256i *)(a->q + (t0 + (size_t)k) * cols + 32 * b));
			const int n = x86_hsum_i32(_mm256_madd_epi16(_mm256_maddubs_epi16(wv, x), ones)) + a->nsum8[i];
			c[k][b % 4] = fmaf((float)n, dw * a->d[i], c[k][b % 4]);
		}
	}
#pragma GCC unroll 4
	for (int k = 0; k < T; k++)
		out[k] = (c[k][0] + c[k][2]) + (c[k][1] + c[k][3]);
}

/* block b of a row (codes wr, its float scale *dwb) for O octets of tokens (1 or 2,
 * at qx, dx, nx and ostride bytes/floats on), into the chains acc[o]: the octets
 * share the row's unpacked codes */
static inline __attribute__((always_inline)) void q4_octet_block(const int O, const uint8_t *wr, const float *dwb,
								 size_t b, const int8_t *qx, const float *dx,
								 const int32_t *nx, size_t ostride, __m256 *acc)
{
	const __m256i m = _mm256_set1_epi8(15), w = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(wr + 16 * b)));
	__m256i s[2];
#pragma GCC unroll 2
	for (int o = 0; o < O; o++)
		s[o] = _mm256_setzero_si256();
	/* 4 bytes of codes, broadcast: low nibbles are columns 4g..4g+3, high ones 16+4g..
	 * The empty asm pins each sum where it is: left alone, GCC computes all 8 products
	 * of a block first and runs out of the 16 registers (5 % slower at 16-32 tokens). */
#define Q4_GROUP(g, imm)                                                                                         \
	do {                                                                                                     \
		const __m256i bc = _mm256_shuffle_epi32(w, imm);                                                 \
		const __m256i lo = _mm256_and_si256(bc, m), hi = _mm256_and_si256(_mm256_srli_epi16(bc, 4), m); \
		_Pragma("GCC unroll 2") for (int o = 0; o < O; o++)                                              \
		{                                                                                                \
			const __m256i *x = (const __m256i *)(qx + (size_t)o * ostride * 32 + 256 * b);            \
			s[o] = _mm256_add_epi16(s[o], _mm256_maddubs_epi16(lo, _mm256_load_si256(x + (g))));     \
			s[o] = _mm256_add_epi16(s[o], _mm256_maddubs_epi16(hi, _mm256_load_si256(x + (g) + 4))); \
			__asm__("" : "+x"(s[o]));                                                                \
		}                                                                                                \
	} while (0)
	Q4_GROUP(0, 0x00);
	Q4_GROUP(1, 0x55);
	Q4_GROUP(2, 0xaa);
	Q4_GROUP(3, 0xff);
#undef Q4_GROUP
#pragma GCC unroll 2
	for (int o = 0; o < O; o++) {
		const __m256i n = _mm256_add_epi32(_mm256_madd_epi16(s[o], _mm256_set1_epi16(1)),
						   _mm256_load_si256((const __m256i *)(nx + (size_t)o * ostride + 8 * b)));
		const __m256 sc = _mm256_mul_ps(_mm256_broadcast_ss(dwb), _mm256_load_ps(dx + (size_t)o * ostride + 8 * b));
		acc[o] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(n), sc, acc[o]);
	}
}

/* blocks [b0, b1) of a row (b0 a multiple of 4; dw their float scales, from b0)
 * times O octets of tokens, into their chains c[o][b mod 4], held in registers
 * meanwhile */
static inline __attribute__((always_inline)) void q4_row_octets(const int O, const uint8_t *wr, const float *dw,
								size_t b0, size_t b1, const int8_t *qx,
								const float *dx, const int32_t *nx, size_t ostride,
								__m256 (*c)[4])
{
	__m256 c0[2], c1[2], c2[2], c3[2]; /* chain k of octet o in ck[o] */
#pragma GCC unroll 2
	for (int o = 0; o < O; o++)
		c0[o] = c[o][0], c1[o] = c[o][1], c2[o] = c[o][2], c3[o] = c[o][3];
	size_t b = b0;
	for (; b + 4 <= b1; b += 4) {
		q4_octet_block(O, wr, dw + (b - b0), b, qx, dx, nx, ostride, c0);
		q4_octet_block(O, wr, dw + (b + 1 - b0), b + 1, qx, dx, nx, ostride, c1);
		q4_octet_block(O, wr, dw + (b + 2 - b0), b + 2, qx, dx, nx, ostride, c2);
		q4_octet_block(O, wr, dw + (b + 3 - b0), b + 3, qx, dx, nx, ostride, c3);
	}
	if (b < b1)
		q4_octet_block(O, wr, dw + (b - b0), b, qx, dx, nx, ostride, c0);
	if (b + 1 < b1)
		q4_octet_block(O, wr, dw + (b + 1 - b0), b + 1, qx, dx, nx, ostride, c1);
	if (b + 2 < b1)
		q4_octet_block(O, wr, dw + (b + 2 - b0), b + 2, qx, dx, nx, ostride, c2);
#pragma GCC unroll 2
	for (int o = 0; o < O; o++)
		c[o][0] = c0[o], c[o][1] = c1[o], c[o][2] = c2[o], c[o][3] = c3[o];
}

/* a last octet with fewer tokens than this goes through q4_row_blocks instead (an
 * octet costs about as much as 5.5 tokens a block at a time, 4 sharing a pass) */
#define OCTET_MIN 6

#define SCALE_CHUNK 256 /* a row's scales converted to floats this many blocks at a time */

static void q4(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	const size_t nb = w->cols / 32, rb = w->cols / 2;
	size_t octets = 0;
	if (a->q_x8 && a->group == 32 && a->batch >= MOE_QACT_X8_MIN)
		octets = a->batch / 8 + (a->batch % 8 >= OCTET_MIN);
	const size_t t_blocks = octets * 8 < a->batch ? octets * 8 : a->batch; /* first token not in an octet */
	const size_t ostride = nb * 8; /* an octet's entries in d_x8 and nsum8_x8 (its q_x8 bytes / 32) */
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *wr = (const uint8_t *)w->codes + r * rb;
		const uint16_t *sr = w->scales + r * nb;
		for (size_t o = 0; o < octets; o += 2) {
			const int O = o + 1 < octets ? 2 : 1;
			__m256 c[2][4];
			for (int i = 0; i < 2; i++)
				c[i][0] = c[i][1] = c[i][2] = c[i][3] = _mm256_setzero_ps();
			const int8_t *qx = a->q_x8 + o * ostride * 32;
			const float *dx = a->d_x8 + o * ostride;
			const int32_t *nx = a->nsum8_x8 + o * ostride;
			for (size_t b0 = 0; b0 < nb; b0 += SCALE_CHUNK) {
				const size_t b1 = b0 + SCALE_CHUNK < nb ? b0 + SCALE_CHUNK : nb;
				float dw[SCALE_CHUNK]; /* indexed by block, from b0 */
				size_t b = b0;
				for (; b + 8 <= b1; b += 8)
					_mm256_storeu_ps(dw + (b - b0), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sr + b))));
				for (; b < b1; b++)
					dw[b - b0] = _cvtsh_ss(sr[b]);
				if (O == 2)
					q4_row_octets(2, wr, dw, b0, b1, qx, dx, nx, ostride, c);
				else
					q4_row_octets(1, wr, dw, b0, b1, qx, dx, nx, ostride, c);
			}
			for (int i = 0; i < O; i++) {
				float out[8];
				_mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(c[i][0], c[i][2]), _mm256_add_ps(c[i][1], c[i][3])));
				for (size_t k = 0; k < 8 && (o + (size_t)i) * 8 + k < a->batch; k++)
					y[((o + (size_t)i) * 8 + k) * ystride + r] = out[k];
			}
		}
		TOKEN_TILES(t_blocks, a->batch, q4_row_blocks, wr, sr, nb, a);
	}
}

/* float weights: 8 columns at a time, scalar tail; TILE tokens per pass */
static inline __attribute__((always_inline)) void fl_row(const void *wrow, int half, size_t cols, const float *x,
							 size_t t0, int T, float *out)
{
	__m256 acc[TILE];
#pragma GCC unroll 4
	for (int k = 0; k < T; k++)
		acc[k] = _mm256_setzero_ps();
	size_t c = 0;
	for (; c + 8 <= cols; c += 8) {
		if (c % 16 == 0)
			moe_prefetch_ahead((const uint8_t *)wrow + c * (half ? 2 : 4), 64);
		const __m256 wv = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)wrow + c)))
				       : _mm256_loadu_ps((const float *)wrow + c);
#pragma GCC unroll 4
		for (int k = 0; k < T; k++)
			acc[k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (t0 + k) * cols + c), acc[k]);
	}
#pragma GCC unroll 4
	for (int k = 0; k < T; k++) {
		float s = hsum(acc[k]);
		for (size_t cc = c; cc < cols; cc++)
			s += (half ? _cvtsh_ss(((const uint16_t *)wrow)[cc]) : ((const float *)wrow)[cc]) * x[(t0 + k) * cols + cc];
		out[k] = s;
	}
}

static void fl(const struct moe_wmat *w, int half, size_t r0, size_t r1, const float *x, size_t batch, float *y,
	       size_t ystride)
{
	const size_t cols = w->cols;
	for (size_t r = r0; r < r1; r++) {
		const void *wrow = half ? (const void *)((const uint16_t *)w->codes + r * cols)
					: (const void *)((const float *)w->codes + r * cols);
		TOKEN_TILES(0, batch, fl_row, wrow, half, cols, x);
	}
}

static void f16(const struct moe_wmat *w, size_t r0, size_t r1, const float *x, size_t batch, float *y, size_t ystride)
{
	fl(w, 1, r0, r1, x, batch, y, ystride);
}

static void f32(const struct moe_wmat *w, size_t r0, size_t r1, const float *x, size_t batch, float *y, size_t ystride)
{
	fl(w, 0, r0, r1, x, batch, y, ystride);
}

static void halves(const uint16_t *h, size_t n, float *out)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
	for (; i < n; i++)
		out[i] = _cvtsh_ss(h[i]);
}

#if defined(__clang__)
#pragma clang attribute pop
#endif
const struct moe_kernel_impl moe_kernels_avx2 = {"avx2", available, q8, q4, x86_blocks, f16, f32, halves};
#endif
