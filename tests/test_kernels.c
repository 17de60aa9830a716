/* test_kernels.c - every kernel implementation against float64 references on random
 * data, awkward shapes included, and against the scalar reference. Depends only on
 * src/kernels, so the same test runs cross-built for ARM under qemu. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/kernels.h"

enum { T_F32 = MOE_TYPE_F32, T_F16 = MOE_TYPE_F16, T_Q8 = MOE_TYPE_Q8, T_Q4 = MOE_TYPE_Q4 };

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 32);
}
static double unif(void) { return (next() + 0.5) / 4294967296.0; }
static double gauss(void) { return sqrt(-2 * log(unif())) * cos(6.283185307179586 * unif()); }

static double f16d(uint16_t h) /* IEEE half, from its definition */
{
	int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
	double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
	return s ? -v : v;
}
static uint16_t rand_scale(void) /* a finite half between 2^-12 and 2^-2, either sign */
{
	return (uint16_t)(((next() & 1) << 15) | ((3 + next() % 10) << 10) | (next() & 1023));
}

/*
 * GGUF's block formats in float64, written from ggml-quants.c's dequantize_row_*
 * loops (not from src/kernels/blocks.c). mag[j] = |scale * code| + |offset| of weight
 * j: the size of what a kernel adds and subtracts, for the rounding bound.
 */
static double h(const uint8_t *p) { return f16d((uint16_t)(p[0] | p[1] << 8)); }

static void put(double *val, double *mag, int j, double scale, int q, double off) /* w = scale*q + off */
{
	val[j] = scale * q + off;
	mag[j] = fabs(scale * q) + fabs(off);
}

