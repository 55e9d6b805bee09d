/* culvert: one binary, one command per role. Started as `tunnel-client` it
 * is the KohakuRiver agent (specs/kohaku-tunnel.md §8). */
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <string.h>

#include "cli/cmds.h"

static void usage(FILE *f)
{
    fprintf(f,
            "culvert %s - tunnel toolkit\n"
            "\n"
            "usage: culvert COMMAND [OPTIONS]\n"
            "\n"
            "commands:\n"
            "  relay     accept agents and forward sessions (KohakuRiver-compatible)\n"
            "  agent     dial a relay and serve local ports (drop-in tunnel-client)\n"
            "  forward   listen locally and forward through a relay to an agent's port\n"
            "  demo      relay + agent + sample HTTP service in one process\n"
            "  gateway   serve BlueLibs Runner tasks and events over HTTP (worker pools)\n"
            "\n"
            "Run `culvert COMMAND --help` for the options of a command.\n",
            CV_VERSION);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    /* Each tunnelled connection costs a descriptor or two: use all the
     * hard limit allows (as haproxy and nginx do), not the 1024 soft one. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    if (strcmp(base, "tunnel-client") == 0)
        return cv_cmd_agent(argc, argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
        printf("culvert %s\n", CV_VERSION);
        return 0;
    }
    if (strcmp(cmd, "relay") == 0)
        return cv_cmd_relay(argc - 1, argv + 1);
    if (strcmp(cmd, "agent") == 0)
        return cv_cmd_agent(argc - 1, argv + 1);
    if (strcmp(cmd, "forward") == 0)
        return cv_cmd_forward(argc - 1, argv + 1);
    if (strcmp(cmd, "demo") == 0)
        return cv_cmd_demo(argc - 1, argv + 1);
    if (strcmp(cmd, "gateway") == 0)
        return cv_cmd_gateway(argc - 1, argv + 1);
    fprintf(stderr, "culvert: unknown command '%s' (try `culvert --help`)\n", cmd);
    return 2;
}
