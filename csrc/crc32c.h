/* crc32c.h - CRC-32C (Castagnoli, polynomial 0x1EDC6F41), as Kafka RecordBatch v2 uses.
 *
 * pb_crc32c continues a finished CRC: pb_crc32c(pb_crc32c(0, a), b) == pb_crc32c(0, a||b).
 * The hardware path (SSE4.2 crc32 on x86-64, ARMv8 CRC32C on aarch64) is chosen at
 * run time; the table-driven software path is the fallback and the test oracle.
 */

/* CRC-32C of len bytes at buf, continuing crc (0 to start). Fastest path available. */
uint32_t pb_crc32c(uint32_t crc, const uint8_t *buf, size_t len);

/* The same, always with the portable slicing-by-8 tables. */
uint32_t pb_crc32c_sw(uint32_t crc, const uint8_t *buf, size_t len);

/* 1 when pb_crc32c uses CPU instructions, 0 when it falls back to tables. */
int pb_crc32c_hw_available(void);
