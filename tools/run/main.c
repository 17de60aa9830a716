/* moe-run - run a pack: the prompt (text, a chat turn or token ids) prefilled in
 * batches, then sampling token by token, streaming text (or ids) as it comes. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fileio.h"
#include "common/progress.h"
#include "engine/engine.h"
#include "cache/cache.h"
#include "text/template.h"
#include "text/tokenizer.h"

static void usage(FILE *fp)
{
	fputs("usage: moe-run -m PACK [-p TEXT | --tokens ID,ID,... | --chat ...] [options]   (text on stdin without -p)\n"
	      "       moe-run --tokenize|--detokenize (-m PACK | --tokenizer tokenizer.json) [-p TEXT]\n"
	      "  -m, --model PACK         the pack to run (moe-pack makes them)\n"
	      "  -p, --prompt TEXT        the prompt (default: all of stdin); the generated text is printed\n"
	      "      --tokens IDS         the prompt as comma-separated token ids; generated ids are printed\n"
	      "  -n, --n-predict N        tokens to generate after the prompt (default 16; -1: until the end\n"
	      "                           of sequence or a full context)\n"
	      "      --stop TEXT          stop when the output contains TEXT (not printed); up to 16 times\n"
	      "      --ignore-eos         go on past the end-of-sequence token\n"
	      "chat:\n"
	      "      --chat               the prompt is a user turn, rendered with the model's chat template\n"
	      "      --system TEXT        with --chat: a system turn first\n"
	      "      --messages FILE      with --chat: the conversation, a JSON array of {\"role\", \"content\"}\n"
	      "      --chat-template T    with --chat: a template file, or mistral-v1 / chatml (built in)\n"
	      "      --chat-template-kwargs JSON  with --chat: more template variables, e.g. '{\"enable_thinking\": false}'\n"
	      "      --print-prompt       with --chat: print the rendered prompt and exit\n"
	      "sampling:\n"
	      "      --temp T             temperature; 0 is greedy (default 0)\n"
	      "      --top-k K            keep the K most likely tokens (default 40; 0 = all)\n"
	      "      --top-p P            keep the smallest set with probability >= P (default 1.0)\n"
	      "      --min-p P            drop tokens below P x the top probability (default 0)\n"
	      "      --repeat-penalty R   divide the logits of tokens already seen by R, once each (default 1.0)\n"
	      "      --seed N             sampling seed (default 1): same seed, same output\n"
	      "engine:\n"
	      "  -t, --threads N          threads (default: all CPUs)\n"
	      "  -c, --ctx-size N         context length in tokens (default 4096, at most the model's)\n"
	      "  -b, --batch N            prompt tokens per forward pass, 1..64 (default 32)\n"
	      "      --kv-type T          KV cache type: f16 (default) or f32\n"
	      "      --ram-budget SIZE    cap on model memory: dense weights + KV cache + expert cache (e.g. 900M, 12G;\n"
	      "                           also MOE_RAM_BUDGET; default 90% of available memory)\n"
	      "      --truncate           shorten a prompt that leaves less than -n tokens of room in the context:\n"
	      "                           keep its first --keep tokens and its last ones\n"
	      "      --context-shift      when the context fills, drop the older half of it (after the first\n"
	      "                           --keep tokens) and go on; -n -1 then runs until end of sequence\n"
	      "      --keep N             prompt tokens kept at the start by --truncate and --context-shift\n"
	      "                           (default 0; -1: the whole prompt)\n"
	      "expert cache:\n"
	      "      --cache-policy P     lru (default) or lfu (frequency with aging)\n"
	      "      --prefetch-depth K   guess the experts of the next K layers, 0..8 (default 1; 0 = off)\n"
	      "      --io-depth N         expert reads in flight, 1..256 (default 8)\n"
	      "      --no-verify          skip the XXH3 check of each expert read\n"
	      "      --expert-timeout S   fail if an expert has not arrived after S seconds (default 30)\n"
	      "      --mlock              lock the expert cache in RAM\n"
	      "      --no-offload         no cache: experts through the page cache (mmap), as llama.cpp does\n"
	      "      --trace-out FILE     the experts and router scores of every token and layer (moe-bench sim)\n"
	      "quality:\n"
	      "      --perplexity FILE    perplexity of the model on a text file, in chunks of -c tokens\n"
	      "      --kl-base LOGITS     with --perplexity: mean KL and top-1 agreement against saved logits\n"
	      "                           (--logits-out of an earlier --perplexity run, e.g. of an f32 pack)\n"
	      "output:\n"
	      "      --logits-out FILE    float32 logits of every prompt position, [n_prompt][n_vocab], no header\n"
	      "      --stats              prefill and decode speed on stderr\n"
	      "      --stats-json FILE    the same figures as JSON (keys in moe-run(1))\n"
	      "tokenizer:\n"
	      "      --tokenize           print the ids of the text (-p, else stdin) as a JSON array\n"
	      "      --detokenize         print the text of a JSON array of ids (-p, else stdin)\n"
	      "      --tokenizer FILE     a tokenizer.json to use instead of the pack's\n"
	      "      --add-special        add the BOS/EOS the tokenizer's post-processor adds (the default)\n"
	      "      --no-add-special     do not\n"
	      "      --skip-special       --detokenize: leave special tokens out\n"
	      "  -h, --help               this text\n"
	      "  -V, --version            version\n"
	      "See moe-run(1).\n",
	      fp);
}

static uint64_t rng_state;
static double rng_uniform(void) /* splitmix64 */
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return (double)((z ^ (z >> 31)) >> 11) * 0x1p-53;
}

struct sampler {
	double temp, top_p, min_p, repeat_penalty;
	size_t top_k;
};

struct cand {
	int id;
	double p;
};

static int cmp_cand(const void *a, const void *b)
{
	double x = ((const struct cand *)a)->p, y = ((const struct cand *)b)->p;
	return x < y ? 1 : x > y ? -1 : ((const struct cand *)a)->id - ((const struct cand *)b)->id;
}

