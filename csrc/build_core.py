"""cffi build script for pybroker._core (out-of-line API mode).

The cdef is read from the public headers themselves, so each declaration is written
once: preprocessor lines are dropped except plain integer #defines, which cffi turns
into constants. The package version is stamped into the shared object and checked by
pybroker/core.py at import, so a stale build fails loudly.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLIC_HEADERS = ["pb_status.h", "crc32c.h", "batch.h", "index.h", "segment.h"]
SOURCES = ["status.c", "crc32c.c", "batch.c", "index.c", "segment.c"]
INT_DEFINE = re.compile(r"^#define\s+\w+\s+-?\d+\b")


def read_version():
    init = os.path.join(HERE, "..", "pybroker", "__init__.py")
    with open(init, encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def cdef_from_headers():
    lines = []
    for name in PUBLIC_HEADERS:
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            for line in f:
                if line.startswith("#") and not INT_DEFINE.match(line):
                    continue
                lines.append(re.sub(r"/\*.*?\*/", "", line) if line.startswith("#") else line)
    return "".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(cdef_from_headers())
ffibuilder.set_source(
    "pybroker._core",
    "#include <stdint.h>\n#include <stddef.h>\n"
    + "".join(f'#include "{h}"\n' for h in PUBLIC_HEADERS),
    sources=[os.path.relpath(os.path.join(HERE, s)) for s in SOURCES],
    include_dirs=[HERE],
    define_macros=[("PB_VERSION", '"%s"' % read_version())],
    extra_compile_args=["-O2", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
