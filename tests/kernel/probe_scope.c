/*
 * probe_scope: a process that calls malloc(SIZE) + free COUNT times when told to, for the test
 * that cowtrace's allocator uprobes are installed in members only (test_allocator_probe_scope.py).
 *
 * Usage: probe_scope member|outsider COUNT SIZE DIR
 *   Both print {"ready": PID}, wait for DIR/go, make their calls (make_calls) and print
 *   {"done": PID}.  An outsider then waits for DIR/exit.  A member then forks a child that
 *   makes the same calls, prints {"child": PID} and waits for DIR/exit; the member reaps it.
 * Files are polled (no signals, no pipes): the member runs under `cowtrace run`, whose
 * stdin/stdout are the test's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *dir;

static void wait_for(const char *name)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	while (access(path, F_OK) != 0)
		usleep(2000);
}

static __attribute__((noinline)) void make_calls(long count, size_t size)
{
	for (long i = 0; i < count; i++) {
		void *volatile block = malloc(size);
		if (!block)
			exit(2);
		free(block);
	}
}

int main(int argc, char **argv)
{
	if (argc != 5)
		return 2;
	int member = strcmp(argv[1], "member") == 0;
	long count = atol(argv[2]);
	size_t size = (size_t)atol(argv[3]);
	dir = argv[4];
	printf("{\"ready\": %d}\n", getpid());
	fflush(stdout);
	wait_for("go");
	make_calls(count, size);
	printf("{\"done\": %d}\n", getpid());
	fflush(stdout);
	if (!member) {
		wait_for("exit");
		return 0;
	}
	pid_t child = fork();
	if (child < 0)
		return 3;
	if (child == 0) {
		make_calls(count, size);
		printf("{\"child\": %d}\n", getpid());
		fflush(stdout);
		wait_for("exit");
		_exit(0);
	}
	int status;
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status))
		return 4;
	return 0;
}
