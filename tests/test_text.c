/* test_text.c - the tokenizer on the three real tokenizer files, in process:
 * every hard string of tests/fixtures against the ids of an independent
 * implementation (@lenml/tokenizers), from tokenizer.json and again after the
 * pack's binary form round trip; encode()'s special tokens; decode(encode(s)) == s
 * where the tokenizer is lossless; streaming decode emits only whole UTF-8
 * characters and adds up to the whole decode. tests/tokenizer.sh covers the CLI. */
#include "config.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "check.h"
#include "text/tokenizer.h"

static int same_ids(const int32_t *a, size_t n, json_t *want, int32_t first)
{
	const size_t off = first >= 0;
	if (json_array_size(want) + off != n || (off && a[0] != first))
		return 0;
	for (size_t i = 0; i < json_array_size(want); i++)
		if (a[i + off] != json_integer_value(json_array_get(want, i)))
			return 0;
	return 1;
}

static int valid_utf8(const char *s, size_t n)
{
	utf8proc_int32_t cp;
	for (size_t i = 0; i < n;) {
		utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
		if (l <= 0)
			return 0;
		i += (size_t)l;
	}
	return 1;
}

static void run_cases(struct moe_tokenizer *t, const char *name, const char *how, json_t *cases)
{
	const int is_qwen = strcmp(name, "qwen3") == 0, is_deepseek = strcmp(name, "deepseek-v3") == 0;
	const int is_spm = strcmp(name, "mistral-spm") == 0;
	size_t i, exact = 0;
	json_t *c;
	json_array_foreach(cases, i, c) {
		const char *text = json_string_value(json_object_get(c, "text"));
		const size_t len = json_string_length(json_object_get(c, "text"));
		int32_t *ids = NULL, *ids_sp = NULL;
		size_t n = 0, n_sp = 0;
		CHECK(moe_tokenize(t, text, len, 0, &ids, &n) == 0, "%s", text);
		const int ok = same_ids(ids, n, json_object_get(c, "ids"), -1);
		CHECK(ok, "%s (%s): ids of '%.40s' differ", name, how, text);
		/* encode()'s default: the post-processor, and transformers' Llama-class rule
		 * (DeepSeek-V3's config names LlamaTokenizerFast with add_bos_token) */
		CHECK(moe_tokenize(t, text, len, 1, &ids_sp, &n_sp) == 0, "%s", text);
		CHECK(is_deepseek ? same_ids(ids_sp, n_sp, json_object_get(c, "ids"), 0)
				  : same_ids(ids_sp, n_sp, json_object_get(c, "ids_special"), -1),
		      "%s (%s): ids with special tokens of '%.40s' differ", name, how, text);
		exact += ok;
		/* lossless but for Qwen's NFC, and sentencepiece's "▁" before text after an added token */
		char *back = NULL;
		size_t bl = 0;
		CHECK(moe_detokenize(t, ids, n, 0, &back, &bl) == 0, "%s", text);
		utf8proc_uint8_t *nfc = NULL;
		if (is_qwen && len)
			utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, &nfc, UTF8PROC_COMPOSE | UTF8PROC_STABLE);
		const char *want = nfc ? (const char *)nfc : text;
		if (!(is_spm && strstr(text, "</s>")))
			CHECK(back && strcmp(back, want) == 0, "%s: decode(encode('%.40s')) = '%.40s'", name, text, back);
		/* streaming: one id at a time */
		struct moe_detok_stream d;
		moe_detok_stream_init(&d, t, 0);
		size_t k = 0;
		char *joined = malloc(bl + 16);
		for (size_t j = 0; joined && j <= n; j++) {
			const char *piece;
			size_t pl;
			int rc = j < n ? moe_detok_stream_push(&d, ids[j], &piece, &pl) : moe_detok_stream_finish(&d, &piece, &pl);
			CHECK(rc == 0 && valid_utf8(piece, pl), "%s: piece %zu of '%.40s' not whole characters", name, j, text);
			if (rc || k + pl > bl)
				break;
			memcpy(joined + k, piece, pl);
			k += pl;
		}
		CHECK(joined && k == bl && memcmp(joined, back, bl) == 0, "%s: streamed decode of '%.40s' differs", name, text);
		moe_detok_stream_free(&d);
		free(joined);
		free(nfc);
		free(back);
		free(ids);
		free(ids_sp);
	}
	printf("%s (%s): %zu of %zu strings exact\n", name, how, exact, json_array_size(cases));
}

/* one tokenizer.json (with its tokenizer_config.json beside it) against a fixture of
 * {text, ids, ids_special}: from the file, then from the pack's binary form, whose every
 * truncation is refused */
