/* tokenizer_json.c - a Hugging Face tokenizer.json (and tokenizer_config.json) read
 * into a tok_spec with jansson. Every part of the file that would change the ids
 * and is not understood is refused by name, never ignored. */
#include "config.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/util.h"
#include "common/fileio.h"
#include "text/tokenizer.h"
#include "text/tokspec.h"

#define META "\xE2\x96\x81" /* U+2581, sentencepiece's space */

struct reader {
	struct tok_spec *s;
	const char *what;
	int byte_level;
	json_t *vocab;
};

static int is_type(json_t *o, const char *type)
{
	const char *t = json_string_value(json_object_get(o, "type"));
	return t && strcmp(t, type) == 0;
}

static const char *type_of(json_t *o) { return json_string_value(json_object_get(o, "type")) ?: "?"; }

/* the items of a "Sequence" (under key), or the object itself as a list of one */
static json_t *as_list(json_t *o, const char *key)
{
	if (is_type(o, "Sequence"))
		return json_incref(json_object_get(o, key));
	json_t *l = json_array();
	if (o && !json_is_null(o))
		json_array_append(l, o);
	return l;
}

static int add_split(struct reader *r, const char *re)
{
	struct tok_spec *s = r->s;
	if (s->n_splits == TOK_MAX_SPLITS)
		return moe_fail(MOE_EUNSUPPORTED, "%s: more than %d pre-tokenizer regexes", r->what, TOK_MAX_SPLITS);
	if (!(s->split_re[s->n_splits] = strdup(re)))
		return moe_fail(MOE_ENOMEM, "out of memory");
	s->n_splits++;
	return 0;
}

static int read_normalizer(struct reader *r, json_t *norm)
{
	json_t *list = as_list(norm, "normalizers");
	size_t i;
	json_t *n;
	int rc = 0;
	json_array_foreach(list, i, n) {
		const char *pat = json_string_value(json_object_get(json_object_get(n, "pattern"), "String"));
		const char *content = json_string_value(json_object_get(n, "content"));
		if (is_type(n, "NFC")) {
			r->s->flags |= TOK_NFC;
		} else if (is_type(n, "Prepend") && strcmp(json_string_value(json_object_get(n, "prepend")) ?: "", META) == 0) {
			r->s->flags |= TOK_PREPEND_META;
		} else if (is_type(n, "Replace") && pat && content && strcmp(pat, " ") == 0 && strcmp(content, META) == 0) {
			r->s->flags |= TOK_SPACE_TO_META;
		} else {
			rc = moe_fail(MOE_EUNSUPPORTED, "%s: normalizer %s is not supported", r->what, type_of(n));
			break;
		}
	}
	json_decref(list);
	return rc;
}

static int read_metaspace(struct reader *r, json_t *p)
{
	const char *rep = json_string_value(json_object_get(p, "replacement"));
	const char *scheme = json_string_value(json_object_get(p, "prepend_scheme"));
	if (!rep || strcmp(rep, META) || json_is_true(json_object_get(p, "split")))
		return moe_fail(MOE_EUNSUPPORTED, "%s: Metaspace other than \"▁\" without splitting", r->what);
	r->s->flags |= TOK_SPACE_TO_META;
	if (!scheme) /* older files: add_prefix_space */
		scheme = json_is_false(json_object_get(p, "add_prefix_space")) ? "never" : "always";
	if (strcmp(scheme, "always") == 0)
		r->s->flags |= TOK_PREPEND_META;
	else if (strcmp(scheme, "first") == 0)
		r->s->flags |= TOK_PREPEND_FIRST;
	else if (strcmp(scheme, "never") != 0)
		return moe_fail(MOE_EUNSUPPORTED, "%s: Metaspace prepend_scheme %s", r->what, scheme);
	return 0;
}

static int read_pre_tokenizer(struct reader *r, json_t *pt)
{
	json_t *list = as_list(pt, "pretokenizers");
	size_t i;
	json_t *p;
	int rc = 0;
	json_array_foreach(list, i, p) {
		if (is_type(p, "Split")) {
			const char *re = json_string_value(json_object_get(json_object_get(p, "pattern"), "Regex"));
			const char *beh = json_string_value(json_object_get(p, "behavior"));
			if (!re || !beh || strcmp(beh, "Isolated") || json_is_true(json_object_get(p, "invert")))
				rc = moe_fail(MOE_EUNSUPPORTED, "%s: pre_tokenizer Split other than an Isolated regex", r->what);
			else
				rc = add_split(r, re);
		} else if (is_type(p, "ByteLevel")) {
			if (json_is_true(json_object_get(p, "add_prefix_space")))
				rc = moe_fail(MOE_EUNSUPPORTED, "%s: ByteLevel pre_tokenizer with add_prefix_space", r->what);
			else if (json_is_true(json_object_get(p, "use_regex")))
				rc = add_split(r, TOK_GPT2_REGEX);
			r->byte_level = 1;
		} else if (is_type(p, "Metaspace")) {
			rc = read_metaspace(r, p);
		} else {
			rc = moe_fail(MOE_EUNSUPPORTED, "%s: pre_tokenizer %s is not supported", r->what, type_of(p));
		}
		if (rc)
			break;
	}
	json_decref(list);
	return rc;
}

