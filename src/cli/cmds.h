/* One entry point per command; each parses its own arguments (argv[0] is the
 * command name) and returns the process exit code. */
#ifndef CV_CMDS_H
#define CV_CMDS_H

int cv_cmd_relay(int argc, char **argv);
int cv_cmd_agent(int argc, char **argv);   /* also `tunnel-client` */
int cv_cmd_forward(int argc, char **argv);
int cv_cmd_demo(int argc, char **argv);

#define CV_VERSION "0.1.0"

#endif
