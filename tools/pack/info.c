/* info.c - moe-pack --info (human or JSON) and --verify. */
#include "config.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "cli/progress.h"
#include "pack.h"
#include "pack/format.h"

struct kind_stats {
	uint64_t count, weights, raw, stored, zstd;
	unsigned types; /* bit per moe_type */
};

/* of the raw (uncompressed) bytes: what a type costs, scales included */
static double bits_per_weight(const struct kind_stats *k)
{
	return k->weights ? 8.0 * (double)k->raw / (double)k->weights : 0.0;
}

static void types_str(unsigned types, char *buf, size_t cap)
{
	buf[0] = '\0';
	for (int t = 0; t < MOE_TYPE_COUNT; t++)
		if (types & (1u << t))
			snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s", buf[0] ? "," : "", moe_type_name(t));
}

static json_t *meta_value(const moe_pack *pk, const char *key, int type)
{
	uint64_t u;
	int64_t i;
	double d;
	const void *p;
	const int64_t *arr;
	switch (type) {
	case MOE_META_U64: moe_pack_meta_u64(pk, key, &u); return json_integer((json_int_t)u);
	case MOE_META_I64: moe_pack_meta_i64(pk, key, &i); return json_integer(i);
	case MOE_META_F64: moe_pack_meta_f64(pk, key, &d); return json_real(d);
	case MOE_META_STR: moe_pack_meta_bytes(pk, key, &p, &u); return json_stringn(p, u);
	case MOE_META_BLOB: moe_pack_meta_bytes(pk, key, &p, &u); return json_sprintf("<%llu bytes>", (unsigned long long)u);
	case MOE_META_I64_ARRAY: {
		moe_pack_meta_i64_array(pk, key, &arr, &u);
		json_t *a = json_array();
		for (uint64_t k = 0; k < u; k++) {
			int64_t v;
			memcpy(&v, &arr[k], 8);
			json_array_append_new(a, json_integer(v));
		}
		return a;
	}
	}
	return json_null();
}