static int read_decoder(struct reader *r, json_t *dec)
{
	json_t *list = as_list(dec, "decoders");
	size_t i;
	json_t *d;
	int rc = 0;
	json_array_foreach(list, i, d) {
		const char *pat = json_string_value(json_object_get(json_object_get(d, "pattern"), "String"));
		const char *content = json_string_value(json_object_get(d, "content"));
		if (is_type(d, "ByteLevel") || is_type(d, "ByteFallback") || is_type(d, "Fuse"))
			continue; /* implied by the model kind */
		if (is_type(d, "Replace") && pat && content && strcmp(pat, META) == 0 && strcmp(content, " ") == 0)
			continue;
		if (is_type(d, "Strip") && strcmp(content ?: "", " ") == 0 && json_integer_value(json_object_get(d, "stop")) == 0 &&
		    json_integer_value(json_object_get(d, "start")) == 1) {
			r->s->flags |= TOK_STRIP_SPACE;
			continue;
		}
		if (is_type(d, "Metaspace")) {
			const char *scheme = json_string_value(json_object_get(d, "prepend_scheme"));
			if (!scheme ? !json_is_false(json_object_get(d, "add_prefix_space")) : strcmp(scheme, "never") != 0)
				r->s->flags |= TOK_STRIP_SPACE;
			continue;
		}
		rc = moe_fail(MOE_EUNSUPPORTED, "%s: decoder %s is not supported", r->what, type_of(d));
		break;
	}
	json_decref(list);
	return rc;
}

static int32_t vocab_id(struct reader *r, const char *tok)
{
	json_t *v = tok ? json_object_get(r->vocab, tok) : NULL;
	if (json_is_integer(v))
		return (int32_t)json_integer_value(v);
	for (uint32_t i = 0; tok && i < r->s->n_ids; i++) /* added tokens are not in the model's vocab */
		if (r->s->id_kind[i] >= TOK_ID_ADDED && r->s->str_off[i + 1] - r->s->str_off[i] == strlen(tok) &&
		    !memcmp(r->s->strs + r->s->str_off[i], tok, strlen(tok)))
			return (int32_t)i;
	return -1;
}

/* TemplateProcessing's "single": special tokens before and after $A */
static int read_post_processor(struct reader *r, json_t *pp)
{
	json_t *list = as_list(pp, "processors");
	size_t i, k;
	json_t *p, *item;
	int rc = 0;
	json_array_foreach(list, i, p) {
		if (is_type(p, "ByteLevel"))
			continue; /* offsets only */
		if (!is_type(p, "TemplateProcessing")) {
			rc = moe_fail(MOE_EUNSUPPORTED, "%s: post_processor %s is not supported", r->what, type_of(p));
			break;
		}
		int after = 0;
		json_array_foreach(json_object_get(p, "single"), k, item) {
			json_t *sp = json_object_get(item, "SpecialToken");
			if (json_object_get(item, "Sequence")) {
				after = 1;
				continue;
			}
			json_t *ids = json_object_get(json_object_get(json_object_get(p, "special_tokens"),
								       json_string_value(json_object_get(sp, "id")) ?: ""),
						      "ids");
			size_t j;
			json_t *id;
			json_array_foreach(ids, j, id) {
				uint32_t *n = after ? &r->s->n_suffix : &r->s->n_prefix;
				if (*n == TOK_MAX_AFFIX || !json_is_integer(id)) {
					rc = moe_fail(MOE_EUNSUPPORTED, "%s: post_processor template is not a few special ids", r->what);
					goto out;
				}
				(after ? r->s->suffix : r->s->prefix)[(*n)++] = (int32_t)json_integer_value(id);
			}
		}
	}
out:
	json_decref(list);
	return rc;
}

