/* util.c - the size syntax of every tool, and the clock durations are measured with. */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "common/util.h"

uint64_t moe_parse_size(const char *s)
{
	char *end;
	errno = 0;
	const double v = strtod(s, &end);
	if (errno || end == s || !(v > 0) || !isfinite(v))
		return 0;
	double mul = 1;
	switch (*end) {
	case 'k': case 'K': mul = 1024.0; end++; break;
	case 'm': case 'M': mul = 1048576.0; end++; break;
	case 'g': case 'G': mul = 1073741824.0; end++; break;
	case 't': case 'T': mul = 1099511627776.0; end++; break;
	}
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end || v * mul < 1 || v * mul >= 18446744073709551616.0) /* 2^64: past uint64_t */
		return 0;
	return (uint64_t)(v * mul);
}

double moe_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
