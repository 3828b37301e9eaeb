"""Compile time grows at most polynomially with the spec: the analyses that case-split or enumerate
give up, or sample, within a work budget (docs/optimizer.md, "Limits and fallbacks").

A sum of n kv-dependent `where` terms made the closed-form band search split 2^n cases (62 terms:
never finished), and the flex target's agreement probe evaluated every (query, key) pair of its
probe sizes at every node of the mask (the 62-term ladder read by head: more than 14 GB). Each
compile here must finish under GROSS_BUDGET seconds, where the old code takes hours: a check of
complexity, not of performance (design.md section 6), so the bound is far above the real figures
(seconds at most). An overrun fails at the bound instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import signal

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import attnspec
from attnspec.analysis import bands as bands_module
from attnspec.analysis import interval, precision
from attnspec.analysis.bands import evaluate_bands, key_bands
from attnspec.analysis.precision import tile_agreement
from attnspec.analysis.tiles import EMPTY, FULL, PARTIAL, classify_tiles
from attnspec.api import build_module, load_program, lower, pick_spec
from attnspec.cli import main
from attnspec.diagnostics import AttnError
from attnspec.fuzz.specgen import specs
from attnspec.ir import inline_bindings
from attnspec.sample import Sizes, sample_arguments, sample_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GROSS_BUDGET = 60  # a hang guard, not a timing claim: compiles take under 6 s, the old code's took hours
GROSS_MEMORY = 6 * 2**30  # bytes of address space per compile; today's under 0.5 GB, the old probe's > 14
TARGETS = ("reference", "flex", "triton")
TERMS = 62  # 2 ** 62 still fits the 64-bit ints of the language


class OverBudget(AssertionError):
    pass


@contextlib.contextmanager
def within(seconds: float, what: str):
    """Fail (instead of hanging, or filling the machine's memory) when the body runs longer than
    `seconds` or asks for more than GROSS_MEMORY more bytes of address space."""
    def overrun(signum, frame):
        raise OverBudget(f"{what} took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, overrun)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        with memory_cap(GROSS_MEMORY):
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def memory_cap(extra: int):
    """RLIMIT_AS at the current address space + extra (a MemoryError past it), where settable."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/status") as status:
            used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        cap = used + extra
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ImportError, OSError, StopIteration, ValueError):
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def balanced_sum(terms: list[str]) -> str:
    """a + b + ... as a balanced tree: a left-leaning chain of 62 terms passes the nesting limit."""
    if len(terms) == 1:
        return terms[0]
    mid = len(terms) // 2
    return f"({balanced_sum(terms[:mid])} + {balanced_sum(terms[mid:])})"


def ladder(condition: str, value: str = "1", n: int = TERMS) -> str:
    return balanced_sum([f"where({condition.format(i=i, p=2**i)}, {value.format(i=i, p=2 ** (i % 40))}, 0)" for i in range(1, n + 1)])


LADDERS = {
    # floor(log2(q - kv)) <= 3 as an exact ladder: the band [q - 15, q] in four pieces
    "log2_ladder": f"attention log2_ladder {{\n    let d = q - kv\n    mask kv <= q and {ladder('d >= {p}')} <= 3\n}}\n",
    # a count of the distances passed: min(q - kv, 62) <= 5
    "count_ladder": f"attention count_ladder {{\n    mask kv <= q and {ladder('q - kv >= {i}')} <= 5\n}}\n",
    # distinct weights: 2^62 distinct partial sums, so the band search must give up
    "weighted_ladder": f"attention weighted_ladder {{\n    mask kv <= q and {ladder('q - kv >= {i}', '{p}')} <= 1000\n}}\n",
    # every term reads the head: the probe's pair-level intervals carry H
    "per_head_ladder": f"attention per_head_ladder {{\n    let d = q - kv\n    mask kv <= q and {ladder('d + h >= {p}')} <= 3\n}}\n",
    # the ladder as a log-distance bucket in the score mod and the mask
    "bucket_ladder": (
        "attention bucket_ladder {\n    input slope: float32[H] learnable\n    let d = q - kv\n"
        f"    let bucket = {ladder('d >= {p}')}\n"
        "    score = score - slope[h] * float(bucket)\n    mask kv <= q and bucket <= 4\n}\n"
    ),
    # every tile partial (parity of kv): the probe samples its tiles instead of checking them all
    "parity_ladder": f"attention parity_ladder {{\n    let d = q - kv\n    mask (kv + b) % 2 == 0 and {ladder('d + h >= {p}')} <= 3\n}}\n",
}


@pytest.fixture(scope="module")
def ladder_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ladders")
    files = {}
    for name, text in LADDERS.items():
        files[name] = folder / f"{name}.attn"
        files[name].write_text(text)
    return files


