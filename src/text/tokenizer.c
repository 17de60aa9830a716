/* tokenizer.c - byte-level BPE from a Hugging Face tokenizer.json (see tokenizer.h). */
#include "config.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <xxhash.h>

#include "common/error.h"
#include "text/tokenizer.h"

/* ---- string -> id and (id, id) -> (rank, id) tables: open addressing ---- */

struct str_slot {
	uint64_t hash;
	const char *s;
	uint32_t len;
	int32_t id;
};

struct str_map {
	struct str_slot *slots;
	size_t cap;
};

static int str_map_init(struct str_map *m, size_t n)
{
	m->cap = 16;
	while (m->cap < n * 2)
		m->cap *= 2;
	m->slots = calloc(m->cap, sizeof *m->slots);
	return m->slots ? 0 : -1;
}

static void str_map_put(struct str_map *m, const char *s, uint32_t len, int32_t id)
{
	const uint64_t h = XXH3_64bits(s, len) | 1;
	for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1))
		if (!m->slots[i].hash) {
			m->slots[i] = (struct str_slot){h, s, len, id};
			return;
		} else if (m->slots[i].hash == h && m->slots[i].len == len && !memcmp(m->slots[i].s, s, len)) {
			return; /* first definition wins */
		}
}

static int32_t str_map_get(const struct str_map *m, const char *s, size_t len)
{
	const uint64_t h = XXH3_64bits(s, len) | 1;
	for (size_t i = h & (m->cap - 1); m->slots[i].hash; i = (i + 1) & (m->cap - 1))
		if (m->slots[i].hash == h && m->slots[i].len == len && !memcmp(m->slots[i].s, s, len))
			return m->slots[i].id;
	return -1;
}

struct pair_slot {
	uint64_t key; /* (a + 1) << 32 | (b + 1): never 0 */
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
			return; /* the lower rank (first listed) wins */
		}
}

/* ---- the tokenizer ---- */

struct added {
	char *content;
	size_t len;
	int32_t id;
	int special;
};

struct moe_tokenizer {
	struct str_map vocab;
	struct pair_map merges;
	char **id_to_str; /* vocabulary strings by id (added tokens included) */
	uint32_t *id_len;
	size_t n_ids;
	struct added *added;
	size_t n_added;
	struct str_map added_map;       /* content -> id */
	uint8_t *id_kind;               /* per id: 0 vocabulary, 1 added, 2 added and special */
	pcre2_code *added_re;           /* alternation of the added tokens, longest first */
	pcre2_code *splits[8];          /* the pre-tokenizer's Split regexes, in order */
	size_t n_splits;
	int nfc;
	uint16_t byte_to_cp[256];       /* GPT-2 ByteLevel map */
	int16_t cp_to_byte[324];
	char *arena;
};

static void byte_level_map(struct moe_tokenizer *t)
{
	int n = 0;
	for (int b = 0; b < 256; b++) {
		const int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
		t->byte_to_cp[b] = (uint16_t)(printable ? b : 256 + n++);
	}
	for (int i = 0; i < 324; i++)
		t->cp_to_byte[i] = -1;
	for (int b = 0; b < 256; b++)
		t->cp_to_byte[t->byte_to_cp[b]] = (int16_t)b;
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
	pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is unavailable */
	return re;
}

static int cmp_added_len(const void *a, const void *b)
{
	const struct added *x = a, *y = b;
	return x->len < y->len ? 1 : x->len > y->len ? -1 : 0;
}

static int load_pre_tokenizer(struct moe_tokenizer *t, json_t *pt, const char *what)
{
	int rc = 0;
	json_t *list = json_object_get(pt, "pretokenizers");
	const char *type = json_string_value(json_object_get(pt, "type"));
	if (!type)
		return moe_fail(MOE_EUNSUPPORTED, "%s: no pre_tokenizer", what);
	if (strcmp(type, "Sequence") != 0) {
		list = json_array();
		json_array_append(list, pt);
	} else {
		json_incref(list);
	}
	size_t i;
	json_t *p;
	int byte_level = 0;
	json_array_foreach(list, i, p) {
		const char *pty = json_string_value(json_object_get(p, "type"));
		if (pty && strcmp(pty, "Split") == 0) {
			const char *re = json_string_value(json_object_get(json_object_get(p, "pattern"), "Regex"));
			const char *beh = json_string_value(json_object_get(p, "behavior"));
			if (!re || !beh || strcmp(beh, "Isolated") || json_is_true(json_object_get(p, "invert")) ||
			    t->n_splits == 8) {
				rc = moe_fail(MOE_EUNSUPPORTED, "%s: pre_tokenizer Split other than an Isolated regex", what);
				break;
			}
			if (!(t->splits[t->n_splits++] = compile(re, strlen(re), what, &rc)))
				break;
		} else if (pty && strcmp(pty, "ByteLevel") == 0) {
			if (json_is_true(json_object_get(p, "use_regex")) || json_is_true(json_object_get(p, "add_prefix_space"))) {
				rc = moe_fail(MOE_EUNSUPPORTED, "%s: ByteLevel pre_tokenizer with its own regex or prefix space", what);
				break;
			}
			byte_level = 1;
		} else {
			rc = moe_fail(MOE_EUNSUPPORTED, "%s: pre_tokenizer %s is not supported", what, pty ? pty : "?");
			break;
		}
	}
	json_decref(list);
	if (!rc && !byte_level)
		rc = moe_fail(MOE_EUNSUPPORTED, "%s: only byte-level BPE tokenizers are supported so far", what);
	return rc;
}

