/* test_api PACK [RAM_BUDGET]: the public API of moe.h against itself, on a pack with a
 * tokenizer (tests/api.sh runs it on the demo model).
 *  - three sessions decoding greedily one at a time (moe_session_eval) and the same
 *    three in lockstep as one batch (moe_session_eval_batch) choose the same tokens,
 *    with the same logits, bit for bit (the kernels sum a token the same way in any
 *    batch: test_kernels);
 *  - rewinding to a common prefix and evaluating a new tail gives the logits of a
 *    fresh session fed the same tokens as one prompt, bit for bit (a token's
 *    attention does not depend on the steps it came in: engine.c);
 *  - errors: an id out of range, a full context, a canceled eval. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "moe.h"

#define STEPS 12
#define N 3

static float max_rel_diff(const float *a, const float *b, size_t n)
{
	float mx = 0, d = 0;
	for (size_t i = 0; i < n; i++) {
		mx = fmaxf(mx, fabsf(a[i]));
		d = fmaxf(d, fabsf(a[i] - b[i]));
	}
	return mx > 0 ? d / mx : d;
}

static int32_t argmax(const float *l, size_t n)
{
	size_t b = 0;
	for (size_t i = 1; i < n; i++)
		if (l[i] > l[b])
			b = i;
	return (int32_t)b;
}

/* the loading callback: every call recorded; stop_at > 0 stops the open there */
struct load_log {
	size_t calls;
	uint64_t first, last, total;
	int monotonic, stop_at;
};

static int on_load(uint64_t done, uint64_t total, void *user)
{
	struct load_log *g = user;
	if (g->calls == 0)
		g->first = done, g->total = total, g->monotonic = 1;
	else
		g->monotonic &= done >= g->last && total == g->total;
	g->last = done;
	return ++g->calls == (size_t)g->stop_at;
}

/* moe_model_open reports its reading of the dense weights from 0 to their size, and
 * stops when the callback says so; mlock holds them */
static void check_loading(const char *pack, uint64_t budget)
{
	moe_model_params mp;
	moe_model_params_init(&mp);
	mp.n_ctx = 64, mp.ram_budget = budget;
	struct load_log g = {0};
	mp.progress = on_load, mp.progress_user = &g;
	mp.mlock = 1;
	moe_model *m;
	CHECK(moe_model_open(pack, &mp, &m) == 0, "open with progress and mlock: %s", moe_last_error());
	moe_model_info info;
	moe_model_get_info(m, &info);
	CHECK(g.calls >= 2 && g.first == 0 && g.last == g.total && g.monotonic, "progress: %zu calls, %llu .. %llu of %llu",
	      g.calls, (unsigned long long)g.first, (unsigned long long)g.last, (unsigned long long)g.total);
	CHECK(g.total == info.dense_bytes, "progress total %llu = dense bytes %llu", (unsigned long long)g.total,
	      (unsigned long long)info.dense_bytes);
	moe_model_close(m);
	struct load_log stop = {.stop_at = 2};
	mp.progress_user = &stop, mp.mlock = 0;
	CHECK(moe_model_open(pack, &mp, &m) == MOE_ECANCELED && m == NULL && stop.calls == 2,
	      "a callback that says stop: %s", moe_last_error());
}

