/* bench/llama_mmap_decode.c - llama.cpp, the peer, decoding a GGUF straight from
 * its mapped file: no repacking into anonymous memory (use_extra_bufts off, which
 * llama-bench cannot ask for), so a model larger than RAM runs through the page
 * cache, as `llama-cli --no-repack` would run it. Feeds the same 32 prompt token
 * ids as bench/offload.sh's moe-run (100..131) in one batch, then N tokens one at
 * a time (id 100 + i: the weights are what is measured, not the text), and prints
 * the decode rate. Not part of the build: bench/offload.sh compiles it against the
 * llama.cpp tree given as LLAMA_CPP (its include/ and build/bin/).
 * Usage: llama_mmap_decode GGUF N THREADS */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "llama.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fputs("usage: llama_mmap_decode GGUF N THREADS\n", stderr);
		return 2;
	}
	const int n = atoi(argv[2]), threads = atoi(argv[3]);
	llama_backend_init();
	struct llama_model_params mp = llama_model_default_params();
	mp.load_mode = LLAMA_LOAD_MODE_MMAP;
	mp.use_extra_bufts = false;
	struct llama_model *model = llama_model_load_from_file(argv[1], mp);
	if (!model) {
		fprintf(stderr, "llama_mmap_decode: cannot load %s\n", argv[1]);
		return 1;
	}
	struct llama_context_params cp = llama_context_default_params();
	cp.n_ctx = 512, cp.n_batch = 64, cp.n_ubatch = 64;
	cp.n_threads = cp.n_threads_batch = threads;
	struct llama_context *ctx = llama_init_from_model(model, cp);
	if (!ctx) {
		fputs("llama_mmap_decode: cannot make a context\n", stderr);
		return 1;
	}
	llama_token prompt[32];
	for (int i = 0; i < 32; i++)
		prompt[i] = 100 + i;
	double t0 = now();
	if (llama_decode(ctx, llama_batch_get_one(prompt, 32))) {
		fputs("llama_mmap_decode: the prompt failed\n", stderr);
		return 1;
	}
	const double prefill = now() - t0;
	t0 = now();
	for (int i = 0; i < n; i++) {
		llama_token t = 100 + i;
		if (llama_decode(ctx, llama_batch_get_one(&t, 1))) {
			fputs("llama_mmap_decode: a decode step failed\n", stderr);
			return 1;
		}
	}
	const double decode = now() - t0;
	printf("prefill 32 tokens %.2f s (%.3f tok/s); decode %d tokens %.2f s (%.3f tok/s)\n", prefill, 32 / prefill, n,
	       decode, n / decode);
	llama_free(ctx);
	llama_model_free(model);
	llama_backend_free();
	return 0;
}
