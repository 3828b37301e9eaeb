"""What a failure report prints: the smallest failing case and how to reproduce it, as one command
line and as a Python snippet."""

from __future__ import annotations

import shlex

from .cases import Case
from .compare import Outcome


def case_lines(path: str, spec_name: str | None, options, case: Case, outcome: Outcome) -> list[str]:
    return [
        f"smallest failing case: {case}",
        f"what went wrong: {outcome.detail}",
        "reproduce: " + replay_command(path, spec_name, options, case),
        "in Python: " + replay_snippet(path, spec_name, options, case),
    ]


def replay_command(path: str, spec_name: str | None, options, case: Case) -> str:
    words = ["attnspec", "fuzz", path]
    words += ["--spec", spec_name] if spec_name else []
    words += [f"-D{name}={_value(value)}" for name, value in sorted(options.consts.items())]
    words += ["--device", options.device] if options.device != "cpu" else []
    return " ".join(shlex.quote(w) for w in words + ["--case", str(case)])


def replay_snippet(path: str, spec_name: str | None, options, case: Case) -> str:
    extra = f", spec={spec_name!r}" if spec_name else ""
    extra += f", consts={dict(sorted(options.consts.items()))!r}" if options.consts else ""
    extra += f", device={options.device!r}" if options.device != "cpu" else ""
    return f"from attnspec.testing import replay; replay({path!r}, {str(case)!r}{extra})"


def text_lines(path: str, text: str, outcome: Outcome | None) -> list[str]:
    lines = [f"smallest failing spec, saved to {path}:"] + ["    " + line for line in text.splitlines()]
    if outcome is not None:
        lines += [f"what went wrong: {outcome.detail}", "reproduce: " + shlex.join(["attnspec", "check", path])]
    return lines


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
