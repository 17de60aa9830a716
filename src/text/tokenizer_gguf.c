/*
 * tokenizer_gguf.c - the tokenizer a GGUF file carries (the tokenizer.ggml.* keys
 * llama.cpp's converter writes from a model's Hugging Face files) read back into
 * a tok_spec that gives Hugging Face's ids:
 *
 *   "gpt2"   byte-level BPE. Tokens and merges are tokenizer.json's; the file only
 *            names the pre-tokenizer (tokenizer.ggml.pre), so the name is mapped
 *            back to the regexes and normalizer of that family's tokenizer.json.
 *   "llama"  sentencepiece BPE. Merges are not stored: they are rebuilt from the
 *            scores as transformers rebuilds them when it converts a sentencepiece
 *            model (every split of a token into two tokens, by the merged token's
 *            score, highest first).
 *
 * Token types: CONTROL and UNKNOWN tokens become special added tokens and
 * USER_DEFINED ones plain added tokens; both are split out of the text before BPE,
 * as Hugging Face splits out its added tokens. UNUSED ids (the converter's
 * [PADn] fillers) have no token. Whether a token is special comes from its type
 * alone, never from how its text looks.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/util.h"
#include "text/strmap.h"
#include "text/tokenizer.h"
#include "text/tokspec.h"

/* llama.cpp's token types (llama_token_type) */
enum { GGUF_TOK_NORMAL = 1, GGUF_TOK_UNKNOWN, GGUF_TOK_CONTROL, GGUF_TOK_USER_DEFINED, GGUF_TOK_UNUSED, GGUF_TOK_BYTE };

/* ---- tokenizer.ggml.pre: the families' tokenizer.json pre-tokenizers ---- */

#define RE_QWEN2                                                                              \
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
	"\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN35                                                                                             \
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|" \
	"\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_LLAMA3                                                                                    \
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
	"\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

struct pre_tokenizer {
	const char *name;
	uint32_t flags;
	int add_bos; /* transformers adds BOS for this family when the file does not say */
	const char *split_re[TOK_MAX_SPLITS];
};

static const struct pre_tokenizer pre_tokenizers[] = {
	{"default", 0, 0, {TOK_GPT2_REGEX}},
	{"gpt-2", 0, 0, {TOK_GPT2_REGEX}},
	{"qwen2", TOK_NFC, 0, {RE_QWEN2}},
	{"deepseek-r1-qwen", TOK_NFC, 0, {RE_QWEN2}},
	{"qwen35", 0, 0, {RE_QWEN35}},
	{"llama-bpe", TOK_IGNORE_MERGES, 1, {RE_LLAMA3}},
	{"llama3", TOK_IGNORE_MERGES, 1, {RE_LLAMA3}},
	{"llama-v3", TOK_IGNORE_MERGES, 1, {RE_LLAMA3}},
	{"glm4", 0, 0, {RE_LLAMA3}}, /* GLM-4.5: Llama 3's split, merges applied, no BOS (as llama.cpp reads it) */
	{"deepseek-v3", 0, 0,
	 {"\\p{N}{1,3}", "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+",
	  "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
	  " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"}},
};

static const struct pre_tokenizer *find_pre(const char *name)
{
	for (size_t i = 0; i < sizeof pre_tokenizers / sizeof pre_tokenizers[0]; i++)
		if (strcmp(pre_tokenizers[i].name, name) == 0)
			return &pre_tokenizers[i];
	return NULL;
}

/* ---- vocabulary ---- */

static int read_tokens(const struct moe_gguf_vocab *v, const char *what, struct tok_spec *s)
{
	size_t bytes = 0;
	for (uint32_t i = 0; i < v->n_tokens; i++)
		bytes += v->token_len[i];
	if (bytes > UINT32_MAX / 2)
		return moe_fail(MOE_EFORMAT, "%s: %zu bytes of token text, more than supported", what, bytes);
	s->n_ids = v->n_tokens;
	s->id_kind = calloc(v->n_tokens + 1, 1);
	s->added_flags = calloc(v->n_tokens + 1, 1);
	s->str_off = calloc(v->n_tokens + 1, sizeof *s->str_off);
	s->strs = malloc(bytes + 1);
	if (!s->id_kind || !s->added_flags || !s->str_off || !s->strs)
		return moe_fail(MOE_ENOMEM, "out of memory");
	uint32_t off = 0;
	for (uint32_t i = 0; i < v->n_tokens; i++) {
		const int32_t type = v->types ? v->types[i] : GGUF_TOK_NORMAL;
		switch (type) {
		case GGUF_TOK_NORMAL: case GGUF_TOK_BYTE: s->id_kind[i] = TOK_ID_NORMAL; break;
		case GGUF_TOK_UNKNOWN: case GGUF_TOK_CONTROL: s->id_kind[i] = TOK_ID_SPECIAL; break;
		case GGUF_TOK_USER_DEFINED: s->id_kind[i] = TOK_ID_ADDED; break;
		case GGUF_TOK_UNUSED: s->id_kind[i] = TOK_ID_NONE; break;
		default: return moe_fail(MOE_EFORMAT, "%s: token %u has type %d (1..6 are defined)", what, i, type);
		}
		if (type == GGUF_TOK_UNKNOWN && s->unk < 0)
			s->unk = (int32_t)i;
		s->str_off[i] = off;
		if (s->id_kind[i] != TOK_ID_NONE) {
			memcpy(s->strs + off, v->tokens[i], v->token_len[i]);
			off += v->token_len[i];
		}
	}
	s->str_off[v->n_tokens] = off;
	return 0;
}

