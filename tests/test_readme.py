"""The README is for users: the two set-up commands first, a generated results table, a size that stays short."""

from pathlib import Path

from benchmarks.readme_table import families_table, readme_block, table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tables_are_the_ones_generated_from_the_results():
    text = README.read_text()
    assert readme_block(text) == table()  # rerun: python -m benchmarks.readme_table
    assert readme_block(text, "families") == families_table()


def test_readme_opens_with_the_two_commands_and_stays_short():
    text = README.read_text()
    assert text.startswith("# ptq161\n\n```\nmake demo\nmake test\n```\n")
    assert len(text.encode()) < 12 * 1024
    lines = text.splitlines()
    first_screen = "\n".join(lines[:60])  # the commands, what it is, the Python start, the headline rows
    assert "import ptq161" in first_screen and "results-table: begin" in first_screen
    assert "PTQ1.61, `ptq161 quantize MODEL`" in "\n".join(lines[:75])


def test_results_table_quotes_both_sets_and_the_worse_ratio():
    lines = [ln for ln in table().splitlines()[2:]]
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        wt, c4, ratio = float(cells[3]), float(cells[4]), float(cells[5].rstrip("x"))
        assert wt > 0 and c4 > 0 and ratio >= 1.0
