/* avx2.c - AVX2 + FMA + F16C kernels (Haswell and later, Zen). q8: |w| times
 * sign-adjusted x with vpmaddubsw; q4: nibbles (0..15) times x, minus 8 * sum(x). */
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

#define TILE 4 /* tokens sharing one pass over a weight row */

/* a q4 block's 16 bytes as 32 codes 0..15 in activation order: the bytes in both
 * lanes, the high lane shifted to its high nibbles */
static inline __m256i q4_codes(const uint8_t *b)
{
	const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)b));
	return _mm256_and_si256(_mm256_srlv_epi64(raw, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(15));
}

/* sum(w * x) of one block as 8 int32 lanes: q8 by |w| and sign-adjusted x (vpmaddubsw
 * takes one unsigned operand), q4 by the codes 0..15 and x (the 8 comes back later) */
static inline __m256i block_dot(const int is_q4, const __m256i wv, const int8_t *x)
{
	const __m256i xv = _mm256_loadu_si256((const __m256i *)x), ones = _mm256_set1_epi16(1);
	if (is_q4)
		return _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
	return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv)), ones);
}

/*
 * One row against T tokens (T a constant in each instantiation, so everything stays
 * in registers). Per 8 blocks, the 8 weight scales are converted and multiplied by
 * each token's 8 activation scales at once and stored, and the loop broadcasts them
 * from memory (a load, not a shuffle): per block and token what is left is the
 * integer dot product, a convert and an FMA. Each token has 4 accumulators (block j
 * into j mod 4), so 4 FMA chains are in flight even for one token (one chain ran
 * batch 1 at 14-16 GB/s per thread: every block waited 4 cycles for the previous
 * block's FMA), and a token's sum is made in the same order in any batch: a batch of
 * sessions decodes bit for bit as each alone (with 4 tokens, some of the 16
 * accumulators live in L1). q4's -8 * sum(x) is summed the same way, 8 blocks at a time.
 */
static inline __attribute__((always_inline)) void q_row(const int is_q4, const uint8_t *wr, const uint16_t *sr,
							size_t nb, const struct moe_qact *a, size_t t0, const int T,
							float *out)
{
	const int C = 4;
	const size_t cols = a->cols, wb = is_q4 ? 16 : 32; /* bytes per block */
	__m256 acc[TILE][4], corr[TILE];
	float sc[TILE][8], tail[TILE];
#pragma GCC unroll 4
	for (int k = 0; k < T; k++) {
		corr[k] = _mm256_setzero_ps();
		tail[k] = 0;
#pragma GCC unroll 4
		for (int c = 0; c < C; c++)
			acc[k][c] = _mm256_setzero_ps();
	}
	size_t b = 0;
	for (; b + 8 <= nb; b += 8) {
		const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sr + b)));
#pragma GCC unroll 4
		for (int k = 0; k < T; k++) {
			const size_t i = (t0 + (size_t)k) * (cols / 32) + b;
			_mm256_storeu_ps(sc[k], _mm256_mul_ps(dw, _mm256_loadu_ps(a->d + i)));
			if (is_q4)
				corr[k] = _mm256_fmadd_ps(dw, _mm256_loadu_ps(a->ds + i), corr[k]);
		}
#pragma GCC unroll 8
		for (int j = 0; j < 8; j++) {
			const uint8_t *wp = wr + (b + (size_t)j) * wb;
			const __m256i wv = is_q4 ? q4_codes(wp) : _mm256_loadu_si256((const __m256i *)wp);
#pragma GCC unroll 4
			for (int k = 0; k < T; k++) {
				const __m256i p = block_dot(is_q4, wv, a->q + (t0 + (size_t)k) * cols + (b + (size_t)j) * 32);
				acc[k][j % C] = _mm256_fmadd_ps(_mm256_broadcast_ss(&sc[k][j]), _mm256_cvtepi32_ps(p),
								acc[k][j % C]);
			}
		}
	}
	for (; b < nb; b++) { /* fewer than 8 blocks left */
		const uint8_t *wp = wr + b * wb;
		const __m256i wv = is_q4 ? q4_codes(wp) : _mm256_loadu_si256((const __m256i *)wp);
		const float dw = _cvtsh_ss(sr[b]);
#pragma GCC unroll 4
		for (int k = 0; k < T; k++) {
			const size_t i = (t0 + (size_t)k) * (cols / 32) + b;
			const __m256i p = block_dot(is_q4, wv, a->q + (t0 + (size_t)k) * cols + b * 32);
			tail[k] += dw * (a->d[i] * hsum(_mm256_cvtepi32_ps(p)) - (is_q4 ? 8.0f * a->ds[i] : 0.0f));
		}
	}
#pragma GCC unroll 4
	for (int k = 0; k < T; k++) {
		__m256 t = acc[k][0];
#pragma GCC unroll 4
		for (int c = 1; c < C; c++)
			t = _mm256_add_ps(t, acc[k][c]);
		out[k] = hsum(t) - 8.0f * hsum(corr[k]) + tail[k];
	}
}

static void q_rows(const int is_q4, const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a,
		   float *y, size_t ystride)
{
	const size_t nb = w->cols / 32, rb = is_q4 ? w->cols / 2 : w->cols;
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *wr = (const uint8_t *)w->codes + r * rb;
		const uint16_t *sr = w->scales + r * nb;
		for (size_t t0 = 0; t0 < a->batch; t0 += TILE) {
			float out[TILE];
			const size_t T = a->batch - t0 < TILE ? a->batch - t0 : TILE;
			switch (T) {
			case 1: q_row(is_q4, wr, sr, nb, a, t0, 1, out); break;
			case 2: q_row(is_q4, wr, sr, nb, a, t0, 2, out); break;
			case 3: q_row(is_q4, wr, sr, nb, a, t0, 3, out); break;
			default: q_row(is_q4, wr, sr, nb, a, t0, 4, out); break;
			}
			for (size_t k = 0; k < T; k++)
				y[(t0 + k) * ystride + r] = out[k];
		}
	}
}

static void q8(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	q_rows(0, w, r0, r1, a, y, ystride);
}

static void q4(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	q_rows(1, w, r0, r1, a, y, ystride);
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
		for (size_t t0 = 0; t0 < batch; t0 += TILE) {
			float out[TILE];
			const size_t T = batch - t0 < TILE ? batch - t0 : TILE;
			switch (T) {
			case 1: fl_row(wrow, half, cols, x, t0, 1, out); break;
			case 2: fl_row(wrow, half, cols, x, t0, 2, out); break;
			case 3: fl_row(wrow, half, cols, x, t0, 3, out); break;
			default: fl_row(wrow, half, cols, x, t0, 4, out); break;
			}
			for (size_t k = 0; k < T; k++)
				y[(t0 + k) * ystride + r] = out[k];
		}
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