/* bos_token / eos_token in tokenizer_config.json: a string or an AddedToken object */
static const char *config_token(json_t *cfg, const char *key)
{
	json_t *v = json_object_get(cfg, key);
	return json_is_string(v) ? json_string_value(v) : json_string_value(json_object_get(v, "content"));
}

static int read_config(struct reader *r, json_t *cfg)
{
	struct tok_spec *s = r->s;
	s->bos = vocab_id(r, config_token(cfg, "bos_token"));
	const int32_t eos = vocab_id(r, config_token(cfg, "eos_token"));
	if (eos >= 0)
		s->eos[s->n_eos++] = eos;
	/* transformers' Llama tokenizers replace the post-processor by add_bos_token/add_eos_token */
	const char *cls = json_string_value(json_object_get(cfg, "tokenizer_class")) ?: "";
	if (strncmp(cls, "LlamaTokenizer", 14) == 0) {
		s->n_prefix = s->n_suffix = 0;
		if (!json_is_false(json_object_get(cfg, "add_bos_token")) && s->bos >= 0)
			s->prefix[s->n_prefix++] = s->bos;
		if (json_is_true(json_object_get(cfg, "add_eos_token")) && eos >= 0)
			s->suffix[s->n_suffix++] = eos;
	}
	return 0;
}

static int read_vocab(struct reader *r, json_t *vocab, json_t *added)
{
	struct tok_spec *s = r->s;
	size_t n_ids = 0, bytes = 0, i;
	const char *key;
	json_t *v;
	json_object_foreach(vocab, key, v) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= MOE_MAX_VOCAB)
			return moe_fail(MOE_EFORMAT, "%s: vocab entry '%s' has no id in 0..%u", r->what, key, MOE_MAX_VOCAB - 1);
		if ((size_t)json_integer_value(v) >= n_ids)
			n_ids = (size_t)json_integer_value(v) + 1;
		bytes += strlen(key);
	}
	json_array_foreach(added, i, v) {
		json_t *id = json_object_get(v, "id");
		if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= MOE_MAX_VOCAB ||
		    !json_is_string(json_object_get(v, "content")))
			return moe_fail(MOE_EFORMAT, "%s: added_tokens[%zu] needs content and an id in 0..%u", r->what, i,
					MOE_MAX_VOCAB - 1);
		if ((size_t)json_integer_value(id) >= n_ids)
			n_ids = (size_t)json_integer_value(id) + 1;
		bytes += json_string_length(json_object_get(v, "content"));
	}
	if (bytes > UINT32_MAX / 2)
		return moe_fail(MOE_EFORMAT, "%s: %zu bytes of token text, more than supported", r->what, bytes);
	s->n_ids = (uint32_t)n_ids;
	s->id_kind = calloc(n_ids + 1, 1);
	s->added_flags = calloc(n_ids + 1, 1);
	s->str_off = calloc(n_ids + 1, sizeof *s->str_off);
	s->strs = malloc(bytes + 1);
	const char **str = calloc(n_ids + 1, sizeof *str); /* by id, then laid out in id order */
	if (!s->id_kind || !s->added_flags || !s->str_off || !s->strs || !str) {
		free(str);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	json_object_foreach(vocab, key, v) {
		str[json_integer_value(v)] = key;
		s->id_kind[json_integer_value(v)] = TOK_ID_NORMAL;
	}
	json_array_foreach(added, i, v) { /* an added token may also be in the vocab: the added entry wins */
		const size_t id = (size_t)json_integer_value(json_object_get(v, "id"));
		str[id] = json_string_value(json_object_get(v, "content"));
		s->id_kind[id] = json_is_true(json_object_get(v, "special")) ? TOK_ID_SPECIAL : TOK_ID_ADDED;
		s->added_flags[id] = (uint8_t)((json_is_true(json_object_get(v, "lstrip")) ? TOK_LSTRIP : 0) |
					       (json_is_true(json_object_get(v, "rstrip")) ? TOK_RSTRIP : 0) |
					       (json_is_true(json_object_get(v, "normalized")) ? TOK_NORMALIZED : 0) |
					       (json_is_true(json_object_get(v, "single_word")) ? TOK_SINGLE_WORD : 0));
	}
	uint32_t off = 0;
	for (size_t id = 0; id < n_ids; id++) {
		s->str_off[id] = off;
		if (str[id]) {
			const size_t l = strlen(str[id]);
			memcpy(s->strs + off, str[id], l);
			off += (uint32_t)l;
		}
	}
	s->str_off[n_ids] = off;
	free(str);
	return 0;
}

