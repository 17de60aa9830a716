/* test_cache.c - the expert cache driven by scripted routes instead of a model's.
 *
 * usage: test_cache PACK...   (tests/cache_liveness.sh makes a raw and a zstd pack)
 *
 * Each scenario plays the engine's part: per layer step a distance-0 hint with the
 * experts the step uses (the cache reorders them), guesses for the next layers,
 * then acquire / compare / release of each expert. Every acquired blob must equal
 * the pack's own decode of that expert byte for byte, and the statistics must add
 * up. Liveness: a stall bound of a few seconds turns a wait that never ends into a
 * failed acquire, and an alarm ends the whole program if even that does not come. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache.h"
#include "check.h"
#include "moe.h"

#define STALL_SECONDS 5.0
#define WATCHDOG_SECONDS 600

static const moe_pack *pack;
static moe_expert_layout lay;
static uint32_t n_layers, n_experts;
static unsigned char **truth; /* [layer * n_experts + expert]: raw blob */

/* a small deterministic generator (splitmix64), so failures reproduce */
static uint64_t rng_state;
static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}
static uint32_t below(uint32_t n) { return (uint32_t)(rnd() % n); }

enum route { SAME, ALL, ALTERNATE, RANDOM };
enum guess { GUESS_NONE, GUESS_RIGHT, GUESS_WRONG, GUESS_RESIDENT, GUESS_RANDOM };
static const char *const route_name[] = {"same", "all", "alternate", "random"};
static const char *const guess_name[] = {"none", "right", "wrong", "resident", "random"};

struct scenario {
	enum route route;
	enum guess guess;
	unsigned depth;      /* layers guessed ahead */
	size_t slots;        /* budget in slots (2 = the least the cache takes) */
	int policy;
	unsigned io_depth;
	uint64_t chunk;      /* 0: the default */
	const char *io;      /* MOE_IO: "pread" or NULL */
	unsigned tokens;
	uint64_t seed;
};

/* up to k distinct random experts; returns how many */
static size_t random_set(uint32_t k, uint32_t *out)
{
	size_t n = 0;
	for (uint32_t i = 0; i < k; i++) {
		const uint32_t e = below(n_experts);
		size_t j = 0;
		while (j < n && out[j] != e)
			j++;
		if (j == n)
			out[n++] = e;
	}
	return n;
}

/* the experts of (token, layer) for a route; returns how many */
static size_t route_set(const struct scenario *sc, unsigned token, uint32_t layer, uint32_t *out)
{
	size_t n = 0;
	switch (sc->route) {
	case SAME: /* the same two every token, as a model repeating itself */
		out[n++] = layer % n_experts, out[n++] = (layer + 1) % n_experts;
		break;
	case ALL: /* a prompt batch touching every expert */
		for (uint32_t e = 0; e < n_experts; e++)
			out[n++] = (e + token) % n_experts;
		break;
	case ALTERNATE: /* two disjoint sets, token by token */
		out[n++] = (token % 2) * 2 % n_experts, out[n++] = ((token % 2) * 2 + 1) % n_experts;
		break;
	case RANDOM:
		n = random_set(1 + below(n_experts), out);
		break;
	}
	return n;
}

/* guesses for a layer step that will use `used`, made ahead of it */
static size_t guess_set(const struct scenario *sc, const uint32_t *used, size_t n_used,
			const uint32_t *resident, size_t n_resident, uint32_t *out)
{
	size_t n = 0;
	switch (sc->guess) {
	case GUESS_NONE:
		break;
	case GUESS_RIGHT:
		for (size_t i = 0; i < n_used; i++)
			out[n++] = used[i];
		break;
	case GUESS_WRONG: /* everything the step will not use */
		for (uint32_t e = 0; e < n_experts; e++) {
			size_t j = 0;
			while (j < n_used && used[j] != e)
				j++;
			if (j == n_used)
				out[n++] = e;
		}
		break;
	case GUESS_RESIDENT: /* what the previous step used, already in */
		for (size_t i = 0; i < n_resident; i++)
			out[n++] = resident[i];
		break;
	case GUESS_RANDOM:
		n = random_set(below(n_experts + 1), out);
		break;
	}
	return n;
}

