/* callgetpid: call getpid(2) in a loop until SIGTERM, SIGINT or SIGHUP; then
 * print the last value it returned.  A process whose every kernel exit is a
 * getpid, as the kernel's livepatch selftest helper is. */
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void done(int sig)
{
	(void)sig;
	stop = 1;
}

int main(void)
{
	long pid = 0;

	signal(SIGTERM, done);
	signal(SIGINT, done);
	signal(SIGHUP, done);
	while (!stop)
		pid = syscall(SYS_getpid);
	printf("%ld\n", pid);
	return 0;
}
