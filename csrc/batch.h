/* batch.h - scanning Kafka RecordBatch v2 (magic 2) buffers.
 *
 * Byte layout of one batch (big-endian, as on the wire and on disk):
 *   0 baseOffset i64 | 8 batchLength i32 (bytes after this field) | 12 leaderEpoch i32
 *  16 magic i8 | 17 crc u32 (CRC-32C of bytes 21..end) | 21 attributes i16
 *  23 lastOffsetDelta i32 | 27 baseTimestamp i64 | 35 maxTimestamp i64
 *  43 producerId i64 | 51 producerEpoch i16 | 53 baseSequence i32 | 57 recordCount i32
 *  61 records...
 * baseOffset and leaderEpoch lie outside the CRC, so stamping offsets needs no re-CRC;
 * stamping LogAppendTime rewrites attributes and maxTimestamp, so it recomputes it.
 */
#define PB_BATCH_HEADER_SIZE 61
#define PB_BATCH_LOG_OVERHEAD 12     /* baseOffset + batchLength */
#define PB_ATTR_LOG_APPEND_TIME 8    /* attributes bit 3: timestamps are broker time */

#define PB_SCAN_STAMP_OFFSETS 1      /* write base offsets from next_offset on */
#define PB_SCAN_STAMP_TIME 2         /* set LogAppendTime = append_time on every batch */

/* What a scan found. On error, valid_bytes is the position of the bad batch. */
typedef struct pb_scan {
    int64_t batches;                 /* whole valid batches */
    int64_t records;                 /* sum of lastOffsetDelta + 1 */
    int64_t valid_bytes;             /* end of the last valid batch */
    int64_t first_offset;            /* base offset of the first batch, -1 if none */
    int64_t last_offset;             /* last offset of the last valid batch, -1 if none */
    int64_t max_timestamp;           /* largest maxTimestamp, -1 if none */
    int64_t offset_of_max_timestamp; /* last offset of the batch holding it */
    int32_t max_batch_bytes;         /* size of the largest batch */
    int32_t attributes_or;           /* OR of all attributes (compression bits 0-2) */
} pb_scan;

/* Validate every batch in buf[0..len): bounds, batchLength, magic, CRC, record count,
 * and a size limit of max_batch (<= 0: none). With PB_SCAN_STAMP_OFFSETS the batches
 * get base offsets next_offset, next_offset + count0, ...; without it, next_offset >= 0
 * demands stored base offsets at or above it and increasing (recovery); -1 skips that.
 * Returns PB_OK when all of buf is whole valid batches, else the first problem's code
 * with out->valid_bytes at that batch. len == 0 is valid and yields 0 batches.
 * Never reads or writes outside buf[0..len).
 */
int pb_batches_scan(uint8_t *buf, size_t len, int flags, int64_t next_offset,
                    int64_t append_time, int64_t max_batch, pb_scan *out);
