/* pool.c - spinning-then-sleeping worker threads for the kernels. */

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "common/util.h"
#include "kernels/pool.h"

/* ~50-150 microseconds of spinning before a worker sleeps: long enough to cover the
 * gap between two matrix calls of one token, short enough not to hold a core idle. */
#define SPIN_ROUNDS 4000

struct moe_pool {
	int n;
	pthread_t *th;
	_Atomic unsigned gen;     /* bumped once per moe_pool_run */
	_Atomic int pending;      /* workers still running this generation */
	_Atomic int sleepers;
	void (*fn)(void *, int, int);
	void *arg;
	_Atomic int stop;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct worker { struct moe_pool *p; int idx; } *w;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct moe_pool *p = w->p;
	unsigned seen = 0;
	for (;;) {
		unsigned g;
		int spins = 0;
		while ((g = atomic_load(&p->gen)) == seen) {
			if (++spins < SPIN_ROUNDS) {
				moe_cpu_relax();
				continue;
			}
			pthread_mutex_lock(&p->mu);
			atomic_fetch_add(&p->sleepers, 1);
			while ((g = atomic_load(&p->gen)) == seen)
				pthread_cond_wait(&p->cv, &p->mu);
			atomic_fetch_sub(&p->sleepers, 1);
			pthread_mutex_unlock(&p->mu);
			break;
		}
		seen = g;
		if (atomic_load(&p->stop))
			return NULL;
		p->fn(p->arg, w->idx, p->n);
		atomic_fetch_sub(&p->pending, 1);
	}
}

struct moe_pool *moe_pool_create(int n_threads)
{
	struct moe_pool *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->n = n_threads < 1 ? 1 : n_threads;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->th = calloc((size_t)p->n, sizeof *p->th);
	p->w = calloc((size_t)p->n, sizeof *p->w);
	if (!p->th || !p->w) {
		moe_pool_destroy(p);
		return NULL;
	}
	for (int i = 1; i < p->n; i++) {
		p->w[i] = (struct worker){p, i};
		if (pthread_create(&p->th[i], NULL, worker_main, &p->w[i]) != 0) {
			p->n = i; /* run with the threads we have */
			break;
		}
	}
	return p;
}

static void wake(struct moe_pool *p)
{
	if (atomic_load(&p->sleepers) > 0) {
		pthread_mutex_lock(&p->mu);
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
}

void moe_pool_destroy(struct moe_pool *p)
{
	if (!p)
		return;
	if (p->th) {
		atomic_store(&p->stop, 1);
		atomic_fetch_add(&p->gen, 1);
		wake(p);
		for (int i = 1; i < p->n; i++)
			pthread_join(p->th[i], NULL);
	}
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p->th);
	free(p->w);
	free(p);
}

int moe_pool_threads(const struct moe_pool *p) { return p ? p->n : 1; }

void moe_pool_run(struct moe_pool *p, void (*fn)(void *arg, int i, int n), void *arg)
{
	if (!p || p->n == 1) {
		fn(arg, 0, 1);
		return;
	}
	p->fn = fn;
	p->arg = arg;
	atomic_store(&p->pending, p->n - 1);
	atomic_fetch_add(&p->gen, 1); /* publishes fn and arg */
	wake(p);
	fn(arg, 0, p->n);
	while (atomic_load(&p->pending) > 0)
		moe_cpu_relax();
}
