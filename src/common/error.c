/* error.c - error codes, their names, and the per-thread detail message. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

static _Thread_local char last_error[512];

unsigned moe_version_number(void) { return MOE_VERSION_NUMBER; }

const char *moe_strerror(int err)
{
	switch (err) {
	case MOE_OK: return "success";
	case MOE_EINVAL: return "invalid argument";
	case MOE_EIO: return "I/O error";
	case MOE_ENOMEM: return "out of memory";
	case MOE_EFORMAT: return "malformed file";
	case MOE_EVERSION: return "unsupported pack version";
	case MOE_ECHECKSUM: return "checksum mismatch";
	case MOE_EUNSUPPORTED: return "unsupported";
	case MOE_ENOTFOUND: return "not found";
	case MOE_EEXIST: return "already exists";
	case MOE_ENOSPC: return "no space left on device";
	case MOE_ECANCELED: return "canceled";
	}
	return "unknown error";
}

const char *moe_last_error(void) { return last_error; }

int moe_fail(int err, const char *fmt, ...)
{
	/* formatted aside first: callers add context with "%s: %s", moe_last_error() */
	char msg[sizeof last_error];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	memcpy(last_error, msg, sizeof msg);
	return err;
}

int moe_errno_code(int errnum)
{
	switch (errnum) {
	case ENOSPC:
	case EDQUOT:
	case EFBIG: return MOE_ENOSPC;
	case ENOENT: return MOE_ENOTFOUND;
	case EEXIST: return MOE_EEXIST;
	case ENOMEM: return MOE_ENOMEM;
	case EINVAL: return MOE_EINVAL;
	}
	return MOE_EIO;
}
