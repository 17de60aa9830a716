/* cache.c - the expert cache (see cache.h for what it guarantees).
 *
 * Threads: the compute thread calls hint/acquire/release; one I/O thread owns the
 * read engine, issues reads chunk by chunk in priority order (demand first, then
 * the layer about to run, then guesses by distance and likelihood), checks each
 * blob's XXH3 and decodes zstd blobs chunk by chunk as they arrive, in between
 * issuing and reaping reads, so the disk keeps reading while a blob decodes. One
 * mutex guards the slot table; the I/O thread never holds it during I/O, hashing
 * or decoding. */
#include "config.h"

#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_d_stableOutBuffer: decode straight into the slot */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <xxhash.h>
#include <zstd.h>

#include "cache/cache.h"
#include "cache/sim.h"
#include "common/error.h"
#include "common/util.h"
#include "io/io.h"

#define CHUNK (4u << 20) /* bytes per read: big for the disk, small enough to reorder */
#define RING 4           /* chunks of a compressed blob read ahead of its decoder */
#define N_STREAMS 3      /* compressed blobs read at once; guesses leave one for demand */
#define STALL_SECONDS 30.0
/* How long acquire watches for its read before sleeping on the condition variable:
 * on this VM a sleeper resumes 100+ us after the broadcast, about as long as a small
 * expert's whole read. Watching up to 2 ms decoded the demo model 3-17 % faster with
 * half its experts cached; 250 us did nothing, most reads outlast it (bench/RESULTS.md). */
#define ACQUIRE_SPIN_SECONDS 2e-3
#define PRIO_DEMAND 0
#define PRIO_NOW (1ull << 40)
#define PRIO_AHEAD (1ull << 48) /* + distance << 32 + rank */

enum slot_state { SLOT_FREE, SLOT_QUEUED, SLOT_READING, SLOT_READY };
static const char *const state_name[] = {"free", "queued", "reading", "ready"};

struct slot {
	int64_t expert;      /* index into the cache's expert table; -1 when free */
	enum slot_state state;
	int pins;
	uint64_t last_use;   /* LRU clock at the last acquire */
	uint64_t want;       /* the layer step that needs it and has not used it yet, + 1; 0: none */
	uint64_t guess_seq;  /* the latest layer step a prefetch guessed it for */
	int prefetched;      /* brought in by a guess and not used since */
	int fixed;           /* holds an expert of the pin list for good */
	uint64_t prio;       /* while queued or reading */
	/* while reading: bytes issued and completed of read_len (the stored size rounded up) */
	uint64_t issued, done, read_len;
	int stream;          /* the decode stream of a compressed blob, or -1 */
	int err;             /* an error while reading, reported to the acquirer */
	int reread;          /* read again after a checksum mismatch */
	char msg[256];       /* what err says, naming the layer and expert */
	char *mem;
};

/* A compressed blob being read: its chunks land in a ring and are hashed and
 * decoded in order straight into the slot, so only ring_n chunks are staged. */
struct stream {
	int64_t slot;        /* -1 when free */
	char *ring;          /* [ring_n][zchunk] */
	uint32_t arrived;    /* ring entries read and not yet decoded */
	uint64_t decoded;    /* chunks decoded */
	ZSTD_DCtx *dctx;
	XXH3_state_t *xxh;   /* of the stored bytes, in order */
	ZSTD_outBuffer out;  /* the slot */
	int frame_done;
	char bad[160];       /* why decoding failed, if it did */
};

struct cache {
	struct moe_experts base;
	const moe_pack *pack;
	moe_expert_layout *lays; /* the pack's expert layouts; each expert's info names its own */
	uint32_t n_layers, n_experts;
	moe_expert_info *info; /* [layer * n_experts + expert]; offset 0 where a layer has none */
	int32_t *where;        /* slot of each expert, -1 if none */
	uint32_t *freq;        /* LFU counts per expert, aged */
	uint64_t accesses, age_every;
	struct slot *slots;
	size_t n_slots;
	struct moe_policy_cand *pick; /* victim()'s candidates, sized once: [n_slots] */
	int64_t *pick_idx;
	struct moe_policy_use *use; /* per expert: how likely a visit of its layer uses it */
	uint8_t *in_step;      /* per expert of a layer: in the step being hinted, [n_experts] */
	uint64_t slot_bytes, chunk, zchunk;
	unsigned ring_n;
	char *arena;
	size_t arena_bytes;
	struct stream streams[N_STREAMS];
	int n_streams;         /* 0 for a raw pack */
	struct moe_io *io;
	unsigned io_depth_all, in_flight;
	int policy, verify;
	double stall_seconds;
	uint64_t *classified;  /* per expert: the layer step its use was last counted for, + 1 */
	/* layer steps: seq = token * n_layers + layer, advanced by distance-0 hints */
	uint64_t seq, clock;
	uint32_t cur_layer;
	int started;
	/* the I/O thread */
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t work, ready; /* ready: on CLOCK_MONOTONIC, for the stall bound */
	_Atomic uint64_t ready_events; /* bumped with each broadcast of ready, for spinning waiters */
	int stop, thread_started;
	char err_msg[256]; /* why the I/O thread stopped, if it did */
	struct moe_expert_stats st;
	double io_since; /* start of the current busy period; 0 when idle */
};

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

