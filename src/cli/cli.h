/* The tool side (curl's split): parse flags, call the machinery, print.
 * Exit status: 0 ok, 1 failure, 2 usage. */
#ifndef IB_CLI_H
#define IB_CLI_H

#define IB_EXIT_OK 0
#define IB_EXIT_FAIL 1
#define IB_EXIT_USAGE 2

#include "registry/client.h"

int ib_cmd_build(int argc, char **argv);
int ib_cmd_push(int argc, char **argv);
int ib_cmd_pull(int argc, char **argv);
int ib_cmd_login(int argc, char **argv);
int ib_cmd_logout(int argc, char **argv);
int ib_cmd_cache(int argc, char **argv);
int ib_cmd_retag(int argc, char **argv);
int ib_cmd_slim(int argc, char **argv);

/* Registry transport flags shared by every networked verb (contract):
 * --plain-http, --ca-file PATH, --insecure, --authfile PATH, -j/--jobs N. */
enum { IB_OPT_PLAIN_HTTP = 1000, IB_OPT_CA_FILE, IB_OPT_INSECURE, IB_OPT_AUTHFILE };
#define IB_CLI_REG_OPTIONS                                                                                      \
    {"plain-http", no_argument, 0, IB_OPT_PLAIN_HTTP}, {"ca-file", required_argument, 0, IB_OPT_CA_FILE},        \
        {"insecure", no_argument, 0, IB_OPT_INSECURE}, {"authfile", required_argument, 0, IB_OPT_AUTHFILE}
#define IB_CLI_REG_HELP                                                                                         \
    "      --plain-http         talk HTTP, not HTTPS (local dev registries)\n"                                  \
    "      --ca-file PATH       trust this CA too (also /etc/docker/certs.d/HOST/*.crt)\n"                      \
    "      --insecure           do not verify the registry's TLS certificate\n"                                 \
    "      --authfile PATH      credentials file (default: $REGISTRY_AUTH_FILE, docker's and podman's files)\n"
/* Returns 1 if c was a transport option (and applied it), 0 otherwise. */
int ib_cli_reg_opt(ib_reg_opts *o, int c, const char *arg);
int ib_cmd_inspect(int argc, char **argv);
int ib_cmd_load(int argc, char **argv);

/* Prints "imgbuild: error: <msg>" and returns the exit status for code. */
int ib_cli_fail(int code);
int ib_cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