static void ref_block(int type, const uint8_t *b, double *val, double *mag)
{
	static const int kv[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
	switch (type) {
	case MOE_TYPE_Q4_1:
	case MOE_TYPE_Q5_0:
	case MOE_TYPE_Q5_1:
	case MOE_TYPE_IQ4_NL: {
		const int has_m = type == MOE_TYPE_Q4_1 || type == MOE_TYPE_Q5_1, has_h = type != MOE_TYPE_Q4_1 && type != MOE_TYPE_IQ4_NL;
		const double d = h(b), m = has_m ? h(b + 2) : 0;
		const uint8_t *qh = b + (has_m ? 4 : 2), *qs = qh + (has_h ? 4 : 0);
		const uint32_t hb = has_h ? (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24 : 0;
		for (int j = 0; j < 16; j++) {
			int x0 = qs[j] & 15, x1 = qs[j] >> 4;
			if (type == MOE_TYPE_IQ4_NL) {
				put(val, mag, j, d, kv[x0], 0);
				put(val, mag, j + 16, d, kv[x1], 0);
				continue;
			}
			x0 |= ((hb >> j) << 4) & 0x10;
			x1 |= (hb >> (j + 12)) & 0x10;
			const double off = type == MOE_TYPE_Q5_0 ? -16 * d : m;
			put(val, mag, j, d, x0, off);
			put(val, mag, j + 16, d, x1, off);
		}
		break;
	}
	case MOE_TYPE_Q2_K: {
		const double d = h(b + 80), mn = h(b + 82);
		const uint8_t *q = b + 16;
		int is = 0, y = 0;
		for (int n = 0; n < 256; n += 128, q += 32)
			for (int shift = 0; shift < 8; shift += 2)
				for (int half = 0; half < 2; half++, is++)
					for (int l = 0; l < 16; l++, y++)
						put(val, mag, y, d * (b[is] & 15), (q[l + 16 * half] >> shift) & 3, -mn * (b[is] >> 4));
		break;
	}
	case MOE_TYPE_Q3_K: {
		const double d = h(b + 108);
		const uint8_t *hm = b, *q = b + 32, *sc = b + 96;
		int scales[16];
		for (int i = 0; i < 16; i++) /* 4 low bits, then 2 high bits, as ggml's kmask shuffling leaves them */
			scales[i] = (i < 8 ? sc[i] & 15 : sc[i - 8] >> 4) | (((sc[8 + i % 4] >> (2 * (i / 4))) & 3) << 4);
		int is = 0, y = 0, m = 1;
		for (int n = 0; n < 256; n += 128, q += 32)
			for (int shift = 0; shift < 8; shift += 2, m <<= 1)
				for (int half = 0; half < 2; half++, is++)
					for (int l = 0; l < 16; l++, y++) {
						const int k = l + 16 * half;
						put(val, mag, y, d * (scales[is] - 32), ((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4), 0);
					}
		break;
	}
	case MOE_TYPE_Q4_K:
	case MOE_TYPE_Q5_K: {
		const int five = type == MOE_TYPE_Q5_K;
		const double d = h(b), mn = h(b + 2);
		const uint8_t *sc = b + 4, *qh = b + 16, *q = b + (five ? 48 : 16);
		int y = 0;
		for (int j = 0; j < 8; j++) {
			const int scl = j < 4 ? sc[j] & 63 : (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4);
			const int mm = j < 4 ? sc[j + 4] & 63 : (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
			for (int l = 0; l < 32; l++, y++) {
				int v = j % 2 ? q[32 * (j / 2) + l] >> 4 : q[32 * (j / 2) + l] & 15;
				if (five && (qh[l] >> j) & 1)
					v += 16;
				put(val, mag, y, d * scl, v, -mn * mm);
			}
		}
		break;
	}
	case MOE_TYPE_Q6_K: {
		const double d = h(b + 208);
		for (int n = 0; n < 2; n++) {
			const uint8_t *ql = b + 64 * n, *qh = b + 128 + 32 * n;
			const int8_t *sc = (const int8_t *)b + 192 + 8 * n;
			for (int l = 0; l < 32; l++) {
				const int is = l / 16;
				put(val, mag, 128 * n + l, d * sc[is], ((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32, 0);
				put(val, mag, 128 * n + l + 32, d * sc[is + 2], ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32, 0);
				put(val, mag, 128 * n + l + 64, d * sc[is + 4], ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32, 0);
				put(val, mag, 128 * n + l + 96, d * sc[is + 6], ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32, 0);
			}
		}
		break;
	}
	case MOE_TYPE_MXFP4: { /* {e, qs[16]}: 2^(e-127) times an FP4 E2M1 value, from its bits */
		const double d = ldexp(1.0, b[0] - 127);
		for (int j = 0; j < 32; j++) {
			const int c = j < 16 ? b[1 + j] & 15 : b[1 + j - 16] >> 4, ex = (c >> 1) & 3, m = c & 1;
			const double v = (c & 8 ? -1 : 1) * (ex ? ldexp(1.0 + 0.5 * m, ex - 1) : 0.5 * m);
			val[j] = d * v;
			mag[j] = fabs(val[j]);
		}
		break;
	}
	case MOE_TYPE_IQ4_XS: {
		const double d = h(b);
		const int sh = b[2] | b[3] << 8;
		for (int ib = 0; ib < 8; ib++) {
			const int ls = ((b[4 + ib / 2] >> 4 * (ib % 2)) & 15) | (((sh >> 2 * ib) & 3) << 4);
			for (int j = 0; j < 16; j++) {
				put(val, mag, 32 * ib + j, d * (ls - 32), kv[b[8 + 16 * ib + j] & 15], 0);
				put(val, mag, 32 * ib + j + 16, d * (ls - 32), kv[b[8 + 16 * ib + j] >> 4], 0);
			}
		}
		break;
	}
	}
}

/* where each format keeps its fp16 super-scales (set to finite values; the rest is random bytes) */
static void fix_halves(int type, uint8_t *b)
{
	static const int at[MOE_TYPE_COUNT][2] = {
		[MOE_TYPE_Q4_1] = {0, 2}, [MOE_TYPE_Q5_0] = {0, -1}, [MOE_TYPE_Q5_1] = {0, 2}, [MOE_TYPE_Q2_K] = {80, 82},
		[MOE_TYPE_Q3_K] = {108, -1}, [MOE_TYPE_Q4_K] = {0, 2}, [MOE_TYPE_Q5_K] = {0, 2}, [MOE_TYPE_Q6_K] = {208, -1},
		[MOE_TYPE_IQ4_NL] = {0, -1}, [MOE_TYPE_IQ4_XS] = {0, -1}, [MOE_TYPE_MXFP4] = {-1, -1},
	};
	if (type == MOE_TYPE_MXFP4) /* its E8M0 scale: 2^-17 .. 2^-8, as the fp16 ones below */
		b[0] = (uint8_t)(110 + next() % 10);
	for (int i = 0; i < 2; i++)
		if (at[type][i] >= 0) {
			/* 2^-14 .. 2^-6, either sign: the sub-scales multiply them by up to 63 (128 for Q6_K) */
			const uint16_t v = (uint16_t)(((next() & 1) << 15) | ((1 + next() % 9) << 10) | (next() & 1023));
			b[at[type][i]] = (uint8_t)v;
			b[at[type][i] + 1] = (uint8_t)(v >> 8);
		}
}

struct mat {
	struct moe_wmat w;
	double *ref; /* dequantized, [rows][cols] */
	double *mag; /* block types: |scale * code| + |offset| per weight */
	void *codes;
	uint16_t *scales;
};

static void make(struct mat *m, int type, size_t rows, size_t cols)
{
	memset(m, 0, sizeof *m);
	m->w = (struct moe_wmat){type, rows, cols, NULL, NULL};
	m->ref = malloc(rows * cols * sizeof(double));
	const size_t nb = cols / 32;
	const struct moe_block_format *f = moe_block_format(type);
	if (f) {
		uint8_t *c = malloc(rows * moe_block_row_bytes(f, cols));
		m->mag = malloc(rows * cols * sizeof(double));
		for (size_t b = 0; b < rows * cols / f->weights; b++) {
			uint8_t *blk = c + b * f->bytes;
			for (int i = 0; i < f->bytes; i++)
				blk[i] = (uint8_t)next();
			fix_halves(type, blk);
			ref_block(type, blk, m->ref + b * f->weights, m->mag + b * f->weights);
		}
		m->codes = c;
	}
	switch (f ? -1 : type) {
	case T_Q8: {
		int8_t *c = malloc(rows * cols);
		m->scales = malloc(rows * nb * 2 + 2);
		for (size_t i = 0; i < rows * nb; i++)
			m->scales[i] = rand_scale();
		for (size_t i = 0; i < rows * cols; i++) {
			c[i] = (int8_t)((int)(next() % 255) - 127);
			m->ref[i] = c[i] * f16d(m->scales[i / 32]);
		}
		m->codes = c;
		break;
	}
	case T_Q4: {
		uint8_t *c = malloc(rows * cols / 2);
		m->scales = malloc(rows * nb * 2 + 2);
		for (size_t i = 0; i < rows * nb; i++)
			m->scales[i] = rand_scale();
		for (size_t i = 0; i < rows * cols / 2; i++)
			c[i] = (uint8_t)next();
		for (size_t r = 0; r < rows; r++)
			for (size_t b = 0; b < nb; b++)
				for (int j = 0; j < 16; j++) {
					uint8_t v = c[r * cols / 2 + b * 16 + j];
					double d = f16d(m->scales[r * nb + b]);
					m->ref[r * cols + b * 32 + j] = ((v & 15) - 8) * d;
					m->ref[r * cols + b * 32 + j + 16] = ((v >> 4) - 8) * d;
				}
		m->codes = c;
		break;
	}
	case T_F16: {
		uint16_t *c = malloc(rows * cols * 2);
		for (size_t i = 0; i < rows * cols; i++) {
			c[i] = rand_scale() + (uint16_t)(7 << 10); /* around 0.01 .. 4 */
			m->ref[i] = f16d(c[i]);
		}
		m->codes = c;
		break;
	}
	case T_F32: {
		float *c = malloc(rows * cols * 4);
		for (size_t i = 0; i < rows * cols; i++) {
			c[i] = (float)gauss();
			m->ref[i] = c[i];
		}
		m->codes = c;
		break;
	}
	}
	m->w.codes = m->codes;
	m->w.scales = m->scales;
}

static void unmake(struct mat *m)
{
	free(m->ref);
	free(m->mag);
	free(m->codes);
	free(m->scales);
}

static const char *tname(int t)
{
	static const char *const split[] = {"f32", "f16", "bf16", "q8", "q4"};
	return t <= T_Q4 ? split[t] : moe_block_format(t)->name;
}

/*
 * Bounds, per output:
 *  - against the float64 product with the *quantized* activations (q8/q4) or with x
 *    itself (f16/f32): only float32 accumulation error, at most
 *    2^-22 * (terms + 32) * sum|terms|, terms being blocks (q8/q4) or columns;
 *  - against the float64 product with the original x (q8/q4): add the activation
 *    rounding, sum over columns of |w| * d_x/2 (the format's stated error).
 */
static void check_one(const struct moe_kernel_impl *k, int type, size_t rows, size_t cols, size_t batch)
{
	struct mat m;
	make(&m, type, rows, cols);
	float *x = malloc(batch * cols * sizeof(float)), *y = malloc(batch * rows * sizeof(float));
	float *ys = malloc(batch * rows * sizeof(float));
	for (size_t i = 0; i < batch * cols; i++)
		x[i] = (float)(gauss() * (i % 13 == 0 ? 4 : 1));
	struct moe_qact a = {0};
	const int blocks = moe_block_format(type) != NULL, quant = type == T_Q8 || type == T_Q4 || blocks;
	if (quant) {
		moe_qact_alloc(&a, batch, cols);
		moe_qact_quantize(&a, x, batch, moe_qact_group(type, cols));
	}
	void (*qf)(const struct moe_wmat *, size_t, size_t, const struct moe_qact *, float *, size_t) =
		type == T_Q8 ? k->q8 : type == T_Q4 ? k->q4 : k->blocks;
	void (*ff)(const struct moe_wmat *, size_t, size_t, const float *, size_t, float *, size_t) =
		type == T_F16 ? k->f16 : k->f32;
	/* two row ranges: both halves must be written, nothing else */
	for (size_t i = 0; i < batch * rows; i++)
		y[i] = NAN;
	size_t mid = rows / 3;
	if (quant) {
		qf(&m.w, 0, mid, &a, y, rows);
		qf(&m.w, mid, rows, &a, y, rows);
		(type == T_Q8 ? moe_kernels_scalar.q8 : type == T_Q4 ? moe_kernels_scalar.q4 : moe_kernels_scalar.blocks)(
			&m.w, 0, rows, &a, ys, rows);
	} else {
		ff(&m.w, 0, mid, x, batch, y, rows);
		ff(&m.w, mid, rows, x, batch, y, rows);
		(type == T_F16 ? moe_kernels_scalar.f16 : moe_kernels_scalar.f32)(&m.w, 0, rows, x, batch, ys, rows);
	}
	const size_t nb = cols / 32;
	int bad = 0;
	for (size_t t = 0; t < batch && bad < 3; t++)
		for (size_t r = 0; r < rows && bad < 3; r++) {
			double exact = 0, with_q = 0, abs_q = 0, act_err = 0;
			for (size_t c = 0; c < cols; c++) {
				const double wv = m.ref[r * cols + c];
				exact += wv * x[t * cols + c];
				if (quant) {
					const double dx = a.d[t * nb + c / 32];
					const double xq = dx * a.q[t * cols + c];
					with_q += wv * xq;
					abs_q += (blocks ? m.mag[r * cols + c] : fabs(wv)) * fabs(xq);
					act_err += fabs(wv) * dx / 2;
				} else {
					abs_q += fabs(wv * x[t * cols + c]);
				}
			}
			if (!quant)
				with_q = exact;
			const double terms = blocks ? (double)cols / 8 : quant ? (double)nb : (double)cols;
			const double acc_bound = ldexp(terms + 32, -22) * abs_q + 1e-30;
			const double got = y[t * rows + r];
			int ok = fabs(got - with_q) <= acc_bound && fabs(got - exact) <= act_err * (1 + 1e-6) + acc_bound &&
				 fabs(got - ys[t * rows + r]) <= 2 * acc_bound;
			CHECK(ok, "%s %s [%zu x %zu] batch %zu: y[%zu][%zu] = %.9g, float64 %.9g (quantized x: %.9g, bound %.3g), scalar %.9g",
			      k->name, tname(type), rows, cols, batch, t, r, got, exact, with_q, acc_bound, ys[t * rows + r]);
			bad += !ok;
		}
	/* each token of a batch exactly as alone: a batch of sessions (moe-server's decode
	 * steps) gives each the bits it would get by itself */
	float *y1 = malloc(rows * sizeof(float));
	for (size_t t = 0; batch > 1 && t < batch && !bad; t++) {
		struct moe_qact a1 = {0};
		if (quant) {
			moe_qact_alloc(&a1, 1, cols);
			moe_qact_quantize(&a1, x + t * cols, 1, moe_qact_group(type, cols));
			qf(&m.w, 0, rows, &a1, y1, rows);
		} else {
			ff(&m.w, 0, rows, x + t * cols, 1, y1, rows);
		}
		moe_qact_free(&a1);
		size_t r = 0;
		while (r < rows && !memcmp(&y1[r], &y[t * rows + r], sizeof(float)))
			r++;
		CHECK(r == rows, "%s %s [%zu x %zu] batch %zu: token %zu row %zu is %.9g, alone %.9g", k->name, tname(type),
		      rows, cols, batch, t, r, y[t * rows + r], y1[r]);
		bad += r != rows;
	}
	free(y1);
	moe_qact_free(&a);
	free(x);
	free(y);
	free(ys);
	unmake(&m);
}

/* moe_matmul over 1..3 threads equals the kernel called directly; the fused expert
 * equals gate, up, silu, down done one at a time. */
static void check_drivers(const struct moe_kernel_impl *k, int type)
{
	const struct moe_block_format *f = moe_block_format(type);
	const size_t hidden = 256, ff = f && f->weights == 256 ? 512 : 96 + 32 * (type == T_F16), batch = 5;
	struct mat g, u, d;
	make(&g, type, ff, hidden);
	make(&u, type, ff, hidden);
	make(&d, type, hidden, ff);
	float *x = malloc(batch * hidden * 4), *y1 = malloc(batch * hidden * 4), *y2 = malloc(batch * hidden * 4);
	float *hg = malloc(batch * ff * 4), *hu = malloc(batch * ff * 4);
	for (size_t i = 0; i < batch * hidden; i++)
		x[i] = (float)gauss();
	struct moe_kscratch s = {0};
	for (int threads = 1; threads <= 3; threads++) {
		struct moe_pool *pool = moe_pool_create(threads);
		CHECK(pool && moe_pool_threads(pool) == threads, "pool of %d", threads);
		CHECK(moe_matmul(k, pool, &g.w, x, batch, hg, &s) == 0, "matmul");
		CHECK(moe_matmul(k, pool, &u.w, x, batch, hu, &s) == 0, "matmul");
		for (size_t i = 0; i < batch * ff; i++)
			hg[i] = hg[i] / (1.0f + expf(-hg[i])) * hu[i];
		CHECK(moe_matmul(k, pool, &d.w, hg, batch, y1, &s) == 0, "matmul");
		CHECK(moe_expert_ffn(k, pool, &g.w, &u.w, &d.w, x, batch, y2, NULL, &s) == 0, "ffn");
		double err = 0, norm = 0;
		for (size_t i = 0; i < batch * hidden; i++) {
			/* plain comparisons: aarch64 gcc 12 crashes vectorizing two fmax reductions here */
			const double e = fabs(y1[i] - y2[i]), v = fabs(y1[i]);
			if (e > err)
				err = e;
			if (v > norm)
				norm = v;
		}
		CHECK(err <= 1e-5 * norm, "%s %s: fused expert differs from the unfused path by %g (of %g), %d threads",
		      k->name, tname(type), err, norm, threads);
		/* four matrices (quarters of gate) each times its own row of x in one pass:
		 * the same bits as four separate products */
		struct moe_wmat part[4];
		const size_t pr = ff / 4;
		for (int g4 = 0; g4 < 4; g4++)
			part[g4] = moe_wmat_rows(&g.w, (size_t)g4 * pr, pr);
		CHECK(moe_matmul_each(k, pool, part, 4, x, y2, &s) == 0, "matmul_each");
		for (int g4 = 0; g4 < 4; g4++) {
			CHECK(moe_matmul(k, pool, &part[g4], x + (size_t)g4 * hidden, 1, y1, &s) == 0, "matmul");
			CHECK(memcmp(y1, y2 + (size_t)g4 * pr, pr * sizeof(float)) == 0,
			      "%s %s: matmul_each's matrix %d differs from its own matmul, %d threads", k->name, tname(type),
			      g4, threads);
		}
		/* many small calls: the pool hands out work without losing any (whatever the type) */
		for (int rep = 0; rep < (type <= T_Q4 ? 2000 : 0); rep++)
			moe_matmul(k, pool, &g.w, x, 1, hg, &s);
		moe_pool_destroy(pool);
	}
	moe_kscratch_free(&s);
	free(x), free(y1), free(y2), free(hg), free(hu);
	unmake(&g), unmake(&u), unmake(&d);
}

/* every half there is, converted as a whole array and as a short unaligned tail */
static void check_halves(const struct moe_kernel_impl *k)
{
	uint16_t *h = malloc(65536 * sizeof *h);
	float *out = malloc(65536 * sizeof *out);
	for (size_t i = 0; i < 65536; i++)
		h[i] = (uint16_t)i;
	k->halves(h, 65536, out);
	size_t bad = 0;
	for (size_t i = 0; i < 65536; i++) {
		const int top = ((h[i] >> 10) & 31) == 31; /* infinities and NaNs, which f16d leaves out */
		const double want = !top ? f16d(h[i]) : h[i] & 1023 ? NAN : h[i] >> 15 ? -INFINITY : INFINITY;
		bad += isnan(want) ? !isnan(out[i]) : (double)out[i] != want;
	}
	k->halves(h + 1001, 13, out + 1);
	for (size_t i = 0; i < 13; i++)
		bad += (double)out[1 + i] != f16d(h[1001 + i]);
	CHECK(bad == 0, "%s: %zu halves converted wrong", k->name, bad);
	free(h), free(out);
}

int main(void)
{
	static const size_t qshapes[][2] = {{1, 32}, {7, 64}, {33, 96}, {9, 224}, {3, 288}, {2, 480}, {64, 4096}, {5, 14336}};
	static const size_t fshapes[][2] = {{1, 1}, {3, 7}, {17, 33}, {9, 100}, {40, 1001}, {8, 4096}};
	static const size_t batches[] = {1, 2, 3, 4, 5, 17};
	int tested = 0;
	for (int i = 0; moe_kernel_impls[i]; i++) {
		const struct moe_kernel_impl *k = moe_kernel_impls[i];
		if (!k->available()) {
			printf("%s: not available on this CPU, not tested\n", k->name);
			continue;
		}
		tested++;
		for (size_t s = 0; s < sizeof qshapes / sizeof qshapes[0]; s++)
			for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
				check_one(k, T_Q8, qshapes[s][0], qshapes[s][1], batches[b]);
				check_one(k, T_Q4, qshapes[s][0], qshapes[s][1], batches[b]);
			}
		for (size_t s = 0; s < sizeof fshapes / sizeof fshapes[0]; s++)
			for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
				check_one(k, T_F16, fshapes[s][0], fshapes[s][1], batches[b]);
				check_one(k, T_F32, fshapes[s][0], fshapes[s][1], batches[b]);
			}
		check_one(k, T_Q4, 3, 64, 64);
		check_one(k, T_Q8, 3, 64, 64);
		/* tokens 8 to a register (avx2's q4): octets in pairs and alone, a padded last
		 * octet, a last octet's few tokens a block at a time; rows of 4 scale chunks */
		check_one(k, T_Q4, 5, 32 * 35, 11);
		check_one(k, T_Q4, 9, 32 * 7, 27);
		check_one(k, T_Q4, 2, 32 * 1029, 10);
		/* GGUF's block types: a row of one block, rows of several, one of 14336 weights */
		for (int t = MOE_TYPE_Q4_1; t < MOE_TYPE_COUNT; t++) {
			const size_t bw = moe_block_format(t)->weights;
			static const size_t bshapes[][2] = {{1, 1}, {7, 2}, {33, 3}};
			for (size_t s = 0; s < sizeof bshapes / sizeof bshapes[0]; s++)
				for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++)
					check_one(k, t, bshapes[s][0], bshapes[s][1] * bw, batches[b]);
			check_one(k, t, 3, 14336, 1);
			check_one(k, t, 3, 14336, 6);
		}
		/* Q4_K, Q5_K and Q6_K 8 tokens to a register (x86): rows of more than 8 blocks
		 * with a tail of 3, of more than one chunk of 16 blocks, octets with a padded
		 * last one, a last octet's few tokens on their own; Q5_K's per-token tail */
		check_one(k, MOE_TYPE_Q4_K, 5, 256 * 11, 22);
		check_one(k, MOE_TYPE_Q4_K, 4, 256 * 9, 13);
		check_one(k, MOE_TYPE_Q4_K, 3, 256 * 35, 16);
		check_one(k, MOE_TYPE_Q6_K, 5, 256 * 11, 22);
		check_one(k, MOE_TYPE_Q6_K, 4, 256 * 9, 13);
		check_one(k, MOE_TYPE_Q6_K, 3, 256 * 35, 16);
		check_one(k, MOE_TYPE_Q5_K, 5, 256 * 11, 22);
		check_one(k, MOE_TYPE_Q5_K, 3, 256 * 35, 16);
		check_one(k, MOE_TYPE_Q5_K, 3, 256 * 11, 3);
		/* MXFP4 eight blocks at a time (x86), then a tail of three */
		check_one(k, MOE_TYPE_MXFP4, 5, 32 * 19, 7);
		check_one(k, MOE_TYPE_MXFP4, 4, 32 * 19, 1);
		for (int t = 0; t < MOE_TYPE_COUNT; t++)
			if (t != 2)
				check_drivers(k, t);
		check_halves(k);
		printf("%s: tested\n", k->name);
	}
	CHECK(tested >= 2 || !moe_kernel_impls[1], "only %d implementations ran", tested);
	setenv("MOE_KERNEL", "scalar", 1);
	CHECK(moe_kernels_select() == &moe_kernels_scalar, "MOE_KERNEL=scalar");
	setenv("MOE_KERNEL", "vax", 1);
	CHECK(moe_kernels_select() == NULL, "MOE_KERNEL=vax must not select anything");
	unsetenv("MOE_KERNEL");
	CHECK(moe_kernels_select() != NULL, "default selection");
	printf("selected by default: %s\n", moe_kernels_select()->name);
	return check_report("test_kernels");
}
