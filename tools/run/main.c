/* moe-run - run a pack: the prompt (text, a chat turn or token ids) prefilled in
 * batches, then sampling token by token, streaming text (or ids) as it comes; or
 * (-i) a conversation in the terminal. Built on the public API (moe.h) alone. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
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

#include "cli/progress.h"
#include "cli/stdout.h"
#include "moe.h"

static void usage(FILE *fp)
{
	fputs("usage: moe-run -m PACK [-p TEXT | --tokens ID,ID,... | --chat ...] [options]   (text on stdin without -p)\n"
	      "       moe-run -m PACK -i [--system TEXT] [options]   (a conversation in the terminal)\n"
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
	      "  -i, --interactive        a conversation: a line is a user turn, the reply streams; the history\n"
	      "                           stays in the KV cache. /reset starts over, /stats shows the expert cache;\n"
	      "                           Ctrl-C stops a reply, Ctrl-D ends (-n is per reply, default: to the end)\n"
	      "      --system TEXT        with --chat or -i: a system turn first\n"
	      "      --messages FILE      with --chat: the conversation, a JSON array of {\"role\", \"content\"}\n"
	      "      --chat-template T    with --chat or -i: a template file, or mistral-v1 / chatml (built in)\n"
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
	      "  -b, --batch N            prompt tokens per forward pass, 1..512 (default 32)\n"
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
	      "      --cache-policy P     lru (default), lfu (frequency with aging) or next (the expert whose\n"
	      "                           next use is expected farthest away is evicted first)\n"
	      "      --prefetch-depth K   guess the experts of the next K layers, 0..8 (default 1; 0 = off)\n"
	      "      --io-depth N         expert reads in flight, 1..256 (default 8)\n"
	      "      --no-verify          skip the XXH3 check of each expert read\n"
	      "      --expert-timeout S   fail if an expert has not arrived after S seconds (default 30)\n"
	      "      --mlock              lock the dense weights and the expert cache in RAM\n"
	      "      --pin FILE           hold the experts of a pin list (moe-bench profile) in the cache for good\n"
	      "      --no-offload         no cache: experts through the page cache (mmap), as llama.cpp does\n"
	      "      --trace-out FILE     the experts and router scores of every token and layer (moe-bench sim)\n"
	      "      --routes-from FILE   route every token as a --trace-out file did (e.g. of a trained model),\n"
	      "                           to measure the cache at scale with real routing; the output is not\n"
	      "                           the model's\n"
	      "      --experts-per-token K  route each token to its K likeliest experts, fewer than the model's\n"
	      "                           (less to read per token, at a cost in quality: moe-tuning(7))\n"
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

static int fail(void)
{
	fprintf(stderr, "moe-run: %s\n", moe_last_error());
	return 1;
}

/* moe-run's own errors: said at once, -1 returned */
static int say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("moe-run: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	return -1;
}

/* Helpers below say what went wrong themselves (say, or fail for the library's
 * errors) and return non-zero. */

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
			return say("--tokens: '%s' is not a comma-separated list of token ids", s);
		}
		if (k == cap) {
			int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
			if (!nv) {
				free(v);
				v = NULL;
				break;
			}
			v = nv;
		}
		v[k++] = (int32_t)x;
		p = *end ? end + 1 : end;
	}
	if (!v)
		return say("out of memory");
	if (k == 0) {
		free(v);
		return say("--tokens: empty prompt");
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
		return say("out of memory");
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

/* The text side without the model: --tokenizer FILE (with its tokenizer_config.json)
 * or the pack's tokenizer, and the chat template that goes with it (NULL if none). */
struct text_side {
	moe_pack *pack;
	moe_tokenizer *own;      /* --tokenizer, or the pack's when no model is open */
	const moe_tokenizer *tok;
	char *tmpl;
};

static int text_side_open(struct text_side *ts, const char *model, const char *tok_path, const moe_model *m)
{
	*ts = (struct text_side){0};
	if (tok_path) {
		if (moe_tokenizer_open(tok_path, &ts->own, &ts->tmpl))
			return fail();
		ts->tok = ts->own;
		if (!ts->tmpl && m && moe_model_chat_template(m) && !(ts->tmpl = strdup(moe_model_chat_template(m))))
			return say("out of memory");
		return 0;
	}
	if (m) {
		ts->tok = moe_model_tokenizer(m);
		if (moe_model_chat_template(m) && !(ts->tmpl = strdup(moe_model_chat_template(m))))
			return say("out of memory");
		return 0;
	}
	const void *p;
	uint64_t n;
	if (moe_pack_open(model, &ts->pack))
		return fail();
	if (moe_pack_meta_bytes(ts->pack, "tokenizer.bin", &p, &n) == 0 && moe_pack_tokenizer(ts->pack, &ts->own, &ts->tmpl))
		return fail();
	ts->tok = ts->own;
	return 0;
}

static void text_side_close(struct text_side *ts)
{
	moe_tokenizer_free(ts->own);
	free(ts->tmpl);
	if (ts->pack)
		moe_pack_close(ts->pack);
}

/* --tokenize / --detokenize: text <-> a JSON array of ids */
static int text_tool(int detok, const char *model, const char *tok_path, const char *prompt, int add_special,
		     int skip_special)
{
	struct text_side ts;
	char *in = NULL, *text = NULL;
	int32_t *ids = NULL;
	size_t len, n, tl;
	int rc = 1;
	if (!tok_path && !model) {
		fputs("moe-run: --tokenize/--detokenize need -m PACK or --tokenizer FILE\n", stderr);
		return 2;
	}
	if (text_side_open(&ts, model, tok_path, NULL))
		goto out;
	if (!ts.tok) {
		say("%s: the pack has no tokenizer", model);
		goto out;
	}
	if (!(in = read_input(prompt, &len))) {
		say("out of memory");
		goto out;
	}
	if (!detok) {
		if (moe_tokenize(ts.tok, in, len, add_special, &ids, &n)) {
			fail();
			goto out;
		}
		print_ids(ids, n);
	} else {
		if (parse_id_list(in, &ids, &n))
			goto out;
		if (moe_detokenize(ts.tok, ids, n, skip_special, &text, &tl)) {
			fail();
			goto out;
		}
		fwrite(text, 1, tl, stdout);
	}
	rc = moe_stdout_check() == MOE_STDOUT_FAILED;
out:
	free(ids);
	free(in);
	free(text);
	text_side_close(&ts);
	return rc;
}

/* The prompt as ids: --tokens, or text (-p / stdin) through the tokenizer, as a
 * chat turn with --chat. With --print-prompt, the rendered chat text is printed
 * and *ids stays NULL. */
struct prompt_options {
	const char *tokens, *text, *system, *messages, *chat_template, *chat_kwargs;
	int chat, print_prompt, add_special;
};

/* a JSON array of messages: the system turn if any, then user */
static json_t *first_messages(const char *system)
{
	json_t *msgs = json_array();
	if (system)
		json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "system", "content", system));
	return msgs;
}