uint64_t moe_cache_slot_bytes(const moe_pack *pack)
{
	return moe_align_up(moe_pack_expert_max_raw(pack), MOE_IO_ALIGN);
}

/* The decode streams' geometry for reads of `chunk` bytes: chunks as large as the
 * largest compressed blob needs, as many per ring as it has (up to RING). */
static uint64_t staging_geometry(const moe_pack *pack, uint64_t chunk, uint64_t *zchunk, unsigned *ring_n)
{
	uint64_t most = 0;
	for (size_t i = 0; i < moe_pack_expert_count(pack); i++) {
		moe_expert_info e;
		if (moe_pack_expert_at(pack, i, &e) == 0 && e.codec != MOE_CODEC_RAW && e.stored_size > most)
			most = e.stored_size;
	}
	most = moe_align_up(most, MOE_IO_ALIGN);
	*zchunk = min_u64(chunk, most);
	*ring_n = most ? (unsigned)min_u64(RING, (most + *zchunk - 1) / *zchunk) : 0;
	return most ? N_STREAMS * *ring_n * *zchunk : 0;
}

static uint64_t chunk_of(uint64_t chunk_bytes) { return chunk_bytes ? moe_align_up(chunk_bytes, MOE_IO_ALIGN) : CHUNK; }

uint64_t moe_cache_staging_bytes(const moe_pack *pack, uint64_t chunk_bytes)
{
	uint64_t zchunk;
	unsigned ring_n;
	return staging_geometry(pack, chunk_of(chunk_bytes), &zchunk, &ring_n);
}

uint64_t moe_cache_min_bytes(const moe_pack *pack)
{
	return 2 * moe_cache_slot_bytes(pack) + moe_cache_staging_bytes(pack, 0);
}

int moe_cache_policy_parse(const char *name)
{
	return !strcmp(name, "lru") ? MOE_POLICY_LRU : !strcmp(name, "lfu") ? MOE_POLICY_LFU
	       : !strcmp(name, "next") ? MOE_POLICY_NEXT : -1;
}

const char *moe_cache_policy_name(int policy)
{
	return policy == MOE_POLICY_LFU ? "lfu" : policy == MOE_POLICY_NEXT ? "next" : "lru";
}

size_t moe_policy_pick(int policy, const struct moe_policy_cand *c, size_t n)
{
	size_t best = 0;
	for (size_t i = 1; i < n; i++) {
		const struct moe_policy_cand *a = &c[i], *b = &c[best];
		int better;
		if (policy == MOE_POLICY_LFU)
			better = a->freq < b->freq || (a->freq == b->freq && a->last_use < b->last_use);
		else if (policy == MOE_POLICY_NEXT)
			better = a->next_use > b->next_use || (a->next_use == b->next_use && a->last_use < b->last_use);
		else
			better = a->last_use < b->last_use;
		if (better)
			best = i;
	}
	return best;
}

double moe_policy_next_use(uint32_t layer, uint32_t now, uint32_t n_layers, float p)
{
	const uint32_t d = layer > now ? layer - now : layer + n_layers - now;
	const double q = p > 1e-3f ? p : 1e-3; /* never seen: unlikely, not impossible */
	return d + n_layers * (1 - q) / q;
}

void moe_policy_visit(struct moe_policy_use *u, int used)
{
	u->slow += 0.05f * ((float)used - u->slow); /* about the last 20 visits */
	u->fast += 0.7f * ((float)used - u->fast);  /* mostly the last one or two */
}

float moe_policy_p(const struct moe_policy_use *u) { return u->slow > u->fast ? u->slow : u->fast; }

/* ---- slots (mutex held) ---- */

/* The slot to reuse: free first; else a ready, unpinned one that the layer being
 * computed does not still need and no guess covers; for a demand (or the layer
 * about to run), failing that, one only guessed for later, the farthest first.
 * -1 if none. */
static int evictable(const struct cache *c, const struct slot *s)
{
	return s->state == SLOT_READY && !s->pins && !s->fixed && s->want != c->seq + 1;
}

static double slot_next_use(const struct cache *c, const struct slot *s)
{
	const uint32_t l = (uint32_t)(s->expert / c->n_experts);
	return moe_policy_next_use(l, c->cur_layer, c->n_layers, moe_policy_p(&c->use[s->expert]));
}

