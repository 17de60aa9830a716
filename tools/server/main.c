/* moe-server - an OpenAI-compatible HTTP server for a pack, on the public API
 * (moe.h) alone. HTTP is libmicrohttpd's (a thread per connection), JSON jansson's.
 *
 * One worker thread owns the model and --parallel session slots. A request is
 * parsed by its connection thread and queued (503 when the queue is full); the
 * worker gives it the free slot whose context shares the longest prefix with its
 * prompt and prefills what is not shared one batch (-b) at a time, a decode step
 * between two batches: a long prompt does not stall the other slots' streams. A
 * decode step runs every generating slot's next token in one batch, so each
 * expert read serves every sequence routed to it. Text
 * goes back through the job under the server's lock: a connection thread waits
 * for it and writes it out, as server-sent events when streaming. A client that
 * goes away cancels its job, which frees its slot before the next token. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/progress.h"
#include "moe.h"

#define MAX_STOPS 16
#define MAX_TOP_LOGPROBS 20
#define NO_LOGPROBS SIZE_MAX /* choice_json: "logprobs": null */

static void usage(FILE *fp)
{
	fputs("usage: moe-server -m PACK [options]\n"
	      "  -m, --model PACK         the pack to serve\n"
	      "      --host ADDR          address to listen on (default 127.0.0.1; 0.0.0.0: every interface)\n"
	      "      --port N             port (default 8080; 0: any free port, printed on stderr)\n"
	      "      --alias NAME         the model's id in the API (default: the pack's file name)\n"
	      "      --api-key KEY        require \"Authorization: Bearer KEY\" on /v1/ (also MOE_API_KEY)\n"
	      "      --parallel N         requests decoded together, one session slot each, 1..64 (default 1)\n"
	      "      --queue N            requests waiting for a slot before 503, 0..1024 (default 16)\n"
	      "      --max-body SIZE      largest request body, else 413 (default 1M)\n"
	      "      --chat-template T    a template file, or mistral-v1 / chatml (default: the pack's)\n"
	      "engine (as moe-run):\n"
	      "  -t, --threads N          threads (default: all CPUs)\n"
	      "  -c, --ctx-size N         context of each slot in tokens (default 4096, at most the model's)\n"
	      "  -b, --batch N            prompt tokens per forward pass, 1..512 (default 32)\n"
	      "      --kv-type T          f16 (default) or f32\n"
	      "      --ram-budget SIZE    dense weights + every slot's KV cache + expert cache (also MOE_RAM_BUDGET;\n"
	      "                           default 90% of available memory)\n"
	      "      --cache-policy P     lru (default), lfu or next\n"
	      "      --prefetch-depth K   0..8 (default 1)\n"
	      "      --io-depth N         1..256 (default 8)\n"
	      "      --no-verify          skip the XXH3 check of each expert read\n"
	      "      --expert-timeout S   seconds (default 30)\n"
	      "      --mlock              lock the dense weights and the expert cache in RAM\n"
	      "      --pin FILE           hold the experts of a pin list (moe-bench profile) in the cache for good\n"
	      "      --no-offload         experts through the page cache (mmap)\n"
	      "      --experts-per-token K  fewer experts per token than the model's (moe-tuning(7))\n"
	      "  -h, --help               this text\n"
	      "  -V, --version            version\n"
	      "Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,\n"
	      "GET /metrics. See moe-server(1).\n",
	      fp);
}

/* ---- jobs ---- */

/* A generated token's log-probability under the model (its logits' log-softmax,
 * before temperature or penalties) and the likeliest alternatives. */
struct token_logprob {
	int32_t id, prev;             /* prev: the token before it, to spell alternatives */
	char *text;                   /* what it added to the streamed text */
	int has_logprob;              /* 0 for a prompt's first token (echo) */
	float logprob;
	int n_top;
	int32_t top_id[MAX_TOP_LOGPROBS];
	float top_lp[MAX_TOP_LOGPROBS];
};

enum job_state { JOB_QUEUED, JOB_PREFILL, JOB_RUNNING, JOB_DONE };

struct job {
	/* the request, read-only once queued */
	int chat, stream, include_usage;
	char *input;                  /* chat: the messages as JSON; completion: the prompt */
	int32_t *ids;                 /* a completion's prompt given as token ids, or NULL */
	size_t n_ids;
	int echo;                     /* the prompt returned before the reply, with its logprobs */
	long max_tokens;              /* -1: until the context is full */
	moe_sampler_params sp;
	char *stops[MAX_STOPS];
	size_t n_stops;
	int logprobs, top_logprobs;   /* log-probabilities asked for, with this many alternatives */
	char id[40];
	long long created;
	/* progress, under srv.lock */
	enum job_state state;
	int status;                   /* an error's HTTP status, 0 if none */
	char *error, *error_type;
	char *out;                    /* generated text so far */
	size_t out_len, out_cap;
	const char *finish;           /* "stop", "length" */
	size_t prompt_tokens, reused_tokens, completion_tokens;
	struct token_logprob *lps;    /* one per generated token when logprobs */
	size_t n_lps, cap_lps;
	int canceled;
	int refs;                     /* the connection's and the worker's */
	pthread_cond_t changed;
	struct job *next;
};

struct slot {
	moe_session *s;
	struct job *job;
	moe_sampler *sampler;
	moe_detokenizer *detok;
	moe_stopper *stopper;
	long limit;                   /* tokens it may still generate */
	int32_t *prompt;              /* while prefilling: the prompt, run up to prompt_at */
	size_t prompt_n, prompt_at;
	moe_detokenizer *echo_detok;  /* echo: the prompt's text, token by token */
	float *echo_logits;           /* echo with logprobs: [1 + echo_batch][n_vocab], row 0 the
				       * last position of the batch before */
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t work;
	struct job *head, *tail;
	size_t queued, queue_max;
	int stop;
	moe_model *model;
	const moe_tokenizer *tok;
	char *tmpl;
	size_t n_sampled, n_vocab, ctx, n_batch;
	size_t echo_batch;            /* prompt tokens per pass when their logits are kept: 16 MiB */
	struct slot *slots;
	unsigned n_slots;
	const char *model_id, *api_key;
	size_t max_body;
	long long started;
	/* for /metrics, under lock */
	uint64_t requests, errors, rejected, canceled, prompt_tokens, reused_tokens, generated, batches, batch_rows;
	moe_stats stats;
} srv = {.lock = PTHREAD_MUTEX_INITIALIZER, .work = PTHREAD_COND_INITIALIZER};

static void job_release(struct job *j) /* under srv.lock */
{
	if (--j->refs)
		return;
	free(j->input);
	free(j->ids);
	for (size_t i = 0; i < j->n_stops; i++)
		free(j->stops[i]);
	free(j->out);
	for (size_t i = 0; i < j->n_lps; i++)
		free(j->lps[i].text);
	free(j->lps);
	free(j->error);
	free(j->error_type);
	pthread_cond_destroy(&j->changed);
	free(j);
}

static void job_fail(struct job *j, int status, const char *type, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void job_fail(struct job *j, int status, const char *type, const char *fmt, ...) /* under srv.lock */
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	j->status = status;
	j->error = strdup(msg);
	j->error_type = strdup(type);
	j->state = JOB_DONE;
	srv.errors++;
	pthread_cond_broadcast(&j->changed);
}

static int job_append(struct job *j, const char *text, size_t len) /* under srv.lock */
{
	if (j->out_len + len + 1 > j->out_cap) {
		size_t cap = j->out_cap ? j->out_cap : 256;
		while (cap < j->out_len + len + 1)
			cap *= 2;
		char *nb = realloc(j->out, cap);
		if (!nb)
			return -1;
		j->out = nb, j->out_cap = cap;
	}
	memcpy(j->out + j->out_len, text, len);
	j->out_len += len;
	j->out[j->out_len] = '\0';
	if (len)
		pthread_cond_broadcast(&j->changed);
	return 0;
}

