/* test_rings PACK: a model with sliding-window layers (gpt-oss; tests/engine_logits.sh
 * runs it on moe-pack synth --preset gpt-oss-tiny, window 4) keeps those layers' KV
 * caches in rings of window + batch - 1 rows, through the public API:
 *  - 60 tokens fed one at a time wrap every ring many times; a session that rewinds
 *    to a prefix the rings still cover and evaluates a new tail gives the logits of a
 *    fresh session fed the same tokens alike, bit for bit;
 *  - a prefix the rings no longer cover is not offered (moe_session_common_prefix
 *    gives 0) and a rewind there keeps nothing; evaluating everything again then
 *    gives the fresh session's logits;
 *  - the session's memory does not grow with the context in the sliding layers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "moe.h"

#define LEN 60
#define BATCH 4 /* rings of 4 + 4 - 1 = 7 rows */

static moe_model *open_model(const char *pack, size_t ctx)
{
	moe_model_params mp;
	moe_model_params_init(&mp);
	mp.n_ctx = ctx;
	mp.n_batch = BATCH;
	mp.kv_type = MOE_KV_F32;
	mp.offload = 0;
	moe_model *m = NULL;
	CHECK(moe_model_open(pack, &mp, &m) == 0, "%s", moe_last_error());
	return m;
}

/* a fresh session fed ids[0..split) one at a time, then ids[split..n) in one eval */
static void feed(moe_session *s, const int32_t *ids, size_t split, size_t n)
{
	for (size_t j = 0; j < split; j++)
		CHECK(moe_session_eval(s, ids + j, 1, NULL) == 0, "%s", moe_last_error());
	if (n > split)
		CHECK(moe_session_eval(s, ids + split, n - split, NULL) == 0, "%s", moe_last_error());
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fputs("usage: test_rings PACK\n", stderr);
		return 2;
	}
	moe_model *m = open_model(argv[1], 256);
	moe_model_info info;
	moe_model_get_info(m, &info);
	const size_t V = info.n_vocab;
	int32_t a[LEN], b[LEN];
	for (size_t j = 0; j < LEN; j++)
		a[j] = b[j] = (int32_t)((j * 7919 + 13) % V);
	moe_session *s, *fresh;
	CHECK(moe_session_open(m, &s) == 0 && moe_session_open(m, &fresh) == 0, "%s", moe_last_error());
	feed(s, a, LEN, LEN);

	/* the last 3 tokens changed: the rings (7 rows) still hold what position 57 sees */
	for (size_t j = LEN - 3; j < LEN; j++)
		b[j] = (b[j] + 1) % (int32_t)V;
	size_t keep = moe_session_common_prefix(s, b, LEN);
	CHECK(keep == LEN - 3, "kept %zu of %d", keep, LEN);
	moe_session_rewind(s, keep);
	CHECK(moe_session_pos(s) == keep, "%s", moe_last_error());
	CHECK(moe_session_eval(s, b + keep, LEN - keep, NULL) == 0, "%s", moe_last_error());
	feed(fresh, b, keep, LEN);
	CHECK(!memcmp(moe_session_logits(s), moe_session_logits(fresh), V * sizeof(float)),
	      "rewound by 3 and fed a new tail: not the fresh session's logits");

	/* a change at position 20: its window was overwritten long ago */
	b[20] = (b[20] + 1) % (int32_t)V;
	keep = moe_session_common_prefix(s, b, LEN);
	CHECK(keep == 0, "offered %zu tokens the rings no longer hold", keep);
	moe_session_rewind(s, 20);
	CHECK(moe_session_pos(s) == 0, "a rewind to 20 kept %zu", moe_session_pos(s));
	CHECK(moe_session_eval(s, b, LEN, NULL) == 0, "%s", moe_last_error());
	moe_session_close(fresh);
	CHECK(moe_session_open(m, &fresh) == 0, "%s", moe_last_error());
	feed(fresh, b, 0, LEN);
	CHECK(!memcmp(moe_session_logits(s), moe_session_logits(fresh), V * sizeof(float)),
	      "evaluated again from 0: not the fresh session's logits");
	printf("rings: a rewind by 3 reused, by 40 refused; logits as a fresh session's\n");
	moe_session_close(s);
	moe_session_close(fresh);

	/* memory: 16x the context grows only the full-attention layers' caches (and what
	 * is per position anyway: a head's scores, a batch's K and V as f32, the tokens) */
	moe_model_close(m);
	m = open_model(argv[1], 256);
	moe_model_info small, big;
	moe_model_get_info(m, &small);
	uint64_t kv_heads = 0, head_dim = 0, heads = 0;
	const moe_pack *pk = moe_model_pack(m);
	CHECK(!moe_pack_meta_u64(pk, "hparams.n_kv_heads", &kv_heads) && !moe_pack_meta_u64(pk, "hparams.head_dim", &head_dim) &&
	      !moe_pack_meta_u64(pk, "hparams.n_heads", &heads), "%s", moe_last_error());
	moe_model_close(m);
	m = open_model(argv[1], 4096);
	moe_model_get_info(m, &big);
	const uint64_t row = kv_heads * head_dim * sizeof(float), full = small.n_layers / 2; /* the odd layers */
	const uint64_t grew = big.session_bytes - small.session_bytes, more = 4096 - 256;
	printf("session bytes at 256 and 4096 tokens: %llu, %llu\n", (unsigned long long)small.session_bytes,
	       (unsigned long long)big.session_bytes);
	CHECK(grew == more * (full * 2 * row + 2 * row + heads * sizeof(float) + sizeof(int32_t)),
	      "grew by %llu: not the full layers' K and V and the scratch alone", (unsigned long long)grew);
	moe_model_close(m);
	return check_report("test_rings");
}
