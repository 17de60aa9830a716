/* moe-bench - measurements, not tests: memory read bandwidth, and the kernels'
 * weight bandwidth against it. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cache/cache.h"
#include "cache/sim.h"
#include "cli/stdout.h"
#include "common/fileio.h"
#include "io/io.h"
#include "kernels/kernels.h"
#include "moe.h"

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- membw: every thread sums its share of a buffer much larger than the caches ---- */

struct bw_part {
	const uint64_t *p;
	size_t n;
	uint64_t sum;
};

#if defined(__x86_64__)
__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint64_t *p, size_t n)
{
	__m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
	size_t i = 0;
	for (; i + 16 <= n; i += 16) {
		a0 = _mm256_xor_si256(a0, _mm256_load_si256((const __m256i *)(p + i)));
		a1 = _mm256_xor_si256(a1, _mm256_load_si256((const __m256i *)(p + i + 4)));
		a2 = _mm256_xor_si256(a2, _mm256_load_si256((const __m256i *)(p + i + 8)));
		a3 = _mm256_xor_si256(a3, _mm256_load_si256((const __m256i *)(p + i + 12)));
	}
	a0 = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
	uint64_t s = (uint64_t)_mm256_extract_epi64(a0, 0) ^ (uint64_t)_mm256_extract_epi64(a0, 1) ^
		     (uint64_t)_mm256_extract_epi64(a0, 2) ^ (uint64_t)_mm256_extract_epi64(a0, 3);
	for (; i < n; i++)
		s ^= p[i];
	return s;
}
#endif

static uint64_t sum_plain(const uint64_t *p, size_t n)
{
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	size_t i = 0;
	for (; i + 4 <= n; i += 4) {
		s0 ^= p[i];
		s1 ^= p[i + 1];
		s2 ^= p[i + 2];
		s3 ^= p[i + 3];
	}
	for (; i < n; i++)
		s0 ^= p[i];
	return s0 ^ s1 ^ s2 ^ s3;
}

static void bw_run(void *arg, int i, int n)
{
	struct bw_part *parts = arg;
#if defined(__x86_64__)
	if (__builtin_cpu_supports("avx2")) {
		parts[i].sum = sum_avx2(parts[i].p, parts[i].n);
		return;
	}
#endif
	parts[i].sum = sum_plain(parts[i].p, parts[i].n);
}

/* Read bandwidth in GB/s with n threads: median of `reps` full passes over buf. */
static double membw(const uint64_t *buf, size_t words, int threads, int reps)
{
	struct moe_pool *pool = moe_pool_create(threads);
	struct bw_part parts[256];
	const size_t per = (words / (size_t)threads) & ~(size_t)15;
	for (int i = 0; i < threads; i++)
		parts[i] = (struct bw_part){buf + per * (size_t)i, per, 0};
	double t[64];
	uint64_t sink = 0;
	moe_pool_run(pool, bw_run, parts); /* warm-up */
	for (int r = 0; r < reps; r++) {
		double t0 = moe_now();
		moe_pool_run(pool, bw_run, parts);
		t[r] = (double)(per * (size_t)threads * 8) / (moe_now() - t0) / 1e9;
		for (int i = 0; i < threads; i++)
			sink ^= parts[i].sum;
	}
	moe_pool_destroy(pool);
	if (sink == 42)
		fputs("", stderr); /* keep the sums alive */
	return median(t, reps);
}

static uint64_t *bw_buffer(size_t bytes)
{
	uint64_t *buf = aligned_alloc(4096, bytes);
	if (!buf)
		return NULL;
	for (size_t i = 0; i < bytes / 8; i++)
		buf[i] = i * 0x9e3779b97f4a7c15ull;
	return buf;
}

/* ---- kernels ---- */

enum { T_F32 = MOE_TYPE_F32, T_F16 = MOE_TYPE_F16, T_Q8 = MOE_TYPE_Q8, T_Q4 = MOE_TYPE_Q4 };

struct shape {
	const char *model;
	size_t in, out;
};
static const struct shape shapes[] = {
	{"mixtral", 4096, 14336}, {"mixtral", 14336, 4096}, {"qwen3", 2048, 768},
	{"qwen3", 768, 2048},     {"deepseek", 7168, 2048}, {"deepseek", 2048, 7168},
};

