"""The README's reference section is generated from the schema and the registry; keep them in sync."""

from pathlib import Path

from rollgraph.stages.reference import BEGIN, END, reference

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_reference_matches_the_schema():
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == reference(), "README reference is stale: run `python -m rollgraph.stages.reference` and paste it"


def test_readme_has_the_two_command_quick_start():
    text = README.read_text()
    assert "make quickstart" in text and "make test" in text