def lowered(source: str, target: str = "triton"):
    from attnspec.codegen import passes_for

    return lower(pick_spec(load_program(source), None), passes=passes_for(target))


# ------------------------------------------------------------------ every target, and show


@pytest.mark.parametrize("target", TARGETS + ("show",))
@pytest.mark.parametrize("name", LADDERS)
def test_ladders_compile_within_the_gross_budget(ladder_files, name, target, capsys):
    path = str(ladder_files[name])
    with within(GROSS_BUDGET, f"{name} for {target}"):
        if target == "show":
            assert main(["show", path]) in (0, None)
        else:
            attnspec.compile(path, target=target, cache=False)
    if target == "show":
        assert "flex target: BlockMask" in capsys.readouterr().out


# ------------------------------------------------------------------ closed-form bands


def test_the_62_term_log2_ladder_keeps_its_exact_closed_form():
    spec = lowered(LADDERS["log2_ladder"])
    with within(GROSS_BUDGET, "key_bands of the log2 ladder"):
        bands = key_bands(spec.mask, spec)
    assert bands is not None and len(bands) == 4  # [q - 15, q] in four pieces
    sizes = Sizes(B=1, H=2, HKV=1, SQ=70, SKV=90)
    args = sample_arguments(spec, sizes)
    keep = torch.zeros((sizes.B, sizes.H, sizes.SQ, sizes.SKV), dtype=torch.bool)
    kv = torch.arange(sizes.SKV)
    for lo, hi in evaluate_bands(bands, spec, torch.arange(sizes.SQ), sizes):
        keep |= (kv >= lo[..., None]) & (kv <= hi[..., None])
    module = build_module(spec, "reference", "budget_test.attn")
    assert torch.equal(keep, module._token_mask(args["q"], args["k"]).expand_as(keep))


def test_the_band_search_gives_up_on_an_unaffordable_mask():
    spec = lowered(LADDERS["weighted_ladder"])
    with within(GROSS_BUDGET, "key_bands of the weighted ladder"):
        assert key_bands(spec.mask, spec) is None  # the block table takes over


def test_the_band_search_has_a_work_budget(monkeypatch):
    text = f"attention small {{\n    let d = q - kv\n    mask kv <= q and {ladder('d >= {p}', n=10)} <= 3\n}}\n"
    spec = lowered(text)
    assert key_bands(spec.mask, spec) is not None
    monkeypatch.setattr(bands_module, "_MAX_WORK", 50)
    bands_module._bands_of.cache_clear()
    assert key_bands(spec.mask, spec) is None  # no closed form within 50 steps: "no closed form"
    bands_module._bands_of.cache_clear()


# ------------------------------------------------------------------ the flex target's probe


