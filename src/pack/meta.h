/* meta.h - building the typed key/value metadata section (moepack(5), "Metadata"). */
#ifndef MOE_PACK_META_H
#define MOE_PACK_META_H

#include <stddef.h>
#include <stdint.h>

/* Growable buffer of entries; errors are sticky and reported by meta_finish. */
struct moe_meta_writer {
	uint8_t *buf;
	size_t len, cap;
	uint32_t count;
	int err;
};

void meta_init(struct moe_meta_writer *w);
void meta_put_u64(struct moe_meta_writer *w, const char *key, uint64_t v);
void meta_put_i64(struct moe_meta_writer *w, const char *key, int64_t v);
void meta_put_f64(struct moe_meta_writer *w, const char *key, double v);
void meta_put_str(struct moe_meta_writer *w, const char *key, const char *s);
void meta_put_blob(struct moe_meta_writer *w, const char *key, const void *data, uint64_t len);
void meta_put_i64_array(struct moe_meta_writer *w, const char *key, const int64_t *v, uint64_t n);
/* The finished section bytes (owned by w until meta_free); 0 or the first error. */
int meta_finish(struct moe_meta_writer *w);
void meta_free(struct moe_meta_writer *w);

#endif
