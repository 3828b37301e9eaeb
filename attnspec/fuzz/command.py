"""`attnspec fuzz`: options checked, modes run, one line per (spec, target), failures in full."""

from __future__ import annotations

import sys
from pathlib import Path

from ..diagnostics import AttnError
from .runner import Options, Report, fuzz_file, fuzz_generated, fuzz_mutations, make_options, replay

STATUS_WORDS = {"ok": "ok", "fail": "FAIL", "refused": "skip", "discard": "skip"}


def run_fuzz(args, consts: dict) -> int:
    options = _options(args, consts)
    if args.case:
        return _print_reports([replay(Path(_one_file(args)), args.case, options, args.spec)])
    if args.front_end:
        return _front_end_only(args.files)
    if not (args.files or args.generate or args.mutate):
        raise AttnError("nothing to fuzz", hint="name .attn files, or ask for --generate N random specs")
    fuzzed = [] if args.mutate else args.files  # with --mutate, the files are what gets corrupted
    reports = [r for name in fuzzed for r in _print_each(fuzz_file(Path(name), options, args.spec))]
    if args.generate:
        reports += _print_each([fuzz_generated(args.generate, options)])
    if args.mutate:
        reports += _print_each([fuzz_mutations(_texts(args.files), args.mutate, options)])
    failed = sum(r.status == "fail" for r in reports)
    print(f"{failed} of {len(reports)} checks failed" if failed else f"all {len(reports)} checks passed")
    return 1 if failed else 0


def _options(args, consts: dict) -> Options:
    if args.generate < 0 or args.mutate < 0:
        raise AttnError("--generate and --mutate cannot be negative")
    return make_options(
        targets=args.target, dtypes=args.dtype, device=args.device, trials=args.trials, seed=args.seed,
        max_len=args.max_len, shrink_seconds=args.shrink_seconds, consts=consts, save_dir=args.save,
        progress=False if args.no_progress else None, grad=args.grad,
    )


def _one_file(args) -> str:
    if len(args.files) != 1:
        raise AttnError("--case replays a case of one file", hint="name exactly one .attn file (and --spec NAME)")
    return args.files[0]


def _texts(files: list[str]) -> list[str]:
    """The texts to corrupt: the files named, else the examples next to the current directory."""
    paths = [Path(f) for f in files] or sorted(Path("examples").glob("*.attn"))
    if not paths:
        raise AttnError("--mutate needs spec texts to corrupt", hint="name .attn files")
    try:
        return [p.read_text(encoding="utf-8") for p in paths]
    except (OSError, UnicodeDecodeError) as err:
        raise AttnError(f"cannot read a file to corrupt: {err}") from None


def _front_end_only(files: list[str]) -> int:
    from .mutate import front_end_check

    if not files:
        raise AttnError("--front-end checks files", hint="name .attn files")
    failed = 0
    for name, text in zip(files, _texts(files)):
        problem = front_end_check(text, name)
        failed += problem is not None
        print(f"{name}: ok (no internal error in the front end or any generator)" if problem is None else f"{name}: INTERNAL ERROR\n    {problem}")
    return 1 if failed else 0


def _print_each(reports: list[Report]) -> list[Report]:
    for report in reports:
        print(f"{STATUS_WORDS[report.status]:<5} {report.what:<44} {report.summary}")
        for line in report.lines:
            print("      " + line)
        sys.stdout.flush()
    return reports


def _print_reports(reports: list[Report]) -> int:
    _print_each(reports)
    return 1 if any(r.status == "fail" for r in reports) else 0
