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

#endif
