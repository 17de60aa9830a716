/* tokenizer_bin.c - the pack's binary form of a tokenizer ("tokenizer.bin",
 * moepack(5)): a tok_spec written as little-endian arrays, so that moe-run loads
 * it without parsing JSON. The metadata section's checksum covers its bytes; the
 * reader still checks every count and id, so a bad blob is an error, not a crash. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/util.h"
#include "text/tokspec.h"

#define TOK_MAGIC "MOETOK\r\n"
#define TOK_VERSION 1

void tok_spec_free(struct tok_spec *s)
{
	free(s->id_kind);
	free(s->added_flags);
	free(s->str_off);
	free(s->strs);
	free(s->merges);
	for (uint32_t i = 0; i < s->n_splits; i++)
		free(s->split_re[i]);
	memset(s, 0, sizeof *s);
}

static int id_ok(const struct tok_spec *s, int32_t id) { return id >= 0 && (uint32_t)id < s->n_ids; }

int tok_spec_check(const struct tok_spec *s, const char *what)
{
	if ((s->model != TOK_BYTE_LEVEL && s->model != TOK_SENTENCEPIECE) || (s->flags & ~(uint32_t)TOK_ALL_FLAGS))
		return moe_fail(MOE_EFORMAT, "%s: unknown tokenizer model %u or flags %#x", what, s->model, s->flags);
	if (!s->n_ids || s->n_ids > MOE_MAX_VOCAB || s->n_splits > TOK_MAX_SPLITS || s->n_prefix > TOK_MAX_AFFIX ||
	    s->n_suffix > TOK_MAX_AFFIX || s->n_eos > TOK_MAX_EOS)
		return moe_fail(MOE_EFORMAT, "%s: tokenizer counts out of range", what);
	if ((s->unk != -1 && !id_ok(s, s->unk)) || (s->bos != -1 && !id_ok(s, s->bos)))
		return moe_fail(MOE_EFORMAT, "%s: unk or bos id out of range", what);
	for (uint32_t i = 0; i < s->n_prefix; i++)
		if (!id_ok(s, s->prefix[i]))
			return moe_fail(MOE_EFORMAT, "%s: post-processor id %d out of range", what, s->prefix[i]);
	for (uint32_t i = 0; i < s->n_suffix; i++)
		if (!id_ok(s, s->suffix[i]))
			return moe_fail(MOE_EFORMAT, "%s: post-processor id %d out of range", what, s->suffix[i]);
	for (uint32_t i = 0; i < s->n_eos; i++)
		if (!id_ok(s, s->eos[i]))
			return moe_fail(MOE_EFORMAT, "%s: eos id %d out of range", what, s->eos[i]);
	for (uint32_t i = 0; i < s->n_ids; i++)
		if (s->str_off[i] > s->str_off[i + 1] || s->id_kind[i] > TOK_ID_SPECIAL)
			return moe_fail(MOE_EFORMAT, "%s: token %u malformed", what, i);
	for (uint32_t i = 0; i < 3 * s->n_merges; i++)
		if (!id_ok(s, s->merges[i]))
			return moe_fail(MOE_EFORMAT, "%s: merge %u names id %d, out of range", what, i / 3, s->merges[i]);
	return 0;
}

/* ---- writing ---- */

struct buf {
	unsigned char *p;
	size_t n, cap;
	int err;
};

static void put(struct buf *b, const void *src, size_t n)
{
	if (b->n + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->n + n)
			cap *= 2;
		unsigned char *np = realloc(b->p, cap);
		if (!np) {
			b->err = 1;
			return;
		}
		b->p = np, b->cap = cap;
	}
	memcpy(b->p + b->n, src, n);
	b->n += n;
}

/* the pack format is little-endian and so are the machines moemap builds for */
static void put_u32(struct buf *b, uint32_t v) { put(b, &v, 4); }

static void pad4(struct buf *b)
{
	static const char zero[4];
	put(b, zero, (4 - b->n % 4) % 4);
}