def exhaustive_agreement(spec, mask, bq: int, bk: int, sizes: Sizes) -> float:
    """The probe as it was: every pair of the probe evaluated, pooled into tiles, compared."""
    from dataclasses import replace

    masked = replace(spec, mask=mask, selection=None)
    args = sample_inputs(spec, sizes, seed=0)  # the probe's inputs
    runtime = {p.name: args[p.name] for p in spec.runtime_params}
    inputs = {i.name: args[i.name] for i in spec.arguments}
    found = classify_tiles(masked, bq, bk, sizes.symbols(), runtime, inputs).classes
    pairs = classify_tiles(masked, 1, 1, sizes.symbols(), runtime, inputs).classes
    *lead, sq, skv = pairs.shape
    bq, bk = min(bq, sq), min(bk, skv)
    nq, nk = -(-sq // bq), -(-skv // bk)
    pad = (0, nk * bk - skv, 0, nq * bq - sq)
    kept = torch.nn.functional.pad((pairs != EMPTY).to(torch.int8), pad).view(*lead, nq, bq, nk, bk).amax((-3, -1)) > 0
    sure = torch.nn.functional.pad((pairs == FULL).to(torch.int8), pad, value=1).view(*lead, nq, bq, nk, bk).amin((-3, -1)) > 0
    exact = torch.where(kept, torch.where(sure, FULL, PARTIAL), EMPTY).to(torch.int8)
    found, exact = torch.broadcast_tensors(found, exact)
    return float((found == exact).double().mean())


PROBE_CASES = [
    "examples/m12_power_attention.attn", "examples/b03_document.attn", "examples/m02_natten2d.attn",
    "examples/b05_streaming_sink.attn", "examples/m20_svg_heads.attn", "examples/m15_moa.attn",
]
SMALL_PROBE = Sizes(B=2, H=4, HKV=2, SQ=300, SKV=260)


LADDER_PROBE = Sizes(B=2, H=2, HKV=1, SQ=150, SKV=130)  # the exhaustive check is what costs


@pytest.mark.parametrize("path", PROBE_CASES + ["per_head_ladder", "parity_ladder"])
def test_the_probe_agrees_with_the_exhaustive_check(path):
    """With a budget that covers every PARTIAL tile, the probe is exact."""
    spec = lowered(LADDERS[path] if path in LADDERS else path, "flex")
    mask = inline_bindings(spec.mask, spec)
    sizes = LADDER_PROBE if path in LADDERS else SMALL_PROBE
    for bq, bk in ((64, 64), (32, 16)):
        assert tile_agreement(spec, mask, bq, bk, sizes, work=2**27) == exhaustive_agreement(spec, mask, bq, bk, sizes)


@pytest.mark.parametrize("path", PROBE_CASES)
def test_the_default_budget_estimates_the_agreement_closely(path):
    """Within the default budget (a few of each PARTIAL tile's pairs first, then a sample of the tiles
    they leave unproven) the estimate is within 2% of the exact agreement on these examples."""
    spec = lowered(path, "flex")
    mask = inline_bindings(spec.mask, spec)
    for bq, bk in ((64, 64), (32, 16)):
        assert abs(tile_agreement(spec, mask, bq, bk, SMALL_PROBE) - exhaustive_agreement(spec, mask, bq, bk, SMALL_PROBE)) <= 0.02


def test_the_probe_spends_at_most_its_budget(monkeypatch):
    """The per-pair check stops at PROBE_WORK pair x node values (the old probe: all 1024 x 1024
    pairs at every node), in chunks of CHUNK_WORK."""
    spec = lowered(LADDERS["parity_ladder"], "flex")  # every tile partial, ~250 nodes, B and H read
    mask = inline_bindings(spec.mask, spec)
    monkeypatch.setattr(precision, "PROBE_WORK", 2**21)
    monkeypatch.setattr(precision, "CHUNK_WORK", 2**18)
    spent, largest = [0], [0]
    real_apply = interval.apply

    def counting(op, *args, **kw):
        result = real_apply(op, *args, **kw)
        size = (result.lo if isinstance(result, interval.Num) else result.may_true).numel()
        spent[0] += size
        largest[0] = max(largest[0], size)
        return result

    monkeypatch.setattr(interval, "apply", counting)
    agreement = tile_agreement(spec, mask, 128, 128, precision.PROBES[0])
    tile_level = 2 * 4 * 8 * 8 * precision.mask_nodes(spec)  # B x H x 8 x 8 tiles, once per node
    assert spent[0] <= 2**21 + tile_level
    assert largest[0] <= max(2**18 // precision.mask_nodes(spec), 2 * 4 * 8 * 8)
    assert 0.0 <= agreement <= 1.0


def test_a_probe_without_budget_reports_the_proven_lower_bound():
    """No pair checked: every PARTIAL tile counts as inexact, never more agreement than proven."""
    spec = lowered("examples/m12_power_attention.attn", "flex")
    mask = inline_bindings(spec.mask, spec)
    sizes = precision.PROBES[0]
    from dataclasses import replace

    classes = classify_tiles(replace(spec, mask=mask, selection=None), 128, 128, sizes.symbols()).classes
    proven = 1.0 - float((classes == PARTIAL).double().mean())
    assert tile_agreement(spec, mask, 128, 128, sizes, work=0) == pytest.approx(proven)
    sampled = tile_agreement(spec, mask, 128, 128, sizes, work=128 * 128 * precision.mask_nodes(spec) * 3)
    assert proven <= sampled <= 1.0


# ------------------------------------------------------------------ random specs


SPECGEN_COUNT = 120


def drawn_specs(n: int) -> list[str]:
    drawn: list[str] = []

    @settings(max_examples=n, database=None, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(specs(flaws=False))
    def collect(text):
        drawn.append(text)

    collect()
    return drawn


def test_random_specs_compile_within_the_gross_budget():
    """The spec generator's output (fixed seed) compiled for every target: each compile, or the
    AttnError that refuses it, comes within the budget."""
    for text in drawn_specs(SPECGEN_COUNT):
        for target in TARGETS:
            with within(GROSS_BUDGET, f"{target} compile of\n{text}"):
                try:
                    attnspec.compile(text, target=target, cache=False)
                except AttnError:
                    pass


def test_the_probe_agrees_with_the_exhaustive_check_on_random_specs():
    checked = 0
    for text in drawn_specs(SPECGEN_COUNT):
        try:
            spec = lowered(text, "flex")
        except AttnError:
            continue
        if spec.mask is None:
            continue
        mask = inline_bindings(spec.mask, spec)
        sizes = Sizes(B=2, H=2, HKV=1, SQ=70, SKV=50)
        try:
            expected = exhaustive_agreement(spec, mask, 16, 16, sizes)
        except AttnError:  # a runtime param without a default: no probe either
            continue
        assert tile_agreement(spec, mask, 16, 16, sizes) == expected, text
        checked += 1
    assert checked >= 20