static int chat_messages(const struct prompt_options *po, const char *text, size_t len, char **out)
{
	if (po->messages) {
		size_t n;
		return moe_read_file(po->messages, out, &n) ? fail() : 0;
	}
	json_t *msgs = first_messages(po->system);
	json_array_append_new(msgs, json_pack("{s:s, s:s%}", "role", "user", "content", text, len));
	*out = json_dumps(msgs, JSON_COMPACT);
	json_decref(msgs);
	return *out ? 0 : say("the prompt is not UTF-8 text");
}

/* --chat-template NAME|FILE replaces the one of the tokenizer or the pack */
static int chat_template(const struct prompt_options *po, char **tmpl)
{
	if (po->chat_template) {
		const char *b = moe_chat_template_builtin(po->chat_template);
		size_t n;
		free(*tmpl);
		*tmpl = NULL;
		if (b)
			return (*tmpl = strdup(b)) ? 0 : say("out of memory");
		return moe_read_file(po->chat_template, tmpl, &n) ? fail() : 0;
	}
	if (!*tmpl)
		return say("no chat template in the pack or tokenizer_config.json; pass --chat-template NAME|FILE");
	return 0;
}

/* messages rendered and tokenized as apply_chat_template does */
static int chat_ids(const moe_tokenizer *t, const char *tmpl, const char *msgs, const char *kwargs, int32_t **ids,
		    size_t *n)
{
	char *rendered;
	size_t rl;
	if (moe_chat_prompt(t, tmpl, msgs, kwargs, 1, &rendered, &rl))
		return fail();
	int rc = moe_tokenize(t, rendered, rl, 0, ids, n) ? fail() : 0;
	free(rendered);
	return rc;
}

