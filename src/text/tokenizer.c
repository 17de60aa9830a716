/* tokenizer.c - encode and decode with a tok_spec (see tokenizer.h). */
#include "config.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <xxhash.h>

#include "common/error.h"
#include "text/strmap.h"
#include "text/tokenizer.h"
#include "text/tokspec.h"

#define META "\xE2\x96\x81" /* U+2581 */
#define REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD */

/* ---- (id, id) -> (rank, id) table: open addressing ---- */

struct pair_slot {
	uint64_t key; /* (left + 1) << 32 | (right + 1): never 0 */
	int32_t rank, merged;
};

struct pair_map {
	struct pair_slot *slots;
	size_t cap;
};

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)(a + 1) << 32) | (uint32_t)(b + 1); }

static const struct pair_slot *pair_get(const struct pair_map *m, int32_t a, int32_t b)
{
	const uint64_t k = pair_key(a, b);
	for (size_t i = XXH3_64bits(&k, 8) & (m->cap - 1); m->slots[i].key; i = (i + 1) & (m->cap - 1))
		if (m->slots[i].key == k)
			return &m->slots[i];
	return NULL;
}

static void pair_put(struct pair_map *m, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
	const uint64_t k = pair_key(a, b);
	for (size_t i = XXH3_64bits(&k, 8) & (m->cap - 1);; i = (i + 1) & (m->cap - 1))
		if (!m->slots[i].key) {
			m->slots[i] = (struct pair_slot){k, rank, merged};
			return;
		} else if (m->slots[i].key == k) {
			return; /* the lower rank (listed first) wins */
		}
}

/* ---- UTF-8 ---- */

/* The well-formed sequence at s (Unicode table 3-7): its length; 0 if the n bytes
 * given are a proper prefix of one; -k if the first k bytes are a maximal
 * ill-formed subpart (replaced by one U+FFFD, as Python and WHATWG do). */
static int utf8_seq(const unsigned char *s, size_t n)
{
	const unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xBF;
	int len;
	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		len = 2;
	else if (c >= 0xE0 && c <= 0xEF)
		len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
	else if (c >= 0xF0 && c <= 0xF4)
		len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
	else
		return -1;
	for (int i = 1; i < len; i++) {
		if ((size_t)i >= n)
			return 0;
		if (s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xBF))
			return -i;
	}
	return len;
}

/* Append s[0..n) to out (room for 3n bytes) with ill-formed parts replaced; with
 * hold, an unfinished sequence at the end is left unconsumed. Returns bytes consumed. */
static size_t utf8_lossy(const unsigned char *s, size_t n, int hold, char *out, size_t *out_len)
{
	size_t i = 0, k = *out_len;
	while (i < n) {
		int l = utf8_seq(s + i, n - i);
		if (l == 0 && hold)
			break;
		if (l > 0) {
			memcpy(out + k, s + i, (size_t)l);
			k += (size_t)l;
			i += (size_t)l;
		} else {
			memcpy(out + k, REPLACEMENT, 3);
			k += 3;
			i += l == 0 ? n - i : (size_t)-l;
		}
	}
	*out_len = k;
	return i;
}

/* ---- the tokenizer ---- */

struct moe_tokenizer {
	struct tok_spec s;
	struct str_map vocab; /* vocabulary string -> id (added tokens excluded) */
	struct str_map added; /* added token content -> id */
	struct pair_map merges;
	int32_t byte_sym[256];    /* byte-level: the id of each byte's character; sentencepiece: <0xXX> or -1 */
	uint32_t *dec_off;        /* [n_ids + 1]: what each id decodes to, in dec */
	char *dec;
	pcre2_code *added_re;     /* the added tokens as one alternation, longest first */
	pcre2_code *split[TOK_MAX_SPLITS];
};

static uint16_t byte_level_cp(int b) /* GPT-2's byte -> code point */
{
	if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
		return (uint16_t)b;
	int n = 0;
	for (int x = 0; x < b; x++)
		n += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255));
	return (uint16_t)(256 + n);
}

static pcre2_code *compile(const char *pattern, size_t len, const char *what, int *rc)
{
	int err;
	PCRE2_SIZE off;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
	if (!re) {
		PCRE2_UCHAR msg[160];
		pcre2_get_error_message(err, msg, sizeof msg);
		*rc = moe_fail(MOE_EFORMAT, "%s: regex at offset %zu: %s", what, (size_t)off, (const char *)msg);
		return NULL;
	}
	pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter runs it if JIT is unavailable */
	return re;
}