static void describe(const struct scenario *sc, char *buf, size_t size)
{
	snprintf(buf, size, "route %s, guesses %s, depth %u, %zu slots, %s, io depth %u, chunk %llu, %s, seed %llu",
		 route_name[sc->route], guess_name[sc->guess], sc->depth, sc->slots, moe_cache_policy_name(sc->policy),
		 sc->io_depth, (unsigned long long)sc->chunk, sc->io ? sc->io : "io_uring", (unsigned long long)sc->seed);
}

static void run(const struct scenario *sc)
{
	char what[256];
	describe(sc, what, sizeof what);
	if (sc->io)
		setenv("MOE_IO", sc->io, 1);
	else
		unsetenv("MOE_IO");
	const uint64_t slot = moe_cache_slot_bytes(pack);
	struct moe_cache_options o = {
		.bytes = moe_cache_staging_bytes(pack, sc->chunk) + sc->slots * slot,
		.io_depth = sc->io_depth,
		.policy = sc->policy,
		.verify = 1,
		.stall_seconds = STALL_SECONDS,
		.chunk_bytes = sc->chunk,
	};
	struct moe_experts *x;
	int rc = moe_experts_cache(pack, &o, &x);
	CHECK(rc == 0, "%s: cannot make the cache: %s", what, moe_last_error());
	if (rc)
		return;
	rng_state = sc->seed;
	/* every layer step's set is drawn before the step, so guesses can be "right" */
	const size_t steps = (size_t)sc->tokens * n_layers;
	uint32_t *sets = calloc(steps * n_experts, sizeof *sets), *lens = calloc(steps, sizeof *lens);
	uint32_t *list = calloc(n_experts, sizeof *list), *guess = calloc(n_experts, sizeof *guess);
	for (size_t st = 0; st < steps; st++)
		lens[st] = (uint32_t)route_set(sc, (unsigned)(st / n_layers), (uint32_t)(st % n_layers), sets + st * n_experts);
	uint64_t uses = 0;
	int failed = 0;
	for (size_t st = 0; st < steps && !failed; st++) {
		const uint32_t layer = (uint32_t)(st % n_layers);
		const size_t n = lens[st];
		memcpy(list, sets + st * n_experts, n * sizeof *list);
		x->hint(x, layer, list, n, 0, NULL);
		for (unsigned d = 1; d <= sc->depth && st + d < steps; d++) {
			const size_t prev = st + d >= n_layers ? st + d - n_layers : st;
			const size_t ng = guess_set(sc, sets + (st + d) * n_experts, lens[st + d], sets + prev * n_experts,
						    lens[prev], guess);
			if (ng)
				x->hint(x, (uint32_t)((st + d) % n_layers), guess, ng, d, NULL);
		}
		for (size_t i = 0; i < n && !failed; i++) {
			struct moe_expert_weights w;
			if ((rc = x->acquire(x, layer, list[i], &w))) {
				CHECK(rc == 0, "%s: step %zu layer %u expert %u: %s", what, st, layer, list[i], moe_last_error());
				failed = 1;
				break;
			}
			const unsigned char *blob = (const unsigned char *)w.gate.codes - lay.offset[0];
			const int same = memcmp(blob, truth[(size_t)layer * n_experts + list[i]], lay.raw_size) == 0;
			CHECK(same, "%s: step %zu layer %u expert %u: bytes differ from the pack's", what, st, layer, list[i]);
			failed |= !same;
			x->release(x, &w);
			uses++;
		}
	}
	struct moe_expert_stats s;
	x->stats(x, &s);
	CHECK(failed || s.hits + s.prefetch_hits + s.misses == uses, "%s: %llu uses, but %llu hits + %llu prefetched + %llu misses",
	      what, (unsigned long long)uses, (unsigned long long)s.hits, (unsigned long long)s.prefetch_hits,
	      (unsigned long long)s.misses);
	CHECK(s.slots == (sc->slots < moe_pack_expert_count(pack) ? sc->slots : moe_pack_expert_count(pack)),
	      "%s: %llu slots", what, (unsigned long long)s.slots);
	x->destroy(x);
	free(sets), free(lens), free(list), free(guess);
}