int moe_tokenizer_load(const char *text, size_t len, const char *what, struct moe_tokenizer **out)
{
	*out = NULL;
	json_error_t jerr;
	json_t *root = json_loadb(text, len, 0, &jerr);
	if (!root)
		return moe_fail(MOE_EFORMAT, "%s:%d:%d: malformed JSON: %s", what, jerr.line, jerr.column, jerr.text);
	struct moe_tokenizer *t = calloc(1, sizeof *t);
	int rc = 0;
	if (!t) {
		json_decref(root);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	byte_level_map(t);
	json_t *model = json_object_get(root, "model"), *vocab = json_object_get(model, "vocab");
	json_t *merges = json_object_get(model, "merges"), *added = json_object_get(root, "added_tokens");
	const char *mtype = json_string_value(json_object_get(model, "type"));
	if (!mtype || strcmp(mtype, "BPE") || !json_is_object(vocab) || !json_is_array(merges)) {
		rc = moe_fail(MOE_EUNSUPPORTED, "%s: model type %s is not supported (BPE is)", what, mtype ? mtype : "?");
		goto out;
	}
	json_t *norm = json_object_get(root, "normalizer");
	const char *nt = json_string_value(json_object_get(norm, "type"));
	if (nt && strcmp(nt, "NFC") == 0)
		t->nfc = 1;
	else if (nt && !(strcmp(nt, "Sequence") == 0 && json_array_size(json_object_get(norm, "normalizers")) == 0)) {
		rc = moe_fail(MOE_EUNSUPPORTED, "%s: normalizer %s is not supported yet", what, nt);
		goto out;
	}
	if ((rc = load_pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), what)))
		goto out;
	/* ids and strings: the vocabulary, then added tokens */
	size_t n_ids = 0, bytes = 0;
	const char *key;
	json_t *v;
	json_object_foreach(vocab, key, v) {
		if (json_integer_value(v) >= (json_int_t)n_ids)
			n_ids = (size_t)json_integer_value(v) + 1;
		bytes += strlen(key) + 1;
	}
	size_t i;
	json_array_foreach(added, i, v) {
		json_int_t id = json_integer_value(json_object_get(v, "id"));
		if (id >= (json_int_t)n_ids)
			n_ids = (size_t)id + 1;
		bytes += strlen(json_string_value(json_object_get(v, "content")) ?: "") + 1;
	}
	t->n_ids = n_ids;
	t->id_to_str = calloc(n_ids, sizeof *t->id_to_str);
	t->id_len = calloc(n_ids, sizeof *t->id_len);
	t->arena = malloc(bytes + 1);
	t->added = calloc(json_array_size(added) + 1, sizeof *t->added);
	t->id_kind = calloc(n_ids, 1);
	if (!t->id_to_str || !t->id_len || !t->arena || !t->added || !t->id_kind || str_map_init(&t->vocab, n_ids + 1) ||
	    str_map_init(&t->added_map, json_array_size(added) + 1)) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto out;
	}
	char *a = t->arena;
	json_object_foreach(vocab, key, v) {
		const json_int_t id = json_integer_value(v);
		const size_t kl = strlen(key);
		if (!json_is_integer(v) || id < 0) {
			rc = moe_fail(MOE_EFORMAT, "%s: vocab entry '%s' has no id", what, key);
			goto out;
		}
		memcpy(a, key, kl + 1);
		t->id_to_str[id] = a;
		t->id_len[id] = (uint32_t)kl;
		str_map_put(&t->vocab, a, (uint32_t)kl, (int32_t)id);
		a += kl + 1;
	}
	json_array_foreach(added, i, v) {
		const char *c = json_string_value(json_object_get(v, "content"));
		const json_int_t id = json_integer_value(json_object_get(v, "id"));
		if (!c || id < 0) {
			rc = moe_fail(MOE_EFORMAT, "%s: added_tokens[%zu] needs content and id", what, i);
			goto out;
		}
		const size_t cl = strlen(c);
		memcpy(a, c, cl + 1);
		t->id_to_str[id] = a;
		t->id_len[id] = (uint32_t)cl;
		t->added[t->n_added++] = (struct added){a, cl, (int32_t)id, json_is_true(json_object_get(v, "special"))};
		t->id_kind[id] = t->added[t->n_added - 1].special ? 2 : 1;
		str_map_put(&t->added_map, a, (uint32_t)cl, (int32_t)id);
		a += cl + 1;
	}
	/* merges: "a b" or ["a", "b"], rank = position */
	t->merges.cap = 16;
	while (t->merges.cap < json_array_size(merges) * 2)
		t->merges.cap *= 2;
	t->merges.slots = calloc(t->merges.cap, sizeof *t->merges.slots);
	if (!t->merges.slots) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto out;
	}
	char buf[1024];
	json_array_foreach(merges, i, v) {
		const char *l, *r;
		size_t ll, rl;
		if (json_is_string(v)) {
			const char *s = json_string_value(v), *sp = strchr(s, ' ');
			if (!sp) {
				rc = moe_fail(MOE_EFORMAT, "%s: merges[%zu] is not \"a b\"", what, i);
				goto out;
			}
			l = s, ll = (size_t)(sp - s), r = sp + 1, rl = strlen(sp + 1);
		} else {
			l = json_string_value(json_array_get(v, 0)), r = json_string_value(json_array_get(v, 1));
			if (!l || !r) {
				rc = moe_fail(MOE_EFORMAT, "%s: merges[%zu] is not a pair", what, i);
				goto out;
			}
			ll = strlen(l), rl = strlen(r);
		}
		const int32_t ia = str_map_get(&t->vocab, l, ll), ib = str_map_get(&t->vocab, r, rl);
		if (ll + rl > sizeof buf || ia < 0 || ib < 0)
			continue; /* a merge of unknown symbols can never apply */
		memcpy(buf, l, ll);
		memcpy(buf + ll, r, rl);
		const int32_t im = str_map_get(&t->vocab, buf, ll + rl);
		if (im >= 0)
			pair_put(&t->merges, ia, ib, (int32_t)i, im);
	}
	/* added tokens as one alternation, longest first (leftmost-first = longest at a position) */
	if (t->n_added) {
		struct added *sorted = malloc(t->n_added * sizeof *sorted);
		size_t cap = 16;
		for (size_t k = 0; k < t->n_added; k++)
			cap += t->added[k].len * 4 + 8;
		char *pat = malloc(cap), *p = pat;
		if (!sorted || !pat) {
			free(sorted);
			free(pat);
			rc = moe_fail(MOE_ENOMEM, "out of memory");
			goto out;
		}
		memcpy(sorted, t->added, t->n_added * sizeof *sorted);
		qsort(sorted, t->n_added, sizeof *sorted, cmp_added_len);
		for (size_t k = 0; k < t->n_added; k++) {
			if (k)
				*p++ = '|';
			memcpy(p, "\\Q", 2), p += 2;
			memcpy(p, sorted[k].content, sorted[k].len), p += sorted[k].len;
			memcpy(p, "\\E", 2), p += 2;
		}
		t->added_re = compile(pat, (size_t)(p - pat), what, &rc);
		free(sorted);
		free(pat);
		if (rc)
			goto out;
	}
