"""The generated field reference is current and says what is supported."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.schema.reference import main, render

REFERENCE = Path(__file__).parents[2] / "docs" / "reference" / "resources.md"


def test_committed_reference_is_current() -> None:
    assert main(["--check", str(REFERENCE)]) == 0, "run `make docs`"


def test_check_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "resources.md"
    stale.write_text("# old\n")
    assert main(["--check", str(stale)]) == 1
    assert capsys.readouterr().err == f"{stale} is stale; run `make docs`\n"
    assert main(["--check", str(tmp_path / "missing.md")]) == 1


def test_write_then_check(tmp_path: Path) -> None:
    target = tmp_path / "docs" / "resources.md"
    assert main(["--write", str(target)]) == 0
    assert main(["--check", str(target)]) == 0
    assert target.read_text() == render()


def test_reference_content() -> None:
    text = render()
    assert text == render()
    assert "| `fault` | [HTTPFaultInjection](#httpfaultinjection) | **no**: fault injection" in text
    assert "| `weight` | integer (0 to 2147483647) | yes |" in text
    assert "**not** `SIMPLE`" in text
    assert "| `timeout` | duration | yes |" in text
    assert "| `regex` | string (RE2 regex) | yes |" in text
    for heading in ("## VirtualService", "### HTTPRoute", "### JWTRule", "### ServerTLSSettings"):
        assert f"\n{heading}\n" in text
    # A message used by several kinds is documented once.
    assert text.count("\n### Destination\n") == 1
