/* runtime.c - the public inference API of moe.h: a model opened with its RAM
 * budget split between dense weights, sessions and the expert cache; sessions
 * that remember their tokens; text in and out. Built on the engine (engine.h),
 * the expert cache (cache.h) and the tokenizer and templates (src/text). */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cache/cache.h"
#include "cache/sim.h"
#include "common/error.h"
#include "engine/engine.h"
#include "text/template.h"
#include "text/tokenizer.h"

void moe_model_params_init(moe_model_params *p)
{
	*p = (moe_model_params){.n_ctx = 4096, .n_batch = 32, .n_sessions = 1, .kv_type = MOE_KV_F16, .offload = 1,
				.cache_policy = MOE_POLICY_LRU, .prefetch_depth = 1, .io_depth = 8, .verify = 1,
				.expert_timeout = 30};
}

/* MemAvailable from /proc/meminfo, in bytes (0 if unknown) */
static uint64_t mem_available(void)
{
	FILE *fp = fopen("/proc/meminfo", "r");
	char line[256];
	unsigned long long kb = 0;
	while (fp && fgets(line, sizeof line, fp))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	if (fp)
		fclose(fp);
	return kb * 1024;
}

static int check_params(const moe_model_params *p)
{
	if (p->threads < 0 || p->threads > 256)
		return moe_fail(MOE_EINVAL, "threads %d: 1..256 (0: every CPU)", p->threads);
	if (p->n_ctx < 1 || p->n_batch < 1 || p->n_batch > MOE_MAX_BATCH || p->n_sessions < 1 || p->n_sessions > 1024)
		return moe_fail(MOE_EINVAL, "context %zu, batch %zu, sessions %u: need context >= 1, batch 1..%d, "
				"sessions 1..1024", p->n_ctx, p->n_batch, p->n_sessions, MOE_MAX_BATCH);
	if (p->kv_type != MOE_KV_F16 && p->kv_type != MOE_KV_F32)
		return moe_fail(MOE_EINVAL, "KV type %d: f16 or f32", p->kv_type);
	if (p->cache_policy < MOE_POLICY_LRU || p->cache_policy > MOE_POLICY_NEXT || p->prefetch_depth > 8 ||
	    p->io_depth < 1 || p->io_depth > 256)
		return moe_fail(MOE_EINVAL, "cache policy lru, lfu or next, prefetch depth 0..8, I/O depth 1..256");
	if (!(p->expert_timeout > 0 && p->expert_timeout <= 86400))
		return moe_fail(MOE_EINVAL, "expert timeout %g s: more than 0 and at most 86400", p->expert_timeout);
	return 0;
}

/* The pack's chat template, else its family's built-in one (Mixtral's files have none). */
static int pack_template(const moe_pack *pack, char **out)
{
	const void *p;
	uint64_t n;
	const char *family = NULL;
	*out = NULL;
	if (moe_pack_meta_bytes(pack, "tokenizer.chat_template", &p, &n) == 0)
		return (*out = strndup(p, n)) ? 0 : moe_fail(MOE_ENOMEM, "out of memory");
	if (moe_pack_meta_bytes(pack, "general.architecture", &p, &n) == 0 && n == 7 && !memcmp(p, "mixtral", 7))
		family = moe_chat_template_builtin("mistral-v1");
	return !family || (*out = strdup(family)) ? 0 : moe_fail(MOE_ENOMEM, "out of memory");
}

int moe_pack_tokenizer(const moe_pack *pack, moe_tokenizer **out, char **chat_template)
{
	*out = NULL;
	if (chat_template)
		*chat_template = NULL;
	int rc = moe_tokenizer_from_pack(pack, moe_pack_path(pack), out);
	if (!rc && chat_template && (rc = pack_template(pack, chat_template))) {
		moe_tokenizer_free(*out);
		*out = NULL;
	}
	return rc;
}

/*
 * Fault ranges of the pack's mapping in now, in large sequential reads, instead of
 * page by page in the first prompt (a 3 GB model in the page cache is 800,000 minor
 * faults; from disk, as many small reads). llama.cpp maps with MAP_POPULATE for the
 * same reason. Kernels before 5.14 lack MADV_POPULATE_READ: read-ahead is asked for.
 * 64 MiB at a time, so that the progress callback can show a full-size model's
 * gigabytes arriving (and stop the open), with read-ahead asked for the next 64 MiB
 * while each is faulted in: populating alone read the 0.9 GB of a Mixtral-8x7B's
 * dense weights from a cold cache at 0.49 GB/s, with the read-ahead at 4.7-5.4.
 */