static int type_id(const char *s)
{
	const int t = moe_type_from_name(s);
	return t == MOE_TYPE_BF16 ? -1 : t; /* no kernel takes bf16 */
}

/* `copies` matrices of one shape laid out back to back, cycled through so that every
 * call streams its weights from memory, as experts do */
struct mats {
	struct moe_wmat *w;
	uint8_t *mem;
	int copies;
};

static int make_mats(struct mats *m, int type, size_t rows, size_t cols, size_t budget)
{
	const size_t bytes = moe_type_matrix_bytes(type, rows, cols), codes = rows * moe_wmat_row_bytes(type, cols);
	m->copies = (int)(budget / bytes);
	if (m->copies < 2)
		m->copies = 2;
	const size_t stride = (bytes + 4095) / 4096 * 4096;
	m->mem = aligned_alloc(4096, stride * (size_t)m->copies);
	m->w = calloc((size_t)m->copies, sizeof *m->w);
	if (!m->mem || !m->w)
		return -1;
	uint64_t x = 88172645463325252ull;
	for (size_t i = 0; i < stride / 8; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		memcpy(m->mem + i * 8, &x, 8);
	}
	/* plausible scales: small positive halves (random bits could be NaN or huge) */
	if (type == T_Q8 || type == T_Q4)
		for (size_t i = 0; i < rows * cols / 32; i++)
			((uint16_t *)(m->mem + codes))[i] = (uint16_t)(0x2000 + (i & 0x3ff));
	if (type == T_F16)
		for (size_t i = 0; i < rows * cols; i++)
			((uint16_t *)m->mem)[i] = (uint16_t)(0x2000 + (i & 0x3ff));
	if (type == T_F32)
		for (size_t i = 0; i < rows * cols; i++)
			((float *)m->mem)[i] = (float)(i % 7) * 0.01f;
	const struct moe_block_format *f = moe_block_format(type);
	for (size_t b = 0; f && b < rows * cols / f->weights; b++)
		for (int h = 0; h < 2; h++)
			if (f->half_at[h] >= 0) {
				const uint16_t v = (uint16_t)(0x1000 + (b & 0x3ff));
				memcpy(m->mem + b * f->bytes + f->half_at[h], &v, 2);
			}
	/* MXFP4's E8M0 exponents near a real model's (2^-10 .. 2^-3): random bytes would
	 * make subnormal and huge scales, whose float arithmetic is far slower */
	for (size_t b = 0; type == MOE_TYPE_MXFP4 && b < rows * cols / 32; b++)
		m->mem[b * 17] = (uint8_t)(118 + (b & 7));
	for (int c = 1; c < m->copies; c++)
		memcpy(m->mem + stride * (size_t)c, m->mem, stride);
	for (int c = 0; c < m->copies; c++) {
		m->w[c] = moe_wmat_at(type, rows, cols, m->mem + stride * (size_t)c);
	}
	return 0;
}

static void free_mats(struct mats *m)
{
	free(m->mem);
	free(m->w);
}



