/* modcall: make one module syscall and print its result as "rc errno".
 *   modcall finit FILE PARAMS     finit_module(open(FILE), PARAMS, 0)
 *   modcall init FILE PARAMS      init_module(contents of FILE, len, PARAMS)
 *   modcall delete NAME           delete_module(NAME, O_NONBLOCK)       */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long rc = -1;
	if (argc == 4 && !strcmp(argv[1], "finit")) {
		int fd = open(argv[2], O_RDONLY);
		rc = syscall(SYS_finit_module, fd, argv[3], 0);
	} else if (argc == 4 && !strcmp(argv[1], "init")) {
		int fd = open(argv[2], O_RDONLY);
		struct stat st;
		if (fd < 0 || fstat(fd, &st))
			return 2;
		char *buf = malloc(st.st_size);
		if (read(fd, buf, st.st_size) != st.st_size)
			return 2;
		rc = syscall(SYS_init_module, buf, (unsigned long)st.st_size, argv[3]);
	} else if (argc == 3 && !strcmp(argv[1], "delete")) {
		rc = syscall(SYS_delete_module, argv[2], O_NONBLOCK);
	} else {
		fprintf(stderr, "usage: modcall finit|init FILE PARAMS | delete NAME\n");
		return 2;
	}
	printf("%ld %s\n", rc, rc ? strerrorname_np(errno) : "0");
	return 0;
}
