"""The README's benchmark table is generated from bench/results: it cannot drift from the result files."""

from __future__ import annotations

from pathlib import Path

from bench import table

REPO = Path(__file__).resolve().parent.parent


def test_readme_table_matches_the_result_files():
    assert table.readme_block((REPO / "README.md").read_text(encoding="utf-8")) == table.markdown()


def test_check_exits_1_when_the_readme_differs(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{table.BEGIN}\n{table.markdown()}\n{table.END}\n", encoding="utf-8")
    assert table.main(["--check", str(readme)]) == 0
    readme.write_text(f"{table.BEGIN}\n| an old | table |\n{table.END}\n", encoding="utf-8")
    assert table.main(["--check", str(readme)]) == 1


def test_every_row_links_to_its_details():
    for row in table.rows():
        assert row[-1].startswith("[") and "](" in row[-1]
        target = row[-1].split("](", 1)[1].rstrip(")").split("#")[0]
        assert (REPO / target).exists(), target
