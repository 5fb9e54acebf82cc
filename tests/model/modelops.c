/* modelops: the model-based checker's executor in the nfsvm guest (tests/model/guest.py).
 *
 * The guest has busybox and no Python, and busybox's tools hide the errno (and `mv` moves into
 * an existing directory instead of renaming onto it), so each op is one syscall here and its
 * errno is printed by name. Built with `gcc -static` on the host; the same binary also runs on
 * the host against a local directory (a test of this executor against tests/model/localfs.py).
 *
 *   modelops run ROOT0 ROOT1 BATCH   for each "begin ID" block: mkdir ROOT0/sID, run its ops
 *                                    (client 0 under ROOT0/sID, client 1 under ROOT1/sID)
 *                                    and print "R ID I ok [payload]" or "R ID I err ENAME"
 *   modelops dump ROOT BATCH         print every entry under ROOT/sID:
 *                                    "T ID PATH KIND PERM SIZE NLINK CONTENT"
 *
 * BATCH lines: "begin ID", "KIND CLIENT PATH PATH2 N1 N2 N3" ("-" for no path2), "end".
 * File bytes: pattern(seed, offset), the same LCG table as tests/model/ops.py.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PERIOD 65521
#define MAXOPS 4096

static const struct { int no; const char *name; } ERRNAMES[] = {
    {EPERM, "EPERM"}, {ENOENT, "ENOENT"}, {EIO, "EIO"}, {ENXIO, "ENXIO"}, {EBADF, "EBADF"},
    {EAGAIN, "EAGAIN"}, {ENOMEM, "ENOMEM"}, {EACCES, "EACCES"}, {EFAULT, "EFAULT"},
    {EBUSY, "EBUSY"}, {EEXIST, "EEXIST"}, {EXDEV, "EXDEV"}, {ENOTDIR, "ENOTDIR"},
    {EISDIR, "EISDIR"}, {EINVAL, "EINVAL"}, {EFBIG, "EFBIG"}, {ENOSPC, "ENOSPC"},
    {EROFS, "EROFS"}, {EMLINK, "EMLINK"}, {ENAMETOOLONG, "ENAMETOOLONG"},
    {ENOTEMPTY, "ENOTEMPTY"}, {ELOOP, "ELOOP"}, {ESTALE, "ESTALE"}, {EOPNOTSUPP, "EOPNOTSUPP"},
    {EDQUOT, "EDQUOT"}, {ETXTBSY, "ETXTBSY"}, {EREMOTEIO, "EREMOTEIO"}, {ETIMEDOUT, "ETIMEDOUT"},
};

static const char *errname(int e) {
    static char buf[32];
    for (size_t i = 0; i < sizeof ERRNAMES / sizeof ERRNAMES[0]; i++)
        if (ERRNAMES[i].no == e) return ERRNAMES[i].name;
    snprintf(buf, sizeof buf, "E%d", e);
    return buf;
}

static uint32_t crc_table[256];
static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}
static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n--) crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static unsigned char *pattern_table(int seed) {
    static unsigned char tables[8][PERIOD];
    static int made[8];
    int slot = seed & 7;
    if (made[slot] != seed + 1) {
        uint32_t x = ((uint32_t)seed * 7919u + 1u) & 0x7FFFFFFFu;
        for (int i = 0; i < PERIOD; i++) {
            x = (x * 1103515245u + 12345u) & 0x7FFFFFFFu;
            tables[slot][i] = (x >> 16) & 0xFF;
        }
        made[slot] = seed + 1;
    }
    return tables[slot];
}

struct op { char kind[16]; int client; char path[256], path2[256]; long n1, n2, n3; };

static char roots[2][512];
static void full(char *out, size_t cap, int client, const char *rel) {
    snprintf(out, cap, "%s/%s", roots[client], rel);
}

/* Each op_* returns 0 or -errno, and prints its payload (after "ok") itself. */
static int op_write(const char *p, const struct op *o) {
    int fd = open(p, O_WRONLY);
    if (fd < 0) return -errno;
    unsigned char *t = pattern_table((int)o->n3);
    unsigned char buf[65536];
    long done = 0;
    int rc = 0;
    while (done < o->n2 && rc == 0) {
        long n = o->n2 - done < (long)sizeof buf ? o->n2 - done : (long)sizeof buf;
        for (long i = 0; i < n; i++) buf[i] = t[(o->n1 + done + i) % PERIOD];
        ssize_t w = pwrite(fd, buf, n, o->n1 + done);
        if (w < 0) rc = -errno; else done += w;
    }
    if (close(fd) < 0 && rc == 0) rc = -errno;  /* NFS reports a failed flush at close */
    return rc;
}

