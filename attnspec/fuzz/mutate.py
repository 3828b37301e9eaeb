"""Corrupted spec text for the front end: `mutated(texts)` and `front_end_check(text)`.

`mutated(texts)` draws one of `texts` (valid specs, say the examples) and applies 1-4 random
`MUTATIONS`: delete, duplicate or swap pieces, insert tokens of the language, odd numbers and stray
bytes, truncate, replace a number by an extreme one, unbalance brackets, nest a term hundreds of
levels deep, or rename a declared name to a reserved word. Most results are not valid specs; the
point is that the compiler must still answer each of them with an `AttnError` (a diagnostic), never
with a traceback.

`front_end_check(text)` runs the front end and every target's lowering and code generation on a text
and returns None when all went well or failed with a proper diagnostic, else a one-paragraph
description of the internal error (the bug a fuzzer reports).

To extend it: a mutation is a function `(draw, text) -> text` in `MUTATIONS`; new vocabulary goes
into `TOKENS`, `ODD_NUMBERS`, `JUNK` or `RESERVED`.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

from hypothesis import strategies as st

from .. import codegen
from ..api import lower
from ..codegen import TARGETS, generator, passes_for
from ..diagnostics import AttnError, Source
from ..frontend import parse_program
from ..verify import verify_program

KEYWORDS = (
    "attention", "param", "input", "let", "score", "mask", "normalize", "scale", "gqa", "group", "select",
    "blocks", "keep", "by", "per", "always", "causal", "runtime", "learnable", "true", "false", "and", "or",
    "not", "softmax", "elementwise", "rownorm", "sink", "top", "threshold", "share", "head", "kv_head",
    "linear", "int", "float", "bool", "float32", "int32", "mean", "dot", "den", "sum_kept",
)
OPERATORS = (
    "+", "-", "*", "/", "//", "%", "**", "<", "<=", ">", ">=", "==", "!=", "=", ",", ":", "&&", "||", "!", "->", ".",
    "...",
)
BRACKETS = ("(", ")", "[", "]", "{", "}")
NAMES = (
    "q", "kv", "b", "h", "SQ", "SKV", "H", "HKV", "B", "D", "DV", "G", "q_block", "kv_block", "k", "v", "x", "window",
    "abs", "clamp", "where", "bitand", "exp", "ilog2", "pow2", "ceildiv", "prologue", "epilogue", "rope", "norm", "sum", "out",
)
ODD_NUMBERS = (
    "99999999999999999999999", "9223372036854775807", "9223372036854775808", "18446744073709551616",
    "1e999", "1e308", "1.7976931348623157e308", "1e-999", "4.9e-324", "0", "0.0", "00", "007", "0x10", "1_000",
    "1.", ".5", "1e", "1e+", "2.5E+2", "-0", "nan", "inf", "1" * 30, "9" * 5000,
)
TOKENS = KEYWORDS + OPERATORS + BRACKETS + NAMES + ODD_NUMBERS
JUNK = (
    "\x00", "\x01", "\x1b", "\x7f", "é", "ß", "\u202e", "\u200b", "\ufeff", "\u2028", "\x85", "\xa0", "\x0c",
    "\t", "\r\n", "\r", "\n", "😀", "👩\u200d💻", "𝔮", "\\", '"', "'", "$", "`", "@", "?", "\udcff",
)
RESERVED = (
    "q", "kv", "b", "h", "score", "input", "lambda", "class", "match", "case", "_x", "__import__", "torch",
    "math", "sum", "type", "print", "None", "exp", "mean", "attention", "select", "true", "SQ", "G", "DV",
    "self", "Module", "triton", "tl", "BLOCK_M", "k", "v", "dot",
)
NESTING_DEPTHS = (5, 63, 64, 65, 199, 200, 300, 1000)
TOKEN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|\*\*|//|[<>=!]=|\S")
NUMBER_RE = re.compile(r"(?<![A-Za-z0-9_.])[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?")
# attnspec's own code: the package and the code generators (beside it in a checkout, inside it in a wheel)
OWN_DIRS = tuple({f"{Path(__file__).resolve().parents[1]}/", f"{Path(codegen.__file__).resolve().parent}/"})
DECLARED_RE = re.compile(r"\b(?:attention|param|input|let)\s+\(?\s*([A-Za-z_][A-Za-z0-9_]*)")


# ------------------------------------------------------------------ positions


def _position(draw, text: str) -> int:
    return draw(st.integers(0, len(text)))


def _span(draw, text: str, longest: int = 40) -> tuple[int, int]:
    start = _position(draw, text)
    return start, min(len(text), start + draw(st.integers(0, longest)))


def _token(draw, text: str) -> re.Match | None:
    tokens = list(TOKEN_RE.finditer(text))
    return draw(st.sampled_from(tokens)) if tokens else None


def _splice(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


# ------------------------------------------------------------------ mutations


def delete_span(draw, text: str) -> str:
    start, end = _span(draw, text)
    return _splice(text, start, end, "")


def duplicate_span(draw, text: str) -> str:
    start, end = _span(draw, text, longest=200)
    return _splice(text, end, end, text[start:end])


def swap_lines(draw, text: str) -> str:
    lines = text.split("\n")
    i, j = (draw(st.integers(0, len(lines) - 1)) for _ in range(2))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def swap_tokens(draw, text: str) -> str:
    a, b = _token(draw, text), _token(draw, text)
    if a is None or a.start() == b.start():
        return text
    first, second = sorted((a, b), key=lambda m: m.start())
    if first.end() > second.start():
        return text
    middle = text[first.end():second.start()]
    return text[: first.start()] + second.group() + middle + first.group() + text[second.end():]


def insert_token(draw, text: str) -> str:
    at = _token_boundary(draw, text)
    return _splice(text, at, at, f" {draw(st.sampled_from(TOKENS))} ")


def _token_boundary(draw, text: str) -> int:
    """Where a token starts or ends (mostly), or anywhere."""
    token = _token(draw, text)
    if token is None or draw(st.integers(0, 3)) == 3:
        return _position(draw, text)
    return token.start() if draw(st.booleans()) else token.end()


def insert_junk(draw, text: str) -> str:
    junk = draw(st.one_of(st.sampled_from(JUNK), st.characters(), st.text(max_size=4)))
    at = _position(draw, text)
    return _splice(text, at, at, junk)


def truncate(draw, text: str) -> str:
    return text[: _position(draw, text)]


def extreme_number(draw, text: str) -> str:
    numbers = list(NUMBER_RE.finditer(text))
    if not numbers:
        return insert_token(draw, text)
    number = draw(st.sampled_from(numbers))
    return _splice(text, number.start(), number.end(), draw(st.sampled_from(ODD_NUMBERS)))


def unbalance_brackets(draw, text: str) -> str:
    brackets = [m for m in re.finditer(r"[()\[\]{}]", text)]
    if brackets and draw(st.booleans()):
        found = draw(st.sampled_from(brackets))
        return _splice(text, found.start(), found.end(), "")
    at = _position(draw, text)
    return _splice(text, at, at, draw(st.sampled_from(BRACKETS)) * draw(st.integers(1, 3)))


def deep_nesting(draw, text: str) -> str:
    """A term nested hundreds of levels deep: parentheses, signs, `not`, calls, or a long chain."""
    token = _token(draw, text)
    if token is None:
        return text
    n = draw(st.sampled_from(NESTING_DEPTHS))
    word = token.group()
    nested = draw(st.sampled_from((
        "(" * n + word + ")" * n,
        "-" * n + word,
        "- " * n + word,
        "not " * n + word,
        "abs(" * n + word + ")" * n,
        word + " + 1" * n,
        word + " ** 2" * n,
        word + "[0]" * n,
    )))
    return _splice(text, token.start(), token.end(), nested)


def rename_to_reserved(draw, text: str) -> str:
    """Every occurrence of one declared name becomes a reserved word (or a reserved word is declared)."""
    declared = sorted({m.group(1) for m in DECLARED_RE.finditer(text)})
    reserved = draw(st.sampled_from(RESERVED))
    if not declared:
        return insert_token(draw, text)
    old = draw(st.sampled_from(declared))
    return re.sub(rf"(?<![A-Za-z0-9_]){re.escape(old)}(?![A-Za-z0-9_])", reserved, text)


MUTATIONS = (
    delete_span, duplicate_span, swap_lines, swap_tokens, insert_token, insert_junk, truncate,
    extreme_number, unbalance_brackets, deep_nesting, rename_to_reserved,
)


@st.composite
def mutated(draw, texts: list[str]) -> str:
    """One of `texts` after 1-4 random mutations."""
    text = draw(st.sampled_from(list(texts)))
    for _ in range(draw(st.integers(1, 4))):
        text = draw(st.sampled_from(MUTATIONS))(draw, text)
    return text


# ------------------------------------------------------------------ the check


def front_end_check(text: str, source_name: str = "<fuzz>") -> str | None:
    """None if the front end and every target's generation succeed or raise a proper AttnError;
    else a one-paragraph description of the internal error (exception, message, last frame).

    The text is parsed and verified as `attnspec.api.load_program` does, but always as text (a
    mutated text is never taken for a file path) and under `source_name`.
    """
    try:
        program = verify_program(parse_program(text, source_name))
    except Exception as err:  # noqa: BLE001 (every exception is classified here)
        return _problem(err, text, "loading the text")
    for spec in program.specs:
        for target in TARGETS:
            problem = _check_target(spec, target, text)
            if problem is not None:
                return problem
    return None


def _check_target(spec, target: str, text: str) -> str | None:
    stage = f"lowering spec '{spec.name}' for the {target} target"
    try:
        lowered = lower(spec, passes=passes_for(target))
        stage = f"generating spec '{spec.name}' for the {target} target"
        source = generator(target)(lowered, "fuzz.attn")
        stage = f"compiling the generated {target} code of spec '{spec.name}'"
        compile(source, f"<generated {target}>", "exec")
    except Exception as err:  # noqa: BLE001
        return _problem(err, text, stage)
    return None


def _problem(err: Exception, text: str, stage: str) -> str | None:
    """None for a proper diagnostic (an AttnError that renders and points into the text)."""
    if not isinstance(err, AttnError):
        return _describe(err, stage)
    try:
        rendered = err.render()
    except Exception as broken:  # noqa: BLE001
        return _describe(broken, f"rendering the diagnostic {err.message!r} raised while {stage}")
    return _diagnostic_problem(err, rendered, text, stage)


def _diagnostic_problem(err: AttnError, rendered, text: str, stage: str) -> str | None:
    lines = len(Source("", text).lines())
    span = err.span
    if not isinstance(rendered, str):
        return f"AttnError while {stage}: render() returned {type(rendered).__name__}, not str: {err.message!r}"
    if err.message.startswith("internal"):
        return _describe(err, stage)
    if span is not None and span.source is not None and not (1 <= span.line <= lines and span.end_line <= lines):
        return f"AttnError while {stage} points at line {span.line}-{span.end_line} of a {lines}-line text: {err.message!r}"
    return None


def _describe(err: BaseException, stage: str) -> str:
    message = str(err) if not isinstance(err, AttnError) else err.message
    message = message if len(message) <= 300 else message[:300] + "..."
    return f"internal error while {stage}: {type(err).__name__}: {message}{_where(err)}"


def _where(err: BaseException) -> str:
    """The last frame, and the last frame in attnspec when that one is in a library (torch, say)."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    ours = [f for f in frames if f.filename.startswith(OWN_DIRS)]
    where = f" at {_frame(frames[-1])}"
    return where + (f", called from {_frame(ours[-1])}" if ours and ours[-1] is not frames[-1] else "")


def _frame(frame: traceback.FrameSummary) -> str:
    return f"{frame.filename}:{frame.lineno} in {frame.name}"
