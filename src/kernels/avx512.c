/* avx512.c - AVX-512 (F, BW, VL) with VNNI: vpdpbusd multiplies unsigned by signed
 * bytes and accumulates into int32 without the int16 saturation of vpmaddubsw.
 * Two 32-weight blocks per 512-bit register. q8 codes are offset to unsigned
 * (w ^ 0x80 = w + 128) and 128 * sum(x) is taken back; q4 nibbles are already
 * unsigned (0..15) and 8 * sum(x) is taken back. */
#include "kernels/kernels.h"

#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
#include <immintrin.h>

static int available(void)
{
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
	       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

#define TILE 4

/* per-lane scales: lanes 0..7 get s0, lanes 8..15 get s1 */
static inline __m512 two_scales(float s0, float s1)
{
	const __m512d lo = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_set1_ps(s0)));
	return _mm512_castpd_ps(_mm512_insertf64x4(lo, _mm256_castps_pd(_mm256_set1_ps(s1)), 1));
}

/* codes of blocks b, b+1 as 64 unsigned bytes in activation order */
static inline __m512i q8_pair(const int8_t *wr, size_t b)
{
	return _mm512_xor_si512(_mm512_loadu_si512(wr + b * 32), _mm512_set1_epi8((char)0x80));
}

static inline __m512i q4_pair(const uint8_t *wr, size_t b)
{
	const __m256i raw = _mm256_loadu_si256((const __m256i *)(wr + b * 16)); /* blocks b, b+1: 16 bytes each */
	const __m256i m4 = _mm256_set1_epi8(15);
	const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
	/* [lo_b, lo_b1, hi_b, hi_b1] -> [lo_b, hi_b, lo_b1, hi_b1] */
	const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
	return _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(3, 1, 2, 0));
}

static inline __m256i q8_one(const int8_t *wr, size_t b)
{
	return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wr + b * 32)), _mm256_set1_epi8((char)0x80));
}

static inline __m256i q4_one(const uint8_t *wr, size_t b)
{
	const __m128i raw = _mm_loadu_si128((const __m128i *)(wr + b * 16));
	return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(15));
}

/* One row against T tokens. OFF is the unsigned offset (128 for q8, 8 for q4). */
#define QROW(NAME, WT, PAIR, ONE, OFF)                                                                        \
	static inline __attribute__((always_inline)) void NAME(const WT *wr, const uint16_t *sr, size_t nb,  \
							       const struct moe_qact *a, size_t t0, int T,  \
							       float *out)                                  \
	{                                                                                                     \
		const size_t cols = a->cols;                                                                  \
		__m512 acc[TILE];                                                                             \
		float corr[TILE] = {0};                                                                       \
		for (int k = 0; k < T; k++)                                                                   \
			acc[k] = _mm512_setzero_ps();                                                         \
		size_t b = 0;                                                                                 \
		for (; b + 2 <= nb; b += 2) {                                                                 \
			const __m512i u = PAIR(wr, b);                                                        \
			const float d0 = _cvtsh_ss(sr[b]), d1 = _cvtsh_ss(sr[b + 1]);                         \
			for (int k = 0; k < T; k++) {                                                         \
				const size_t t = t0 + k;                                                      \
				const __m512i xv = _mm512_loadu_si512(a->q + t * cols + b * 32);             \
				const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, xv);        \
				acc[k] = _mm512_fmadd_ps(two_scales(d0 * a->d[t * nb + b], d1 * a->d[t * nb + b + 1]), \
							 _mm512_cvtepi32_ps(p), acc[k]);                      \
				corr[k] += d0 * a->ds[t * nb + b] + d1 * a->ds[t * nb + b + 1];              \
			}                                                                                     \
		}                                                                                             \
		float tail[TILE] = {0};                                                                       \
		if (b < nb) { /* an odd block count: the last block at 256 bits */                            \
			const __m256i u = ONE(wr, b);                                                         \
			const float d0 = _cvtsh_ss(sr[b]);                                                    \
			for (int k = 0; k < T; k++) {                                                         \
				const size_t t = t0 + k;                                                      \
				const __m256i xv = _mm256_loadu_si256((const __m256i *)(a->q + t * cols + b * 32)); \
				const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, xv);        \
				tail[k] = d0 * a->d[t * nb + b] *                                            \
					  (float)_mm512_reduce_add_epi32(_mm512_zextsi256_si512(p));           \
				corr[k] += d0 * a->ds[t * nb + b];                                           \
			}                                                                                     \
		}                                                                                             \
		for (int k = 0; k < T; k++)                                                                   \
			out[k] = _mm512_reduce_add_ps(acc[k]) + tail[k] - (float)(OFF) * corr[k];            \
	}

QROW(q8_row, int8_t, q8_pair, q8_one, 128)
QROW(q4_row, uint8_t, q4_pair, q4_one, 8)

#define TOKEN_TILES(ROW, wr, sr)                                                               \
	for (size_t t0 = 0; t0 < a->batch; t0 += TILE) {                                       \
		float out[TILE];                                                               \
		const size_t T = a->batch - t0 < TILE ? a->batch - t0 : TILE;                  \
		switch (T) {                                                                   \
		case 1: ROW(wr, sr, nb, a, t0, 1, out); break;                                 \
		case 2: ROW(wr, sr, nb, a, t0, 2, out); break;                                 \
		case 3: ROW(wr, sr, nb, a, t0, 3, out); break;                                 \
		default: ROW(wr, sr, nb, a, t0, 4, out); break;                                \
		}                                                                              \
		for (size_t k = 0; k < T; k++)                                                 \
			y[(t0 + k) * ystride + r] = out[k];                                    \
	}

static void q8(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	const size_t nb = w->cols / 32;
	for (size_t r = r0; r < r1; r++) {
		const int8_t *wr = (const int8_t *)w->codes + r * w->cols;
		const uint16_t *sr = w->scales + r * nb;
		TOKEN_TILES(q8_row, wr, sr)
	}
}

static void q4(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	const size_t nb = w->cols / 32;
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *wr = (const uint8_t *)w->codes + r * (w->cols / 2);
		const uint16_t *sr = w->scales + r * nb;
		TOKEN_TILES(q4_row, wr, sr)
	}
}

/* float weights: 16 columns at a time, masked tail */
static inline __attribute__((always_inline)) void fl_row(const void *wrow, int half, size_t cols, const float *x,
							 size_t t0, int T, float *out)
{
	__m512 acc[TILE];
	for (int k = 0; k < T; k++)
		acc[k] = _mm512_setzero_ps();
	for (size_t c = 0; c < cols; c += 16) {
		const __mmask16 m = cols - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cols - c)) - 1);
		const __m512 wv = half ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)wrow + c))
				       : _mm512_maskz_loadu_ps(m, (const float *)wrow + c);
		for (int k = 0; k < T; k++)
			acc[k] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + (t0 + k) * cols + c), acc[k]);
	}
	for (int k = 0; k < T; k++)
		out[k] = _mm512_reduce_add_ps(acc[k]);
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

const struct moe_kernel_impl moe_kernels_avx512 = {"avx512", available, q8, q4, f16, f32};
#endif
