/* scalar.c - the reference implementation: plain C, the arithmetic every SIMD
 * version must reproduce up to the order of its float sums. */
#include <string.h>

#include "kernels/kernels.h"

static int always(void) { return 1; }

static void q8(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	const size_t cols = w->cols, nb = cols / 32;
	const int8_t *codes = w->codes;
	for (size_t r = r0; r < r1; r++) {
		const int8_t *wr = codes + r * cols;
		const uint16_t *sr = w->scales + r * nb;
		for (size_t t = 0; t < a->batch; t++) {
			const int8_t *x = a->q + t * cols;
			const float *dx = a->d + t * nb;
			float sum = 0;
			for (size_t b = 0; b < nb; b++) {
				int32_t dot = 0;
				for (int j = 0; j < 32; j++)
					dot += wr[b * 32 + j] * x[b * 32 + j];
				sum += moe_kernel_f16(sr[b]) * dx[b] * (float)dot;
			}
			y[t * ystride + r] = sum;
		}
	}
}

static void q4(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	const size_t cols = w->cols, nb = cols / 32;
	const uint8_t *codes = w->codes;
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *wr = codes + r * (cols / 2);
		const uint16_t *sr = w->scales + r * nb;
		for (size_t t = 0; t < a->batch; t++) {
			const int8_t *x = a->q + t * cols;
			const float *dx = a->d + t * nb;
			float sum = 0;
			for (size_t b = 0; b < nb; b++) {
				int32_t dot = 0;
				for (int j = 0; j < 16; j++) {
					dot += ((wr[b * 16 + j] & 15) - 8) * x[b * 32 + j];
					dot += ((wr[b * 16 + j] >> 4) - 8) * x[b * 32 + j + 16];
				}
				sum += moe_kernel_f16(sr[b]) * dx[b] * (float)dot;
			}
			y[t * ystride + r] = sum;
		}
	}
}

/* decoded block weights (blocks.h): per 16, s * dot(c, x) - z * sum(x), times d_x per 32 */
static void block_dot(const uint8_t *c, const float *s, const float *z, int sgn, size_t n, const struct moe_qact *a,
		      size_t col0, size_t t0, size_t T, float *acc)
{
	for (size_t k = 0; k < T; k++) {
		const size_t t = t0 + k;
		const int8_t *x = a->q + t * a->cols + col0;
		const float *dx = a->d + t * (a->cols / 32) + col0 / 32, *ds16 = a->ds16 + t * (a->cols / 16) + col0 / 16;
		float sum = 0;
		for (size_t g = 0; g < n / 16; g++) {
			int32_t dot = 0;
			for (int j = 0; j < 16; j++)
				dot += (sgn ? (int)(int8_t)c[16 * g + j] : (int)c[16 * g + j]) * x[16 * g + j];
			sum += s[g] * dx[g / 2] * (float)dot - z[g] * ds16[g];
		}
		acc[k] += sum;
	}
}

static void blocks(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	moe_blocks_rows(block_dot, NULL, w, r0, r1, a, y, ystride);
}

/* float weights: element c of row r as f32 */
static void fl(const struct moe_wmat *w, int half, size_t r0, size_t r1, const float *x, size_t batch, float *y,
	       size_t ystride)
{
	for (size_t r = r0; r < r1; r++)
		for (size_t t = 0; t < batch; t++) {
			float sum = 0;
			for (size_t c = 0; c < w->cols; c++) {
				const size_t at = r * w->cols + c;
				const float wv = half ? moe_kernel_f16(((const uint16_t *)w->codes)[at]) : ((const float *)w->codes)[at];
				sum += wv * x[t * w->cols + c];
			}
			y[t * ystride + r] = sum;
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
	for (size_t i = 0; i < n; i++)
		out[i] = moe_kernel_f16(h[i]);
}

const struct moe_kernel_impl moe_kernels_scalar = {"scalar", always, q8, q4, blocks, f16, f32, halves};