static int read_merges(struct reader *r, json_t *merges)
{
	struct tok_spec *s = r->s;
	s->merges = malloc((json_array_size(merges) + 1) * 3 * sizeof *s->merges);
	if (!s->merges)
		return moe_fail(MOE_ENOMEM, "out of memory");
	char buf[1024];
	size_t i;
	json_t *v;
	json_array_foreach(merges, i, v) {
		const char *left = json_string_value(json_array_get(v, 0)), *right = json_string_value(json_array_get(v, 1));
		size_t ll = 0;
		if (json_is_string(v)) { /* "left right" */
			const char *m = json_string_value(v), *sp = strchr(m, ' ');
			if (!sp || sp - m >= (long)sizeof buf)
				return moe_fail(MOE_EFORMAT, "%s: merges[%zu] is not \"left right\"", r->what, i);
			ll = (size_t)(sp - m);
			memcpy(buf, m, ll);
			buf[ll] = '\0';
			left = buf, right = sp + 1;
		} else if (!left || !right) {
			return moe_fail(MOE_EFORMAT, "%s: merges[%zu] is not a pair of strings", r->what, i);
		}
		char joined[2048];
		const size_t lL = strlen(left), rL = strlen(right);
		if (lL + rL >= sizeof joined)
			continue; /* longer than any vocabulary entry could be */
		memcpy(joined, left, lL);
		memcpy(joined + lL, right, rL + 1);
		json_t *a = json_object_get(r->vocab, left), *b = json_object_get(r->vocab, right);
		json_t *m = json_object_get(r->vocab, joined);
		if (!json_is_integer(a) || !json_is_integer(b) || !json_is_integer(m))
			continue; /* HF refuses such files; a merge that cannot produce a token never applies */
		int32_t *e = s->merges + 3 * s->n_merges++;
		e[0] = (int32_t)json_integer_value(a), e[1] = (int32_t)json_integer_value(b);
		e[2] = (int32_t)json_integer_value(m);
	}
	return 0;
}

static int read_model(struct reader *r, json_t *model)
{
	struct tok_spec *s = r->s;
	if (!is_type(model, "BPE") && !(json_object_get(model, "merges") && !json_object_get(model, "type")))
		return moe_fail(MOE_EUNSUPPORTED, "%s: model type %s is not supported (BPE is)", r->what, type_of(model));
	const char *cont = json_string_value(json_object_get(model, "continuing_subword_prefix"));
	const char *eow = json_string_value(json_object_get(model, "end_of_word_suffix"));
	json_t *dropout = json_object_get(model, "dropout");
	if ((cont && *cont) || (eow && *eow))
		return moe_fail(MOE_EUNSUPPORTED, "%s: BPE with a subword prefix or end-of-word suffix", r->what);
	if (dropout && !json_is_null(dropout) && json_number_value(dropout) != 0.0)
		return moe_fail(MOE_EUNSUPPORTED, "%s: BPE dropout is random; not supported", r->what);
	if (json_is_true(json_object_get(model, "byte_fallback")))
		s->flags |= TOK_BYTE_FALLBACK;
	if (json_is_true(json_object_get(model, "fuse_unk")))
		s->flags |= TOK_FUSE_UNK;
	if (json_is_true(json_object_get(model, "ignore_merges")))
		s->flags |= TOK_IGNORE_MERGES;
	return 0;
}