out:
	json_decref(root);
	if (rc) {
		moe_tokenizer_free(t);
		return rc;
	}
	*out = t;
	return 0;
}

void moe_tokenizer_free(struct moe_tokenizer *t)
{
	if (!t)
		return;
	free(t->vocab.slots);
	free(t->added_map.slots);
	free(t->id_kind);
	free(t->merges.slots);
	free(t->id_to_str);
	free(t->id_len);
	free(t->added);
	free(t->arena);
	pcre2_code_free(t->added_re);
	for (size_t i = 0; i < t->n_splits; i++)
		pcre2_code_free(t->splits[i]);
	free(t);
}

size_t moe_tokenizer_vocab(const struct moe_tokenizer *t) { return t->n_ids; }

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

/* BPE over one pre-tokenized piece: bytes -> ByteLevel characters -> merges by rank */
static void bpe(const struct moe_tokenizer *t, const uint8_t *s, size_t len, struct ids *o)
{
	int32_t stack_sym[256], *sym = len <= 256 ? stack_sym : malloc(len * sizeof *sym);
	if (!sym) {
		o->err = 1;
		return;
	}
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		char u[4];
		const utf8proc_ssize_t ul = utf8proc_encode_char(t->byte_to_cp[s[i]], (utf8proc_uint8_t *)u);
		sym[n++] = str_map_get(&t->vocab, u, (size_t)ul);
	}
	/* merge the lowest-ranked adjacent pair (leftmost on ties) until none applies */
	for (;;) {
		int32_t best = INT32_MAX, merged = -1;
		size_t at = 0;
		for (size_t i = 0; i + 1 < n; i++) {
			if (sym[i] < 0 || sym[i + 1] < 0)
				continue;
			const struct pair_slot *p = pair_get(&t->merges, sym[i], sym[i + 1]);
			if (p && p->rank < best) {
				best = p->rank, merged = p->merged, at = i;
			}
		}
		if (merged < 0)
			break;
		sym[at] = merged;
		memmove(sym + at + 1, sym + at + 2, (n - at - 2) * sizeof *sym);
		n--;
	}
	for (size_t i = 0; i < n; i++)
		if (sym[i] >= 0)
			push(o, sym[i]);
	if (sym != stack_sym)
		free(sym);
}

