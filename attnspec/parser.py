"""Text -> lark parse tree, with lark's errors translated into the user's terms."""

from __future__ import annotations

import difflib
import functools

import lark
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from .diagnostics import AttnError, Source, Span

STATEMENT_KEYWORDS = ("param", "input", "let", "score", "mask", "normalize", "scale", "gqa", "select")

_FRIENDLY = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "COMP_OP": "a comparison",
    "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*', '/', '//' or '%'",
    "POW_OP": "'**'",
    "$END": "end of file",
}


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    from attnspec.grammar import GRAMMAR_PATH

    return lark.Lark(
        GRAMMAR_PATH.read_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
    )


def parse_tree(source: Source) -> lark.Tree:
    try:
        return _parser().parse(source.text)
    except UnexpectedInput as err:
        raise _translate(err, source) from None


def _describe_terminal(name: str) -> str:
    if name in _FRIENDLY:
        return _FRIENDLY[name]
    term = next((t for t in _parser().terminals if t.name == name), None)
    if term is not None and term.pattern.type == "str":
        return f"'{term.pattern.value}'"
    return name.lower()


def _expected(names) -> str:
    shown = sorted({_describe_terminal(n) for n in names})
    if len(shown) > 8:
        return ""
    return " or ".join(shown) if len(shown) <= 2 else ", ".join(shown[:-1]) + " or " + shown[-1]


def _translate(err: UnexpectedInput, source: Source) -> AttnError:
    if isinstance(err, UnexpectedCharacters):
        span = Span(source, err.line, err.column, err.line, err.column + 1)
        char = source.text[err.pos_in_stream] if err.pos_in_stream < len(source.text) else "?"
        return AttnError(f"unexpected character {char!r}", span, _char_hint(char))
    if isinstance(err, UnexpectedToken) and err.token.type != "$END":
        return _unexpected_token(err, source)
    lines = source.lines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=0)
    end_col = len(lines[last]) + 1
    end = Span(source, last + 1, end_col, last + 1, end_col + 1)
    expected = _expected(getattr(err, "expected", ()) or ())
    message = "unexpected end of file" + (f", expected {expected}" if expected else "")
    return AttnError(message, end, "every 'attention NAME {' needs a closing '}'")


def _unexpected_token(err: UnexpectedToken, source: Source) -> AttnError:
    tok = err.token
    end_col = tok.end_column if tok.end_line == tok.line else tok.column + len(str(tok))
    span = Span(source, tok.line, tok.column, tok.line, end_col)
    expected = _expected(err.expected)
    message = f"unexpected {str(tok)!r}" + (f", expected {expected}" if expected else "")
    return AttnError(message, span, _token_hint(str(tok), tok.type, set(err.expected)))


def _char_hint(char: str) -> str | None:
    if char in "&|!":
        return "boolean operators are written 'and', 'or' and 'not'"
    if char in "\"'":
        return "the language has no strings"
    if char == "^":
        return "'^' is not an operator: powers are written a ** b (a float)"
    return None


def _token_hint(text: str, kind: str, expected: set[str]) -> str | None:
    if text == "=" and "COMP_OP" in expected:
        return "use '==' to compare"
    if kind == "COMP_OP" and "AND" in expected:
        return "comparisons do not chain; write a <= b and b < c"
    if kind == "NAME" and "PARAM" in expected:
        close = difflib.get_close_matches(text, STATEMENT_KEYWORDS, n=1)
        if close:
            return f"did you mean '{close[0]}'?"
        return "a statement starts with one of: " + ", ".join(STATEMENT_KEYWORDS)
    if "RBRACE" in expected and kind in ("ATTENTION", "$END"):
        return "the previous spec is missing its closing '}'"
    return None
