/* byteorder.h - big-endian field access for Kafka's on-disk and wire formats.
 * Internal to the C core (not part of the cffi interface). */
#ifndef PB_BYTEORDER_H
#define PB_BYTEORDER_H
#include <stdint.h>
#include <string.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pybroker core assumes a little-endian host (x86-64, aarch64)"
#endif

static inline int16_t pb_get_i16(const uint8_t *p)
{
    return (int16_t)(((uint16_t)p[0] << 8) | p[1]);
}

static inline int32_t pb_get_i32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return (int32_t)__builtin_bswap32(v);
}

static inline int64_t pb_get_i64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return (int64_t)__builtin_bswap64(v);
}

static inline void pb_put_i16(uint8_t *p, int16_t v)
{
    p[0] = (uint8_t)((uint16_t)v >> 8);
    p[1] = (uint8_t)v;
}

static inline void pb_put_i32(uint8_t *p, int32_t v)
{
    uint32_t be = __builtin_bswap32((uint32_t)v);
    memcpy(p, &be, 4);
}

static inline void pb_put_i64(uint8_t *p, int64_t v)
{
    uint64_t be = __builtin_bswap64((uint64_t)v);
    memcpy(p, &be, 8);
}
#endif
