"""pybroker: the package and its C core (built by cffi from csrc/, no pure-Python fallback)."""
import re

from setuptools import find_packages, setup

with open("pybroker/__init__.py", encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

TEST_DEPS = [
    "pytest>=8",
    "pytest-benchmark>=4",
    "pytest-timeout>=2",
    "hypothesis>=6",
    "crc32c>=2",
    "confluent-kafka>=2.3",
    "kafka-python>=3.0.12",   # ships Kafka's message specs (test_spec_conformance.py)
    "matplotlib>=3.5",   # scripts/loadtest --plot
]

setup(
    name="pybroker",
    version=VERSION,
    description="A Kafka-compatible distributed log broker: the 2011 Kafka paper in Python + C",
    python_requires=">=3.10",
    packages=find_packages(include=["pybroker", "pybroker.*"]),
    setup_requires=["cffi>=1.15"],
    install_requires=["cffi>=1.15", "kazoo>=2.9"],
    extras_require={"test": TEST_DEPS},
    cffi_modules=["csrc/build_core.py:ffibuilder"],
    entry_points={"console_scripts": ["pybroker=pybroker.cli:main"]},
    zip_safe=False,
)
