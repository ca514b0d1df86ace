/* crc32c.c - CRC-32C with a run-time choice between CPU instructions and tables.
 *
 * Internally every routine works on the raw CRC register (no pre/post inversion);
 * the public functions invert on the way in and out so calls can be chained.
 * The hardware path runs three independent lanes per round because the crc32
 * instruction has a latency of ~3 cycles but a throughput of 1 per cycle; the lane
 * results are joined with a precomputed "append LANE zero bytes" operator, which is
 * linear over GF(2) and so a 4 x 256 table lookup.
 */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "crc32c.h"

#define POLY_REFLECTED 0x82F63B78u
#define LANE 2048 /* bytes per lane per round: 3 x 2 KiB rounds keep the joins rare */

static uint32_t table[8][256];      /* slicing-by-8 tables */
static uint32_t lane_shift[4][256]; /* register -> register after LANE zero bytes */
static int hw_available;

static uint32_t sw_raw(uint32_t reg, const uint8_t *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        reg = table[0][(reg ^ *p++) & 0xff] ^ (reg >> 8);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8); /* little-endian hosts only: x86-64 and aarch64 */
        w ^= reg;
        reg = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^
              table[5][(w >> 16) & 0xff] ^ table[4][(w >> 24) & 0xff] ^
              table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
              table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        reg = table[0][(reg ^ *p++) & 0xff] ^ (reg >> 8);
    return reg;
}

static uint32_t shift_by_lane(uint32_t reg)
{
    return lane_shift[0][reg & 0xff] ^ lane_shift[1][(reg >> 8) & 0xff] ^
           lane_shift[2][(reg >> 16) & 0xff] ^ lane_shift[3][reg >> 24];
}

static uint64_t load64(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

#if defined(__x86_64__)
#include <nmmintrin.h>
#define HW_TARGET __attribute__((target("sse4.2")))
#define HW_STEP64(r, w) _mm_crc32_u64((r), (w))
#define HW_STEP8(r, b) _mm_crc32_u8((uint32_t)(r), (b))
static int detect_hw(void)
{
    __builtin_cpu_init(); /* required before cpu_supports inside a constructor */
    return __builtin_cpu_supports("sse4.2") != 0;
}
#elif defined(__aarch64__)
#include <arm_acle.h>
#include <sys/auxv.h>
#include <asm/hwcap.h>
#define HW_TARGET __attribute__((target("+crc")))
#define HW_STEP64(r, w) __crc32cd((uint32_t)(r), (w))
#define HW_STEP8(r, b) __crc32cb((uint32_t)(r), (b))
static int detect_hw(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#endif

#ifdef HW_TARGET
HW_TARGET static uint32_t hw_raw(uint32_t reg, const uint8_t *p, size_t n)
{
    while (n >= 3 * LANE) {
        uint64_t a = reg, b = 0, c = 0;
        for (size_t i = 0; i < LANE; i += 8) {
            a = HW_STEP64(a, load64(p + i));
            b = HW_STEP64(b, load64(p + LANE + i));
            c = HW_STEP64(c, load64(p + 2 * LANE + i));
        }
        reg = shift_by_lane((uint32_t)a) ^ (uint32_t)b;
        reg = shift_by_lane(reg) ^ (uint32_t)c;
        p += 3 * LANE;
        n -= 3 * LANE;
    }
    uint64_t r = reg;
    for (; n >= 8; p += 8, n -= 8)
        r = HW_STEP64(r, load64(p));
    for (; n; p++, n--)
        r = HW_STEP8(r, *p);
    return (uint32_t)r;
}
#else
static int detect_hw(void) { return 0; }
static uint32_t hw_raw(uint32_t reg, const uint8_t *p, size_t n) { return sw_raw(reg, p, n); }
#endif

__attribute__((constructor)) static void crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY_REFLECTED : c >> 1;
        table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];

    static const uint8_t zeros[LANE];
    uint32_t column[32];
    for (int bit = 0; bit < 32; bit++)
        column[bit] = sw_raw(1u << bit, zeros, LANE);
    for (int byte = 0; byte < 4; byte++)
        for (uint32_t v = 0; v < 256; v++) {
            uint32_t acc = 0;
            for (int j = 0; j < 8; j++)
                if (v & (1u << j))
                    acc ^= column[8 * byte + j];
            lane_shift[byte][v] = acc;
        }
    hw_available = detect_hw();
}

uint32_t pb_crc32c_sw(uint32_t crc, const uint8_t *buf, size_t len)
{
    return ~sw_raw(~crc, buf, len);
}

uint32_t pb_crc32c(uint32_t crc, const uint8_t *buf, size_t len)
{
    return hw_available ? ~hw_raw(~crc, buf, len) : ~sw_raw(~crc, buf, len);
}

int pb_crc32c_hw_available(void)
{
    return hw_available;
}
