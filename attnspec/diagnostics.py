"""Source spans and user-facing diagnostics.

Every IR node carries a `Span`; every user mistake becomes an `AttnError` that renders as

    file.attn:LINE:COL: error: message
        the source line
            ^^^^^
    hint: what to do instead
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """The text of one .attn file and the name used in messages."""

    name: str
    text: str

    def lines(self) -> list[str]:
        """The lines as the parser counts them: only '\\n' ends a line (not \\x0c, \\u2028, ...)."""
        return [line.removesuffix("\r") for line in self.text.split("\n")]

    def line(self, number: int) -> str:
        lines = self.lines()
        return lines[number - 1] if 0 < number <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A 1-based [start, end) region of a source; end_col is exclusive."""

    source: Source | None
    line: int
    col: int
    end_line: int
    end_col: int

    def __repr__(self) -> str:  # keeps IR dumps short
        return f"Span({self.line}:{self.col})"

    def to(self, other: "Span | None") -> "Span":
        """The span from the start of self to the end of other."""
        if other is None or other.source is not self.source:
            return self
        return Span(self.source, self.line, self.col, other.end_line, other.end_col)


NO_SPAN = Span(None, 0, 0, 0, 0)


class AttnError(Exception):
    """A mistake in the user's spec (or in how it is used): never an internal error."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    def render(self) -> str:
        return render_diagnostic("error", self.message, self.span, self.hint)

    def __str__(self) -> str:
        return self.render()


def decode_source(name: str, data: bytes) -> Source:
    """The Source of a file's bytes: UTF-8, with or without a BOM; bad bytes are located errors."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return Source(name, data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise _not_utf8(name, data, err) from None


def _not_utf8(name: str, data: bytes, err: UnicodeDecodeError) -> AttnError:
    """Point at the first byte that is not UTF-8, counting columns in characters as the parser does."""
    source = Source(name, data.decode("utf-8", errors="replace"))  # the bad byte shows as U+FFFD
    before = data[: err.start].decode("utf-8")
    line, col = before.count("\n") + 1, len(before) - before.rfind("\n")
    span = Span(source, line, col, line, col + 1)
    message = f"the file is not valid UTF-8: byte 0x{data[err.start]:02x} does not start a valid character"
    return AttnError(message, span, _encoding_hint(data))


def _encoding_hint(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "the file looks like UTF-16; save it as UTF-8"
    return "save the file as UTF-8 (for example: iconv -f latin1 -t utf-8); outside comments a spec is plain ASCII"


def render_diagnostic(kind: str, message: str, span: Span | None, hint: str | None) -> str:
    if span is None or span.source is None:
        head = f"{kind}: {message}"
        return head + (f"\nhint: {hint}" if hint else "")
    text = span.source.line(span.line)
    lines = [f"{span.source.name}:{span.line}:{span.col}: {kind}: {message}", f"    {text}"]
    lines.append("    " + _caret_line(text, span))
    if hint:
        lines.append(f"hint: {hint}")
    return "\n".join(lines)


def _caret_line(text: str, span: Span) -> str:
    start = max(span.col - 1, 0)
    end = span.end_col - 1 if span.end_line == span.line else len(text)
    width = max(end - start, 1)
    pad = "".join("\t" if ch == "\t" else " " for ch in text[:start])
    return pad + "^" * width