static void watchdog(int sig)
{
	(void)sig;
	static const char msg[] = "test_cache: watchdog: the cache hung past every bound\n";
	(void)!write(2, msg, sizeof msg - 1);
	_exit(1);
}

static int load(const char *path)
{
	moe_pack *p;
	if (moe_pack_open(path, &p)) {
		fprintf(stderr, "test_cache: %s\n", moe_last_error());
		return -1;
	}
	pack = p;
	moe_pack_expert_layout(pack, &lay);
	n_layers = n_experts = 0;
	for (size_t i = 0; i < moe_pack_expert_count(pack); i++) {
		moe_expert_info e;
		moe_pack_expert_at(pack, i, &e);
		n_layers = e.layer + 1 > n_layers ? e.layer + 1 : n_layers;
		n_experts = e.expert + 1 > n_experts ? e.expert + 1 : n_experts;
	}
	truth = calloc((size_t)n_layers * n_experts, sizeof *truth);
	for (size_t i = 0; i < moe_pack_expert_count(pack); i++) {
		moe_expert_info e;
		moe_pack_expert_at(pack, i, &e);
		unsigned char *b = malloc(lay.raw_size);
		if (!b || moe_pack_expert_read(pack, e.layer, e.expert, b)) {
			fprintf(stderr, "test_cache: %s\n", moe_last_error());
			return -1;
		}
		truth[(size_t)e.layer * n_experts + e.expert] = b;
	}
	return 0;
}

static void unload(void)
{
	for (size_t i = 0; i < (size_t)n_layers * n_experts; i++)
		free(truth[i]);
	free(truth);
	moe_pack_close((moe_pack *)pack);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: test_cache PACK...\n");
		return 2;
	}
	signal(SIGALRM, watchdog);
	alarm(WATCHDOG_SECONDS);
	for (int a = 1; a < argc; a++) {
		if (load(argv[a]))
			return 1;
		const size_t all = moe_pack_expert_count(pack);
		/* the scripted cases, at the least budget and one slot more, every prefetch
		 * depth, both policies, one read at a time and eight, small chunks (many
		 * per blob, so a compressed blob laps its ring) and the default */
		for (int r = SAME; r <= ALTERNATE; r++)
			for (int g = GUESS_NONE; g <= GUESS_RESIDENT; g++)
				for (unsigned depth = 0; depth <= 3; depth++) {
					if ((g == GUESS_NONE) != (depth == 0))
						continue;
					for (size_t slots = 2; slots <= 3; slots++)
						for (int policy = 0; policy <= MOE_POLICY_NEXT; policy++) {
							struct scenario sc = {r, g, depth, slots, policy, policy ? 1 : 8,
									      policy ? 4096 : 0, NULL, 6, 1};
							run(&sc);
						}
				}
		/* pread instead of io_uring */
		struct scenario sc = {SAME, GUESS_RIGHT, 1, 2, MOE_POLICY_LRU, 2, 4096, "pread", 6, 1};
		run(&sc);
		/* random routes, guesses and budgets */
		for (uint64_t seed = 1; seed <= 100; seed++) {
			rng_state = seed * 7919;
			struct scenario rs = {
				.route = RANDOM,
				.guess = (enum guess)below(5),
				.slots = 2 + below((uint32_t)all),
				.policy = (int)below(3),
				.io_depth = 1 + below(8),
				.chunk = below(2) ? 4096 * (1 + below(8)) : 0,
				.io = below(4) ? NULL : "pread",
				.tokens = 2 + below(6),
				.seed = seed,
			};
			rs.depth = rs.guess == GUESS_NONE ? 0 : 1 + below(3);
			run(&rs);
		}
		printf("%s: %u layers x %u experts, %llu bytes each\n", argv[a], n_layers, n_experts,
		       (unsigned long long)lay.raw_size);
		unload();
	}
	return check_report("test_cache");
}
