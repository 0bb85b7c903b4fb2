/*
 * storm_chunks.c: the copy-on-write storm, written in chunks on command (bench/interleaved.py).
 *
 * The parent dirties PAGES pages of a private anonymous buffer, prints "ready PID" and waits for
 * a line on stdin before forking, so that a tracer can attach to it first.  The child then
 * reads one command per line from stdin:
 *   "w"  write one byte into each of the next CHUNK pages (each write copies a shared page) and
 *        print "<cpu ns> <wall ns>" for that chunk: the thread's own CPU time
 *        (CLOCK_THREAD_CPUTIME_ID: user + system, where the BPF programs run) and wall time,
 *        leaving out the chunk's first WARM pages (a chunk that follows a change of the kernel's
 *        tracepoints starts with cold caches: see bench/toggled.py);
 *   "q"  exit.
 * Two of these, one traced and one not, written chunk by chunk in alternation, see the same
 * machine at the same moments: what differs between their chunk times is the tracing.
 *
 * Usage: storm_chunks PAGES CHUNK [WARM]
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "storm_buffer.h"


static long long now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int child_loop(volatile char *buffer, long pages, long chunk, long warm)
{
    char line[16];
    long next = 0;
    while (fgets(line, sizeof(line), stdin)) {
        if (line[0] != 'w')
            return 0;
        long end = next + chunk > pages ? pages : next + chunk;
        for (long i = next; i < end && i < next + warm; i++)
            buffer[i * PAGE] = 2;
        next = next + warm < end ? next + warm : end;
        long long cpu0 = now_ns(CLOCK_THREAD_CPUTIME_ID), wall0 = now_ns(CLOCK_MONOTONIC);
        for (long i = next; i < end; i++)
            buffer[i * PAGE] = 2;
        long long wall1 = now_ns(CLOCK_MONOTONIC), cpu1 = now_ns(CLOCK_THREAD_CPUTIME_ID);
        next = end;
        printf("%lld %lld\n", cpu1 - cpu0, wall1 - wall0);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: storm_chunks PAGES CHUNK [WARM]\n");
        return 2;
    }
    long pages = atol(argv[1]), chunk = atol(argv[2]), warm = argc == 4 ? atol(argv[3]) : 0;
    volatile char *buffer = dirtied_buffer(pages);
    if (!buffer)
        return 1;
    if (await_go() != 0)
        return 1;
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0)
        _exit(child_loop(buffer, pages, chunk, warm));
    int status;
    waitpid(child, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
