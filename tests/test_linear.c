/* test_linear PACK: a model with Gated DeltaNet layers (Qwen3-Next; tests/engine_logits.sh
 * runs it on moe-pack synth --preset qwen3-next-tiny) keeps their recurrent state for the
 * last position only, through the public API:
 *  - a session that goes on from its end gives the logits of a fresh session fed the
 *    same tokens in the same evals, bit for bit;
 *  - prompt reuse is all or nothing: moe_session_common_prefix offers the whole context
 *    when the prompt extends it, else 0; a rewind short of the end keeps nothing, and
 *    evaluating from 0 again gives the fresh session's logits (the state starts over);
 *  - a canceled eval empties the context (the state had moved on), and the session
 *    then works as a fresh one;
 *  - sessions decoding together as one batch each keep their own state: the same
 *    logits as alone, bit for bit;
 *  - the session's memory grows with the context by the attention layers' K and V only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "moe.h"

#define LEN 40

static moe_model *open_model(const char *pack, size_t ctx)
{
	moe_model_params mp;
	moe_model_params_init(&mp);
	mp.n_ctx = ctx;
	mp.n_batch = 4;
	mp.kv_type = MOE_KV_F32;
	mp.offload = 0;
	moe_model *m = NULL;
	CHECK(moe_model_open(pack, &mp, &m) == 0, "%s", moe_last_error());
	return m;
}

/* evals of ids[0..n) in pieces of 1, 3, 4, 1, 3, 4, ... tokens */
static void feed(moe_session *s, const int32_t *ids, size_t n)
{
	static const size_t piece[] = {1, 3, 4};
	for (size_t j = 0, k = 0; j < n; k++) {
		size_t len = piece[k % 3] < n - j ? piece[k % 3] : n - j;
		CHECK(moe_session_eval(s, ids + j, len, NULL) == 0, "%s", moe_last_error());
		j += len;
	}
}