/* Token id's entry, from the logits it was sampled from (NULL for a prompt's
 * first token, which nothing predicts): its log-softmax and the top_logprobs
 * likeliest (kept sorted by insertion). Under srv.lock. */
static int job_logprob(struct job *j, const float *logits, size_t n, int32_t id, int32_t prev, const char *text,
		       size_t len)
{
	if (j->n_lps == j->cap_lps) {
		const size_t cap = j->cap_lps ? 2 * j->cap_lps : 64;
		struct token_logprob *nb = realloc(j->lps, cap * sizeof *nb);
		if (!nb)
			return -1;
		j->lps = nb, j->cap_lps = cap;
	}
	struct token_logprob *e = &j->lps[j->n_lps];
	e->text = malloc(len + 1);
	if (!e->text)
		return -1;
	memcpy(e->text, text, len);
	e->text[len] = '\0';
	e->id = id, e->prev = prev, e->n_top = 0, e->has_logprob = logits != NULL, e->logprob = 0;
	j->n_lps++;
	if (!logits)
		return 0;
	float mx = -INFINITY;
	for (size_t i = 0; i < n; i++)
		mx = logits[i] > mx ? logits[i] : mx;
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += exp((double)logits[i] - mx);
	const double lse = mx + log(sum);
	e->logprob = (float)(logits[id] - lse);
	for (size_t i = 0; i < n && j->top_logprobs; i++) {
		int k;
		if (e->n_top < j->top_logprobs)
			k = e->n_top++;
		else if (logits[i] > logits[e->top_id[e->n_top - 1]])
			k = e->n_top - 1; /* the last one makes room */
		else
			continue;
		for (; k > 0 && logits[i] > logits[e->top_id[k - 1]]; k--) /* a tie keeps the lower id first */
			e->top_id[k] = e->top_id[k - 1];
		e->top_id[k] = (int32_t)i;
	}
	for (int k = 0; k < e->n_top; k++)
		e->top_lp[k] = (float)(logits[e->top_id[k]] - lse);
	return 0;
}

/* ---- the worker ---- */

static void slot_free(struct slot *sl) /* under srv.lock */
{
	moe_sampler_free(sl->sampler);
	moe_detokenizer_free(sl->detok);
	moe_stopper_free(sl->stopper);
	moe_detokenizer_free(sl->echo_detok);
	free(sl->prompt);
	free(sl->echo_logits);
	sl->sampler = NULL, sl->detok = NULL, sl->stopper = NULL, sl->prompt = NULL, sl->echo_detok = NULL;
	sl->echo_logits = NULL;
	if (sl->job)
		job_release(sl->job);
	sl->job = NULL;
}

/* The job's prompt as ids: a chat through the template, a completion as text with
 * the tokenizer's BOS. Runs without the lock (the request is read-only). */
static int prompt_ids(const struct job *j, int32_t **ids, size_t *n)
{
	if (j->ids) {
		*n = j->n_ids;
		if (!(*ids = malloc(j->n_ids * sizeof **ids)))
			return -1;
		memcpy(*ids, j->ids, j->n_ids * sizeof **ids);
		return 0;
	}
	if (!j->chat)
		return moe_tokenize(srv.tok, j->input, strlen(j->input), 1, ids, n);
	if (!srv.tmpl) {
		*n = 0;
		return -1;
	}
	char *text;
	size_t len;
	int rc = moe_chat_prompt(srv.tok, srv.tmpl, j->input, NULL, 1, &text, &len);
	if (!rc) {
		rc = moe_tokenize(srv.tok, text, len, 0, ids, n);
		free(text);
	}
	return rc;
}

/* echo: prompt tokens from .. to - 1 into the job's text, and with logprobs their
 * entries; rows[i] holds the logits of the position before token from + i (a
 * prompt's first token has none). Under srv.lock. */
static int echo_prompt(struct slot *sl, size_t from, size_t to, const float *rows)
{
	struct job *j = sl->job;
	for (size_t t = from; t < to; t++) {
		const char *text;
		size_t len;
		if (moe_detokenizer_push(sl->echo_detok, sl->prompt[t], &text, &len) || job_append(j, text, len))
			return -1;
		if (j->logprobs && job_logprob(j, t ? rows + (t - from) * srv.n_vocab : NULL, srv.n_sampled, sl->prompt[t],
					       t ? sl->prompt[t - 1] : -1, text, len))
			return -1;
	}
	if (to == sl->prompt_n) { /* what the prompt's detokenizer held back */
		const char *text;
		size_t len;
		if (moe_detokenizer_finish(sl->echo_detok, &text, &len) || job_append(j, text, len))
			return -1;
	}
	return 0;
}

/* Give j a free slot (the one whose context shares most of its prompt), to be
 * prefilled from where they differ. Called with the lock held; drops it while
 * tokenizing. */
static void admit(struct job *j)
{
	int32_t *ids = NULL;
	size_t n = 0;
	pthread_mutex_unlock(&srv.lock);
	int rc = prompt_ids(j, &ids, &n);
	pthread_mutex_lock(&srv.lock);
	if (rc || n == 0 || n >= srv.ctx) {
		if (rc)
			job_fail(j, 400, "invalid_request_error", "%s", srv.tmpl || !j->chat ? moe_last_error()
					 : "the pack has no chat template: use /v1/completions, or start with --chat-template");
		else
			job_fail(j, 400, "invalid_request_error",
				 "the prompt is %zu tokens; the context holds %zu (this leaves none for the reply)", n, srv.ctx);
		job_release(j);
		free(ids);
		return;
	}
	struct slot *sl = NULL;
	size_t best = 0;
	for (unsigned i = 0; i < srv.n_slots; i++) {
		struct slot *c = &srv.slots[i];
		size_t common = c->job ? 0 : moe_session_common_prefix(c->s, ids, n);
		if (!c->job && (!sl || common > best))
			sl = c, best = common;
	}
	if (best == n) /* the logits after the last prompt token are needed */
		best = n - 1;
	if (j->echo && j->logprobs)
		best = 0; /* every prompt position's logits are needed */
	sl->job = j;
	j->prompt_tokens = n, j->reused_tokens = best;
	srv.prompt_tokens += n, srv.reused_tokens += best;
	moe_session_rewind(sl->s, best);
	sl->prompt = ids, sl->prompt_n = n, sl->prompt_at = best;
	j->state = JOB_PREFILL;
	if (j->echo &&
	    (moe_detokenizer_new(srv.tok, 1, &sl->echo_detok) ||
	     (j->logprobs && !(sl->echo_logits = malloc((1 + srv.echo_batch) * srv.n_vocab * sizeof(float)))) ||
	     echo_prompt(sl, 0, best, NULL))) {
		job_fail(j, 500, "server_error", "out of memory for the echoed prompt");
		slot_free(sl);
	}
}

static void finish(struct slot *sl, const char *reason);

/* One batch of one prefilling slot's prompt (each in turn); its last batch makes
 * it generate. Called with the lock held; drops it while computing. */
