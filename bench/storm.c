/*
 * storm.c: the copy-on-write storm of bench/storm.py.
 *
 * The parent dirties PAGES pages of a private anonymous buffer (so each is a real page, shared
 * after fork), then forks; the child writes one byte into every page, which copies each of them,
 * and prints how long that took: wall time and the child's own CPU time (user + system). The
 * CPU time is what tracing adds to the writer (BPF programs run in its context) and, unlike wall
 * time, does not grow when other work on the machine takes the CPU away.
 *
 * Usage: storm PAGES [wait]
 *   with "wait", the parent prints "ready PID" after dirtying and waits for a line on stdin
 *   before forking, so that a tracer can attach to it first (cowtrace PID).
 * Output (child): "<wall ms> ms wall, <cpu ms> ms cpu"
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "storm_buffer.h"


static double ms_between(struct timespec a, struct timespec b)
{
    return (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
}

static double cpu_ms(void)
{
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e3 +
           (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e3;
}

int main(int argc, char **argv)
{
    long pages = argc > 1 ? atol(argv[1]) : 262144;
    int wait_for_tracer = argc > 2 && strcmp(argv[2], "wait") == 0;
    volatile char *buffer = dirtied_buffer(pages);
    if (!buffer)
        return 1;
    if (wait_for_tracer && await_go() != 0)
        return 1;
    pid_t child = fork();
    if (child == 0) {
        struct timespec t0, t1;
        double cpu0 = cpu_ms();
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long i = 0; i < pages; i++)
            buffer[i * PAGE] = 2;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        printf("%.3f ms wall, %.3f ms cpu\n", ms_between(t0, t1), cpu_ms() - cpu0);
        fflush(stdout);
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
