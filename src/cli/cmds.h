/* One entry point per command; each parses its own arguments (argv[0] is the
 * command name) and returns the process exit code. */
#ifndef CV_CMDS_H
#define CV_CMDS_H

#include <stddef.h>

int cv_cmd_relay(int argc, char **argv);
int cv_cmd_agent(int argc, char **argv);   /* also `tunnel-client` */
int cv_cmd_forward(int argc, char **argv);
int cv_cmd_demo(int argc, char **argv);
int cv_cmd_gateway(int argc, char **argv);

/* Splits a command line into words (quotes group, no shell); words point
 * into buf. Returns the count or -1 (unbalanced quote, too many, too long). */
int cv_cli_split_words(const char *s, char *buf, size_t cap, char **words, int max);

#define CV_VERSION "0.1.0"

#endif
