/* strmap.h - string -> id, open addressing over XXH3 (the tokenizer's vocabulary
 * and added tokens, the GGUF reader's merges). Keys are not copied. */
#ifndef MOE_TEXT_STRMAP_H
#define MOE_TEXT_STRMAP_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

struct str_slot {
	uint64_t hash; /* 0: empty */
	const char *s;
	uint32_t len;
	int32_t id;
};

struct str_map {
	struct str_slot *slots;
	size_t cap;
};

static inline int str_map_init(struct str_map *m, size_t n)
{
	m->cap = 16;
	while (m->cap < n * 2)
		m->cap *= 2;
	m->slots = calloc(m->cap, sizeof *m->slots);
	return m->slots ? 0 : -1;
}

static inline void str_map_put(struct str_map *m, const char *s, uint32_t len, int32_t id)
{
	const uint64_t h = XXH3_64bits(s, len) | 1;
	for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1))
		if (!m->slots[i].hash) {
			m->slots[i] = (struct str_slot){h, s, len, id};
			return;
		} else if (m->slots[i].hash == h && m->slots[i].len == len && !memcmp(m->slots[i].s, s, len)) {
			return; /* the first definition wins */
		}
}

static inline int32_t str_map_get(const struct str_map *m, const char *s, size_t len)
{
	const uint64_t h = XXH3_64bits(s, len) | 1;
	for (size_t i = h & (m->cap - 1); m->slots[i].hash; i = (i + 1) & (m->cap - 1))
		if (m->slots[i].hash == h && m->slots[i].len == len && !memcmp(m->slots[i].s, s, len))
			return m->slots[i].id;
	return -1;
}

static inline void str_map_free(struct str_map *m) { free(m->slots); }

#endif
