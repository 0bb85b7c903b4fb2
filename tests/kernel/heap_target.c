/* A process whose live glibc blocks are known: the heap walker must find exactly these.
 *
 * The main thread allocates blocks of assorted sizes in the main arena ([heap]), frees some
 * into the tcache (7 per size), more of one size into a fastbin, large blocks into the
 * unsorted bin, and makes two mmapped blocks (freed blocks may be reused by later ones).
 * A second thread allocates in its own arena and frees some blocks there.
 * Every block is printed, {"live": [addr, malloc_usable_size]} or {"freed": addr}, then
 * {"ready": pid};
 * the process then waits for stdin to close.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_BLOCKS 4096
static void *volatile blocks[MAX_BLOCKS];
static volatile int live[MAX_BLOCKS];
static int nblocks;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int keep(void *p) {
    pthread_mutex_lock(&lock);
    int i = nblocks++;
    blocks[i] = p;
    live[i] = 1;
    pthread_mutex_unlock(&lock);
    memset(p, 0x5a, malloc_usable_size(p));
    return i;
}

static void drop(int i) {
    free(blocks[i]);
    live[i] = 0;
}

static char out[1 << 20]; /* stdout's buffer: printing must not malloc */

static void *thread_main(void *arg) {
    (void)arg;
    int first = -1;
    for (int i = 0; i < 40; i++) {
        int k = keep(malloc(48 + 64 * i));
        if (first < 0) first = k;
    }
    for (int i = 0; i < 40; i += 5) drop(first + i);
    return NULL;
}

int main(void) {
    setvbuf(stdout, out, _IOFBF, sizeof out);
    /* The thread first: pthread_create's own allocations then precede every block of ours. */
    pthread_t thread;
    if (pthread_create(&thread, NULL, thread_main, NULL) != 0) return 1;
    pthread_join(thread, NULL);
    static const size_t sizes[] = {24, 100, 1000, 5000, 40, 333, 4096, 70000};
    int small[20];
    for (int round = 0; round < 30; round++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) keep(malloc(sizes[s] + round));
    int big = keep(malloc(3000));
    keep(malloc(16));  /* keeps `big` off the top chunk */
    drop(big);         /* past the tcache's sizes (1032 bytes): a free chunk */
    int fill[8];
    for (int i = 0; i < 8; i++) fill[i] = keep(malloc(2000));
    for (int i = 0; i < 8; i++) keep(malloc(16));
    for (int i = 0; i < 8; i++) drop(fill[i]); /* past the tcache's sizes: unsorted bin */
    keep(malloc(300000)); /* mmapped */
    keep(malloc(1 << 20)); /* mmapped */
    /* Last, since a large request consolidates the fastbins: chunk 0x40, 7 to the tcache and
     * 3 to a fastbin. */
    for (int i = 0; i < 20; i++) small[i] = keep(malloc(56));
    for (int i = 0; i < 20; i += 2) drop(small[i]);
    for (int i = 0; i < nblocks; i++) {
        if (live[i])
            printf("{\"live\": [%lu, %zu]}\n", (unsigned long)blocks[i],
                   malloc_usable_size(blocks[i]));
        else
            printf("{\"freed\": %lu}\n", (unsigned long)blocks[i]);
    }
    printf("{\"ready\": %d}\n", (int)getpid());
    fflush(stdout);
    char buf[16];
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
