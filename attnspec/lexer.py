"""A Pygments lexer for .attn files, registered as `attn` through the `pygments.lexers` entry point
(`pygmentize -l attn`, Sphinx and MkDocs highlighting); `attnspec show` colours with it on a terminal.
Its words come from attnspec/vocabulary.py, the grammar's and the registries' own lists."""

from __future__ import annotations

from pygments.lexer import RegexLexer, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, Text

from .vocabulary import CONSTANTS, OPERATOR_WORDS, functions, keywords, names


class AttnLexer(RegexLexer):
    name = "attnspec"
    aliases = ["attn", "attnspec"]
    filenames = ["*.attn"]
    mimetypes = ["text/x-attn"]

    tokens = {
        "root": [
            (r"\s+", Text),
            (r"#.*?$", Comment.Single),
            (words(keywords(), suffix=r"\b"), Keyword),
            (words(CONSTANTS, suffix=r"\b"), Keyword.Constant),
            (words(OPERATOR_WORDS, suffix=r"\b"), Operator.Word),
            (words(functions(), suffix=r"\b(?=\s*\()"), Name.Builtin),
            (words(names(), suffix=r"\b"), Name.Builtin.Pseudo),
            (r"[0-9]+\.[0-9]*([eE][-+]?[0-9]+)?|\.[0-9]+([eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+", Number.Float),
            (r"[0-9]+", Number.Integer),
            (r"[A-Za-z_][A-Za-z0-9_]*", Name),
            (r"\*\*|//|<=|>=|==|!=|[-+*/%<>=]", Operator),
            (r"[()\[\]{},:]", Punctuation),
        ],
    }