/* One token from logits (modified in place by the repetition penalty). */
static int sample(const struct sampler *sp, float *logits, size_t vocab, const int32_t *seen, size_t n_seen,
		  struct cand *c)
{
	if (sp->repeat_penalty != 1.0) {
		/* once per distinct token, however often it occurred (as llama.cpp does) */
		for (size_t i = 0; i < vocab; i++)
			c[i].id = 0;
		for (size_t i = 0; i < n_seen; i++) {
			if (c[seen[i]].id)
				continue;
			c[seen[i]].id = 1;
			float *l = &logits[seen[i]];
			*l = *l > 0 ? *l / (float)sp->repeat_penalty : *l * (float)sp->repeat_penalty;
		}
	}
	size_t best = 0;
	for (size_t i = 1; i < vocab; i++)
		if (logits[i] > logits[best])
			best = i;
	if (sp->temp <= 0)
		return (int)best;
	double sum = 0;
	for (size_t i = 0; i < vocab; i++) {
		c[i] = (struct cand){(int)i, exp(((double)logits[i] - logits[best]) / sp->temp)};
		sum += c[i].p;
	}
	qsort(c, vocab, sizeof *c, cmp_cand);
	size_t keep = sp->top_k && sp->top_k < vocab ? sp->top_k : vocab;
	double acc = 0;
	for (size_t i = 0; i < keep; i++) {
		acc += c[i].p / sum;
		if (c[i].p < sp->min_p * c[0].p || (i > 0 && acc - c[i].p / sum >= sp->top_p)) {
			keep = i;
			break;
		}
	}
	if (keep == 0)
		keep = 1;
	double tot = 0;
	for (size_t i = 0; i < keep; i++)
		tot += c[i].p;
	double r = rng_uniform() * tot;
	for (size_t i = 0; i < keep; i++) {
		r -= c[i].p;
		if (r <= 0)
			return c[i].id;
	}
	return c[keep - 1].id;
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

static int fail(void)
{
	fprintf(stderr, "moe-run: %s\n", moe_last_error());
	return 1;
}

static int parse_tokens(const char *s, int32_t **out, size_t *n)
{
	size_t cap = 16, k = 0;
	int32_t *v = malloc(cap * sizeof *v);
	const char *p = s;
	while (v && *p) {
		char *end;
		errno = 0;
		long x = strtol(p, &end, 10);
		if (end == p || errno || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
			free(v);
			return moe_fail(MOE_EINVAL, "--tokens: '%s' is not a comma-separated list of token ids", s);
		}
		if (k == cap) {
			int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
			if (!nv)
				break;
			v = nv;
		}
		v[k++] = (int32_t)x;
		p = *end ? end + 1 : end;
	}
	if (!v)
		return moe_fail(MOE_ENOMEM, "out of memory");
	if (k == 0) {
		free(v);
		return moe_fail(MOE_EINVAL, "--tokens: empty prompt");
	}
	*out = v;
	*n = k;
	return 0;
}

/* all of stdin (or -p) */
static char *read_input(const char *prompt, size_t *len)
{
	if (prompt) {
		*len = strlen(prompt);
		return strdup(prompt);
	}
	size_t cap = 4096, n = 0, r;
	char *buf = malloc(cap);
	while (buf && (r = fread(buf + n, 1, cap - n - 1, stdin)) > 0) {
		n += r;
		if (n + 1 == cap) {
			char *nb = realloc(buf, cap *= 2);
			if (!nb) {
				free(buf);
				return NULL;
			}
			buf = nb;
		}
	}
	if (buf)
		buf[n] = '\0';
	*len = n;
	return buf;
}

/* The tokenizer of --tokenizer FILE (with its tokenizer_config.json) or of the
 * pack; and the chat template that goes with it (NULL if none). */
static int load_tokenizer(const moe_pack *pack, const char *model, const char *tok_path, struct moe_tokenizer **t,
			  char **tmpl)
{
	*t = NULL;
	*tmpl = NULL;
	if (tok_path) {
		char *json, *config;
		size_t len, config_len;
		int rc = moe_tokenizer_read_files(tok_path, &json, &len, &config, &config_len);
		if (!rc)
			rc = moe_tokenizer_from_json(json, len, config, config_len, tok_path, t);
		if (!rc && config)
			rc = moe_chat_template_from_config(config, config_len, "tokenizer_config.json", tmpl);
		free(json);
		free(config);
		return rc;
	}
	int rc = moe_tokenizer_from_pack(pack, model, t);
	const void *p;
	uint64_t n;
	if (!rc && moe_pack_meta_bytes(pack, "tokenizer.chat_template", &p, &n) == 0 && !(*tmpl = strndup(p, n)))
		rc = moe_fail(MOE_ENOMEM, "out of memory");
	return rc;
}

/* a JSON array of ids, read leniently: every integer in order */
static int parse_id_list(const char *in, int32_t **out, size_t *n_out)
{
	size_t cap = 64, n = 0;
	int32_t *ids = malloc(cap * sizeof *ids);
	for (const char *p = in; ids && *p;) {
		if ((*p >= '0' && *p <= '9') || *p == '-') {
			char *end;
			long v = strtol(p, &end, 10);
			if (n == cap) {
				int32_t *ni = realloc(ids, (cap *= 2) * sizeof *ids);
				if (!ni) {
					free(ids);
					ids = NULL;
					break;
				}
				ids = ni;
			}
			ids[n++] = v < INT32_MIN || v > INT32_MAX ? -1 : (int32_t)v;
			p = end;
		} else {
			p++;
		}
	}
	if (!ids)
		return moe_fail(MOE_ENOMEM, "out of memory");
	*out = ids;
	*n_out = n;
	return 0;
}

/* what --tokenize prints: one JSON array */
static void print_ids(const int32_t *ids, size_t n)
{
	putchar('[');
	for (size_t i = 0; i < n; i++)
		printf("%s%d", i ? ", " : "", ids[i]);
	puts("]");
}

/* --tokenize / --detokenize: text <-> a JSON array of ids */
static int text_tool(int detok, const char *model, const char *tok_path, const char *prompt, int add_special,
		     int skip_special)
{
	moe_pack *pack = NULL;
	struct moe_tokenizer *t = NULL;
	char *tmpl = NULL, *in = NULL;
	int32_t *ids = NULL;
	size_t len, n;
	int rc = 1;
	if (!tok_path && !model) {
		fputs("moe-run: --tokenize/--detokenize need -m PACK or --tokenizer FILE\n", stderr);
		return 2;
	}
	if ((!tok_path && moe_pack_open(model, &pack)) || load_tokenizer(pack, model, tok_path, &t, &tmpl)) {
		fail();
		goto out;
	}
	if (!(in = read_input(prompt, &len))) {
		fputs("moe-run: out of memory\n", stderr);
		goto out;
	}
	if (!detok) {
		if (moe_tokenize(t, in, len, add_special, &ids, &n)) {
			fail();
			goto out;
		}
		print_ids(ids, n);
	} else {
		char *text;
		size_t tl;
		if (parse_id_list(in, &ids, &n) || moe_detokenize(t, ids, n, skip_special, &text, &tl)) {
			fail();
			goto out;
		}
		fwrite(text, 1, tl, stdout);
		free(text);
	}
	rc = moe_stdout_check() == MOE_STDOUT_FAILED;
out:
	free(ids);
	free(in);
	free(tmpl);
	moe_tokenizer_free(t);
	if (pack)
		moe_pack_close(pack);
	return rc;
}

/* The prompt as ids: --tokens, or text (-p / stdin) through the tokenizer, as a
 * chat turn with --chat. With --print-prompt, the rendered chat text is printed
 * and *ids stays NULL. */
struct prompt_options {
	const char *tokens, *text, *system, *messages, *chat_template, *chat_kwargs;
	int chat, print_prompt, add_special;
};

static int chat_messages(const struct prompt_options *po, const char *text, size_t len, char **out)
{
	if (po->messages) {
		size_t n;
		return moe_read_file(po->messages, out, &n);
	}
	json_t *msgs = json_array(), *user = json_object();
	if (po->system) {
		json_t *sys = json_object();
		json_object_set_new(sys, "role", json_string("system"));
		json_object_set_new(sys, "content", json_string(po->system));
		json_array_append_new(msgs, sys);
	}
	json_object_set_new(user, "role", json_string("user"));
	json_object_set_new(user, "content", json_stringn(text, len));
	json_array_append_new(msgs, user);
	*out = json_dumps(msgs, JSON_COMPACT);
	json_decref(msgs);
	return *out ? 0 : moe_fail(MOE_EINVAL, "the prompt is not UTF-8 text");
}

/* --chat-template NAME|FILE, else the pack's, else the built-in one of its family */
static int chat_template(const struct prompt_options *po, const moe_pack *pack, char **tmpl)
{
	if (po->chat_template) {
		const char *b = moe_chat_template_builtin(po->chat_template);
		size_t n;
		free(*tmpl);
		*tmpl = NULL;
		if (b)
			return (*tmpl = strdup(b)) ? 0 : moe_fail(MOE_ENOMEM, "out of memory");
		return moe_read_file(po->chat_template, tmpl, &n);
	}
	const char *arch = NULL;
	const void *p;
	uint64_t n;
	if (!*tmpl && pack && moe_pack_meta_bytes(pack, "general.architecture", &p, &n) == 0 && n == 7 &&
	    !memcmp(p, "mixtral", 7))
		arch = "mixtral";
	if (!*tmpl && arch)
		return (*tmpl = strdup(moe_chat_template_builtin("mistral-v1"))) ? 0 : moe_fail(MOE_ENOMEM, "out of memory");
	if (!*tmpl)
		return moe_fail(MOE_ENOTFOUND, "no chat template in the pack or tokenizer_config.json; pass --chat-template NAME|FILE");
	return 0;
}

static int build_prompt(const struct prompt_options *po, const moe_pack *pack, const struct moe_tokenizer *t,
			char *tmpl, int32_t **ids, size_t *n)
{
	*ids = NULL;
	*n = 0;
	if (po->tokens)
		return parse_tokens(po->tokens, ids, n);
	if (!t)
		return moe_fail(MOE_ENOTFOUND, "the pack has no tokenizer: give the prompt as --tokens ID,ID,...");
	size_t len = 0;
	char *text = po->messages ? NULL : read_input(po->text, &len), *msgs = NULL, *rendered = NULL;
	char *bos = NULL, *eos = NULL; /* token strings for the template */
	int rc = 0;
	if (!po->messages && !text)
		return moe_fail(MOE_ENOMEM, "out of memory");
	if (po->chat) {
		size_t rl, bl = 0, el = 0;
		const char *b = NULL, *e = NULL;
		const int32_t *eos_ids;
		if (moe_tokenizer_bos(t) >= 0)
			b = moe_tokenizer_token(t, moe_tokenizer_bos(t), &bl);
		if (moe_tokenizer_eos(t, &eos_ids))
			e = moe_tokenizer_token(t, eos_ids[0], &el);
		if ((b && !(bos = strndup(b, bl))) || (e && !(eos = strndup(e, el)))) {
			rc = moe_fail(MOE_ENOMEM, "out of memory");
			goto out;
		}
		if ((rc = chat_messages(po, text, len, &msgs)) ||
		    (rc = moe_chat_render(tmpl, msgs, bos, eos, 1, po->chat_kwargs, &rendered, &rl)))
			goto out;
		if (po->print_prompt) {
			fwrite(rendered, 1, rl, stdout);
			goto out;
		}
		/* the template wrote the special tokens itself (as apply_chat_template encodes) */
		rc = moe_tokenize(t, rendered, rl, 0, ids, n);
	} else {
		rc = moe_tokenize(t, text, len, po->add_special, ids, n);
	}
	if (!rc && !*n)
		rc = moe_fail(MOE_EINVAL, "empty prompt");
out:
	free(text);
	free(msgs);
	free(rendered);
	free(bos);
	free(eos);
	return rc;
}

/* log(sum exp(row)), computed stably; *best gets the argmax */
static double log_sum_exp(const float *row, size_t n, size_t *best)
{
	double mx = row[0], sum = 0;
	*best = 0;
	for (size_t v = 1; v < n; v++)
		if (row[v] > mx)
			mx = row[v], *best = v;
	for (size_t v = 0; v < n; v++)
		sum += exp(row[v] - mx);
	return mx + log(sum);
}

/* --perplexity: the tokens in chunks of ctx, each from an empty cache; every token
 * after a chunk's first is scored on the logits of the ones before it (as
 * llama.cpp's perplexity tool does, without its half-chunk warm-up). With
 * logits_out, the scored rows are saved; with kl_base, compared with saved ones. */
static int perplexity(struct moe_session *s, const int32_t *ids, size_t n, size_t ctx, size_t batch,
		      const char *logits_out, const char *kl_base, double *ppl, size_t *n_scored)
{
	struct moe_progress bar;
	moe_progress_start(&bar, isatty(STDERR_FILENO), "perplexity", "tokens", n);
	const size_t vocab = s->m->hp.vocab;
	float *lg = malloc(batch * vocab * sizeof *lg), *brow = malloc(vocab * sizeof *brow);
	FILE *out = logits_out ? fopen(logits_out, "wb") : NULL, *base = kl_base ? fopen(kl_base, "rb") : NULL;
	double nll = 0, kl = 0;
	size_t scored = 0, agree = 0, chunks = 0;
	int rc = 0;
	if (!lg || !brow) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto done;
	}
	if ((logits_out && !out) || (kl_base && !base)) {
		rc = moe_fail(MOE_EIO, "%s: %s", !out && logits_out ? logits_out : kl_base, strerror(errno));
		goto done;
	}
	if (n < 2) {
		rc = moe_fail(MOE_EINVAL, "--perplexity: %zu tokens, nothing to predict", n);
		goto done;
	}
	for (size_t c0 = 0; c0 + 1 < n; c0 += ctx, chunks++) {
		const size_t len = n - c0 < ctx ? n - c0 : ctx;
		s->n_past = 0; /* a fresh context: the cache is overwritten from position 0 */
		for (size_t i = 0; i < len && !rc; i += batch) {
			const size_t k = len - i < batch ? len - i : batch;
			if ((rc = moe_forward(s, ids + c0 + i, k, lg, NULL)))
				break;
			moe_progress_update(&bar, c0 + i + k, 0);
			for (size_t t = 0; t < k && i + t + 1 < len; t++) {
				const float *row = lg + t * vocab;
				size_t best, bbest;
				const double lse = log_sum_exp(row, vocab, &best);
				nll += lse - row[ids[c0 + i + t + 1]];
				scored++;
				if (out && fwrite(row, sizeof *row, vocab, out) != vocab) {
					rc = moe_fail(MOE_EIO, "%s: %s", logits_out, strerror(errno));
					break;
				}
				if (base) {
					if (fread(brow, sizeof *brow, vocab, base) != vocab) {
						rc = moe_fail(MOE_EFORMAT, "--kl-base %s: fewer rows than the %zu scored tokens", kl_base,
							      scored);
						break;
					}
					const double blse = log_sum_exp(brow, vocab, &bbest);
					double d = 0;
					for (size_t v = 0; v < vocab; v++) /* KL(base || this) */
						d += exp(brow[v] - blse) * ((brow[v] - blse) - (row[v] - lse));
					kl += d;
					agree += best == bbest;
				}
			}
		}
		if (rc)
			break;
	}
	moe_progress_end(&bar);
	if (!rc && base && fread(brow, 1, 1, base) == 1)
		rc = moe_fail(MOE_EFORMAT, "--kl-base %s: more rows than the %zu scored tokens", kl_base, scored);
	if (!rc) {
		*ppl = exp(nll / (double)scored);
		*n_scored = scored;
		printf("perplexity %.4f over %zu tokens (%zu chunks of up to %zu)\n", *ppl, scored, chunks, ctx);
		if (base)
			printf("mean KL %.6g, top-1 agreement %.4f against %s\n", kl / (double)scored,
			       (double)agree / (double)scored, kl_base);
	}
done:
	if (out && fclose(out) != 0 && !rc)
		rc = moe_fail(MOE_EIO, "%s: %s", logits_out, strerror(errno));
	if (rc && out)
		unlink(logits_out); /* never leave a short file that looks like logits */
	if (base)
		fclose(base);
	free(lg);
	free(brow);
	return rc;
}