static void prefill_step(void)
{
	static unsigned turn;
	struct slot *sl = NULL;
	for (unsigned k = 0; k < srv.n_slots && !sl; k++) {
		struct slot *c = &srv.slots[(turn + k) % srv.n_slots];
		if (c->job && c->job->state == JOB_PREFILL)
			sl = c, turn = (turn + k + 1) % srv.n_slots;
	}
	if (!sl)
		return;
	struct job *j = sl->job;
	if (j->canceled) {
		srv.canceled++, j->state = JOB_DONE, pthread_cond_broadcast(&j->changed);
		slot_free(sl);
		return;
	}
	const size_t at = sl->prompt_at, batch = sl->echo_logits ? srv.echo_batch : srv.n_batch;
	const size_t k = sl->prompt_n - at < batch ? sl->prompt_n - at : batch;
	const int last = at + k == sl->prompt_n;
	moe_sampler_params sp = j->sp;
	float *rows = sl->echo_logits; /* echo with logprobs: row 0 the position before at */
	pthread_mutex_unlock(&srv.lock);
	int rc = moe_session_eval(sl->s, sl->prompt + at, k, rows ? rows + srv.n_vocab : NULL);
	if (!rc && last)
		rc = moe_sampler_new(&sp, &sl->sampler);
	if (!rc && last)
		rc = moe_detokenizer_new(srv.tok, 1, &sl->detok);
	if (!rc && last)
		rc = moe_stopper_new((const char *const *)j->stops, j->n_stops, &sl->stopper);
	pthread_mutex_lock(&srv.lock);
	if (rc) {
		if (rc == MOE_ECANCELED || j->canceled)
			srv.canceled++, j->state = JOB_DONE, pthread_cond_broadcast(&j->changed);
		else
			job_fail(j, rc == MOE_EINVAL ? 400 : 500, rc == MOE_EINVAL ? "invalid_request_error" : "server_error",
				 "%s", moe_last_error());
		slot_free(sl);
		return;
	}
	if (sl->echo_detok && echo_prompt(sl, at, at + k, rows)) {
		job_fail(j, 500, "server_error", "out of memory for the echoed prompt");
		slot_free(sl);
		return;
	}
	if (rows) /* the batch's last position comes before the next batch's first token */
		memcpy(rows, rows + k * srv.n_vocab, srv.n_vocab * sizeof(float));
	sl->prompt_at += k;
	if (!last)
		return;
	free(sl->prompt);
	sl->prompt = NULL;
	const long room = (long)(srv.ctx - sl->prompt_n);
	sl->limit = j->max_tokens >= 0 && j->max_tokens < room ? j->max_tokens : room;
	j->state = JOB_RUNNING;
	pthread_cond_broadcast(&j->changed);
	if (sl->limit == 0) /* echo with max_tokens 0: the prompt alone */
		finish(sl, "length");
}

static void finish(struct slot *sl, const char *reason) /* under srv.lock */
{
	struct job *j = sl->job;
	const char *text;
	size_t len;
	if (strcmp(reason, "stop_string") != 0) { /* what the detokenizer and the stop filter hold back */
		if (moe_detokenizer_finish(sl->detok, &text, &len) == 0 &&
		    moe_stopper_push(sl->stopper, text, len, 1, &text, &len) >= 0)
			job_append(j, text, len);
	}
	j->finish = strcmp(reason, "length") ? "stop" : "length";
	j->state = JOB_DONE;
	srv.requests++;
	pthread_cond_broadcast(&j->changed);
	slot_free(sl);
}

/* One token for each busy slot: sample, append its text, then run all the
 * tokens that go on as one batch. Called with the lock held. */
static void decode_step(void)
{
	moe_session *batch[64];
	int32_t next[64];
	struct slot *who[64];
	size_t n = 0;
	const int32_t *eos;
	const size_t n_eos = moe_tokenizer_eos(srv.tok, &eos);
	for (unsigned i = 0; i < srv.n_slots; i++) {
		struct slot *sl = &srv.slots[i];
		struct job *j = sl->job;
		if (!j || j->state != JOB_RUNNING)
			continue;
		if (j->canceled) {
			srv.canceled++;
			j->state = JOB_DONE;
			slot_free(sl);
			continue;
		}
		moe_session *s = sl->s;
		const int32_t id = moe_sampler_sample(sl->sampler, moe_session_logits(s), srv.n_sampled,
						      moe_session_tokens(s), moe_session_pos(s));
		int end = 0;
		for (size_t k = 0; k < n_eos; k++)
			end |= id == eos[k];
		if (end) {
			finish(sl, "stop");
			continue;
		}
		const char *text;
		size_t len;
		int r = id < 0 ? -1 : moe_detokenizer_push(sl->detok, id, &text, &len);
		if (!r && j->logprobs)
			r = job_logprob(j, moe_session_logits(s), srv.n_sampled, id, moe_session_tokens(s)[moe_session_pos(s) - 1],
					text, len);
		if (!r)
			r = moe_stopper_push(sl->stopper, text, len, 0, &text, &len);
		if (r < 0 || job_append(j, text, len)) {
			job_fail(j, 500, "server_error", "%s", moe_last_error());
			slot_free(sl);
			continue;
		}
		j->completion_tokens++;
		srv.generated++;
		if (r == 1) {
			finish(sl, "stop_string");
			continue;
		}
		if (--sl->limit <= 0) {
			finish(sl, "length");
			continue;
		}
		batch[n] = s, next[n] = id, who[n] = sl;
		n++;
	}
	if (!n)
		return;
	srv.batches++;
	srv.batch_rows += n;
	pthread_mutex_unlock(&srv.lock);
	int rc = moe_session_eval_batch(batch, next, n);
	pthread_mutex_lock(&srv.lock);
	if (rc)
		for (size_t i = 0; i < n; i++) {
			job_fail(who[i]->job, 500, "server_error", "%s", moe_last_error());
			slot_free(who[i]);
		}
	moe_model_stats(srv.model, &srv.stats);
}

static void *worker(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&srv.lock);
	for (;;) {
		unsigned busy = 0;
		for (unsigned i = 0; i < srv.n_slots; i++)
			busy += srv.slots[i].job != NULL;
		if (srv.stop)
			break;
		if (srv.head && busy < srv.n_slots) {
			struct job *j = srv.head;
			srv.head = j->next;
			if (!srv.head)
				srv.tail = NULL;
			srv.queued--;
			if (j->canceled) {
				srv.canceled++;
				j->state = JOB_DONE;
				job_release(j);
			} else {
				admit(j);
			}
			continue;
		}
		if (!busy) {
			pthread_cond_wait(&srv.work, &srv.lock);
			continue;
		}
		prefill_step();
		decode_step();
	}
	pthread_mutex_unlock(&srv.lock);
	return NULL;
}

/* ---- HTTP ---- */

struct request {
	char *body;
	size_t len;
	int too_large;
};

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *type, const char *body)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", type);
	enum MHD_Result ok = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ok;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, json_t *v)
{
	char *s = json_dumps(v, JSON_COMPACT);
	json_decref(v);
	enum MHD_Result ok = s ? send_text(c, status, "application/json", s) : MHD_NO;
	free(s);
	return ok;
}

/* OpenAI's error shape: {"error": {"message", "type", "param", "code"}} */
/* OpenAI's error object; code may be NULL */
static json_t *error_json(const char *msg, const char *type, const char *code)
{
	return json_pack("{s:{s:s, s:s, s:n, s:s?}}", "error", "message", msg, "type", type, "param", "code", code);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *type, const char *code,
				  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *type, const char *code,
				  const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (status != 503) {
		pthread_mutex_lock(&srv.lock);
		srv.errors++;
		pthread_mutex_unlock(&srv.lock);
	}
	return send_json(c, status, error_json(msg, type, code));
}

static json_t *usage_json(const struct job *j)
{
	return json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens", (json_int_t)j->prompt_tokens, "completion_tokens",
			 (json_int_t)j->completion_tokens, "total_tokens", (json_int_t)(j->prompt_tokens + j->completion_tokens),
			 "prompt_tokens_details", "cached_tokens", (json_int_t)j->reused_tokens);
}

/* An alternative token's text where the chosen one stands: what it adds after
 * the token before it (a lone token may lose its leading space in decoding). */
static json_t *alternative_text(int32_t prev, int32_t id)
{
	const int32_t pair[2] = {prev, id};
	char *one = NULL, *two = NULL;
	size_t n1 = 0, n2 = 0;
	json_t *v = NULL;
	if (!moe_detokenize(srv.tok, pair, 1, 0, &one, &n1) && !moe_detokenize(srv.tok, pair, 2, 0, &two, &n2))
		v = n2 >= n1 && !memcmp(one, two, n1) ? json_stringn(two + n1, n2 - n1) : json_stringn(two, n2);
	free(one);
	free(two);
	return v ? v : json_string("");
}

