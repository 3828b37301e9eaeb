"""Random `.attn` programs for `attnspec fuzz`: `specs()` draws the text of one spec.

What a drawn spec covers:

- `param` declarations: compile-time int / float / bool params with literal defaults, and `runtime`
  params with or without defaults;
- `input` declarations: per-head float tables, relative-position tables (`t[h, kv - q + SQ]`,
  clipped `t[h, clamp(kv - q, -r, r) + r]`), document ids (`d[b, q] == e[b, kv]`), key-padding and
  per-head bool inputs, per-head int kinds, per-query gains, 0-dim inputs read by bare name, in
  every dtype of their kind, sometimes `learnable`, their declarations sometimes below their use;
- `let` bindings: 2D grids (`let (qy, qx) = (q // W, q % W)`), int, bool and float lets, tuples,
  and lets of the score, each used only where its free variables are allowed;
- masks (zero to three `mask` statements): causal, windows, prefixes, chunks, dilation, sink tokens,
  documents, 2D neighborhoods, token pruning by a per-row value, and random boolean expressions over
  the integer terms in scope;
- score mods (zero to three `score =` statements): biases, slopes, soft-caps, temperatures, length
  scaling, `where` gates, and now and then a random (wild) float expression of the score;
- prologues of q, k and v (RoPE, unit norm, RMS norm with a gain, affine maps) and an output epilogue
  (gates, norms, offsets per feature, N09's affine form over sum_kept(v) with per-query values);
- `scale =`, `gqa group =`, every normalization (softmax with or without a sink, elementwise,
  rownorm, now and then a rownorm weight that can be negative, rownorm(g, den = f)) and static and data-dependent block
  selection (top / threshold / share, pooled block scores, causal, per head / kv_head, always).

Every expression is typed as it is drawn (an int, float or bool `Term`) and carries the set of
things it `needs` (index variables, the score, inputs, runtime params, shape symbols, pooling). Each
place of a spec allows a set of needs (the table of docs/language.md section 5); a term is offered
there only when its needs are allowed, so drawn specs type-check and pass the verifier. About 3% of
the specs are broken on purpose by one `FLAWS` line, to exercise the diagnostics; `specs(flaws=False)`
never draws one.

Shrinking: repeated declarations and statements are drawn by `_several`, one hypothesis draw each
(as st.lists does), so the shrinker can drop any of them; every choice is made by `_pick`, whose
first option (drawn by the smallest integer, where hypothesis shrinks to) is the simplest; and
expressions are depth-limited (at most `MAX_DEPTH` levels of operators). A spec that needs a mask
shrinks to `mask kv <= q` alone, one that needs a selection to `select blocks(q = 16, kv = 16)
top(1) by dot(mean(q), mean(k))`.

The modules of the package:

- `terms`: `Term`, `Env` and `View`, the needs tables, the shrink-friendly choices (`_pick`,
  `_chance`, `_several`), literals and the int / float / bool expression builders;
- `declarations`: params, inputs (`INPUT_KINDS`), lets (`LET_KINDS`) and the knobs that read params;
- `statements`: masks, score mods, scale, gqa, normalizations, block selections and `FLAWS`;
- this `__init__`: `specs()`, which assembles the spec from them.

To extend it: a new statement shape is a template function `(draw, env) -> str` added to the tuple of
its statement kind (`MASK_TEMPLATES`, `SCORE_TEMPLATES`, ... in `statements`), after the simpler ones;
a new input kind is a function in `INPUT_KINDS` (in `declarations`) that declares it and offers its
reads as terms; a new builtin goes into the expression builders of `terms` (`_int_node`,
`_float_node`, `bool_expr`).
"""

from __future__ import annotations

from hypothesis import strategies as st

from .declarations import (
    FLOAT_DTYPES,
    GRID_NAMES,
    INPUT_KINDS,
    INPUT_NAMES,
    INT_DTYPES,
    LET_KINDS,
    LET_NAMES,
    PARAM_NAMES,
    _param,
)
from .statements import (
    BLOCK_SIZES,
    FLAWS,
    MASK_TEMPLATES,
    ODD_BLOCK_SIZES,
    SCORE_TEMPLATES,
    _epilogue,
    _flaw,
    _gqa,
    _mask,
    _prologues,
    _normalize,
    _scale,
    _score_mod,
    _select,
)
from .terms import MAX_DEPTH, WILD_INTS, Env, Term, View, _chance, _lines, _several, bool_expr, float_expr, int_expr

__all__ = [
    "BLOCK_SIZES", "FLAWS", "FLOAT_DTYPES", "GRID_NAMES", "INPUT_KINDS", "INPUT_NAMES", "INT_DTYPES", "LET_KINDS",
    "LET_NAMES", "MASK_TEMPLATES", "MAX_DEPTH", "ODD_BLOCK_SIZES", "PARAM_NAMES", "SCORE_TEMPLATES", "SPEC_NAME",
    "WILD_INTS", "Env", "Term", "View", "bool_expr", "float_expr", "int_expr", "specs",
]

SPEC_NAME = "gen_spec"


# ------------------------------------------------------------------ the spec


@st.composite
def specs(draw, flaws: bool = True) -> str:
    """The text of one random `.attn` spec named `gen_spec` (see the module docstring)."""
    env = Env()
    declarations = _declarations(draw, env)
    lets = _lines(_several(draw, lambda d: d(st.sampled_from(LET_KINDS))(d, env), 3, 45))
    body = _body(draw, env)
    decls_first = not _chance(draw, 15)  # declarations may come below their use
    lines = declarations + lets + body if decls_first else lets + body + declarations
    flaw = _flaw(draw, flaws)
    lines += [flaw] if flaw else []
    return _render(draw, lines)


def _declarations(draw, env: Env) -> list[str]:
    params = _several(draw, lambda d: _param(d, env), 4, 65)
    inputs = _lines(_several(draw, lambda d: d(st.sampled_from(INPUT_KINDS))(d, env), 3, 45))
    return params + inputs


def _body(draw, env: Env) -> list[str]:
    masks = _several(draw, lambda d: _mask(d, env), 3, 75)
    mods = _several(draw, lambda d: _score_mod(d, env), 3, 60)
    singles = [
        _scale(draw, env) if _chance(draw, 12) else None,
        _gqa(draw, env) if _chance(draw, 10) else None,
        _normalize(draw, env),
        _select(draw, env),
    ]
    prologues, epilogue = _prologues(draw, env), _epilogue(draw, env)
    lines = [s for s in singles + [epilogue] if s]
    return prologues + masks + mods + [line for s in lines for line in ([s] if isinstance(s, str) else s)]


def _render(draw, lines: list[str]) -> str:
    """The spec text, with a comment now and then (comments and blank lines only separate tokens)."""
    out = [f"attention {SPEC_NAME} {{"]
    for line in lines:
        out.append(f"    {line}" + ("  # generated" if _chance(draw, 5) else ""))
    out.append("}")
    return "\n".join(out) + "\n"