static int map_vocab(const struct tok_spec *s, struct str_map *m)
{
	if (str_map_init(m, s->n_ids))
		return moe_fail(MOE_ENOMEM, "out of memory");
	for (uint32_t i = 0; i < s->n_ids; i++) {
		size_t l;
		const char *t = tok_str(s, (int32_t)i, &l);
		if (s->id_kind[i] != TOK_ID_NONE)
			str_map_put(m, t, (uint32_t)l, (int32_t)i);
	}
	return 0;
}

/* "left right": both halves and their join must be tokens; a merge that cannot
 * produce a token never applies and is dropped, as tokenizer_json.c drops it. */
static int read_merges(const struct moe_gguf_vocab *v, const char *what, struct tok_spec *s)
{
	struct str_map m;
	int rc = map_vocab(s, &m);
	if (rc)
		return rc;
	s->merges = malloc(((size_t)v->n_merges + 1) * 3 * sizeof *s->merges);
	char *joined = malloc(2 * 1024);
	if (!s->merges || !joined) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < v->n_merges; i++) {
		const char *mg = v->merges[i], *sp = memchr(mg, ' ', v->merge_len[i]);
		if (!sp) {
			rc = moe_fail(MOE_EFORMAT, "%s: tokenizer.ggml.merges[%u] is not \"left right\"", what, i);
			goto out;
		}
		const uint32_t ll = (uint32_t)(sp - mg), rl = v->merge_len[i] - ll - 1;
		if (ll + rl > 2 * 1024)
			continue; /* longer than any token */
		memcpy(joined, mg, ll);
		memcpy(joined + ll, sp + 1, rl);
		const int32_t a = str_map_get(&m, mg, ll), b = str_map_get(&m, sp + 1, rl);
		const int32_t j = str_map_get(&m, joined, ll + rl);
		if (a < 0 || b < 0 || j < 0)
			continue;
		int32_t *e = s->merges + 3 * s->n_merges++;
		e[0] = a, e[1] = b, e[2] = j;
	}
out:
	free(joined);
	str_map_free(&m);
	return rc;
}

struct spm_merge {
	float score;
	int32_t left, right, merged;
};

static int by_score(const void *pa, const void *pb)
{
	const struct spm_merge *a = pa, *b = pb;
	if (a->score != b->score)
		return a->score > b->score ? -1 : 1;
	if (a->merged != b->merged)
		return a->merged < b->merged ? -1 : 1;
	if (a->left != b->left)
		return a->left < b->left ? -1 : 1;
	return a->right < b->right ? -1 : a->right > b->right;
}

/*
 * transformers' SentencePieceExtractor: for every token, each split at a character
 * boundary into two tokens is a merge; merges rank by the merged token's score,
 * highest first (ties: by merged id, then by the halves' ids, the order its stable
 * sort leaves them in).
 */
static int spm_merges(const struct moe_gguf_vocab *v, const char *what, struct tok_spec *s)
{
	if (!v->scores)
		return moe_fail(MOE_EFORMAT, "%s: a \"llama\" tokenizer without tokenizer.ggml.scores", what);
	struct str_map m;
	int rc = map_vocab(s, &m);
	if (rc)
		return rc;
	size_t n = 0, cap = 1024;
	struct spm_merge *list = malloc(cap * sizeof *list);
	if (!list) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < s->n_ids; i++) {
		size_t len;
		const char *t = tok_str(s, (int32_t)i, &len);
		if (s->id_kind[i] == TOK_ID_NONE || v->scores[i] != v->scores[i])
			continue;
		for (size_t k = 1; k < len; k++) {
			if (((unsigned char)t[k] & 0xC0) == 0x80)
				continue; /* inside a character */
			const int32_t a = str_map_get(&m, t, k), b = str_map_get(&m, t + k, len - k);
			if (a < 0 || b < 0)
				continue;
			if (n == cap) {
				struct spm_merge *nl = realloc(list, 2 * cap * sizeof *list);
				if (!nl) {
					rc = moe_fail(MOE_ENOMEM, "out of memory");
					goto out;
				}
				list = nl, cap *= 2;
			}
			list[n++] = (struct spm_merge){v->scores[i], a, b, (int32_t)i};
		}
	}
	qsort(list, n, sizeof *list, by_score);
	if (n > UINT32_MAX / 4 || !(s->merges = malloc((n + 1) * 3 * sizeof *s->merges))) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		int32_t *e = s->merges + 3 * i;
		e[0] = list[i].left, e[1] = list[i].right, e[2] = list[i].merged;
	}
	s->n_merges = (uint32_t)n;
