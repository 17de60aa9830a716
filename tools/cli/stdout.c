/* stdout.c - see stdout.h */
#include "cli/stdout.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *stdout_prog = "moemap";
static int stdout_state; /* MOE_STDOUT_OK, _FAILED (said so), _CLOSED */

int moe_stdout_check(void)
{
	if (stdout_state == MOE_STDOUT_OK && (fflush(stdout) != 0 || ferror(stdout))) {
		const int e = errno;
		stdout_state = e == EPIPE ? MOE_STDOUT_CLOSED : MOE_STDOUT_FAILED;
		if (e != EPIPE)
			fprintf(stderr, "%s: standard output: %s\n", stdout_prog, e ? strerror(e) : "write error");
	}
	return stdout_state;
}

static void close_stdout(void)
{
	if (moe_stdout_check() == MOE_STDOUT_OK && fclose(stdout) != 0 && errno != EPIPE) {
		fprintf(stderr, "%s: standard output: %s\n", stdout_prog, strerror(errno));
		stdout_state = MOE_STDOUT_FAILED;
	}
	if (stdout_state == MOE_STDOUT_FAILED)
		_exit(1);
}

void moe_check_stdout_at_exit(const char *prog)
{
	stdout_prog = prog;
	atexit(close_stdout);
}

static char sigbus_msg[512];
static size_t sigbus_len;

static void on_sigbus(int sig)
{
	(void)sig;
	/* threads reading the mapping fault together: the first one says it and ends the
	 * process; the others wait for that, since their _exit could end it before the
	 * message is written */
	static volatile sig_atomic_t said;
	if (__atomic_exchange_n(&said, 1, __ATOMIC_SEQ_CST) != 0)
		for (;;)
			pause();
	if (write(STDERR_FILENO, sigbus_msg, sigbus_len) < 0) {
		/* nothing more to do in a handler */
	}
	_exit(1);
}

void moe_trap_truncated_mapping(const char *prog, const char *path)
{
	int n = snprintf(sigbus_msg, sizeof sigbus_msg, "%s: %s: the file was truncated or changed while in use\n", prog,
			 path);
	sigbus_len = n < 0 ? 0 : (size_t)n < sizeof sigbus_msg ? (size_t)n : sizeof sigbus_msg - 1;
	struct sigaction sa = {.sa_handler = on_sigbus};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
}
