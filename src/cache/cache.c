/* cache.c - the expert cache (see cache.h).
 *
 * Threads: the compute thread calls hint/acquire/release; one I/O thread owns the
 * read engine, issues reads chunk by chunk in priority order (demand first, then
 * the layer about to run, then guesses by distance and likelihood), and on a
 * blob's last chunk checks its XXH3, decodes zstd and marks the slot ready. One
 * mutex guards the slot table; the I/O thread never holds it during I/O, hashing
 * or decoding. */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <xxhash.h>
#include <zstd.h>

#include "cache/cache.h"
#include "common/error.h"
#include "io/io.h"

#define CHUNK (4u << 20) /* bytes per read: big for the disk, small enough to reorder */
#define N_STAGING 2      /* compressed blobs being read or decoded at once */
#define PRIO_DEMAND 0
#define PRIO_NOW (1ull << 40)
#define PRIO_AHEAD (1ull << 48) /* + distance << 32 + rank */

enum slot_state { SLOT_FREE, SLOT_QUEUED, SLOT_READING, SLOT_READY };

struct slot {
	int64_t expert;      /* index into the cache's expert table; -1 when free */
	enum slot_state state;
	int pins;
	uint64_t last_use;   /* LRU clock at the last acquire */
	uint64_t want;       /* the layer step that needs it and has not used it yet, + 1; 0: none */
	uint64_t guess_seq;  /* the latest layer step a prefetch guessed it for */
	int prefetched;      /* brought in by a guess and not used since */
	uint64_t prio;       /* while queued */
	/* while reading */
	uint64_t issued, done, read_len;
	int staging;         /* staging buffer for a compressed blob, or -1 */
	int err;             /* an error while reading, reported to the acquirer */
	int reread;          /* read again after a checksum mismatch */
	char msg[256];       /* what err says, naming the layer and expert */
	char *mem;
};