struct token_stats {
	uint64_t hits, prefetch_hits, misses, bytes;
	double wait;
};

/* The expert cache's totals, as --stats prints them and as stats-json's "experts" object. */
struct expert_report {
	struct moe_expert_stats xs;
	const char *policy;
	long prefetch_depth;
	uint64_t cache_bytes;
	double precision, recall;
};

static void expert_report_init(struct expert_report *r, struct moe_model *m, const char *policy, long depth,
			       uint64_t cache_bytes)
{
	m->experts->stats(m->experts, &r->xs);
	const struct moe_expert_stats *x = &r->xs;
	r->policy = policy, r->prefetch_depth = depth, r->cache_bytes = cache_bytes;
	r->precision = x->prefetch_issued ? (double)x->prefetch_hits / (double)x->prefetch_issued : 0;
	r->recall = x->prefetch_hits + x->misses ? (double)x->prefetch_hits / (double)(x->prefetch_hits + x->misses) : 0;
}

static void expert_report_json(FILE *fp, const struct expert_report *r)
{
	const struct moe_expert_stats *x = &r->xs;
	fprintf(fp, " \"experts\": {\"io\": \"%s\", \"policy\": \"%s\", \"prefetch_depth\": %ld, "
		"\"cache_bytes\": %llu, \"slots\": %llu, \"slots_used\": %llu, \"uses\": %llu, \"hits\": %llu, "
		"\"prefetch_hits\": %llu, \"misses\": %llu, \"prefetch_issued\": %llu, \"prefetch_precision\": %.4f, "
		"\"prefetch_recall\": %.4f, \"bytes_read\": %llu, \"rereads\": %llu, \"read_seconds\": %.6f, "
		"\"read_gb_per_second\": %.3f, \"wait_seconds\": %.6f}",
		x->io_mode, r->policy, r->prefetch_depth, (unsigned long long)r->cache_bytes, (unsigned long long)x->slots,
		(unsigned long long)x->slots_used, (unsigned long long)(x->hits + x->prefetch_hits + x->misses),
		(unsigned long long)x->hits, (unsigned long long)x->prefetch_hits, (unsigned long long)x->misses,
		(unsigned long long)x->prefetch_issued, r->precision, r->recall, (unsigned long long)x->bytes_read,
		(unsigned long long)x->rereads, x->io_seconds, x->io_seconds > 0 ? x->bytes_read / x->io_seconds / 1e9 : 0.0,
		x->wait_seconds);
}

