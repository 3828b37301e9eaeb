"""docs/cookbook.md stays true: every catalog key has a row, every example it links exists (and every
example is linked), and every recipe compiles to every target and agrees with the float64 reference on
random cases (attnspec.testing.fuzz)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attnspec.api import load_program
from attnspec.testing import fuzz

ROOT = Path(__file__).resolve().parent.parent
COOKBOOK = (ROOT / "docs" / "cookbook.md").read_text()
RECIPES = re.findall(r"```attn\n(.*?)```", COOKBOOK, re.S)
CATALOG = ROOT.parent / "shared" / "catalog.md"


def test_every_example_is_linked_and_every_link_exists():
    linked = set(re.findall(r"\(\.\./examples/([\w]+\.attn)\)", COOKBOOK))
    examples = {p.name for p in (ROOT / "examples").glob("*.attn")}
    assert linked == examples, (sorted(examples - linked), sorted(linked - examples))


def test_every_catalog_key_has_a_row():
    rows = set(re.findall(r"^\| ([A-Z][0-9]{2}) \|", COOKBOOK, re.M))
    keys = {path.read_text().split(":")[0].lstrip("# ") for path in (ROOT / "examples").glob("*.attn")}
    assert keys <= rows
    if CATALOG.exists():  # the catalog beside the repository, where it is
        assert set(re.findall(r"^### ([A-Z][0-9]{2}) ", CATALOG.read_text(), re.M)) <= rows


@pytest.mark.parametrize("text", RECIPES, ids=lambda t: re.search(r"attention (\w+)", t).group(1))
def test_every_recipe_agrees_with_the_reference_on_every_target(text, tmp_path):
    assert len(RECIPES) >= 5
    load_program(text)
    reports = fuzz(text, trials=2, max_len=96, shrink_seconds=10, save_dir=str(tmp_path))
    assert reports and all(r.status == "ok" for r in reports), [f"{r.what}: {r.summary}" for r in reports]
