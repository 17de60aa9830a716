/*
 * writer.h - writes a pack in one pass: declare everything, then stream the
 * dense tensors and the expert blobs in declaration order, then finish.
 * Output goes to a temporary file next to the target and is renamed over it
 * only by packw_finish(); any failure (or packw_abort) removes it.
 */
#ifndef MOE_PACK_WRITER_H
#define MOE_PACK_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "pack/meta.h"

struct moe_packw;

int packw_create(const char *path, int force, uint32_t alignment, struct moe_packw **out);
/* Takes the finished metadata bytes (copied). */
int packw_set_meta(struct moe_packw *w, const struct moe_meta_writer *meta, uint32_t flags);
/* Declare a dense tensor; returns its index (>= 0) or an error. dims[1] = 0 for 1-D. */
int packw_declare_tensor(struct moe_packw *w, const char *name, int type, const uint64_t dims[2]);
/* Declare an expert layout (the matrices' types and shapes; every layout has the same
 * shapes): returns its index, the same for the same types. Then declare each (layer,
 * expert) in (layer, expert) order with its layout. */
int packw_declare_expert_layout(struct moe_packw *w, const int type[3], const uint64_t rows[3], const uint64_t cols[3]);
int packw_declare_expert(struct moe_packw *w, uint32_t layer, uint32_t expert, int layout);
/* A layout's raw blob size and each matrix's offset inside it. */
uint64_t packw_expert_raw_size(const struct moe_packw *w, int layout);
uint64_t packw_expert_matrix_offset(const struct moe_packw *w, int layout, int m);

/* Append bytes to dense tensor idx; tensors are written in declaration order. */
int packw_tensor_append(struct moe_packw *w, int idx, const void *data, size_t n);
/* Write expert blob i (declaration order): stored bytes, codec, and the hash of the raw bytes. */
int packw_expert_write(struct moe_packw *w, size_t i, const void *stored, size_t n, int codec, uint64_t xxh3_raw);

/* Tensor and expert bytes written so far. */
uint64_t packw_bytes_written(const struct moe_packw *w);
int packw_finish(struct moe_packw *w);
void packw_abort(struct moe_packw *w);

#endif
