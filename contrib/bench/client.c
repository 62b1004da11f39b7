/*
 * client: the one program that times every file operation of contrib/bench.py.
 *
 * The same compiled code measures procfs, the C floor (minifs) and livefs, so
 * a ratio between them is a ratio of filesystems, never of clients.  Each
 * iteration is timed on its own with clock_gettime(CLOCK_MONOTONIC).  After a
 * warm-up of a tenth of the iterations (at least 10) per target, the targets
 * are measured in interleaved blocks of a tenth of the iterations, at most
 * 100 (target 1, 2, ..., then 1, 2, ... again), so a burst of load on a shared machine lands on all
 * of them alike instead of on whichever one happened to run then.  The client
 * prints p50 and p99 in microseconds, one line per target:
 *
 *   client [-n N] read       PATH...   open + read(4096) + close
 *   client [-n N] cat        PATH...   open + fstat + read(128 KiB) until EOF + close, as cat(1) does
 *   client [-n N] write      PATH...   open(O_WRONLY|O_TRUNC) + write("0\n") + close, as `echo 0 >` does
 *   client [-n N] spawn-cat  PATH...   posix_spawnp("cat PATH") with stdout on /dev/null + waitpid
 *   client [-n N] spawn-echo PATH...   posix_spawnp("sh -c 'echo 0 > PATH'") + waitpid
 *
 * "{pid}" in a PATH becomes the client's own pid, for files such as
 * /proc/<pid>/comm that name the process that reads them.  Output lines:
 * "<PATH as given>\t<p50 us>\t<p99 us>".  Exit 1 with the errno on the first
 * failing operation: a benchmark of an error path is no benchmark.
 *
 * Build: cc -O2 -Wall client.c -o client
 */

#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

typedef int (*op_fn)(const char *path);

struct target {
	const char *label; /* the PATH as given */
	char path[4096];   /* with {pid} replaced */
	double *samples;
};

static char buf[128 * 1024];

static void die(const char *what, const char *target)
{
	fprintf(stderr, "client: %s %s: %s\n", what, target, strerror(errno));
	exit(1);
}

static int op_read(const char *path)
{
	int fd = open(path, O_RDONLY);

	if (fd < 0 || read(fd, buf, 4096) < 0)
		return -1;
	return close(fd);
}

static int op_cat(const char *path)
{
	struct stat st;
	ssize_t got;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st) < 0)
		return -1;
	while ((got = read(fd, buf, sizeof(buf))) > 0)
		;
	if (got < 0)
		return -1;
	return close(fd);
}

static int op_write(const char *path)
{
	int fd = open(path, O_WRONLY | O_TRUNC);

	if (fd < 0 || write(fd, "0\n", 2) != 2)
		return -1;
	return close(fd);
}

/* Run ARGV with stdout on /dev/null and wait; a failing command is an error. */
static int spawn_wait(char *const *argv)
{
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int status, err;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
	err = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (err != 0) {
		errno = err;
		return -1;
	}
	if (waitpid(pid, &status, 0) < 0)
		return -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		errno = ECHILD;
		return -1;
	}
	return 0;
}

static int op_spawn_cat(const char *path)
{
	char *argv[] = {"cat", (char *)path, NULL};

	return spawn_wait(argv);
}

static int op_spawn_echo(const char *path)
{
	static char script[4200];
	char *argv[] = {"sh", "-c", script, NULL};

	/* the benchmark's paths hold no single quote */
	snprintf(script, sizeof(script), "echo 0 > '%s'", path);
	return spawn_wait(argv);
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* The q-quantile of N sorted samples (nearest rank). */
static double quantile(const double *sorted, int n, double q)
{
	int i = (int)(q * n);

	return sorted[i < n ? i : n - 1];
}

/* PATH with every "{pid}" replaced by our pid, into OUT. */
static void with_pid(const char *path, char *out, size_t cap)
{
	char pid[16];
	size_t len = 0;

	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	for (const char *p = path; *p && len + sizeof(pid) < cap;) {
		if (strncmp(p, "{pid}", 5) == 0) {
			len += (size_t)snprintf(out + len, cap - len, "%s", pid);
			p += 5;
		} else {
			out[len++] = *p++;
		}
	}
	out[len] = '\0';
}

/* Warm every target up, then N timed runs each in interleaved blocks. */
static void measure(op_fn op, struct target *t, int nt, int n)
{
	int warm = n / 10 > 10 ? n / 10 : 10;
	int block = n / 10 > 100 ? 100 : n / 10 > 0 ? n / 10 : 1;

	for (int k = 0; k < nt; k++)
		for (int i = 0; i < warm; i++)
			if (op(t[k].path) != 0)
				die("warm-up of", t[k].label);
	for (int done = 0; done < n; done += block) {
		int end = done + block < n ? done + block : n;

		for (int k = 0; k < nt; k++) {
			for (int i = done; i < end; i++) {
				double t0 = now_us();

				if (op(t[k].path) != 0)
					die("timed run of", t[k].label);
				t[k].samples[i] = now_us() - t0;
			}
		}
	}
}

static void report(struct target *t, int nt, int n)
{
	for (int k = 0; k < nt; k++) {
		qsort(t[k].samples, (size_t)n, sizeof(double), cmp_double);
		printf("%s\t%.1f\t%.1f\n", t[k].label, quantile(t[k].samples, n, 0.50),
		       quantile(t[k].samples, n, 0.99));
	}
}

static op_fn op_named(const char *name)
{
	static const struct { const char *name; op_fn fn; } ops[] = {
		{"read", op_read}, {"cat", op_cat}, {"write", op_write},
		{"spawn-cat", op_spawn_cat}, {"spawn-echo", op_spawn_echo},
	};

	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (strcmp(ops[i].name, name) == 0)
			return ops[i].fn;
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: client [-n N] read|cat|write|spawn-cat|spawn-echo PATH...\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int n = 2000, i = 1, nt;
	struct target *t;
	op_fn op;

	if (argc > 2 && strcmp(argv[1], "-n") == 0) {
		n = atoi(argv[2]);
		i = 3;
	}
	if (n < 1 || argc - i < 2 || (op = op_named(argv[i])) == NULL)
		usage();
	nt = argc - i - 1;
	t = calloc((size_t)nt, sizeof(*t));
	if (t == NULL)
		die("calloc for", "targets");
	for (int k = 0; k < nt; k++) {
		t[k].label = argv[i + 1 + k];
		with_pid(t[k].label, t[k].path, sizeof(t[k].path));
		t[k].samples = malloc(sizeof(double) * (size_t)n);
		if (t[k].samples == NULL)
			die("malloc for", t[k].label);
	}
	measure(op, t, nt, n);
	report(t, nt, n);
	return 0;
}
