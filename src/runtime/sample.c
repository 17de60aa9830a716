/* sample.c - choosing the next token (moe_sampler) and holding back text that
 * may be the start of a stop string (moe_stopper), as moe.h describes them. */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "moe.h"

struct cand {
	int32_t id;
	double p;
};

struct moe_sampler {
	moe_sampler_params p;
	uint64_t rng;      /* splitmix64 state */
	float *logits;     /* a copy, penalized */
	struct cand *cand;
	unsigned char *seen;
	size_t cap;        /* entries of the three above */
};

void moe_sampler_params_init(moe_sampler_params *p)
{
	*p = (moe_sampler_params){.temperature = 0, .top_k = 40, .top_p = 1, .min_p = 0, .repeat_penalty = 1, .seed = 1};
}

int moe_sampler_new(const moe_sampler_params *p, moe_sampler **out)
{
	*out = NULL;
	if (!(p->temperature >= 0) || !(p->top_p > 0 && p->top_p <= 1) || !(p->min_p >= 0 && p->min_p <= 1) ||
	    !(p->repeat_penalty > 0))
		return moe_fail(MOE_EINVAL, "sampling: temperature >= 0, top_p in (0, 1], min_p in [0, 1], "
				"repeat_penalty > 0");
	moe_sampler *sp = calloc(1, sizeof *sp);
	if (!sp)
		return moe_fail(MOE_ENOMEM, "out of memory");
	sp->p = *p;
	sp->rng = p->seed;
	*out = sp;
	return 0;
}

void moe_sampler_free(moe_sampler *sp)
{
	if (!sp)
		return;
	free(sp->logits);
	free(sp->cand);
	free(sp->seen);
	free(sp);
}

static double uniform(moe_sampler *sp)
{
	uint64_t z = (sp->rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return (double)((z ^ (z >> 31)) >> 11) * 0x1p-53;
}

static int cmp_cand(const void *a, const void *b)
{
	double x = ((const struct cand *)a)->p, y = ((const struct cand *)b)->p;
	return x < y ? 1 : x > y ? -1 : ((const struct cand *)a)->id - ((const struct cand *)b)->id;
}

int32_t moe_sampler_sample(moe_sampler *sp, const float *logits, size_t vocab, const int32_t *history,
			   size_t n_history)
{
	const moe_sampler_params *p = &sp->p;
	if (vocab > sp->cap) {
		free(sp->logits);
		free(sp->cand);
		free(sp->seen);
		sp->logits = malloc(vocab * sizeof *sp->logits);
		sp->cand = malloc(vocab * sizeof *sp->cand);
		sp->seen = malloc(vocab);
		sp->cap = sp->logits && sp->cand && sp->seen ? vocab : 0;
		if (!sp->cap) {
			moe_fail(MOE_ENOMEM, "out of memory");
			return -1;
		}
	}
	float *l = sp->logits;
	memcpy(l, logits, vocab * sizeof *l);
	if (p->repeat_penalty != 1.0) {
		/* once per distinct token, however often it occurred (as llama.cpp does) */
		memset(sp->seen, 0, vocab);
		for (size_t i = 0; i < n_history; i++) {
			const int32_t t = history[i];
			if (t < 0 || (size_t)t >= vocab || sp->seen[t])
				continue;
			sp->seen[t] = 1;
			l[t] = l[t] > 0 ? l[t] / (float)p->repeat_penalty : l[t] * (float)p->repeat_penalty;
		}
	}
	size_t best = 0;
	for (size_t i = 1; i < vocab; i++)
		if (l[i] > l[best])
			best = i;
	if (p->temperature <= 0)
		return (int32_t)best;
	struct cand *c = sp->cand;
	double sum = 0;
	for (size_t i = 0; i < vocab; i++) {
		c[i] = (struct cand){(int32_t)i, exp(((double)l[i] - l[best]) / p->temperature)};
		sum += c[i].p;
	}
	qsort(c, vocab, sizeof *c, cmp_cand);
	size_t keep = p->top_k && p->top_k < vocab ? p->top_k : vocab;
	double acc = 0;
	for (size_t i = 0; i < keep; i++) {
		acc += c[i].p / sum;
		if (c[i].p < p->min_p * c[0].p || (i > 0 && acc - c[i].p / sum >= p->top_p)) {
			keep = i;
			break;
		}
	}
	if (keep == 0)
		keep = 1;
	double tot = 0;
	for (size_t i = 0; i < keep; i++)
		tot += c[i].p;
	double r = uniform(sp) * tot;
	for (size_t i = 0; i < keep; i++) {
		r -= c[i].p;
		if (r <= 0)
			return c[i].id;
	}
	return c[keep - 1].id;
}

/* ---- stop strings ---- */

struct moe_stopper {
	char *buf;              /* all text so far */
	size_t n, cap, shown;   /* bytes, capacity, bytes handed out */
	char **stops;
	size_t n_stops, longest;
};

int moe_stopper_new(const char *const *stops, size_t n, moe_stopper **out)
{
	moe_stopper *st = calloc(1, sizeof *st);
	if (!st || !(st->stops = calloc(n ? n : 1, sizeof *st->stops))) {
		free(st);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < n; i++) {
		if (!*stops[i] || !(st->stops[i] = strdup(stops[i]))) {
			st->n_stops = i;
			moe_stopper_free(st);
			return *stops[i] ? moe_fail(MOE_ENOMEM, "out of memory") : moe_fail(MOE_EINVAL, "an empty stop string");
		}
		if (strlen(stops[i]) > st->longest)
			st->longest = strlen(stops[i]);
	}
	st->n_stops = n;
	*out = st;
	return 0;
}

void moe_stopper_free(moe_stopper *st)
{
	if (!st)
		return;
	for (size_t i = 0; i < st->n_stops; i++)
		free(st->stops[i]);
	free(st->stops);
	free(st->buf);
	free(st);
}

int moe_stopper_push(moe_stopper *st, const char *text, size_t len, int final, const char **out, size_t *out_len)
{
	if (st->n + len + 1 > st->cap) {
		size_t cap = st->cap ? st->cap : 256;
		while (cap < st->n + len + 1)
			cap *= 2;
		char *nb = realloc(st->buf, cap);
		if (!nb)
			return moe_fail(MOE_ENOMEM, "out of memory");
		st->buf = nb, st->cap = cap;
	}
	memcpy(st->buf + st->n, text, len);
	st->n += len;
	st->buf[st->n] = '\0';
	/* a stop string can only end in text not yet shown */
	size_t stop_at = st->n + 1;
	for (size_t i = 0; i < st->n_stops; i++) {
		const char *hit = memmem(st->buf + st->shown, st->n - st->shown, st->stops[i], strlen(st->stops[i]));
		if (hit && (size_t)(hit - st->buf) < stop_at)
			stop_at = (size_t)(hit - st->buf);
	}
	size_t upto = st->n;
	if (stop_at <= st->n)
		upto = stop_at;
	else if (!final && st->longest) /* what could still begin a stop string waits */
		upto = st->n - (st->n - st->shown < st->longest - 1 ? st->n - st->shown : st->longest - 1);
	while (upto > st->shown && upto < st->n && ((unsigned char)st->buf[upto] & 0xC0) == 0x80)
		upto--; /* whole characters only */
	*out = st->buf + st->shown;
	*out_len = upto - st->shown;
	st->shown = upto;
	return stop_at <= st->n;
}
