/* dispatch.c - choosing an implementation, quantizing activations, and splitting
 * matrix work over the pool's threads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

const struct moe_kernel_impl *const moe_kernel_impls[] = {
	&moe_kernels_scalar,
#if defined(__x86_64__)
	&moe_kernels_avx2,
	&moe_kernels_avx512,
#endif
#if defined(__aarch64__)
	&moe_kernels_neon,
#endif
	NULL,
};

const struct moe_kernel_impl *moe_kernels_by_name(const char *name)
{
	for (int i = 0; moe_kernel_impls[i]; i++)
		if (strcmp(moe_kernel_impls[i]->name, name) == 0)
			return moe_kernel_impls[i]->available() ? moe_kernel_impls[i] : NULL;
	return NULL;
}

const struct moe_kernel_impl *moe_kernels_select(void)
{
	const char *force = getenv("MOE_KERNEL");
	if (force && *force)
		return moe_kernels_by_name(force);
	const struct moe_kernel_impl *best = &moe_kernels_scalar;
	for (int i = 0; moe_kernel_impls[i]; i++) /* listed from plainest to fastest */
		if (moe_kernel_impls[i]->available())
			best = moe_kernel_impls[i];
	return best;
}

float moe_kernel_f16(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
	if (exp == 0x1f)
		u = sign | 0x7f800000u | (man << 13);
	else if (exp == 0) {
		float v = (float)man * 0x1p-24f;
		return sign ? -v : v;
	} else
		u = sign | ((exp + 112) << 23) | (man << 13);
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* ---- activations ---- */

int moe_qact_alloc(struct moe_qact *a, size_t batch, size_t cols)
{
	if (a->q && a->batch >= batch && a->cols == cols) {
		a->batch = batch;
		return 0;
	}
	moe_qact_free(a);
	const size_t nb = cols / 32;
	/* 64-byte aligned rows of codes for aligned SIMD loads */
	a->q = aligned_alloc(64, (batch * cols + 63) / 64 * 64);
	a->d = malloc(batch * nb * sizeof(float) + 64);
	a->ds = malloc(batch * nb * sizeof(float) + 64);
	a->ds16 = malloc(2 * batch * nb * sizeof(float) + 64);
	a->s16 = malloc(2 * batch * nb * sizeof(int16_t) + 64);
	a->nsum8 = malloc(batch * nb * sizeof(int32_t) + 64);
	a->nsum128 = malloc(batch * nb * sizeof(int32_t) + 64);
	/* aligned_alloc wants a multiple of the alignment */
	const size_t octets = (batch + 7) / 8, x8 = (octets * nb * 8 * sizeof(float) + 63) / 64 * 64;
	a->q_x8 = aligned_alloc(64, octets * 8 * cols); /* cols: a multiple of 32 */
	a->d_x8 = aligned_alloc(64, x8);
	a->nsum8_x8 = aligned_alloc(64, x8);
	a->s16_x8 = aligned_alloc(64, x8);
	a->cols = cols;
	a->batch = batch;
	if (!a->q || !a->d || !a->ds || !a->ds16 || !a->s16 || !a->nsum8 || !a->nsum128 || !a->q_x8 || !a->d_x8 ||
	    !a->nsum8_x8 || !a->s16_x8) {
		moe_qact_free(a);
		return -1;
	}
	return 0;
}

void moe_qact_free(struct moe_qact *a)
{
	free(a->q);
	free(a->d);
	free(a->ds);
	free(a->ds16);
	free(a->s16);
	free(a->nsum8);
	free(a->nsum128);
	free(a->q_x8);
	free(a->d_x8);
	free(a->nsum8_x8);
	free(a->s16_x8);
	memset(a, 0, sizeof *a);
}

size_t moe_qact_group(int type, size_t cols)
{
	const struct moe_block_format *f = moe_block_format(type);
	return f && f->weights == 256 && cols % 256 == 0 ? 256 : 32;
}

/* q_x8, d_x8, nsum8_x8, s16_x8 from q, d, nsum8, s16 (kernels.h), 4 codes at a time */
static void interleave_octets(struct moe_qact *a)
{
	const size_t cols = a->cols, nb = cols / 32, octets = (a->batch + 7) / 8;
	for (size_t o = 0; o < octets; o++)
		for (size_t k = 0; k < 8; k++) {
			const size_t t = 8 * o + k;
			const int real = t < a->batch; /* else padding: zeros */
			for (size_t b = 0; b < nb; b++) {
				const size_t ob = o * nb + b;
				for (size_t g = 0; g < 8; g++) {
					int8_t *dst = a->q_x8 + (ob * 8 + g) * 32 + k * 4;
					if (real)
						memcpy(dst, a->q + t * cols + b * 32 + g * 4, 4);
					else
						memset(dst, 0, 4);
				}
				a->d_x8[ob * 8 + k] = real ? a->d[t * nb + b] : 0.0f;
				a->nsum8_x8[ob * 8 + k] = real ? a->nsum8[t * nb + b] : 0;
				int16_t pair[2] = {0, 0};
				if (real)
					memcpy(pair, a->s16 + 2 * (t * nb + b), sizeof pair);
				memcpy(a->s16_x8 + ob * 8 + k, pair, sizeof pair);
			}
		}
}

void moe_qact_quantize(struct moe_qact *a, const float *x, size_t batch, size_t group)
{
	const size_t cols = a->cols, nb = cols / 32, per = group / 32;
	a->batch = batch;
	a->group = group;
	for (size_t t = 0; t < batch; t++)
		for (size_t g = 0; g < cols / group; g++) {
			const float *xg = x + t * cols + g * group;
			float amax = 0;
			for (size_t j = 0; j < group; j++)
				amax = fmaxf(amax, fabsf(xg[j]));
			const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
			for (size_t b = g * per; b < (g + 1) * per; b++) {
				const float *xb = x + t * cols + b * 32;
				int8_t *q = a->q + t * cols + b * 32;
				int sum = 0, sum16 = 0;
				for (int j = 0; j < 32; j++) {
					q[j] = (int8_t)lrintf(xb[j] * id);
					sum += q[j];
					if (j == 15)
						sum16 = sum;
				}
				const size_t i = t * nb + b;
				a->d[i] = d;
				a->ds[i] = d * (float)sum;
				a->ds16[2 * i] = d * (float)sum16;
				a->ds16[2 * i + 1] = d * (float)(sum - sum16);
				a->s16[2 * i] = (int16_t)sum16;
				a->s16[2 * i + 1] = (int16_t)(sum - sum16);
				a->nsum8[i] = -8 * sum;
				a->nsum128[i] = -128 * sum;
			}
		}
	if (batch >= MOE_QACT_X8_MIN)
		interleave_octets(a);
}

void moe_kscratch_free(struct moe_kscratch *s)
{
	moe_qact_free(&s->act);
	moe_qact_free(&s->act2);
	free(s->h);
	memset(s, 0, sizeof *s);
}

/* ---- row splitting ---- */

/* Rows of thread i of n: contiguous ranges in multiples of 8 rows. */
static void rows_of(size_t rows, int i, int n, size_t *r0, size_t *r1)
{
	size_t per = (rows + (size_t)n - 1) / (size_t)n;
	per = (per + 7) / 8 * 8;
	*r0 = per * (size_t)i < rows ? per * (size_t)i : rows;
	*r1 = *r0 + per < rows ? *r0 + per : rows;
}

struct mm_job {
	const struct moe_kernel_impl *k;
	const struct moe_wmat *w;
	const struct moe_qact *a;
	const float *x;
	size_t batch;
	float *y;
};

static void run_rows(const struct mm_job *j, size_t r0, size_t r1)
{
	if (r0 >= r1)
		return;
	switch (j->w->type) {
	case MOE_TYPE_Q8: j->k->q8(j->w, r0, r1, j->a, j->y, j->w->rows); break;
	case MOE_TYPE_Q4: j->k->q4(j->w, r0, r1, j->a, j->y, j->w->rows); break;
	case MOE_TYPE_F16: j->k->f16(j->w, r0, r1, j->x, j->batch, j->y, j->w->rows); break;
	case MOE_TYPE_F32: j->k->f32(j->w, r0, r1, j->x, j->batch, j->y, j->w->rows); break;
	default: j->k->blocks(j->w, r0, r1, j->a, j->y, j->w->rows); break;
	}
}

static void mm_part(void *arg, int i, int n)
{
	const struct mm_job *j = arg;
	size_t r0, r1;
	rows_of(j->w->rows, i, n, &r0, &r1);
	run_rows(j, r0, r1);
}

/* weights multiplied with quantized activations */
static int is_quant(int type) { return moe_wmat_split(type) || moe_block_format(type); }

int moe_matmul(const struct moe_kernel_impl *k, struct moe_pool *pool, const struct moe_wmat *w, const float *x,
	       size_t batch, float *y, struct moe_kscratch *s)
{
	struct mm_job j = {k, w, NULL, x, batch, y};
	if (is_quant(w->type)) {
		if (moe_qact_alloc(&s->act, batch, w->cols))
			return -1;
		moe_qact_quantize(&s->act, x, batch, moe_qact_group(w->type, w->cols));
		j.a = &s->act;
	}
	moe_pool_run(pool, mm_part, &j);
	return 0;
}

/* tokens t0 .. t0 + bt - 1 of a quantized batch, as a batch of their own */
static struct moe_qact qact_tokens(const struct moe_qact *a, size_t t0, size_t bt)
{
	const size_t cols = a->cols, nb = cols / 32;
	return (struct moe_qact){.cols = cols, .batch = bt, .group = a->group, .q = a->q + t0 * cols,
				 .d = a->d + t0 * nb, .ds = a->ds + t0 * nb, .ds16 = a->ds16 + 2 * t0 * nb,
				 .s16 = a->s16 + 2 * t0 * nb, .nsum8 = a->nsum8 + t0 * nb,
				 .nsum128 = a->nsum128 + t0 * nb,
				 .q_x8 = a->q_x8 && t0 % 8 == 0 ? a->q_x8 + t0 * cols : NULL,
				 .d_x8 = a->d_x8 && t0 % 8 == 0 ? a->d_x8 + t0 * nb : NULL,
				 .nsum8_x8 = a->nsum8_x8 && t0 % 8 == 0 ? a->nsum8_x8 + t0 * nb : NULL,
				 .s16_x8 = a->s16_x8 && t0 % 8 == 0 ? a->s16_x8 + t0 * nb : NULL};
}

struct each_job {
	const struct moe_kernel_impl *k;
	const struct moe_wmat *w;
	size_t n;
	const struct moe_qact *a;
	const float *x;
	float *y;
};

static void each_part(void *arg, int i, int n)
{
	const struct each_job *j = arg;
	const size_t g0 = j->n * (size_t)i / (size_t)n, g1 = j->n * (size_t)(i + 1) / (size_t)n;
	for (size_t g = g0; g < g1; g++) {
		const struct moe_wmat *w = &j->w[g];
		struct moe_qact one = j->a ? qact_tokens(j->a, g, 1) : (struct moe_qact){0};
		struct mm_job row = {j->k, w, j->a ? &one : NULL, j->x + g * w->cols, 1, j->y + g * w->rows};
		run_rows(&row, 0, w->rows);
	}
}

int moe_matmul_each(const struct moe_kernel_impl *k, struct moe_pool *pool, const struct moe_wmat *w, size_t n,
		    const float *x, float *y, struct moe_kscratch *s)
{
	if (n == 0)
		return 0;
	struct each_job j = {k, w, n, NULL, x, y};
	if (is_quant(w->type)) {
		if (moe_qact_alloc(&s->act, n, w->cols))
			return -1;
		moe_qact_quantize(&s->act, x, n, moe_qact_group(w->type, w->cols));
		j.a = &s->act;
	}
	moe_pool_run(pool, each_part, &j);
	return 0;
}

/* ---- fused expert ---- */

struct ffn_job {
	const struct moe_kernel_impl *k;
	const struct moe_wmat *gate, *up;
	const struct moe_qact *a;
	const float *x;
	size_t batch;
	float *h; /* [batch][ff] */
	const struct moe_ffn_oai *oai;
};

#define FFN_TILE 16 /* gate and up rows computed together, then combined in registers/L1 */

static void ffn_part(void *arg, int i, int n)
{
	const struct ffn_job *j = arg;
	const size_t ff = j->gate->rows;
	size_t r0, r1;
	rows_of(ff, i, n, &r0, &r1);
	float g[FFN_TILE * 64], u[FFN_TILE * 64];
	for (size_t r = r0; r < r1; r += FFN_TILE) {
		const size_t e = r + FFN_TILE < r1 ? r + FFN_TILE : r1, m = e - r;
		for (size_t t0 = 0; t0 < j->batch; t0 += 64) {
			const size_t bt = j->batch - t0 < 64 ? j->batch - t0 : 64;
			/* tokens t0 .. t0 + bt - 1, quantized and as floats */
			const struct moe_qact sub = j->a ? qact_tokens(j->a, t0, bt) : (struct moe_qact){0};
			const float *xs = j->x + t0 * j->gate->cols;
			for (int which = 0; which < 2; which++) {
				/* a view of rows [r, e) so the kernel writes rows 0..m-1 of the tile */
				const struct moe_wmat v = moe_wmat_rows(which ? j->up : j->gate, r, m);
				float *out = which ? u : g;
				switch (v.type) {
				case MOE_TYPE_Q8: j->k->q8(&v, 0, m, &sub, out, m); break;
				case MOE_TYPE_Q4: j->k->q4(&v, 0, m, &sub, out, m); break;
				case MOE_TYPE_F16: j->k->f16(&v, 0, m, xs, bt, out, m); break;
				case MOE_TYPE_F32: j->k->f32(&v, 0, m, xs, bt, out, m); break;
				default: j->k->blocks(&v, 0, m, &sub, out, m); break;
				}
			}
			const struct moe_ffn_oai *o = j->oai;
			for (size_t t = 0; t < bt; t++)
				for (size_t q = 0; q < m; q++) {
					float gv = g[t * m + q], uv = u[t * m + q];
					if (!o) {
						j->h[(t0 + t) * ff + r + q] = gv / (1.0f + expf(-gv)) * uv;
						continue;
					}
					gv = fminf(gv + o->gate_bias[r + q], o->limit);
					uv = fminf(fmaxf(uv + o->up_bias[r + q], -o->limit), o->limit);
					j->h[(t0 + t) * ff + r + q] = gv / (1.0f + expf(-1.702f * gv)) * (uv + 1.0f);
				}
		}
	}
}

int moe_expert_ffn(const struct moe_kernel_impl *k, struct moe_pool *pool, const struct moe_wmat *gate,
		   const struct moe_wmat *up, const struct moe_wmat *down, const float *x, size_t batch, float *y,
		   const struct moe_ffn_oai *oai, struct moe_kscratch *s)
{
	const size_t ff = gate->rows;
	if (s->h_cap < batch * ff) {
		free(s->h);
		s->h = malloc(batch * ff * sizeof(float));
		s->h_cap = s->h ? batch * ff : 0;
		if (!s->h)
			return -1;
	}
	struct ffn_job j = {k, gate, up, NULL, x, batch, s->h, oai};
	if (is_quant(gate->type) || is_quant(up->type)) { /* GGUF files may mix types */
		if (moe_qact_alloc(&s->act, batch, gate->cols))
			return -1;
		const size_t g = moe_qact_group(gate->type, gate->cols);
		moe_qact_quantize(&s->act, x, batch, g == moe_qact_group(up->type, up->cols) ? g : 32);
		j.a = &s->act;
	}
	moe_pool_run(pool, ffn_part, &j);
	struct mm_job d = {k, down, NULL, s->h, batch, y};
	if (is_quant(down->type)) {
		if (moe_qact_alloc(&s->act2, batch, ff))
			return -1;
		moe_qact_quantize(&s->act2, s->h, batch, moe_qact_group(down->type, ff));
		d.a = &s->act2;
	}
	moe_pool_run(pool, mm_part, &d);
	for (size_t t = 0; oai && t < batch; t++)
		for (size_t c = 0; c < down->rows; c++)
			y[t * down->rows + c] += oai->down_bias[c];
	return 0;
}