/* Apply Split regexes from index k on to [s, s+len); pieces reaching the end go to BPE. */
static void split(const struct moe_tokenizer *t, size_t k, const char *s, size_t len, pcre2_match_data *md,
		  struct ids *o)
{
	if (k == t->n_splits) {
		if (len)
			bpe(t, (const uint8_t *)s, len, o);
		return;
	}
	size_t pos = 0;
	while (pos < len) {
		int r = pcre2_match(t->splits[k], (PCRE2_SPTR)s, len, pos, 0, md, NULL);
		if (r < 0)
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

static void encode_segment(const struct moe_tokenizer *t, const char *s, size_t len, pcre2_match_data *md,
			   struct ids *o)
{
	if (!len)
		return;
	if (!t->nfc) {
		split(t, 0, s, len, md, o);
		return;
	}
	utf8proc_uint8_t *nfc = NULL;
	utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &nfc, UTF8PROC_COMPOSE | UTF8PROC_STABLE);
	if (n < 0) { /* invalid UTF-8: tokenized as it is, byte by byte */
		split(t, 0, s, len, md, o);
		return;
	}
	split(t, 0, (const char *)nfc, (size_t)n, md, o);
	free(nfc);
}

int moe_tokenize(const struct moe_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n)
{
	struct ids o = {0};
	pcre2_match_data *md = pcre2_match_data_create(4, NULL);
	if (!md)
		return moe_fail(MOE_ENOMEM, "out of memory");
	size_t pos = 0;
	while (t->added_re && pos < len) {
		int r = pcre2_match(t->added_re, (PCRE2_SPTR)text, len, pos, 0, md, NULL);
		if (r < 0)
			break;
		/* copied out: encoding the text before the match reuses the match data */
		const size_t m0 = pcre2_get_ovector_pointer(md)[0], m1 = pcre2_get_ovector_pointer(md)[1];
		encode_segment(t, text + pos, m0 - pos, md, &o);
		push(&o, str_map_get(&t->added_map, text + m0, m1 - m0));
		pos = m1 > m0 ? m1 : m1 + 1; /* never loop on an empty match */
	}
	encode_segment(t, text + pos, len - pos, md, &o);
	pcre2_match_data_free(md);
	if (o.err) {
		free(o.v);
		return moe_fail(MOE_ENOMEM, "out of memory tokenizing %zu bytes", len);
	}
	*ids = o.v;
	*n = o.n;
	return 0;
}

int moe_detokenize(const struct moe_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
		   size_t *len)
{
	size_t cap = 64, k = 0;
	char *out = malloc(cap);
	if (!out)
		return moe_fail(MOE_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		if (ids[i] < 0 || (size_t)ids[i] >= t->n_ids || !t->id_to_str[ids[i]]) {
			free(out);
			return moe_fail(MOE_EINVAL, "token id %d is not in the vocabulary (%zu)", ids[i], t->n_ids);
		}
		const int is_added = t->id_kind[ids[i]] != 0, special = t->id_kind[ids[i]] == 2;
		if (special && skip_special)
			continue;
		const char *s = t->id_to_str[ids[i]];
		const size_t sl = t->id_len[ids[i]];
		if (k + sl + 4 > cap) {
			while (k + sl + 4 > cap)
				cap *= 2;
			char *no = realloc(out, cap);
			if (!no) {
				free(out);
				return moe_fail(MOE_ENOMEM, "out of memory");
			}
			out = no;
		}
		if (is_added) { /* added tokens are stored as text, not ByteLevel characters */
			memcpy(out + k, s, sl);
			k += sl;
			continue;
		}
		for (size_t p = 0; p < sl;) {
			utf8proc_int32_t cp;
			utf8proc_ssize_t used = utf8proc_iterate((const utf8proc_uint8_t *)s + p, (utf8proc_ssize_t)(sl - p), &cp);
			if (used <= 0)
				break;
			p += (size_t)used;
			out[k++] = cp >= 0 && cp < 324 && t->cp_to_byte[cp] >= 0 ? (char)t->cp_to_byte[cp] : '?';
		}
	}
	out[k] = '\0';
	*text = out;
	*len = k;
	return 0;
}
