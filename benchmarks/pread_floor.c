/* pread_floor.c -- the least a fresh process can spend reading records out of a
 * segment file with system calls: bench_store.py's reference for the store's
 * first gather (docs/architecture.md, "What a fresh process's first lookup+gather
 * spends").  bench_store.py builds and runs it; by hand:
 *
 *   gcc -O2 -o /tmp/pread_floor benchmarks/pread_floor.c
 *   /tmp/pread_floor SEGMENT [mmap] < PLACES
 *
 * PLACES: "n" then n lines "offset length" (the first call's records), then "n"
 * and n more (a later call's).  Lengths are whole records (header, payload,
 * padding) as parse_record walks them.  The program does what the store does
 * around its first gather and nothing else:
 *   1. reads the whole file front to back in 256 KiB preads (the store's open
 *      scans its segments so, which brings evicted pages back into the page cache);
 *   2. reads the first call's records, sorted by offset, one preadv each: the
 *      128-byte header into a scratch buffer, the rest into the record's row of
 *      a zeroed destination, its pages already faulted in as torch.zeros' are (the
 *      store reads so, then checks the header);
 *   3. the later call's records the same way (records this process never read),
 *      then that call again 100 times (the minimum: the warm call).
 * Prints the three times in seconds: first call, first touch of other records,
 * warm.  No checksums, no lookups, no Python: what is left of the store's first
 * call against its warm one when everything the store adds is taken away.
 * With "mmap", step 1 also maps the file (MAP_POPULATE: every page table entry
 * made before the timing) and the calls memcpy each record's payload out of the
 * mapping instead: the design the store turned down (a file cut short under a
 * mapping raises SIGBUS in the reader; docs/architecture.md), for comparison. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define HEADER 128
#define SCAN_WINDOW (256 * 1024)

typedef struct {
    long offset, length;
} place;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int by_offset(const void *a, const void *b)
{
    long x = ((const place *)a)->offset, y = ((const place *)b)->offset;
    return (x > y) - (x < y);
}

static place *read_places(size_t *n)
{
    if (scanf("%zu", n) != 1 || *n == 0)
        return NULL;
    place *p = calloc(*n, sizeof(*p));
    for (size_t i = 0; p != NULL && i < *n; i++)
        if (scanf("%ld %ld", &p[i].offset, &p[i].length) != 2 || p[i].length <= HEADER) {
            free(p);
            return NULL;
        }
    if (p != NULL)
        qsort(p, *n, sizeof(*p), by_offset);
    return p;
}

/* One call: every record's header into hb, its payload and padding into its row
 * (or with a mapping, the payload and padding copied out of it). */
static int call(int fd, const char *map, const place *p, size_t n, long row_bytes, char *dest)
{
    char hb[HEADER];
    if (map != NULL) {
        for (size_t i = 0; i < n; i++)
            memcpy(dest + (long)i * row_bytes, map + p[i].offset + HEADER,
                   (size_t)(p[i].length - HEADER));
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        struct iovec iov[2] = {{hb, HEADER}, {dest + (long)i * row_bytes,
                                              (size_t)(p[i].length - HEADER)}};
        if (preadv(fd, iov, 2, p[i].offset) != p[i].length)
            return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "mmap") != 0)) {
        fprintf(stderr, "usage: pread_floor SEGMENT [mmap] < PLACES\n");
        return 2;
    }
    size_t na, nb;
    place *a = read_places(&na), *b = a ? read_places(&nb) : NULL;
    if (a == NULL || b == NULL) {
        fprintf(stderr, "pread_floor: PLACES must be two lists of 'offset length' lines\n");
        return 2;
    }
    long row = 0;
    for (size_t i = 0; i < na; i++)
        row = a[i].length > row ? a[i].length : row;
    for (size_t i = 0; i < nb; i++)
        row = b[i].length > row ? b[i].length : row;
    row -= HEADER;
    size_t rows = na > nb ? na : nb;
    char *dest = calloc(rows, (size_t)row), *window = malloc(SCAN_WINDOW);
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (dest == NULL || window == NULL || fd < 0) {
        perror("pread_floor");
        return 1;
    }
    memset(dest, 0, rows * (size_t)row); /* calloc's fresh pages are not mapped yet */
    off_t size = 0;
    for (;;) {
        ssize_t r = pread(fd, window, SCAN_WINDOW, size);
        if (r <= 0)
            break;
        size += r;
    }
    for (size_t i = 0; i < na + nb; i++) {
        const place *q = i < na ? &a[i] : &b[i - na];
        if (q->offset < 0 || q->offset + q->length > size) {
            fprintf(stderr, "pread_floor: a record lies past the end of %s\n", argv[1]);
            return 1;
        }
    }
    char *map = NULL;
    if (argc == 3) {
        map = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
        if (map == MAP_FAILED) {
            perror("pread_floor: mmap");
            return 1;
        }
    }
    double t0 = now();
    int bad = call(fd, map, a, na, row, dest);
    double first = now() - t0;
    t0 = now();
    bad |= call(fd, map, b, nb, row, dest);
    double touch = now() - t0, warm = 1e9;
    for (int k = 0; k < 100; k++) {
        t0 = now();
        bad |= call(fd, map, b, nb, row, dest);
        double t = now() - t0;
        warm = t < warm ? t : warm;
    }
    if (bad) {
        fprintf(stderr, "pread_floor: a read of %s failed or came up short\n", argv[1]);
        return 1;
    }
    printf("%.9f %.9f %.9f\n", first, touch, warm);
    return 0;
}