struct cache {
	struct moe_experts base;
	const moe_pack *pack;
	moe_expert_layout lay;
	uint32_t n_layers, n_experts;
	moe_expert_info *info; /* [layer * n_experts + expert]; offset 0 where a layer has none */
	int32_t *where;        /* slot of each expert, -1 if none */
	uint32_t *freq;        /* LFU counts per expert, aged */
	uint64_t accesses, age_every;
	struct slot *slots;
	size_t n_slots;
	uint64_t *pick_last;   /* victim()'s candidates, sized once: [n_slots] */
	uint32_t *pick_freq;
	int64_t *pick_idx;
	uint64_t slot_bytes, staging_bytes;
	char *arena;
	size_t arena_bytes;
	char *staging[N_STAGING];
	int staging_busy[N_STAGING];
	struct moe_io *io;
	unsigned io_depth_all;
	int policy, verify;
	uint64_t *classified;  /* per expert: the layer step its use was last counted for, + 1 */
	/* layer steps: seq = token * n_layers + layer, advanced by distance-0 hints */
	uint64_t seq, clock;
	uint32_t cur_layer;
	int started;
	/* the I/O thread */
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t work, ready;
	int stop, thread_started;
	char err_msg[256]; /* why the I/O thread stopped, if it did */
	ZSTD_DCtx *zstd;
	struct moe_expert_stats st;
	double io_since; /* start of the current busy period; 0 when idle */
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

uint64_t moe_cache_slot_bytes(const moe_pack *pack)
{
	moe_expert_layout lay;
	moe_pack_expert_layout(pack, &lay);
	return round_up(lay.raw_size, MOE_IO_ALIGN);
}

uint64_t moe_cache_staging_bytes(const moe_pack *pack)
{
	uint64_t most = 0;
	for (size_t i = 0; i < moe_pack_expert_count(pack); i++) {
		moe_expert_info e;
		if (moe_pack_expert_at(pack, i, &e) == 0 && e.codec != MOE_CODEC_RAW && e.stored_size > most)
			most = e.stored_size;
	}
	return most ? N_STAGING * round_up(most, MOE_IO_ALIGN) : 0;
}

uint64_t moe_cache_min_bytes(const moe_pack *pack)
{
	return 2 * moe_cache_slot_bytes(pack) + moe_cache_staging_bytes(pack);
}

int moe_cache_policy_parse(const char *name)
{
	return !strcmp(name, "lru") ? MOE_POLICY_LRU : !strcmp(name, "lfu") ? MOE_POLICY_LFU : -1;
}

const char *moe_cache_policy_name(int policy) { return policy == MOE_POLICY_LFU ? "lfu" : "lru"; }

size_t moe_policy_pick(int policy, const uint64_t *last_use, const uint32_t *freq, size_t n)
{
	size_t best = 0;
	for (size_t i = 1; i < n; i++) {
		const int better = policy == MOE_POLICY_LFU
			? freq[i] < freq[best] || (freq[i] == freq[best] && last_use[i] < last_use[best])
			: last_use[i] < last_use[best];
		if (better)
			best = i;
	}
	return best;
}

/* ---- slots (mutex held) ---- */

/* The slot to reuse: free first; else a ready, unpinned one that the layer being
 * computed does not still need and no guess covers; for a demand (or the layer
 * about to run), failing that, one only guessed for later, the farthest first.
 * -1 if none. */
static int evictable(const struct cache *c, const struct slot *s)
{
	return s->state == SLOT_READY && !s->pins && s->want != c->seq + 1;
}

static int64_t victim(struct cache *c, int demand)
{
	uint64_t *lu = c->pick_last;
	uint32_t *fq = c->pick_freq;
	int64_t *ix = c->pick_idx, found = -1;
	size_t n = 0;
	for (size_t i = 0; i < c->n_slots && found < 0; i++)
		if (c->slots[i].state == SLOT_FREE)
			found = (int64_t)i;
	for (size_t i = 0; i < c->n_slots && found < 0; i++) {
		const struct slot *s = &c->slots[i];
		if (evictable(c, s) && s->guess_seq <= c->seq) {
			lu[n] = s->last_use, fq[n] = c->freq[s->expert], ix[n++] = (int64_t)i;
		}
	}
	if (found < 0 && n)
		found = ix[moe_policy_pick(c->policy, lu, fq, n)];
	for (size_t i = 0; i < c->n_slots && found < 0 && demand; i++) {
		const struct slot *s = &c->slots[i];
		if (evictable(c, s) && s->guess_seq > c->seq && (found < 0 || s->guess_seq > c->slots[found].guess_seq))
			found = (int64_t)i;
	}
	return found;
}

static void queue_read(struct cache *c, int64_t slot, int64_t expert, uint64_t prio)
{
	struct slot *s = &c->slots[slot];
	if (s->expert >= 0)
		c->where[s->expert] = -1;
	s->expert = expert;
	c->where[expert] = (int32_t)slot;
	s->state = SLOT_QUEUED;
	s->prio = prio;
	s->issued = s->done = 0;
	s->err = 0;
	s->reread = 0;
	s->prefetched = 0;
	s->want = 0;
	s->guess_seq = 0;
	s->staging = -1;
	pthread_cond_signal(&c->work);
}

static void count_use(struct cache *c, int64_t e)
{
	c->freq[e]++;
	if (++c->accesses % c->age_every == 0) /* aging: old popularity fades */
		for (size_t i = 0; i < (size_t)c->n_layers * c->n_experts; i++)
			c->freq[i] /= 2;
}

/* ---- the I/O thread ---- */

static int64_t next_job(struct cache *c)
{
	int64_t best = -1;
	for (size_t i = 0; i < c->n_slots; i++) {
		struct slot *s = &c->slots[i];
		if ((s->state == SLOT_QUEUED || (s->state == SLOT_READING && s->issued < s->read_len)) &&
		    (best < 0 || s->prio < c->slots[best].prio))
			best = (int64_t)i;
	}
	return best;
}

/* the blob's bytes are in: check, decode, publish (mutex not held) */
static int finish(struct cache *c, struct slot *s)
{
	const moe_expert_info *e = &c->info[s->expert];
	const char *stored = s->staging >= 0 ? c->staging[s->staging] : s->mem;
	if (c->verify && XXH3_64bits(stored, e->stored_size) != e->xxh3_stored)
		return moe_fail(MOE_ECHECKSUM, "%s: layer %u expert %u: checksum mismatch in the bytes read",
				moe_pack_path(c->pack), e->layer, e->expert);
	if (e->codec == MOE_CODEC_ZSTD) {
		size_t r = ZSTD_decompressDCtx(c->zstd, s->mem, c->slot_bytes, stored, e->stored_size);
		if (ZSTD_isError(r) || r != e->raw_size)
			return moe_fail(MOE_EFORMAT, "%s: layer %u expert %u: zstd: %s", moe_pack_path(c->pack), e->layer,
					e->expert, ZSTD_isError(r) ? ZSTD_getErrorName(r) : "wrong decoded size");
		if (c->verify && XXH3_64bits(s->mem, e->raw_size) != e->xxh3_raw)
			return moe_fail(MOE_ECHECKSUM, "%s: layer %u expert %u: checksum mismatch after decoding",
					moe_pack_path(c->pack), e->layer, e->expert);
	}
	return 0;
}

static void *io_thread(void *arg)
{
	struct cache *c = arg;
	pthread_mutex_lock(&c->mu);
	for (;;) {
		int64_t j;
		while (!c->stop && moe_io_free_slots(c->io) > 0 && (j = next_job(c)) >= 0) {
			struct slot *s = &c->slots[j];
			const moe_expert_info *e = &c->info[s->expert];
			if (s->state == SLOT_QUEUED) {
				if (e->codec != MOE_CODEC_RAW) {
					int k = 0;
					while (k < N_STAGING && c->staging_busy[k])
						k++;
					if (k == N_STAGING)
						break; /* both staging buffers busy: wait for a completion */
					c->staging_busy[k] = 1;
					s->staging = k;
				}
				s->state = SLOT_READING;
				s->read_len = round_up(e->stored_size, MOE_IO_ALIGN);
			}
			char *dst = (s->staging >= 0 ? c->staging[s->staging] : s->mem) + s->issued;
			const uint64_t len = s->read_len - s->issued < CHUNK ? s->read_len - s->issued : CHUNK;
			if (moe_io_read(c->io, dst, e->offset + s->issued, len, (uint64_t)j << 32 | (s->issued / CHUNK)))
				break;
			s->issued += len;
			if (!c->io_since)
				c->io_since = now_s();
		}
		if (c->stop)
			break;
		if (moe_io_free_slots(c->io) == c->io_depth_all) {
			pthread_cond_wait(&c->work, &c->mu);
			continue;
		}
		pthread_mutex_unlock(&c->mu);
		int rc = moe_io_submit(c->io);
		uint64_t tag;
		int64_t res;
		int got = rc ? -1 : moe_io_complete(c->io, 1, &tag, &res);
		pthread_mutex_lock(&c->mu);
		for (; got == 0; got = moe_io_complete(c->io, 0, &tag, &res)) {
			struct slot *s = &c->slots[tag >> 32];
			const uint64_t off = (tag & 0xffffffffu) * CHUNK;
			const uint64_t want = s->read_len - off < CHUNK ? s->read_len - off : CHUNK;
			const moe_expert_info *e = &c->info[s->expert];
			/* the last chunk may run into the end of the file: short is fine past the blob */
			if (res < 0 || ((uint64_t)res < want && off + (uint64_t)res < e->stored_size)) {
				if (!s->err) {
					s->err = MOE_EIO;
					if (res < 0)
						snprintf(s->msg, sizeof s->msg, "%s: layer %u expert %u: read: %s",
							 moe_pack_path(c->pack), e->layer, e->expert, strerror((int)-res));
					else
						snprintf(s->msg, sizeof s->msg,
							 "%s: layer %u expert %u: short read: %lld of %llu bytes at offset %llu",
							 moe_pack_path(c->pack), e->layer, e->expert, (long long)res,
							 (unsigned long long)want, (unsigned long long)(e->offset + off));
				}
			}
			c->st.bytes_read += res > 0 ? (uint64_t)res : 0;
			s->done += want;
			if (s->done < s->read_len)
				continue;
			/* every chunk is in: check and decode without the lock */
			if (!s->err) {
				pthread_mutex_unlock(&c->mu);
				int frc = finish(c, s);
				pthread_mutex_lock(&c->mu);
				if (frc == MOE_ECHECKSUM && !s->reread) {
					/* once more from the disk before calling the pack corrupt */
					if (s->staging >= 0)
						c->staging_busy[s->staging] = 0, s->staging = -1;
					s->reread = 1;
					s->state = SLOT_QUEUED;
					s->issued = s->done = 0;
					c->st.rereads++;
					continue;
				}
				if (frc) {
					s->err = frc;
					snprintf(s->msg, sizeof s->msg, "%s%s", moe_last_error(),
						 frc == MOE_ECHECKSUM ? " (read twice)" : "");
				}
			}
			if (s->staging >= 0)
				c->staging_busy[s->staging] = 0, s->staging = -1;
			s->state = SLOT_READY;
			pthread_cond_broadcast(&c->ready);
		}
		if (rc || got < 0) { /* the engine itself failed: fail everything in flight */
			snprintf(c->err_msg, sizeof c->err_msg, "%s", moe_last_error());
			for (size_t i = 0; i < c->n_slots; i++)
				if (c->slots[i].state == SLOT_READING || c->slots[i].state == SLOT_QUEUED) {
					c->slots[i].err = MOE_EIO;
					snprintf(c->slots[i].msg, sizeof c->slots[i].msg, "%.200s", c->err_msg);
					c->slots[i].state = SLOT_READY;
				}
			pthread_cond_broadcast(&c->ready);
			c->stop = 1;
			break;
		}
		if (moe_io_free_slots(c->io) == c->io_depth_all && next_job(c) < 0 && c->io_since) {
			c->st.io_seconds += now_s() - c->io_since;
			c->io_since = 0;
		}
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

/* ---- the provider, on the compute thread ---- */

/* count a use once per layer step: hit, prefetch hit or miss, and for LFU */
static void classify(struct cache *c, int64_t e)
{
	if (c->classified[e] == c->seq + 1)
		return;
	c->classified[e] = c->seq + 1;
	const int32_t w = c->where[e];
	if (w < 0)
		c->st.misses++;
	else if (c->slots[w].prefetched)
		c->st.prefetch_hits++, c->slots[w].prefetched = 0;
	else
		c->st.hits++;
	count_use(c, e);
}

static void hint(struct moe_experts *base, uint32_t layer, uint32_t *experts, size_t n, unsigned distance)
{
	struct cache *c = (struct cache *)base;
	pthread_mutex_lock(&c->mu);
	if (distance == 0) {
		/* a new layer step; a layer not after the last one starts the next token */
		const uint64_t token = !c->started ? 0 : c->seq / c->n_layers + (layer <= c->cur_layer);
		c->seq = token * c->n_layers + layer;
		c->cur_layer = layer;
		c->started = 1;
		for (size_t i = 0; i < n; i++) { /* what is here stays: protect it before evicting */
			const int64_t e = (int64_t)layer * c->n_experts + experts[i];
			if (c->where[e] >= 0)
				c->slots[c->where[e]].want = c->seq + 1;
		}
		for (size_t i = 0; i < n; i++) {
			const int64_t e = (int64_t)layer * c->n_experts + experts[i];
			classify(c, e);
			if (c->where[e] >= 0)
				continue;
			const int64_t v = victim(c, 1);
			if (v < 0)
				break; /* acquire waits for a slot */
			queue_read(c, v, e, PRIO_NOW + i);
			c->slots[v].want = c->seq + 1;
		}
		/* acquire order: ready ones first, then as queued */
		uint32_t *tmp = malloc(n * sizeof *tmp);
		if (tmp) {
			size_t k = 0;
			for (int pass = 0; pass < 2; pass++)
				for (size_t i = 0; i < n; i++) {
					const int32_t w = c->where[(int64_t)layer * c->n_experts + experts[i]];
					const int ready = w >= 0 && c->slots[w].state == SLOT_READY;
					if (ready == (pass == 0))
						tmp[k++] = experts[i];
				}
			memcpy(experts, tmp, n * sizeof *tmp);
			free(tmp);
		}
	} else {
		const uint64_t target = c->seq + distance;
		for (size_t i = 0; i < n; i++) {
			const int64_t e = (int64_t)layer * c->n_experts + experts[i];
			if (c->where[e] >= 0) {
				struct slot *s = &c->slots[c->where[e]];
				if (s->guess_seq < target)
					s->guess_seq = target;
				continue;
			}
			const int64_t v = victim(c, 0);
			if (v < 0)
				break; /* nothing left that no one wants: stop guessing */
			queue_read(c, v, e, PRIO_AHEAD + ((uint64_t)distance << 32) + i);
			c->slots[v].prefetched = 1;
			c->slots[v].guess_seq = target;
			c->st.prefetch_issued++;
		}
	}
	pthread_mutex_unlock(&c->mu);
}

static void views(const struct cache *c, const char *blob, struct moe_expert_weights *w)
{
	struct moe_wmat *m[3] = {&w->gate, &w->up, &w->down};
	for (int i = 0; i < 3; i++)
		*m[i] = moe_wmat_at(c->lay.type[i], c->lay.rows[i], c->lay.cols[i], blob + c->lay.offset[i]);
}

static int acquire(struct moe_experts *base, uint32_t layer, uint32_t expert, struct moe_expert_weights *out)
{
	struct cache *c = (struct cache *)base;
	if (layer >= c->n_layers || expert >= c->n_experts || !c->info[(size_t)layer * c->n_experts + expert].stored_size)
		return moe_fail(MOE_ENOTFOUND, "%s: no expert %u in layer %u", moe_pack_path(c->pack), expert, layer);
	const int64_t e = (int64_t)layer * c->n_experts + expert;
	pthread_mutex_lock(&c->mu);
	classify(c, e);
	double waited = 0;
	int rc = 0;
	for (;;) {
		const int32_t w = c->where[e];
		if (w >= 0 && c->slots[w].state == SLOT_READY) {
			struct slot *s = &c->slots[w];
			if (s->err) { /* report once, then the slot is free for another try */
				rc = moe_fail(s->err, "%s", s->msg);
				c->where[e] = -1;
				s->expert = -1, s->state = SLOT_FREE, s->err = 0;
				break;
			}
			s->pins++;
			s->last_use = ++c->clock;
			out->handle = s;
			views(c, s->mem, out);
			break;
		}
		if (c->stop) {
			rc = moe_fail(MOE_EIO, "%s", c->err_msg[0] ? c->err_msg : "expert cache stopped");
			break;
		}
		if (w < 0) {
			const int64_t v = victim(c, 1);
			if (v >= 0) {
				queue_read(c, v, e, PRIO_DEMAND);
				c->slots[v].want = c->seq + 1;
				continue;
			}
		} else if (c->slots[w].state == SLOT_QUEUED) {
			c->slots[w].prio = PRIO_DEMAND;
		}
		const double t0 = now_s();
		pthread_cond_wait(&c->ready, &c->mu);
		waited += now_s() - t0;
	}
	c->st.wait_seconds += waited;
	pthread_mutex_unlock(&c->mu);
	return rc;
}

static void release(struct moe_experts *base, struct moe_expert_weights *w)
{
	struct cache *c = (struct cache *)base;
	struct slot *s = w->handle;
	pthread_mutex_lock(&c->mu);
	s->pins--;
	s->want = 0; /* used by this layer step: evictable again */
	pthread_cond_broadcast(&c->ready); /* a demand may be waiting for a slot */
	pthread_mutex_unlock(&c->mu);
}

static void stats(struct moe_experts *base, struct moe_expert_stats *out)
{
	struct cache *c = (struct cache *)base;
	pthread_mutex_lock(&c->mu);
	*out = c->st;
	if (c->io_since)
		out->io_seconds += now_s() - c->io_since;
	out->slots = c->n_slots;
	out->slots_used = 0;
	for (size_t i = 0; i < c->n_slots; i++)
		out->slots_used += c->slots[i].state != SLOT_FREE;
	out->io_mode = moe_io_mode(c->io);
	pthread_mutex_unlock(&c->mu);
}

static void destroy(struct moe_experts *base)
{
	struct cache *c = (struct cache *)base;
	if (c->thread_started) {
		pthread_mutex_lock(&c->mu);
		c->stop = 1;
		pthread_cond_signal(&c->work);
		pthread_mutex_unlock(&c->mu);
		pthread_join(c->thread, NULL);
	}
	moe_io_free(c->io); /* waits for nothing: reads in flight complete into memory still mapped */
	if (c->arena)
		munmap(c->arena, c->arena_bytes);
	ZSTD_freeDCtx(c->zstd);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->work);
	pthread_cond_destroy(&c->ready);
	free(c->info);
	free(c->where);
	free(c->freq);
	free(c->classified);
	free(c->slots);
	free(c->pick_last);
	free(c->pick_freq);
	free(c->pick_idx);
	free(c);
}

int moe_experts_cache(const moe_pack *pack, const struct moe_cache_options *o, struct moe_experts **out)
{
	struct cache *c = calloc(1, sizeof *c);
	if (!c)
		return moe_fail(MOE_ENOMEM, "out of memory");
	c->base = (struct moe_experts){acquire, release, destroy, hint, stats};
	c->pack = pack;
	c->policy = o->policy;
	c->verify = o->verify;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->work, NULL);
	pthread_cond_init(&c->ready, NULL);
	moe_pack_expert_layout(pack, &c->lay);
	c->slot_bytes = moe_cache_slot_bytes(pack);
	c->staging_bytes = moe_cache_staging_bytes(pack);
	int rc = 0;
	const size_t n_records = moe_pack_expert_count(pack);
	for (size_t i = 0; i < n_records; i++) {
		moe_expert_info e;
		moe_pack_expert_at(pack, i, &e);
		if (e.layer + 1 > c->n_layers)
			c->n_layers = e.layer + 1;
		if (e.expert + 1 > c->n_experts)
			c->n_experts = e.expert + 1;
	}
	const size_t n_ids = (size_t)c->n_layers * c->n_experts;
	c->info = calloc(n_ids + 1, sizeof *c->info);
	c->where = malloc((n_ids + 1) * sizeof *c->where);
	c->freq = calloc(n_ids + 1, sizeof *c->freq);
	c->classified = calloc(n_ids + 1, sizeof *c->classified);
	c->age_every = n_ids ? n_ids : 1;
	if (o->bytes < moe_cache_min_bytes(pack)) {
		rc = moe_fail(MOE_EINVAL, "the expert cache needs at least %.1f MB (two experts%s), not %.1f MB",
			      moe_cache_min_bytes(pack) / 1e6, c->staging_bytes ? " and zstd staging" : "", o->bytes / 1e6);
		goto out;
	}
	c->n_slots = (size_t)((o->bytes - c->staging_bytes) / c->slot_bytes);
	if (c->n_slots > n_records)
		c->n_slots = n_records; /* room for every expert: no need for more */
	c->slots = calloc(c->n_slots, sizeof *c->slots);
	c->pick_last = malloc((c->n_slots + 1) * sizeof *c->pick_last);
	c->pick_freq = malloc((c->n_slots + 1) * sizeof *c->pick_freq);
	c->pick_idx = malloc((c->n_slots + 1) * sizeof *c->pick_idx);
	if (!c->pick_last || !c->pick_freq || !c->pick_idx || !c->info || !c->where || !c->freq || !c->classified || !c->slots) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i <= n_ids; i++)
		c->where[i] = -1;
	for (size_t i = 0; i < n_records; i++) {
		moe_expert_info e;
		moe_pack_expert_at(pack, i, &e);
		c->info[(size_t)e.layer * c->n_experts + e.expert] = e;
	}
	c->arena_bytes = c->n_slots * c->slot_bytes + c->staging_bytes;
	c->arena = mmap(NULL, c->arena_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (c->arena == MAP_FAILED) {
		c->arena = NULL;
		rc = moe_fail(MOE_ENOMEM, "expert cache: cannot map %.1f MB", c->arena_bytes / 1e6);
		goto out;
	}
	madvise(c->arena, c->arena_bytes, MADV_HUGEPAGE); /* fewer faults and TLB misses on 100 MB experts */
	if (o->mlock && mlock(c->arena, c->arena_bytes) != 0) {
		rc = moe_fail(MOE_ENOMEM, "--mlock: %s (%.1f MB; raise RLIMIT_MEMLOCK)", strerror(errno), c->arena_bytes / 1e6);
		goto out;
	}
	for (size_t i = 0; i < c->n_slots; i++) {
		c->slots[i].expert = -1;
		c->slots[i].staging = -1;
		c->slots[i].mem = c->arena + i * c->slot_bytes;
	}
	for (int k = 0; k < N_STAGING && c->staging_bytes; k++)
		c->staging[k] = c->arena + c->n_slots * c->slot_bytes + k * (c->staging_bytes / N_STAGING);
	c->io_depth_all = o->io_depth ? o->io_depth : 8;
	if ((rc = moe_io_create(moe_pack_path(pack), c->io_depth_all, c->arena, c->arena_bytes, &c->io)))
		goto out;
	if (!(c->zstd = ZSTD_createDCtx())) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto out;
	}
	if (pthread_create(&c->thread, NULL, io_thread, c) != 0) {
		rc = moe_fail(MOE_ENOMEM, "cannot start the I/O thread");
		goto out;
	}
	c->thread_started = 1;
out:
	if (rc) {
		destroy(&c->base);
		return rc;
	}
	*out = &c->base;
	return 0;
}
