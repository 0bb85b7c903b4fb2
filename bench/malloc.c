/* malloc/free micro-benchmark: N pairs of malloc(64) + free, timed; prints "<ns> ns per pair".
 * Usage: malloc [PAIRS=1000000] */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
	long pairs = argc > 1 ? atol(argv[1]) : 1000000;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < pairs; i++) {
		volatile char *p = malloc(64);
		p[0] = 1;
		free((void *)p);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
	printf("%.1f ns per pair\n", ns / pairs);
	return 0;
}