static int op_read(const char *p, const struct op *o, char *payload, size_t cap) {
    int fd = open(p, O_RDONLY);
    if (fd < 0) return -errno;
    unsigned char buf[65536];
    long done = 0;
    uint32_t crc = 0;
    int rc = 0;
    while (done < o->n2) {
        long want = o->n2 - done < (long)sizeof buf ? o->n2 - done : (long)sizeof buf;
        ssize_t r = pread(fd, buf, want, o->n1 + done);
        if (r < 0) { rc = -errno; break; }
        if (r == 0) break;
        crc = crc32_update(crc, buf, r);
        done += r;
    }
    close(fd);
    if (rc == 0) snprintf(payload, cap, " %ld %u", done, crc);
    return rc;
}

static const char *kind_of(mode_t m) {
    return S_ISREG(m) ? "file" : S_ISDIR(m) ? "dir" : S_ISLNK(m) ? "symlink" : "other";
}

static int op_list(const char *p, char *payload, size_t cap) {
    DIR *d = opendir(p);
    if (!d) return -errno;
    size_t used = 0;
    struct dirent *e;
    payload[0] = 0;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        used += snprintf(payload + used, used < cap ? cap - used : 0, " %s", e->d_name);
    }
    int rc = errno ? -errno : 0;
    closedir(d);
    return rc;
}

static int apply(const struct op *o, char *payload, size_t cap) {
    char p[1024], p2[1024];
    struct stat st;
    full(p, sizeof p, o->client, o->path);
    full(p2, sizeof p2, o->client, o->path2);
    payload[0] = 0;
    const char *k = o->kind;
    if (!strcmp(k, "create")) {
        int fd = open(p, O_CREAT | O_EXCL | O_WRONLY, (mode_t)o->n1);
        if (fd < 0) return -errno;
        return close(fd) < 0 ? -errno : 0;
    }
    if (!strcmp(k, "write")) return op_write(p, o);
    if (!strcmp(k, "populate")) {  /* p000 ... as tests/model/ops.py's populate_names */
        for (long i = 0; i < o->n1; i++) {
            char f[1100];
            snprintf(f, sizeof f, "%s/p%03ld", p, i);
            int fd = open(f, O_CREAT | O_EXCL | O_WRONLY, 0644);
            if (fd < 0) return -errno;
            if (close(fd) < 0) return -errno;
        }
        return 0;
    }
    if (!strcmp(k, "read")) return op_read(p, o, payload, cap);
    if (!strcmp(k, "truncate")) return truncate(p, o->n1) < 0 ? -errno : 0;
    if (!strcmp(k, "mkdir")) return mkdir(p, (mode_t)o->n1) < 0 ? -errno : 0;
    if (!strcmp(k, "rmdir")) return rmdir(p) < 0 ? -errno : 0;
    if (!strcmp(k, "unlink")) return unlink(p) < 0 ? -errno : 0;
    if (!strcmp(k, "rename")) return rename(p, p2) < 0 ? -errno : 0;
    if (!strcmp(k, "link")) return link(p, p2) < 0 ? -errno : 0;
    if (!strcmp(k, "symlink")) return symlink(o->path2, p) < 0 ? -errno : 0;
    if (!strcmp(k, "chmod")) return chmod(p, (mode_t)o->n1) < 0 ? -errno : 0;
    if (!strcmp(k, "readlink")) {
        char t[512];
        ssize_t n = readlink(p, t, sizeof t - 1);
        if (n < 0) return -errno;
        t[n] = 0;
        snprintf(payload, cap, " %s", t);
        return 0;
    }
    if (!strcmp(k, "stat")) {
        if (lstat(p, &st) < 0) return -errno;
        snprintf(payload, cap, " %s %o %lld %ld", kind_of(st.st_mode), st.st_mode & 07777,
                 (long long)st.st_size, (long)st.st_nlink);
        return 0;
    }
    if (!strcmp(k, "list")) return op_list(p, payload, cap);
    fprintf(stderr, "modelops: unknown op %s\n", k);
    exit(2);
}

