/* neon.c - AArch64 Advanced SIMD kernels (baseline ARMv8-A, no dot-product extension
 * required): int8 products widened to int16 (vmull/vmlal: two 127*127 products fit),
 * pairwise-accumulated into int32. q4 nibbles become signed (-8..7) first. */
#include "kernels/kernels.h"

#if defined(__aarch64__)
#include <arm_neon.h>
/* no a * b + c fused unless written so: a token's sums come out the same in any batch
 * (as on x86; not measured on an ARM host here) */
#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
#endif

static int available(void) { return 1; /* Advanced SIMD is part of AArch64 */ }

#define TILE 4

/* int32 lanes of the dot product of one 32-byte block */
static inline int32x4_t dot32(int8x16_t w0, int8x16_t w1, const int8_t *x)
{
	const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
	int16x8_t p0 = vmull_s8(vget_low_s8(w0), vget_low_s8(x0));
	p0 = vmlal_s8(p0, vget_high_s8(w0), vget_high_s8(x0));
	int16x8_t p1 = vmull_s8(vget_low_s8(w1), vget_low_s8(x1));
	p1 = vmlal_s8(p1, vget_high_s8(w1), vget_high_s8(x1));
	return vpadalq_s16(vpaddlq_s16(p0), p1);
}

static inline __attribute__((always_inline)) void row(const int8_t *w8, const uint8_t *w4, const uint16_t *sr,
						      size_t nb, const struct moe_qact *a, size_t t0, int T, float *out)
{
	const size_t cols = a->cols;
	float32x4_t acc[TILE];
	for (int k = 0; k < T; k++)
		acc[k] = vdupq_n_f32(0);
	for (size_t b = 0; b < nb; b++) {
		int8x16_t w0, w1;
		if (w8) {
			w0 = vld1q_s8(w8 + b * 32);
			w1 = vld1q_s8(w8 + b * 32 + 16);
		} else {
			const uint8x16_t raw = vld1q_u8(w4 + b * 16);
			w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(15))), vdupq_n_s8(8));
			w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(raw, 4)), vdupq_n_s8(8));
		}
		float16x4_t h = vreinterpret_f16_u16(vdup_n_u16(sr[b]));
		const float dw = vgetq_lane_f32(vcvt_f32_f16(h), 0);
		for (int k = 0; k < T; k++) {
			const size_t t = t0 + k;
			acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(dot32(w0, w1, a->q + t * cols + b * 32)),
					     dw * a->d[t * nb + b]);
		}
	}
	for (int k = 0; k < T; k++)
		out[k] = vaddvq_f32(acc[k]);
}

static void qmat(const struct moe_wmat *w, int is_q4, size_t r0, size_t r1, const struct moe_qact *a, float *y,
		 size_t ystride)
{
	const size_t nb = w->cols / 32;
	for (size_t r = r0; r < r1; r++) {
		const int8_t *w8 = is_q4 ? NULL : (const int8_t *)w->codes + r * w->cols;
		const uint8_t *w4 = is_q4 ? (const uint8_t *)w->codes + r * (w->cols / 2) : NULL;
		const uint16_t *sr = w->scales + r * nb;
		for (size_t t0 = 0; t0 < a->batch; t0 += TILE) {
			float out[TILE];
			const size_t T = a->batch - t0 < TILE ? a->batch - t0 : TILE;
			switch (T) {
			case 1: row(w8, w4, sr, nb, a, t0, 1, out); break;
			case 2: row(w8, w4, sr, nb, a, t0, 2, out); break;
			case 3: row(w8, w4, sr, nb, a, t0, 3, out); break;
			default: row(w8, w4, sr, nb, a, t0, 4, out); break;
			}
			for (size_t k = 0; k < T; k++)
				y[(t0 + k) * ystride + r] = out[k];
		}
	}
}

static void q8(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	qmat(w, 0, r0, r1, a, y, ystride);
}

static void q4(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	qmat(w, 1, r0, r1, a, y, ystride);
}

static void fl(const struct moe_wmat *w, int half, size_t r0, size_t r1, const float *x, size_t batch, float *y,
	       size_t ystride)
{
	const size_t cols = w->cols;
	for (size_t r = r0; r < r1; r++) {
		const uint16_t *wh = (const uint16_t *)w->codes + r * cols;
		const float *wf = (const float *)w->codes + r * cols;
		for (size_t t = 0; t < batch; t++) {
			const float *xt = x + t * cols;
			float32x4_t acc = vdupq_n_f32(0);
			size_t c = 0;
			for (; c + 4 <= cols; c += 4) {
				const float32x4_t wv = half ? vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(wh + c))) : vld1q_f32(wf + c);
				acc = vfmaq_f32(acc, wv, vld1q_f32(xt + c));
			}
			float s = vaddvq_f32(acc);
			for (; c < cols; c++)
				s += (half ? moe_kernel_f16(wh[c]) : wf[c]) * xt[c];
			y[t * ystride + r] = s;
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

/* Decoded block weights (blocks.h): codes of every format fit int8 (0..63 or the IQ4
 * levels), so each group of 16 is one widening product and a pairwise sum. */
static void block_dot(const uint8_t *c, const float *s, const float *z, int sgn, size_t n, const struct moe_qact *a,
		      size_t col0, size_t t0, size_t T, float *acc)
{
	(void)sgn;
	const size_t cols = a->cols;
	for (size_t k = 0; k < T; k++) {
		const size_t t = t0 + k;
		const int8_t *x = a->q + t * cols + col0;
		const float *dx = a->d + t * (cols / 32) + col0 / 32, *ds16 = a->ds16 + t * (cols / 16) + col0 / 16;
		float32x2_t sum = vdup_n_f32(0), corr = vdup_n_f32(0); /* the two groups of 16 of a block of 32 */
		for (size_t g = 0; g < n / 16; g += 2) {
			int32_t dots[2];
			for (int h = 0; h < 2; h++) {
				const int8x16_t cv = vld1q_s8((const int8_t *)c + 16 * (g + h)), xv = vld1q_s8(x + 16 * (g + h));
				int16x8_t p = vmull_s8(vget_low_s8(cv), vget_low_s8(xv));
				p = vmlal_s8(p, vget_high_s8(cv), vget_high_s8(xv));
				dots[h] = vaddvq_s32(vpaddlq_s16(p));
			}
			const float32x2_t sc = vmul_n_f32(vld1_f32(s + g), dx[g / 2]);
			const float32x2_t dv = {(float)dots[0], (float)dots[1]};
			sum = vfma_f32(sum, sc, dv);
			corr = vfma_f32(corr, vld1_f32(z + g), vld1_f32(ds16 + g));
		}
		acc[k] += vaddv_f32(sum) - vaddv_f32(corr);
	}
}

static void blocks(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	moe_blocks_rows(block_dot, NULL, w, r0, r1, a, y, ystride);
}

static void halves(const uint16_t *h, size_t n, float *out)
{
	size_t i = 0;
	for (; i + 4 <= n; i += 4)
		vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + i))));
	for (; i < n; i++)
		out[i] = moe_kernel_f16(h[i]);
}

const struct moe_kernel_impl moe_kernels_neon = {"neon", available, q8, q4, blocks, f16, f32, halves};
#endif