/* a string's UTF-8 bytes as a JSON array of numbers (OpenAI's "bytes") */
static json_t *bytes_json(const char *text)
{
	json_t *a = json_array();
	for (const unsigned char *p = (const unsigned char *)text; *p; p++)
		json_array_append_new(a, json_integer(*p));
	return a;
}

/* Entries from .. to - 1 of the job's token log-probabilities, in the shape of its
 * endpoint: chat's {"content": [{token, logprob, bytes, top_logprobs}]}, or the
 * completions' {"tokens", "token_logprobs", "top_logprobs", "text_offset"}. */
static json_t *logprobs_json(const struct job *j, size_t from, size_t to)
{
	json_t *content = json_array(), *tokens = json_array(), *lps = json_array(), *tops = json_array(),
	       *offsets = json_array();
	size_t offset = 0; /* in characters, as Python counts them */
	for (size_t i = 0; i < to; i++) {
		const struct token_logprob *e = &j->lps[i];
		if (i >= from) {
			json_t *alts = j->chat ? json_array() : json_object();
			for (int k = 0; k < e->n_top; k++) {
				json_t *t = alternative_text(e->prev, e->top_id[k]);
				if (j->chat)
					json_array_append_new(alts, json_pack("{s:O, s:f, s:o}", "token", t, "logprob",
									      (double)e->top_lp[k], "bytes",
									      bytes_json(json_string_value(t))));
				else
					json_object_set_new(alts, json_string_value(t), json_real(e->top_lp[k]));
				json_decref(t);
			}
			if (j->chat) {
				json_array_append_new(content, json_pack("{s:s, s:f, s:o, s:o}", "token", e->text, "logprob",
									 (double)e->logprob, "bytes", bytes_json(e->text),
									 "top_logprobs", alts));
			} else {
				json_array_append_new(tokens, json_string(e->text));
				json_array_append_new(lps, e->has_logprob ? json_real(e->logprob) : json_null());
				if (e->has_logprob)
					json_array_append_new(tops, alts);
				else
					json_decref(alts), json_array_append_new(tops, json_null());
				json_array_append_new(offsets, json_integer((json_int_t)offset));
			}
		}
		for (const unsigned char *p = (const unsigned char *)e->text; *p; p++)
			offset += (*p & 0xc0) != 0x80;
	}
	if (j->chat) {
		json_decref(tokens), json_decref(lps), json_decref(tops), json_decref(offsets);
		return json_pack("{s:o, s:n}", "content", content, "refusal");
	}
	json_decref(content);
	return json_pack("{s:o, s:o, s:o, s:o}", "tokens", tokens, "token_logprobs", lps, "top_logprobs", tops,
			 "text_offset", offsets);
}

/* A choice: the whole message or text, or (stream) a delta, with the token
 * log-probabilities lp_from .. lp_to - 1 if the job asked for them (lp_to
 * NO_LOGPROBS: none in this one). */
static json_t *choice_json(const struct job *j, const char *text, size_t len, const char *finish, int stream,
			   size_t lp_from, size_t lp_to)
{
	json_t *ch = json_pack("{s:i}", "index", 0);
	if (j->chat) {
		json_t *m = json_object();
		if (text)
			json_object_set_new(m, "content", json_stringn(text, len));
		if (!stream || (text && len == 0 && !finish))
			json_object_set_new(m, "role", json_string("assistant"));
		json_object_set_new(ch, stream ? "delta" : "message", m);
	} else {
		json_object_set_new(ch, "text", json_stringn(text ? text : "", text ? len : 0));
	}
	json_object_set_new(ch, "logprobs", j->logprobs && lp_to != NO_LOGPROBS ? logprobs_json(j, lp_from, lp_to) : json_null());
	json_object_set_new(ch, "finish_reason", finish ? json_string(finish) : json_null());
	return ch;
}

static json_t *envelope(const struct job *j, json_t *choice, int chunk)
{
	const char *object = j->chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
	return json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", j->id, "object", object, "created", (json_int_t)j->created,
			 "model", srv.model_id, "choices", choice);
}

/* The events of a stream, produced into a buffer that the reader hands out. */
struct stream {
	struct job *j;
	char *buf;
	size_t len, off;
	size_t sent;         /* bytes of j->out already sent */
	size_t lp_sent;      /* and token log-probabilities */
	int started, ended;
};

static int stream_append(struct stream *st, const char *s, size_t n)
{
	char *nb = realloc(st->buf, st->len + n);
	if (!nb)
		return -1;
	memcpy(nb + st->len, s, n);
	st->buf = nb, st->len += n;
	return 0;
}

/* v as one server-sent event (NULL: the final [DONE]); takes v */
static int stream_event(struct stream *st, json_t *v)
{
	char *s = v ? json_dumps(v, JSON_COMPACT) : strdup("[DONE]");
	json_decref(v);
	if (!s)
		return -1;
	const int rc = stream_append(st, "data: ", 6) || stream_append(st, s, strlen(s)) || stream_append(st, "\n\n", 2);
	free(s);
	return rc ? -1 : 0;
}

/* A stream's next events: the role first (chat), the text since the last ones,
 * and at the end the finish (or the error), the usage if asked, [DONE]. */
static int stream_fill(struct stream *st)
{
	struct job *j = st->j;
	int rc = 0;
	if (!st->started && j->chat) /* the role first, as OpenAI's streams begin */
		rc = stream_event(st, envelope(j, choice_json(j, "", 0, NULL, 1, 0, NO_LOGPROBS), 1));
	st->started = 1;
	if (!rc && j->out_len > st->sent)
		rc = stream_event(st, envelope(j, choice_json(j, j->out + st->sent, j->out_len - st->sent, NULL, 1,
								st->lp_sent, j->n_lps), 1));
	if (j->out_len > st->sent)
		st->lp_sent = j->n_lps;
	st->sent = j->out_len;
	if (!rc && j->state == JOB_DONE) {
		if (j->error)
			rc = stream_event(st, json_pack("{s:{s:s, s:s}}", "error", "message", j->error, "type", j->error_type));
		else
			rc = stream_event(st, envelope(j, choice_json(j, NULL, 0, j->finish, 1, st->lp_sent,
								      st->lp_sent < j->n_lps ? j->n_lps : NO_LOGPROBS), 1));
		if (!rc && !j->error && j->include_usage) {
			json_t *u = envelope(j, choice_json(j, NULL, 0, NULL, 1, 0, NO_LOGPROBS), 1);
			json_array_clear(json_object_get(u, "choices"));
			json_object_set_new(u, "usage", usage_json(j));
			rc = stream_event(st, u);
		}
		if (!rc)
			rc = stream_event(st, NULL);
		st->ended = 1;
	}
	return rc;
}

/*
 * A whole (not streamed) answer, sent once generation has started: a space for
 * each step that adds text (JSON may begin with white space), so that a client
 * that has gone away is found at the next write and its job canceled within a
 * token, as a stream's is; then the JSON. The status is 200 by then: a failure
 * after the start comes as the body's "error" object.
 */
static int whole_fill(struct stream *st)
{
	struct job *j = st->j;
	if (j->state != JOB_DONE) {
		st->sent = j->out_len;
		return stream_append(st, " ", 1);
	}
	json_t *v = j->error ? error_json(j->error, j->error_type, NULL)
			     : envelope(j, choice_json(j, j->out ? j->out : "", j->out_len, j->finish, 0, 0, j->n_lps), 0);
	if (!j->error)
		json_object_set_new(v, "usage", usage_json(j));
	char *s = json_dumps(v, JSON_COMPACT);
	json_decref(v);
	const int rc = !s || stream_append(st, s, strlen(s));
	free(s);
	st->ended = 1;
	return rc;
}

/* The response's bytes: when the last ones are out, wait for the job to move on and
 * make the next (stream_fill or whole_fill). */
