/* index.c - building, searching and checking the offset and time indexes. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "pb_status.h"
#include "batch.h"
#include "index.h"
#include "byteorder.h"

static size_t entry_size(int kind)
{
    return kind == PB_INDEX_TIME ? PB_TIME_ENTRY_SIZE : PB_OFFSET_ENTRY_SIZE;
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static int64_t get_ts(const uint8_t *p)
{
    int64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* key and value of entry i, both widened to int64 */
static void entry_at(const uint8_t *index, int kind, uint32_t i, int64_t *key, int64_t *value)
{
    const uint8_t *e = index + (size_t)i * entry_size(kind);
    if (kind == PB_INDEX_TIME) {
        *key = get_ts(e);
        *value = get_u32(e + 8);
    } else {
        *key = get_u32(e);
        *value = get_u32(e + 4);
    }
}

static void put_offset_entry(uint8_t *index, uint32_t i, uint32_t rel, uint32_t pos)
{
    memcpy(index + (size_t)i * PB_OFFSET_ENTRY_SIZE, &rel, 4);
    memcpy(index + (size_t)i * PB_OFFSET_ENTRY_SIZE + 4, &pos, 4);
}

static void put_time_entry(uint8_t *index, uint32_t i, int64_t ts, uint32_t rel)
{
    memcpy(index + (size_t)i * PB_TIME_ENTRY_SIZE, &ts, 8);
    memcpy(index + (size_t)i * PB_TIME_ENTRY_SIZE + 8, &rel, 4);
}

static int64_t last_time_key(const uint8_t *time_index, const pb_index_cursor *cur)
{
    if (cur->time_entries == 0)
        return INT64_MIN;
    return get_ts(time_index + (size_t)(cur->time_entries - 1) * PB_TIME_ENTRY_SIZE);
}

/* One pass over the batch headers; with apply == 0 only checks ranges and counts the
 * entries it would add, so pb_index_add can refuse before changing anything. */
static int index_walk(const uint8_t *batches, size_t len, int64_t file_pos, int64_t base_offset,
                      int64_t interval, uint8_t *offset_index, uint8_t *time_index,
                      pb_index_cursor *cur, int apply, uint32_t *added)
{
    pb_index_cursor c = *cur;
    int64_t last_time = last_time_key(time_index, cur);
    uint32_t new_entries = 0;
    size_t pos = 0;
    while (pos < len) {
        if (len - pos < PB_BATCH_HEADER_SIZE)
            return PB_E_TRUNCATED;
        const uint8_t *p = batches + pos;
        int64_t size = (int64_t)pb_get_i32(p + 8) + PB_BATCH_LOG_OVERHEAD;
        if (size < PB_BATCH_HEADER_SIZE || (uint64_t)size > len - pos)
            return PB_E_BAD_LENGTH;
        int64_t rel = pb_get_i64(p) - base_offset;
        int64_t last = pb_get_i64(p) + pb_get_i32(p + 23);
        int64_t where = file_pos + (int64_t)pos;
        if (rel < 0 || last - base_offset > (int64_t)UINT32_MAX ||
            where + size > (int64_t)UINT32_MAX)
            return PB_E_OFFSET_OVERFLOW;
        int64_t max_ts = pb_get_i64(p + 35);
        if (max_ts > c.max_timestamp) {
            c.max_timestamp = max_ts;
            c.offset_of_max_timestamp = last;
        }
        if (c.bytes_since_entry >= interval) {
            if (apply)
                put_offset_entry(offset_index, c.entries, (uint32_t)rel, (uint32_t)where);
            c.entries++;
            new_entries++;
            if (c.max_timestamp > last_time) {
                if (apply)
                    put_time_entry(time_index, c.time_entries, c.max_timestamp,
                                   (uint32_t)(c.offset_of_max_timestamp - base_offset));
                c.time_entries++;
                last_time = c.max_timestamp;
            }
            c.bytes_since_entry = 0;
        }
        c.bytes_since_entry += size;
        pos += (size_t)size;
    }
    if (c.entries > cur->capacity || c.time_entries + 1 > cur->time_capacity)
        return PB_E_INDEX_FULL;
    if (apply)
        *cur = c;
    *added = new_entries;
    return PB_OK;
}

