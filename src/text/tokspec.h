/*
 * tokspec.h - what a tokenizer is, whatever it was read from: tokenizer.json at
 * pack time (tokenizer_json.c), the pack's binary form at run time
 * (tokenizer_bin.c). tokenizer.c builds its lookup tables from this.
 */
#ifndef MOE_TEXT_TOKSPEC_H
#define MOE_TEXT_TOKSPEC_H

#include <stddef.h>
#include <stdint.h>

enum tok_model {
	TOK_BYTE_LEVEL = 1,    /* GPT-2 bytes-as-characters BPE: Qwen, DeepSeek, Llama 3, gpt-oss */
	TOK_SENTENCEPIECE = 2, /* "▁" for spaces, <0xXX> byte fallback: Llama 2, Mistral v1 */
};

enum tok_flags {
	TOK_NFC = 1u << 0,           /* normalizer NFC */
	TOK_PREPEND_META = 1u << 1,  /* "▁" put before every non-added segment (Prepend normalizer) */
	TOK_PREPEND_FIRST = 1u << 2, /* ... before the text's first segment only (Metaspace "first") */
	TOK_SPACE_TO_META = 1u << 3, /* " " -> "▁" (Replace normalizer, Metaspace) */
	TOK_BYTE_FALLBACK = 1u << 4, /* characters not in the vocabulary become <0xXX> tokens */
	TOK_FUSE_UNK = 1u << 5,      /* consecutive unknown characters are one unk token */
	TOK_IGNORE_MERGES = 1u << 6, /* a pre-token found in the vocabulary is taken whole */
	TOK_STRIP_SPACE = 1u << 7,   /* the decoder drops one leading space */
	TOK_ALL_FLAGS = (1u << 8) - 1,
};

enum tok_id_kind { TOK_ID_NONE = 0, TOK_ID_NORMAL = 1, TOK_ID_ADDED = 2, TOK_ID_SPECIAL = 3 };
enum tok_added_flags { TOK_LSTRIP = 1, TOK_RSTRIP = 2, TOK_NORMALIZED = 4, TOK_SINGLE_WORD = 8 };

/* GPT-2's pattern, which a ByteLevel pre-tokenizer with use_regex runs */
#define TOK_GPT2_REGEX "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

#define TOK_MAX_SPLITS 8
#define TOK_MAX_AFFIX 4
#define TOK_MAX_EOS 8

struct tok_spec {
	uint32_t model, flags;
	int32_t unk, bos; /* -1: none */
	uint32_t n_ids;
	uint8_t *id_kind;     /* [n_ids] enum tok_id_kind */
	uint8_t *added_flags; /* [n_ids] enum tok_added_flags, for added tokens */
	uint32_t *str_off;    /* [n_ids + 1]: token i is strs[str_off[i] .. str_off[i + 1]) as the file spells it */
	char *strs;
	uint32_t n_merges;
	int32_t *merges; /* [n_merges][3]: left id, right id, merged id; the rank is the index */
	uint32_t n_splits;
	char *split_re[TOK_MAX_SPLITS]; /* the pre-tokenizer's Split regexes (Isolated), in order */
	/* added when encoding with special tokens (the post-processor), and what ends generation */
	uint32_t n_prefix, n_suffix, n_eos;
	int32_t prefix[TOK_MAX_AFFIX], suffix[TOK_MAX_AFFIX], eos[TOK_MAX_EOS];
};

/* Token id's text as the file spells it, and its length. */
static inline const char *tok_str(const struct tok_spec *s, int32_t id, size_t *len)
{
	*len = s->str_off[id + 1] - s->str_off[id];
	return s->strs + s->str_off[id];
}

void tok_spec_free(struct tok_spec *s);
/* Consistency of a spec from any source: ids in range, offsets ordered. */
int tok_spec_check(const struct tok_spec *s, const char *what);

/* A tokenizer built from s, which it takes over (freed on failure too). */
struct moe_tokenizer;
int moe_tokenizer_from_spec(struct tok_spec *s, const char *what, struct moe_tokenizer **out);

int tok_spec_from_json(const char *json, size_t len, const char *config, size_t config_len, const char *what,
		       struct tok_spec *out);
int tok_spec_from_binary(const void *bin, size_t len, const char *what, struct tok_spec *out);
int tok_spec_to_binary(const struct tok_spec *s, void **bin, size_t *len);

#endif
