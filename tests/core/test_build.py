"""The compiled C core is the one in use: no silent fallback, no stale build."""
import os

import pybroker
from pybroker import core


def test_core_is_the_compiled_extension():
    path = core._core.__file__
    assert path.endswith(".so"), path
    assert os.path.dirname(path) == os.path.dirname(pybroker.__file__)


def test_core_version_matches_package():
    assert core.CORE_VERSION == pybroker.__version__


def test_hardware_crc_is_used_on_x86_64_with_sse42():
    flags = open("/proc/cpuinfo").read()
    if os.uname().machine == "x86_64" and " sse4_2" in flags:
        assert core.crc32c_hardware()