static int bench_kernels(int argc, char **argv)
{
	const char *impls = NULL, *formats = "q8,q4", *threads_s = NULL, *batches = "1,32", *models = NULL;
	double seconds = 0.2, bw_ref[2] = {0};
	size_t budget = 512u << 20;
	int reps = 5;
	static const struct option opts[] = {
		{"impl", required_argument, NULL, 'i'}, {"format", required_argument, NULL, 'f'},
		{"threads", required_argument, NULL, 't'}, {"batch", required_argument, NULL, 'b'},
		{"shape", required_argument, NULL, 's'}, {"seconds", required_argument, NULL, 'S'},
		{"memory", required_argument, NULL, 'm'}, {"reps", required_argument, NULL, 'r'},
		{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0},
	};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'i': impls = optarg; break;
		case 'f': formats = optarg; break;
		case 't': threads_s = optarg; break;
		case 'b': batches = optarg; break;
		case 's': models = optarg; break;
		case 'S': seconds = atof(optarg); break;
		case 'm': budget = (size_t)moe_parse_size(optarg); break;
		case 'r': reps = atoi(optarg); break;
		case 'h':
			puts("usage: moe-bench kernels [--impl LIST] [--format LIST] [--threads LIST] [--batch LIST]\n"
			     "                         [--shape mixtral,qwen3,deepseek] [--seconds S] [--memory SIZE] [--reps N]");
			return 0;
		default: return 2;
		}
	}
	if (reps < 1 || reps > 64 || seconds <= 0 || budget == 0) {
		fputs("moe-bench: --reps 1..64, --seconds positive, --memory a size such as 512M\n", stderr);
		return 2;
	}
	const int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
	char tdefault[32];
	snprintf(tdefault, sizeof tdefault, ncpu > 1 ? "1,%d" : "1", ncpu);
	if (!threads_s)
		threads_s = tdefault;
	/* the bound: read bandwidth at the thread counts measured */
	size_t bwbytes = 1u << 30;
	uint64_t *buf = bw_buffer(bwbytes);
	if (!buf) {
		fputs("moe-bench: cannot allocate the bandwidth buffer\n", stderr);
		return 1;
	}
	printf("# kernels: weight bytes streamed per second, %% of the measured read bandwidth; median of %d runs of %.2f s\n",
	       reps, seconds);
	char tl[64];
	snprintf(tl, sizeof tl, "%s", threads_s);
	int tlist[8], nt = 0;
	for (char *tok = strtok(tl, ","); tok && nt < 8; tok = strtok(NULL, ","))
		tlist[nt++] = atoi(tok);
	for (int i = 0; i < nt; i++) {
		if (tlist[i] < 1 || tlist[i] > 256) {
			fprintf(stderr, "moe-bench: --threads %d\n", tlist[i]);
			return 2;
		}
		double v = membw(buf, bwbytes / 8, tlist[i], 5);
		printf("# memory read bandwidth, %d thread%s: %.1f GB/s\n", tlist[i], tlist[i] > 1 ? "s" : "", v);
		if (i < 2)
			bw_ref[i] = v;
	}
	free(buf);
	printf("%-8s %-6s %-9s %-13s %3s %5s %10s %8s %7s %9s %10s\n", "impl", "format", "model", "shape", "thr", "batch",
	       "us/call", "GB/s", "%bw", "GFLOP/s", "tokens/s");
	for (int ii = 0; moe_kernel_impls[ii]; ii++) {
		const struct moe_kernel_impl *k = moe_kernel_impls[ii];
		if (!k->available() || (impls && !strstr(impls, k->name)))
			continue;
		char fl[256];
		snprintf(fl, sizeof fl, "%s", formats);
		for (char *fs = strtok(fl, ","); fs; fs = strtok(NULL, ",")) {
			char fcopy[16];
			snprintf(fcopy, sizeof fcopy, "%s", fs);
			const int type = type_id(fcopy);
			if (type < 0) {
				fprintf(stderr, "moe-bench: --format %s: q8, q4, f16, f32 or a GGUF block type (q4_k, ...)\n",
					fcopy);
				return 2;
			}
			for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
				const struct shape *sh = &shapes[si];
				if (models && !strstr(models, sh->model))
					continue;
				struct mats m;
				if (make_mats(&m, type, sh->out, sh->in, budget)) {
					fputs("moe-bench: out of memory\n", stderr);
					return 1;
				}
				const size_t wbytes = moe_type_matrix_bytes(type, sh->out, sh->in);
				for (int ti = 0; ti < nt; ti++) {
					struct moe_pool *pool = moe_pool_create(tlist[ti]);
					char bl[64];
					snprintf(bl, sizeof bl, "%s", batches);
					char *save = NULL;
					for (char *bs = strtok_r(bl, ",", &save); bs; bs = strtok_r(NULL, ",", &save)) {
						const size_t batch = (size_t)atoi(bs);
						if (batch < 1 || batch > 64) {
							fputs("moe-bench: --batch values 1..64\n", stderr);
							return 2;
						}
						float *x = malloc(batch * sh->in * sizeof(float));
						float *y = malloc(batch * sh->out * sizeof(float));
						for (size_t i = 0; i < batch * sh->in; i++)
							x[i] = (float)((i * 7919) % 1000) * 0.001f - 0.5f;
						struct moe_kscratch s = {0};
						double t[64];
						int call = 0;
						for (int r = 0; r < reps; r++) {
							int n = 0;
							double t0 = moe_now(), t1;
							do {
								moe_matmul(k, pool, &m.w[call++ % m.copies], x, batch, y, &s);
								n++;
							} while ((t1 = moe_now()) - t0 < seconds);
							t[r] = (t1 - t0) / n;
						}
						const double per = median(t, reps);
						const double gbs = (double)wbytes / per / 1e9;
						const double ref = tlist[ti] == 1 ? bw_ref[0] : bw_ref[nt > 1 ? 1 : 0];
						char shp[32];
						snprintf(shp, sizeof shp, "%zu->%zu", sh->in, sh->out);
						printf("%-8s %-6s %-9s %-13s %3d %5zu %10.1f %8.1f %6.0f%% %9.1f %10.0f\n", k->name,
						       moe_type_name(type), sh->model, shp, tlist[ti], batch, per * 1e6, gbs,
						       100 * gbs / ref, 2.0 * (double)sh->in * (double)sh->out * (double)batch / per / 1e9,
						       (double)batch / per);
						fflush(stdout);
						moe_kscratch_free(&s);
						free(x);
						free(y);
					}
					moe_pool_destroy(pool);
				}
				free_mats(&m);
			}
		}
	}
	return 0;
}