static void expert_report_line(const struct expert_report *r)
{
	const struct moe_expert_stats *x = &r->xs;
	fprintf(stderr, "moe-run: experts: %llu uses, %llu hits + %llu prefetched + %llu misses; prefetch precision %.2f recall %.2f; "
		"read %.2f GB at %.2f GB/s (%s); waited %.3f s; cache %llu/%llu slots (%.1f MB, %s)\n",
		(unsigned long long)(x->hits + x->prefetch_hits + x->misses), (unsigned long long)x->hits,
		(unsigned long long)x->prefetch_hits, (unsigned long long)x->misses, r->precision, r->recall,
		x->bytes_read / 1e9, x->io_seconds > 0 ? x->bytes_read / x->io_seconds / 1e9 : 0.0, x->io_mode,
		x->wait_seconds, (unsigned long long)x->slots_used, (unsigned long long)x->slots, r->cache_bytes / 1048576.0,
		r->policy);
}

/* On a terminal, one line once loaded: what runs, and where the memory goes. */
static void load_banner(const moe_pack *pack, const struct moe_model *m, uint64_t resident, uint64_t session,
			uint64_t cache_bytes, int threads)
{
	const struct moe_hparams *hp = &m->hp;
	struct moe_expert_stats xs;
	m->experts->stats(m->experts, &xs);
	fprintf(stderr, "moe-run: %s: %s, %llu layers, %llu experts (%llu active), %.1f MB; dense %.1f MB + KV and "
		"scratch %.1f MB + ", moe_pack_path(pack), moe_arch_name(hp->arch), (unsigned long long)hp->n_layers,
		(unsigned long long)hp->n_experts, (unsigned long long)hp->n_experts_used,
		moe_pack_file_size(pack) / 1048576.0, resident / 1048576.0, session / 1048576.0);
	if (cache_bytes)
		fprintf(stderr, "expert cache %.1f MB (%llu of %zu experts)", cache_bytes / 1048576.0,
			(unsigned long long)xs.slots, moe_pack_expert_count(pack));
	else
		fputs("experts through the page cache", stderr);
	fprintf(stderr, "; kernels %s, %d threads\n", m->kernels->name, threads);
}

/* stats-json is written whole or not at all: a failed write removes it */
static int close_stats_json(FILE **fpp, const char *path)
{
	FILE *fp = *fpp;
	*fpp = NULL;
	if (fclose(fp) != 0) {
		fprintf(stderr, "moe-run: %s: cannot write: %s\n", path, strerror(errno));
		unlink(path);
		return -1;
	}
	return 0;
}

/* Generated text goes out as it comes, except what could be the start of a stop
 * string; returns 1 once a stop string has been seen (the text before it printed). */
struct text_out {
	char *buf;
	size_t n, cap, printed, longest_stop;
	const char **stops;
	size_t n_stops;
};

static int text_out_add(struct text_out *o, const char *s, size_t n, int final)
{
	if (o->n + n + 1 > o->cap) {
		size_t cap = o->cap ? o->cap : 256;
		while (cap < o->n + n + 1)
			cap *= 2;
		char *nb = realloc(o->buf, cap);
		if (!nb)
			return -1;
		o->buf = nb, o->cap = cap;
	}
	memcpy(o->buf + o->n, s, n);
	o->n += n;
	o->buf[o->n] = '\0';
	/* a stop string can only end in the new bytes */
	const size_t from = o->printed;
	size_t stop_at = o->n + 1;
	for (size_t i = 0; i < o->n_stops; i++) {
		const char *hit = memmem(o->buf + from, o->n - from, o->stops[i], strlen(o->stops[i]));
		if (hit && (size_t)(hit - o->buf) < stop_at)
			stop_at = (size_t)(hit - o->buf);
	}
	size_t upto = stop_at <= o->n ? stop_at : final || !o->longest_stop ? o->n
					  : o->n - (o->n - o->printed < o->longest_stop - 1 ? o->n - o->printed
											  : o->longest_stop - 1);
	while (upto > o->printed && upto < o->n && ((unsigned char)o->buf[upto] & 0xC0) == 0x80)
		upto--; /* whole characters only */
	fwrite(o->buf + o->printed, 1, upto - o->printed, stdout);
	fflush(stdout);
	o->printed = upto;
	return stop_at <= o->n;
}

/* --context-shift: the context is full (win holds its tokens, then the one sampled
 * from them). Drop the older half of what follows the first n_keep, as llama.cpp's
 * context shift does, and rebuild the KV cache from what is left: a prefill, so the
 * cache is exactly that of a prompt made of those tokens, whatever the positional
 * encoding. */
