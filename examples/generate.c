/* generate - the smallest complete program on libmoe's public API: the greedy
 * continuation of a prompt, printed as it comes.
 *
 *     generate PACK PROMPT [N]        (N tokens, default 32)
 *
 * Build against an installed libmoe:  cc generate.c $(pkg-config --cflags --libs moe)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <moe.h>

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4) {
		fputs("usage: generate PACK PROMPT [N]\n", stderr);
		return 2;
	}
	const long n_predict = argc == 4 ? strtol(argv[3], NULL, 10) : 32;
	moe_model *model = NULL;
	moe_session *session = NULL;
	moe_sampler *sampler = NULL;
	moe_detokenizer *detok = NULL;
	int32_t *prompt = NULL;
	size_t n_prompt;
	int rc = 1;

	moe_model_params mp;
	moe_model_params_init(&mp); /* budget: 90% of available memory; set mp.ram_budget to cap it */
	moe_sampler_params sp;
	moe_sampler_params_init(&sp); /* temperature 0: greedy */
	if (moe_model_open(argv[1], &mp, &model) || moe_session_open(model, &session) ||
	    moe_sampler_new(&sp, &sampler))
		goto out;
	const moe_tokenizer *tok = moe_model_tokenizer(model);
	if (!tok) {
		fprintf(stderr, "generate: %s has no tokenizer\n", argv[1]);
		goto out;
	}
	if (moe_tokenize(tok, argv[2], strlen(argv[2]), 1, &prompt, &n_prompt) ||
	    moe_session_eval(session, prompt, n_prompt, NULL) || moe_detokenizer_new(tok, 1, &detok))
		goto out;

	moe_model_info info;
	moe_model_get_info(model, &info);
	const int32_t *eos;
	const size_t n_eos = moe_tokenizer_eos(tok, &eos);
	for (long i = 0; i < n_predict; i++) {
		const int32_t id = moe_sampler_sample(sampler, moe_session_logits(session), info.n_vocab,
						      moe_session_tokens(session), moe_session_pos(session));
		if (id < 0)
			goto out;
		int end = 0;
		for (size_t k = 0; k < n_eos; k++)
			end |= id == eos[k];
		const char *text;
		size_t len;
		if (end || moe_detokenizer_push(detok, id, &text, &len))
			break;
		fwrite(text, 1, len, stdout);
		fflush(stdout);
		if (i + 1 < n_predict && moe_session_eval(session, &id, 1, NULL))
			goto out;
	}
	const char *text;
	size_t len;
	if (moe_detokenizer_finish(detok, &text, &len))
		goto out;
	fwrite(text, 1, len, stdout);
	putchar('\n');
	rc = 0;
out:
	if (rc)
		fprintf(stderr, "generate: %s\n", moe_last_error());
	free(prompt);
	moe_detokenizer_free(detok);
	moe_sampler_free(sampler);
	moe_session_close(session);
	moe_model_close(model);
	return rc;
}
