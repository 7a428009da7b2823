/* wrennd-merge-exec PROGRAM [ARG...]: mark this process's memory mergeable by KSM,
 * then become PROGRAM.
 *
 * The daemon starts a VMM through this wrapper when its KSM policy says so. The
 * flag (PR_SET_MEMORY_MERGE) belongs to the mm: every present and future anonymous
 * mapping is registered with ksmd, it is inherited by fork and kept across exec
 * (Linux >= 6.7), so the VMM needs no cooperation and no seccomp exception.
 * Nothing runs in the daemon between fork and exec: this is a separate program.
 * Failure to set the flag is fatal (exit 126): a VMM the operator asked to share
 * memory must not silently run without it.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif

int main(int argc, char **argv) {
    if (argc < 2 || argv[1][0] != '/') {
        fprintf(stderr, "usage: wrennd-merge-exec /ABSOLUTE/PROGRAM [ARG...]\n");
        return 2;
    }
    if (prctl(PR_SET_MEMORY_MERGE, 1L, 0L, 0L, 0L) != 0) {
        fprintf(stderr, "wrennd-merge-exec: prctl(PR_SET_MEMORY_MERGE): %s\n", strerror(errno));
        return 126;
    }
    execv(argv[1], &argv[1]);
    fprintf(stderr, "wrennd-merge-exec: exec %s: %s\n", argv[1], strerror(errno));
    return 127;
}
