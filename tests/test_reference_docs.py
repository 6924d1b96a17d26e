"""The reference docs say what the code does: docs/options.md and README's settings section are
exactly what scripts/gen-docs writes from config.VARIABLES and api.option_table.OPTIONS."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmhost import reference_docs
from llmhost.api.option_table import OPTIONS
from llmhost.config import VARIABLES

ROOT = Path(__file__).resolve().parents[1]
STALE = "{path} is out of date: run scripts/gen-docs and commit the result"


@pytest.mark.parametrize("path", [reference_docs.OPTIONS_PAGE, reference_docs.README], ids=str)
def test_generated_docs_are_up_to_date(path):
    expected = reference_docs.generated(ROOT)[ROOT / path]
    assert (ROOT / path).read_text(encoding="utf-8") == expected, STALE.format(path=path)


def test_every_setting_and_option_is_documented():
    page = reference_docs.options_page()
    readme = reference_docs.readme_section()
    for var in VARIABLES:
        assert f"`{var.name}`" in page and f"`{var.name}`" in readme
    for spec in OPTIONS:
        assert f"| `{spec.name}` |" in page


def test_a_default_computed_on_this_machine_is_documented_in_words():
    """A function default (paths, cores, memory) would put this machine's value in the docs."""
    missing = [var.name for var in VARIABLES if callable(var.default) and not var.documented_default]
    assert missing == []


def test_check_mode_reports_a_stale_page_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "options.md").write_text("old\n")
    (tmp_path / "README.md").write_text(f"# x\n\n{reference_docs.BEGIN}\nold\n{reference_docs.END}\n\nrest\n")
    assert reference_docs.main(["--check", str(tmp_path)]) == 1
    assert (tmp_path / "docs" / "options.md").read_text() == "old\n"
    assert "out of date" in capsys.readouterr().err
    assert reference_docs.main([str(tmp_path)]) == 0
    assert reference_docs.main(["--check", str(tmp_path)]) == 0
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("# x\n\n" + reference_docs.BEGIN) and readme.endswith(reference_docs.END + "\n\nrest\n")