static int bench_membw(int argc, char **argv)
{
	uint64_t bytes = 1ull << 30;
	int reps = 7;
	const int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
	static const struct option opts[] = {
		{"memory", required_argument, NULL, 'm'}, {"reps", required_argument, NULL, 'r'},
		{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0},
	};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'm': bytes = moe_parse_size(optarg); break;
		case 'r': reps = atoi(optarg); break;
		case 'h': puts("usage: moe-bench membw [--memory SIZE] [--reps N]"); return 0;
		default: return 2;
		}
	}
	if (bytes < (64u << 20) || reps < 1 || reps > 64) {
		fputs("moe-bench: --memory a size of at least 64M, --reps 1..64\n", stderr);
		return 2;
	}
	const size_t mb = (size_t)(bytes >> 20);
	uint64_t *buf = bw_buffer(mb << 20);
	if (!buf) {
		fputs("moe-bench: out of memory\n", stderr);
		return 1;
	}
	printf("# memory read bandwidth over %zu MB, median of %d passes\n", mb, reps);
	for (int t = 1; t <= ncpu; t++)
		printf("threads %d: %.1f GB/s\n", t, membw(buf, (mb << 20) / 8, t, reps));
	free(buf);
	return 0;
}

/* ---- diskbw: O_DIRECT read bandwidth through the expert cache's read engine ---- */

static int bench_diskbw(int argc, char **argv)
{
	const char *path = NULL, *depths = "1,8,32";
	double gib = 2;
	static const struct option opts[] = {
		{"file", required_argument, NULL, 'f'}, {"depth", required_argument, NULL, 'd'},
		{"gib", required_argument, NULL, 'g'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'f': path = optarg; break;
		case 'd': depths = optarg; break;
		case 'g': gib = strtod(optarg, NULL); break;
		default: return 2;
		}
	}
	if (!path || gib <= 0) {
		fputs("moe-bench diskbw: --file F is required (a pack, or any large file on the disk to measure)\n", stderr);
		return 2;
	}
	FILE *fp = fopen(path, "rb");
	if (!fp || fseeko(fp, 0, SEEK_END) != 0) {
		fprintf(stderr, "moe-bench: %s: cannot open\n", path);
		if (fp)
			fclose(fp);
		return 1;
	}
	const uint64_t size = (uint64_t)ftello(fp) / (4u << 20) * (4u << 20);
	fclose(fp);
	uint64_t want = (uint64_t)(gib * 1073741824.0) / (4u << 20) * (4u << 20);
	if (want > size)
		want = size;
	char *list = strdup(depths);
	int rc = 0;
	printf("O_DIRECT reads of 4 MiB from %s, %.2f GB per measurement\n", path, want / 1e9);
	for (char *tok = strtok(list, ","); tok && !rc; tok = strtok(NULL, ",")) {
		const unsigned depth = (unsigned)atoi(tok);
		const size_t arena_bytes = (size_t)(depth ? depth : 1) * (4u << 20);
		char *arena = aligned_alloc(4096, arena_bytes);
		struct moe_io *io = NULL;
		if (!depth || !arena || moe_io_create(path, depth, arena, arena_bytes, &io)) {
			fprintf(stderr, "moe-bench: depth %s: %s\n", tok, depth ? moe_last_error() : "1 or more");
			free(arena);
			rc = 1;
			break;
		}
		uint64_t issued = 0, done = 0, in_flight = 0;
		const double t0 = moe_now();
		while (done < want && !rc) {
			while (issued < want && moe_io_free_slots(io) > 0) {
				const uint64_t slot = (issued / (4u << 20)) % depth;
				if (moe_io_read(io, arena + slot * (4u << 20), issued, 4u << 20, slot)) {
					rc = 1;
					break;
				}
				issued += 4u << 20;
				in_flight++;
			}
			uint64_t tag;
			int64_t res;
			if (rc || moe_io_submit(io) || moe_io_complete(io, 1, &tag, &res) < 0 || res < 0) {
				fprintf(stderr, "moe-bench: read: %s\n", rc ? "failed" : moe_last_error());
				rc = 1;
				break;
			}
			done += (uint64_t)res;
			while (moe_io_complete(io, 0, &tag, &res) == 0 && res >= 0)
				done += (uint64_t)res;
		}
		const double t = moe_now() - t0;
		if (!rc)
			printf("depth %3u: %.2f GB/s (%s)\n", depth, want / t / 1e9, moe_io_mode(io));
		moe_io_free(io);
		free(arena);
	}
	free(list);
	return rc;
}

