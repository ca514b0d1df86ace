/* index.h - the sparse offset index and the time index of one segment.
 *
 * Both live in preallocated, mmapped files owned by the Python segment object; the
 * C core only reads and writes the memory it is handed. Entries are in host order
 * (little-endian on every supported host) and never checksummed: after a crash they
 * are rebuilt from the log.
 *   offset index entry (8 bytes):  relative offset u32 | file position u32
 *   time index entry (12 bytes):   max timestamp so far i64 | relative offset u32
 * Invariants: offset entries strictly increase in both fields; time entries strictly
 * increase in timestamp and never decrease in offset. One entry is added to each
 * (the time index only when the max timestamp grew) before the first batch that
 * starts at least `interval` bytes after the previous entry. Below the first entry a
 * lookup starts at file position 0.
 */
#define PB_INDEX_OFFSET 0
#define PB_INDEX_TIME 1
#define PB_OFFSET_ENTRY_SIZE 8
#define PB_TIME_ENTRY_SIZE 12

/* Append state of one segment's indexes. The time index keeps its last slot spare
 * for pb_index_seal. */
typedef struct pb_index_cursor {
    uint32_t entries;                /* offset-index entries in use */
    uint32_t capacity;               /* offset-index entries that fit */
    uint32_t time_entries;           /* time-index entries in use */
    uint32_t time_capacity;          /* time-index entries that fit */
    int64_t bytes_since_entry;       /* log bytes since the last offset-index entry */
    int64_t max_timestamp;           /* largest batch maxTimestamp so far, -1 none */
    int64_t offset_of_max_timestamp; /* absolute last offset of that batch */
} pb_index_cursor;

/* Index the whole valid batches in batches[0..len), which sit at file position
 * file_pos of a segment whose base offset is base_offset. All-or-nothing: returns
 * PB_E_INDEX_FULL or PB_E_OFFSET_OVERFLOW (relative offset or position beyond u32)
 * before changing anything. */
int pb_index_add(const uint8_t *batches, size_t len, int64_t file_pos, int64_t base_offset,
                 int64_t interval, uint8_t *offset_index, uint8_t *time_index,
                 pb_index_cursor *cur);

/* The checks of pb_index_add without its writes: PB_OK when it would succeed. */
int pb_index_fits(const uint8_t *batches, size_t len, int64_t file_pos, int64_t base_offset,
                  int64_t interval, const uint8_t *time_index, const pb_index_cursor *cur);

/* Write the segment's max timestamp as a final time-index entry if the last entry
 * does not hold it (on roll and close), so it survives a restart. */
int pb_index_seal(uint8_t *time_index, int64_t base_offset, pb_index_cursor *cur);

/* Largest lower bound: *slot = the last slot whose key is <= target (< target when
 * strict), or -1 when every key is above it. Keys: relative offset (offset index),
 * timestamp (time index). */
int pb_index_floor(const uint8_t *index, uint32_t entries, int kind, int64_t target,
                   int strict, int64_t *slot);

/* The key and value of one slot: (relative offset, position) or (timestamp, relative
 * offset). */
int pb_index_entry(const uint8_t *index, uint32_t entries, int kind, int64_t slot,
                   int64_t *key, int64_t *value);

/* Check the invariants above for all entries, with relative offsets <= max_relative
 * and positions < log_size. On PB_E_INDEX_CORRUPT, *bad_slot is the first bad entry. */
int pb_index_check(const uint8_t *index, uint32_t entries, int kind, int64_t max_relative,
                   int64_t log_size, int64_t *bad_slot);