int pb_index_fits(const uint8_t *batches, size_t len, int64_t file_pos, int64_t base_offset,
                  int64_t interval, const uint8_t *time_index, const pb_index_cursor *cur)
{
    uint32_t added;
    pb_index_cursor scratch = *cur;
    if (interval < 0 || file_pos < 0)
        return PB_E_INVALID_ARG;
    /* apply == 0: index_walk reads time_index but writes nothing */
    return index_walk(batches, len, file_pos, base_offset, interval, NULL,
                      (uint8_t *)(uintptr_t)time_index, &scratch, 0, &added);
}

int pb_index_add(const uint8_t *batches, size_t len, int64_t file_pos, int64_t base_offset,
                 int64_t interval, uint8_t *offset_index, uint8_t *time_index,
                 pb_index_cursor *cur)
{
    uint32_t added;
    int rc = pb_index_fits(batches, len, file_pos, base_offset, interval, time_index, cur);
    if (rc != PB_OK)
        return rc;
    return index_walk(batches, len, file_pos, base_offset, interval, offset_index,
                      time_index, cur, 1, &added);
}

int pb_index_seal(uint8_t *time_index, int64_t base_offset, pb_index_cursor *cur)
{
    if (cur->max_timestamp < 0 || cur->max_timestamp <= last_time_key(time_index, cur))
        return PB_OK;
    if (cur->time_entries >= cur->time_capacity)
        return PB_E_INDEX_FULL;
    int64_t rel = cur->offset_of_max_timestamp - base_offset;
    if (rel < 0 || rel > (int64_t)UINT32_MAX)
        return PB_E_OFFSET_OVERFLOW;
    put_time_entry(time_index, cur->time_entries, cur->max_timestamp, (uint32_t)rel);
    cur->time_entries++;
    return PB_OK;
}

int pb_index_floor(const uint8_t *index, uint32_t entries, int kind, int64_t target,
                   int strict, int64_t *slot)
{
    if (kind != PB_INDEX_OFFSET && kind != PB_INDEX_TIME)
        return PB_E_INVALID_ARG;
    /* invariant: keys of [0, lo) qualify, keys of [hi, entries) do not */
    uint32_t lo = 0, hi = entries;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int64_t key, value;
        entry_at(index, kind, mid, &key, &value);
        int fits = strict ? key < target : key <= target;
        if (fits)
            lo = mid + 1;
        else
            hi = mid;
    }
    *slot = (int64_t)lo - 1;
    return PB_OK;
}

int pb_index_entry(const uint8_t *index, uint32_t entries, int kind, int64_t slot,
                   int64_t *key, int64_t *value)
{
    if ((kind != PB_INDEX_OFFSET && kind != PB_INDEX_TIME) || slot < 0 || slot >= entries)
        return PB_E_INVALID_ARG;
    entry_at(index, kind, (uint32_t)slot, key, value);
    return PB_OK;
}

int pb_index_check(const uint8_t *index, uint32_t entries, int kind, int64_t max_relative,
                   int64_t log_size, int64_t *bad_slot)
{
    if (kind != PB_INDEX_OFFSET && kind != PB_INDEX_TIME)
        return PB_E_INVALID_ARG;
    int64_t prev_key = INT64_MIN, prev_value = -1;
    for (uint32_t i = 0; i < entries; i++) {
        int64_t key, value;
        entry_at(index, kind, i, &key, &value);
        int ok;
        if (kind == PB_INDEX_OFFSET)
            ok = key > prev_key && value > prev_value && key <= max_relative && value < log_size;
        else
            ok = key > prev_key && value >= prev_value && value <= max_relative;
        if (!ok) {
            *bad_slot = i;
            return PB_E_INDEX_CORRUPT;
        }
        prev_key = key;
        prev_value = value;
    }
    *bad_slot = -1;
    return PB_OK;
}