/* ---- sim and profile: route traces ---- */

/* the trace a command was given (--trace, required), loaded; 0, or its exit status */
static int trace_arg(const char *cmd, const char *path, struct moe_trace *t)
{
	if (!path) {
		fprintf(stderr, "moe-bench %s: --trace FILE is required (moe-run --trace-out makes one)\n", cmd);
		return 2;
	}
	if (moe_trace_load(path, t)) {
		fprintf(stderr, "moe-bench: %s\n", moe_last_error());
		return 1;
	}
	return 0;
}

/* "N" experts or "P%" of all n_ids, at most all; -1 if neither */
static int experts_arg(const char *s, size_t n_ids, size_t *n)
{
	char *end;
	const double v = strtod(s, &end);
	const int pct = *end == '%';
	if (end == s || (*end && strcmp(end, "%")) || !(v >= 0 && v <= (pct ? 100.0 : (double)n_ids)))
		return -1;
	*n = pct ? (size_t)(v / 100.0 * (double)n_ids + 0.5) : (size_t)v;
	return 0;
}

static int bench_sim(int argc, char **argv)
{
	const char *trace = NULL, *sizes = "25%,50%,75%", *policies = "lru,lfu,next,belady", *pin = NULL;
	static const struct option opts[] = {
		{"trace", required_argument, NULL, 't'}, {"cache-experts", required_argument, NULL, 'n'},
		{"policy", required_argument, NULL, 'p'}, {"pin", required_argument, NULL, 'P'},
		{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 't': trace = optarg; break;
		case 'n': sizes = optarg; break;
		case 'p': policies = optarg; break;
		case 'P': pin = optarg; break;
		default: return 2;
		}
	}
	struct moe_trace t;
	int rc = trace_arg("sim", trace, &t);
	if (rc)
		return rc;
	const size_t n_ids = (size_t)t.n_layers * t.n_experts;
	uint32_t *pins = NULL;
	size_t n_pins = 0;
	if (pin && moe_pin_load(pin, t.n_layers, t.n_experts, &pins, &n_pins)) {
		fprintf(stderr, "moe-bench: %s\n", moe_last_error());
		moe_trace_free(&t);
		return 1;
	}
	struct moe_trace_routing ro;
	if (moe_trace_routing(&t, &ro)) {
		fprintf(stderr, "moe-bench: %s\n", moe_last_error());
		free(pins);
		moe_trace_free(&t);
		return 1;
	}
	printf("trace %s: %zu layer steps, %zu expert uses, %zu of %zu experts used (%u layers x %u)\n", trace,
	       t.n_steps, t.start[t.n_steps], ro.experts_used, n_ids, t.n_layers, t.n_experts);
	printf("routing: expert use %.1f %% of the maximum entropy per layer (lowest %.1f %%, layer %u); "
	       "%.1f %% of a step's experts the layer's previous step used (random: %.1f %%); "
	       "median reuse distance %zu steps (random: %zu)\n",
	       100 * ro.entropy, 100 * ro.entropy_min, ro.entropy_min_layer, 100 * ro.repeat, 100 * ro.repeat_random,
	       ro.reuse_median, ro.reuse_median_random);
	printf("%-10s %-8s %6s %10s %10s %9s\n", "experts", "policy", "pinned", "hits", "misses", "hit rate");
	char *list = strdup(sizes);
	for (char *tok = strtok(list, ","); tok && !rc; tok = strtok(NULL, ",")) {
		size_t n;
		if (experts_arg(tok, n_ids, &n) || n < 1) {
			fprintf(stderr, "moe-bench sim: --cache-experts %s: counts or percentages of all experts\n", tok);
			rc = 2;
			break;
		}
		char *pl = strdup(policies), *save;
		for (char *p = strtok_r(pl, ",", &save); p && !rc; p = strtok_r(NULL, ",", &save)) {
			const int pol = !strcmp(p, "belady") ? MOE_POLICY_BELADY : moe_cache_policy_parse(p);
			struct moe_sim_result r;
			if (pol < 0) {
				fprintf(stderr, "moe-bench sim: --policy %s: lru, lfu, next or belady\n", p);
				rc = 2;
			} else if (moe_cache_sim(&t, n, pol, pins, moe_pins_kept(n_pins, n), &r)) {
				fprintf(stderr, "moe-bench: %s\n", moe_last_error());
				rc = 1;
			} else {
				printf("%-10zu %-8s %6zu %10llu %10llu %8.1f%%\n", n, p, moe_pins_kept(n_pins, n),
				       (unsigned long long)r.hits, (unsigned long long)r.misses,
				       100.0 * (double)r.hits / (double)(r.hits + r.misses));
			}
		}
		free(pl);
	}
	free(list);
	free(pins);
	moe_trace_free(&t);
	return rc;
}