int tok_spec_from_json(const char *json, size_t len, const char *config, size_t config_len, const char *what,
		       struct tok_spec *s)
{
	memset(s, 0, sizeof *s);
	s->unk = s->bos = -1;
	json_error_t jerr;
	json_t *root = json_loadb(json, len, 0, &jerr), *cfg = NULL;
	if (!root)
		return moe_fail(MOE_EFORMAT, "%s:%d:%d: malformed JSON: %s", what, jerr.line, jerr.column, jerr.text);
	int rc = 0;
	if (config && !(cfg = json_loadb(config, config_len, JSON_DECODE_INT_AS_REAL, &jerr))) {
		rc = moe_fail(MOE_EFORMAT, "%s: tokenizer_config.json:%d:%d: malformed JSON: %s", what, jerr.line, jerr.column,
			      jerr.text);
		goto out;
	}
	json_t *model = json_object_get(root, "model");
	struct reader r = {s, what, 0, json_object_get(model, "vocab")};
	if (!json_is_object(model)) {
		rc = moe_fail(MOE_EFORMAT, "%s: no \"model\" object: not a tokenizer.json", what);
		goto out;
	}
	if ((rc = read_model(&r, model)))
		goto out;
	if (!json_is_object(r.vocab) || !json_is_array(json_object_get(model, "merges"))) {
		rc = moe_fail(MOE_EFORMAT, "%s: BPE model without vocab object and merges list", what);
		goto out;
	}
	if ((rc = read_normalizer(&r, json_object_get(root, "normalizer"))) ||
	    (rc = read_pre_tokenizer(&r, json_object_get(root, "pre_tokenizer"))) ||
	    (rc = read_decoder(&r, json_object_get(root, "decoder"))) ||
	    (rc = read_vocab(&r, r.vocab, json_object_get(root, "added_tokens"))) ||
	    (rc = read_merges(&r, json_object_get(model, "merges"))) ||
	    (rc = read_post_processor(&r, json_object_get(root, "post_processor"))) || (cfg && (rc = read_config(&r, cfg))))
		goto out;
	s->unk = vocab_id(&r, json_string_value(json_object_get(model, "unk_token")));
	const int meta = (s->flags & (TOK_SPACE_TO_META | TOK_PREPEND_META | TOK_PREPEND_FIRST)) != 0;
	if (r.byte_level && !meta && !(s->flags & TOK_BYTE_FALLBACK)) {
		s->model = TOK_BYTE_LEVEL;
	} else if (!r.byte_level && meta) {
		s->model = TOK_SENTENCEPIECE;
	} else {
		rc = moe_fail(MOE_EUNSUPPORTED, "%s: BPE that is neither byte-level nor sentencepiece-style", what);
		goto out;
	}
	rc = tok_spec_check(s, what);
out:
	json_decref(root);
	json_decref(cfg);
	if (rc)
		tok_spec_free(s);
	return rc;
}

/* ---- the files around a tokenizer.json ---- */

int moe_tokenizer_read_files(const char *path, char **json, size_t *len, char **config, size_t *config_len)
{
	*config = NULL;
	*config_len = 0;
	int rc = moe_read_file(path, json, len);
	if (rc)
		return rc;
	const char *slash = strrchr(path, '/');
	const size_t dir = slash ? (size_t)(slash - path) + 1 : 0;
	char *cfg = malloc(dir + sizeof "tokenizer_config.json");
	if (!cfg)
		return moe_fail(MOE_ENOMEM, "out of memory");
	memcpy(cfg, path, dir);
	memcpy(cfg + dir, "tokenizer_config.json", sizeof "tokenizer_config.json");
	rc = moe_read_file(cfg, config, config_len);
	free(cfg);
	if (rc == MOE_ENOTFOUND)
		return 0; /* a bare tokenizer.json is fine */
	if (rc) {
		free(*json);
		*json = NULL;
	}
	return rc;
}

int moe_chat_template_from_config(const char *config, size_t len, const char *what, char **tmpl)
{
	*tmpl = NULL;
	json_error_t jerr;
	json_t *root = json_loadb(config, len, JSON_DECODE_INT_AS_REAL, &jerr);
	if (!root)
		return moe_fail(MOE_EFORMAT, "%s:%d:%d: malformed JSON: %s", what, jerr.line, jerr.column, jerr.text);
	json_t *ct = json_object_get(root, "chat_template");
	const char *t = json_string_value(ct);
	size_t i;
	json_t *v;
	json_array_foreach(ct, i, v) {
		const char *name = json_string_value(json_object_get(v, "name"));
		if (!t || (name && strcmp(name, "default") == 0))
			t = json_string_value(json_object_get(v, "template"));
	}
	int rc = 0;
	if (t && !(*tmpl = strdup(t)))
		rc = moe_fail(MOE_ENOMEM, "out of memory");
	json_decref(root);
	return rc;
}

int moe_tokenizer_add_eos_from_config(struct moe_tokenizer *t, const char *config, size_t len, const char *what)
{
	json_error_t jerr;
	json_t *root = json_loadb(config, len, 0, &jerr);
	if (!root)
		return moe_fail(MOE_EFORMAT, "%s:%d:%d: malformed JSON: %s", what, jerr.line, jerr.column, jerr.text);
	json_t *e = json_object_get(root, "eos_token_id");
	json_t *eos = json_is_array(e) ? json_incref(e) : as_list(e, NULL);
	size_t i;
	json_t *v;
	int rc = 0;
	json_array_foreach(eos, i, v) {
		if (!json_is_integer(v)) {
			rc = moe_fail(MOE_EFORMAT, "%s: eos_token_id is not a token id", what);
			break;
		}
		if ((rc = moe_tokenizer_add_eos(t, (int32_t)json_integer_value(v))))
			break;
	}
	json_decref(eos);
	json_decref(root);
	return rc;
}
