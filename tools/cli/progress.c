/* progress.c - see progress.h */
#include "cli/progress.h"

#include <stdio.h>

#include "moe.h"

void moe_progress_start(struct moe_progress *p, int enabled, const char *label, const char *unit, uint64_t total)
{
	*p = (struct moe_progress){.enabled = enabled, .label = label, .unit = unit, .total = total};
	p->t0 = moe_now();
}

static void draw(struct moe_progress *p, int last)
{
	const uint64_t done = p->done, bytes = p->bytes;
	const double t = moe_now(), elapsed = t - p->t0;
	const uint64_t total = p->total ? p->total : 1, shown = done < total ? done : total;
	const int width = 24, fill = (int)(width * shown / total);
	char rate[48], time_left[32];
	if (elapsed <= 0)
		snprintf(rate, sizeof rate, "-");
	else if (bytes)
		snprintf(rate, sizeof rate, "%.1f MB/s", bytes / elapsed / 1e6);
	else
		snprintf(rate, sizeof rate, "%.1f %s/s", done / elapsed, p->unit);
	if (last) {
		snprintf(time_left, sizeof time_left, "in %.1f s", elapsed);
	} else if (done == 0) {
		snprintf(time_left, sizeof time_left, "ETA -");
	} else {
		const double left = elapsed * (double)(total - shown) / (double)shown;
		const unsigned long s = (unsigned long)(left + 0.5);
		if (s >= 3600)
			snprintf(time_left, sizeof time_left, "ETA %lu:%02lu:%02lu", s / 3600, s / 60 % 60, s % 60);
		else
			snprintf(time_left, sizeof time_left, "ETA %lu:%02lu", s / 60, s % 60);
	}
	/* \r and erase-to-end: the line is redrawn in place */
	fprintf(stderr, "\r%-10s [%.*s%*s] %3d%% %llu/%llu %s, %s, %s\033[K%s", p->label, fill,
		"========================", width - fill, "", (int)(100 * shown / total), (unsigned long long)done,
		(unsigned long long)p->total, p->unit, rate, time_left, last ? "\n" : "");
	fflush(stderr);
	p->last_draw = t;
}

void moe_progress_update(struct moe_progress *p, uint64_t done, uint64_t bytes)
{
	p->done = done, p->bytes = bytes;
	if (p->enabled && moe_now() - p->last_draw >= 0.1)
		draw(p, 0);
}

void moe_progress_end(struct moe_progress *p)
{
	if (p->enabled)
		draw(p, 1);
}

int moe_progress_load(uint64_t done, uint64_t total, void *user)
{
	struct moe_progress *p = user;
	if (!p->label)
		moe_progress_start(p, p->enabled, "loading", "MB", total / 1000000);
	moe_progress_update(p, done / 1000000, done);
	if (done == total && p->last_draw > 0) /* no line for a load too quick to draw */
		moe_progress_end(p);
	return 0;
}