out:
	free(list);
	str_map_free(&m);
	return rc;
}

/* ---- the whole tokenizer ---- */

static int id_or_none(int64_t id, const struct tok_spec *s, const char *key, const char *what, int32_t *out)
{
	*out = -1;
	if (id < 0)
		return 0;
	if ((uint64_t)id >= s->n_ids || s->id_kind[id] == TOK_ID_NONE)
		return moe_fail(MOE_EFORMAT, "%s: tokenizer.ggml.%s %lld is not a token", what, key, (long long)id);
	*out = (int32_t)id;
	return 0;
}

static int spec_from_gguf(const struct moe_gguf_vocab *v, const char *what, struct tok_spec *s)
{
	memset(s, 0, sizeof *s);
	s->unk = s->bos = -1;
	const int spm = strcmp(v->model, "llama") == 0;
	const struct pre_tokenizer *pre = NULL;
	if (!spm && strcmp(v->model, "gpt2") != 0)
		return moe_fail(MOE_EUNSUPPORTED, "%s: tokenizer.ggml.model \"%s\" is not supported (gpt2 and llama are)",
				what, v->model);
	if (!spm && !(pre = find_pre(v->pre ? v->pre : "")))
		return moe_fail(MOE_EUNSUPPORTED,
				"%s: tokenizer.ggml.pre \"%s\" is not supported (qwen2, qwen35, deepseek-v3, llama-bpe, glm4, gpt-2)",
				what, v->pre ? v->pre : "(absent)");
	if (!v->n_tokens || v->n_tokens > MOE_MAX_VOCAB)
		return moe_fail(MOE_EFORMAT, "%s: %u tokens (1..%u supported)", what, v->n_tokens, MOE_MAX_VOCAB);
	int rc = read_tokens(v, what, s);
	if (!rc)
		rc = spm ? spm_merges(v, what, s) : read_merges(v, what, s);
	int32_t bos, eos, id;
	if (!rc)
		rc = id_or_none(v->bos, s, "bos_token_id", what, &bos);
	if (!rc)
		rc = id_or_none(v->eos, s, "eos_token_id", what, &eos);
	if (!rc && v->unk >= 0)
		rc = id_or_none(v->unk, s, "unknown_token_id", what, &s->unk);
	if (rc)
		return rc;
	s->bos = bos;
	if (eos >= 0)
		s->eos[s->n_eos++] = eos;
	const int64_t ends[2] = {v->eot, v->eom};
	for (int i = 0; i < 2; i++) {
		if ((rc = id_or_none(ends[i], s, i ? "eom_token_id" : "eot_token_id", what, &id)))
			return rc;
		if (id >= 0 && id != eos)
			s->eos[s->n_eos++] = id;
	}
	const int add_bos = v->add_bos >= 0 ? v->add_bos : spm || pre->add_bos;
	if (add_bos && bos >= 0)
		s->prefix[s->n_prefix++] = bos;
	if (v->add_eos > 0 && eos >= 0)
		s->suffix[s->n_suffix++] = eos;
	if (spm) {
		s->model = TOK_SENTENCEPIECE;
		s->flags = TOK_SPACE_TO_META | TOK_BYTE_FALLBACK | TOK_FUSE_UNK;
		if (v->add_space_prefix != 0)
			s->flags |= TOK_PREPEND_META | TOK_STRIP_SPACE;
	} else {
		s->model = TOK_BYTE_LEVEL;
		s->flags = pre->flags;
		for (; s->n_splits < TOK_MAX_SPLITS && pre->split_re[s->n_splits]; s->n_splits++)
			if (!(s->split_re[s->n_splits] = strdup(pre->split_re[s->n_splits])))
				return moe_fail(MOE_ENOMEM, "out of memory");
	}
	return tok_spec_check(s, what);
}

int moe_tokenizer_from_gguf(const struct moe_gguf_vocab *v, const char *what, struct moe_tokenizer **out)
{
	struct tok_spec s;
	*out = NULL;
	int rc = spec_from_gguf(v, what, &s);
	if (rc) {
		tok_spec_free(&s);
		return rc;
	}
	return moe_tokenizer_from_spec(&s, what, out);
}
