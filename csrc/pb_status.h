/* pb_status.h - status codes shared by every function of the pybroker C core.
 *
 * Every function returns PB_OK (0) or a negative PB_E_* code; results travel through
 * out-parameters. After PB_E_IO, errno holds the failing system call's error.
 * pybroker/core.py is the only place that turns these codes into Python exceptions.
 */
#define PB_OK 0
#define PB_E_TRUNCATED -1        /* a batch runs past the end of the buffer or file */
#define PB_E_BAD_LENGTH -2       /* batchLength below the v2 header size or absurd */
#define PB_E_BAD_MAGIC -3        /* magic byte is not 2 */
#define PB_E_BAD_CRC -4          /* CRC-32C over attributes..end does not match */
#define PB_E_BAD_COUNT -5        /* record count < 1 or != lastOffsetDelta + 1 */
#define PB_E_TOO_LARGE -6        /* a batch above the caller's size limit */
#define PB_E_BAD_OFFSET -7       /* a stored base offset goes backwards */
#define PB_E_INDEX_FULL -8       /* no room left in a preallocated index */
#define PB_E_IO -9               /* a system call failed; see errno */
#define PB_E_AGAIN -10           /* the socket would block; partial progress reported */
#define PB_E_INVALID_ARG -11     /* a caller passed a value out of range */
#define PB_E_NOT_FOUND -12       /* the target lies beyond the scanned range */
#define PB_E_INDEX_CORRUPT -13   /* index entries out of order or out of bounds */
#define PB_E_OFFSET_OVERFLOW -14 /* an offset does not fit the segment's u32 index */

/* A fixed English message for a status code (never NULL). */
const char *pb_strerror(int code);

/* The pybroker version this core was compiled for; checked at import. */
const char *pb_core_version(void);