#define LOAD_STEP (64ull << 20)

struct loader {
	const moe_model_params *p;
	uint64_t done, total;
	int populate; /* MADV_POPULATE_READ works here */
};

static int load_progress(struct loader *ld)
{
	/* page rounding may count a little past the total */
	if (ld->p->progress && ld->p->progress(ld->done < ld->total ? ld->done : ld->total, ld->total, ld->p->progress_user))
		return moe_fail(MOE_ECANCELED, "loading canceled");
	return 0;
}

/* the page-aligned range holding [data, data + len) */
static void page_range(const void *data, uint64_t len, uintptr_t *start, uint64_t *span)
{
	const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
	*start = (uintptr_t)data & ~(page - 1);
	*span = len + ((uintptr_t)data - *start);
}

static int prefault(struct loader *ld, const void *data, uint64_t len)
{
	uintptr_t start;
	uint64_t span;
	page_range(data, len, &start, &span);
	for (uint64_t off = 0; off < span; off += LOAD_STEP) {
		const uint64_t n = span - off < LOAD_STEP ? span - off : LOAD_STEP;
		if (off + n < span) /* the next step's reads start while this one is faulted in */
			madvise((void *)(start + off + n), span - off - n < LOAD_STEP ? span - off - n : LOAD_STEP,
				MADV_WILLNEED);
#ifdef MADV_POPULATE_READ
		if (ld->populate && madvise((void *)(start + off), n, MADV_POPULATE_READ) != 0)
			ld->populate = 0;
#endif
		if (!ld->populate)
			madvise((void *)(start + off), n, MADV_WILLNEED);
		ld->done += n;
		int rc = load_progress(ld);
		if (rc)
			return rc;
	}
	return 0;
}

/* The dense weights are used on every token: all of them, at open; locked in RAM
 * with mlock. */
static int prefault_dense(struct loader *ld, const moe_pack *pack)
{
	moe_tensor t;
	int rc = 0;
	for (size_t i = 0; !rc && moe_pack_tensor_at(pack, i, &t) == 0; i++)
		rc = prefault(ld, t.data, t.size);
	for (size_t i = 0; !rc && ld->p->mlock && moe_pack_tensor_at(pack, i, &t) == 0; i++) {
		uintptr_t start;
		uint64_t span;
		page_range(t.data, t.size, &start, &span);
		if (mlock((const void *)start, span) != 0)
			rc = moe_fail(MOE_ENOMEM, "--mlock: %s: %s (dense weights %.1f MB; raise RLIMIT_MEMLOCK)", t.name,
				      strerror(errno), ld->total / 1e6);
	}
	return rc;
}

/* The expert cache gets what the budget leaves: dense weights and n_sessions
 * sessions first, never more than every expert. */
static int start_experts(struct moe_model *m)
{
	const moe_model_params *p = &m->params;
	const moe_pack *pack = m->pack;
	const uint64_t sessions = m->session_bytes * p->n_sessions;
	const uint64_t limit = p->ram_budget ? p->ram_budget : mem_available() / 10 * 9;
	const char *what = p->ram_budget ? "--ram-budget" : "available memory";
	struct loader ld = {p, 0, m->dense_bytes, 1};
	int rc;
	if (!p->offload) {
		if (p->pin_file)
			return moe_fail(MOE_EINVAL, "a pin list needs the expert cache (not --no-offload)");
		if (p->ram_budget && m->dense_bytes + sessions > p->ram_budget)
			return moe_fail(MOE_EINVAL, "--ram-budget %.1f MB is less than the dense weights (%.1f MB) and KV "
					"cache and scratch (%.1f MB)", p->ram_budget / 1048576.0, m->dense_bytes / 1048576.0,
					sessions / 1048576.0);
		/* the whole file when it fits, as llama.cpp's mapping does; else let faults pick */
		const uint64_t size = moe_pack_file_size(pack);
		moe_tensor t;
		if (size + sessions <= limit && !p->mlock && moe_pack_tensor_at(pack, 0, &t) == 0) {
			ld.total = size;
			if (!(rc = load_progress(&ld)))
				rc = prefault(&ld, (const uint8_t *)t.data - t.offset, size); /* the mapping's start */
		} else if (!(rc = load_progress(&ld))) {
			rc = prefault_dense(&ld, pack);
		}
		return rc;
	}
	if ((rc = load_progress(&ld)) || (rc = prefault_dense(&ld, pack)))
		return rc;
	const uint64_t least = m->dense_bytes + sessions + moe_cache_min_bytes(pack);
	if (limit < least)
		return moe_fail(MOE_EINVAL, "%s %.1f MB is below the minimum %.1f MB: dense weights %.1f MB + KV cache "
				"and scratch %.1f MB + two experts %.1f MB", what, limit / 1048576.0, least / 1048576.0,
				m->dense_bytes / 1048576.0, sessions / 1048576.0, moe_cache_min_bytes(pack) / 1048576.0);
	const uint64_t all = moe_pack_expert_count(pack) * moe_cache_slot_bytes(pack) + moe_cache_staging_bytes(pack, 0);
	struct moe_cache_options co = {.bytes = limit - m->dense_bytes - sessions, .io_depth = p->io_depth,
				       .policy = p->cache_policy, .verify = p->verify, .mlock = p->mlock,
				       .stall_seconds = p->expert_timeout};
	if (co.bytes > all)
		co.bytes = all;
	uint32_t *pins = NULL;
	if (p->pin_file && (rc = moe_pin_load(p->pin_file, (uint32_t)m->hp.n_layers, (uint32_t)m->hp.n_experts, &pins,
					     &co.n_pin)))
		return rc;
	co.pin = pins;
	struct moe_experts *cache;
	rc = moe_experts_cache(pack, &co, &cache);
	free(pins);
	if (rc)
		return rc;
	moe_model_use_experts(m, cache);
	m->cache_bytes = co.bytes;
	return 0;
}

