"""The three fuzz modes and the replay of one case, each returning `Report`s.

- `fuzz_file`: every spec of a file (or one) on every target that accepts it, `trials` cases each;
- `fuzz_generated`: random specs from the grammar's constructs, each through the front end, then one
  case on every target that accepts it;
- `fuzz_mutations`: corrupted spec text through the front end and code generation;
- `replay`: one case, exactly as a failure report printed it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

from ..api import load_program, pick_spec
from ..codegen import TARGETS
from ..diagnostics import AttnError
from .cases import DTYPES, Case, cases, parse_case
from .compare import FAIL, OK, Outcome, Subject, run_case
from .progress import Progress
from .repro import case_lines, text_lines
from .search import Result, Search


@dataclass(frozen=True)
class Options:
    targets: tuple[str, ...] = ()  # empty: every fast target installed
    trials: int = 25
    seed: int = 0
    dtypes: tuple[str, ...] = tuple(DTYPES)
    device: str = "cpu"
    max_len: int = 0  # 0: 300 on the CPU, 2048 on a GPU
    shrink_seconds: float = 60.0
    consts: dict = field(default_factory=dict)
    save_dir: str = "fuzz-failures"
    progress: bool | None = None  # None: on a terminal
    grad: bool = False  # also hold gradients to the rule, on targets that have a backward here

    def chosen_targets(self) -> tuple[str, ...]:
        return self.targets or available_targets()

    def longest(self) -> int:
        return self.max_len or (2048 if self.device.startswith("cuda") else 300)


def make_options(*, targets=(), dtypes=(), device: str | None = None, **rest) -> Options:
    """Options from a user's values (the command line's or attnspec.testing's), checked once, with
    AttnErrors that say what is accepted; `device` defaults to cuda where there is one."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AttnError(f"--device {device}: no CUDA GPU is available", hint="fuzz on the CPU with --device cpu")
    unknown = [t for t in targets if t not in available_targets()]
    if unknown:
        raise AttnError(f"cannot fuzz target '{unknown[0]}'", hint="targets checked against the reference: " + ", ".join(available_targets()))
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise AttnError(f"unknown --dtype '{bad[0]}'", hint="dtypes: " + ", ".join(DTYPES))
    if rest.get("trials", 1) < 1 or rest.get("max_len", 0) < 0:
        raise AttnError("--trials must be positive and --max-len cannot be negative")
    return Options(targets=tuple(targets), dtypes=tuple(dtypes) or Options.dtypes, device=device, **rest)


@dataclass
class Report:
    what: str
    status: str  # ok, fail, refused
    summary: str
    lines: list[str] = field(default_factory=list)


def available_targets() -> tuple[str, ...]:
    """The fast targets whose runtime is installed (the reference is the oracle, not a subject)."""
    return tuple(t for t in TARGETS if t != "reference" and (t != "triton" or importlib.util.find_spec("triton")))


def prepare_device(device: str) -> None:
    """On the CPU, triton kernels run in Triton's interpreter; it must be chosen before they are built."""
    if not device.startswith("cuda"):
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # masked lanes compute log(0) and 0 / 0 before tl.where drops them; the interpreter's numpy says so
    for category in (RuntimeWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module="triton.runtime.interpreter")


# ---------------------------------------------------------------- specs of a file


def fuzz_file(source, options: Options, spec_name: str | None = None) -> list[Report]:
    """source: a path, or the text of a .attn file (saved under options.save_dir if a case fails)."""
    prepare_device(options.device)
    program = load_program(source)
    specs = [pick_spec(program, spec_name)] if spec_name else list(program.specs)
    origin = _Origin(source, program.source_name, options.save_dir)
    reports = []
    for spec in specs:
        subject = Subject.build(spec, options.chosen_targets(), Path(program.source_name).name, options.consts)
        for target in options.chosen_targets():
            reports.append(_fuzz_target(origin, subject, target, options))
    return reports


@dataclass
class _Origin:
    """Where a spec came from, and the path a reproduction command names (text is saved first)."""

    source: object
    source_name: str
    save_dir: str

    def name(self) -> str:
        return Path(self.source_name).name

    def path(self) -> str:
        if self.source_name != "<string>":
            return self.source_name
        return _save(self.source, self.save_dir, "spec")


