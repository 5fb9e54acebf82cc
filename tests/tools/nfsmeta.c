/* nfsmeta: metadata workloads through libnfs (a client we did not write).
 *
 *   nfsmeta URL mkfiles DIR N          mkdir DIR, create N empty files DIR/fNNNNNN
 *   nfsmeta URL rmfiles DIR N          remove DIR/fNNNNNN (made by mkfiles), then DIR
 *   nfsmeta URL meta DIR N [BYTES]     create (+write BYTES) N files, stat each, remove each;
 *                                      then rmdir DIR
 *   nfsmeta URL count DIR              count entries of DIR (without . and ..)
 *   nfsmeta URL mkdir DIR              create the directory DIR (libnfs-utils has no nfs-mkdir)
 *   nfsmeta URL ns DIR N               mkdir DIR; create N empty files, stat each, rename each
 *                                      (fN -> rN), remove each; then rmdir DIR. Each phase line
 *                                      also has per-call latency percentiles "p50_us", "p99_us"
 *                                      and the phase's "start" and "end" on CLOCK_MONOTONIC
 *                                      (one clock for all clients on the host).
 *
 * URL names the export, e.g. nfs://127.0.0.1/?nfsport=P&mountport=P&version=3; DIR is a
 * path inside it ("/d"). Each phase prints one JSON line: {"phase":..,"ops":..,"seconds":..}.
 * One synchronous request at a time: the figures measure per-request latency of the server.
 * Exit 0 on success; on the first failed call, prints the call, the path and libnfs's error
 * on stderr and exits 1.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <nfsc/libnfs.h>

static struct nfs_context *nfs;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void check(int rc, const char *call, const char *path) {
    if (rc < 0) {
        fprintf(stderr, "nfsmeta: %s(%s) failed: %s\n", call, path, nfs_get_error(nfs));
        exit(1);
    }
}

static void report(const char *phase, long ops, double t0) {
    printf("{\"phase\": \"%s\", \"ops\": %ld, \"seconds\": %.6f}\n", phase, ops, now() - t0);
    fflush(stdout);
}

static void name(char *buf, size_t cap, const char *dir, long i) {
    snprintf(buf, cap, "%s/f%06ld", dir, i);
}

static void create_files(const char *dir, long n, long bytes) {
    char path[4096];
    char *data = calloc(1, bytes > 0 ? (size_t)bytes : 1);
    memset(data, 'x', bytes > 0 ? (size_t)bytes : 1);
    for (long i = 0; i < n; i++) {
        struct nfsfh *fh;
        name(path, sizeof path, dir, i);
        check(nfs_creat(nfs, path, 0644, &fh), "creat", path);
        if (bytes > 0) {
            int w = nfs_write(nfs, fh, (uint64_t)bytes, data);
            check(w, "write", path);
            if (w != bytes) { fprintf(stderr, "nfsmeta: short write %s\n", path); exit(1); }
        }
        check(nfs_close(nfs, fh), "close", path);
    }
    free(data);
}

static void stat_files(const char *dir, long n, long bytes) {
    char path[4096];
    for (long i = 0; i < n; i++) {
        struct nfs_stat_64 st;
        name(path, sizeof path, dir, i);
        check(nfs_stat64(nfs, path, &st), "stat64", path);
        if ((long)st.nfs_size != bytes) {
            fprintf(stderr, "nfsmeta: %s has size %llu, wrote %ld\n", path,
                    (unsigned long long)st.nfs_size, bytes);
            exit(1);
        }
    }
}

static void remove_files(const char *dir, long n) {
    char path[4096];
    for (long i = 0; i < n; i++) {
        name(path, sizeof path, dir, i);
        check(nfs_unlink(nfs, path), "unlink", path);
    }
}

/* Per-call latencies of one phase, in microseconds. */
static double *lat;
static long nlat;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report_lat(const char *phase, long ops, double t0) {
    qsort(lat, (size_t)nlat, sizeof *lat, cmp_double);
    double p50 = nlat ? lat[nlat / 2] : 0, p99 = nlat ? lat[(nlat * 99) / 100] : 0;
    double t1 = now();
    printf("{\"phase\": \"%s\", \"ops\": %ld, \"seconds\": %.6f, \"p50_us\": %.1f, "
           "\"p99_us\": %.1f, \"start\": %.6f, \"end\": %.6f}\n", phase, ops, t1 - t0, p50,
           p99, t0, t1);
    fflush(stdout);
    nlat = 0;
}