/* ---- profile: a pin list of the most used experts of a trace ---- */

struct use_count {
	uint32_t id;
	uint64_t uses;
};

static int by_uses(const void *a, const void *b)
{
	const struct use_count *x = a, *y = b;
	return x->uses != y->uses ? (x->uses < y->uses ? 1 : -1) : (x->id > y->id) - (x->id < y->id);
}

static int bench_profile(int argc, char **argv)
{
	const char *trace = NULL, *top = NULL, *out = NULL;
	static const struct option opts[] = {
		{"trace", required_argument, NULL, 't'}, {"experts", required_argument, NULL, 'n'},
		{"output", required_argument, NULL, 'o'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
		switch (c) {
		case 't': trace = optarg; break;
		case 'n': top = optarg; break;
		case 'o': out = optarg; break;
		default: return 2;
		}
	}
	struct moe_trace t;
	int rc = trace_arg("profile", trace, &t);
	if (rc)
		return rc;
	const size_t n_ids = (size_t)t.n_layers * t.n_experts;
	size_t n = n_ids;
	if (top && experts_arg(top, n_ids, &n)) {
		fprintf(stderr, "moe-bench profile: --experts %s: a count or a percentage of the %zu experts\n", top, n_ids);
		moe_trace_free(&t);
		return 2;
	}
	struct use_count *u = calloc(n_ids, sizeof *u);
	if (!u) {
		fputs("moe-bench: out of memory\n", stderr);
		moe_trace_free(&t);
		return 1;
	}
	for (size_t i = 0; i < n_ids; i++)
		u[i].id = (uint32_t)i;
	for (size_t s = 0; s < t.n_steps; s++)
		for (size_t i = t.start[s]; i < t.start[s + 1]; i++)
			u[(size_t)t.layer[s] * t.n_experts + t.experts[i]].uses++;
	qsort(u, n_ids, sizeof *u, by_uses);
	/* a file appears whole or not at all (moe_out_create) */
	char *tmp = NULL;
	int fd = -1;
	FILE *fp = stdout;
	if (out && (moe_out_create(out, &tmp, &fd) || !(fp = fdopen(fd, "w")))) {
		fprintf(stderr, "moe-bench: %s\n", fd < 0 ? moe_last_error() : strerror(errno));
		if (tmp)
			unlink(tmp);
		free(tmp), free(u), moe_trace_free(&t);
		return 1;
	}
	fprintf(fp, "# moe-bench profile: %zu experts most used in %s (%zu layer steps, %u layers x %u experts)\n"
		"# layer expert uses\n", n, trace, t.n_steps, t.n_layers, t.n_experts);
	for (size_t i = 0; i < n; i++)
		fprintf(fp, "%u %u %llu\n", u[i].id / t.n_experts, u[i].id % t.n_experts, (unsigned long long)u[i].uses);
	if (out) {
		if (fflush(fp) != 0 || ferror(fp) || moe_out_commit(fd, tmp, out, 1)) {
			fprintf(stderr, "moe-bench: %s: %s\n", out, ferror(fp) ? strerror(errno) : moe_last_error());
			unlink(tmp);
			rc = 1;
		}
		fclose(fp); /* closes fd */
		free(tmp);
	}
	free(u);
	moe_trace_free(&t);
	return rc;
}

int main(int argc, char **argv)
{
	moe_check_stdout_at_exit("moe-bench");
	if (argc == 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
		printf("moe-bench (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION);
		return 0;
	}
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		puts("usage: moe-bench membw [--memory SIZE] [--reps N]\n"
		     "       moe-bench kernels [--impl LIST] [--format LIST] [--threads LIST] [--batch LIST]\n"
		     "                         [--shape LIST] [--seconds S] [--memory SIZE] [--reps N]\n"
		     "       moe-bench sim --trace FILE [--cache-experts LIST] [--policy LIST] [--pin FILE]\n"
		     "       moe-bench profile --trace FILE [--experts N|P%] [-o FILE]\n"
		     "       moe-bench diskbw --file FILE [--depth LIST] [--gib G]\n"
		     "  membw     memory read bandwidth with 1..all threads\n"
		     "  kernels   weight GB/s of each kernel implementation against that bandwidth\n"
		     "  sim       replay a moe-run --trace-out file through cache policies: how it routes, hit rates\n"
		     "  profile   the experts a trace uses most, as a pin list for moe-run --pin\n"
		     "  diskbw    O_DIRECT read bandwidth with 1..N reads in flight (the bound for expert streaming)\n"
		     "  --impl        scalar,avx2,avx512,neon (default: all this CPU runs)\n"
		     "  --format      q8,q4,f16,f32, GGUF block types q4_1,q5_0,q5_1,q2_k..q6_k,iq4_nl,iq4_xs,mxfp4 (default q8,q4)\n"
		     "  --threads     thread counts (default 1 and all CPUs)\n"
		     "  --batch       tokens per call, 1..64 (default 1,32)\n"
		     "  --shape       mixtral,qwen3,deepseek expert shapes (default all)\n"
		     "  --seconds     time per measurement (default 0.2)\n"
		     "  --memory      SIZE of weights cycled through, or of the bandwidth buffer (default 512M; membw 1G)\n"
		     "  --reps        measurements per figure; the median is printed (default 5; membw 7)\n"
		     "  --trace          sim: the route trace\n"
		     "  --cache-experts  sim: cache sizes, in experts or % of all (default 25%,50%,75%)\n"
		     "  --policy         sim: lru,lfu,next,belady (default all four; belady is the bound)\n"
		     "  --pin            sim: a pin list (moe-bench profile): its experts held for good, as moe-run --pin\n"
		     "  --experts        profile: how many to list, a count or % of all (default all, most used first)\n"
		     "  -o, --output     profile: the file to write (default standard output)\n"
		     "  --file           diskbw: the file to read (O_DIRECT bypasses the page cache)\n"
		     "  --depth          diskbw: reads in flight (default 1,8,32)\n"
		     "  --gib            diskbw: GiB read per measurement (default 2)\n"
		     "See moe-bench(1).");
		return argc < 2 ? 2 : 0;
	}
	if (strcmp(argv[1], "membw") == 0)
		return bench_membw(argc - 1, argv + 1);
	if (strcmp(argv[1], "kernels") == 0)
		return bench_kernels(argc - 1, argv + 1);
	if (strcmp(argv[1], "sim") == 0)
		return bench_sim(argc - 1, argv + 1);
	if (strcmp(argv[1], "profile") == 0)
		return bench_profile(argc - 1, argv + 1);
	if (strcmp(argv[1], "diskbw") == 0)
		return bench_diskbw(argc - 1, argv + 1);
	fprintf(stderr, "moe-bench: unknown command '%s' (membw, kernels, sim, profile, diskbw)\n", argv[1]);
	return 2;
}