static int same_logits(const moe_session *a, const moe_session *b, size_t V)
{
	const float *x = moe_session_logits(a), *y = moe_session_logits(b);
	return x && y && !memcmp(x, y, V * sizeof(float));
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fputs("usage: test_linear PACK\n", stderr);
		return 2;
	}
	moe_model *m = open_model(argv[1], 256);
	moe_model_info info;
	moe_model_get_info(m, &info);
	const size_t V = info.n_vocab;
	int32_t a[LEN + 8];
	for (size_t j = 0; j < LEN + 8; j++)
		a[j] = (int32_t)((j * 7919 + 13) % V);
	moe_session *s = NULL, *fresh = NULL;
	CHECK(moe_session_open(m, &s) == 0 && moe_session_open(m, &fresh) == 0, "%s", moe_last_error());

	/* going on from the end: the state carries across evals */
	feed(s, a, LEN);
	CHECK(moe_session_common_prefix(s, a, LEN + 8) == LEN, "the whole context not offered to a longer prompt");
	CHECK(moe_session_eval(s, a + LEN, 4, NULL) == 0 && moe_session_eval(s, a + LEN + 4, 4, NULL) == 0, "%s", moe_last_error());
	feed(fresh, a, LEN);
	CHECK(moe_session_eval(fresh, a + LEN, 4, NULL) == 0 && moe_session_eval(fresh, a + LEN + 4, 4, NULL) == 0, "%s", moe_last_error());
	CHECK(same_logits(s, fresh, V), "went on from the end: not the fresh session's logits");

	/* all or nothing: the same prompt again (its last logits would need a step back), a
	 * change inside, a rewind short of the end */
	CHECK(moe_session_common_prefix(s, a, LEN + 8) == 0, "offered a step back from the state's position");
	int32_t b[LEN + 8];
	memcpy(b, a, sizeof b);
	b[30] = (b[30] + 1) % (int32_t)V;
	CHECK(moe_session_common_prefix(s, b, LEN + 8) == 0, "offered a prefix the state has gone past");
	moe_session_rewind(s, 30);
	CHECK(moe_session_pos(s) == 0, "a rewind to 30 kept %zu", moe_session_pos(s));
	feed(s, b, LEN + 8);
	moe_session_close(fresh);
	CHECK(moe_session_open(m, &fresh) == 0, "%s", moe_last_error());
	feed(fresh, b, LEN + 8);
	CHECK(same_logits(s, fresh, V), "evaluated again from 0: not the fresh session's logits");

	/* a canceled eval: the context is emptied, then the session starts over cleanly */
	moe_session_cancel(s);
	CHECK(moe_session_eval(s, a, 4, NULL) == MOE_ECANCELED, "the eval was not canceled");
	CHECK(moe_session_pos(s) == 0, "a canceled eval left %zu tokens", moe_session_pos(s));
	feed(s, b, LEN + 8);
	CHECK(same_logits(s, fresh, V), "after a cancel: not the fresh session's logits");
	printf("linear state: carried across evals; reuse all or nothing; a cancel starts over\n");
	moe_session_close(s);
	moe_session_close(fresh);

	/* three sessions decoding in lockstep as one batch (moe-server's steps): each with
	 * its own state, the same logits as alone, bit for bit */
	enum { N = 3, STEPS = 6 };
	moe_session *alone[N] = {NULL}, *many[N] = {NULL};
	for (int i = 0; i < N; i++) {
		CHECK(moe_session_open(m, &alone[i]) == 0 && moe_session_open(m, &many[i]) == 0, "%s", moe_last_error());
		feed(alone[i], a + 5 * i, 7 + (size_t)i); /* different prompts, different lengths */
		feed(many[i], a + 5 * i, 7 + (size_t)i);
	}
	int same = 1;
	for (int t = 0; t < STEPS; t++) {
		int32_t next[N];
		for (int i = 0; i < N; i++) {
			next[i] = (int32_t)((t * 31 + i * 17 + 3) % (int)V);
			CHECK(moe_session_eval(alone[i], &next[i], 1, NULL) == 0, "%s", moe_last_error());
		}
		CHECK(moe_session_eval_batch(many, next, N) == 0, "%s", moe_last_error());
		for (int i = 0; i < N; i++)
			same &= same_logits(alone[i], many[i], V);
	}
	CHECK(same, "a batch of sessions: not each session's logits alone");
	printf("batched decode of %d sessions x %d tokens: each as alone, bit for bit\n", N, STEPS);
	for (int i = 0; i < N; i++) {
		moe_session_close(alone[i]);
		moe_session_close(many[i]);
	}

	/* memory: 16x the context grows the attention layers' K and V (one layer in four)
	 * and what is per position anyway (every head's scores of a token, the
	 * tokens; an f32 cache is read in place); the linear layers' state stays as it is */
	uint64_t kv_heads = 0, head_dim = 0, heads = 0;
	const moe_pack *pk = moe_model_pack(m);
	CHECK(!moe_pack_meta_u64(pk, "hparams.n_kv_heads", &kv_heads) && !moe_pack_meta_u64(pk, "hparams.head_dim", &head_dim) &&
	      !moe_pack_meta_u64(pk, "hparams.n_heads", &heads), "%s", moe_last_error());
	moe_model_close(m);
	m = open_model(argv[1], 4096);
	moe_model_info big;
	moe_model_get_info(m, &big);
	const uint64_t row = kv_heads * head_dim * sizeof(float), attn = info.n_layers / 4;
	const uint64_t grew = big.session_bytes - info.session_bytes, more = 4096 - 256;
	printf("session bytes at 256 and 4096 tokens: %llu, %llu\n", (unsigned long long)info.session_bytes,
	       (unsigned long long)big.session_bytes);
	CHECK(grew == more * (attn * 2 * row + heads * sizeof(float) + sizeof(int32_t)),
	      "grew by %llu: not the attention layers' K and V and the scratch alone", (unsigned long long)grew);
	moe_model_close(m);
	return check_report("test_linear");
}
