/*
 * tokenizer.h - Hugging Face tokenizer.json, byte-level BPE (Qwen3, DeepSeek-V3):
 * added tokens split out first, the normalizer (NFC through utf8proc), the
 * pre-tokenizer's Split regexes run as written with PCRE2 (UTF + UCP, JIT), the
 * ByteLevel byte<->character map, and merges applied by rank.
 * Sentencepiece-style BPE (Mistral v1) and chat templates are not here yet.
 */
#ifndef MOE_TEXT_TOKENIZER_H
#define MOE_TEXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

struct moe_tokenizer;

/* Parse a tokenizer.json; what names it in error messages. */
int moe_tokenizer_load(const char *json, size_t len, const char *what, struct moe_tokenizer **out);
void moe_tokenizer_free(struct moe_tokenizer *t);
size_t moe_tokenizer_vocab(const struct moe_tokenizer *t);

/* Encode UTF-8 text (without BOS/EOS). *ids is malloc'd. */
int moe_tokenize(const struct moe_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n);
/* Decode ids to UTF-8 (malloc'd, NUL-terminated); special tokens kept or skipped. */
int moe_detokenize(const struct moe_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
		   size_t *len);

#endif
