"""Highlighting of .attn files: the Pygments lexer (attnspec/lexer.py, entry point `attn`) and the TextMate
grammar (editors/), both built from the language's word lists (attnspec/vocabulary.py), checked here
against the grammar and the examples so that they cannot drift."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pygments = pytest.importorskip("pygments")

from pygments.token import Error, Keyword, Name  # noqa: E402

from attnspec.lexer import AttnLexer  # noqa: E402
from attnspec.vocabulary import functions, keywords, names  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))


def test_the_keywords_are_the_grammar_s():
    grammar = (ROOT / "grammar" / "attn.lark").read_text()
    for word in ("attention", "mask", "normalize", "prologue", "epilogue", "select", "learnable", "for"):
        assert word in keywords() and f'"{word}"' in grammar
    assert "true" not in keywords() and "and" not in keywords()


def test_every_built_in_function_is_coloured():
    from attnspec import builtins as bi
    from attnspec.expressions import PROLOGUE_FUNCTIONS

    assert set(bi.FUNCTIONS) | set(PROLOGUE_FUNCTIONS) <= set(functions())
    assert {"softmax_rows", "sum_rows", "rope", "sum_kept", "mean"} <= set(functions())
    assert {"q", "kv", "SKV", "score", "softmax", "linear", "float32"} <= set(names())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_lexer_reads_every_example_without_an_error_token(path):
    text = path.read_text()
    tokens = list(AttnLexer().get_tokens(text))
    assert "".join(value for _, value in tokens) == text
    assert not [value for kind, value in tokens if kind in Error]
    kinds = {value: kind for kind, value in tokens}
    assert kinds["attention"] in Keyword and kinds.get("mask", Keyword) in Keyword


def test_a_function_name_is_a_built_in_only_when_called():
    tokens = [(kind, value) for kind, value in AttnLexer().get_tokens("let exp = 1.0\nscore = exp(score)\n") if value.strip()]
    assert tokens[1] == (Name, "exp") and (Name.Builtin, "exp") in tokens


def test_pygmentize_finds_the_lexer_by_its_entry_point():
    from pygments.lexers import get_lexer_by_name, get_lexer_for_filename

    assert isinstance(get_lexer_by_name("attn"), AttnLexer)
    assert isinstance(get_lexer_for_filename("x.attn"), AttnLexer)


def test_the_textmate_grammar_in_the_tree_is_the_generated_one():
    done = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'editors'); import generate; print(generate.text(), end='')"],
                          capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (ROOT / "editors" / "attn.tmLanguage.json").read_text() == done.stdout, "run: python editors/generate.py"
    package = json.loads((ROOT / "editors" / "package.json").read_text())
    assert package["contributes"]["grammars"][0]["scopeName"] == json.loads(done.stdout)["scopeName"]