int tok_spec_to_binary(const struct tok_spec *s, void **bin, size_t *len)
{
	struct buf b = {0};
	put(&b, TOK_MAGIC, 8);
	const uint32_t head[] = {TOK_VERSION,  s->model,    s->flags,    (uint32_t)s->unk,  (uint32_t)s->bos,
				 s->n_ids,     s->n_merges, s->n_splits, s->n_prefix,       s->n_suffix,
				 s->n_eos,     s->str_off[s->n_ids]};
	put(&b, head, sizeof head);
	put(&b, s->prefix, s->n_prefix * 4);
	put(&b, s->suffix, s->n_suffix * 4);
	put(&b, s->eos, s->n_eos * 4);
	put(&b, s->id_kind, s->n_ids);
	put(&b, s->added_flags, s->n_ids);
	pad4(&b);
	put(&b, s->str_off, (s->n_ids + 1) * 4);
	put(&b, s->strs, s->str_off[s->n_ids]);
	pad4(&b);
	put(&b, s->merges, (size_t)s->n_merges * 12);
	for (uint32_t i = 0; i < s->n_splits; i++) {
		put_u32(&b, (uint32_t)strlen(s->split_re[i]));
		put(&b, s->split_re[i], strlen(s->split_re[i]));
	}
	if (b.err) {
		free(b.p);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	*bin = b.p;
	*len = b.n;
	return 0;
}

/* ---- reading ---- */

struct cursor {
	const unsigned char *p;
	size_t n, at;
	int short_read;
};

/* a malloc'd copy of the next n bytes (n may be 0), or NULL past the end */
static void *take(struct cursor *c, size_t n)
{
	if (c->short_read || n > c->n - c->at) {
		c->short_read = 1;
		return NULL;
	}
	void *v = malloc(n ? n : 1);
	if (v)
		memcpy(v, c->p + c->at, n);
	c->at += n;
	return v;
}

static void skip4(struct cursor *c)
{
	const size_t pad = (4 - c->at % 4) % 4;
	if (pad > c->n - c->at)
		c->short_read = 1;
	else
		c->at += pad;
}

static int take_into(struct cursor *c, void *dst, size_t n)
{
	if (c->short_read || n > c->n - c->at) {
		c->short_read = 1;
		return -1;
	}
	memcpy(dst, c->p + c->at, n);
	c->at += n;
	return 0;
}

int tok_spec_from_binary(const void *bin, size_t len, const char *what, struct tok_spec *s)
{
	memset(s, 0, sizeof *s);
	struct cursor c = {bin, len, 0, 0};
	uint32_t head[12];
	if (len < 8 + sizeof head || memcmp(bin, TOK_MAGIC, 8) != 0)
		return moe_fail(MOE_EFORMAT, "%s: tokenizer.bin has no tokenizer magic", what);
	memcpy(head, (const char *)bin + 8, sizeof head);
	c.at = 8 + sizeof head;
	if (head[0] != TOK_VERSION)
		return moe_fail(MOE_EUNSUPPORTED, "%s: tokenizer.bin version %u (this moemap reads %d)", what, head[0],
				TOK_VERSION);
	s->model = head[1], s->flags = head[2], s->unk = (int32_t)head[3], s->bos = (int32_t)head[4];
	s->n_ids = head[5], s->n_merges = head[6], s->n_splits = head[7];
	s->n_prefix = head[8], s->n_suffix = head[9], s->n_eos = head[10];
	const uint32_t str_bytes = head[11];
	int rc = MOE_EFORMAT;
	if (s->n_ids > MOE_MAX_VOCAB || s->n_merges > (1u << 24) || s->n_splits > TOK_MAX_SPLITS ||
	    s->n_prefix > TOK_MAX_AFFIX || s->n_suffix > TOK_MAX_AFFIX || s->n_eos > TOK_MAX_EOS) {
		memset(s, 0, sizeof *s);
		return moe_fail(MOE_EFORMAT, "%s: tokenizer.bin counts out of range", what);
	}
	uint32_t n_splits = s->n_splits;
	s->n_splits = 0;
	if (take_into(&c, s->prefix, s->n_prefix * 4) || take_into(&c, s->suffix, s->n_suffix * 4) ||
	    take_into(&c, s->eos, s->n_eos * 4))
		goto bad;
	s->id_kind = take(&c, s->n_ids);
	s->added_flags = take(&c, s->n_ids);
	skip4(&c);
	s->str_off = take(&c, ((size_t)s->n_ids + 1) * 4);
	s->strs = take(&c, str_bytes);
	skip4(&c);
	s->merges = take(&c, (size_t)s->n_merges * 12);
	if (c.short_read || !s->id_kind || !s->added_flags || !s->str_off || !s->strs || !s->merges)
		goto bad;
	if (s->str_off[s->n_ids] != str_bytes)
		goto bad;
	for (; s->n_splits < n_splits; s->n_splits++) {
		uint32_t l;
		if (take_into(&c, &l, 4) || !(s->split_re[s->n_splits] = take(&c, l)))
			goto bad;
		char *z = realloc(s->split_re[s->n_splits], (size_t)l + 1);
		if (!z)
			goto bad;
		z[l] = '\0';
		s->split_re[s->n_splits] = z;
	}
	if (c.at != len)
		goto bad;
	if ((rc = tok_spec_check(s, what)))
		goto out;
	return 0;
bad:
	rc = moe_fail(MOE_EFORMAT, "%s: tokenizer.bin %s at byte %zu", what,
		      c.short_read ? "truncated" : "malformed", c.at);
out:
	tok_spec_free(s);
	return rc;
}