static int build_prompt(const struct prompt_options *po, const moe_tokenizer *t, const char *tmpl, int32_t **ids,
			size_t *n)
{
	*ids = NULL;
	*n = 0;
	if (po->tokens)
		return parse_tokens(po->tokens, ids, n);
	if (!t)
		return say("the pack has no tokenizer: give the prompt as --tokens ID,ID,...");
	size_t len = 0;
	char *text = po->messages ? NULL : read_input(po->text, &len), *msgs = NULL, *rendered = NULL;
	int rc = 0;
	if (!po->messages && !text)
		return say("out of memory");
	if (po->chat && po->print_prompt) {
		size_t rl;
		if (!(rc = chat_messages(po, text, len, &msgs)))
			rc = moe_chat_prompt(t, tmpl, msgs, po->chat_kwargs, 1, &rendered, &rl) ? fail() : 0;
		if (!rc)
			fwrite(rendered, 1, rl, stdout);
	} else if (po->chat) {
		if (!(rc = chat_messages(po, text, len, &msgs)))
			rc = chat_ids(t, tmpl, msgs, po->chat_kwargs, ids, n);
	} else {
		rc = moe_tokenize(t, text, len, po->add_special, ids, n) ? fail() : 0;
	}
	if (!rc && !po->print_prompt && !*n)
		rc = say("empty prompt");
	free(text);
	free(msgs);
	free(rendered);
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

/* --perplexity: the tokens in chunks of ctx, each from an empty context; every token
 * after a chunk's first is scored on the logits of the ones before it (as
 * llama.cpp's perplexity tool does, without its half-chunk warm-up). With
 * logits_out, the scored rows are saved; with kl_base, compared with saved ones. */
static int perplexity(moe_session *s, size_t vocab, const int32_t *ids, size_t n, size_t ctx, size_t batch,
		      const char *logits_out, const char *kl_base, double *ppl, size_t *n_scored)
{
	struct moe_progress bar;
	moe_progress_start(&bar, isatty(STDERR_FILENO), "perplexity", "tokens", n);
	float *lg = malloc(batch * vocab * sizeof *lg), *brow = malloc(vocab * sizeof *brow);
	FILE *out = logits_out ? fopen(logits_out, "wb") : NULL, *base = kl_base ? fopen(kl_base, "rb") : NULL;
	double nll = 0, kl = 0;
	size_t scored = 0, agree = 0, chunks = 0;
	int rc = 0;
	if (!lg || !brow) {
		rc = say("out of memory");
		goto done;
	}
	if ((logits_out && !out) || (kl_base && !base)) {
		rc = say("%s: %s", !out && logits_out ? logits_out : kl_base, strerror(errno));
		goto done;
	}
	if (n < 2) {
		rc = say("--perplexity: %zu tokens, nothing to predict", n);
		goto done;
	}
	for (size_t c0 = 0; c0 + 1 < n; c0 += ctx, chunks++) {
		const size_t len = n - c0 < ctx ? n - c0 : ctx;
		moe_session_rewind(s, 0); /* a fresh context */
		for (size_t i = 0; i < len && !rc; i += batch) {
			const size_t k = len - i < batch ? len - i : batch;
			if (moe_session_eval(s, ids + c0 + i, k, lg)) {
				rc = fail();
				break;
			}
			moe_progress_update(&bar, c0 + i + k, 0);
			for (size_t t = 0; t < k && i + t + 1 < len; t++) {
				const float *row = lg + t * vocab;
				size_t best, bbest;
				const double lse = log_sum_exp(row, vocab, &best);
				nll += lse - row[ids[c0 + i + t + 1]];
				scored++;
				if (out && fwrite(row, sizeof *row, vocab, out) != vocab) {
					rc = say("%s: %s", logits_out, strerror(errno));
					break;
				}
				if (base) {
					if (fread(brow, sizeof *brow, vocab, base) != vocab) {
						rc = say("--kl-base %s: fewer rows than the %zu scored tokens", kl_base, scored);
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
		rc = say("--kl-base %s: more rows than the %zu scored tokens", kl_base, scored);
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
		rc = say("%s: %s", logits_out, strerror(errno));
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
	moe_stats xs;
	long prefetch_depth;
	uint64_t cache_bytes;
	double precision, recall;
};

static void expert_report_init(struct expert_report *r, const moe_model *m, long depth)
{
	moe_model_info info;
	moe_model_get_info(m, &info);
	moe_model_stats(m, &r->xs);
	const moe_stats *x = &r->xs;
	r->prefetch_depth = depth, r->cache_bytes = info.expert_cache_bytes;
	r->precision = x->prefetch_issued ? (double)x->prefetch_hits / (double)x->prefetch_issued : 0;
	r->recall = x->prefetch_hits + x->misses ? (double)x->prefetch_hits / (double)(x->prefetch_hits + x->misses) : 0;
}

static void expert_report_json(FILE *fp, const struct expert_report *r)
{
	const moe_stats *x = &r->xs;
	fprintf(fp, " \"experts\": {\"io\": \"%s\", \"policy\": \"%s\", \"prefetch_depth\": %ld, "
		"\"cache_bytes\": %llu, \"slots\": %llu, \"slots_used\": %llu, \"slots_pinned\": %llu, \"uses\": %llu, \"hits\": %llu, "
		"\"prefetch_hits\": %llu, \"misses\": %llu, \"prefetch_issued\": %llu, \"prefetch_precision\": %.4f, "
		"\"prefetch_recall\": %.4f, \"prefetch_unused_bytes\": %llu, \"prefetch_evicted_bytes\": %llu, "
		"\"bytes_read\": %llu, \"rereads\": %llu, \"read_seconds\": %.6f, "
		"\"read_gb_per_second\": %.3f, \"wait_seconds\": %.6f}",
		x->io, x->policy, r->prefetch_depth, (unsigned long long)r->cache_bytes, (unsigned long long)x->slots,
		(unsigned long long)x->slots_used, (unsigned long long)x->slots_pinned, (unsigned long long)x->uses,
		(unsigned long long)x->hits, (unsigned long long)x->prefetch_hits, (unsigned long long)x->misses,
		(unsigned long long)x->prefetch_issued, r->precision, r->recall, (unsigned long long)x->prefetch_unused_bytes,
		(unsigned long long)x->prefetch_evicted_bytes, (unsigned long long)x->bytes_read, (unsigned long long)x->rereads, x->read_seconds,
		x->read_seconds > 0 ? x->bytes_read / x->read_seconds / 1e9 : 0.0, x->wait_seconds);
}

static void expert_report_line(const struct expert_report *r)
{
	const moe_stats *x = &r->xs;
	fprintf(stderr, "moe-run: experts: %llu uses, %llu hits + %llu prefetched + %llu misses; prefetch precision %.2f recall %.2f, "
		"%.1f MB unused (%.1f MB evicted first); read %.2f GB at %.2f GB/s (%s); waited %.3f s; cache %llu/%llu slots, "
		"%llu pinned (%.1f MB, %s)\n",
		(unsigned long long)x->uses, (unsigned long long)x->hits, (unsigned long long)x->prefetch_hits,
		(unsigned long long)x->misses, r->precision, r->recall, x->prefetch_unused_bytes / 1e6,
		x->prefetch_evicted_bytes / 1e6, x->bytes_read / 1e9,
		x->read_seconds > 0 ? x->bytes_read / x->read_seconds / 1e9 : 0.0, x->io, x->wait_seconds,
		(unsigned long long)x->slots_used, (unsigned long long)x->slots, (unsigned long long)x->slots_pinned,
		r->cache_bytes / 1048576.0, x->policy);
}

/* On a terminal, one line once loaded: what runs, and where the memory goes. */
static void load_banner(const moe_model *m)
{
	const moe_pack *pack = moe_model_pack(m);
	moe_model_info info;
	moe_stats xs;
	moe_model_get_info(m, &info);
	moe_model_stats(m, &xs);
	fprintf(stderr, "moe-run: %s: %s, %llu layers, %llu experts (%llu active), %.1f MB; dense %.1f MB + KV and "
		"scratch %.1f MB + ", moe_pack_path(pack), info.arch, (unsigned long long)info.n_layers,
		(unsigned long long)info.n_experts, (unsigned long long)info.n_experts_used,
		moe_pack_file_size(pack) / 1048576.0, info.dense_bytes / 1048576.0, info.session_bytes / 1048576.0);
	if (info.expert_cache_bytes)
		fprintf(stderr, "expert cache %.1f MB (%llu of %zu experts)", info.expert_cache_bytes / 1048576.0,
			(unsigned long long)xs.slots, moe_pack_expert_count(pack));
	else
		fputs("experts through the page cache", stderr);
	fprintf(stderr, "; kernels %s, %d threads\n", info.kernels, info.threads);
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

/* --context-shift: the context is full. Drop the older half of what follows the
 * first n_keep tokens, as llama.cpp's context shift does, and rebuild the KV cache
 * from what is left: a prefill, so the cache is exactly that of a prompt made of
 * those tokens, whatever the positional encoding. */
static int shift_context(moe_session *s, size_t n_keep)
{
	const size_t n_past = moe_session_pos(s), n_discard = (n_past - n_keep) / 2;
	int32_t *kept = malloc(n_past * sizeof *kept);
	if (!kept)
		return say("out of memory");
	const int32_t *cur = moe_session_tokens(s);
	memcpy(kept, cur, n_keep * sizeof *kept);
	memcpy(kept + n_keep, cur + n_keep + n_discard, (n_past - n_keep - n_discard) * sizeof *kept);
	moe_session_rewind(s, 0);
	int rc = moe_session_eval(s, kept, n_past - n_discard, NULL) ? fail() : 0;
	free(kept);
	return rc;
}

/* The first SIGINT/SIGTERM stops generation before the next token (and a prefill
 * between two layers): the text so far, the statistics and a whole stats-json and
 * trace are still written. A second ends at once, except in a conversation, where
 * Ctrl-C stops the reply and the next line is asked for. */
static volatile sig_atomic_t interrupted, conversation;
static moe_session *running;

static void on_signal(int sig)
{
	if (interrupted && !conversation)
		_exit(128 + sig);
	interrupted = sig;
	if (running)
		moe_session_cancel(running);
}

/* What generation needs besides the session. */
struct generation {
	const moe_tokenizer *tok;  /* NULL: ids out */
	moe_sampler *sampler;
	moe_stopper *stops;
	const int32_t *eos;
	size_t n_eos, n_sampled;
	long n_predict;
	int context_shift, print_ids;
	size_t n_keep;
	/* results */
	const char *stop_reason;
	size_t generated, shifts, n_token_stats, cap_token_stats;
	struct token_stats *per_token;
	char *text;                /* what was shown, with reply */
	size_t text_len;
	int reply;                 /* collect the text */
};

static int keep_text(struct generation *g, const char *s, size_t n)
{
	if (!g->reply || !n)
		return 0;
	char *nt = realloc(g->text, g->text_len + n + 1);
	if (!nt)
		return say("out of memory");
	memcpy(nt + g->text_len, s, n);
	g->text = nt;
	g->text_len += n;
	g->text[g->text_len] = '\0';
	return 0;
}

/* Sample, show and run tokens until the end of sequence, a stop string, -n, a full
 * context (shifted with --context-shift) or a signal. */
static int generate(moe_session *s, const moe_model *m, struct generation *g)
{
	moe_detokenizer *detok = NULL;
	int rc = 0;
	g->stop_reason = "length";
	g->generated = 0;
	if (g->tok && moe_detokenizer_new(g->tok, 1, &detok))
		return fail();
	for (long i = 0; i < g->n_predict; i++) {
		if (interrupted) {
			g->stop_reason = "interrupted";
			break;
		}
		/* the repetition penalty looks at the tokens the model sees: those in the context */
		const int32_t id = moe_sampler_sample(g->sampler, moe_session_logits(s), g->n_sampled, moe_session_tokens(s),
						      moe_session_pos(s));
		if (id < 0) {
			rc = fail();
			break;
		}
		g->generated++;
		int is_eos = 0;
		for (size_t k = 0; k < g->n_eos; k++)
			is_eos |= id == g->eos[k];
		if (is_eos) {
			g->stop_reason = "eos";
			break;
		}
		if (g->tok) {
			const char *piece, *show;
			size_t pl, sl;
			int r = moe_detokenizer_push(detok, id, &piece, &pl);
			if (r || (r = moe_stopper_push(g->stops, piece, pl, 0, &show, &sl)) < 0) {
				rc = fail();
				break;
			}
			fwrite(show, 1, sl, stdout);
			fflush(stdout);
			if ((rc = keep_text(g, show, sl)))
				break;
			if (r == 1) {
				g->stop_reason = "stop";
				break;
			}
		} else {
			printf("%s%d", g->generated > 1 ? " " : "", id);
		}
		if (moe_stdout_check() != MOE_STDOUT_OK) { /* said so if it failed; quiet if the reader left */
			g->stop_reason = "output";
			break;
		}
		if (i + 1 == g->n_predict)
			break;
		if (moe_session_pos(s) >= moe_session_ctx(s)) {
			if (!g->context_shift) {
				fprintf(stderr, "\nmoe-run: context full (%zu tokens): stopping\n", moe_session_ctx(s));
				g->stop_reason = "context";
				break;
			}
			if ((rc = shift_context(s, g->n_keep)))
				break;
			g->shifts++;
		}
		if (g->n_token_stats == g->cap_token_stats) {
			g->cap_token_stats = g->cap_token_stats ? 2 * g->cap_token_stats : 256;
			struct token_stats *grown = realloc(g->per_token, g->cap_token_stats * sizeof *grown);
			if (!grown) {
				rc = say("out of memory");
				break;
			}
			g->per_token = grown;
		}
		moe_stats before, after;
		moe_model_stats(m, &before);
		if (moe_session_eval(s, &id, 1, NULL)) {
			if (interrupted) { /* canceled by the signal */
				g->stop_reason = "interrupted";
				break;
			}
			rc = fail();
			break;
		}
		moe_model_stats(m, &after);
		g->per_token[g->n_token_stats++] = (struct token_stats){
			after.hits - before.hits, after.prefetch_hits - before.prefetch_hits, after.misses - before.misses,
			after.bytes_read - before.bytes_read, after.wait_seconds - before.wait_seconds};
	}
	if (!rc && g->tok && strcmp(g->stop_reason, "stop") != 0) {
		const char *piece, *show;
		size_t pl, sl;
		if (moe_detokenizer_finish(detok, &piece, &pl) || moe_stopper_push(g->stops, piece, pl, 1, &show, &sl) < 0)
			rc = fail();
		else {
			fwrite(show, 1, sl, stdout);
			rc = keep_text(g, show, sl);
		}
	}
	moe_detokenizer_free(detok);
	return rc;
}

/* -i: a line is a user turn; the conversation is rendered whole each turn and only
 * what the context does not already hold is computed. */
static int converse(moe_session *s, const moe_model *m, const char *tmpl, const struct prompt_options *po,
		    struct generation *g, const char *stop_strs[], size_t n_stops, long prefetch_depth, long per_reply)
{
	json_t *msgs = first_messages(po->system);
	char *line = NULL;
	size_t cap = 0;
	int rc = 0;
	const int tty = isatty(STDIN_FILENO);
	conversation = 1;
	for (;;) {
		if (tty)
			fputs("> ", stdout), fflush(stdout);
		interrupted = 0;
		errno = 0;
		ssize_t n = getline(&line, &cap, stdin);
		if (n < 0) {
			if (errno == EINTR) { /* Ctrl-C at the prompt: a new line */
				clearerr(stdin);
				putchar('\n');
				continue;
			}
			if (tty)
				putchar('\n');
			break; /* Ctrl-D, or the end of the input */
		}
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (!n)
			continue;
		if (!strcmp(line, "/reset")) {
			json_decref(msgs);
			msgs = first_messages(po->system);
			moe_session_rewind(s, 0);
			fputs("(a new conversation)\n", stdout);
			continue;
		}
		if (!strcmp(line, "/stats")) {
			struct expert_report er;
			expert_report_init(&er, m, prefetch_depth);
			fprintf(stderr, "moe-run: context %zu of %zu tokens\n", moe_session_pos(s), moe_session_ctx(s));
			expert_report_line(&er);
			continue;
		}
		json_array_append_new(msgs, json_pack("{s:s, s:s%}", "role", "user", "content", line, (size_t)n));
		char *text = json_dumps(msgs, JSON_COMPACT);
		int32_t *ids = NULL;
		size_t n_ids = 0;
		if (!text) {
			rc = say("the line is not UTF-8 text");
			break;
		}
		rc = chat_ids(g->tok, tmpl, text, po->chat_kwargs, &ids, &n_ids);
		free(text);
		if (rc)
			break;
		if (n_ids + 1 >= moe_session_ctx(s)) {
			fprintf(stderr, "moe-run: the conversation is %zu tokens; the context holds %zu: /reset starts over\n",
				n_ids, moe_session_ctx(s));
			json_array_remove(msgs, json_array_size(msgs) - 1);
			free(ids);
			continue;
		}
		running = s;
		int erc;
		for (int tries = 0;; tries++) {
			size_t common = moe_session_common_prefix(s, ids, n_ids);
			if (common == n_ids) /* the logits after the last token are needed */
				common--;
			moe_session_rewind(s, common);
			erc = moe_session_eval(s, ids + common, n_ids - common, NULL);
			/* a Ctrl-C that came as the last reply ended left its cancel for this eval */
			if (erc != MOE_ECANCELED || interrupted || tries)
				break;
		}
		free(ids);
		g->n_predict = per_reply > 0 ? per_reply : LONG_MAX; /* a full context stops it too */
		moe_stopper_free(g->stops);
		g->stops = NULL;
		if (erc == 0 && moe_stopper_new(stop_strs, n_stops, &g->stops))
			rc = fail();
		else if (erc == 0)
			rc = generate(s, m, g);
		else if (!interrupted)
			rc = fail();
		running = NULL;
		putchar('\n');
		if (rc)
			break;
		json_array_append_new(msgs, json_pack("{s:s, s:s%}", "role", "assistant", "content", g->text ? g->text : "",
						      g->text_len));
		free(g->text);
		g->text = NULL;
		g->text_len = 0;
	}
	free(line);
	json_decref(msgs);
	return rc;
}

int main(int argc, char **argv)
{
	moe_check_stdout_at_exit("moe-run");
	const char *model = NULL, *logits_out = NULL;
	long n_predict = 16, ctx = 4096, batch = 32;
	int threads = (int)sysconf(_SC_NPROCESSORS_ONLN), stats = 0, ignore_eos = 0;
	moe_sampler_params sp;
	moe_sampler_params_init(&sp);
	struct prompt_options po = {.add_special = 1};
	moe_model_params mp;
	moe_model_params_init(&mp);
	int interactive = 0, n_given = 0;
	enum { O_TOKENS = 256, O_TEMP, O_TOPK, O_TOPP, O_MINP, O_REP, O_SEED, O_LOGITS, O_STATS, O_KV, O_BUDGET,
	       O_TRUNC, O_SJSON, O_TOKENIZE, O_DETOKENIZE, O_TOKENIZER, O_ADD_SPECIAL, O_NO_ADD_SPECIAL,
	       O_SKIP_SPECIAL, O_CHAT, O_SYSTEM, O_MESSAGES, O_CHAT_TEMPLATE, O_CHAT_KWARGS, O_PRINT_PROMPT, O_STOP,
	       O_IGNORE_EOS, O_MLOCK, O_IO_DEPTH, O_NO_VERIFY, O_POLICY, O_PREFETCH, O_TRACE, O_NO_OFFLOAD, O_PPL,
	       O_KL_BASE, O_EXPERT_TIMEOUT, O_SHIFT, O_KEEP, O_INTERACTIVE, O_EXPERTS_PER_TOKEN, O_ROUTES_FROM, O_PIN };
	int tokenize = 0, detokenize = 0, skip_special = 0;
	char *ppl_text = NULL;
	const char *tokenizer_path = NULL;
	const char *kv_s = "f16", *stats_json = NULL;
	const char *stops[16];
	size_t n_stops = 0;
	uint64_t budget = 0;
	const char *budget_s = getenv("MOE_RAM_BUDGET"), *trace_out = NULL, *routes_from = NULL;
	long io_depth = 8, prefetch_depth = 1, experts_per_token = 0;
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
		{"experts-per-token", required_argument, NULL, O_EXPERTS_PER_TOKEN},
		{"routes-from", required_argument, NULL, O_ROUTES_FROM}, {"pin", required_argument, NULL, O_PIN},
		{"interactive", no_argument, NULL, 'i'}, {"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "m:n:t:c:b:p:ihV", opts, NULL)) != -1) {
		char *end = NULL;
		switch (c) {
		case 'm': model = optarg; break;
		case O_TOKENS: po.tokens = optarg; break;
		case 'n': n_predict = strtol(optarg, &end, 10), n_given = 1; break;
		case 'i': interactive = 1; break;
		case 't': threads = (int)strtol(optarg, &end, 10); break;
		case 'c': ctx = strtol(optarg, &end, 10); break;
		case 'b': batch = strtol(optarg, &end, 10); break;
		case O_TEMP: sp.temperature = strtod(optarg, &end); break;
		case O_TOPK: sp.top_k = (size_t)strtoul(optarg, &end, 10); break;
		case O_TOPP: sp.top_p = strtod(optarg, &end); break;
		case O_MINP: sp.min_p = strtod(optarg, &end); break;
		case O_REP: sp.repeat_penalty = strtod(optarg, &end); break;
		case O_SEED: sp.seed = strtoull(optarg, &end, 10); break;
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
		case O_MLOCK: mp.mlock = 1; break;
		case O_PIN: mp.pin_file = optarg; break;
		case O_IO_DEPTH: io_depth = strtol(optarg, &end, 10); break;
		case O_NO_VERIFY: mp.verify = 0; break;
		case O_EXPERT_TIMEOUT:
			mp.expert_timeout = strtod(optarg, &end);
			if (!(mp.expert_timeout > 0 && mp.expert_timeout <= 86400)) {
				fprintf(stderr, "moe-run: --expert-timeout %s: seconds, more than 0 and at most 86400\n", optarg);
				return 2;
			}
			break;
		case O_POLICY:
			if ((mp.cache_policy = moe_cache_policy_parse(optarg)) < 0) {
				fprintf(stderr, "moe-run: --cache-policy %s: lru, lfu or next\n", optarg);
				return 2;
			}
			break;
		case O_PREFETCH: prefetch_depth = strtol(optarg, &end, 10); break;
		case O_TRACE: trace_out = optarg; break;
		case O_ROUTES_FROM: routes_from = optarg; break;
		case O_NO_OFFLOAD: no_offload = 1; break;
		case O_EXPERTS_PER_TOKEN:
			experts_per_token = strtol(optarg, &end, 10);
			if (experts_per_token < 1 || experts_per_token > 256) {
				fprintf(stderr, "moe-run: --experts-per-token %s: 1 up to the model's number\n", optarg);
				return 2;
			}
			break;
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
	if (interactive && (po.chat || po.tokens || po.text || po.messages || po.print_prompt)) {
		fputs("moe-run: -i reads the conversation from the terminal: it goes without --chat, -p, --tokens, "
		      "--messages and --print-prompt\n", stderr);
		return 2;
	}
	if ((po.system || po.messages || po.chat_template || po.chat_kwargs || po.print_prompt) && !po.chat && !interactive) {
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
	if (n_predict < -1 || keep < -1 || ctx < 1 || batch < 1 || batch > MOE_MAX_BATCH || threads < 1 || threads > 256 || sp.temperature < 0 ||
	    sp.top_p <= 0 || sp.top_p > 1 || sp.min_p < 0 || sp.min_p > 1 || sp.repeat_penalty <= 0) {
		fputs("moe-run: option out of range (moe-run --help)\n", stderr);
		return 2;
	}
	if (interactive && ppl_file) {
		fputs("moe-run: -i goes without --perplexity\n", stderr);
		return 2;
	}
	mp.threads = threads, mp.n_ctx = (size_t)ctx, mp.n_batch = (size_t)batch, mp.ram_budget = budget;
	struct moe_progress load_bar = {.enabled = isatty(STDERR_FILENO)};
	mp.progress = moe_progress_load, mp.progress_user = &load_bar;
	mp.kv_type = strcmp(kv_s, "f16") ? MOE_KV_F32 : MOE_KV_F16, mp.offload = !no_offload;
	mp.prefetch_depth = (unsigned)prefetch_depth, mp.io_depth = (unsigned)io_depth;
	mp.experts_per_token = (unsigned)experts_per_token;
	int rc = 1;
	int32_t *prompt = NULL;
	size_t n_prompt = 0;
	moe_model *m = NULL;
	moe_session *s = NULL;
	moe_sampler *sampler = NULL;
	struct text_side ts = {0};
	struct generation g = {0};
	FILE *trace_fp = NULL, *stats_fp = NULL;
	float *all = NULL;
	/* opened first, so that a path that cannot be written is refused before any work */
	if (stats_json && !(stats_fp = fopen(stats_json, "w"))) {
		fprintf(stderr, "moe-run: %s: cannot write: %s\n", stats_json, strerror(errno));
		goto out;
	}
	if (moe_sampler_new(&sp, &sampler)) {
		fail();
		goto out;
	}
	if (model)
		moe_trap_truncated_mapping("moe-run", model);
	/* the text side alone (the model is not needed to show a prompt or its ids) */
	const int text_only = po.print_prompt || tokenize;
	if (!text_only && moe_model_open(model, &mp, &m)) {
		fail();
		goto out;
	}
	if (text_side_open(&ts, model, tokenizer_path, m))
		goto out;
	if (((po.chat || interactive) && chat_template(&po, &ts.tmpl)) ||
	    (!interactive && build_prompt(&po, ts.tok, ts.tmpl, &prompt, &n_prompt)))
		goto out;
	if (po.print_prompt) {
		rc = 0;
		goto out;
	}
	if (tokenize) { /* --chat --tokenize: the ids of the rendered conversation */
		print_ids(prompt, n_prompt);
		rc = 0;
		goto out;
	}
	if (interactive && !ts.tok) {
		say("-i needs a tokenizer: the pack has none (--tokenizer FILE)");
		goto out;
	}
	moe_model_info info;
	moe_model_get_info(m, &info);
	const size_t vocab = info.n_vocab;
	ctx = (long)info.n_ctx;
	/* -1, or more than the context can hold: until it is full, or shifting, until the end of sequence */
	if (interactive && !n_given)
		n_predict = -1;
	if (n_predict < 0 || (n_predict > ctx && !context_shift))
		n_predict = context_shift ? LONG_MAX : ctx;
	size_t n_keep = keep < 0 || (size_t)keep > n_prompt ? n_prompt : (size_t)keep;
	if (!ppl_file && !interactive && n_prompt > (size_t)ctx && !truncate) { /* --perplexity reads it in chunks */
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
	if (moe_session_open(m, &s)) {
		fail();
		goto out;
	}
	if (trace_out && !(trace_fp = fopen(trace_out, "w"))) {
		fprintf(stderr, "moe-run: %s: %s\n", trace_out, strerror(errno));
		goto out;
	}
	if (trace_fp) {
		fprintf(trace_fp, "{\"trace\": \"moemap expert routes\", \"layers\": %llu, \"experts\": %llu, \"experts_used\": %llu}\n",
			(unsigned long long)info.n_layers, (unsigned long long)info.n_experts,
			(unsigned long long)info.n_experts_used);
		moe_session_trace(s, trace_fp);
	}
	if (routes_from && moe_session_routes_from(s, routes_from)) {
		fail();
		goto out;
	}
	if (isatty(STDERR_FILENO))
		load_banner(m);
	if (ppl_file) {
		double ppl = 0, t_ppl = moe_now();
		size_t scored = 0;
		if (perplexity(s, vocab, prompt, n_prompt, (size_t)ctx, (size_t)batch, logits_out, kl_base, &ppl, &scored))
			goto out;
		t_ppl = moe_now() - t_ppl;
		struct expert_report er;
		expert_report_init(&er, m, prefetch_depth);
		if (stats_fp) {
			fprintf(stats_fp, "{\"perplexity\": %.6f, \"tokens\": %zu, \"scored_tokens\": %zu, \"seconds\": %.6f, "
				"\"tokens_per_second\": %.3f, \"batch\": %ld, \"kernels\": \"%s\", \"threads\": %d,\n",
				ppl, n_prompt, scored, t_ppl, (double)n_prompt / t_ppl, batch, info.kernels, info.threads);
			expert_report_json(stats_fp, &er);
			fputs("}\n", stats_fp);
			if (close_stats_json(&stats_fp, stats_json))
				goto out;
		}
		if (stats) {
			fprintf(stderr, "moe-run: perplexity over %zu tokens in %.3f s (%.1f tok/s, batches of %ld), kernels %s, %d threads\n",
				n_prompt, t_ppl, (double)n_prompt / t_ppl, batch, info.kernels, info.threads);
			if (!no_offload)
				expert_report_line(&er);
		}
		rc = 0;
		goto out;
	}
	/* text in, text out (special tokens not shown); ids in, ids out */
	g.tok = ts.tok && !po.tokens ? ts.tok : NULL;
	g.sampler = sampler;
	g.n_eos = ts.tok && !ignore_eos ? moe_tokenizer_eos(ts.tok, &g.eos) : 0;
	/* text out: only ids with text. A model's vocabulary is often padded past its
	 * tokenizer's (Qwen3: 151936 rows, 151669 tokens); those rows are never sampled. */
	g.n_sampled = g.tok && moe_tokenizer_vocab(g.tok) < vocab ? moe_tokenizer_vocab(g.tok) : vocab;
	g.n_predict = n_predict, g.context_shift = context_shift, g.n_keep = n_keep;
	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (interactive) {
		g.reply = 1;
		rc = converse(s, m, ts.tmpl, &po, &g, stops, n_stops, prefetch_depth, n_given ? n_predict : -1) ? 1 : 0;
		if (!rc && stats) {
			struct expert_report er;
			expert_report_init(&er, m, prefetch_depth);
			expert_report_line(&er);
		}
		goto out;
	}
	if (moe_stopper_new(stops, n_stops, &g.stops)) {
		fail();
		goto out;
	}
	all = logits_out ? malloc(n_prompt * vocab * sizeof(float)) : NULL;
	if (logits_out && !all) {
		fputs("moe-run: out of memory\n", stderr);
		goto out;
	}
	double t0 = moe_now();
	if (moe_session_eval(s, prompt, n_prompt, all)) {
		fail();
		goto out;
	}
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
	t0 = moe_now();
	if (generate(s, m, &g))
		goto out;
	if (!g.tok && g.generated)
		putchar('\n');
	else if (g.tok && isatty(STDOUT_FILENO))
		putchar('\n'); /* a terminal's prompt on a line of its own; pipes get the text exactly */
	const double t_decode = moe_now() - t0;
	const size_t generated = g.generated;
	struct expert_report er;
	expert_report_init(&er, m, prefetch_depth);
	if (stats_fp) {
		fprintf(stats_fp, "{\"prompt_tokens\": %zu, \"prefill_seconds\": %.6f, \"prefill_tokens_per_second\": %.3f, "
			"\"generated_tokens\": %zu, \"decode_seconds\": %.6f, \"decode_tokens_per_second\": %.3f, "
			"\"ms_per_token\": %.3f, \"kernels\": \"%s\", \"threads\": %d, \"kv_type\": \"%s\", "
			"\"resident_bytes\": %llu, \"session_bytes\": %llu, \"context_shifts\": %zu, \"stop_reason\": \"%s\",\n",
			n_prompt, t_prefill, (double)n_prompt / t_prefill, generated, t_decode,
			generated > 1 ? (double)(generated - 1) / t_decode : 0.0,
			generated > 1 ? 1e3 * t_decode / (double)(generated - 1) : 0.0, info.kernels, info.threads, kv_s,
			(unsigned long long)info.dense_bytes, (unsigned long long)info.session_bytes, g.shifts, g.stop_reason);
		expert_report_json(stats_fp, &er);
		fputs(",\n \"per_token\": [", stats_fp);
		for (size_t i = 0; i < g.n_token_stats; i++)
			fprintf(stats_fp, "%s{\"hits\": %llu, \"prefetch_hits\": %llu, \"misses\": %llu, \"bytes_read\": %llu, "
				"\"wait_ms\": %.3f}", i ? ",\n  " : "\n  ", (unsigned long long)g.per_token[i].hits,
				(unsigned long long)g.per_token[i].prefetch_hits, (unsigned long long)g.per_token[i].misses,
				(unsigned long long)g.per_token[i].bytes, g.per_token[i].wait * 1e3);
		fputs("]}\n", stats_fp);
		if (close_stats_json(&stats_fp, stats_json))
			goto out;
	}
	if (stats) {
		fprintf(stderr, "moe-run: prefill %zu tokens in %.3f s (%.1f tok/s), decode %zu tokens in %.3f s (%.1f tok/s, %.1f ms/token), kernels %s, %d threads\n",
			n_prompt, t_prefill, (double)n_prompt / t_prefill, generated, t_decode,
			generated > 1 ? (double)(generated - 1) / t_decode : 0.0,
			generated > 1 ? 1e3 * t_decode / (double)(generated - 1) : 0.0, info.kernels, info.threads);
		if (!no_offload && g.n_token_stats) {
			struct token_stats sum = {0};
			for (size_t i = 0; i < g.n_token_stats; i++) {
				sum.misses += g.per_token[i].misses, sum.prefetch_hits += g.per_token[i].prefetch_hits;
				sum.bytes += g.per_token[i].bytes, sum.wait += g.per_token[i].wait;
			}
			const double k = (double)g.n_token_stats;
			fprintf(stderr, "moe-run: per decoded token: %.2f misses, %.2f prefetched, %.1f MB read, %.1f ms waiting for experts\n",
				sum.misses / k, sum.prefetch_hits / k, sum.bytes / k / 1e6, 1e3 * sum.wait / k);
		}
		if (!no_offload)
			expert_report_line(&er);
	}
	rc = interrupted ? 128 + interrupted : 0;
out:
	free(all);
	free(prompt);
	free(ppl_text);
	free(g.per_token);
	free(g.text);
	moe_stopper_free(g.stops);
	if (stats_fp) { /* a run that failed leaves no stats file */
		fclose(stats_fp);
		unlink(stats_json);
	}
	if (trace_fp && fclose(trace_fp) != 0 && rc == 0) {
		fprintf(stderr, "moe-run: %s: %s\n", trace_out, strerror(errno));
		rc = 1;
	}
	moe_sampler_free(sampler);
	text_side_close(&ts);
	moe_session_close(s);
	moe_model_close(m);
	return rc;
}
