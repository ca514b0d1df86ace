/* batch.c - validation and offset stamping of RecordBatch v2 buffers. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "pb_status.h"
#include "crc32c.h"
#include "batch.h"
#include "byteorder.h"

/* Checks the batch at p (avail bytes readable); on success *size is its total size.
 * Each field is read only once the bytes before it are known to be in bounds. */
static int check_batch(const uint8_t *p, size_t avail, int64_t max_batch, int64_t *size)
{
    if (avail < PB_BATCH_LOG_OVERHEAD)
        return PB_E_TRUNCATED;
    int32_t batch_length = pb_get_i32(p + PB_OFF_BATCH_LENGTH);
    if (batch_length < PB_BATCH_HEADER_SIZE - PB_BATCH_LOG_OVERHEAD)
        return PB_E_BAD_LENGTH;
    int64_t total = (int64_t)batch_length + PB_BATCH_LOG_OVERHEAD;
    if (max_batch > 0 && total > max_batch)
        return PB_E_TOO_LARGE;
    if ((uint64_t)total > avail)
        return PB_E_TRUNCATED;
    if (p[PB_OFF_MAGIC] != 2)
        return PB_E_BAD_MAGIC;
    uint32_t stored = (uint32_t)pb_get_i32(p + PB_OFF_CRC);
    if (pb_crc32c(0, p + PB_OFF_ATTRIBUTES, (size_t)total - PB_OFF_ATTRIBUTES) != stored)
        return PB_E_BAD_CRC;
    int32_t count = pb_get_i32(p + PB_OFF_RECORD_COUNT);
    int32_t last_delta = pb_get_i32(p + PB_OFF_LAST_OFFSET_DELTA);
    if (count < 1 || last_delta != count - 1)
        return PB_E_BAD_COUNT;
    *size = total;
    return PB_OK;
}

static void stamp_append_time(uint8_t *p, int64_t size, int64_t append_time)
{
    uint16_t attrs = (uint16_t)pb_get_i16(p + PB_OFF_ATTRIBUTES) | PB_ATTR_LOG_APPEND_TIME;
    pb_put_i16(p + PB_OFF_ATTRIBUTES, (int16_t)attrs);
    pb_put_i64(p + PB_OFF_MAX_TIMESTAMP, append_time);
    pb_put_i32(p + PB_OFF_CRC, (int32_t)pb_crc32c(0, p + PB_OFF_ATTRIBUTES,
                                                  (size_t)size - PB_OFF_ATTRIBUTES));
}

static void scan_reset(pb_scan *out)
{
    memset(out, 0, sizeof *out);
    out->first_offset = -1;
    out->last_offset = -1;
    out->max_timestamp = -1;
    out->offset_of_max_timestamp = -1;
    out->producer_id = -1;
    out->producer_epoch = -1;
    out->base_sequence = -1;
    out->last_leader_epoch = -1;
}

/* Called only for a batch check_batch accepted, so all 61 header bytes are in bounds. */
static void batch_info(const uint8_t *p, int64_t base, pb_batch_info *info)
{
    info->base_offset = base;
    info->producer_id = pb_get_i64(p + PB_OFF_PRODUCER_ID);
    info->last_offset_delta = pb_get_i32(p + PB_OFF_LAST_OFFSET_DELTA);
    info->base_sequence = pb_get_i32(p + PB_OFF_BASE_SEQUENCE);
    info->producer_epoch = pb_get_i16(p + PB_OFF_PRODUCER_EPOCH);
    info->attributes = pb_get_i16(p + PB_OFF_ATTRIBUTES);
    info->batch_length = pb_get_i32(p + PB_OFF_BATCH_LENGTH);
}

int pb_batches_scan(uint8_t *buf, size_t len, int flags, int64_t next_offset,
                    int64_t append_time, int32_t leader_epoch, int64_t max_batch,
                    pb_scan *out, pb_batch_info *infos, size_t capacity)
{
    scan_reset(out);
    if ((flags & PB_SCAN_STAMP_OFFSETS) && next_offset < 0)
        return PB_E_INVALID_ARG;
    if (infos != NULL && capacity < len / PB_BATCH_HEADER_SIZE)
        return PB_E_INVALID_ARG;
    int check_offsets = !(flags & PB_SCAN_STAMP_OFFSETS) && next_offset >= 0;
    size_t pos = 0;
    while (pos < len) {
        uint8_t *p = buf + pos;
        int64_t size;
        int rc = check_batch(p, len - pos, max_batch, &size);
        if (rc != PB_OK)
            return rc;
        int32_t last_delta = pb_get_i32(p + PB_OFF_LAST_OFFSET_DELTA);
        int64_t base;
        if (flags & PB_SCAN_STAMP_OFFSETS) {
            base = next_offset;
            pb_put_i64(p, base);
        } else {
            base = pb_get_i64(p);
            if (check_offsets && base < next_offset)
                return PB_E_BAD_OFFSET;
        }
        if (flags & PB_SCAN_STAMP_TIME)
            stamp_append_time(p, size, append_time);
        if (flags & PB_SCAN_STAMP_EPOCH)  /* outside the CRC: no re-CRC */
            pb_put_i32(p + PB_OFF_LEADER_EPOCH, leader_epoch);
        int32_t epoch = pb_get_i32(p + PB_OFF_LEADER_EPOCH);
        if (out->batches > 0 && epoch != out->last_leader_epoch)
            out->epoch_changes++;
        out->last_leader_epoch = epoch;
        int64_t last = base + last_delta;
        int64_t max_ts = pb_get_i64(p + PB_OFF_MAX_TIMESTAMP);
        if (out->batches == 0) {
            out->first_offset = base;
            out->producer_id = pb_get_i64(p + PB_OFF_PRODUCER_ID);
            out->producer_epoch = pb_get_i16(p + PB_OFF_PRODUCER_EPOCH);
            out->base_sequence = pb_get_i32(p + PB_OFF_BASE_SEQUENCE);
        }
        if (infos != NULL)  /* in bounds: batches + 1 whole batches of >= 61 bytes fit len */
            batch_info(p, base, &infos[out->batches]);
        if (max_ts > out->max_timestamp) {
            out->max_timestamp = max_ts;
            out->offset_of_max_timestamp = last;
        }
        if (size > out->max_batch_bytes)
            out->max_batch_bytes = (int32_t)size;
        out->attributes_or |= pb_get_i16(p + PB_OFF_ATTRIBUTES);
        out->batches++;
        out->records += (int64_t)last_delta + 1;
        out->last_offset = last;
        next_offset = last + 1;
        pos += (size_t)size;
        out->valid_bytes = (int64_t)pos;
    }
    return PB_OK;
}
