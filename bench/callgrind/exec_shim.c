/*
 * LD_PRELOAD shim for profiling mcpgw workers under callgrind.
 *
 * The supervisor starts each worker as execvp("/proc/self/exe", ...). Under
 * valgrind --trace-children that path names valgrind's own launcher, so the
 * worker cannot be followed. This shim, preloaded into a natively running
 * supervisor, rewrites that one exec into
 *   valgrind --tool=callgrind --callgrind-out-file=$MCPGW_CALLGRIND_OUT \
 *            $MCPGW_CALLGRIND_BIN argv[1..]
 * and leaves every other exec alone. It runs between fork and exec, so it
 * allocates nothing (static buffers only).
 *
 * Build: cc -shared -fPIC -O2 -o exec_shim.so exec_shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_ARGS 64
static char *args[MAX_ARGS + 8];
static char outarg[4096];

int execvp(const char *file, char *const argv[]) {
    int (*real)(const char *, char *const[]) =
        (int (*)(const char *, char *const[]))dlsym(RTLD_NEXT, "execvp");
    const char *bin = getenv("MCPGW_CALLGRIND_BIN");
    if (bin == NULL || strcmp(file, "/proc/self/exe") != 0) {
        return real(file, argv);
    }
    const char *out = getenv("MCPGW_CALLGRIND_OUT");
    const char *prefix = "--callgrind-out-file=";
    size_t p = strlen(prefix);
    memcpy(outarg, prefix, p);
    const char *o = out ? out : "callgrind.out.%p";
    size_t olen = strlen(o);
    if (olen > sizeof outarg - p - 1) {
        olen = sizeof outarg - p - 1;
    }
    memcpy(outarg + p, o, olen);
    outarg[p + olen] = '\0';
    int i = 0;
    args[i++] = "valgrind";
    args[i++] = "--tool=callgrind";
    args[i++] = "--compress-strings=no";
    args[i++] = outarg;
    args[i++] = (char *)bin;
    for (int k = 1; argv[k] != NULL && k < MAX_ARGS; k++) {
        args[i++] = argv[k];
    }
    args[i] = NULL;
    return real("valgrind", args);
}
