"""Writes the TextMate grammar of .attn files (editors/attn.tmLanguage.json) from the language's word
lists (attnspec/vocabulary.py), for VS Code-style editors; tests/test_editors.py checks that the file
in the tree is what this writes.

    python editors/generate.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from attnspec.vocabulary import CONSTANTS, OPERATOR_WORDS, functions, keywords, names

HERE = Path(__file__).resolve().parent


def _alternatives(items) -> str:
    return "|".join(re.escape(w) for w in sorted(items, key=lambda w: (-len(w), w)))


def grammar() -> dict:
    return {
        "$schema": "https://raw.githubusercontent.com/martinring/tmlanguage/master/tmlanguage.json",
        "name": "attnspec",
        "scopeName": "source.attn",
        "fileTypes": ["attn"],
        "patterns": [
            {"name": "comment.line.number-sign.attn", "match": "#.*$"},
            {"name": "keyword.control.attn", "match": rf"\b({_alternatives(keywords())})\b"},
            {"name": "constant.language.attn", "match": rf"\b({_alternatives(CONSTANTS)})\b"},
            {"name": "keyword.operator.word.attn", "match": rf"\b({_alternatives(OPERATOR_WORDS)})\b"},
            {"name": "support.function.attn", "match": rf"\b({_alternatives(functions())})\b(?=\s*\()"},
            {"name": "variable.language.attn", "match": rf"\b({_alternatives(names())})\b"},
            {"name": "constant.numeric.float.attn",
             "match": r"\b[0-9]+\.[0-9]*([eE][-+]?[0-9]+)?|\.[0-9]+([eE][-+]?[0-9]+)?|\b[0-9]+[eE][-+]?[0-9]+"},
            {"name": "constant.numeric.integer.attn", "match": r"\b[0-9]+\b"},
            {"name": "keyword.operator.attn", "match": r"\*\*|//|<=|>=|==|!=|[-+*/%<>=]"},
        ],
    }


def text() -> str:
    return json.dumps(grammar(), indent=2) + "\n"


if __name__ == "__main__":
    (HERE / "attn.tmLanguage.json").write_text(text(), encoding="utf-8")
    print(f"wrote {HERE / 'attn.tmLanguage.json'}")
