/* store.h -- the append-only segment store (docs/format.md): public engine
 * interface.  Plain C, no Python.
 *
 * A store is one directory (one module key) holding one segment file per
 * writer, or, with no directory, an anonymous in-memory arena; both are read
 * through the same index.  Every function returns TC_STORE_OK or a negative
 * TC_STORE_E* code with a message in err.  A store may be used from several
 * threads at once (a reader-writer lock guards the index and the mappings). */
#ifndef TC_STORE_H
#define TC_STORE_H

#include <stddef.h>
#include <stdint.h>

/* Most dimensions an item (one row of a batch) may have (docs/format.md, section 3). */
#define TC_STORE_MAX_NDIM 8

enum {
    TC_STORE_OK = 0,
    TC_STORE_EARG = -1,      /* bad argument from the caller */
    TC_STORE_EIO = -2,       /* the directory could not be opened or created */
    TC_STORE_ENOMEM = -3,
    TC_STORE_EMISSING = -4,  /* a key is not in the store */
    TC_STORE_EMISMATCH = -5, /* a record's dtype or shape differs from the destination */
    TC_STORE_ECORRUPT = -6,  /* a record failed its payload checksum; it is now dropped */
    TC_STORE_EZSTD = -7,     /* libzstd is missing or failed */
    TC_STORE_ECLOSED = -8,
    TC_STORE_EPERM = -9,     /* strict: the directory is writable by others (no sticky bit) */
};

/* Faults: things that went wrong while serving or storing and that cost the
 * affected rows (they read as misses, or are not stored) instead of an error
 * code.  Counted per kind; tc_store_fault_take reports each kind's news once. */
enum {
    TC_FAULT_IO,        /* a read of a segment failed (EIO, ESTALE, ...) */
    TC_FAULT_SHORT,     /* a record ends past the end of its file: truncated under us */
    TC_FAULT_OPEN,      /* a segment could not be opened (EMFILE, ENFILE, EACCES, ...) */
    TC_FAULT_DIRECTORY, /* the directory could not be read (removed, EACCES, EMFILE) */
    TC_FAULT_NOMEM,     /* an allocation failed */
    TC_FAULT_CHANGED,   /* a record's header changed on disk after it was indexed */
    TC_FAULT_MISMATCH,  /* a stored record's dtype or item shape differs from dest's */
    TC_FAULT_ZSTD,      /* a record could not be decompressed */
    TC_FAULT_WRITE,     /* storing stopped after a write error (see tc_store_io_error) */
    TC_FAULT_INSECURE,  /* the directory or a parent we made is writable by others */
    TC_FAULT_FOREIGN,   /* a segment owned by another user was ignored */
    TC_FAULT_KINDS
};

/* The name of a fault kind ("io", "short_read", ...), as stats() spells it. */
const char *tc_store_fault_name(int kind);

typedef struct tc_store tc_store;

typedef struct {
    uint64_t max_bytes;    /* bytes this store may write (0: no limit) */
    int compress;          /* store records zstd-compressed when that is smaller */
    int zstd_level;
    int zstd_threads;
    uint64_t refresh_ms;   /* least time between two refreshes triggered by misses */
    /* Who may write what this store reads (docs/format.md, section 1). */
    int strict;            /* refuse (TC_STORE_EPERM) a directory that others may write */
    int allow_other_owners; /* read segments owned by other users (a team cache) */
    unsigned file_mode;    /* new segments (before the umask); 0 means 0666 */
    unsigned dir_mode;     /* directories created (before the umask); 0 means 0777 */
} tc_store_options;

typedef struct {
    uint64_t records;         /* keys indexed and not found corrupt */
    uint64_t segments;        /* segment files known (or arena chunks) */
    uint64_t corrupt;         /* records skipped: bad checksum, invalid header */
    uint64_t bytes_written;   /* record bytes this store appended */
    uint64_t records_written; /* records this store appended */
    uint64_t bytes_indexed;   /* raw (uncompressed) payload bytes of the indexed records */
    uint64_t refreshes;       /* scans for other writers' records */
    uint64_t readdirs;        /* refreshes that listed the directory */
    uint64_t idle_rechecks;   /* re-checks of idle segments (at most 32 per listing) */
    uint64_t skipped;         /* entries named like segments that are not regular files */
    uint64_t gone;            /* segments removed or replaced while indexed */
    uint64_t open_fds;        /* segment descriptors held now (the writer's included) */
    uint64_t faults[TC_FAULT_KINDS];
    int full;                 /* max_bytes was reached */
} tc_store_stats;

/* Opens (creating with parents) the directory `dir`, or an arena when dir is NULL,
 * and indexes every valid record already there. */
int tc_store_open(const char *dir, const tc_store_options *opt, tc_store **out, char *err,
                  size_t err_len);
/* Unmaps and closes everything; later calls return TC_STORE_ECLOSED.  Idempotent. */
void tc_store_close(tc_store *s);
/* Closes and frees. */
void tc_store_free(tc_store *s);

