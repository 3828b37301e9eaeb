"""The `attnspec` command line: check, compile, show, aot, demo, fuzz.

Exit status: 0 success, 2 a mistake in the input (reported as file:line:col diagnostics),
1 a check that ran and failed (demo, fuzz). Set ATTNSPEC_TRACEBACK=1 to see Python tracebacks.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

from .diagnostics import AttnError

EXIT_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except AttnError as err:
        if os.environ.get("ATTNSPEC_TRACEBACK"):
            raise
        print(err.render(), file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:
        return 0


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .codegen import TARGETS

    parser = argparse.ArgumentParser(prog="attnspec", description="Compile and verify attention variants written in .attn files.")
    parser.add_argument("--version", action="version", version=f"attnspec {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="parse and verify .attn files")
    check.add_argument("files", nargs="+", metavar="FILE", help=".attn files (each spec of each is verified)")
    _const_option(check)
    check.set_defaults(run=cmd_check)

    comp = sub.add_parser("compile", help="print or write the generated module of a spec")
    comp.add_argument("file", metavar="FILE", help="an .attn file")
    comp.add_argument("--target", "-t", default="reference", help=f"{', '.join(TARGETS)} (default reference)")
    comp.add_argument("--spec", help="which spec of the file (needed when it has several)")
    comp.add_argument("-o", "--output", metavar="OUT.py", help="write here instead of printing")
    _const_option(comp)
    comp.set_defaults(run=cmd_compile)

    show = sub.add_parser("show", help="print the IR after passes and draw the mask")
    show.add_argument("file", metavar="FILE", help="an .attn file")
    show.add_argument("--spec", help="which spec of the file (needed when it has several)")
    show.add_argument("--sq", type=int, default=None, help="query length for the drawing (default: the given inputs' SQ, else 32)")
    show.add_argument("--skv", type=int, default=None, help="key length for the drawing (default: the given inputs' SKV, else --sq)")
    show.add_argument(
        "-I", "--input", action="append", default=[], metavar="NAME=VALUE",
        help="draw with this value of an input or runtime param instead of a sample one: a number, true/false, "
        "a comma list, a JSON array, or a .pt/.npy file; it broadcasts to the input's shape (repeatable)",
    )
    show.add_argument("--inputs", metavar="FILE", help="values of several inputs: a dict saved with torch.save (.pt), or an .npz")
    show.add_argument(
        "--png", metavar="PATH",
        help="also write the picture: axes, block grid, tile classes and a title (PNG; .svg or .pdf by the suffix)",
    )
    show.add_argument(
        "--passes", nargs="?", const="", metavar="P1,P2",
        help="print the IR after every pass (or after the passes named, in that order)",
    )
    show.add_argument("--block", type=int, default=16, help="tile size for the drawing's tile analysis (default 16)")
    show.add_argument("--head", type=int, default=0, help="the query head drawn (default 0)")
    show.add_argument("--batch", type=int, default=0, help="the batch entry drawn (default 0)")
    _const_option(show)
    show.set_defaults(run=cmd_show)

    aot = sub.add_parser(
        "aot", help="compile a spec's triton kernels for a GPU architecture (no GPU needed) and report their machine code",
        description="Compile every triton kernel a call launches (with --backward, its gradient's too) for a GPU "
        "architecture, on this machine, and report per kernel and autotune candidate: registers, spills, shared "
        "memory, tensor-core products and TMA loads (docs/triton.md). Exit status 1 when a kernel fails to "
        "compile, or with --strict when a default candidate does not fit.",
    )
    aot.add_argument("files", nargs="+", metavar="FILE", help=".attn files (every spec of each, or --spec)")
    aot.add_argument("--spec", help="only this spec (of a single file)")
    aot.add_argument("--arch", action="append", default=[], help="sm_90a (default), sm_80, sm_86, sm_89 (repeatable)")
    aot.add_argument("--dtype", action="append", default=[], help="bf16 (default), fp16, fp32 (repeatable)")
    aot.add_argument("--head-dim", action="append", type=int, default=[], metavar="D", help="head dim (repeatable; default 64 and 128)")
    aot.add_argument("--backward", action="store_true", help="also the dQ and dK/dV kernels")
    aot.add_argument("--kernel", action="append", choices=("forward", "dq", "dkdv", "kept", "linear", "prologue"), default=[], help="only these kernels (repeatable)")
    aot.add_argument("--all-candidates", action="store_true", help="every autotune candidate, not only the default")
    aot.add_argument("--tf32", action="store_true", help="fp32 products on TF32 tensor cores, as under torch.set_float32_matmul_precision('high')")
    aot.add_argument("--strict", action="store_true", help="exit 1 when a default candidate spills or exceeds shared memory")
    aot.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    aot.add_argument("--jobs", "-j", type=int, default=1, help="compile in this many processes (default 1)")
    _const_option(aot)
    aot.set_defaults(run=cmd_aot)

    demo = sub.add_parser("demo", help="compile specs to every target, run them, check against the float64 reference")
    demo.add_argument("files", nargs="*", metavar="FILE", help="default: examples/*.attn")
    demo.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    demo.set_defaults(run=cmd_demo)
    _fuzz_parser(sub)
    return parser


def _fuzz_parser(sub) -> None:
    fuzz = sub.add_parser(
        "fuzz", help="check targets against the float64 reference on random cases, specs and corrupted text",
        description="Property-based checks (hypothesis, with shrinking) of every target against the float64 "
        "reference. Exit status 1 when a check fails; the report gives the smallest failing case and a "
        "command that replays it.",
    )
    fuzz.add_argument("files", nargs="*", metavar="FILE", help="specs to fuzz (every spec of each file, or --spec)")
    fuzz.add_argument("--spec", help="only this spec of the file")
    fuzz.add_argument("--target", "-t", action="append", default=[], help="a target to check (repeatable; default: every fast target installed)")
    fuzz.add_argument("--trials", type=int, default=25, help="cases per spec and target (default 25)")
    fuzz.add_argument("--seed", type=int, default=0, help="seed of the drawn cases and specs (default 0)")
    fuzz.add_argument("--dtype", action="append", default=[], help="float32, bfloat16, float16 (repeatable; default: all three)")
    fuzz.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    fuzz.add_argument("--max-len", type=int, default=0, help="longest SQ / SKV drawn (default 300 on the CPU, 2048 on a GPU)")
    fuzz.add_argument("--case", help="replay exactly this case (as a failure report printed it)")
    fuzz.add_argument("--generate", type=int, default=0, metavar="N", help="also fuzz N random specs")
    fuzz.add_argument("--mutate", type=int, default=0, metavar="N", help="instead, feed N corrupted versions of the files (default examples/*.attn) to the front end")
    fuzz.add_argument("--front-end", action="store_true", help="only run the files through the front end and every code generator")
    fuzz.add_argument("--grad", action="store_true", help="also check the gradients of q, k, v and the float inputs (triton; flex on a GPU)")
    fuzz.add_argument("--shrink-seconds", type=float, default=60.0, help="time allowed to shrink a failure (default 60)")
    fuzz.add_argument("--save", default="fuzz-failures", metavar="DIR", help="where failing generated specs are written")
    fuzz.add_argument("--no-progress", action="store_true", help="no progress bar")
    _const_option(fuzz)
    fuzz.set_defaults(run=cmd_fuzz)


def _const_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-D", "--const", action="append", default=[], metavar="NAME=VALUE", help="value of a compile-time param")


def parse_consts(items: list[str]) -> dict[str, object]:
    consts: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise AttnError(f"bad -D option '{item}'", hint="write -D NAME=VALUE, e.g. -D window=256")
        consts[name] = _literal(text.strip(), item)
    return consts


def _literal(text: str, item: str):
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise AttnError(f"bad value in -D {item}", hint="values are integers, floats, true or false")


# ---------------------------------------------------------------- commands


def cmd_check(args) -> int:
    """Each file's specs verified; a -D applies to the specs that declare its param, and naming a param
    that no spec of the files declares is a mistake (a misspelt -D would otherwise check nothing)."""
    from .api import load_program

    consts = parse_consts(args.const)
    programs = {}
    for name in args.files:
        try:
            programs[name] = load_program(Path(name))
        except AttnError as err:
            programs[name] = err
    declared = {p.name for program in programs.values() if not isinstance(program, AttnError)
                for s in program.specs for p in s.params}
    unknown = sorted(set(consts) - declared)
    if unknown and len(programs) > sum(isinstance(p, AttnError) for p in programs.values()):
        files = "the file" if len(args.files) == 1 else f"the {len(args.files)} files"
        raise AttnError(f"no spec of {files} declares a param '{unknown[0]}' (given with -D)",
                        hint="a -D names a compile-time param: param NAME: TYPE = DEFAULT")
    failed = 0
    for name, program in programs.items():
        try:
            if isinstance(program, AttnError):
                raise program
            _check_program(name, program, consts)
        except AttnError as err:
            if os.environ.get("ATTNSPEC_TRACEBACK"):
                raise
            print(err.render(), file=sys.stderr)
            failed += 1
    return EXIT_INPUT if failed else 0


def _check_program(name: str, program, consts: dict) -> None:
    from .api import lower

    for spec in program.specs:
        if _has_all_values(spec, consts):
            lower(spec, {k: v for k, v in consts.items() if spec.param(k)})
    print(f"{name}: ok ({', '.join(s.name for s in program.specs) or 'no specs'})")


def _has_all_values(spec, consts) -> bool:
    return all(p.runtime or p.default is not None or p.name in consts for p in spec.params)


def cmd_compile(args) -> int:
    from .api import compile_source

    source = compile_source(Path(args.file), args.target, args.spec, **parse_consts(args.const))
    if args.output:
        _write_atomic(Path(args.output), source)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(source)
    return 0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise AttnError(f"cannot write {path}: {err.strerror}") from None


def _coloured(text: str) -> str:
    """Spec text coloured for a terminal (attnspec/lexer.py), where stdout is one, NO_COLOR is unset and
    Pygments is installed; as it is otherwise."""
    if not sys.stdout.isatty() or os.environ.get("NO_COLOR"):
        return text
    try:
        from pygments import highlight
        from pygments.formatters import TerminalFormatter

        from .lexer import AttnLexer
    except ImportError:
        return text
    return highlight(text, AttnLexer(), TerminalFormatter()).rstrip("\n")


def cmd_show(args) -> int:
    from .api import load_program, lower, pick_spec
    from .passes import OPTIMIZE
    from .figure import picture_format
    from .given import parse_given
    from .printer import print_spec
    from .show import (MAX_LENGTH, analyse_tiles, ascii_mask, band_report, draw_mask, drawing_sizes, flex_report, row_map_report,
                       tile_report, triton_report)

    for option, value in (("--sq", args.sq), ("--skv", args.skv)):
        if value is not None and not 1 <= value <= MAX_LENGTH:
            raise AttnError(f"{option} must be from 1 to {MAX_LENGTH}")
    if args.block < 1:
        raise AttnError("--block must be positive")
    if args.head < 0 or args.batch < 0 or args.head > 4096 or args.batch > 4096:
        raise AttnError("--head and --batch are indices from 0 to 4096")
    given = parse_given(args.input, args.inputs)
    if args.png:
        picture_format(args.png)  # a suffix it cannot write is refused before anything is drawn
    program = load_program(Path(args.file))
    spec = pick_spec(program, args.spec)
    consts = parse_consts(args.const)
    if args.passes is not None:
        names = [n.strip() for n in args.passes.split(",") if n.strip()] or OPTIMIZE
        lower(spec, consts, trace=lambda name, s: print(_coloured(f"# after {name}\n{print_spec(s)}")), passes=names)
    lowered = lower(spec, consts, passes=OPTIMIZE)
    sizes = drawing_sizes(lowered, args.sq, args.skv, args.batch, args.head, given)
    if args.passes is None:
        print(_coloured(print_spec(lowered)))
    drawing = draw_mask(lowered, sizes, Path(program.source_name).name, batch=args.batch, head=args.head, given=given)
    for line in drawing.describe():
        print(line)
    if drawing.exact and sizes.SQ <= 128 and sizes.SKV <= 160:
        sel = lowered.selection
        block = (sel.q_block.literal, sel.kv_block.literal) if sel is not None else None
        print(ascii_mask(drawing.mask, block))
    elif args.png:
        print(f"# (too large to draw in the terminal; the PNG shows it: {args.png})")
    else:
        print("# (too large to draw in the terminal; use --png)")
    analysis = analyse_tiles(lowered, drawing.sizes, args.block, drawing.args)
    reports = band_report(lowered, drawing.sizes, drawing.args) + tile_report(lowered, analysis, given=given)
    for line in reports + flex_report(lowered) + triton_report(lowered) + row_map_report(lowered):
        print(line)
    if args.png:
        _write_picture(args.png, lowered, Path(program.source_name).name, drawing, analysis)
    return 0


def _write_picture(path: str, spec, source_name: str, drawing, analysis) -> None:
    """The annotated picture where matplotlib is installed, else the bare one (a pixel square per pair)."""
    from .figure import plotting, title_of, write_figure
    from .show import png_scale, write_png

    sel = spec.selection
    grid = (sel.q_block.literal, sel.kv_block.literal) if sel is not None else (analysis.q_block, analysis.kv_block)
    if plotting():
        width, height = write_figure(drawing, analysis, grid, title_of(spec.name, source_name, drawing, analysis), path)
        print(f"# wrote {path} ({width} x {height} pixels: pairs over their tile classes, "
              f"{grid[0]}x{grid[1]} block grid)")
        return
    scale = png_scale(drawing.mask)
    try:
        write_png(drawing.mask, path, scale)
    except OSError as err:
        raise AttnError(f"cannot write {path}: {err.strerror}") from None
    rows, cols = drawing.mask.shape
    print(f"# wrote {path} ({cols * scale} x {rows * scale} pixels: {scale} x {scale} per drawn pair; "
          "install attnspec[plot] for axes, block grid and tile classes)")


def cmd_aot(args) -> int:
    import json

    from . import aot

    options = dict(
        consts=parse_consts(args.const), archs=tuple(args.arch or ["sm_90a"]), dtypes=tuple(args.dtype or ["bf16"]),
        head_dims=tuple(args.head_dim or [64, 128]), backward=args.backward, every_candidate=args.all_candidates,
        kernels=tuple(args.kernel) or None, tf32=args.tf32,
    )
    if args.spec is not None:
        if len(args.files) != 1:
            raise AttnError("--spec names a spec of one file", hint="give a single FILE with --spec")
        reports = aot.report(Path(args.files[0]), spec=args.spec, **options)
    else:
        reports = aot.report_files([Path(f) for f in args.files], jobs=args.jobs, **options)
    print(aot.render_table(reports))
    if args.json:
        _write_atomic(Path(args.json), json.dumps([r.as_dict() for r in reports], indent=1) + "\n")
    failed = [r for r in reports if r.error is not None]
    misfits = [r for r in reports if r.candidate == 0 and not r.fits]
    return 1 if failed or (args.strict and misfits) else 0


def cmd_demo(args) -> int:
    from .fuzz.demo import run_demo

    files = args.files or sorted(glob.glob("examples/*.attn"))
    if not files:
        raise AttnError("no .attn files given and none found in examples/")
    return 0 if run_demo(files, seed=args.seed) else 1


def cmd_fuzz(args) -> int:
    from .fuzz.command import run_fuzz

    return run_fuzz(args, parse_consts(args.const))
