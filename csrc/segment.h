/* segment.h - file operations on one segment: append, seek, sendfile. */

/* Where a batch sits in a segment file. */
typedef struct pb_batch_pos {
    int64_t position;      /* file position of the batch */
    int64_t size;          /* total bytes, header included */
    int64_t base_offset;
    int64_t last_offset;
    int64_t max_timestamp;
} pb_batch_pos;

/* Write the validated, stamped batches buf[0..len) at file_pos of the segment file fd,
 * then index them (see pb_index_add). The index room and offset ranges are checked
 * before any byte is written; a failed or short write is cut back to file_pos so the
 * file never ends in a torn batch we wrote. PB_E_IO leaves errno set. */
int pb_segment_append(int fd, const uint8_t *buf, size_t len, int64_t file_pos,
                      int64_t base_offset, int64_t interval, uint8_t *offset_index,
                      uint8_t *time_index, pb_index_cursor *cur);

/* Find the first batch in fd[0..end_pos) that holds offset `target` (kind
 * PB_INDEX_OFFSET: last offset >= target) or the first with maxTimestamp >= target
 * (PB_INDEX_TIME). Starts from the index floor of the target among cur's entries and
 * reads batch headers forward. PB_E_NOT_FOUND when no whole batch before end_pos
 * qualifies; PB_E_BAD_LENGTH or PB_E_TRUNCATED when a header is damaged;
 * PB_E_INVALID_ARG when cur claims more entries than its capacity. */
int pb_segment_seek(int fd, const uint8_t *offset_index, const uint8_t *time_index,
                    const pb_index_cursor *cur, int64_t base_offset, int kind,
                    int64_t target, int64_t end_pos, pb_batch_pos *out);

/* Non-blocking sendfile of count bytes of in_fd from position to out_fd. *sent is the
 * number of bytes sent, also when PB_E_AGAIN (the socket is full: wait for it to be
 * writable, then continue from position + *sent) or PB_E_TRUNCATED (the file ended
 * early) is returned. */
int pb_sendfile(int out_fd, int in_fd, int64_t position, int64_t count, int64_t *sent);