/* present[i] = 1 if keys[2i], keys[2i+1] is stored and its payload verifies.  When a
 * key misses, picks up other writers' records first (at most every refresh_ms).
 * A fault makes its rows read 0; only a closed store is an error. */
int tc_store_lookup(tc_store *s, const uint64_t *keys, size_t n, uint8_t *present, char *err,
                    size_t err_len);
/* The same, except that a record not checked yet counts as present: the
 * tc_store_gather that follows checks it at its first use, in its destination, and
 * does not serve it if it fails (the call path, csrc/call.c: a fresh process reads
 * each record once instead of once to verify it and again to serve it). */
int tc_store_lookup_unverified(tc_store *s, const uint64_t *keys, size_t n, uint8_t *present,
                               char *err, size_t err_len);
/* dtype word and item shape of the record of one key. */
int tc_store_entry_info(tc_store *s, const uint64_t key[2], uint64_t *dtype_word, int *ndim,
                        int64_t shape[TC_STORE_MAX_NDIM], char *err, size_t err_len);
/* Copies (decompressing) the record of each key into dest + i * item_bytes and
 * sets served[i] = 1, or sets served[i] = 0 where the key is absent, its record
 * fails a check, has another dtype word or item shape, or a fault hit it; the
 * bytes of such a row are unspecified.  Only bad arguments and a closed store
 * are errors. */
int tc_store_gather(tc_store *s, const uint64_t *keys, size_t n, uint64_t dtype_word, int ndim,
                    const int64_t *shape, uint8_t *dest, uint8_t *served, char *err,
                    size_t err_len);
/* Stores item i of src (items of this dtype and shape, compact, one after the other)
 * under keys[i], skipping keys already present.  *stored counts records appended.
 * Running out of max_bytes or an I/O error are not failures: they stop storing
 * (see tc_store_io_error and stats.full) and put returns TC_STORE_OK. */
int tc_store_put(tc_store *s, const uint64_t *keys, size_t n, uint64_t dtype_word, int ndim,
                 const int64_t *shape, const uint8_t *src, size_t *stored, char *err,
                 size_t err_len);
/* Scans for other writers' records now, listing the directory even if its mtime
 * is unchanged; *added counts newly indexed records.  Faults are counted, not
 * returned. */
int tc_store_refresh(tc_store *s, size_t *added, char *err, size_t err_len);
int tc_store_stats_get(tc_store *s, tc_store_stats *st);
typedef struct {
    uint64_t records;  /* records whose header and payload checksums verify */
    uint64_t corrupt;  /* records (or damaged ranges) that fail a check */
    uint64_t bytes;    /* record bytes (header, payload, padding) of the verified records */
    uint64_t torn;     /* segments ending in a record that runs past the end of the file */
    uint64_t segments; /* segment files (or arena chunks) walked */
} tc_store_verify_result;

/* Called for each damaged record: the segment's file name (NULL for an arena
 * chunk, then seg is its index), the record's offset, and what failed. */
typedef void (*tc_store_problem_fn)(void *ctx, const char *segment, size_t seg, uint64_t offset,
                                    const char *reason);

/* Picks up other writers' records, then walks every segment from offset 0 and
 * checks every record's header and payload checksum (docs/format.md, sections
 * 4 and 6), including records the index skips as duplicates.  Records whose
 * payload fails are dropped from the index.  `problem` may be NULL. */
int tc_store_verify(tc_store *s, tc_store_verify_result *r, tc_store_problem_fn problem,
                    void *ctx, char *err, size_t err_len);
/* Copies the first I/O error that stopped storing into buf; returns 0 if none. */
int tc_store_io_error(tc_store *s, char *buf, size_t len);
/* How many faults of this kind happened since the last take (0 if none), with
 * the message of the latest one in buf. */
uint64_t tc_store_fault_take(tc_store *s, int kind, char *buf, size_t len);
/* 1 if some kind has faults not taken yet: no lock, no system call (a fault that
 * lands meanwhile is reported by a later take).  A cache asks it after every call. */
int tc_store_faults_pending(tc_store *s);

/* 1 if the writer named by a segment file name may still append to it: on this
 * host (`host` as segment names spell it) while its pid runs, elsewhere while
 * the file changed less than idle_ns ago (mtime and now are wall-clock ns). */
int tc_store_writer_may_append(const char *name, int64_t mtime_ns, int64_t now_wall_ns,
                               int64_t idle_ns, const char *host);

typedef struct {
    uint64_t segments;   /* segment files found */
    uint64_t live;       /* of them, written by writers that may still append: untouched */
    uint64_t removed;    /* merged and removed */
    uint64_t kept;       /* not removed: live, changed while merging, or nothing to merge */
    uint64_t records;    /* verified records written to the merged segment */
    uint64_t bytes;      /* their bytes */
    uint64_t duplicates; /* records skipped: their key was already merged */
    uint64_t dropped;    /* records skipped: a payload that failed its checksum */
} tc_store_compact_result;

