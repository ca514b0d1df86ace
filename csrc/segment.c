/* segment.c - append, seek and sendfile on a segment file. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stddef.h>
#include <unistd.h>
#include <sys/sendfile.h>
#include "pb_status.h"
#include "batch.h"
#include "index.h"
#include "segment.h"
#include "byteorder.h"

/* pwrite all of buf at pos, retrying short writes and EINTR. */
static int write_all(int fd, const uint8_t *buf, size_t len, int64_t pos)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, (off_t)pos);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return PB_E_IO;
        }
        if (n == 0) {
            errno = EIO;
            return PB_E_IO;
        }
        buf += n;
        len -= (size_t)n;
        pos += n;
    }
    return PB_OK;
}

int pb_segment_append(int fd, const uint8_t *buf, size_t len, int64_t file_pos,
                      int64_t base_offset, int64_t interval, uint8_t *offset_index,
                      uint8_t *time_index, pb_index_cursor *cur)
{
    if (fd < 0)
        return PB_E_INVALID_ARG;
    int rc = pb_index_fits(buf, len, file_pos, base_offset, interval, time_index, cur);
    if (rc != PB_OK)
        return rc;
    rc = write_all(fd, buf, len, file_pos);
    if (rc != PB_OK) {
        int saved = errno;
        /* best effort: a torn tail would otherwise wait for recovery to cut it */
        if (ftruncate(fd, (off_t)file_pos) != 0)
            saved = saved ? saved : errno;
        errno = saved;
        return rc;
    }
    return pb_index_add(buf, len, file_pos, base_offset, interval, offset_index, time_index,
                        cur);
}

/* file position to start scanning from, per the index floor of the target */
static int seek_start(const uint8_t *offset_index, uint32_t offset_entries,
                      const uint8_t *time_index, uint32_t time_entries, int64_t base_offset,
                      int kind, int64_t target, int64_t *start)
{
    int64_t slot, key, value, rel;
    *start = 0;
    if (kind == PB_INDEX_TIME) {
        int rc = pb_index_floor(time_index, time_entries, PB_INDEX_TIME, target, 1, &slot);
        if (rc != PB_OK || slot < 0)
            return rc;
        pb_index_entry(time_index, time_entries, PB_INDEX_TIME, slot, &key, &rel);
    } else if (kind == PB_INDEX_OFFSET) {
        rel = target - base_offset;
        if (rel < 0)
            return PB_OK;
    } else {
        return PB_E_INVALID_ARG;
    }
    int rc = pb_index_floor(offset_index, offset_entries, PB_INDEX_OFFSET, rel, 0, &slot);
    if (rc != PB_OK || slot < 0)
        return rc;
    pb_index_entry(offset_index, offset_entries, PB_INDEX_OFFSET, slot, &key, &value);
    *start = value;
    return PB_OK;
}

/* read the 43 header bytes the seek needs (through maxTimestamp) */
#define SEEK_HEADER 43

int pb_segment_seek(int fd, const uint8_t *offset_index, const uint8_t *time_index,
                    const pb_index_cursor *cur, int64_t base_offset, int kind,
                    int64_t target, int64_t end_pos, pb_batch_pos *out)
{
    if (cur->entries > cur->capacity || cur->time_entries > cur->time_capacity)
        return PB_E_INVALID_ARG;
    int64_t pos;
    int rc = seek_start(offset_index, cur->entries, time_index, cur->time_entries,
                        base_offset, kind, target, &pos);
    if (rc != PB_OK)
        return rc;
    uint8_t h[SEEK_HEADER];
    while (pos + PB_BATCH_HEADER_SIZE <= end_pos) {
        ssize_t n = pread(fd, h, sizeof h, (off_t)pos);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return PB_E_IO;
        if (n < (ssize_t)sizeof h)
            return PB_E_TRUNCATED;
        int64_t size = (int64_t)pb_get_i32(h + 8) + PB_BATCH_LOG_OVERHEAD;
        if (size < PB_BATCH_HEADER_SIZE)
            return PB_E_BAD_LENGTH;
        if (pos + size > end_pos)
            break;
        out->position = pos;
        out->size = size;
        out->base_offset = pb_get_i64(h);
        out->last_offset = out->base_offset + pb_get_i32(h + 23);
        out->max_timestamp = pb_get_i64(h + 35);
        if (kind == PB_INDEX_OFFSET ? out->last_offset >= target : out->max_timestamp >= target)
            return PB_OK;
        pos += size;
    }
    return PB_E_NOT_FOUND;
}

int pb_sendfile(int out_fd, int in_fd, int64_t position, int64_t count, int64_t *sent)
{
    *sent = 0;
    if (out_fd < 0 || in_fd < 0 || position < 0 || count < 0)
        return PB_E_INVALID_ARG;
    off_t off = (off_t)position;
    while (*sent < count) {
        ssize_t n = sendfile(out_fd, in_fd, &off, (size_t)(count - *sent));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return PB_E_AGAIN;
            return PB_E_IO;
        }
        if (n == 0)
            return PB_E_TRUNCATED;
        *sent += n;
    }
    return PB_OK;
}