static void check_tokenizer(const char *name, const char *path, const char *fpath)
{
	json_error_t jerr;
	json_t *cases = json_load_file(fpath, 0, &jerr);
	char *json = NULL, *config = NULL;
	size_t len, config_len;
	struct moe_tokenizer *t = NULL, *t2 = NULL;
	CHECK(cases != NULL, "%s: %s", fpath, jerr.text);
	CHECK(moe_tokenizer_read_files(path, &json, &len, &config, &config_len) == 0, "%s", moe_last_error());
	CHECK(config != NULL, "%s: no tokenizer_config.json beside it", path);
	if (!cases || !json || moe_tokenizer_from_json(json, len, config, config_len, path, &t)) {
		CHECK(0, "%s: %s", path, moe_last_error());
		json_decref(cases);
		free(json);
		free(config);
		return;
	}
	run_cases(t, name, "tokenizer.json", cases);
	void *bin;
	size_t bin_len;
	CHECK(moe_tokenizer_to_binary(t, &bin, &bin_len) == 0, "%s", moe_last_error());
	CHECK(moe_tokenizer_from_binary(bin, bin_len, "bin", &t2) == 0, "%s", moe_last_error());
	if (t2)
		run_cases(t2, name, "binary form", cases);
	for (size_t cut = 0; cut < bin_len; cut += cut < 256 ? 1 : bin_len / 97 + 1) {
		struct moe_tokenizer *bad = NULL;
		CHECK(moe_tokenizer_from_binary(bin, cut, "cut", &bad) != 0, "%s: binary cut at %zu accepted", name, cut);
		moe_tokenizer_free(bad);
	}
	free(bin);
	moe_tokenizer_free(t);
	moe_tokenizer_free(t2);
	free(json);
	free(config);
	json_decref(cases);
}

/* Hostile tokenizer files: ids that would ask for GBs are refused before any
 * allocation; every truncation of a small binary form (three ids: its sections need
 * padding) is refused without reading past the cut (the copy is exactly that long,
 * so the sanitizer build sees any read beyond it). */
static void test_hostile(void)
{
	struct moe_tokenizer *t = NULL;
	static const char huge[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1000000000}, \"merges\": []}}";
	CHECK(moe_tokenizer_from_json(huge, strlen(huge), NULL, 0, "huge", &t) != 0 &&
	      strstr(moe_last_error(), "vocab entry 'b' has no id in 0..4194303"), "id 10**9: %s", moe_last_error());
	moe_tokenizer_free(t);
	static const char added[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
				    "\"added_tokens\": [{\"id\": 4194304, \"content\": \"<x>\"}]}";
	t = NULL;
	CHECK(moe_tokenizer_from_json(added, strlen(added), NULL, 0, "added", &t) != 0 &&
	      strstr(moe_last_error(), "added_tokens[0] needs content and an id in 0..4194303"), "added id: %s",
	      moe_last_error());
	moe_tokenizer_free(t);
	static const char small[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
				    "\"merges\": [\"a b\"]}, \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\", \"split\": false}}";
	t = NULL;
	void *bin = NULL;
	size_t len = 0;
	CHECK(moe_tokenizer_from_json(small, strlen(small), NULL, 0, "small", &t) == 0, "small: %s", moe_last_error());
	CHECK(t && moe_tokenizer_to_binary(t, &bin, &len) == 0, "small binary");
	for (size_t cut = 0; bin && cut < len; cut++) {
		void *part = malloc(cut ? cut : 1);
		memcpy(part, bin, cut);
		struct moe_tokenizer *bad = NULL;
		CHECK(moe_tokenizer_from_binary(part, cut, "cut", &bad) != 0, "small binary cut at %zu of %zu accepted", cut, len);
		moe_tokenizer_free(bad);
		free(part);
	}
	free(bin);
	moe_tokenizer_free(t);
}

int main(int argc, char **argv)
{
	if (argc == 4) { /* test_text TOKENIZER.json FIXTURE.json NAME: that one alone (tokenizer_gptoss.sh) */
		check_tokenizer(argv[3], argv[1], argv[2]);
		return check_report("test_text");
	}
	test_hostile();
	const char *data = getenv("TOKENIZER_DATA"), *fixtures = getenv("FIXTURES"), *demo = getenv("DEMO_MODEL");
	if (!data || !fixtures || !demo) {
		fprintf(stderr, "usage: TOKENIZER_DATA=dir FIXTURES=dir DEMO_MODEL=dir %s\n", argv[0]);
		return 2;
	}
	/* three real tokenizers, and the one tools/demo/train_demo.py trained for the demo model */
	static const char *names[] = {"qwen3", "deepseek-v3", "mistral-spm", "kjv-moe"};
	for (size_t k = 0; k < 4; k++) {
		char path[4096], fpath[4096];
		if (k < 3)
			snprintf(path, sizeof path, "%s/%s/tokenizer.json", data, names[k]);
		else
			snprintf(path, sizeof path, "%s/tokenizer.json", demo);
		snprintf(fpath, sizeof fpath, "%s/tokenizer_%s.json", fixtures, names[k]);
		check_tokenizer(names[k], path, fpath);
	}
	return check_report("test_text");
}
