"""tests/ directories are not packages (sibling helpers are imported by plain name), so
two test or helper modules with one basename would make collection fail with "import
file mismatch" as soon as both run: keep every basename unique."""
import collections
import pathlib

TESTS = pathlib.Path(__file__).resolve().parents[1]


def test_module_basenames_are_unique():
    names = collections.Counter(p.name for p in TESTS.rglob("*.py") if p.name != "conftest.py")
    assert [n for n, c in names.items() if c > 1] == []
