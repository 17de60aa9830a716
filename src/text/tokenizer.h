/*
 * tokenizer.h - Hugging Face BPE tokenizers, id for id.
 *
 * Read from tokenizer.json (tokenizer_json.c), from a GGUF's tokenizer.ggml.* keys
 * (tokenizer_gguf.c) or from a pack's tokenizer.bin (tokenizer_bin.c).
 * Two kinds (tokspec.h): byte-level (Qwen, DeepSeek, Llama 3: Split regexes run
 * as written with PCRE2 in UTF + UCP mode, the GPT-2 byte<->character map, NFC
 * through utf8proc) and sentencepiece-style (Llama 2, Mistral v1: "▁" for
 * spaces, <0xXX> byte fallback, fused unknowns). Both: added tokens are split out
 * of the raw text first, merges are applied by rank with a priority queue, and
 * the post-processor's BOS/EOS are added on request. Input that is not UTF-8 is
 * read as Python's bytes.decode("utf-8", "replace") reads it.
 */
#ifndef MOE_TEXT_TOKENIZER_H
#define MOE_TEXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "moe.h"

struct moe_tokenizer;

/* From tokenizer.json and, if given, tokenizer_config.json (bos/eos, the
 * add_bos_token of Llama-class tokenizers); what names them in errors. */
int moe_tokenizer_from_json(const char *json, size_t len, const char *config, size_t config_len, const char *what,
			    struct moe_tokenizer **out);
/* tokenizer.json at path, with the tokenizer_config.json beside it if there is
 * one (*config NULL otherwise); both malloc'd, NUL-terminated. */
int moe_tokenizer_read_files(const char *path, char **json, size_t *len, char **config, size_t *config_len);
/* The chat template of a tokenizer_config.json (a string, or the "default" of a
 * list of named templates); *tmpl malloc'd, NULL if it has none. */
int moe_chat_template_from_config(const char *config, size_t len, const char *what, char **tmpl);
/* eos_token_id of a model's config.json or generation_config.json (a number or a list). */
int moe_tokenizer_add_eos_from_config(struct moe_tokenizer *t, const char *config, size_t len, const char *what);
/* The tokenizer.ggml.* keys of a GGUF file, as the GGUF reader finds them.
 * Strings are not NUL-terminated unless said; nothing is kept after the call. */
struct moe_gguf_vocab {
	const char *model, *pre; /* tokenizer.ggml.model and .pre, NUL-terminated; pre may be NULL */
	uint32_t n_tokens, n_merges;
	const char *const *tokens; /* [n_tokens], token_len[i] bytes each */
	const uint32_t *token_len;
	const int32_t *types; /* [n_tokens] llama.cpp token types (1 normal .. 6 byte), or NULL */
	const float *scores;  /* [n_tokens], or NULL */
	const char *const *merges; /* [n_merges] "left right", merge_len[i] bytes each */
	const uint32_t *merge_len;
	int64_t bos, eos, eot, eom, unk; /* token ids; -1: absent */
	int add_bos, add_eos, add_space_prefix; /* 0 or 1; -1: absent */
};
/* A GGUF's tokenizer, with Hugging Face's ids (tokenizer_gguf.c); what names it in
 * errors. MOE_EUNSUPPORTED for a tokenizer kind or pre-tokenizer not known. */
int moe_tokenizer_from_gguf(const struct moe_gguf_vocab *v, const char *what, struct moe_tokenizer **out);
/* From the binary form a pack stores as "tokenizer.bin" (moepack(5)). */
int moe_tokenizer_from_binary(const void *bin, size_t len, const char *what, struct moe_tokenizer **out);
/* The pack's tokenizer; MOE_ENOTFOUND if it has none. */
int moe_tokenizer_from_pack(const moe_pack *pack, const char *what, struct moe_tokenizer **out);
int moe_tokenizer_to_binary(const struct moe_tokenizer *t, void **bin, size_t *len);
void moe_tokenizer_free(struct moe_tokenizer *t);

size_t moe_tokenizer_vocab(const struct moe_tokenizer *t);
/* Ids that end generation (config eos_token and the model config's eos_token_id). */
size_t moe_tokenizer_eos(const struct moe_tokenizer *t, const int32_t **ids);
int moe_tokenizer_add_eos(struct moe_tokenizer *t, int32_t id);
int32_t moe_tokenizer_bos(const struct moe_tokenizer *t); /* -1 if none */
/* The token as the file spells it (for a chat template's bos_token); NULL if no such id. */
const char *moe_tokenizer_token(const struct moe_tokenizer *t, int32_t id, size_t *len);

/* Encode UTF-8 text; with add_special, the post-processor's BOS/EOS around it.
 * *ids is malloc'd. */
int moe_tokenize(const struct moe_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
		 size_t *n);
/* Decode ids to UTF-8 (malloc'd, NUL-terminated); special tokens kept or skipped. */
int moe_detokenize(const struct moe_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
		   size_t *len);

/* Streaming decode: one id in, the text it completes out. Never emits part of a
 * UTF-8 character; everything emitted concatenates to moe_detokenize's result. */
struct moe_detok_stream {
	const struct moe_tokenizer *t;
	int skip_special, started;
	unsigned char pending[4];
	size_t n_pending;
	char *buf;
	size_t cap;
};
void moe_detok_stream_init(struct moe_detok_stream *d, const struct moe_tokenizer *t, int skip_special);
/* *text stays valid until the next call; MOE_EINVAL for an id out of range. */
int moe_detok_stream_push(struct moe_detok_stream *d, int32_t id, const char **text, size_t *len);
/* What is held back at the end (an unfinished character, as U+FFFD). */
int moe_detok_stream_finish(struct moe_detok_stream *d, const char **text, size_t *len);
void moe_detok_stream_free(struct moe_detok_stream *d);

#endif