static int parse_op(const char *line, struct op *o) {
    memset(o, 0, sizeof *o);
    int n = sscanf(line, "%15s %d %255s %255s %ld %ld %ld", o->kind, &o->client, o->path,
                   o->path2, &o->n1, &o->n2, &o->n3);
    if (n != 7 || o->client < 0 || o->client > 1) return -1;
    if (!strcmp(o->path2, "-")) o->path2[0] = 0;
    return 0;
}

static void dump_tree(const char *id, const char *base, const char *rel) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s%s%s", base, *rel ? "/" : "", rel);
    DIR *d = opendir(dir);
    if (!d) { printf("T %s ? error %s\n", id, errname(errno)); return; }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char r[1024], p[2048];
        struct stat st;
        snprintf(r, sizeof r, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        snprintf(p, sizeof p, "%s/%s", base, r);
        if (lstat(p, &st) < 0) { printf("T %s %s error %s\n", id, r, errname(errno)); continue; }
        char content[600] = "-";
        if (S_ISREG(st.st_mode)) {
            struct op o = {.n1 = 0, .n2 = st.st_size};
            char pl[64];
            if (op_read(p, &o, pl, sizeof pl) == 0) {
                long len; unsigned crc;
                sscanf(pl, "%ld %u", &len, &crc);
                snprintf(content, sizeof content, "%u", crc);
            } else snprintf(content, sizeof content, "unreadable");
        } else if (S_ISLNK(st.st_mode)) {
            ssize_t n = readlink(p, content, sizeof content - 1);
            content[n < 0 ? 0 : n] = 0;
        }
        printf("T %s %s %s %o %lld %ld %s\n", id, r, kind_of(st.st_mode), st.st_mode & 07777,
               (long long)st.st_size, (long)st.st_nlink, content);
        if (S_ISDIR(st.st_mode)) dump_tree(id, base, r);
    }
    closedir(d);
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: modelops run R0 R1 BATCH | dump ROOT BATCH\n"); return 2; }
    int run = !strcmp(argv[1], "run");
    if (run && argc != 5) return 2;
    const char *batch = argv[run ? 4 : 3];
    FILE *f = fopen(batch, "r");
    if (!f) { perror(batch); return 2; }
    umask(0);
    crc_init();
    setvbuf(stdout, NULL, _IOLBF, 0);
    char line[1024], id[64] = "", payload[8192];
    int i = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "begin ", 6)) {
            snprintf(id, sizeof id, "%s", line + 6);
            i = 0;
            if (run) {
                snprintf(roots[0], sizeof roots[0], "%s/s%s", argv[2], id);
                snprintf(roots[1], sizeof roots[1], "%s/s%s", argv[3], id);
                if (mkdir(roots[0], 0755) < 0) { printf("X %s mkdir %s\n", id, errname(errno)); return 1; }
            } else {
                char base[600];
                snprintf(base, sizeof base, "%s/s%s", argv[2], id);
                dump_tree(id, base, "");
            }
        } else if (!strcmp(line, "end")) {
            printf("D %s\n", id);
        } else if (run && *line) {
            struct op o;
            if (parse_op(line, &o) < 0) { fprintf(stderr, "bad op line: %s\n", line); return 2; }
            int rc = apply(&o, payload, sizeof payload);
            if (rc == 0) printf("R %s %d ok%s\n", id, i, payload);
            else printf("R %s %d err %s\n", id, i, errname(-rc));
            i++;
        }
    }
    fclose(f);
    return 0;
}
