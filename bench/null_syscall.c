/* A null-syscall loop: getppid() through syscall(2), so no libc cache can answer it.
 * Usage: null_syscall CALLS BATCHES; prints one line per batch: nanoseconds per call.
 * The process is no member of any traced family: what it pays is what cowtrace charges
 * every other process on the host (bench/nonmember.py). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	long calls = argc > 1 ? atol(argv[1]) : 1000000;
	int batches = argc > 2 ? atoi(argv[2]) : 5;
	for (int b = 0; b < batches; b++) {
		long long start = now_ns();
		for (long i = 0; i < calls; i++)
			syscall(SYS_getppid);
		printf("%.2f\n", (double)(now_ns() - start) / calls);
	}
	return 0;
}