static int64_t victim(struct cache *c, int demand)
{
	int64_t *ix = c->pick_idx, found = -1;
	size_t n = 0;
	for (size_t i = 0; i < c->n_slots && found < 0; i++)
		if (c->slots[i].state == SLOT_FREE)
			found = (int64_t)i;
	for (size_t i = 0; i < c->n_slots && found < 0; i++) {
		const struct slot *s = &c->slots[i];
		if (evictable(c, s) && s->guess_seq <= c->seq) {
			c->pick[n] = (struct moe_policy_cand){s->last_use, c->freq[s->expert],
							      c->policy == MOE_POLICY_NEXT ? slot_next_use(c, s) : 0};
			ix[n++] = (int64_t)i;
		}
	}
	if (found < 0 && n)
		found = ix[moe_policy_pick(c->policy, c->pick, n)];
	for (size_t i = 0; i < c->n_slots && found < 0 && demand; i++) {
		const struct slot *s = &c->slots[i];
		if (evictable(c, s) && s->guess_seq > c->seq && (found < 0 || s->guess_seq > c->slots[found].guess_seq))
			found = (int64_t)i;
	}
	return found;
}

/* Is any read queued or under way? (Then some slot will become ready.) */
static int reads_pending(const struct cache *c)
{
	for (size_t i = 0; i < c->n_slots; i++)
		if (c->slots[i].state == SLOT_QUEUED || c->slots[i].state == SLOT_READING)
			return 1;
	return 0;
}

/* The last resort of a demand when nothing is pending (cache.h, liveness 3): any
 * ready, unpinned slot, the least recently used. -1 if every slot is pinned. */
static int64_t any_unpinned(const struct cache *c)
{
	int64_t found = -1;
	for (size_t i = 0; i < c->n_slots; i++) {
		const struct slot *s = &c->slots[i];
		if (s->state == SLOT_READY && !s->pins && !s->fixed && (found < 0 || s->last_use < c->slots[found].last_use))
			found = (int64_t)i;
	}
	return found;
}

static void queue_read(struct cache *c, int64_t slot, int64_t expert, uint64_t prio)
{
	struct slot *s = &c->slots[slot];
	if (s->expert >= 0 && s->prefetched) { /* a guess leaves unused: its read was wasted */
		c->st.prefetch_unused_bytes += s->read_len;
		if (s->guess_seq > c->seq) /* and its step has not come: the guess may have been right */
			c->st.prefetch_evicted_bytes += s->read_len;
	}
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
	s->stream = -1;
	pthread_cond_signal(&c->work);
}

static void count_use(struct cache *c, int64_t e)
{
	c->freq[e]++;
	if (++c->accesses % c->age_every == 0) /* aging: old popularity fades */
		for (size_t i = 0; i < (size_t)c->n_layers * c->n_experts; i++)
			c->freq[i] /= 2;
}

/* ---- the I/O thread (mutex held unless said) ---- */

static int free_streams(const struct cache *c)
{
	int n = 0;
	for (int k = 0; k < c->n_streams; k++)
		n += c->streams[k].slot < 0;
	return n;
}

/* Can this slot's next read be issued now? (cache.h, liveness 2) */
static int runnable(const struct cache *c, const struct slot *s)
{
	if (s->state == SLOT_READING)
		return s->issued < s->read_len &&
		       (s->stream < 0 || s->issued / c->zchunk < c->streams[s->stream].decoded + c->ring_n);
	if (s->state != SLOT_QUEUED)
		return 0;
	return c->info[s->expert].codec == MOE_CODEC_RAW || free_streams(c) > (s->prio >= PRIO_AHEAD);
}

static int64_t next_job(const struct cache *c)
{
	int64_t best = -1;
	for (size_t i = 0; i < c->n_slots; i++) {
		const struct slot *s = &c->slots[i];
		if (runnable(c, s) && (best < 0 || s->prio < c->slots[best].prio))
			best = (int64_t)i;
	}
	return best;
}

static void start_blob(struct cache *c, int64_t j)
{
	struct slot *s = &c->slots[j];
	const moe_expert_info *e = &c->info[s->expert];
	s->state = SLOT_READING;
	s->read_len = moe_align_up(e->stored_size, MOE_IO_ALIGN);
	s->issued = s->done = 0;
	if (e->codec == MOE_CODEC_RAW)
		return;
	int k = 0;
	while (c->streams[k].slot >= 0)
		k++; /* runnable() saw a free one */
	struct stream *z = &c->streams[k];
	z->slot = j;
	z->arrived = 0;
	z->decoded = 0;
	z->frame_done = 0;
	z->bad[0] = 0;
	z->out = (ZSTD_outBuffer){s->mem, e->raw_size, 0};
	ZSTD_DCtx_reset(z->dctx, ZSTD_reset_session_only);
	XXH3_64bits_reset(z->xxh);
	s->stream = k;
}

