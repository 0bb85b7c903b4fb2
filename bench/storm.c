#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>
int main(int argc,char**argv){
  long pages = argc>1? atol(argv[1]) : 262144;
  int ps = 4096;
  char *b = mmap(NULL, pages*ps, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
  for (long i=0;i<pages;i++) b[i*ps]=1;
  if (argc>2) { printf("pid %d ready\n", getpid()); fflush(stdout); sleep(atoi(argv[2])); }
  pid_t c = fork();
  if (c==0){ struct timespec t0,t1; clock_gettime(CLOCK_MONOTONIC,&t0);
    for (long i=0;i<pages;i++) b[i*ps]=2;
    clock_gettime(CLOCK_MONOTONIC,&t1);
    printf("%.3f ms\n", (t1.tv_sec-t0.tv_sec)*1e3+(t1.tv_nsec-t0.tv_nsec)/1e6); fflush(stdout); _exit(0);}
  int st; waitpid(c,&st,0); return 0;}
