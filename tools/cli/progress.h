/* progress.h - one line of progress on a terminal: a bar, done/total, the rate (MB/s
 * when bytes are counted, else items per second) and the time left. Tools enable it
 * only when standard error is a terminal; otherwise every call does nothing. */
#ifndef MOE_PROGRESS_H
#define MOE_PROGRESS_H

#include <stdint.h>

struct moe_progress {
	int enabled;
	const char *label, *unit; /* unit: what done counts, for the rate when no bytes are given */
	uint64_t total, done, bytes;
	double t0, last_draw;
};

void moe_progress_start(struct moe_progress *p, int enabled, const char *label, const char *unit, uint64_t total);
/* done of total items, bytes moved so far (0: show items per second); redrawn at most 10 times a second */
void moe_progress_update(struct moe_progress *p, uint64_t done, uint64_t bytes);
/* the line as of the last update, with the time taken, ended by a newline */
void moe_progress_end(struct moe_progress *p);

/* A moe_model_params.progress callback: user is a struct moe_progress whose
 * `enabled` the tool has set (a terminal); the bar starts at the first call and
 * ends at the last, labelled "loading", counting megabytes; a load over before the
 * first redraw (0.1 s) leaves no line. */
int moe_progress_load(uint64_t done, uint64_t total, void *user);

#endif
