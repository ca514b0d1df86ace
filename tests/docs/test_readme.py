"""The README's configuration reference is the one the code generates."""
import pathlib

from pybroker.config import reference_table

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_configuration_table_matches_the_settings():
    assert reference_table() in README.read_text(), (
        "README.md's configuration table is stale: paste the output of "
        "python -c 'from pybroker.config import reference_table as t; print(t())'")


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test" in README.read_text() and "scripts/test" in ci
