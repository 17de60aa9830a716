/* sim.c - trace replay through cache policies (see sim.h). */
#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "cache/sim.h"
#include "common/error.h"

void moe_trace_free(struct moe_trace *t)
{
	free(t->layer);
	free(t->start);
	free(t->experts);
	memset(t, 0, sizeof *t);
}

/* scores: if not NULL, the router probability of each entry (1 where the line has none) */
static int trace_load(const char *path, struct moe_trace *t, float **scores)
{
	memset(t, 0, sizeof *t);
	FILE *fp = fopen(path, "r");
	if (!fp)
		return moe_fail(MOE_EIO, "%s: %s", path, strerror(errno));
	size_t cap = 1024, ecap = 4096, n_exp = 0, line_no = 0;
	t->layer = malloc(cap * sizeof *t->layer);
	t->start = malloc((cap + 1) * sizeof *t->start);
	t->experts = malloc(ecap * sizeof *t->experts);
	float *sc = scores ? malloc(ecap * sizeof *sc) : NULL;
	char *line = NULL;
	size_t lcap = 0;
	int rc = 0, header = 0;
	while (!rc && t->layer && t->start && t->experts && (!scores || sc) && getline(&line, &lcap, fp) > 0) {
		line_no++;
		json_error_t jerr;
		json_t *o = json_loads(line, 0, &jerr);
		json_t *ex = json_object_get(o, "experts"), *ly = json_object_get(o, "layer"), *ss = json_object_get(o, "scores");
		if (o && json_is_integer(json_object_get(o, "layers")) && !header) {
			/* bounded so that the tables of every (layer, expert) stay small:
			 * DeepSeek-V3 has 61 layers of 256 experts */
			const json_int_t nl = json_integer_value(json_object_get(o, "layers"));
			const json_int_t ne = json_integer_value(json_object_get(o, "experts"));
			if (nl < 1 || nl > MOE_TRACE_MAX_LAYERS || ne < 1 || ne > MOE_TRACE_MAX_EXPERTS)
				rc = moe_fail(MOE_EFORMAT, "%s:%zu: a trace of %lld layers x %lld experts (1..%d x 1..%d)", path,
					      line_no, (long long)nl, (long long)ne, MOE_TRACE_MAX_LAYERS, MOE_TRACE_MAX_EXPERTS);
			t->n_layers = (uint32_t)nl, t->n_experts = (uint32_t)ne;
			header = 1;
		} else if (!json_is_array(ex) || !json_is_integer(ly) || !header ||
			   json_integer_value(ly) < 0 || json_integer_value(ly) >= t->n_layers) {
			rc = moe_fail(MOE_EFORMAT, "%s:%zu: not a moe-run --trace-out line%s", path, line_no,
				      header ? "" : " (no header)");
		} else {
			if (t->n_steps == cap) {
				cap *= 2;
				uint32_t *nl = realloc(t->layer, cap * sizeof *nl);
				size_t *ns = nl ? realloc(t->start, (cap + 1) * sizeof *ns) : NULL;
				if (nl)
					t->layer = nl;
				if (!ns) {
					json_decref(o);
					rc = moe_fail(MOE_ENOMEM, "out of memory");
					break;
				}
				t->start = ns;
			}
			t->layer[t->n_steps] = (uint32_t)json_integer_value(ly);
			t->start[t->n_steps] = n_exp;
			size_t i;
			json_t *e;
			json_array_foreach(ex, i, e) {
				const json_int_t v = json_integer_value(e);
				if (!json_is_integer(e) || v < 0 || v >= t->n_experts) {
					rc = moe_fail(MOE_EFORMAT, "%s:%zu: expert id out of range", path, line_no);
					break;
				}
				if (n_exp == ecap) {
					uint32_t *ne = realloc(t->experts, (ecap *= 2) * sizeof *ne);
					float *ns = ne && sc ? realloc(sc, ecap * sizeof *ns) : NULL;
					if (ne)
						t->experts = ne;
					if (ns)
						sc = ns;
					if (!ne || (sc && !ns)) {
						rc = moe_fail(MOE_ENOMEM, "out of memory");
						break;
					}
				}
				if (sc) {
					const json_t *p = json_array_get(ss, i);
					sc[n_exp] = json_is_number(p) && json_number_value(p) >= 0 && json_number_value(p) <= 1
						? (float)json_number_value(p) : 1.0f;
				}
				t->experts[n_exp++] = (uint32_t)v;
			}
			t->n_steps++;
			t->start[t->n_steps] = n_exp;
		}
		json_decref(o);
	}
	free(line);
	fclose(fp);
	if (!rc && (!t->layer || !t->start || !t->experts))
		rc = moe_fail(MOE_ENOMEM, "out of memory");
	if (!rc && !t->n_steps)
		rc = moe_fail(MOE_EFORMAT, "%s: no routes in the trace", path);
	if (!rc && scores && !sc)
		rc = moe_fail(MOE_ENOMEM, "out of memory");
	if (rc) {
		moe_trace_free(t);
		free(sc);
		sc = NULL;
	}
	if (scores)
		*scores = sc;
	return rc;
}