static void ns_phases(const char *dir, long n) {
    char path[4096], path2[4096];
    double t0, t;
    lat = calloc((size_t)(n > 0 ? n : 1), sizeof *lat);
    t0 = now();
    for (long i = 0; i < n; i++) {
        struct nfsfh *fh;
        name(path, sizeof path, dir, i);
        t = now();
        check(nfs_creat(nfs, path, 0644, &fh), "creat", path);
        lat[nlat++] = (now() - t) * 1e6;
        check(nfs_close(nfs, fh), "close", path);
    }
    report_lat("create", n, t0);
    t0 = now();
    for (long i = 0; i < n; i++) {
        struct nfs_stat_64 st;
        name(path, sizeof path, dir, i);
        t = now();
        check(nfs_stat64(nfs, path, &st), "stat64", path);
        lat[nlat++] = (now() - t) * 1e6;
    }
    report_lat("stat", n, t0);
    t0 = now();
    for (long i = 0; i < n; i++) {
        name(path, sizeof path, dir, i);
        snprintf(path2, sizeof path2, "%s/r%06ld", dir, i);
        t = now();
        check(nfs_rename(nfs, path, path2), "rename", path);
        lat[nlat++] = (now() - t) * 1e6;
    }
    report_lat("rename", n, t0);
    t0 = now();
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/r%06ld", dir, i);
        t = now();
        check(nfs_unlink(nfs, path), "unlink", path);
        lat[nlat++] = (now() - t) * 1e6;
    }
    report_lat("remove", n, t0);
    free(lat);
}

static long count(const char *dir) {
    struct nfsdir *d;
    struct nfsdirent *e;
    long c = 0;
    check(nfs_opendir(nfs, dir, &d), "opendir", dir);
    while ((e = nfs_readdir(nfs, d)) != NULL)
        if (strcmp(e->name, ".") != 0 && strcmp(e->name, "..") != 0) c++;
    nfs_closedir(nfs, d);
    return c;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: nfsmeta URL mkfiles|rmfiles|meta|ns|count|mkdir DIR [N [BYTES]]\n");
        return 2;
    }
    const char *op = argv[2], *dir = argv[3];
    long n = argc > 4 ? atol(argv[4]) : 0, bytes = argc > 5 ? atol(argv[5]) : 0;
    nfs = nfs_init_context();
    if (!nfs) { fprintf(stderr, "nfsmeta: nfs_init_context failed\n"); return 1; }
    nfs_set_timeout(nfs, 60000);
    struct nfs_url *url = nfs_parse_url_dir(nfs, argv[1]);
    if (!url) { fprintf(stderr, "nfsmeta: bad URL: %s\n", nfs_get_error(nfs)); return 1; }
    double t0 = now();
    check(nfs_mount(nfs, url->server, url->path), "mount", url->path);
    report("mount", 1, t0);
    if (strcmp(op, "count") == 0) {
        t0 = now();
        long c = count(dir);
        printf("{\"phase\": \"count\", \"entries\": %ld, \"seconds\": %.6f}\n", c, now() - t0);
    } else if (strcmp(op, "mkdir") == 0) {
        t0 = now();
        check(nfs_mkdir(nfs, dir), "mkdir", dir);
        report("mkdir", 1, t0);
    } else if (strcmp(op, "mkfiles") == 0) {
        check(nfs_mkdir(nfs, dir), "mkdir", dir);
        t0 = now();
        create_files(dir, n, 0);
        report("create", n, t0);
    } else if (strcmp(op, "rmfiles") == 0) {
        t0 = now();
        remove_files(dir, n);
        report("remove", n, t0);
        check(nfs_rmdir(nfs, dir), "rmdir", dir);
    } else if (strcmp(op, "ns") == 0) {
        check(nfs_mkdir(nfs, dir), "mkdir", dir);
        ns_phases(dir, n);
        long left = count(dir);
        if (left != 0) { fprintf(stderr, "nfsmeta: %ld entries left in %s\n", left, dir); return 1; }
        check(nfs_rmdir(nfs, dir), "rmdir", dir);
    } else if (strcmp(op, "meta") == 0) {
        check(nfs_mkdir(nfs, dir), "mkdir", dir);
        t0 = now();
        create_files(dir, n, bytes);
        report("create", n, t0);
        t0 = now();
        stat_files(dir, n, bytes);
        report("stat", n, t0);
        t0 = now();
        remove_files(dir, n);
        report("remove", n, t0);
        long left = count(dir);
        if (left != 0) { fprintf(stderr, "nfsmeta: %ld entries left in %s\n", left, dir); return 1; }
        check(nfs_rmdir(nfs, dir), "rmdir", dir);
    } else {
        fprintf(stderr, "nfsmeta: unknown operation %s\n", op);
        return 2;
    }
    nfs_destroy_url(url);
    nfs_destroy_context(nfs);
    return 0;
}