static ssize_t answer_read(void *cls, uint64_t pos, char *out, size_t max)
{
	(void)pos;
	struct stream *st = cls;
	struct job *j = st->j;
	if (st->off == st->len) {
		st->off = st->len = 0;
		if (st->ended)
			return MHD_CONTENT_READER_END_OF_STREAM;
		pthread_mutex_lock(&srv.lock);
		while (j->out_len == st->sent && j->state != JOB_DONE)
			pthread_cond_wait(&j->changed, &srv.lock);
		const int rc = j->stream ? stream_fill(st) : whole_fill(st);
		pthread_mutex_unlock(&srv.lock);
		if (rc)
			return MHD_CONTENT_READER_END_WITH_ERROR;
	}
	const size_t n = st->len - st->off < max ? st->len - st->off : max;
	memcpy(out, st->buf + st->off, n);
	st->off += n;
	return (ssize_t)n;
}

/* The connection is gone, whole or not: a job not done is canceled. */
static void stream_free(void *cls)
{
	struct stream *st = cls;
	pthread_mutex_lock(&srv.lock);
	if (st->j->state != JOB_DONE) { /* a stream starts after its prefill: the next step drops it */
		st->j->canceled = 1;
		pthread_cond_signal(&srv.work);
	}
	job_release(st->j);
	pthread_mutex_unlock(&srv.lock);
	free(st->buf);
	free(st);
}

static int get_number(json_t *req, const char *key, double lo, double hi, double *out, char *err, size_t errlen)
{
	json_t *v = json_object_get(req, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_number(v) || json_number_value(v) < lo || json_number_value(v) > hi) {
		snprintf(err, errlen, "'%s' must be a number from %g to %g", key, lo, hi);
		return -1;
	}
	*out = json_number_value(v);
	return 0;
}

/* A request body into a job; an error message (400) otherwise. */
static struct job *parse_job(const char *body, size_t len, int chat, char *err, size_t errlen, int *not_found)
{
	json_error_t je;
	json_t *req = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
	struct job *j = calloc(1, sizeof *j);
	*not_found = 0;
	if (!j) {
		snprintf(err, errlen, "out of memory");
		json_decref(req);
		return NULL;
	}
	pthread_cond_init(&j->changed, NULL);
	j->refs = 1;
	j->chat = chat;
	moe_sampler_params_init(&j->sp);
	j->sp.temperature = 1.0, j->sp.top_k = 0; /* OpenAI's defaults */
	j->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)(uintptr_t)j << 16);
	j->max_tokens = -1;
	double d;
	json_t *v;
	if (!req) {
		snprintf(err, errlen, "the body is not JSON: %s (line %d, column %d)", je.text, je.line, je.column);
		goto bad;
	}
	if (!json_is_object(req)) {
		snprintf(err, errlen, "the body must be a JSON object");
		goto bad;
	}
	v = json_object_get(req, "model");
	if (v && !json_is_string(v)) {
		snprintf(err, errlen, "'model' must be a string");
		goto bad;
	}
	if (v && strcmp(json_string_value(v), srv.model_id) != 0) {
		snprintf(err, errlen, "the model '%s' does not exist; this server has '%s'", json_string_value(v), srv.model_id);
		*not_found = 1;
		goto bad;
	}
	if (chat) {
		v = json_object_get(req, "messages");
		size_t i;
		json_t *m;
		if (!json_is_array(v) || json_array_size(v) == 0) {
			snprintf(err, errlen, "'messages' must be a non-empty array");
			goto bad;
		}
		json_array_foreach(v, i, m) {
			json_t *c = json_object_get(m, "content");
			if (!json_is_object(m) || !json_is_string(json_object_get(m, "role")) || !(json_is_string(c) || json_is_null(c))) {
				snprintf(err, errlen, "messages[%zu] must be an object with a string 'role' and 'content'", i);
				goto bad;
			}
		}
		j->input = json_dumps(v, JSON_COMPACT);
	} else {
		/* a string or token ids, alone or as the one element of an array */
		v = json_object_get(req, "prompt");
		if (json_is_array(v) && json_array_size(v) == 1 && !json_is_integer(json_array_get(v, 0)))
			v = json_array_get(v, 0);
		if (json_is_array(v) && json_array_size(v) > 0) {
			j->n_ids = json_array_size(v);
			if (!(j->ids = malloc(j->n_ids * sizeof *j->ids))) {
				snprintf(err, errlen, "out of memory");
				goto bad;
			}
			for (size_t i = 0; i < j->n_ids; i++) {
				json_t *id = json_array_get(v, i);
				if (!json_is_integer(id) || json_integer_value(id) < 0 ||
				    json_integer_value(id) >= (json_int_t)srv.n_sampled) {
					snprintf(err, errlen, "'prompt'[%zu] must be a token id from 0 to %zu", i, srv.n_sampled - 1);
					goto bad;
				}
				j->ids[i] = (int32_t)json_integer_value(id);
			}
			j->input = strdup("");
		} else if (json_is_string(v)) {
			j->input = strdup(json_string_value(v));
		} else {
			snprintf(err, errlen, "'prompt' must be a string or an array of token ids");
			goto bad;
		}
	}
	if (!j->input) {
		snprintf(err, errlen, "out of memory");
		goto bad;
	}
	v = json_object_get(req, "n");
	if (v && !(json_is_integer(v) && json_integer_value(v) == 1)) {
		snprintf(err, errlen, "'n' must be 1");
		goto bad;
	}
	/* chat: "logprobs": true with "top_logprobs": 0..20; completions: "logprobs": 0..20 */
	v = json_object_get(req, "logprobs");
	if (chat) {
		if (v && !json_is_null(v) && !json_is_boolean(v)) {
			snprintf(err, errlen, "'logprobs' must be true or false");
			goto bad;
		}
		j->logprobs = json_is_true(v);
		d = 0;
		if (get_number(req, "top_logprobs", 0, MAX_TOP_LOGPROBS, &d, err, errlen))
			goto bad;
		if (d > 0 && !j->logprobs) {
			snprintf(err, errlen, "'top_logprobs' needs 'logprobs': true");
			goto bad;
		}
		j->top_logprobs = (int)d;
	} else if (v && !json_is_null(v)) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > MAX_TOP_LOGPROBS) {
			snprintf(err, errlen, "'logprobs' must be an integer from 0 to %d", MAX_TOP_LOGPROBS);
			goto bad;
		}
		j->logprobs = 1;
		j->top_logprobs = (int)json_integer_value(v);
	}
	v = json_object_get(req, "echo");
	if (v && !json_is_null(v) && !json_is_boolean(v)) {
		snprintf(err, errlen, "'echo' must be true or false");
		goto bad;
	}
	if (json_is_true(v) && chat) {
		snprintf(err, errlen, "'echo' is for /v1/completions");
		goto bad;
	}
	j->echo = json_is_true(v);
	v = json_object_get(req, "stream");
	if (v && !json_is_boolean(v)) {
		snprintf(err, errlen, "'stream' must be true or false");
		goto bad;
	}
	j->stream = json_is_true(v);
	v = json_object_get(json_object_get(req, "stream_options"), "include_usage");
	j->include_usage = json_is_true(v);
	d = -1; /* 0: the prompt's log-probabilities alone, with echo */
	if (get_number(req, "max_tokens", j->echo ? 0 : 1, 1e9, &d, err, errlen) ||
	    get_number(req, "max_completion_tokens", j->echo ? 0 : 1, 1e9, &d, err, errlen))
		goto bad;
	j->max_tokens = (long)d;
	d = (double)j->sp.top_k;
	if (get_number(req, "temperature", 0, 2, &j->sp.temperature, err, errlen) ||
	    get_number(req, "top_p", 1e-9, 1, &j->sp.top_p, err, errlen) ||
	    get_number(req, "min_p", 0, 1, &j->sp.min_p, err, errlen) ||
	    get_number(req, "repeat_penalty", 1e-3, 100, &j->sp.repeat_penalty, err, errlen) ||
	    get_number(req, "top_k", 0, 1e9, &d, err, errlen))
		goto bad;
	j->sp.top_k = (size_t)d;
	d = (double)j->sp.seed;
	if (get_number(req, "seed", -9.2e18, 9.2e18, &d, err, errlen))
		goto bad;
	if (json_is_integer(json_object_get(req, "seed")))
		j->sp.seed = (uint64_t)json_integer_value(json_object_get(req, "seed"));
	v = json_object_get(req, "stop");
	if (json_is_string(v)) {
		if (*json_string_value(v))
			j->stops[j->n_stops++] = strdup(json_string_value(v));
	} else if (json_is_array(v) && json_array_size(v) <= MAX_STOPS) {
		size_t i;
		json_t *s;
		json_array_foreach(v, i, s) {
			if (!json_is_string(s)) {
				snprintf(err, errlen, "'stop' must be a string or an array of strings");
				goto bad;
			}
			if (*json_string_value(s))
				j->stops[j->n_stops++] = strdup(json_string_value(s));
		}
	} else if (v && !json_is_null(v)) {
		snprintf(err, errlen, "'stop' must be a string or an array of at most %d strings", MAX_STOPS);
		goto bad;
	}
	for (size_t i = 0; i < j->n_stops; i++)
		if (!j->stops[i]) {
			snprintf(err, errlen, "out of memory");
			goto bad;
		}
	json_decref(req);
	return j;