/* Queue every read that can go now; non-zero if the engine refused one. */
static int issue(struct cache *c)
{
	int64_t j;
	while (moe_io_free_slots(c->io) > 0 && (j = next_job(c)) >= 0) {
		struct slot *s = &c->slots[j];
		if (s->state == SLOT_QUEUED)
			start_blob(c, j);
		const moe_expert_info *e = &c->info[s->expert];
		const uint64_t chunk = s->stream >= 0 ? c->zchunk : c->chunk, k = s->issued / chunk;
		char *dst = s->stream >= 0 ? c->streams[s->stream].ring + (k % c->ring_n) * chunk : s->mem + s->issued;
		const uint64_t len = min_u64(chunk, s->read_len - s->issued);
		if (moe_io_read(c->io, dst, e->offset + s->issued, len, (uint64_t)j << 32 | k))
			return -1;
		s->issued += len;
		c->in_flight++;
		if (!c->io_since)
			c->io_since = moe_now();
	}
	return 0;
}

/* a slot became ready or was released: wake whoever waits (mutex held, so a waiter's
 * snapshot of ready_events taken under it misses nothing) */
static void wake_waiters(struct cache *c)
{
	atomic_fetch_add_explicit(&c->ready_events, 1, memory_order_release);
	pthread_cond_broadcast(&c->ready);
}

/* A blob is in and checked (rc: 0 or why not): publish it, or read it once more
 * after a checksum mismatch before calling the pack corrupt. */
static void blob_checked(struct cache *c, struct slot *s, int rc)
{
	if (rc == MOE_ECHECKSUM && !s->reread) {
		s->reread = 1;
		s->state = SLOT_QUEUED;
		s->issued = s->done = 0;
		c->st.rereads++;
		return;
	}
	if (rc) {
		s->err = rc;
		snprintf(s->msg, sizeof s->msg, "%s%s", moe_last_error(), rc == MOE_ECHECKSUM ? " (read twice)" : "");
	}
	s->state = SLOT_READY;
	wake_waiters(c);
}

/* a raw blob's last chunk is in: its checksum, without the lock */
static void raw_done(struct cache *c, struct slot *s)
{
	const moe_expert_info *e = &c->info[s->expert];
	int rc = 0;
	if (!s->err && c->verify) {
		pthread_mutex_unlock(&c->mu);
		const int bad = XXH3_64bits(s->mem, e->stored_size) != e->xxh3_stored;
		pthread_mutex_lock(&c->mu);
		if (bad)
			rc = moe_fail(MOE_ECHECKSUM, "%s: layer %u expert %u: checksum mismatch in the bytes read",
				      moe_pack_path(c->pack), e->layer, e->expert);
	}
	blob_checked(c, s, rc);
}

/* a compressed blob's last chunk is decoded: both checksums, the size; its stream is free */
static void zstd_done(struct cache *c, struct slot *s)
{
	struct stream *z = &c->streams[s->stream];
	const moe_expert_info *e = &c->info[s->expert];
	const char *path = moe_pack_path(c->pack);
	int rc = 0;
	z->slot = -1;
	s->stream = -1;
	if (s->err) {
		/* an I/O error, already described */
	} else if (c->verify && XXH3_64bits_digest(z->xxh) != e->xxh3_stored) {
		rc = moe_fail(MOE_ECHECKSUM, "%s: layer %u expert %u: checksum mismatch in the bytes read", path, e->layer,
			      e->expert);
	} else if (z->bad[0]) {
		rc = moe_fail(MOE_EFORMAT, "%s: layer %u expert %u: %s", path, e->layer, e->expert, z->bad);
	} else if (!z->frame_done || z->out.pos != e->raw_size) {
		rc = moe_fail(MOE_EFORMAT, "%s: layer %u expert %u: zstd: wrong decoded size", path, e->layer, e->expert);
	} else if (c->verify) {
		pthread_mutex_unlock(&c->mu);
		const int bad = XXH3_64bits(s->mem, e->raw_size) != e->xxh3_raw;
		pthread_mutex_lock(&c->mu);
		if (bad)
			rc = moe_fail(MOE_ECHECKSUM, "%s: layer %u expert %u: checksum mismatch after decoding", path,
				      e->layer, e->expert);
	}
	blob_checked(c, s, rc);
}