int pack_info(const char *path, int as_json)
{
	moe_pack *pk;
	int rc = moe_pack_open(path, &pk);
	if (rc)
		return rc;
	struct kind_stats ks[MOE_KIND_COUNT] = {{0}};
	for (size_t i = 0; i < moe_pack_tensor_count(pk); i++) {
		moe_tensor t;
		moe_pack_tensor_at(pk, i, &t);
		struct kind_stats *k = &ks[moe_tensor_kind(t.name)];
		k->count++;
		k->weights += t.n_dims == 2 ? t.dims[0] * t.dims[1] : t.dims[0];
		k->raw += t.size;
		k->stored += t.size;
		k->types |= 1u << t.type;
	}
	moe_expert_layout lay;
	moe_pack_expert_layout(pk, &lay);
	struct kind_stats *ke = &ks[MOE_KIND_EXPERT];
	for (size_t i = 0; i < moe_pack_expert_count(pk); i++) {
		moe_expert_info e;
		moe_pack_expert_at(pk, i, &e);
		ke->count++;
		for (int m = 0; m < 3; m++)
			ke->weights += lay.rows[m] * lay.cols[m];
		ke->raw += e.raw_size;
		ke->stored += e.stored_size;
		ke->zstd += e.codec == MOE_CODEC_ZSTD;
	}
	unsigned mtypes[3] = {0, 0, 0}; /* per matrix, over every layout */
	for (size_t k = 0; ke->count && k < moe_pack_expert_layouts(pk); k++) {
		moe_expert_layout l;
		moe_pack_expert_layout_at(pk, k, &l);
		for (int m = 0; m < 3; m++) {
			mtypes[m] |= 1u << l.type[m];
			ke->types |= 1u << l.type[m];
		}
	}

	unsigned major, minor;
	moe_pack_version(pk, &major, &minor);
	json_t *root = json_object(), *meta = json_object(), *kinds = json_object();
	json_object_set_new(root, "file", json_string(path));
	json_object_set_new(root, "file_size", json_integer((json_int_t)moe_pack_file_size(pk)));
	json_object_set_new(root, "version", json_sprintf("%u.%u", major, minor));
	json_object_set_new(root, "alignment", json_integer(moe_pack_alignment(pk)));
	for (size_t i = 0; i < moe_pack_meta_count(pk); i++) {
		int type;
		const char *key = moe_pack_meta_key(pk, i, &type);
		json_object_set_new(meta, key, meta_value(pk, key, type));
	}
	json_object_set_new(root, "metadata", meta);
	uint64_t raw = 0, stored = 0;
	for (int k = 0; k < MOE_KIND_COUNT; k++) {
		if (!ks[k].count)
			continue;
		char types[64];
		types_str(ks[k].types, types, sizeof types);
		json_t *o = json_object();
		json_object_set_new(o, k == MOE_KIND_EXPERT ? "blobs" : "tensors", json_integer((json_int_t)ks[k].count));
		json_object_set_new(o, "types", json_string(types));
		json_object_set_new(o, "bits_per_weight", json_real(bits_per_weight(&ks[k])));
		json_object_set_new(o, "raw_bytes", json_integer((json_int_t)ks[k].raw));
		json_object_set_new(o, "stored_bytes", json_integer((json_int_t)ks[k].stored));
		json_object_set_new(o, "ratio", json_real(ks[k].raw ? (double)ks[k].stored / (double)ks[k].raw : 1.0));
		if (k == MOE_KIND_EXPERT)
			json_object_set_new(o, "zstd_blobs", json_integer((json_int_t)ks[k].zstd));
		json_object_set_new(kinds, moe_kind_names[k], o);
		raw += ks[k].raw;
		stored += ks[k].stored;
	}
	json_object_set_new(root, "kinds", kinds);
	json_object_set_new(root, "ratio", json_real(raw ? (double)stored / (double)raw : 1.0));
	if (ke->count) {
		json_t *ex = json_object();
		static const char *const mn[3] = {"gate", "up", "down"};
		for (int m = 0; m < 3; m++) {
			char t[64];
			types_str(mtypes[m], t, sizeof t);
			json_object_set_new(ex, mn[m], json_sprintf("%s [%llu, %llu]", t, (unsigned long long)lay.rows[m],
								  (unsigned long long)lay.cols[m]));
		}
		json_object_set_new(ex, "layouts", json_integer((json_int_t)moe_pack_expert_layouts(pk)));
		json_object_set_new(ex, "raw_blob_bytes", json_integer((json_int_t)moe_pack_expert_max_raw(pk)));
		json_object_set_new(root, "expert_layout", ex);
	}

	if (as_json) {
		json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		putchar('\n');
	} else {
		printf("%s: moemap pack %u.%u, %.3f GB, experts aligned to %u bytes\n", path, major, minor,
		       (double)moe_pack_file_size(pk) / 1e9, moe_pack_alignment(pk));
		const char *key;
		json_t *v;
		json_object_foreach(meta, key, v) {
			/* hyperparameters another architecture uses are stored as zero: not worth a line */
			int zero = (json_is_number(v) && json_number_value(v) == 0) || (json_is_array(v) && !json_array_size(v));
			if (zero && strncmp(key, "hparams.", 8) == 0)
				continue;
			char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
			if (json_is_string(v))
				printf("  %-36s %.100s%s\n", key, json_string_value(v),
				       strlen(json_string_value(v)) > 100 ? "..." : "");
			else if (json_is_real(v))
				printf("  %-36s %.10g\n", key, json_real_value(v));
			else
				printf("  %-36s %s\n", key, s ? s : "?");
			free(s);
		}
		if (ke->count) {
			json_t *ex = json_object_get(root, "expert_layout");
			printf("expert blob: gate %s, up %s, down %s; %llu bytes raw%s\n",
			       json_string_value(json_object_get(ex, "gate")), json_string_value(json_object_get(ex, "up")),
			       json_string_value(json_object_get(ex, "down")), (unsigned long long)moe_pack_expert_max_raw(pk),
			       moe_pack_expert_layouts(pk) > 1 ? " at most (types differ by layer)" : "");
		}
		printf("%-8s %8s %-12s %6s %14s %14s %7s\n", "kind", "count", "types", "bits/w", "raw bytes", "stored bytes",
		       "ratio");
		for (int k = 0; k < MOE_KIND_COUNT; k++) {
			if (!ks[k].count)
				continue;
			char types[64];
			types_str(ks[k].types, types, sizeof types);
			printf("%-8s %8llu %-12s %6.2f %14llu %14llu %7.4f", moe_kind_names[k], (unsigned long long)ks[k].count,
			       types, bits_per_weight(&ks[k]), (unsigned long long)ks[k].raw, (unsigned long long)ks[k].stored,
			       ks[k].raw ? (double)ks[k].stored / (double)ks[k].raw : 1.0);
			if (k == MOE_KIND_EXPERT)
				printf("  (%llu of %llu blobs zstd)", (unsigned long long)ks[k].zstd, (unsigned long long)ks[k].count);
			putchar('\n');
		}
		printf("%-8s %8s %-12s %6s %14llu %14llu %7.4f\n", "total", "", "", "", (unsigned long long)raw,
		       (unsigned long long)stored, raw ? (double)stored / (double)raw : 1.0);
	}
	json_decref(root);
	moe_pack_close(pk);
	return 0;
}

static int verify_progress(void *user, uint64_t done, uint64_t total)
{
	struct moe_progress *bar = user;
	bar->total = total;
	moe_progress_update(bar, done, 0);
	return 0;
}

int pack_verify(const char *path, int progress)
{
	moe_pack *pk;
	int rc = moe_pack_open(path, &pk);
	if (rc)
		return rc;
	struct moe_progress bar;
	moe_progress_start(&bar, progress, "verify", "items", 0);
	rc = moe_pack_verify(pk, verify_progress, &bar);
	moe_progress_end(&bar);
	struct moe_hparams hp; /* intact is not enough: the contents must add up (moepack(5), INVARIANTS) */
	if (!rc)
		rc = moe_hparams_from_pack(pk, &hp);
	if (!rc)
		printf("%s: OK, %zu tensors and %zu experts verified, shapes as the hyperparameters imply\n", path,
		       moe_pack_tensor_count(pk), moe_pack_expert_count(pk));
	moe_pack_close(pk);
	return rc;
}
