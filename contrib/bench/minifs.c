/*
 * minifs: the floor that contrib/bench.py measures livefs against.
 *
 * A tiny libfuse3 high-level filesystem, single-threaded, that serves small
 * read-write files at the relative paths given on the command line (every
 * prefix becomes a directory), so that a file sits at the same path depth as
 * the livefs file it is compared with.  Kernel caching is libfuse's default
 * (1 s entry and attribute timeouts, no keep_cache); O_TRUNC is handled in
 * open (atomic_o_trunc) so `echo >` costs no extra SETATTR.  It does only
 * what a FUSE filesystem must, so whatever livefs costs above it is livefs's.
 *
 * Usage: minifs [-d] MOUNTPOINT PATH...   (-d: libfuse's request trace on stderr)
 * Build: cc -O2 -Wall minifs.c $(pkg-config --cflags --libs fuse3) -o minifs
 */

#define FUSE_USE_VERSION 31

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_NODES 64
#define FILE_CAP 4096

struct node {
	char path[256]; /* absolute within the mount: "/a/b/c" */
	int is_dir;
	size_t size;
	char data[FILE_CAP];
};

static struct node nodes[MAX_NODES];
static int n_nodes;

static struct node *find(const char *path)
{
	for (int i = 0; i < n_nodes; i++)
		if (strcmp(nodes[i].path, path) == 0)
			return &nodes[i];
	return NULL;
}

/* Add PATH (absolute) as a directory or file unless it is there already. */
static int add(const char *path, int is_dir)
{
	struct node *n = find(path);

	if (n != NULL)
		return n->is_dir == is_dir ? 0 : -1;
	if (n_nodes == MAX_NODES || strlen(path) >= sizeof(n->path))
		return -1;
	n = &nodes[n_nodes++];
	snprintf(n->path, sizeof(n->path), "%s", path);
	n->is_dir = is_dir;
	if (!is_dir) {
		memcpy(n->data, "0\n", 2);
		n->size = 2;
	}
	return 0;
}

/* A relative file path: each prefix a directory, the whole a file. */
static int add_file(const char *rel)
{
	char path[256];
	int len = snprintf(path, sizeof(path), "/%s", rel);

	if (len <= 1 || len >= (int)sizeof(path) || path[len - 1] == '/')
		return -1;
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (add(path, 1) != 0)
			return -1;
		*p = '/';
	}
	return add(path, 0);
}

/* The directory part of PATH ("/" for a top-level entry) in PARENT. */
static void parent_of(const char *path, char *parent, size_t cap)
{
	const char *slash = strrchr(path, '/');
	size_t len = slash == path ? 1 : (size_t)(slash - path);

	snprintf(parent, cap, "%.*s", (int)len, path);
}

static void *mini_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)cfg; /* libfuse's default timeouts: the "default kernel caching" */
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	return NULL;
}

static int mini_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct node *n = find(path);

	(void)fi;
	memset(st, 0, sizeof(*st));
	if (strcmp(path, "/") == 0 || (n != NULL && n->is_dir)) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		return 0;
	}
	if (n == NULL)
		return -ENOENT;
	st->st_mode = S_IFREG | 0644;
	st->st_nlink = 1;
	st->st_size = (off_t)n->size;
	return 0;
}

static int mini_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
			struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	char parent[256];

	(void)off;
	(void)fi;
	(void)flags;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	for (int i = 0; i < n_nodes; i++) {
		parent_of(nodes[i].path, parent, sizeof(parent));
		if (strcmp(parent, path) == 0)
			fill(buf, strrchr(nodes[i].path, '/') + 1, NULL, 0, 0);
	}
	return 0;
}

static int mini_open(const char *path, struct fuse_file_info *fi)
{
	struct node *n = find(path);

	if (n == NULL)
		return -ENOENT;
	if (n->is_dir)
		return -EISDIR;
	if (fi->flags & O_TRUNC)
		n->size = 0;
	return 0;
}

static int mini_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct node *n = find(path);

	(void)fi;
	if (n == NULL)
		return -ENOENT;
	if ((size_t)off >= n->size)
		return 0;
	if (size > n->size - (size_t)off)
		size = n->size - (size_t)off;
	memcpy(buf, n->data + off, size);
	return (int)size;
}

static int mini_write(const char *path, const char *buf, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	struct node *n = find(path);

	(void)fi;
	if (n == NULL)
		return -ENOENT;
	if ((size_t)off > FILE_CAP || size > FILE_CAP - (size_t)off)
		return -EFBIG;
	memcpy(n->data + off, buf, size);
	if ((size_t)off + size > n->size)
		n->size = (size_t)off + size;
	return (int)size;
}

/* Only reached without atomic_o_trunc, or for truncate(2) itself. */
static int mini_truncate(const char *path, off_t len, struct fuse_file_info *fi)
{
	struct node *n = find(path);

	(void)fi;
	if (n == NULL)
		return -ENOENT;
	if (len < 0 || len > FILE_CAP)
		return -EINVAL;
	n->size = (size_t)len;
	return 0;
}

static const struct fuse_operations ops = {
	.init = mini_init,
	.getattr = mini_getattr,
	.readdir = mini_readdir,
	.open = mini_open,
	.read = mini_read,
	.write = mini_write,
	.truncate = mini_truncate,
};

int main(int argc, char **argv)
{
	int debug = argc > 1 && strcmp(argv[1], "-d") == 0;
	char *fuse_argv[6];
	int fuse_argc = 0;

	if (argc - debug < 3) {
		fprintf(stderr, "usage: %s [-d] MOUNTPOINT PATH...\n", argv[0]);
		return 2;
	}
	for (int i = 2 + debug; i < argc; i++) {
		if (add_file(argv[i]) != 0) {
			fprintf(stderr, "%s: cannot serve %s\n", argv[0], argv[i]);
			return 2;
		}
	}
	fuse_argv[fuse_argc++] = argv[0];
	fuse_argv[fuse_argc++] = "-f"; /* foreground: the benchmark owns the process */
	fuse_argv[fuse_argc++] = "-s"; /* single-threaded */
	if (debug)
		fuse_argv[fuse_argc++] = "-d";
	fuse_argv[fuse_argc++] = argv[1 + debug];
	fuse_argv[fuse_argc] = NULL;
	return fuse_main(fuse_argc, fuse_argv, &ops, NULL);
}
