/* batch.h - scanning Kafka RecordBatch v2 (magic 2) buffers.
 *
 * Byte layout of one batch (big-endian, as on the wire and on disk):
 *   0 baseOffset i64 | 8 batchLength i32 (bytes after this field) | 12 leaderEpoch i32
 *  16 magic i8 | 17 crc u32 (CRC-32C of bytes 21..end) | 21 attributes i16
 *  23 lastOffsetDelta i32 | 27 baseTimestamp i64 | 35 maxTimestamp i64
 *  43 producerId i64 | 51 producerEpoch i16 | 53 baseSequence i32 | 57 recordCount i32
 *  61 records...
 * baseOffset and leaderEpoch lie outside the CRC, so stamping offsets or the leader epoch
 * needs no re-CRC; stamping LogAppendTime rewrites attributes and maxTimestamp, so it
 * recomputes it.
 */
#define PB_BATCH_HEADER_SIZE 61
/* field offsets of the layout above; pybroker/records.py checks its own against these */
#define PB_OFF_BASE_OFFSET 0
#define PB_OFF_BATCH_LENGTH 8
#define PB_OFF_LEADER_EPOCH 12
#define PB_OFF_MAGIC 16
#define PB_OFF_CRC 17
#define PB_OFF_ATTRIBUTES 21
#define PB_OFF_LAST_OFFSET_DELTA 23
#define PB_OFF_BASE_TIMESTAMP 27
#define PB_OFF_MAX_TIMESTAMP 35
#define PB_OFF_PRODUCER_ID 43
#define PB_OFF_PRODUCER_EPOCH 51
#define PB_OFF_BASE_SEQUENCE 53
#define PB_OFF_RECORD_COUNT 57
#define PB_BATCH_LOG_OVERHEAD 12     /* baseOffset + batchLength */
#define PB_ATTR_LOG_APPEND_TIME 8    /* attributes bit 3: timestamps are broker time */

#define PB_SCAN_STAMP_OFFSETS 1      /* write base offsets from next_offset on */
#define PB_SCAN_STAMP_TIME 2         /* set LogAppendTime = append_time on every batch */
#define PB_SCAN_STAMP_EPOCH 4        /* write leader_epoch into every partitionLeaderEpoch */

/* What a scan found. On error, valid_bytes is the position of the bad batch. The
 * producer fields are the first valid batch's (idempotence checks one batch a request),
 * -1 when there is none. The epoch fields let a follower learn leader epochs without a
 * walk of its own: when epoch_changes is 0, every valid batch carries last_leader_epoch. */
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
    int64_t producer_id;             /* producerId of the first batch */
    int32_t producer_epoch;          /* producerEpoch of the first batch (an i16) */
    int32_t base_sequence;           /* baseSequence of the first batch */
    int32_t last_leader_epoch;       /* partitionLeaderEpoch of the last batch, -1 if none */
    int32_t epoch_changes;           /* batches whose epoch differs from the one before */
} pb_scan;

/* One valid batch's header fields, as producer-state replay needs them. */
typedef struct pb_batch_info {
    int64_t base_offset;             /* as stamped (or stored) */
    int64_t producer_id;             /* -1: not idempotent */
    int32_t last_offset_delta;
    int32_t base_sequence;
    int16_t producer_epoch;
    int16_t attributes;
    int32_t batch_length;            /* the batch is batch_length + 12 bytes */
} pb_batch_info;

/* Validate every batch in buf[0..len): bounds, batchLength, magic, CRC, record count,
 * and a size limit of max_batch (<= 0: none). With PB_SCAN_STAMP_OFFSETS the batches
 * get base offsets next_offset, next_offset + count0, ...; without it, next_offset >= 0
 * demands stored base offsets at or above it and increasing (recovery); -1 skips that.
 * With PB_SCAN_STAMP_EPOCH every valid batch gets partitionLeaderEpoch = leader_epoch
 * (a leader stamps its epoch); without it leader_epoch is ignored.
 * Returns PB_OK when all of buf is whole valid batches, else the first problem's code
 * with out->valid_bytes at that batch. len == 0 is valid and yields 0 batches.
 * With infos (else NULL), batch i's header fields go to infos[i] for each valid batch
 * (out->batches of them, also on error); capacity must be at least
 * len / PB_BATCH_HEADER_SIZE, the most batches len bytes can hold, else PB_E_INVALID_ARG
 * before anything is read.
 * Never reads or writes outside buf[0..len) and infos[0..capacity).
 */
int pb_batches_scan(uint8_t *buf, size_t len, int flags, int64_t next_offset,
                    int64_t append_time, int32_t leader_epoch, int64_t max_batch,
                    pb_scan *out, pb_batch_info *infos, size_t capacity);
