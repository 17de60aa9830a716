/* error.h - how library code reports failures: a code plus a thread-local message. */
#ifndef MOE_COMMON_ERROR_H
#define MOE_COMMON_ERROR_H

#include "moe.h"

/* Record the detail of a failure and return err, so callers write
 * `return moe_fail(MOE_EFORMAT, "%s: bad magic", path);`. */
int moe_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Map an errno value to a moe code (ENOSPC/EDQUOT -> MOE_ENOSPC, ENOENT -> MOE_ENOTFOUND, ...). */
int moe_errno_code(int errnum);

#endif