int moe_trace_load(const char *path, struct moe_trace *t) { return trace_load(path, t, NULL); }

void moe_replay_free(struct moe_replay *r)
{
	if (!r)
		return;
	moe_trace_free(&r->t);
	free(r->scores);
	free(r->steps);
	free(r->first);
	free(r);
}

int moe_replay_open(const char *path, struct moe_replay **out)
{
	*out = NULL;
	struct moe_replay *r = calloc(1, sizeof *r);
	if (!r)
		return moe_fail(MOE_ENOMEM, "out of memory");
	int rc = trace_load(path, &r->t, &r->scores);
	if (rc) {
		free(r);
		return rc;
	}
	const struct moe_trace *t = &r->t;
	r->first = calloc(t->n_layers + 1, sizeof *r->first);
	r->steps = malloc(t->n_steps * sizeof *r->steps);
	if (!r->first || !r->steps) {
		moe_replay_free(r);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < t->n_steps; i++) /* counting sort of the steps by layer, in order */
		r->first[t->layer[i] + 1]++;
	for (uint32_t l = 0; l < t->n_layers; l++)
		r->first[l + 1] += r->first[l];
	size_t *fill = calloc(t->n_layers + 1, sizeof *fill);
	if (!fill) {
		moe_replay_free(r);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < t->n_steps; i++)
		r->steps[r->first[t->layer[i]] + fill[t->layer[i]]++] = i;
	free(fill);
	*out = r;
	return 0;
}

size_t moe_replay_route(const struct moe_replay *r, uint64_t pos, uint32_t layer, uint32_t n_experts, size_t k,
			int *experts, float *scores)
{
	const struct moe_trace *t = &r->t;
	const uint32_t tl = layer % t->n_layers, g = layer / t->n_layers;
	const size_t uses = r->first[tl + 1] - r->first[tl];
	if (!uses)
		return 0;
	const size_t step = r->steps[r->first[tl] + (size_t)((pos + 7919ull * g) % uses)];
	const uint32_t stride = n_experts > t->n_experts ? n_experts / t->n_experts : 1;
	size_t n = 0;
	for (size_t i = t->start[step]; i < t->start[step + 1] && n < k && n < n_experts; i++) {
		uint32_t e = (uint32_t)(((uint64_t)t->experts[i] * stride + g) % n_experts);
		for (int taken = 1; taken;) { /* distinct ids: the next free one on a collision */
			taken = 0;
			for (size_t j = 0; j < n; j++)
				taken |= experts[j] == (int)e;
			if (taken)
				e = (e + 1) % n_experts;
		}
		experts[n] = (int)e;
		scores[n++] = r->scores[i];
	}
	return n;
}

int moe_pin_load(const char *path, uint32_t n_layers, uint32_t n_experts, uint32_t **ids, size_t *n)
{
	*ids = NULL, *n = 0;
	FILE *fp = fopen(path, "r");
	if (!fp)
		return moe_fail(MOE_EIO, "%s: %s", path, strerror(errno));
	const size_t n_ids = (size_t)n_layers * n_experts;
	uint8_t *listed = calloc(n_ids ? n_ids : 1, 1);
	uint32_t *out = malloc((n_ids ? n_ids : 1) * sizeof *out);
	char *line = NULL;
	size_t cap = 0, line_no = 0, count = 0;
	int rc = listed && out ? 0 : moe_fail(MOE_ENOMEM, "out of memory");
	while (!rc && getline(&line, &cap, fp) > 0) {
		line_no++;
		char *hash = strchr(line, '#');
		if (hash)
			*hash = 0;
		unsigned long l, e;
		char first;
		if (sscanf(line, " %c", &first) != 1)
			continue; /* blank or a comment */
		if (sscanf(line, " %lu %lu", &l, &e) != 2 || strspn(line, " \t\r\n0123456789") < strlen(line))
			rc = moe_fail(MOE_EFORMAT, "%s:%zu: not \"LAYER EXPERT [USES]\"", path, line_no);
		else if (l >= n_layers || e >= n_experts)
			rc = moe_fail(MOE_EFORMAT, "%s:%zu: layer %lu expert %lu: the model has %u layers of %u experts", path,
				      line_no, l, e, n_layers, n_experts);
		else if (listed[l * n_experts + e]++)
			rc = moe_fail(MOE_EFORMAT, "%s:%zu: layer %lu expert %lu listed twice", path, line_no, l, e);
		else
			out[count++] = (uint32_t)(l * n_experts + e);
	}
	if (!rc && ferror(fp))
		rc = moe_fail(MOE_EIO, "%s: %s", path, strerror(errno));
	free(line);
	free(listed);
	fclose(fp);
	if (rc) {
		free(out);
		return rc;
	}
	*ids = out, *n = count;
	return 0;
}