int moe_model_open(const char *path, const moe_model_params *params, moe_model **out)
{
	*out = NULL;
	moe_model_params p;
	if (params)
		p = *params;
	else
		moe_model_params_init(&p);
	int rc = check_params(&p);
	if (rc)
		return rc;
	if (!p.threads)
		p.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
	moe_pack *pack;
	if ((rc = moe_pack_open(path, &pack)))
		return rc;
	struct moe_model *m;
	if ((rc = moe_model_load(pack, p.threads, &m))) {
		moe_pack_close(pack);
		return rc;
	}
	m->own_pack = pack;
	if (p.experts_per_token) { /* before any session: their routing buffers are sized by it */
		if (p.experts_per_token > m->hp.n_experts_used) {
			rc = moe_fail(MOE_EINVAL, "experts per token %u: the model routes each token to %llu; 1..%llu",
				      p.experts_per_token, (unsigned long long)m->hp.n_experts_used,
				      (unsigned long long)m->hp.n_experts_used);
			goto fail;
		}
		m->hp.n_experts_used = p.experts_per_token;
	}
	if (m->hp.max_pos && p.n_ctx > m->hp.max_pos)
		p.n_ctx = m->hp.max_pos;
	m->params = p;
	const void *meta;
	uint64_t len;
	if (moe_pack_meta_bytes(pack, "tokenizer.bin", &meta, &len) == 0 &&
	    (rc = moe_pack_tokenizer(pack, &m->tok, &m->chat_template)))
		goto fail;
	if (!m->tok && (rc = pack_template(pack, &m->chat_template)))
		goto fail;
	m->dense_bytes = moe_model_dense_bytes(m);
	struct moe_session *probe; /* its size: the KV cache and scratch are allocated, not touched */
	if ((rc = moe_session_create(m, p.n_ctx, p.n_batch, p.kv_type, &probe)))
		goto fail;
	m->session_bytes = moe_session_bytes(probe) + p.n_ctx * sizeof(int32_t) + m->hp.vocab * sizeof(float);
	moe_session_free(probe);
	if ((rc = start_experts(m)))
		goto fail;
	*out = m;
	return 0;
fail:
	moe_model_close(m);
	return rc;
}

void moe_model_close(moe_model *m)
{
	if (!m)
		return;
	moe_pack *pack = m->own_pack;
	moe_tokenizer_free(m->tok);
	free(m->chat_template);
	moe_model_free(m);
	if (pack)
		moe_pack_close(pack);
}

void moe_model_get_info(const moe_model *m, moe_model_info *out)
{
	const struct moe_hparams *hp = &m->hp;
	*out = (moe_model_info){.arch = moe_arch_name(hp->arch), .n_layers = hp->n_layers, .n_experts = hp->n_experts,
				.n_experts_used = hp->n_experts_used, .n_vocab = hp->vocab, .n_ctx_train = hp->max_pos,
				.n_ctx = m->params.n_ctx, .n_batch = m->params.n_batch, .threads = m->params.threads,
				.kernels = m->kernels->name, .dense_bytes = m->dense_bytes,
				.session_bytes = m->session_bytes, .expert_cache_bytes = m->cache_bytes};
}