/* a hex digit's value, -1 if c is none */
static int hex_digit(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* What one id decodes to, as Hugging Face's decoders produce it token by token. */
static size_t decode_token(const struct moe_tokenizer *t, int32_t id, const int16_t *cp_to_byte, char *out)
{
	size_t sl, k = 0;
	const char *s = tok_str(&t->s, id, &sl);
	if (t->s.model == TOK_BYTE_LEVEL) {
		/* characters -> bytes; a token with a character outside the map stays as written */
		for (size_t p = 0; p < sl;) {
			utf8proc_int32_t cp;
			utf8proc_ssize_t used = utf8proc_iterate((const utf8proc_uint8_t *)s + p, (utf8proc_ssize_t)(sl - p), &cp);
			if (used <= 0 || cp >= 324 || cp_to_byte[cp] < 0) {
				memcpy(out, s, sl);
				return sl;
			}
			out[k++] = (char)cp_to_byte[cp];
			p += (size_t)used;
		}
		return k;
	}
	/* a byte-fallback token <0xHH> (its string is not NUL-terminated: no sscanf) */
	const int hi = sl == 6 ? hex_digit(s[3]) : -1, lo = sl == 6 ? hex_digit(s[4]) : -1;
	if ((t->s.flags & TOK_BYTE_FALLBACK) && t->s.id_kind[id] == TOK_ID_NORMAL && sl == 6 && !memcmp(s, "<0x", 3) &&
	    s[5] == '>' && hi >= 0 && lo >= 0) {
		out[0] = (char)(hi * 16 + lo);
		return 1;
	}
	for (size_t p = 0; p < sl;) /* "▁" -> " " */
		if (sl - p >= 3 && !memcmp(s + p, META, 3))
			out[k++] = ' ', p += 3;
		else
			out[k++] = s[p++];
	return k;
}

static int build(struct moe_tokenizer *t, const char *what)
{
	const struct tok_spec *s = &t->s;
	int rc = 0;
	size_t n_added = 0, pat_cap = 16;
	for (uint32_t i = 0; i < s->n_ids; i++)
		if (s->id_kind[i] >= TOK_ID_ADDED)
			n_added++, pat_cap += 4 * (s->str_off[i + 1] - s->str_off[i]) + 8;
	t->merges.cap = 16;
	while (t->merges.cap < (size_t)s->n_merges * 2)
		t->merges.cap *= 2;
	t->merges.slots = calloc(t->merges.cap, sizeof *t->merges.slots);
	t->dec_off = malloc(((size_t)s->n_ids + 1) * sizeof *t->dec_off);
	t->dec = malloc(s->str_off[s->n_ids] + 1);
	if (!t->merges.slots || !t->dec_off || !t->dec || str_map_init(&t->vocab, s->n_ids) ||
	    str_map_init(&t->added, n_added))
		return moe_fail(MOE_ENOMEM, "out of memory");
	for (uint32_t i = 0; i < s->n_ids; i++) {
		size_t l;
		const char *str = tok_str(s, (int32_t)i, &l);
		if (s->id_kind[i] == TOK_ID_NORMAL)
			str_map_put(&t->vocab, str, (uint32_t)l, (int32_t)i);
		else if (s->id_kind[i] != TOK_ID_NONE)
			str_map_put(&t->added, str, (uint32_t)l, (int32_t)i);
	}
	for (uint32_t r = 0; r < s->n_merges; r++)
		pair_put(&t->merges, s->merges[3 * r], s->merges[3 * r + 1], (int32_t)r, s->merges[3 * r + 2]);
	/* the initial symbols of bytes, and what ids decode to */
	int16_t cp_to_byte[324];
	for (int i = 0; i < 324; i++)
		cp_to_byte[i] = -1;
	for (int b = 0; b < 256; b++) {
		char u[8];
		if (s->model == TOK_BYTE_LEVEL) {
			cp_to_byte[byte_level_cp(b)] = (int16_t)b;
			utf8proc_ssize_t ul = utf8proc_encode_char(byte_level_cp(b), (utf8proc_uint8_t *)u);
			t->byte_sym[b] = str_map_get(&t->vocab, u, (size_t)ul);
			if (t->byte_sym[b] < 0)
				return moe_fail(MOE_EFORMAT, "%s: byte-level vocabulary lacks the character of byte %#x", what, b);
		} else {
			snprintf(u, sizeof u, "<0x%02X>", b);
			t->byte_sym[b] = (s->flags & TOK_BYTE_FALLBACK) ? str_map_get(&t->vocab, u, 6) : -1;
		}
	}
	size_t k = 0;
	for (uint32_t i = 0; i < s->n_ids; i++) {
		t->dec_off[i] = (uint32_t)k;
		k += decode_token(t, (int32_t)i, cp_to_byte, t->dec + k);
	}
	t->dec_off[s->n_ids] = (uint32_t)k;
	for (uint32_t i = 0; i < s->n_splits; i++)
		if (!(t->split[i] = compile(s->split_re[i], strlen(s->split_re[i]), what, &rc)))
			return rc;
	if (!n_added)
		return 0;
	/* longest first, so that leftmost-first alternation finds the longest token at a position */
	int32_t *order = malloc(n_added * sizeof *order);
	char *pat = malloc(pat_cap), *p = pat;
	if (!order || !pat) {
		free(order);
		free(pat);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	size_t n = 0;
	for (uint32_t i = 0; i < s->n_ids; i++)
		if (s->id_kind[i] >= TOK_ID_ADDED)
			order[n++] = (int32_t)i;
	for (size_t i = 1; i < n; i++) { /* insertion sort by length, stable; runs once per load */
		const int32_t x = order[i];
		const uint32_t xl = s->str_off[x + 1] - s->str_off[x];
		size_t j = i;
		for (; j > 0 && s->str_off[order[j - 1] + 1] - s->str_off[order[j - 1]] < xl; j--)
			order[j] = order[j - 1];
		order[j] = x;
	}
	for (size_t i = 0; i < n; i++) {
		size_t l;
		const char *str = tok_str(s, order[i], &l);
		if (!l)
			continue;
		if (p != pat)
			*p++ = '|';
		/* \Q..\E quotes everything but "\E" itself: spell that one out */
		for (size_t j = 0; j < l; j++) {
			if (isalnum((unsigned char)str[j]) || (unsigned char)str[j] >= 0x80) {
				*p++ = str[j];
			} else {
				*p++ = '\\';
				*p++ = str[j];
			}
		}
	}
	free(order);
	t->added_re = p == pat ? NULL : compile(pat, (size_t)(p - pat), what, &rc);
	free(pat);
	return rc;
}

int moe_tokenizer_from_spec(struct tok_spec *s, const char *what, struct moe_tokenizer **out)
{
	struct moe_tokenizer *t = calloc(1, sizeof *t);
	if (!t) {
		tok_spec_free(s);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	t->s = *s;
	int rc = build(t, what);
	if (rc) {
		moe_tokenizer_free(t);
		return rc;
	}
	*out = t;
	return 0;
}

int moe_tokenizer_from_json(const char *json, size_t len, const char *config, size_t config_len, const char *what,
			    struct moe_tokenizer **out)
{
	struct tok_spec s;
	*out = NULL;
	int rc = tok_spec_from_json(json, len, config, config_len, what, &s);
	return rc ? rc : moe_tokenizer_from_spec(&s, what, out);
}

int moe_tokenizer_from_binary(const void *bin, size_t len, const char *what, struct moe_tokenizer **out)
{
	struct tok_spec s;
	*out = NULL;
	int rc = tok_spec_from_binary(bin, len, what, &s);
	return rc ? rc : moe_tokenizer_from_spec(&s, what, out);
}

int moe_tokenizer_from_pack(const moe_pack *pack, const char *what, struct moe_tokenizer **out)
{
	const void *p;
	uint64_t n;
	*out = NULL;
	if (moe_pack_meta_bytes(pack, "tokenizer.bin", &p, &n))
		return moe_fail(MOE_ENOTFOUND, "%s: the pack has no tokenizer (moe-pack --tokenizer adds one)", what);
	return moe_tokenizer_from_binary(p, (size_t)n, what, out);
}

int moe_tokenizer_to_binary(const struct moe_tokenizer *t, void **bin, size_t *len)
{
	return tok_spec_to_binary(&t->s, bin, len);
}

void moe_tokenizer_free(struct moe_tokenizer *t)
{
	if (!t)
		return;
	str_map_free(&t->vocab);
	str_map_free(&t->added);
	free(t->merges.slots);
	free(t->dec_off);
	free(t->dec);
	pcre2_code_free(t->added_re);
	for (size_t i = 0; i < TOK_MAX_SPLITS; i++)
		pcre2_code_free(t->split[i]);
	tok_spec_free(&t->s);
	free(t);
}

size_t moe_tokenizer_vocab(const struct moe_tokenizer *t) { return t->s.n_ids; }
int32_t moe_tokenizer_bos(const struct moe_tokenizer *t) { return t->s.bos; }

size_t moe_tokenizer_eos(const struct moe_tokenizer *t, const int32_t **ids)
{
	*ids = t->s.eos;
	return t->s.n_eos;
}

int moe_tokenizer_add_eos(struct moe_tokenizer *t, int32_t id)
{
	if (id < 0 || (uint32_t)id >= t->s.n_ids)
		return moe_fail(MOE_EINVAL, "eos id %d is not in the vocabulary (%u)", id, t->s.n_ids);
	for (uint32_t i = 0; i < t->s.n_eos; i++)
		if (t->s.eos[i] == id)
			return 0;
	if (t->s.n_eos == TOK_MAX_EOS)
		return moe_fail(MOE_EUNSUPPORTED, "more than %d eos ids", TOK_MAX_EOS);
	t->s.eos[t->s.n_eos++] = id;
	return 0;
}

const char *moe_tokenizer_token(const struct moe_tokenizer *t, int32_t id, size_t *len)
{
	if (id < 0 || (uint32_t)id >= t->s.n_ids || t->s.id_kind[id] == TOK_ID_NONE)
		return NULL;
	return tok_str(&t->s, id, len);
}

/* ---- encoding ---- */

struct ids {
	int32_t *v;
	size_t n, cap;
	int err;
};

static void push(struct ids *o, int32_t id)
{
	if (o->n == o->cap) {
		size_t cap = o->cap ? o->cap * 2 : 256;
		int32_t *nv = realloc(o->v, cap * sizeof *nv);
		if (!nv) {
			o->err = 1;
			return;
		}
		o->v = nv, o->cap = cap;
	}
	o->v[o->n++] = id;
}

struct sym {
	int32_t id, prev, next; /* id -1: merged into its left neighbour */
};

/* min-heap of (rank << 32 | position): the lowest rank first, the leftmost on ties */
static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
	size_t i = (*n)++;
	for (; i && h[(i - 1) / 2] > v; i = (i - 1) / 2)
		h[i] = h[(i - 1) / 2];
	h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
	const uint64_t top = h[0], last = h[--*n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && h[c + 1] < h[c])
			c++;
		if (h[c] >= last)
			break;
		h[i] = h[c];
		i = c;
	}
	h[i] = last;
	return top;
}

static void heap_add_pair(const struct moe_tokenizer *t, const struct sym *sy, int32_t left, uint64_t *h, size_t *n)
{
	if (left < 0 || sy[left].next < 0)
		return;
	const struct pair_slot *p = pair_get(&t->merges, sy[left].id, sy[sy[left].next].id);
	if (p)
		heap_push(h, n, (uint64_t)(uint32_t)p->rank << 32 | (uint32_t)left);
}

/* BPE over one pre-tokenized piece: its initial symbols, then merges by rank. */
static void bpe(const struct moe_tokenizer *t, const unsigned char *s, size_t len, struct ids *o)
{
	const struct tok_spec *sp = &t->s;
	if (sp->flags & TOK_IGNORE_MERGES) {
		char stack[256], *mapped = len * 2 <= sizeof stack ? stack : malloc(len * 2);
		size_t ml = 0;
		if (!mapped) {
			o->err = 1;
			return;
		}
		for (size_t i = 0; i < len && sp->model == TOK_BYTE_LEVEL; i++)
			ml += (size_t)utf8proc_encode_char(byte_level_cp(s[i]), (utf8proc_uint8_t *)mapped + ml);
		const int32_t whole = sp->model == TOK_BYTE_LEVEL ? str_map_get(&t->vocab, mapped, ml)
								   : str_map_get(&t->vocab, (const char *)s, len);
		if (mapped != stack)
			free(mapped);
		if (whole >= 0) {
			push(o, whole);
			return;
		}
	}
	/* at most 4 symbols per byte (byte fallback of a 4-byte character) */
	const size_t cap = sp->model == TOK_BYTE_LEVEL ? len : 4 * len;
	struct sym stack_sym[128], *sy = cap <= 128 ? stack_sym : malloc(cap * sizeof *sy);
	uint64_t stack_heap[128], *heap = cap <= 128 ? stack_heap : malloc(cap * 2 * sizeof *heap);
	if (!sy || !heap) {
		if (sy != stack_sym)
			free(sy);
		if (heap != stack_heap)
			free(heap);
		o->err = 1;
		return;
	}
	size_t n = 0;
	if (sp->model == TOK_BYTE_LEVEL) {
		for (size_t i = 0; i < len; i++)
			sy[n++].id = t->byte_sym[s[i]];
	} else {
		for (size_t i = 0; i < len;) {
			int cl = utf8_seq(s + i, len - i);
			cl = cl > 0 ? cl : 1; /* the input was made valid; be safe anyway */
			const int32_t id = str_map_get(&t->vocab, (const char *)s + i, (size_t)cl);
			int fallback = id < 0 && (sp->flags & TOK_BYTE_FALLBACK);
			for (int b = 0; fallback && b < cl; b++)
				fallback = t->byte_sym[s[i + b]] >= 0;
			if (id >= 0) {
				sy[n++].id = id;
			} else if (fallback) {
				for (int b = 0; b < cl; b++)
					sy[n++].id = t->byte_sym[s[i + b]];
			} else if (!(sp->flags & TOK_FUSE_UNK) || !n || sy[n - 1].id != sp->unk || sp->unk < 0) {
				sy[n++].id = sp->unk; /* -1 without an unk token: the character is dropped, as HF does */
			}
			i += (size_t)cl;
		}
	}
	for (size_t i = 0; i < n; i++) {
		sy[i].prev = (int32_t)i - 1;
		sy[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
	}
	size_t nh = 0;
	for (size_t i = 0; i + 1 < n; i++)
		heap_add_pair(t, sy, (int32_t)i, heap, &nh);
	while (nh) {
		const uint64_t top = heap_pop(heap, &nh);
		const int32_t at = (int32_t)(uint32_t)top, rank = (int32_t)(top >> 32);
		if (sy[at].id < 0 || sy[at].next < 0)
			continue;
		const int32_t right = sy[at].next;
		const struct pair_slot *p = pair_get(&t->merges, sy[at].id, sy[right].id);
		if (!p || p->rank != rank)
			continue; /* stale: a neighbour changed since this pair was queued */
		sy[at].id = p->merged;
		sy[right].id = -1;
		sy[at].next = sy[right].next;
		if (sy[at].next >= 0)
			sy[sy[at].next].prev = at;
		heap_add_pair(t, sy, sy[at].prev, heap, &nh);
		heap_add_pair(t, sy, at, heap, &nh);
	}
	for (int32_t i = n ? 0 : -1; i >= 0; i = sy[i].next)
		if (sy[i].id >= 0)
			push(o, sy[i].id);
	if (sy != stack_sym)
		free(sy);
	if (heap != stack_heap)
		free(heap);
}

/* Apply the Split regexes from index k on to [s, s+len); pieces past the last go to BPE. */
static void split(const struct moe_tokenizer *t, size_t k, const char *s, size_t len, pcre2_match_data *md,
		  struct ids *o)
{
	if (k == t->s.n_splits) {
		if (len)
			bpe(t, (const unsigned char *)s, len, o);
		return;
	}
	size_t pos = 0;
	while (pos < len) {
		if (pcre2_match(t->split[k], (PCRE2_SPTR)s, len, pos, PCRE2_NO_UTF_CHECK, md, NULL) < 0)
			break;
		/* copied out: the next level's matches reuse the match data */
		const size_t m0 = pcre2_get_ovector_pointer(md)[0], m1 = pcre2_get_ovector_pointer(md)[1];
		if (m1 == m0) { /* empty match: step one character */
			size_t step = 1;
			while (m0 + step < len && ((unsigned char)s[m0 + step] & 0xC0) == 0x80)
				step++;
			split(t, k + 1, s + pos, m0 + step - pos, md, o);
			pos = m0 + step;
			continue;
		}
		if (m0 > pos)
			split(t, k + 1, s + pos, m0 - pos, md, o); /* the gap is a piece too */
		split(t, k + 1, s + m0, m1 - m0, md, o);
		pos = m1;
	}
	if (pos < len)
		split(t, k + 1, s + pos, len - pos, md, o);
}

/* One stretch of text between added tokens: normalize, pre-tokenize, BPE. */
static void encode_segment(const struct moe_tokenizer *t, const char *s, size_t len, int at_text_start,
			   pcre2_match_data *md, struct ids *o)
{
	if (!len)
		return;
	const uint32_t f = t->s.flags;
	utf8proc_uint8_t *nfc = NULL;
	if (f & TOK_NFC) {
		utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &nfc,
						  UTF8PROC_COMPOSE | UTF8PROC_STABLE);
		if (n < 0) {
			o->err = 1;
			return;
		}
		s = (const char *)nfc, len = (size_t)n;
	}
	char *meta = NULL;
	if (f & (TOK_SPACE_TO_META | TOK_PREPEND_META | TOK_PREPEND_FIRST)) {
		char *p = meta = malloc(3 * len + 4);
		if (!meta) {
			free(nfc);
			o->err = 1;
			return;
		}
		if ((f & TOK_PREPEND_META) || ((f & TOK_PREPEND_FIRST) && at_text_start))
			memcpy(p, META, 3), p += 3;
		for (size_t i = 0; i < len; i++)
			if (s[i] == ' ' && (f & TOK_SPACE_TO_META))
				memcpy(p, META, 3), p += 3;
			else
				*p++ = s[i];
		s = meta, len = (size_t)(p - meta);
	}
	split(t, 0, s, len, md, o);
	free(meta);
	free(nfc);
}

static int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
static int is_word(unsigned char c) { return isalnum(c) || c == '_' || c >= 0x80; }

int moe_tokenize(const struct moe_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
		 size_t *n)
{
	struct ids o = {0};
	char *clean = NULL;
	for (size_t i = 0; i < len;) { /* not UTF-8: read as bytes.decode("utf-8", "replace") */
		const int l = utf8_seq((const unsigned char *)text + i, len - i);
		if (l <= 0) {
			size_t cl = 0;
			if (!(clean = malloc(3 * len + 1)))
				return moe_fail(MOE_ENOMEM, "out of memory");
			utf8_lossy((const unsigned char *)text, len, 0, clean, &cl);
			text = clean, len = cl;
			break;
		}
		i += (size_t)l;
	}
	pcre2_match_data *md = pcre2_match_data_create(4, NULL);
	if (!md) {
		free(clean);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	for (uint32_t i = 0; add_special && i < t->s.n_prefix; i++)
		push(&o, t->s.prefix[i]);
	size_t pos = 0, from = 0;
	while (t->added_re && from < len) {
		if (pcre2_match(t->added_re, (PCRE2_SPTR)text, len, from, PCRE2_NO_UTF_CHECK, md, NULL) < 0)
			break;
		/* copied out: encoding the text before the match reuses the match data */
		size_t m0 = pcre2_get_ovector_pointer(md)[0], m1 = pcre2_get_ovector_pointer(md)[1];
		const int32_t id = str_map_get(&t->added, text + m0, m1 - m0);
		const uint8_t fl = t->s.added_flags[id];
		if ((fl & TOK_SINGLE_WORD) && ((m0 > 0 && is_word((unsigned char)text[m0 - 1])) ||
					       (m1 < len && is_word((unsigned char)text[m1])))) {
			from = m0 + 1; /* inside a word: not this token here */
			while (from < len && ((unsigned char)text[from] & 0xC0) == 0x80)
				from++;
			continue;
		}
		if (fl & TOK_LSTRIP)
			while (m0 > pos && is_space((unsigned char)text[m0 - 1]))
				m0--;
		encode_segment(t, text + pos, m0 - pos, pos == 0, md, &o);
		push(&o, id);
		if (fl & TOK_RSTRIP)
			while (m1 < len && is_space((unsigned char)text[m1]))
				m1++;
		pos = from = m1;
	}
	encode_segment(t, text + pos, len - pos, pos == 0, md, &o);
	for (uint32_t i = 0; add_special && i < t->s.n_suffix; i++)
		push(&o, t->s.suffix[i]);
	pcre2_match_data_free(md);
	free(clean);
	if (o.err) {
		free(o.v);
		return moe_fail(MOE_ENOMEM, "out of memory tokenizing %zu bytes", len);
	}
	*ids = o.v;
	*n = o.n;
	return 0;
}

/* ---- decoding ---- */

void moe_detok_stream_init(struct moe_detok_stream *d, const struct moe_tokenizer *t, int skip_special)
{
	memset(d, 0, sizeof *d);
	d->t = t;
	d->skip_special = skip_special;
}

void moe_detok_stream_free(struct moe_detok_stream *d)
{
	free(d->buf);
	d->buf = NULL;
}

/* bytes (held back ones first) -> valid UTF-8 in d->buf */
static int emit(struct moe_detok_stream *d, const char *bytes, size_t n, int final, const char **text, size_t *len)
{
	const size_t need = 3 * (n + d->n_pending) + 8;
	if (need > d->cap) {
		char *nb = realloc(d->buf, need);
		if (!nb)
			return moe_fail(MOE_ENOMEM, "out of memory");
		d->buf = nb, d->cap = need;
	}
	unsigned char stack[512], *in = n + d->n_pending <= sizeof stack ? stack : malloc(n + d->n_pending);
	if (!in)
		return moe_fail(MOE_ENOMEM, "out of memory");
	memcpy(in, d->pending, d->n_pending);
	memcpy(in + d->n_pending, bytes, n);
	const size_t total = n + d->n_pending;
	size_t k = 0;
	const size_t used = utf8_lossy(in, total, !final, d->buf, &k);
	d->n_pending = total - used; /* at most 3: an unfinished character */
	memcpy(d->pending, in + used, d->n_pending);
	if (in != stack)
		free(in);
	size_t start = 0;
	if (k && !d->started) {
		d->started = 1;
		if ((d->t->s.flags & TOK_STRIP_SPACE) && d->buf[0] == ' ')
			start = 1;
	}
	*text = d->buf + start;
	*len = k - start;
	return 0;
}

int moe_detok_stream_push(struct moe_detok_stream *d, int32_t id, const char **text, size_t *len)
{
	const struct moe_tokenizer *t = d->t;
	if (id < 0 || (uint32_t)id >= t->s.n_ids || t->s.id_kind[id] == TOK_ID_NONE)
		return moe_fail(MOE_EINVAL, "token id %d is not in the vocabulary (%u)", id, t->s.n_ids);
	if (d->skip_special && t->s.id_kind[id] == TOK_ID_SPECIAL)
		return emit(d, "", 0, 0, text, len);
	return emit(d, t->dec + t->dec_off[id], t->dec_off[id + 1] - t->dec_off[id], 0, text, len);
}

int moe_detok_stream_finish(struct moe_detok_stream *d, const char **text, size_t *len)
{
	return emit(d, "", 0, 1, text, len);
}

int moe_detokenize(const struct moe_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
		   size_t *len)
{
	struct moe_detok_stream d;
	moe_detok_stream_init(&d, t, skip_special);
	size_t cap = 64, k = 0;
	char *out = malloc(cap);
	int rc = out ? 0 : moe_fail(MOE_ENOMEM, "out of memory");
	for (size_t i = 0; !rc && i <= n; i++) {
		const char *piece;
		size_t pl;
		rc = i < n ? moe_detok_stream_push(&d, ids[i], &piece, &pl) : moe_detok_stream_finish(&d, &piece, &pl);
		if (rc)
			break;
		if (k + pl + 1 > cap) {
			while (k + pl + 1 > cap)
				cap *= 2;
			char *no = realloc(out, cap);
			if (!no) {
				rc = moe_fail(MOE_ENOMEM, "out of memory");
				break;
			}
			out = no;
		}
		memcpy(out + k, piece, pl);
		k += pl;
	}
	moe_detok_stream_free(&d);
	if (rc) {
		free(out);
		return rc;
	}
	out[k] = '\0';
	*text = out;
	*len = k;
	return 0;
}
