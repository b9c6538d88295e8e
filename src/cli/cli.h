/* The tool side (curl's split): parse flags, call the machinery, print.
 * Exit status: 0 ok, 1 failure, 2 usage. */
#ifndef IB_CLI_H
#define IB_CLI_H

#define IB_EXIT_OK 0
#define IB_EXIT_FAIL 1
#define IB_EXIT_USAGE 2

int ib_cmd_build(int argc, char **argv);
int ib_cmd_inspect(int argc, char **argv);
int ib_cmd_load(int argc, char **argv);

/* Prints "imgbuild: error: <msg>" and returns the exit status for code. */
int ib_cli_fail(int code);
int ib_cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