/* Merges the verified records of the segments of `dir` whose writers cannot
 * append any more (tc_store_writer_may_append with idle_ns = min_idle_s) into
 * one new segment: written to a temporary file, fsynced, renamed, the directory
 * fsynced, then the merged segments removed (each only if unchanged since it
 * was read).  Needs at least two such segments.  `merged` receives the new
 * segment's file name ("" if none).  Readers and writers may run meanwhile. */
int tc_store_compact(const char *dir, int64_t min_idle_s, tc_store_compact_result *r,
                     char *merged, size_t merged_len, char *err, size_t err_len);

/* Bytes per element of a dtype word, 0 if it is not a whole number of bytes. */
size_t tc_store_itemsize(uint64_t dtype_word);

/* ---- records held in memory (issue 15, docs/remote.md) ----------------------- */

/* The id version 2 records of the segment file `name` are bound to (format.md, 4). */
uint64_t tc_store_segment_id(const char *name);

typedef struct {
    uint64_t key0, key1;
    uint64_t dtype_word;
    uint64_t raw_len;    /* item bytes */
    uint64_t stored_len; /* payload bytes in the record */
    uint64_t total;      /* record bytes: header, payload and padding */
    int compressed;      /* the payload is one zstd frame */
    int version;
    int ndim;
    int64_t shape[TC_STORE_MAX_NDIM];
} tc_store_record;

/* Checks the record at buf[0..len) as a reader of its segment would: the header
 * (docs/format.md, section 6) bound to the segment `seg_id` and the record's
 * `offset` in it, the record whole inside len, and with check_payload the
 * payload checksum.  TC_STORE_ECORRUPT with the reason in err when any fails. */
int tc_store_record_parse(const uint8_t *buf, size_t len, uint64_t seg_id, uint64_t offset,
                          int check_payload, tc_store_record *r, char *err, size_t err_len);
/* The item bytes of a record parse accepted (decompressed if needed) into dest,
 * which holds exactly r->raw_len bytes. */
int tc_store_record_payload(const uint8_t *buf, const tc_store_record *r, uint8_t *dest,
                            size_t dest_len, char *err, size_t err_len);

/* ---- helpers store.c shares with store_index.c ------------------------------ */

/* Writes n bytes at offset off, retrying EINTR and short writes: 0, or -1 with
 * errno (ENOSPC for a write of nothing). */
int tc_store_write_fully(int fd, const void *p, size_t n, uint64_t off);
/* The block-sum checksum of docs/format.md section 4 over n bytes from `seed`:
 * begin with the total length, then feed pieces that are whole 16 KiB blocks
 * (the last may end short). */
uint64_t tc_store_sum_begin(uint64_t seed, uint64_t n);
uint64_t tc_store_sum_feed(uint64_t s, const uint8_t *p, uint64_t n);

/* ---- the persisted index of a segment (csrc/store_index.c, docs/format.md 9) ---- */

/* One record of a segment's prefix: its key, offset and item bytes (raw_len). */
typedef struct {
    uint64_t key0, key1;
    uint64_t offset;
    uint64_t raw_len;
} tc_index_entry;

/* What an index file says about itself. */
typedef struct {
    uint64_t seg_id;  /* tc_store_segment_id of the segment's name */
    uint64_t seg_ino; /* the segment file's inode when the index was written */
    uint64_t covered; /* the prefix [0, covered) whose records are listed */
    uint64_t count;   /* entries */
    uint64_t corrupt; /* records of the prefix skipped as corrupt (for stats) */
} tc_index_head;

/* The segment an index is read for, as the reader found it. */
typedef struct {
    uint64_t id;  /* tc_store_segment_id(name) */
    uint64_t ino;
    uint64_t len; /* its length now */
} tc_index_segment;

/* The smallest segment (in records) for which an index file is written. */
#define TC_INDEX_MIN_RECORDS 1024

/* The order of entries in an index file (the in-memory index's slot hash). */
uint64_t tc_index_key_order(uint64_t key0, uint64_t key1);
/* "idx-<rest>.tci", the index file of segment "seg-<rest>.tcs"; -1 if not a segment name. */
int tc_index_name(const char *seg_name, char *buf, size_t len);
/* Reads and checks the index file of segment seg_name in dir (regular file, owner
 * rule, size bounds, checksums, bound to seg's id and inode, covering no more than
 * seg->len).  Returns the number of entries, in a malloc'd *out the caller frees,
 * or -1 (none, or it does not check: *why says which; the segment is then scanned). */
long tc_index_read(const char *dir, const char *seg_name, const tc_index_segment *seg,
                   int allow_other_owners, tc_index_entry **out, tc_index_head *head,
                   const char **why);
/* Frees the entries tc_index_read returned (count: what it returned). */
void tc_index_free(tc_index_entry *e, size_t count);
/* Writes the index of segment seg_name (head->count entries, reordered and
 * encoded in place) through a temporary file and rename.  0, or -1 with errno. */
int tc_index_write(const char *dir, const char *seg_name, const tc_index_head *head,
                   tc_index_entry *entries, unsigned file_mode);
/* Removes the index file of a segment (compaction, after removing the segment). */
void tc_index_remove(const char *dir, const char *seg_name);

#endif