static int cmp_size(const void *a, const void *b)
{
	const size_t x = *(const size_t *)a, y = *(const size_t *)b;
	return (x > y) - (x < y);
}

int moe_trace_routing(const struct moe_trace *t, struct moe_trace_routing *out)
{
	const size_t n_ids = (size_t)t->n_layers * t->n_experts, n_acc = t->start[t->n_steps];
	size_t *count = calloc(n_ids + 1, sizeof *count), *last = malloc((n_ids + 1) * sizeof *last);
	size_t *visits = calloc(t->n_layers, sizeof *visits), *prev = malloc(t->n_layers * sizeof *prev);
	size_t *dist = malloc((n_acc + 1) * sizeof *dist), n_dist = 0, repeats = 0, later = 0;
	memset(out, 0, sizeof *out);
	if (!count || !last || !visits || !prev || !dist) {
		free(count), free(last), free(visits), free(prev), free(dist);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < n_ids; i++)
		last[i] = SIZE_MAX;
	for (size_t s = 0; s < t->n_steps; s++) {
		const uint32_t l = t->layer[s];
		const size_t base = (size_t)l * t->n_experts, v = visits[l]++;
		for (size_t i = t->start[s]; i < t->start[s + 1]; i++) {
			const size_t id = base + t->experts[i];
			if (last[id] != SIZE_MAX)
				dist[n_dist++] = v - last[id];
			if (v > 0) {
				later++;
				for (size_t j = t->start[prev[l]]; j < t->start[prev[l] + 1]; j++)
					repeats += t->experts[j] == t->experts[i];
			}
			last[id] = v;
			out->experts_used += !count[id]++;
		}
		prev[l] = s;
	}
	size_t layers = 0;
	out->entropy_min = 1;
	for (uint32_t l = 0; l < t->n_layers; l++) {
		size_t n = 0;
		double h = 0;
		for (uint32_t e = 0; e < t->n_experts; e++)
			n += count[(size_t)l * t->n_experts + e];
		for (uint32_t e = 0; e < t->n_experts && n; e++) {
			const double p = (double)count[(size_t)l * t->n_experts + e] / (double)n;
			h -= p > 0 ? p * log2(p) : 0;
		}
		if (!n || t->n_experts < 2)
			continue;
		h /= log2((double)t->n_experts);
		out->entropy += h;
		layers++;
		if (h < out->entropy_min)
			out->entropy_min = h, out->entropy_min_layer = l;
	}
	out->entropy = layers ? out->entropy / (double)layers : 0;
	out->entropy_min = layers ? out->entropy_min : 0;
	out->repeat = later ? (double)repeats / (double)later : 0;
	/* at random, an expert comes back after d steps with probability p (1 - p)^(d - 1) */
	const double p = t->n_steps ? (double)n_acc / (double)t->n_steps / t->n_experts : 0;
	out->repeat_random = p;
	out->reuse_median_random = p >= 1 ? 1 : p > 0 ? (size_t)ceil(log(0.5) / log(1 - p)) : 0;
	if (n_dist) {
		qsort(dist, n_dist, sizeof *dist, cmp_size);
		out->reuse_median = dist[n_dist / 2];
	}
	free(count), free(last), free(visits), free(prev), free(dist);
	return 0;
}