static int shift_context(struct moe_session *s, int32_t *win, size_t *n_win, size_t n_keep, size_t batch)
{
	const size_t n_past = s->n_past, n_discard = (n_past - n_keep) / 2;
	memmove(win + n_keep, win + n_keep + n_discard, (*n_win - n_keep - n_discard) * sizeof *win);
	*n_win -= n_discard;
	s->n_past = 0;
	for (size_t i = 0; i < n_past - n_discard; i += batch) {
		const size_t k = n_past - n_discard - i < batch ? n_past - n_discard - i : batch;
		int rc = moe_forward(s, win + i, k, NULL, NULL);
		if (rc)
			return rc;
	}
	return 0;
}

/* The first SIGINT/SIGTERM stops generation before the next token: the text so far,
 * the statistics and a whole stats-json and trace are still written. A second ends
 * at once. */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	if (interrupted)
		_exit(128 + sig);
	interrupted = sig;
}

int main(int argc, char **argv)
{
	moe_check_stdout_at_exit("moe-run");
	const char *model = NULL, *logits_out = NULL;
	long n_predict = 16, ctx = 4096, batch = 32;
	int threads = (int)sysconf(_SC_NPROCESSORS_ONLN), stats = 0, ignore_eos = 0;
	struct sampler sp = {0.0, 1.0, 0.0, 1.0, 40};
	struct prompt_options po = {.add_special = 1};
	uint64_t seed = 1;
	enum { O_TOKENS = 256, O_TEMP, O_TOPK, O_TOPP, O_MINP, O_REP, O_SEED, O_LOGITS, O_STATS, O_KV, O_BUDGET,
	       O_TRUNC, O_SJSON, O_TOKENIZE, O_DETOKENIZE, O_TOKENIZER, O_ADD_SPECIAL, O_NO_ADD_SPECIAL,
	       O_SKIP_SPECIAL, O_CHAT, O_SYSTEM, O_MESSAGES, O_CHAT_TEMPLATE, O_CHAT_KWARGS, O_PRINT_PROMPT, O_STOP,
	       O_IGNORE_EOS, O_MLOCK, O_IO_DEPTH, O_NO_VERIFY, O_POLICY, O_PREFETCH, O_TRACE, O_NO_OFFLOAD, O_PPL,
	       O_KL_BASE, O_EXPERT_TIMEOUT, O_SHIFT, O_KEEP };
	int tokenize = 0, detokenize = 0, skip_special = 0;
	char *ppl_text = NULL;
	const char *tokenizer_path = NULL;
	const char *kv_s = "f16", *stats_json = NULL;
	const char *stops[16];
	size_t n_stops = 0;
	uint64_t budget = 0;
	const char *budget_s = getenv("MOE_RAM_BUDGET"), *trace_out = NULL;
	struct moe_cache_options co = {.verify = 1, .policy = MOE_POLICY_LRU};
	long io_depth = 8, prefetch_depth = 1;
	int no_offload = 0;
	const char *ppl_file = NULL, *kl_base = NULL;
	int truncate = 0, context_shift = 0;
	long keep = 0;
	static const struct option opts[] = {
		{"model", required_argument, NULL, 'm'}, {"tokens", required_argument, NULL, O_TOKENS},
		{"n-predict", required_argument, NULL, 'n'}, {"threads", required_argument, NULL, 't'},
		{"ctx-size", required_argument, NULL, 'c'}, {"batch", required_argument, NULL, 'b'},
		{"temp", required_argument, NULL, O_TEMP}, {"top-k", required_argument, NULL, O_TOPK},
		{"top-p", required_argument, NULL, O_TOPP}, {"min-p", required_argument, NULL, O_MINP},
		{"repeat-penalty", required_argument, NULL, O_REP}, {"seed", required_argument, NULL, O_SEED},
		{"logits-out", required_argument, NULL, O_LOGITS}, {"stats", no_argument, NULL, O_STATS},
		{"kv-type", required_argument, NULL, O_KV}, {"ram-budget", required_argument, NULL, O_BUDGET},
		{"truncate", no_argument, NULL, O_TRUNC}, {"context-shift", no_argument, NULL, O_SHIFT},
		{"keep", required_argument, NULL, O_KEEP}, {"stats-json", required_argument, NULL, O_SJSON},
		{"tokenize", no_argument, NULL, O_TOKENIZE}, {"detokenize", no_argument, NULL, O_DETOKENIZE},
		{"tokenizer", required_argument, NULL, O_TOKENIZER}, {"prompt", required_argument, NULL, 'p'},
		{"add-special", no_argument, NULL, O_ADD_SPECIAL}, {"no-add-special", no_argument, NULL, O_NO_ADD_SPECIAL},
		{"skip-special", no_argument, NULL, O_SKIP_SPECIAL}, {"chat", no_argument, NULL, O_CHAT},
		{"system", required_argument, NULL, O_SYSTEM}, {"messages", required_argument, NULL, O_MESSAGES},
		{"chat-template", required_argument, NULL, O_CHAT_TEMPLATE},
		{"chat-template-kwargs", required_argument, NULL, O_CHAT_KWARGS},
		{"print-prompt", no_argument, NULL, O_PRINT_PROMPT}, {"stop", required_argument, NULL, O_STOP},
		{"ignore-eos", no_argument, NULL, O_IGNORE_EOS}, {"mlock", no_argument, NULL, O_MLOCK},
		{"io-depth", required_argument, NULL, O_IO_DEPTH}, {"no-verify", no_argument, NULL, O_NO_VERIFY},
		{"expert-timeout", required_argument, NULL, O_EXPERT_TIMEOUT},
		{"cache-policy", required_argument, NULL, O_POLICY}, {"prefetch-depth", required_argument, NULL, O_PREFETCH},
		{"trace-out", required_argument, NULL, O_TRACE}, {"no-offload", no_argument, NULL, O_NO_OFFLOAD},
		{"perplexity", required_argument, NULL, O_PPL}, {"kl-base", required_argument, NULL, O_KL_BASE},
		{"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "m:n:t:c:b:p:hV", opts, NULL)) != -1) {
		char *end = NULL;
		switch (c) {
		case 'm': model = optarg; break;
		case O_TOKENS: po.tokens = optarg; break;
		case 'n': n_predict = strtol(optarg, &end, 10); break;
		case 't': threads = (int)strtol(optarg, &end, 10); break;
		case 'c': ctx = strtol(optarg, &end, 10); break;
		case 'b': batch = strtol(optarg, &end, 10); break;
		case O_TEMP: sp.temp = strtod(optarg, &end); break;
		case O_TOPK: sp.top_k = (size_t)strtoul(optarg, &end, 10); break;
		case O_TOPP: sp.top_p = strtod(optarg, &end); break;
		case O_MINP: sp.min_p = strtod(optarg, &end); break;
		case O_REP: sp.repeat_penalty = strtod(optarg, &end); break;
		case O_SEED: seed = strtoull(optarg, &end, 10); break;
		case O_LOGITS: logits_out = optarg; break;
		case O_STATS: stats = 1; break;
		case O_KV: kv_s = optarg; break;
		case O_BUDGET: budget_s = optarg; break;
		case O_TRUNC: truncate = 1; break;
		case O_SHIFT: context_shift = 1; break;
		case O_KEEP: keep = strtol(optarg, &end, 10); break;
		case O_SJSON: stats_json = optarg; break;
		case O_TOKENIZE: tokenize = 1; break;
		case O_DETOKENIZE: detokenize = 1; break;
		case O_TOKENIZER: tokenizer_path = optarg; break;
		case 'p': po.text = optarg; break;
		case O_ADD_SPECIAL: po.add_special = 1; break;
		case O_NO_ADD_SPECIAL: po.add_special = 0; break;
		case O_SKIP_SPECIAL: skip_special = 1; break;
		case O_CHAT: po.chat = 1; break;
		case O_SYSTEM: po.system = optarg; break;
		case O_MESSAGES: po.messages = optarg; break;
		case O_CHAT_TEMPLATE: po.chat_template = optarg; break;
		case O_CHAT_KWARGS: po.chat_kwargs = optarg; break;
		case O_PRINT_PROMPT: po.print_prompt = 1; break;
		case O_STOP:
			if (n_stops == 16 || !*optarg) {
				fputs("moe-run: --stop: at most 16, none empty\n", stderr);
				return 2;
			}
			stops[n_stops++] = optarg;
			break;
		case O_IGNORE_EOS: ignore_eos = 1; break;
		case O_MLOCK: co.mlock = 1; break;
		case O_IO_DEPTH: io_depth = strtol(optarg, &end, 10); break;
		case O_NO_VERIFY: co.verify = 0; break;
		case O_EXPERT_TIMEOUT:
			co.stall_seconds = strtod(optarg, &end);
			if (!(co.stall_seconds > 0 && co.stall_seconds <= 86400)) {
				fprintf(stderr, "moe-run: --expert-timeout %s: seconds, more than 0 and at most 86400\n", optarg);
				return 2;
			}
			break;
		case O_POLICY:
			if ((co.policy = moe_cache_policy_parse(optarg)) < 0) {
				fprintf(stderr, "moe-run: --cache-policy %s: lru or lfu\n", optarg);
				return 2;
			}
			break;
		case O_PREFETCH: prefetch_depth = strtol(optarg, &end, 10); break;
		case O_TRACE: trace_out = optarg; break;
		case O_NO_OFFLOAD: no_offload = 1; break;
		case O_PPL: ppl_file = optarg; break;
		case O_KL_BASE: kl_base = optarg; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("moe-run (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); return 0;
		default: usage(stderr); return 2;
		}
		if (end && *end) {
			fprintf(stderr, "moe-run: %s: not a number\n", optarg);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "moe-run: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if ((po.system || po.messages || po.chat_template || po.chat_kwargs || po.print_prompt) && !po.chat) {
		fputs("moe-run: --system, --messages, --chat-template, --chat-template-kwargs and --print-prompt go with --chat\n",
		      stderr);
		return 2;
	}
	if (kl_base && !ppl_file) {
		fputs("moe-run: --kl-base goes with --perplexity\n", stderr);
		return 2;
	}
	if (ppl_file) { /* the text to score is the prompt */
		size_t len;
		if (po.tokens || po.chat || po.text || moe_read_file(ppl_file, &ppl_text, &len)) {
			fprintf(stderr, "moe-run: --perplexity %s: %s\n", ppl_file,
				po.tokens || po.chat || po.text ? "goes without -p, --tokens and --chat" : moe_last_error());
			return po.tokens || po.chat || po.text ? 2 : 1;
		}
		po.text = ppl_text;
	}
	if (detokenize || (tokenize && !po.chat))
		return text_tool(detokenize, model, tokenizer_path, po.text, po.add_special, skip_special);
	if (!model && !(tokenizer_path && (tokenize || po.print_prompt))) {
		fputs("moe-run: -m PACK is required\n", stderr);
		return 2;
	}
	if (budget_s && !(budget = moe_parse_size(budget_s))) {
		fprintf(stderr, "moe-run: --ram-budget %s: a size such as 900M or 12G\n", budget_s);
		return 2;
	}
	if (io_depth < 1 || io_depth > 256 || prefetch_depth < 0 || prefetch_depth > 8) {
		fputs("moe-run: --io-depth 1..256, --prefetch-depth 0..8\n", stderr);
		return 2;
	}
	if (strcmp(kv_s, "f16") && strcmp(kv_s, "f32")) {
		fprintf(stderr, "moe-run: --kv-type %s: f16 or f32\n", kv_s);
		return 2;
	}
	if (n_predict < -1 || keep < -1 || ctx < 1 || batch < 1 || batch > 64 || threads < 1 || threads > 256 || sp.temp < 0 ||
	    sp.top_p <= 0 || sp.top_p > 1 || sp.min_p < 0 || sp.min_p > 1 || sp.repeat_penalty <= 0) {
		fputs("moe-run: option out of range (moe-run --help)\n", stderr);
		return 2;
	}
	rng_state = seed;
	int rc = 1;
	int32_t *prompt = NULL, *win = NULL;
	size_t n_prompt = 0;
	moe_pack *pack = NULL;
	struct moe_model *m = NULL;
	struct moe_session *s = NULL;
	struct moe_tokenizer *tok = NULL;
	struct moe_detok_stream detok = {0};
	struct text_out tout = {.stops = stops, .n_stops = n_stops};
	char *tmpl = NULL;
	FILE *trace_fp = NULL, *stats_fp = NULL;
	struct token_stats *per_token = NULL;
	float *all = NULL, *last = NULL;
	struct cand *cands = NULL;
	for (size_t i = 0; i < n_stops; i++)
		if (strlen(stops[i]) > tout.longest_stop)
			tout.longest_stop = strlen(stops[i]);
	/* opened first, so that a path that cannot be written is refused before any work */
	if (stats_json && !(stats_fp = fopen(stats_json, "w"))) {
		fprintf(stderr, "moe-run: %s: cannot write: %s\n", stats_json, strerror(errno));
		goto out;
	}
	if (model)
		moe_trap_truncated_mapping("moe-run", model);
	if (model && moe_pack_open(model, &pack)) {
		fail();
		goto out;
	}
	/* the tokenizer: for text, and with --tokens for its end-of-sequence ids */
	const void *meta;
	uint64_t meta_len;
	if ((tokenizer_path || (pack && moe_pack_meta_bytes(pack, "tokenizer.bin", &meta, &meta_len) == 0)) &&
	    load_tokenizer(pack, model, tokenizer_path, &tok, &tmpl)) {
		fail();
		goto out;
	}
	if ((po.chat && chat_template(&po, pack, &tmpl)) || build_prompt(&po, pack, tok, tmpl, &prompt, &n_prompt)) {
		fail();
		goto out;
	}
	if (po.print_prompt) {
		rc = 0;
		goto out;
	}
	if (tokenize) { /* --chat --tokenize: the ids of the rendered conversation */
		print_ids(prompt, n_prompt);
		rc = 0;
		goto out;
	}
	if (moe_model_load(pack, threads, &m)) {
		fail();
		goto out;
	}
	const size_t vocab = m->hp.vocab;
	if ((uint64_t)ctx > m->hp.max_pos && m->hp.max_pos)
		ctx = (long)m->hp.max_pos;
	/* -1, or more than the context can hold: until it is full, or shifting, until the end of sequence */
	if (n_predict < 0 || (n_predict > ctx && !context_shift))
		n_predict = context_shift ? LONG_MAX : ctx;
	size_t n_keep = keep < 0 || (size_t)keep > n_prompt ? n_prompt : (size_t)keep;
	if (!ppl_file && n_prompt > (size_t)ctx && !truncate) { /* --perplexity reads it in chunks */
		fprintf(stderr, "moe-run: prompt of %zu tokens is longer than the context (%ld); --truncate keeps its end\n",
			n_prompt, ctx);
		goto out;
	}
	if (!ppl_file && truncate) {
		/* room for -n (half the context for "until the end"), and at least one prompt token */
		size_t room = n_predict >= ctx ? (size_t)ctx / 2 : (size_t)n_predict;
		if (room > (size_t)ctx - 1)
			room = (size_t)ctx - 1;
		const size_t fits = (size_t)ctx - room;
		if (n_prompt > fits) {
			const size_t head = n_keep < fits ? n_keep : fits, tail = fits - head;
			memmove(prompt + head, prompt + n_prompt - tail, tail * sizeof *prompt);
			fprintf(stderr, "moe-run: prompt of %zu tokens truncated to its first %zu and last %zu, leaving %zu of "
				"the context's %ld for -n\n", n_prompt, head, tail, room, ctx);
			n_prompt = fits;
			n_keep = head;
		}
	}
	if (context_shift && !ppl_file && n_keep + 2 > (size_t)ctx) {
		fprintf(stderr, "moe-run: --keep %zu leaves nothing for --context-shift to drop from a context of %ld tokens\n",
			n_keep, ctx);
		goto out;
	}
	if (moe_session_create(m, (size_t)ctx, (size_t)batch, strcmp(kv_s, "f16") ? MOE_KV_F32 : MOE_KV_F16, &s)) {
		fail();
		goto out;
	}
	/* the budget: dense weights + KV cache and scratch + the expert cache, which gets the rest */
	const uint64_t resident = moe_model_dense_bytes(m), session = moe_session_bytes(s);
	const uint64_t all_experts = moe_pack_expert_count(pack) * moe_cache_slot_bytes(pack) + moe_cache_staging_bytes(pack, 0);
	const uint64_t limit = budget ? budget : mem_available() / 10 * 9;
	if (!no_offload) {
		const uint64_t least = resident + session + moe_cache_min_bytes(pack);
		if (limit < least) {
			fprintf(stderr, "moe-run: %s %.1f MB is below the minimum %.1f MB: dense weights %.1f MB + KV cache "
				"and scratch %.1f MB + two experts %.1f MB\n", budget ? "--ram-budget" : "available memory",
				limit / 1048576.0, least / 1048576.0, resident / 1048576.0, session / 1048576.0,
				moe_cache_min_bytes(pack) / 1048576.0);
			goto out;
		}
		co.bytes = limit - resident - session;
		if (co.bytes > all_experts)
			co.bytes = all_experts;
		co.io_depth = (unsigned)io_depth;
		struct moe_experts *cache;
		if (moe_experts_cache(pack, &co, &cache)) {
			fail();
			goto out;
		}
		moe_model_use_experts(m, cache);
	} else if (budget && resident + session > budget) {
		fprintf(stderr, "moe-run: --ram-budget %.1f MB is less than the dense weights (%.1f MB) and KV cache and scratch (%.1f MB)\n",
			budget / 1048576.0, resident / 1048576.0, session / 1048576.0);
		goto out;
	}
	s->prefetch_depth = (unsigned)prefetch_depth;
	if (trace_out && !(trace_fp = fopen(trace_out, "w"))) {
		fprintf(stderr, "moe-run: %s: %s\n", trace_out, strerror(errno));
		goto out;
	}
	if (trace_fp)
		fprintf(trace_fp, "{\"trace\": \"moemap expert routes\", \"layers\": %llu, \"experts\": %llu, \"experts_used\": %llu}\n",
			(unsigned long long)m->hp.n_layers, (unsigned long long)m->hp.n_experts,
			(unsigned long long)m->hp.n_experts_used);
	s->trace = trace_fp;
	if (isatty(STDERR_FILENO))
		load_banner(pack, m, resident, session, no_offload ? 0 : co.bytes, threads);
	if (ppl_file) {
		double ppl = 0, t_ppl = moe_now();
		size_t scored = 0;
		if (perplexity(s, prompt, n_prompt, (size_t)ctx, (size_t)batch, logits_out, kl_base, &ppl, &scored)) {
			fail();
			goto out;
		}
		t_ppl = moe_now() - t_ppl;
		struct expert_report er;
		expert_report_init(&er, m, moe_cache_policy_name(co.policy), prefetch_depth, co.bytes);
		if (stats_fp) {
			fprintf(stats_fp, "{\"perplexity\": %.6f, \"tokens\": %zu, \"scored_tokens\": %zu, \"seconds\": %.6f, "
				"\"tokens_per_second\": %.3f, \"batch\": %ld, \"kernels\": \"%s\", \"threads\": %d,\n",
				ppl, n_prompt, scored, t_ppl, (double)n_prompt / t_ppl, batch, m->kernels->name, threads);
			expert_report_json(stats_fp, &er);
			fputs("}\n", stats_fp);
			if (close_stats_json(&stats_fp, stats_json))
				goto out;
		}
		if (stats) {
			fprintf(stderr, "moe-run: perplexity over %zu tokens in %.3f s (%.1f tok/s, batches of %ld), kernels %s, %d threads\n",
				n_prompt, t_ppl, (double)n_prompt / t_ppl, batch, m->kernels->name, threads);
			if (!no_offload)
				expert_report_line(&er);
		}
		rc = 0;
		goto out;
	}
	all = logits_out ? malloc(n_prompt * vocab * sizeof(float)) : NULL;
	last = malloc(vocab * sizeof(float));
	win = malloc(((size_t)ctx + 1) * sizeof *win);
	cands = malloc(vocab * sizeof *cands);
	if ((logits_out && !all) || !last || !win || !cands) {
		fputs("moe-run: out of memory\n", stderr);
		goto out;
	}
	memcpy(win, prompt, n_prompt * sizeof *win);
	double t0 = moe_now();
	for (size_t i = 0; i < n_prompt; i += (size_t)batch) {
		size_t k = n_prompt - i < (size_t)batch ? n_prompt - i : (size_t)batch;
		if (moe_forward(s, prompt + i, k, all ? all + i * vocab : NULL, all ? NULL : last)) {
			fail();
			goto out;
		}
	}
	if (all)
		memcpy(last, all + (n_prompt - 1) * vocab, vocab * sizeof(float));
	const double t_prefill = moe_now() - t0;
	if (logits_out) {
		FILE *fp = fopen(logits_out, "wb");
		int bad = !fp || fwrite(all, sizeof(float), n_prompt * vocab, fp) != n_prompt * vocab;
		if ((fp && fclose(fp) != 0) || bad) {
			fprintf(stderr, "moe-run: %s: cannot write logits: %s\n", logits_out, strerror(errno));
			unlink(logits_out); /* never leave a short file that looks like logits */
			goto out;
		}
	}
	/* text in, text out (special tokens not shown); ids in, ids out */
	const int as_text = tok && !po.tokens;
	const int32_t *eos = NULL;
	const size_t n_eos = tok && !ignore_eos ? moe_tokenizer_eos(tok, &eos) : 0;
	const char *stop_reason = "length";
	/* text out: only ids with text. A model's vocabulary is often padded past its
	 * tokenizer's (Qwen3: 151936 rows, 151669 tokens); those rows are never sampled. */
	const size_t n_sampled = as_text && moe_tokenizer_vocab(tok) < vocab ? moe_tokenizer_vocab(tok) : vocab;
	if (as_text)
		moe_detok_stream_init(&detok, tok, 1);
	size_t n_win = n_prompt, generated = 0, n_token_stats = 0, cap_token_stats = 0, shifts = 0;
	t0 = moe_now();
	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	for (long i = 0; i < n_predict; i++) {
		if (interrupted) {
			stop_reason = "interrupted";
			break;
		}
		/* the repetition penalty looks at the tokens the model sees: those in the context */
		int32_t id = sample(&sp, last, n_sampled, win, n_win, cands);
		win[n_win++] = id;
		generated++;
		int is_eos = 0;
		for (size_t k = 0; k < n_eos; k++)
			is_eos |= id == eos[k];
		if (is_eos) {
			stop_reason = "eos";
			break;
		}
		if (as_text) {
			const char *piece;
			size_t pl;
			int r = moe_detok_stream_push(&detok, id, &piece, &pl);
			if (r || (r = text_out_add(&tout, piece, pl, 0)) < 0) {
				r ? fail() : fputs("moe-run: out of memory\n", stderr);
				goto out;
			}
			if (r == 1) {
				stop_reason = "stop";
				break;
			}
		} else {
			printf("%s%d", generated > 1 ? " " : "", id);
		}
		if (moe_stdout_check() != MOE_STDOUT_OK) { /* said so if it failed; quiet if the reader left */
			stop_reason = "output";
			break;
		}
		if (i + 1 == n_predict)
			break;
		if (s->n_past >= s->ctx) {
			if (!context_shift) {
				fprintf(stderr, "\nmoe-run: context full (%zu tokens): stopping\n", s->ctx);
				stop_reason = "context";
				break;
			}
			if (shift_context(s, win, &n_win, n_keep, (size_t)batch)) {
				fail();
				goto out;
			}
			shifts++;
		}
		if (n_token_stats == cap_token_stats) {
			cap_token_stats = cap_token_stats ? 2 * cap_token_stats : 256;
			struct token_stats *grown = realloc(per_token, cap_token_stats * sizeof *per_token);
			if (!grown) {
				fputs("moe-run: out of memory\n", stderr);
				goto out;
			}
			per_token = grown;
		}
		struct moe_expert_stats before, after;
		m->experts->stats(m->experts, &before);
		if (moe_forward(s, &id, 1, NULL, last)) {
			fail();
			goto out;
		}
		m->experts->stats(m->experts, &after);
		per_token[n_token_stats++] = (struct token_stats){
			after.hits - before.hits, after.prefetch_hits - before.prefetch_hits, after.misses - before.misses,
			after.bytes_read - before.bytes_read, after.wait_seconds - before.wait_seconds};
	}
	if (as_text && strcmp(stop_reason, "stop") != 0) {
		const char *piece;
		size_t pl;
		if (moe_detok_stream_finish(&detok, &piece, &pl) || text_out_add(&tout, piece, pl, 1) < 0) {
			fail();
			goto out;
		}
	}
	if (!as_text && generated)
		putchar('\n');
	else if (as_text && isatty(STDOUT_FILENO))
		putchar('\n'); /* a terminal's prompt on a line of its own; pipes get the text exactly */
	const double t_decode = moe_now() - t0;
	struct expert_report er;
	expert_report_init(&er, m, moe_cache_policy_name(co.policy), prefetch_depth, co.bytes);
	if (stats_fp) {
		fprintf(stats_fp, "{\"prompt_tokens\": %zu, \"prefill_seconds\": %.6f, \"prefill_tokens_per_second\": %.3f, "
			"\"generated_tokens\": %zu, \"decode_seconds\": %.6f, \"decode_tokens_per_second\": %.3f, "
			"\"ms_per_token\": %.3f, \"kernels\": \"%s\", \"threads\": %d, \"kv_type\": \"%s\", "
			"\"resident_bytes\": %llu, \"session_bytes\": %llu, \"context_shifts\": %zu, \"stop_reason\": \"%s\",\n",
			n_prompt, t_prefill, (double)n_prompt / t_prefill, generated, t_decode,
			generated > 1 ? (double)(generated - 1) / t_decode : 0.0,
			generated > 1 ? 1e3 * t_decode / (double)(generated - 1) : 0.0, m->kernels->name, threads, kv_s,
			(unsigned long long)resident, (unsigned long long)session, shifts, stop_reason);
		expert_report_json(stats_fp, &er);
		fputs(",\n \"per_token\": [", stats_fp);
		for (size_t i = 0; i < n_token_stats; i++)
			fprintf(stats_fp, "%s{\"hits\": %llu, \"prefetch_hits\": %llu, \"misses\": %llu, \"bytes_read\": %llu, "
				"\"wait_ms\": %.3f}", i ? ",\n  " : "\n  ", (unsigned long long)per_token[i].hits,
				(unsigned long long)per_token[i].prefetch_hits, (unsigned long long)per_token[i].misses,
				(unsigned long long)per_token[i].bytes, per_token[i].wait * 1e3);
		fputs("]}\n", stats_fp);
		if (close_stats_json(&stats_fp, stats_json))
			goto out;
	}
	if (stats) {
		fprintf(stderr, "moe-run: prefill %zu tokens in %.3f s (%.1f tok/s), decode %zu tokens in %.3f s (%.1f tok/s, %.1f ms/token), kernels %s, %d threads\n",
			n_prompt, t_prefill, (double)n_prompt / t_prefill, generated, t_decode,
			generated > 1 ? (double)(generated - 1) / t_decode : 0.0,
			generated > 1 ? 1e3 * t_decode / (double)(generated - 1) : 0.0, m->kernels->name, threads);
		if (!no_offload && n_token_stats) {
			struct token_stats sum = {0};
			for (size_t i = 0; i < n_token_stats; i++) {
				sum.misses += per_token[i].misses, sum.prefetch_hits += per_token[i].prefetch_hits;
				sum.bytes += per_token[i].bytes, sum.wait += per_token[i].wait;
			}
			const double k = (double)n_token_stats;
			fprintf(stderr, "moe-run: per decoded token: %.2f misses, %.2f prefetched, %.1f MB read, %.1f ms waiting for experts\n",
				sum.misses / k, sum.prefetch_hits / k, sum.bytes / k / 1e6, 1e3 * sum.wait / k);
		}
		if (!no_offload)
			expert_report_line(&er);
	}
	rc = interrupted ? 128 + interrupted : 0;
out:
	free(all);
	free(last);
	free(win);
	free(cands);
	free(prompt);
	free(tmpl);
	free(ppl_text);
	free(per_token);
	if (stats_fp) { /* a run that failed leaves no stats file */
		fclose(stats_fp);
		unlink(stats_json);
	}
	if (trace_fp && fclose(trace_fp) != 0 && rc == 0) {
		fprintf(stderr, "moe-run: %s: %s\n", trace_out, strerror(errno));
		rc = 1;
	}
	free(tout.buf);
	moe_detok_stream_free(&detok);
	moe_tokenizer_free(tok);
	moe_session_free(s);
	moe_model_free(m);
	if (pack)
		moe_pack_close(pack);
	return rc;
}