const moe_pack *moe_model_pack(const moe_model *m) { return m->pack; }
const moe_tokenizer *moe_model_tokenizer(const moe_model *m) { return m->tok; }
const char *moe_model_chat_template(const moe_model *m) { return m->chat_template; }

void moe_model_stats(const moe_model *m, moe_stats *out)
{
	struct moe_expert_stats x;
	m->experts->stats(m->experts, &x);
	*out = (moe_stats){.uses = x.hits + x.prefetch_hits + x.misses, .hits = x.hits, .prefetch_hits = x.prefetch_hits,
			   .misses = x.misses, .prefetch_issued = x.prefetch_issued, .bytes_read = x.bytes_read,
			   .rereads = x.rereads, .read_seconds = x.io_seconds, .wait_seconds = x.wait_seconds,
			   .slots = x.slots, .slots_used = x.slots_used, .io = x.io_mode,
			   .policy = moe_cache_policy_name(m->params.cache_policy),
			   .prefetch_unused_bytes = x.prefetch_unused_bytes,
			   .prefetch_evicted_bytes = x.prefetch_evicted_bytes, .slots_pinned = x.slots_pinned};
}

/* ---- sessions ---- */

int moe_session_open(moe_model *m, moe_session **out)
{
	const moe_model_params *p = &m->params;
	int rc = moe_session_create(m, p->n_ctx, p->n_batch, p->kv_type, out);
	if (rc)
		return rc;
	struct moe_session *s = *out;
	s->prefetch_depth = p->prefetch_depth;
	s->tokens = malloc(p->n_ctx * sizeof *s->tokens);
	s->logits = malloc(m->hp.vocab * sizeof *s->logits);
	if (!s->tokens || !s->logits) {
		moe_session_close(s);
		*out = NULL;
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	return 0;
}

void moe_session_close(moe_session *s)
{
	if (!s)
		return;
	free(s->tokens);
	free(s->logits);
	moe_session_free(s);
}

static int check_tokens(const moe_session *s, const int32_t *tokens, size_t n)
{
	const uint64_t vocab = s->m->hp.vocab;
	for (size_t i = 0; i < n; i++)
		if (tokens[i] < 0 || (uint64_t)tokens[i] >= vocab)
			return moe_fail(MOE_EINVAL, "token id %d out of range (vocabulary %llu)", tokens[i],
					(unsigned long long)vocab);
	return 0;
}

int moe_session_eval(moe_session *s, const int32_t *tokens, size_t n, float *all_logits)
{
	const size_t vocab = s->m->hp.vocab;
	int rc = check_tokens(s, tokens, n);
	if (rc)
		goto out;
	if (n == 0 || s->n_past + n > s->ctx) {
		rc = moe_fail(MOE_EINVAL, "%zu tokens after %zu: the context holds %zu", n, s->n_past, s->ctx);
		goto out;
	}
	s->has_logits = 0;
	for (size_t i = 0; i < n && !rc; i += s->max_batch) {
		const size_t k = n - i < s->max_batch ? n - i : s->max_batch, at = s->n_past;
		rc = moe_forward(s, tokens + i, k, all_logits ? all_logits + i * vocab : NULL,
				 all_logits ? NULL : s->logits);
		if (!rc)
			memcpy(s->tokens + at, tokens + i, k * sizeof *tokens);
	}
	if (!rc) {
		if (all_logits)
			memcpy(s->logits, all_logits + (n - 1) * vocab, vocab * sizeof *s->logits);
		s->has_logits = 1;
	}
out:
	s->cancel = 0;
	return rc;
}

int moe_session_eval_batch(moe_session *const *sessions, const int32_t *tokens, size_t n)
{
	if (n == 0)
		return moe_fail(MOE_EINVAL, "an empty batch");
	struct moe_session *lead = sessions[0];
	const size_t vocab = lead->m->hp.vocab;
	float *logits = malloc(n * vocab * sizeof *logits);
	if (!logits)
		return moe_fail(MOE_ENOMEM, "out of memory");
	int rc = 0;
	for (size_t t = 0; t < n && !rc; t++)
		rc = check_tokens(sessions[t], tokens + t, 1);
	if (!rc)
		rc = moe_forward_rows(lead, sessions, tokens, n, logits);
	for (size_t t = 0; t < n && !rc; t++) {
		struct moe_session *s = sessions[t];
		s->tokens[s->n_past - 1] = tokens[t];
		memcpy(s->logits, logits + t * vocab, vocab * sizeof *logits);
		s->has_logits = 1;
	}
	free(logits);
	return rc;
}

const float *moe_session_logits(const moe_session *s) { return s->has_logits ? s->logits : NULL; }
size_t moe_session_pos(const moe_session *s) { return s->n_past; }
size_t moe_session_ctx(const moe_session *s) { return s->ctx; }
const int32_t *moe_session_tokens(const moe_session *s) { return s->tokens; }

size_t moe_session_common_prefix(const moe_session *s, const int32_t *tokens, size_t n)
{
	size_t i = 0;
	while (i < n && i < s->n_past && s->tokens[i] == tokens[i])
		i++;
	if (i == s->n_past && i < n)
		return i; /* the context goes on from its end */
	/* with a position to spare: callers go back one more to have the last token's logits
	 * (a linear-attention state is at the end only: nothing to go back to) */
	return i > 0 && !s->lin_layers && moe_session_can_rewind(s, i - 1) ? i : 0;
}

void moe_session_rewind(moe_session *s, size_t pos)
{
	if (pos < s->n_past) { /* later positions are overwritten as the context grows again */
		s->n_past = moe_session_can_rewind(s, pos) ? pos : 0;
		s->has_logits = 0;
	}
}

void moe_session_cancel(moe_session *s) { s->cancel = 1; }
void moe_session_trace(moe_session *s, FILE *fp) { s->trace = fp; }

int moe_session_routes_from(moe_session *s, const char *path)
{
	moe_replay_free(s->replay);
	s->replay = NULL;
	s->replay_pos = 0;
	if (!path)
		return 0;
	const size_t K = s->m->hp.n_experts_used;
	if (!s->replay_ids && (!(s->replay_ids = malloc(K * sizeof *s->replay_ids)) ||
			       !(s->replay_sc = malloc(K * sizeof *s->replay_sc))))
		return moe_fail(MOE_ENOMEM, "out of memory");
	return moe_replay_open(path, &s->replay);
}

/* ---- text ---- */

int moe_tokenizer_open(const char *path, moe_tokenizer **out, char **chat_template)
{
	char *json = NULL, *config = NULL;
	size_t len, config_len;
	*out = NULL;
	if (chat_template)
		*chat_template = NULL;
	int rc = moe_tokenizer_read_files(path, &json, &len, &config, &config_len);
	if (!rc)
		rc = moe_tokenizer_from_json(json, len, config, config_len, path, out);
	if (!rc && config && chat_template)
		rc = moe_chat_template_from_config(config, config_len, "tokenizer_config.json", chat_template);
	if (rc) {
		moe_tokenizer_free(*out);
		*out = NULL;
	}
	free(json);
	free(config);
	return rc;
}

int moe_chat_prompt(const moe_tokenizer *t, const char *tmpl, const char *messages_json, const char *kwargs_json,
		    int add_generation_prompt, char **text, size_t *len)
{
	size_t bl = 0, el = 0;
	const char *b = NULL, *e = NULL;
	const int32_t *eos;
	if (moe_tokenizer_bos(t) >= 0)
		b = moe_tokenizer_token(t, moe_tokenizer_bos(t), &bl);
	if (moe_tokenizer_eos(t, &eos))
		e = moe_tokenizer_token(t, eos[0], &el);
	char *bos = b ? strndup(b, bl) : NULL, *eos_s = e ? strndup(e, el) : NULL;
	int rc = (b && !bos) || (e && !eos_s)
		? moe_fail(MOE_ENOMEM, "out of memory")
		: moe_chat_render(tmpl, messages_json, bos, eos_s, add_generation_prompt, kwargs_json, text, len);
	free(bos);
	free(eos_s);
	return rc;
}

struct moe_detokenizer {
	struct moe_detok_stream d;
};

int moe_detokenizer_new(const moe_tokenizer *t, int skip_special, moe_detokenizer **out)
{
	if (!(*out = calloc(1, sizeof **out)))
		return moe_fail(MOE_ENOMEM, "out of memory");
	moe_detok_stream_init(&(*out)->d, t, skip_special);
	return 0;
}

int moe_detokenizer_push(moe_detokenizer *d, int32_t id, const char **text, size_t *len)
{
	return moe_detok_stream_push(&d->d, id, text, len);
}

int moe_detokenizer_finish(moe_detokenizer *d, const char **text, size_t *len)
{
	return moe_detok_stream_finish(&d->d, text, len);
}

void moe_detokenizer_free(moe_detokenizer *d)
{
	if (d)
		moe_detok_stream_free(&d->d);
	free(d);
}