int moe_cache_sim(const struct moe_trace *t, size_t slots, int policy, const uint32_t *pinned, size_t n_pinned,
		  struct moe_sim_result *out)
{
	const size_t n_ids = (size_t)t->n_layers * t->n_experts, n_acc = t->start[t->n_steps];
	int64_t *where = malloc(n_ids * sizeof *where), *held = malloc(slots * sizeof *held);
	uint32_t *freq = calloc(n_ids, sizeof *freq);
	struct moe_policy_use *use = calloc(n_ids, sizeof *use);
	struct moe_policy_cand *pc = malloc(slots * sizeof *pc);
	uint64_t *last = calloc(slots, sizeof *last), clock = 0, uses = 0;
	size_t *cand = malloc(slots * sizeof *cand), *next_use = malloc((n_acc + 1) * sizeof *next_use);
	size_t *seen = malloc(n_ids * sizeof *seen), *step_of = malloc((n_acc + 1) * sizeof *step_of);
	uint8_t *needed = calloc(n_ids, 1), *fixed = calloc(slots ? slots : 1, 1);
	int rc = 0;
	if (!slots || n_pinned >= slots) {
		rc = moe_fail(MOE_EINVAL, "a cache of %zu experts with %zu pinned leaves none for the policy", slots,
			      n_pinned);
		goto out;
	}
	if (!where || !held || !freq || !use || !pc || !last || !cand || !next_use || !seen || !step_of ||
	    !needed || !fixed) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto out;
	}
	/* Belady: the step at which each access's expert is next needed */
	for (size_t s = 0; s < t->n_steps; s++)
		for (size_t i = t->start[s]; i < t->start[s + 1]; i++)
			step_of[i] = s;
	for (size_t i = 0; i < n_ids; i++)
		seen[i] = SIZE_MAX;
	for (size_t i = n_acc; i-- > 0;) {
		const size_t id = (size_t)t->layer[step_of[i]] * t->n_experts + t->experts[i];
		next_use[i] = seen[id];
		seen[id] = step_of[i];
	}
	for (size_t i = 0; i < n_ids; i++)
		where[i] = -1, seen[i] = SIZE_MAX; /* seen: next use of what is held, for Belady */
	size_t used = 0;
	memset(out, 0, sizeof *out);
	for (size_t k = 0; k < n_pinned; k++) /* held from the start, never a candidate */
		if (pinned[k] < n_ids && where[pinned[k]] < 0) {
			held[used] = pinned[k], where[pinned[k]] = (int64_t)used, fixed[used++] = 1;
		}
	for (size_t s = 0; s < t->n_steps; s++) {
		const size_t base = (size_t)t->layer[s] * t->n_experts;
		for (size_t i = t->start[s]; i < t->start[s + 1]; i++)
			needed[base + t->experts[i]] = 1;
		for (size_t e = 0; e < t->n_experts; e++)
			moe_policy_visit(&use[base + e], needed[base + e]);
		/* as the cache's hint: count each use, evict for each miss in order */
		for (size_t i = t->start[s]; i < t->start[s + 1]; i++) {
			const size_t id = base + t->experts[i];
			freq[id]++;
			if (++uses % n_ids == 0)
				for (size_t k = 0; k < n_ids; k++)
					freq[k] /= 2;
			seen[id] = next_use[i];
			if (where[id] >= 0) {
				out->hits++;
				continue;
			}
			out->misses++;
			int64_t slot = -1;
			if (used < slots) {
				slot = (int64_t)used++;
			} else {
				size_t n = 0;
				for (size_t k = 0; k < slots; k++)
					if (!needed[held[k]] && !fixed[k]) {
						const uint32_t l = (uint32_t)(held[k] / t->n_experts);
						cand[n] = k;
						pc[n++] = (struct moe_policy_cand){last[k], freq[held[k]],
							moe_policy_next_use(l, t->layer[s], t->n_layers, moe_policy_p(&use[held[k]]))};
					}
				if (!n)
					continue; /* more experts in one step than slots: read, not kept */
				size_t pick = 0;
				if (policy == MOE_POLICY_BELADY) {
					for (size_t k = 1; k < n; k++)
						if (seen[held[cand[k]]] > seen[held[cand[pick]]])
							pick = k;
				} else {
					pick = moe_policy_pick(policy, pc, n);
				}
				slot = (int64_t)cand[pick];
				where[held[slot]] = -1;
			}
			held[slot] = (int64_t)id;
			where[id] = slot;
			last[slot] = 0; /* touched below */
		}
		/* as acquire: the ones that were here first, then the ones read */
		for (int pass = 0; pass < 2; pass++)
			for (size_t i = t->start[s]; i < t->start[s + 1]; i++) {
				const size_t id = base + t->experts[i];
				if (where[id] >= 0 && (last[where[id]] != 0) == (pass == 0))
					last[where[id]] = ++clock;
			}
		for (size_t i = t->start[s]; i < t->start[s + 1]; i++)
			needed[base + t->experts[i]] = 0;
	}
out:
	free(where), free(held), free(freq), free(use), free(pc), free(last), free(cand), free(next_use);
	free(seen), free(step_of), free(needed), free(fixed);
	return rc;
}
