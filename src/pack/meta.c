/* meta.c - metadata section encoder. Layout: u32 count, u32 0, then entries
 * { u16 key_len, u8 type, u8 0, key bytes, value } with values:
 * U64/I64/F64 8 bytes; STR/BLOB u64 length + bytes; I64_ARRAY u64 n + n*8. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "meta.h"
#include "moe.h"

void meta_init(struct moe_meta_writer *w)
{
	memset(w, 0, sizeof *w);
	w->len = 8; /* count + reserved, filled by meta_finish */
	w->cap = 4096;
	w->buf = calloc(1, w->cap);
	if (!w->buf)
		w->err = moe_fail(MOE_ENOMEM, "metadata: out of memory");
}

static void put_bytes(struct moe_meta_writer *w, const void *p, size_t n)
{
	if (w->err)
		return;
	if (w->len + n > w->cap) {
		size_t cap = w->cap;
		while (w->len + n > cap)
			cap *= 2;
		uint8_t *nb = realloc(w->buf, cap);
		if (!nb) {
			w->err = moe_fail(MOE_ENOMEM, "metadata: out of memory (%zu bytes)", cap);
			return;
		}
		w->buf = nb;
		w->cap = cap;
	}
	memcpy(w->buf + w->len, p, n);
	w->len += n;
}

static void put_key(struct moe_meta_writer *w, const char *key, uint8_t type)
{
	size_t klen = strlen(key);
	if (klen == 0 || klen > 0xffff) {
		w->err = moe_fail(MOE_EINVAL, "metadata: bad key length %zu", klen);
		return;
	}
	uint16_t k16 = (uint16_t)klen;
	uint8_t hdr[4] = {(uint8_t)(k16 & 0xff), (uint8_t)(k16 >> 8), type, 0};
	put_bytes(w, hdr, 4);
	put_bytes(w, key, klen);
	w->count++;
}

void meta_put_u64(struct moe_meta_writer *w, const char *key, uint64_t v)
{
	put_key(w, key, MOE_META_U64);
	put_bytes(w, &v, 8);
}

void meta_put_i64(struct moe_meta_writer *w, const char *key, int64_t v)
{
	put_key(w, key, MOE_META_I64);
	put_bytes(w, &v, 8);
}

void meta_put_f64(struct moe_meta_writer *w, const char *key, double v)
{
	put_key(w, key, MOE_META_F64);
	put_bytes(w, &v, 8);
}

void meta_put_blob(struct moe_meta_writer *w, const char *key, const void *data, uint64_t len)
{
	put_key(w, key, MOE_META_BLOB);
	put_bytes(w, &len, 8);
	put_bytes(w, data, len);
}

void meta_put_str(struct moe_meta_writer *w, const char *key, const char *s)
{
	uint64_t len = strlen(s);
	put_key(w, key, MOE_META_STR);
	put_bytes(w, &len, 8);
	put_bytes(w, s, len);
}

void meta_put_i64_array(struct moe_meta_writer *w, const char *key, const int64_t *v, uint64_t n)
{
	put_key(w, key, MOE_META_I64_ARRAY);
	put_bytes(w, &n, 8);
	put_bytes(w, v, n * 8);
}

int meta_finish(struct moe_meta_writer *w)
{
	if (w->err)
		return w->err;
	memcpy(w->buf, &w->count, 4);
	return 0;
}

void meta_free(struct moe_meta_writer *w)
{
	free(w->buf);
	memset(w, 0, sizeof *w);
}
