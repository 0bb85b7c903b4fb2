/*
 * storm_buffer.h: the shared part of the CoW storm programs (storm.c, storm_chunks.c).
 *
 * A private anonymous buffer of `pages` pages, each written once, so that every page is a real
 * page of its own: after fork() the child's first write to each copies it.  And the handshake
 * with the driver before the fork, so that a tracer can attach first.
 */
#ifndef STORM_BUFFER_H
#define STORM_BUFFER_H

#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096L

/* The dirtied buffer, or NULL (with a message) when it cannot be mapped. */
static volatile char *dirtied_buffer(long pages)
{
    volatile char *buffer = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffer == MAP_FAILED) {
        perror("mmap");
        return NULL;
    }
    for (long i = 0; i < pages; i++)
        buffer[i * PAGE] = 1;
    return buffer;
}

/* Print "ready PID" and wait for the driver's line on stdin (a tracer attaches meanwhile):
 * 0, or -1 when stdin ended first. */
static int await_go(void)
{
    char line[16];
    printf("ready %d\n", getpid());
    fflush(stdout);
    return fgets(line, sizeof(line), stdin) ? 0 : -1;
}

#endif