/* one read came back */
static void completed(struct cache *c, uint64_t tag, int64_t res)
{
	struct slot *s = &c->slots[tag >> 32];
	const uint64_t k = tag & 0xffffffffu, chunk = s->stream >= 0 ? c->zchunk : c->chunk;
	const uint64_t off = k * chunk, want = min_u64(chunk, s->read_len - off);
	const moe_expert_info *e = &c->info[s->expert];
	c->in_flight--;
	/* the last chunk may run into the end of the file: short is fine past the blob */
	if ((res < 0 || ((uint64_t)res < want && off + (uint64_t)res < e->stored_size)) && !s->err) {
		s->err = MOE_EIO;
		if (res < 0)
			snprintf(s->msg, sizeof s->msg, "%s: layer %u expert %u: read: %s", moe_pack_path(c->pack), e->layer,
				 e->expert, strerror((int)-res));
		else
			snprintf(s->msg, sizeof s->msg, "%s: layer %u expert %u: short read: %lld of %llu bytes at offset %llu",
				 moe_pack_path(c->pack), e->layer, e->expert, (long long)res, (unsigned long long)want,
				 (unsigned long long)(e->offset + off));
	}
	c->st.bytes_read += res > 0 ? (uint64_t)res : 0;
	s->done += want;
	if (s->stream >= 0)
		c->streams[s->stream].arrived |= 1u << (k % c->ring_n);
	else if (s->done == s->read_len)
		raw_done(c, s);
}

/* a stream whose next chunk has arrived, or NULL */
static struct stream *decodable(struct cache *c)
{
	for (int k = 0; k < c->n_streams; k++) {
		struct stream *z = &c->streams[k];
		if (z->slot >= 0 && z->arrived & 1u << (z->decoded % c->ring_n))
			return z;
	}
	return NULL;
}

/* Hash and decode a stream's next chunk, without the lock: the slot is READING,
 * so nothing else touches it or the stream. After an error the rest is only
 * hashed, so that a damaged read is told from a damaged pack. */
static void decode_chunk(struct cache *c, struct stream *z)
{
	const struct slot *s = &c->slots[z->slot];
	const moe_expert_info *e = &c->info[s->expert];
	const uint64_t off = z->decoded * c->zchunk;
	const size_t len = (size_t)min_u64(c->zchunk, e->stored_size - off);
	const char *src = z->ring + (z->decoded % c->ring_n) * c->zchunk;
	if (s->err)
		return;
	if (c->verify)
		XXH3_64bits_update(z->xxh, src, len);
	ZSTD_inBuffer in = {src, len, 0};
	while (!z->bad[0] && in.pos < in.size) {
		if (z->frame_done) {
			snprintf(z->bad, sizeof z->bad, "zstd: bytes after the frame");
			break;
		}
		const size_t in0 = in.pos, out0 = z->out.pos;
		const size_t r = ZSTD_decompressStream(z->dctx, &z->out, &in);
		if (ZSTD_isError(r))
			snprintf(z->bad, sizeof z->bad, "zstd: %s", ZSTD_getErrorName(r));
		else if (r == 0)
			z->frame_done = 1;
		else if (in.pos == in0 && z->out.pos == out0)
			snprintf(z->bad, sizeof z->bad, "zstd: decodes to more than %llu bytes",
				 (unsigned long long)e->raw_size);
	}
}

static void chunk_decoded(struct cache *c, struct stream *z)
{
	struct slot *s = &c->slots[z->slot];
	z->arrived &= ~(1u << (z->decoded % c->ring_n));
	z->decoded++;
	if (z->decoded * c->zchunk >= s->read_len)
		zstd_done(c, s);
}

/* the engine itself failed: every read queued or under way ends in its error */
static void fail_all(struct cache *c)
{
	snprintf(c->err_msg, sizeof c->err_msg, "%s", moe_last_error());
	for (size_t i = 0; i < c->n_slots; i++) {
		struct slot *s = &c->slots[i];
		if (s->state == SLOT_READING || s->state == SLOT_QUEUED) {
			s->err = MOE_EIO;
			snprintf(s->msg, sizeof s->msg, "%.200s", c->err_msg);
			s->state = SLOT_READY;
			s->stream = -1;
		}
	}
	for (int k = 0; k < c->n_streams; k++)
		c->streams[k].slot = -1;
	c->stop = 1;
	wake_waiters(c);
}

