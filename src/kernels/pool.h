/*
 * pool.h - the library's own thread pool for the kernels: N-1 workers plus the
 * caller. A call costs a generation bump and a spin, no syscalls while workers are
 * spinning; idle workers fall back to sleeping on a condition variable.
 */
#ifndef MOE_KERNELS_POOL_H
#define MOE_KERNELS_POOL_H

struct moe_pool;

/* n_threads >= 1 (the caller counts as one). Returns NULL on failure. */
struct moe_pool *moe_pool_create(int n_threads);
void moe_pool_destroy(struct moe_pool *p);
int moe_pool_threads(const struct moe_pool *p);

/* Run fn(arg, i, n) for i in [0, n) with n = moe_pool_threads(p); returns when all are done.
 * p may be NULL: fn(arg, 0, 1). */
void moe_pool_run(struct moe_pool *p, void (*fn)(void *arg, int i, int n), void *arg);

#endif