def _fuzz_target(origin: _Origin, subject: Subject, target: str, options: Options) -> Report:
    what = f"{origin.name()}:{subject.spec.name} {target}"
    if target in subject.refused:
        return Report(what, "refused", f"not accepted: {subject.refused[target].message}")
    progress = Progress(what, options.trials, enabled=options.progress)
    search = Search(progress, options.shrink_seconds)

    def prop(case):
        search.expect(case, lambda: run_case(subject, case, options.device))

    strategy = cases(subject.spec, target, options.dtypes, options.longest(), options.grad)
    result = search.run({"case": strategy}, prop, options.trials, options.seed)
    progress.close()
    lines = case_lines(origin.path(), subject.spec.name, options, *_found(result)) if result.found else []
    summary = _summary(result)
    return Report(what, FAIL if result.found else OK, summary, lines)


def _found(result: Result) -> tuple[Case, Outcome]:
    return result.found.value, result.found.outcome


def _summary(result: Result) -> str:
    text = f"{result.trials} trials, {result.discarded} discarded"
    return f"{text}; {result.note}" if result.note else text


# ---------------------------------------------------------------- one case


def replay(source, case_text: str, options: Options, spec_name: str | None = None) -> Report:
    prepare_device(options.device)
    case = parse_case(case_text)
    if case.target not in available_targets():
        raise AttnError(f"the case names target '{case.target}'", hint="fast targets: " + ", ".join(available_targets()))
    program = load_program(source)
    name = Path(program.source_name).name
    subject = Subject.build(pick_spec(program, spec_name), (case.target,), name, options.consts)
    what = f"{name}:{subject.spec.name} {case.target}"
    if case.target in subject.refused:
        return Report(what, "refused", f"not accepted: {subject.refused[case.target].message}")
    outcome = run_case(subject, case, options.device)
    return Report(what, outcome.status, f"replayed 1 case: {outcome.detail}")


# ---------------------------------------------------------------- generated specs


def fuzz_generated(count: int, options: Options) -> Report:
    """`count` random specs; each must be rejected cleanly or agree with the reference everywhere."""
    from .mutate import front_end_check
    from .specgen import specs

    prepare_device(options.device)
    progress = Progress("generated specs", count, enabled=options.progress)
    search = Search(progress, options.shrink_seconds)
    subjects: dict[str, Subject | None] = {}

    def prop(text, data):
        search.expect(("front end", text), lambda: _front_end(front_end_check, text), value=(text, None))
        subject = _generated_subject(subjects, text, options)
        for target in [] if subject is None else subject.modules:
            case = data.draw(cases(subject.spec, target, options.dtypes, options.longest(), options.grad), label=target)
            search.expect((text, case), lambda: run_case(subject, case, options.device), value=(text, case), discard=False)

    result = search.run({"text": specs(), "data": st.data()}, prop, count, options.seed)
    progress.close()
    lines = _generated_lines(result, options) if result.found else []
    return Report("generated specs", FAIL if result.found else OK, _summary(result), lines)


def _front_end(check, text: str) -> Outcome:
    problem = check(text)
    return Outcome(OK) if problem is None else Outcome(FAIL, problem)


def _generated_subject(subjects: dict, text: str, options: Options) -> Subject | None:
    """The subject of a generated spec, or None when the front end rejects it (cleanly: checked)."""
    if text not in subjects:
        try:
            spec = load_program(text).specs[0]
            subjects[text] = Subject.build(spec, options.chosen_targets(), "generated.attn")
        except AttnError:
            subjects[text] = None
    return subjects[text]


def _generated_lines(result: Result, options: Options) -> list[str]:
    text, case = result.found.value
    path = _save(text, options.save_dir, "generated")
    if case is None:
        return text_lines(path, text, result.found.outcome)
    return text_lines(path, text, None) + case_lines(path, None, options, case, result.found.outcome)


# ---------------------------------------------------------------- mutated text


def fuzz_mutations(texts: list[str], count: int, options: Options) -> Report:
    """`count` corrupted texts: each must compile or fail with a diagnostic, never an internal error."""
    from .mutate import front_end_check, mutated

    progress = Progress("mutated specs", count, enabled=options.progress)
    search = Search(progress, options.shrink_seconds)

    def prop(text):
        search.expect(text, lambda: _front_end(front_end_check, text))

    result = search.run({"text": mutated(texts)}, prop, count, options.seed)
    progress.close()
    lines = []
    if result.found:
        path = _save(result.found.value, options.save_dir, "mutated")
        lines = text_lines(path, result.found.value, result.found.outcome)
    return Report("mutated specs", FAIL if result.found else OK, _summary(result), lines)


def _save(text: str, directory: str, kind: str) -> str:
    """A failing spec's text, kept where its reproduction command can find it."""
    name = f"{kind}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}.attn"
    path = Path(directory) / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    except OSError as err:
        raise AttnError(f"cannot save the failing spec to {path}: {err.strerror}") from None
    return str(path)
