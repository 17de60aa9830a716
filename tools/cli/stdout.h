/* stdout.h - what every moemap command does with its standard output and its
 * mapped pack, outside the library (which never prints and never exits). */
#ifndef MOE_CLI_STDOUT_H
#define MOE_CLI_STDOUT_H

/* Standard output that cannot be written (a full disk, /dev/full, an I/O error)
 * is said once, "PROG: standard output: REASON", and the process then exits with
 * status 1, at the latest when it ends. A reader that went away (EPIPE, with
 * SIGPIPE ignored) is not an error and is not reported. moe_stdout_check flushes
 * and says which: long outputs stop writing once it is not MOE_STDOUT_OK. */
enum { MOE_STDOUT_OK, MOE_STDOUT_FAILED, MOE_STDOUT_CLOSED };

/* A mapped file cut short under the process (truncated in place by another program;
 * moemap's writers only ever rename a whole new file over an old one, which leaves
 * existing mappings intact) raises SIGBUS on the next read of a lost page. After
 * this, that ends the process with "PROG: PATH: the file was truncated or changed
 * while in use" and status 1 instead of a crash. */
void moe_trap_truncated_mapping(const char *prog, const char *path);
void moe_check_stdout_at_exit(const char *prog);
int moe_stdout_check(void);

#endif