bad:
	json_decref(req);
	job_release(j);
	return NULL;
}

static enum MHD_Result completion(struct MHD_Connection *c, const struct request *rq, int chat)
{
	char err[512];
	int not_found;
	struct job *j = parse_job(rq->body ? rq->body : "", rq->len, chat, err, sizeof err, &not_found);
	if (!j)
		return not_found ? send_error(c, 404, "invalid_request_error", "model_not_found", "%s", err)
				 : send_error(c, 400, "invalid_request_error", NULL, "%s", err);
	static unsigned long long seq;
	pthread_mutex_lock(&srv.lock);
	snprintf(j->id, sizeof j->id, "%s-%llx%04llx", chat ? "chatcmpl" : "cmpl", (unsigned long long)srv.started, ++seq);
	j->created = (long long)time(NULL);
	size_t waiting = srv.queued; /* the queued and those in slots */
	for (unsigned i = 0; i < srv.n_slots; i++)
		waiting += srv.slots[i].job != NULL;
	if (waiting >= srv.n_slots + srv.queue_max) {
		srv.rejected++;
		job_release(j);
		pthread_mutex_unlock(&srv.lock);
		return send_error(c, 503, "server_error", "server_busy", "every slot is busy and the queue is full (%zu); "
				  "try again", srv.queue_max);
	}
	j->refs = 2;
	if (srv.tail)
		srv.tail->next = j;
	else
		srv.head = j;
	srv.tail = j;
	srv.queued++;
	pthread_cond_signal(&srv.work);
	/* the answer starts once the prompt is accepted and prefilled (its errors are
	 * known then): a stream's events, or a whole answer's white space (whole_fill) */
	while (j->state == JOB_QUEUED || j->state == JOB_PREFILL)
		pthread_cond_wait(&j->changed, &srv.lock);
	if (j->error) {
		const int status = j->status;
		snprintf(err, sizeof err, "%s", j->error);
		char type[64];
		snprintf(type, sizeof type, "%s", j->error_type);
		srv.errors--; /* counted once, by send_error */
		job_release(j);
		pthread_mutex_unlock(&srv.lock);
		return send_error(c, (unsigned)status, type, NULL, "%s", err);
	}
	if (!j->stream && j->state == JOB_DONE) {
		json_t *v = envelope(j, choice_json(j, j->out ? j->out : "", j->out_len, j->finish, 0, 0, j->n_lps), 0);
		json_object_set_new(v, "usage", usage_json(j));
		job_release(j);
		pthread_mutex_unlock(&srv.lock);
		return send_json(c, 200, v);
	}
	pthread_mutex_unlock(&srv.lock);
	struct stream *st = calloc(1, sizeof *st);
	struct MHD_Response *r = st ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, answer_read, st, stream_free)
				    : NULL;
	if (!r) {
		free(st);
		pthread_mutex_lock(&srv.lock);
		j->canceled = 1;
		job_release(j);
		pthread_mutex_unlock(&srv.lock);
		return MHD_NO;
	}
	st->j = j;
	MHD_add_response_header(r, "Content-Type", j->stream ? "text/event-stream" : "application/json");
	MHD_add_response_header(r, "Cache-Control", "no-cache");
	enum MHD_Result ok = MHD_queue_response(c, 200, r);
	MHD_destroy_response(r);
	return ok;
}