int main(int argc, char **argv)
{
	if (argc != 2 && argc != 3) {
		fputs("usage: test_api PACK [RAM_BUDGET]\n", stderr);
		return 2;
	}
	check_loading(argv[1], argc == 3 ? moe_parse_size(argv[2]) : 0);
	moe_model_params mp;
	moe_model_params_init(&mp);
	mp.n_ctx = 64;
	mp.n_sessions = 2 * N + 1;
	mp.ram_budget = argc == 3 ? moe_parse_size(argv[2]) : 0;
	moe_model *m;
	if (moe_model_open(argv[1], &mp, &m)) {
		fprintf(stderr, "test_api: %s\n", moe_last_error());
		return 1;
	}
	moe_model_info info;
	moe_model_get_info(m, &info);
	const size_t V = info.n_vocab;
	const moe_tokenizer *tok = moe_model_tokenizer(m);
	CHECK(tok != NULL, "%s", moe_last_error());
	static const char *prompts[N] = {"In the beginning", "And the LORD spake unto Moses, saying", "Blessed are"};
	moe_session *one[N], *many[N];
	int32_t chosen[N][STEPS];
	float *alone = malloc(N * STEPS * V * sizeof *alone);
	CHECK(alone != NULL, "%s", moe_last_error());
	for (int i = 0; i < N; i++) {
		int32_t *ids;
		size_t n;
		CHECK(moe_tokenize(tok, prompts[i], strlen(prompts[i]), 1, &ids, &n) == 0, "%s", moe_last_error());
		CHECK(moe_session_open(m, &one[i]) == 0 && moe_session_open(m, &many[i]) == 0, "%s", moe_last_error());
		CHECK(moe_session_eval(one[i], ids, n, NULL) == 0 && moe_session_eval(many[i], ids, n, NULL) == 0, "%s", moe_last_error());
		free(ids);
		for (int t = 0; t < STEPS; t++) { /* alone */
			const float *l = moe_session_logits(one[i]);
			memcpy(alone + (i * STEPS + t) * V, l, V * sizeof *l);
			chosen[i][t] = argmax(l, V);
			CHECK(moe_session_eval(one[i], &chosen[i][t], 1, NULL) == 0, "%s", moe_last_error());
		}
	}
	float worst = 0;
	int same = 1;
	for (int t = 0; t < STEPS; t++) { /* together */
		int32_t next[N];
		for (int i = 0; i < N; i++) {
			const float *l = moe_session_logits(many[i]);
			worst = fmaxf(worst, max_rel_diff(alone + (i * STEPS + t) * V, l, V));
			next[i] = argmax(l, V);
			same &= next[i] == chosen[i][t];
		}
		CHECK(moe_session_eval_batch(many, next, N) == 0, "%s", moe_last_error());
	}
	printf("batched decode of %d sessions x %d tokens: same tokens %s, logits within %.2g of the largest\n", N, STEPS,
	       same ? "yes" : "no", worst);
	CHECK(same, "%s", moe_last_error());
	CHECK(worst == 0, "batched logits differ from the sessions' alone by %.3g of the largest", worst);
	for (int i = 0; i < N; i++)
		CHECK(moe_session_pos(many[i]) == moe_session_pos(one[i]) &&
		      !memcmp(moe_session_tokens(many[i]), moe_session_tokens(one[i]),
			      moe_session_pos(one[i]) * sizeof(int32_t)), "%s", moe_last_error());

	/* prefix reuse: session 0's context with its last 5 tokens replaced */
	const size_t pos = moe_session_pos(one[0]);
	int32_t *ctx = malloc(pos * sizeof *ctx);
	float *ref = malloc(V * sizeof *ref);
	CHECK(ctx && ref, "%s", moe_last_error());
	memcpy(ctx, moe_session_tokens(one[0]), pos * sizeof *ctx);
	for (size_t j = pos - 5; j < pos; j++)
		ctx[j] = (ctx[j] + 7) % (int32_t)V;
	const size_t keep = moe_session_common_prefix(one[0], ctx, pos);
	CHECK(keep == pos - 5, "%s", moe_last_error());
	moe_session_rewind(one[0], keep);
	CHECK(moe_session_logits(one[0]) == NULL, "%s", moe_last_error());
	CHECK(moe_session_eval(one[0], ctx + keep, pos - keep, NULL) == 0, "%s", moe_last_error());
	moe_session *fresh;
	CHECK(moe_session_open(m, &fresh) == 0, "%s", moe_last_error());
	/* fed in other steps than session 0 was (the prompt, one token at a time, then the
	 * new tail): the whole context as one prompt, as moe-run gets it */
	CHECK(moe_session_eval(fresh, ctx, pos, NULL) == 0, "%s", moe_last_error());
	memcpy(ref, moe_session_logits(fresh), V * sizeof *ref);
	const float reuse = max_rel_diff(ref, moe_session_logits(one[0]), V);
	printf("reusing %zu of %zu tokens: logits within %.2g of a fresh session fed them at once\n", keep, pos, reuse);
	CHECK(reuse == 0, "%s", moe_last_error());

	/* errors leave the session as it was */
	const int32_t bad = (int32_t)V;
	CHECK(moe_session_eval(fresh, &bad, 1, NULL) == MOE_EINVAL && moe_session_pos(fresh) == pos, "%s", moe_last_error());
	CHECK(strstr(moe_last_error(), "out of range") != NULL, "%s", moe_last_error());
	int32_t *fill = calloc(mp.n_ctx, sizeof *fill);
	CHECK(fill && moe_session_eval(fresh, fill, mp.n_ctx - pos + 1, NULL) == MOE_EINVAL && moe_session_pos(fresh) == pos, "%s", moe_last_error());
	moe_session_cancel(fresh);
	CHECK(moe_session_eval(fresh, fill, 1, NULL) == MOE_ECANCELED && moe_session_pos(fresh) == pos, "%s", moe_last_error());
	CHECK(moe_session_eval(fresh, fill, 1, NULL) == 0 && moe_session_pos(fresh) == pos + 1, "%s", moe_last_error()); /* cleared */
	moe_stats st;
	moe_model_stats(m, &st);
	printf("expert cache: %llu uses, %llu misses, %llu bytes read\n", (unsigned long long)st.uses,
	       (unsigned long long)st.misses, (unsigned long long)st.bytes_read);
	CHECK(st.uses == st.hits + st.prefetch_hits + st.misses && st.uses > 0, "%s", moe_last_error());

	free(fill);
	free(ctx);
	free(ref);
	free(alone);
	moe_session_close(fresh);
	for (int i = 0; i < N; i++) {
		moe_session_close(one[i]);
		moe_session_close(many[i]);
	}
	moe_model_close(m);
	return check_report("test_api");
}
