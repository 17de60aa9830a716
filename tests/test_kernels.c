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

enum { T_F32 = 0, T_F16 = 1, T_Q8 = 3, T_Q4 = 4 };

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

struct mat {
	struct moe_wmat w;
	double *ref; /* dequantized, [rows][cols] */
	void *codes;
	uint16_t *scales;
};

static void make(struct mat *m, int type, size_t rows, size_t cols)
{
	memset(m, 0, sizeof *m);
	m->w = (struct moe_wmat){type, rows, cols, NULL, NULL};
	m->ref = malloc(rows * cols * sizeof(double));
	const size_t nb = cols / 32;
	switch (type) {
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
	free(m->codes);
	free(m->scales);
}

static const char *tname(int t) { return t == T_Q8 ? "q8" : t == T_Q4 ? "q4" : t == T_F16 ? "f16" : "f32"; }

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
	const int quant = type == T_Q8 || type == T_Q4;
	if (quant) {
		moe_qact_alloc(&a, batch, cols);
		moe_qact_quantize(&a, x, batch);
	}
	void (*qf)(const struct moe_wmat *, size_t, size_t, const struct moe_qact *, float *, size_t) =
		type == T_Q8 ? k->q8 : k->q4;
	void (*ff)(const struct moe_wmat *, size_t, size_t, const float *, size_t, float *, size_t) =
		type == T_F16 ? k->f16 : k->f32;
	/* two row ranges: both halves must be written, nothing else */
	for (size_t i = 0; i < batch * rows; i++)
		y[i] = NAN;
	size_t mid = rows / 3;
	if (quant) {
		qf(&m.w, 0, mid, &a, y, rows);
		qf(&m.w, mid, rows, &a, y, rows);
		(type == T_Q8 ? moe_kernels_scalar.q8 : moe_kernels_scalar.q4)(&m.w, 0, rows, &a, ys, rows);
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
					abs_q += fabs(wv * xq);
					act_err += fabs(wv) * dx / 2;
				} else {
					abs_q += fabs(wv * x[t * cols + c]);
				}
			}
			if (!quant)
				with_q = exact;
			const double terms = quant ? (double)nb : (double)cols;
			const double acc_bound = ldexp(terms + 32, -22) * abs_q + 1e-30;
			const double got = y[t * rows + r];
			int ok = fabs(got - with_q) <= acc_bound && fabs(got - exact) <= act_err * (1 + 1e-6) + acc_bound &&
				 fabs(got - ys[t * rows + r]) <= 2 * acc_bound;
			CHECK(ok, "%s %s [%zu x %zu] batch %zu: y[%zu][%zu] = %.9g, float64 %.9g (quantized x: %.9g, bound %.3g), scalar %.9g",
			      k->name, tname(type), rows, cols, batch, t, r, got, exact, with_q, acc_bound, ys[t * rows + r]);
			bad += !ok;
		}
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
	const size_t hidden = 256, ff = 96 + 32 * (type == T_F16), batch = 5;
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
		CHECK(moe_expert_ffn(k, pool, &g.w, &u.w, &d.w, x, batch, y2, &s) == 0, "ffn");
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
		/* many small calls: the pool hands out work without losing any */
		for (int rep = 0; rep < 2000; rep++)
			moe_matmul(k, pool, &g.w, x, 1, hg, &s);
		moe_pool_destroy(pool);
	}
	moe_kscratch_free(&s);
	free(x), free(y1), free(y2), free(hg), free(hu);
	unmake(&g), unmake(&u), unmake(&d);
}

int main(void)
{
	static const size_t qshapes[][2] = {{1, 32}, {7, 64}, {33, 96}, {9, 224}, {64, 4096}, {5, 14336}};
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
		for (int t = 0; t < 5; t++)
			if (t != 2)
				check_drivers(k, t);
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