static enum MHD_Result metrics(struct MHD_Connection *c)
{
	char buf[4096];
	unsigned busy = 0;
	pthread_mutex_lock(&srv.lock);
	for (unsigned i = 0; i < srv.n_slots; i++)
		busy += srv.slots[i].job != NULL;
	const moe_stats *x = &srv.stats;
	snprintf(buf, sizeof buf,
		 "# HELP moe_requests_total Completions finished.\n# TYPE moe_requests_total counter\nmoe_requests_total %llu\n"
		 "# HELP moe_request_errors_total Requests answered with an error (4xx, 5xx but 503).\n# TYPE moe_request_errors_total counter\nmoe_request_errors_total %llu\n"
		 "# HELP moe_requests_rejected_total Requests refused with 503: the queue was full.\n# TYPE moe_requests_rejected_total counter\nmoe_requests_rejected_total %llu\n"
		 "# HELP moe_requests_canceled_total Requests whose client went away first.\n# TYPE moe_requests_canceled_total counter\nmoe_requests_canceled_total %llu\n"
		 "# HELP moe_prompt_tokens_total Prompt tokens.\n# TYPE moe_prompt_tokens_total counter\nmoe_prompt_tokens_total %llu\n"
		 "# HELP moe_prompt_tokens_reused_total Prompt tokens found in a slot's context, not computed again.\n# TYPE moe_prompt_tokens_reused_total counter\nmoe_prompt_tokens_reused_total %llu\n"
		 "# HELP moe_generated_tokens_total Tokens generated.\n# TYPE moe_generated_tokens_total counter\nmoe_generated_tokens_total %llu\n"
		 "# HELP moe_decode_batches_total Decode steps; moe_decode_batch_rows_total / this = sequences per step.\n# TYPE moe_decode_batches_total counter\nmoe_decode_batches_total %llu\n"
		 "# HELP moe_decode_batch_rows_total Sequences decoded, summed over steps.\n# TYPE moe_decode_batch_rows_total counter\nmoe_decode_batch_rows_total %llu\n"
		 "# HELP moe_queue_length Requests waiting for a slot.\n# TYPE moe_queue_length gauge\nmoe_queue_length %zu\n"
		 "# HELP moe_slots_busy Slots generating.\n# TYPE moe_slots_busy gauge\nmoe_slots_busy %u\n"
		 "# HELP moe_slots Slots (--parallel).\n# TYPE moe_slots gauge\nmoe_slots %u\n"
		 "# HELP moe_expert_uses_total Expert uses.\n# TYPE moe_expert_uses_total counter\nmoe_expert_uses_total %llu\n"
		 "# HELP moe_expert_hits_total Uses of an expert already in the cache.\n# TYPE moe_expert_hits_total counter\nmoe_expert_hits_total %llu\n"
		 "# HELP moe_expert_prefetch_hits_total Uses of an expert a prefetch brought in.\n# TYPE moe_expert_prefetch_hits_total counter\nmoe_expert_prefetch_hits_total %llu\n"
		 "# HELP moe_expert_misses_total Uses that read the expert on demand.\n# TYPE moe_expert_misses_total counter\nmoe_expert_misses_total %llu\n"
		 "# HELP moe_expert_bytes_read_total Expert bytes read from disk.\n# TYPE moe_expert_bytes_read_total counter\nmoe_expert_bytes_read_total %llu\n"
		 "# HELP moe_expert_prefetch_unused_bytes_total Bytes of prefetched experts that left the cache unused.\n# TYPE moe_expert_prefetch_unused_bytes_total counter\nmoe_expert_prefetch_unused_bytes_total %llu\n"
		 "# HELP moe_expert_prefetch_evicted_bytes_total Of those, evicted before the step they were prefetched for.\n# TYPE moe_expert_prefetch_evicted_bytes_total counter\nmoe_expert_prefetch_evicted_bytes_total %llu\n",
		 (unsigned long long)srv.requests, (unsigned long long)srv.errors, (unsigned long long)srv.rejected,
		 (unsigned long long)srv.canceled, (unsigned long long)srv.prompt_tokens, (unsigned long long)srv.reused_tokens,
		 (unsigned long long)srv.generated, (unsigned long long)srv.batches, (unsigned long long)srv.batch_rows,
		 srv.queued, busy, srv.n_slots, (unsigned long long)x->uses, (unsigned long long)x->hits,
		 (unsigned long long)x->prefetch_hits, (unsigned long long)x->misses, (unsigned long long)x->bytes_read,
		 (unsigned long long)x->prefetch_unused_bytes, (unsigned long long)x->prefetch_evicted_bytes);
	pthread_mutex_unlock(&srv.lock);
	return send_text(c, 200, "text/plain; version=0.0.4", buf);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
			      const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
	(void)cls, (void)version;
	struct request *rq = *con_cls;
	if (!rq) { /* the headers: refuse what needs no body to refuse */
		if (!(rq = calloc(1, sizeof *rq)))
			return MHD_NO;
		*con_cls = rq;
		const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (cl && strtoull(cl, NULL, 10) > srv.max_body)
			return send_error(c, 413, "invalid_request_error", "request_too_large",
					  "the body is %s bytes; at most %zu (--max-body)", cl, srv.max_body);
		return MHD_YES;
	}
	if (*upload_size) {
		if (rq->len + *upload_size > srv.max_body) {
			rq->too_large = 1;
		} else {
			char *nb = realloc(rq->body, rq->len + *upload_size + 1);
			if (!nb)
				return MHD_NO;
			memcpy(nb + rq->len, upload, *upload_size);
			rq->body = nb;
			rq->len += *upload_size;
			rq->body[rq->len] = '\0';
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (rq->too_large)
		return send_error(c, 413, "invalid_request_error", "request_too_large", "the body is over %zu bytes (--max-body)",
				  srv.max_body);
	const int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
	if (!strcmp(url, "/health") && get)
		return send_text(c, 200, "application/json", "{\"status\":\"ok\"}");
	if (!strcmp(url, "/metrics") && get)
		return metrics(c);
	if (!strncmp(url, "/v1/", 4) && srv.api_key) {
		const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
		if (!auth || strncmp(auth, "Bearer ", 7) != 0 || strcmp(auth + 7, srv.api_key) != 0)
			return send_error(c, 401, "invalid_request_error", "invalid_api_key",
					  auth ? "incorrect API key" : "an API key is required: Authorization: Bearer KEY");
	}
	if (!strcmp(url, "/v1/models") && get)
		return send_json(c, 200, json_pack("{s:s, s:[{s:s, s:s, s:I, s:s}]}", "object", "list", "data", "id",
						   srv.model_id, "object", "model", "created", (json_int_t)srv.started,
						   "owned_by", "moemap"));
	if (!strcmp(url, "/v1/chat/completions") && post)
		return completion(c, rq, 1);
	if (!strcmp(url, "/v1/completions") && post)
		return completion(c, rq, 0);
	static const char *const known[] = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions"};
	for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
		if (!strcmp(url, known[i]))
			return send_error(c, 405, "invalid_request_error", "method_not_allowed", "%s %s: not allowed", method, url);
	return send_error(c, 404, "invalid_request_error", "not_found", "%s %s: no such endpoint", method, url);
}

static void request_done(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	(void)cls, (void)c, (void)toe;
	struct request *rq = *con_cls;
	if (rq)
		free(rq->body);
	free(rq);
	*con_cls = NULL;
}

/* ---- main ---- */

static int number(const char *opt, const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (end == s || *end || errno || v < lo || v > hi) {
		fprintf(stderr, "moe-server: %s %s: a number from %ld to %ld\n", opt, s, lo, hi);
		return -1;
	}
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	const char *model = NULL, *host = "127.0.0.1", *tmpl_arg = NULL, *budget_s = getenv("MOE_RAM_BUDGET");
	long port = 8080, parallel = 1, queue = 16, v;
	uint64_t max_body = 1 << 20;
	moe_model_params mp;
	moe_model_params_init(&mp);
	srv.api_key = getenv("MOE_API_KEY");
	srv.model_id = NULL;
	enum { O_HOST = 256, O_PORT, O_ALIAS, O_KEY, O_PARALLEL, O_QUEUE, O_BODY, O_TMPL, O_KV, O_BUDGET, O_POLICY,
	       O_PREFETCH, O_IO, O_NOVERIFY, O_TIMEOUT, O_MLOCK, O_NOOFF, O_EPT, O_PIN };
	static const struct option opts[] = {
		{"model", required_argument, NULL, 'm'}, {"host", required_argument, NULL, O_HOST},
		{"port", required_argument, NULL, O_PORT}, {"alias", required_argument, NULL, O_ALIAS},
		{"api-key", required_argument, NULL, O_KEY}, {"parallel", required_argument, NULL, O_PARALLEL},
		{"queue", required_argument, NULL, O_QUEUE}, {"max-body", required_argument, NULL, O_BODY},
		{"chat-template", required_argument, NULL, O_TMPL}, {"threads", required_argument, NULL, 't'},
		{"ctx-size", required_argument, NULL, 'c'}, {"batch", required_argument, NULL, 'b'},
		{"kv-type", required_argument, NULL, O_KV}, {"ram-budget", required_argument, NULL, O_BUDGET},
		{"cache-policy", required_argument, NULL, O_POLICY}, {"prefetch-depth", required_argument, NULL, O_PREFETCH},
		{"io-depth", required_argument, NULL, O_IO}, {"no-verify", no_argument, NULL, O_NOVERIFY},
		{"expert-timeout", required_argument, NULL, O_TIMEOUT}, {"mlock", no_argument, NULL, O_MLOCK},
		{"no-offload", no_argument, NULL, O_NOOFF}, {"experts-per-token", required_argument, NULL, O_EPT},
		{"pin", required_argument, NULL, O_PIN},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "m:t:c:b:hV", opts, NULL)) != -1) {
		int bad = 0;
		switch (c) {
		case 'm': model = optarg; break;
		case O_HOST: host = optarg; break;
		case O_PORT: bad = number("--port", optarg, 0, 65535, &port); break;
		case O_ALIAS: srv.model_id = optarg; break;
		case O_KEY: srv.api_key = optarg; break;
		case O_PARALLEL: bad = number("--parallel", optarg, 1, 64, &parallel); break;
		case O_QUEUE: bad = number("--queue", optarg, 0, 1024, &queue); break;
		case O_BODY:
			if (!(max_body = moe_parse_size(optarg)) || max_body > (1u << 30)) {
				fprintf(stderr, "moe-server: --max-body %s: a size up to 1G, such as 1M\n", optarg);
				return 2;
			}
			break;
		case O_TMPL: tmpl_arg = optarg; break;
		case 't': bad = number("--threads", optarg, 1, 256, &v); mp.threads = (int)v; break;
		case 'c': bad = number("--ctx-size", optarg, 2, 1 << 24, &v); mp.n_ctx = (size_t)v; break;
		case 'b': bad = number("--batch", optarg, 1, MOE_MAX_BATCH, &v); mp.n_batch = (size_t)v; break;
		case O_KV:
			if (strcmp(optarg, "f16") && strcmp(optarg, "f32")) {
				fprintf(stderr, "moe-server: --kv-type %s: f16 or f32\n", optarg);
				return 2;
			}
			mp.kv_type = strcmp(optarg, "f16") ? MOE_KV_F32 : MOE_KV_F16;
			break;
		case O_BUDGET: budget_s = optarg; break;
		case O_POLICY:
			if ((mp.cache_policy = moe_cache_policy_parse(optarg)) < 0) {
				fprintf(stderr, "moe-server: --cache-policy %s: lru, lfu or next\n", optarg);
				return 2;
			}
			break;
		case O_PREFETCH: bad = number("--prefetch-depth", optarg, 0, 8, &v); mp.prefetch_depth = (unsigned)v; break;
		case O_IO: bad = number("--io-depth", optarg, 1, 256, &v); mp.io_depth = (unsigned)v; break;
		case O_NOVERIFY: mp.verify = 0; break;
		case O_TIMEOUT:
			mp.expert_timeout = strtod(optarg, NULL);
			if (!(mp.expert_timeout > 0 && mp.expert_timeout <= 86400)) {
				fprintf(stderr, "moe-server: --expert-timeout %s: seconds, more than 0 and at most 86400\n", optarg);
				return 2;
			}
			break;
		case O_MLOCK: mp.mlock = 1; break;
		case O_PIN: mp.pin_file = optarg; break;
		case O_NOOFF: mp.offload = 0; break;
		case O_EPT: bad = number("--experts-per-token", optarg, 1, 256, &v); mp.experts_per_token = (unsigned)v; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("moe-server (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); return 0;
		default: usage(stderr); return 2;
		}
		if (bad)
			return 2;
	}
	if (optind != argc) {
		fprintf(stderr, "moe-server: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (!model) {
		fputs("moe-server: -m PACK is required\n", stderr);
		return 2;
	}
	if (budget_s && !(mp.ram_budget = moe_parse_size(budget_s))) {
		fprintf(stderr, "moe-server: --ram-budget %s: a size such as 900M or 12G\n", budget_s);
		return 2;
	}
	if (srv.api_key && !*srv.api_key)
		srv.api_key = NULL;
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
	char port_s[16];
	snprintf(port_s, sizeof port_s, "%ld", port);
	int gai = getaddrinfo(host, port_s, &hints, &ai);
	if (gai) {
		fprintf(stderr, "moe-server: --host %s: %s\n", host, gai_strerror(gai));
		return 2;
	}
	mp.n_sessions = (unsigned)parallel;
	srv.n_slots = (unsigned)parallel;
	srv.queue_max = (size_t)queue;
	srv.max_body = (size_t)max_body;
	srv.started = (long long)time(NULL);
	int rc = 1;
	struct MHD_Daemon *d = NULL;
	pthread_t worker_thread;
	int have_worker = 0;
	struct moe_progress load_bar = {.enabled = isatty(STDERR_FILENO)};
	mp.progress = moe_progress_load, mp.progress_user = &load_bar;
	if (moe_model_open(model, &mp, &srv.model)) {
		fprintf(stderr, "moe-server: %s\n", moe_last_error());
		goto out;
	}
	moe_model_info info;
	moe_model_get_info(srv.model, &info);
	srv.tok = moe_model_tokenizer(srv.model);
	if (!srv.tok) {
		fprintf(stderr, "moe-server: %s: the pack has no tokenizer (moe-pack --tokenizer tokenizer.json)\n", model);
		goto out;
	}
	if (tmpl_arg) {
		const char *b = moe_chat_template_builtin(tmpl_arg);
		size_t n;
		if (b ? !(srv.tmpl = strdup(b)) : moe_read_file(tmpl_arg, &srv.tmpl, &n) != 0) {
			fprintf(stderr, "moe-server: --chat-template %s: %s\n", tmpl_arg, b ? "out of memory" : moe_last_error());
			goto out;
		}
	} else if (moe_model_chat_template(srv.model) && !(srv.tmpl = strdup(moe_model_chat_template(srv.model)))) {
		fputs("moe-server: out of memory\n", stderr);
		goto out;
	}
	srv.n_sampled = moe_tokenizer_vocab(srv.tok) < info.n_vocab ? moe_tokenizer_vocab(srv.tok) : info.n_vocab;
	srv.ctx = info.n_ctx, srv.n_batch = info.n_batch, srv.n_vocab = info.n_vocab;
	const size_t echo_rows = (16u << 20) / sizeof(float) / srv.n_vocab; /* the row before a batch included */
	srv.echo_batch = echo_rows > srv.n_batch ? srv.n_batch : echo_rows > 1 ? echo_rows - 1 : 1;
	if (!srv.model_id) {
		const char *base = strrchr(model, '/');
		srv.model_id = base ? base + 1 : model;
	}
	if (!(srv.slots = calloc(srv.n_slots, sizeof *srv.slots)))
		goto out;
	for (unsigned i = 0; i < srv.n_slots; i++)
		if (moe_session_open(srv.model, &srv.slots[i].s)) {
			fprintf(stderr, "moe-server: %s\n", moe_last_error());
			goto out;
		}
	moe_model_stats(srv.model, &srv.stats);
	/* signals go to main's sigwait, not to the worker's or the connections' threads */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (pthread_create(&worker_thread, NULL, worker, NULL)) {
		fputs("moe-server: cannot start the worker thread\n", stderr);
		goto out;
	}
	have_worker = 1;
	d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD,
			     0, NULL, NULL, handle, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
			     MHD_OPTION_NOTIFY_COMPLETED, request_done, NULL, MHD_OPTION_CONNECTION_LIMIT,
			     (unsigned)(parallel + queue + 32), MHD_OPTION_END);
	if (!d) {
		fprintf(stderr, "moe-server: cannot listen on %s port %ld: %s\n", host, port, strerror(errno));
		goto out;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	fprintf(stderr, "moe-server: %s (%s, %llu layers, %llu experts) on http://%s:%u: %u slots of %zu tokens, expert "
		"cache %.1f MB, kernels %s, %d threads\n", srv.model_id, info.arch, (unsigned long long)info.n_layers,
		(unsigned long long)info.n_experts, host, di ? di->port : (unsigned)port, srv.n_slots, srv.ctx,
		info.expert_cache_bytes / 1048576.0, info.kernels, info.threads);
	int sig;
	sigwait(&sigs, &sig);
	fprintf(stderr, "moe-server: %s: stopping\n", strsignal(sig));
	rc = 0;
out:
	if (d) {
		pthread_mutex_lock(&srv.lock); /* waiting connections and streams end */
		for (struct job *j = srv.head; j; j = j->next)
			j->canceled = 1;
		for (unsigned i = 0; i < srv.n_slots; i++)
			if (srv.slots[i].job)
				srv.slots[i].job->canceled = 1;
		pthread_mutex_unlock(&srv.lock);
	}
	if (have_worker) {
		pthread_mutex_lock(&srv.lock);
		srv.stop = 1;
		pthread_cond_signal(&srv.work);
		pthread_mutex_unlock(&srv.lock);
		pthread_join(worker_thread, NULL);
	}
	if (d) {
		pthread_mutex_lock(&srv.lock);
		for (struct job *j = srv.head; j; j = j->next) {
			j->state = JOB_DONE;
			pthread_cond_broadcast(&j->changed);
		}
		for (unsigned i = 0; i < srv.n_slots; i++)
			if (srv.slots[i].job) {
				srv.slots[i].job->state = JOB_DONE;
				pthread_cond_broadcast(&srv.slots[i].job->changed);
				slot_free(&srv.slots[i]);
			}
		pthread_mutex_unlock(&srv.lock);
		MHD_stop_daemon(d);
	}
	for (unsigned i = 0; srv.slots && i < srv.n_slots; i++)
		moe_session_close(srv.slots[i].s);
	free(srv.slots);
	free(srv.tmpl);
	moe_model_close(srv.model);
	freeaddrinfo(ai);
	return rc;
}
