/* status.c - the message table of the C core and its version stamp. */
#include "pb_status.h"

#ifndef PB_VERSION
#error "PB_VERSION must be defined by the build (csrc/build_core.py)"
#endif

const char *pb_strerror(int code)
{
    switch (code) {
    case PB_OK: return "ok";
    case PB_E_TRUNCATED: return "batch runs past the end of the data";
    case PB_E_BAD_LENGTH: return "batch length field out of range";
    case PB_E_BAD_MAGIC: return "batch magic is not 2";
    case PB_E_BAD_CRC: return "batch CRC-32C mismatch";
    case PB_E_BAD_COUNT: return "record count is not lastOffsetDelta + 1 (or is < 1)";
    case PB_E_TOO_LARGE: return "batch larger than the size limit";
    case PB_E_BAD_OFFSET: return "batch base offset goes backwards";
    case PB_E_INDEX_FULL: return "index is full";
    case PB_E_IO: return "system call failed";
    case PB_E_AGAIN: return "operation would block";
    case PB_E_INVALID_ARG: return "invalid argument";
    case PB_E_NOT_FOUND: return "target beyond the scanned range";
    case PB_E_INDEX_CORRUPT: return "index entries out of order or out of bounds";
    case PB_E_OFFSET_OVERFLOW: return "offset or position does not fit the segment index";
    default: return "unknown status code";
    }
}

const char *pb_core_version(void)
{
    return PB_VERSION;
}