static void *io_thread(void *arg)
{
	struct cache *c = arg;
	pthread_mutex_lock(&c->mu);
	while (!c->stop) {
		int rc = issue(c);
		struct stream *z = rc ? NULL : decodable(c);
		if (!rc && !z && !c->in_flight) {
			if (c->io_since) {
				c->st.io_seconds += moe_now() - c->io_since;
				c->io_since = 0;
			}
			pthread_cond_wait(&c->work, &c->mu);
			continue;
		}
		pthread_mutex_unlock(&c->mu);
		rc = rc ? rc : moe_io_submit(c->io);
		if (z)
			decode_chunk(c, z); /* the reads just submitted go on meanwhile */
		uint64_t tag;
		int64_t res;
		int got = rc ? -1 : moe_io_complete(c->io, !z, &tag, &res);
		pthread_mutex_lock(&c->mu);
		if (z)
			chunk_decoded(c, z);
		for (; got == 0; got = moe_io_complete(c->io, 0, &tag, &res))
			completed(c, tag, res);
		if (got < 0)
			fail_all(c);
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

static void hint(struct moe_experts *base, uint32_t layer, uint32_t *experts, size_t n, unsigned distance,
		 const float *prob)
{
	struct cache *c = (struct cache *)base;
	pthread_mutex_lock(&c->mu);
	if (distance == 0) {
		/* a new layer step; a layer not after the last one starts the next token */
		const uint64_t token = !c->started ? 0 : c->seq / c->n_layers + (layer <= c->cur_layer);
		c->seq = token * c->n_layers + layer;
		c->cur_layer = layer;
		c->started = 1;
		if (c->policy == MOE_POLICY_NEXT) { /* what each expert of the layer did at this visit */
			for (size_t i = 0; i < n; i++)
				c->in_step[experts[i]] = 1;
			for (uint32_t e = 0; e < c->n_experts; e++) {
				moe_policy_visit(&c->use[(size_t)layer * c->n_experts + e], c->in_step[e]);
				c->in_step[e] = 0;
			}
		}
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
		/* acquire order: ready ones, then those on their way, then the rest, so
		 * every slot this step protects is used (and freed) before anything waits
		 * for a slot */
		uint32_t *tmp = malloc(n * sizeof *tmp);
		if (tmp) {
			size_t k = 0;
			for (int pass = 0; pass < 3; pass++)
				for (size_t i = 0; i < n; i++) {
					const int32_t w = c->where[(int64_t)layer * c->n_experts + experts[i]];
					const int kind = w < 0 ? 2 : c->slots[w].state == SLOT_READY ? 0 : 1;
					if (kind == pass)
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
			if (c->policy == MOE_POLICY_NEXT && c->slots[v].state != SLOT_FREE) {
				/* a guess takes a slot only from an expert expected to be needed
				 * later than itself: its router probability, or its own record
				 * (the last token's choices come with none), times the share of
				 * guesses that have come true so far */
				float p = moe_policy_p(&c->use[e]);
				if (prob && prob[experts[i]] > p)
					p = prob[experts[i]];
				p *= (float)(c->st.prefetch_hits + 1) / (float)(c->st.prefetch_issued + 2);
				if (slot_next_use(c, &c->slots[v]) <= moe_policy_next_use(layer, c->cur_layer, c->n_layers, p))
					continue;
			}
			queue_read(c, v, e, PRIO_AHEAD + ((uint64_t)distance << 32) + i);
			c->slots[v].prefetched = 1;
			c->slots[v].guess_seq = target;
			c->st.prefetch_issued++;
		}
	}
	pthread_mutex_unlock(&c->mu);
}

static void views(const struct cache *c, const char *blob, int layout, struct moe_expert_weights *w)
{
	const moe_expert_layout *l = &c->lays[layout];
	struct moe_wmat *m[3] = {&w->gate, &w->up, &w->down};
	for (int i = 0; i < 3; i++)
		*m[i] = moe_wmat_at(l->type[i], l->rows[i], l->cols[i], blob + l->offset[i]);
}

/* the stall bound's error: what the expert and every slot are doing */
static int stalled(const struct cache *c, uint32_t layer, uint32_t expert, double waited)
{
	size_t count[4] = {0}, pinned = 0;
	for (size_t i = 0; i < c->n_slots; i++) {
		count[c->slots[i].state]++;
		pinned += c->slots[i].pins > 0;
	}
	const int32_t w = c->where[(int64_t)layer * c->n_experts + expert];
	char mine[96] = "no slot yet";
	if (w >= 0)
		snprintf(mine, sizeof mine, "slot %d %s, %llu of %llu bytes read", w, state_name[c->slots[w].state],
			 (unsigned long long)c->slots[w].done, (unsigned long long)c->slots[w].read_len);
	return moe_fail(MOE_EIO,
			"%s: layer %u expert %u: not ready after %.0f s (%s; slots: %zu free, %zu queued, %zu reading, "
			"%zu ready, %zu pinned; %u reads in flight)",
			moe_pack_path(c->pack), layer, expert, waited, mine, count[SLOT_FREE], count[SLOT_QUEUED],
			count[SLOT_READING], count[SLOT_READY], pinned, c->in_flight);
}

static int acquire(struct moe_experts *base, uint32_t layer, uint32_t expert, struct moe_expert_weights *out)
{
	struct cache *c = (struct cache *)base;
	if (layer >= c->n_layers || expert >= c->n_experts || !c->info[(size_t)layer * c->n_experts + expert].stored_size)
		return moe_fail(MOE_ENOTFOUND, "%s: no expert %u in layer %u", moe_pack_path(c->pack), expert, layer);
	const int64_t e = (int64_t)layer * c->n_experts + expert;
	pthread_mutex_lock(&c->mu);
	classify(c, e);
	const double start = moe_now();
	int rc = 0, waited = 0;
	for (;;) {
		const int32_t w = c->where[e];
		if (w >= 0 && c->slots[w].state == SLOT_READY) {
			struct slot *s = &c->slots[w];
			if (s->err) { /* report once, then the slot is free for another try */
				rc = moe_fail(s->err, "%s", s->msg);
				c->where[e] = -1;
				s->expert = -1, s->state = SLOT_FREE, s->err = 0, s->fixed = 0;
				break;
			}
			s->pins++;
			s->last_use = ++c->clock;
			out->handle = s;
			views(c, s->mem, c->info[e].layout, out);
			break;
		}
		if (c->stop) {
			rc = moe_fail(MOE_EIO, "%s", c->err_msg[0] ? c->err_msg : "expert cache stopped");
			break;
		}
		if (w < 0) {
			int64_t v = victim(c, 1);
			if (v < 0 && !reads_pending(c)) {
				if ((v = any_unpinned(c)) < 0) {
					rc = moe_fail(MOE_EINVAL, "%s: layer %u expert %u: all %zu expert cache slots are pinned",
						      moe_pack_path(c->pack), layer, expert, c->n_slots);
					break;
				}
			}
			if (v >= 0) {
				queue_read(c, v, e, PRIO_DEMAND);
				c->slots[v].want = c->seq + 1;
				continue;
			}
		} else if (c->slots[w].state == SLOT_QUEUED && c->slots[w].prio != PRIO_DEMAND) {
			c->slots[w].prio = PRIO_DEMAND; /* a guess is now a demand: it may take the last stream */
			pthread_cond_signal(&c->work);
		}
		const double deadline = start + c->stall_seconds;
		if (moe_now() >= deadline) {
			rc = stalled(c, layer, expert, moe_now() - start);
			break;
		}
		waited = 1;
		if (moe_now() < start + ACQUIRE_SPIN_SECONDS) { /* watch, then sleep */
			const uint64_t seen = atomic_load_explicit(&c->ready_events, memory_order_relaxed);
			pthread_mutex_unlock(&c->mu);
			while (atomic_load_explicit(&c->ready_events, memory_order_acquire) == seen &&
			       moe_now() < start + ACQUIRE_SPIN_SECONDS)
				moe_cpu_relax();
			pthread_mutex_lock(&c->mu);
			continue;
		}
		struct timespec ts = {(time_t)deadline, (long)((deadline - (double)(time_t)deadline) * 1e9)};
		pthread_cond_timedwait(&c->ready, &c->mu, &ts);
	}
	if (waited)
		c->st.wait_seconds += moe_now() - start;
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
	wake_waiters(c); /* a demand may be waiting for a slot */
	pthread_mutex_unlock(&c->mu);
}

static void stats(struct moe_experts *base, struct moe_expert_stats *out)
{
	struct cache *c = (struct cache *)base;
	pthread_mutex_lock(&c->mu);
	*out = c->st;
	if (c->io_since)
		out->io_seconds += moe_now() - c->io_since;
	out->slots = c->n_slots;
	out->slots_used = out->slots_pinned = 0;
	for (size_t i = 0; i < c->n_slots; i++) {
		out->slots_used += c->slots[i].state != SLOT_FREE;
		out->slots_pinned += c->slots[i].fixed;
	}
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
	for (int k = 0; k < N_STREAMS; k++) {
		ZSTD_freeDCtx(c->streams[k].dctx);
		XXH3_freeState(c->streams[k].xxh);
	}
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->work);
	pthread_cond_destroy(&c->ready);
	free(c->info);
	free(c->lays);
	free(c->where);
	free(c->freq);
	free(c->classified);
	free(c->slots);
	free(c->pick);
	free(c->pick_idx);
	free(c->use);
	free(c->in_step);
	free(c);
}

/* Every record must fit a slot and the file: the arena is sized from the layout,
 * and a blob that claims more would be read or decoded past its slot. */
static int check_records(const struct cache *c, size_t n_records)
{
	const uint64_t file = moe_pack_file_size(c->pack);
	for (size_t i = 0; i < n_records; i++) {
		moe_expert_info e;
		moe_pack_expert_at(c->pack, i, &e);
		const int fits = e.raw_size <= c->slot_bytes && e.stored_size && e.offset % MOE_IO_ALIGN == 0 &&
				 e.offset <= file && e.stored_size <= file - e.offset &&
				 (e.codec == MOE_CODEC_RAW ? e.stored_size == e.raw_size : e.codec == MOE_CODEC_ZSTD);
		if (!fits)
			return moe_fail(MOE_EFORMAT,
					"%s: layer %u expert %u: record does not fit the pack (%llu bytes stored, %llu raw, "
					"offset %llu; slots are %llu bytes)",
					moe_pack_path(c->pack), e.layer, e.expert, (unsigned long long)e.stored_size,
					(unsigned long long)e.raw_size, (unsigned long long)e.offset,
					(unsigned long long)c->slot_bytes);
	}
	return 0;
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
	c->stall_seconds = o->stall_seconds > 0 ? o->stall_seconds : STALL_SECONDS;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->work, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->ready, &ca);
	pthread_condattr_destroy(&ca);
	const size_t n_lays = moe_pack_expert_layouts(pack);
	c->lays = calloc(n_lays, sizeof *c->lays);
	if (!c->lays) {
		destroy(&c->base);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < n_lays; i++)
		moe_pack_expert_layout_at(pack, i, &c->lays[i]);
	c->slot_bytes = moe_cache_slot_bytes(pack);
	c->chunk = chunk_of(o->chunk_bytes);
	const uint64_t staging = staging_geometry(pack, c->chunk, &c->zchunk, &c->ring_n);
	c->n_streams = staging ? N_STREAMS : 0;
	for (int k = 0; k < N_STREAMS; k++)
		c->streams[k].slot = -1;
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
	if ((rc = check_records(c, n_records)))
		goto out;
	if (o->bytes < 2 * c->slot_bytes + staging) {
		rc = moe_fail(MOE_EINVAL, "the expert cache needs at least %.1f MB (two experts%s), not %.1f MB",
			      (2 * c->slot_bytes + staging) / 1e6, staging ? " and zstd staging" : "", o->bytes / 1e6);
		goto out;
	}
	c->n_slots = (size_t)((o->bytes - staging) / c->slot_bytes);
	if (c->n_slots > n_records)
		c->n_slots = n_records; /* room for every expert: no need for more */
	c->slots = calloc(c->n_slots, sizeof *c->slots);
	c->pick = malloc((c->n_slots + 1) * sizeof *c->pick);
	c->pick_idx = malloc((c->n_slots + 1) * sizeof *c->pick_idx);
	c->use = calloc(n_ids + 1, sizeof *c->use);
	c->in_step = calloc(c->n_experts + 1, 1);
	if (!c->pick || !c->pick_idx || !c->use || !c->in_step || !c->info || !c->where || !c->freq || !c->classified || !c->slots) {
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
	c->arena_bytes = c->n_slots * c->slot_bytes + staging;
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
		c->slots[i].stream = -1;
		c->slots[i].mem = c->arena + i * c->slot_bytes;
	}
	for (int k = 0; k < c->n_streams; k++) {
		struct stream *z = &c->streams[k];
		z->ring = c->arena + c->n_slots * c->slot_bytes + (uint64_t)k * c->ring_n * c->zchunk;
		z->dctx = ZSTD_createDCtx();
		z->xxh = XXH3_createState();
		if (!z->dctx || !z->xxh) {
			rc = moe_fail(MOE_ENOMEM, "out of memory");
			goto out;
		}
		/* no window buffer of its own: matches are read back from the slot */
		ZSTD_DCtx_setParameter(z->dctx, ZSTD_d_stableOutBuffer, 1);
		ZSTD_DCtx_setParameter(z->dctx, ZSTD_d_windowLogMax, ZSTD_WINDOWLOG_MAX);
	}
	c->io_depth_all = o->io_depth ? o->io_depth : 8;
	if ((rc = moe_io_create(moe_pack_path(pack), c->io_depth_all, c->arena, c->arena_bytes, &c->io)))
		goto out;
	if (pthread_create(&c->thread, NULL, io_thread, c) != 0) {
		rc = moe_fail(MOE_ENOMEM, "cannot start the I/O thread");
		goto out;
	}
	c->thread_started = 1;
	/* the pin list's experts, read first (after demands) into slots never evicted */
	pthread_mutex_lock(&c->mu);
	for (size_t k = 0, slot = 0; k < o->n_pin && slot < moe_pins_kept(o->n_pin, c->n_slots); k++) {
		const uint32_t id = o->pin[k];
		if (id >= n_ids || !c->info[id].stored_size || c->where[id] >= 0)
			continue;
		queue_read(c, (int64_t)slot, id, PRIO_AHEAD + k);
		c->slots[slot++].fixed = 1;
	}
	pthread_mutex_unlock(&c->mu);
out:
	if (rc) {
		destroy(&c->base);
		return rc;
	}
	*out = &c->base;
	return 0;
}
