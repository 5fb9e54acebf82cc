/* nfsread: read whole files through libnfs (a client we did not write), for the model-startup
 * benchmark's objcache rows, the same way its Python reader reads a mounted tree.
 *
 *   nfsread URL walk DIR   print "SIZE PATH" for every regular file under DIR (recursive;
 *                          PATH relative to DIR), then "." alone on a line
 *   nfsread URL sum DIR    read relative paths from stdin, one per line; for each read the
 *                          file whole, hash its bytes as they come (OpenSSL's sha256, which
 *                          Python's hashlib calls) and write "SIZE HEX\n", or "E message\n":
 *                          the work a reader of a mounted file system does per file (read,
 *                          hash, in one process), not bytes piped to another process
 *
 * URL names the export, e.g. nfs://127.0.0.1/?nfsport=P&mountport=P&version=3. Reads are
 * nfs_pread calls of up to BUF_BYTES at consecutive offsets up to the size fstat gave, as the
 * kernel reads up to the i_size it holds (libnfs splits a pread into READs of rsize; asking
 * for BUF_BYTES at the end of a small file would send READs past its end).
 * Exit 0 at end of stdin; 1 when the mount fails.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <nfsc/libnfs.h>
#include <openssl/evp.h>

#define BUF_BYTES (4 << 20)
#define PATH_MAX_BYTES 4096

static struct nfs_context *nfs;

static void walk(const char *root, const char *rel) {
    char dir[2 * PATH_MAX_BYTES + 2];
    snprintf(dir, sizeof dir, "%s%s%s", root, *rel ? "/" : "", rel);
    struct nfsdir *d;
    if (nfs_opendir(nfs, dir, &d) < 0) {
        fprintf(stderr, "nfsread: opendir(%s): %s\n", dir, nfs_get_error(nfs));
        exit(1);
    }
    struct nfsdirent *e;
    while ((e = nfs_readdir(nfs, d)) != NULL) {
        if (!strcmp(e->name, ".") || !strcmp(e->name, ".."))
            continue;
        char child[PATH_MAX_BYTES + 256];
        snprintf(child, sizeof child, "%s%s%s", rel, *rel ? "/" : "", e->name);
        if ((e->mode & S_IFMT) == S_IFDIR)
            walk(root, child);
        else if ((e->mode & S_IFMT) == S_IFREG)
            printf("%llu %s\n", (unsigned long long)e->size, child);
    }
    nfs_closedir(nfs, d);
}

static void sum_one(const char *root, const char *rel, char *buf, EVP_MD_CTX *md) {
    char path[2 * PATH_MAX_BYTES + 2];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    struct nfsfh *fh;
    struct nfs_stat_64 st;
    if (nfs_open(nfs, path, O_RDONLY, &fh) < 0) {
        printf("E open(%s): %s\n", path, nfs_get_error(nfs));
        return;
    }
    if (nfs_fstat64(nfs, fh, &st) < 0) {
        printf("E fstat(%s): %s\n", path, nfs_get_error(nfs));
        nfs_close(nfs, fh);
        return;
    }
    if (!EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
        fprintf(stderr, "nfsread: sha256 init failed\n");
        exit(1);
    }
    uint64_t off = 0;
    while (off < st.nfs_size) {
        uint64_t want = st.nfs_size - off < BUF_BYTES ? st.nfs_size - off : BUF_BYTES;
        int n = nfs_pread(nfs, fh, off, want, buf);
        if (n <= 0) {  /* the size was promised: fail loudly, the reader sees a short file */
            fprintf(stderr, "nfsread: pread(%s, %llu): %s\n", path, (unsigned long long)off,
                    n < 0 ? nfs_get_error(nfs) : "unexpected end of file");
            exit(1);
        }
        EVP_DigestUpdate(md, buf, (size_t)n);
        off += (uint64_t)n;
    }
    nfs_close(nfs, fh);
    unsigned char sum[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(md, sum, &len);
    printf("%llu ", (unsigned long long)st.nfs_size);
    for (unsigned int i = 0; i < len; i++)
        printf("%02x", sum[i]);
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: nfsread URL walk|sum DIR\n");
        return 2;
    }
    nfs = nfs_init_context();
    if (!nfs) { fprintf(stderr, "nfsread: nfs_init_context failed\n"); return 1; }
    nfs_set_timeout(nfs, 120000);
    struct nfs_url *url = nfs_parse_url_dir(nfs, argv[1]);
    if (!url) { fprintf(stderr, "nfsread: bad URL: %s\n", nfs_get_error(nfs)); return 1; }
    if (nfs_mount(nfs, url->server, url->path) < 0) {
        fprintf(stderr, "nfsread: mount(%s): %s\n", url->path, nfs_get_error(nfs));
        return 1;
    }
    const char *root = argv[3];
    if (!strcmp(argv[2], "walk")) {
        walk(root, "");
        printf(".\n");
    } else if (!strcmp(argv[2], "sum")) {
        char *buf = malloc(BUF_BYTES), line[PATH_MAX_BYTES];
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        if (!buf || !md) { fprintf(stderr, "nfsread: out of memory\n"); return 1; }
        while (fgets(line, sizeof line, stdin)) {
            line[strcspn(line, "\n")] = 0;
            sum_one(root, line, buf, md);
            fflush(stdout);
        }
        EVP_MD_CTX_free(md);
        free(buf);
    } else {
        fprintf(stderr, "nfsread: unknown operation %s\n", argv[2]);
        return 2;
    }
    fflush(stdout);
    nfs_destroy_url(url);
    nfs_destroy_context(nfs);
    return 0;
}
