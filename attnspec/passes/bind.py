"""Specialization: give every compile-time param its value and inline it as a constant that keeps the
param's name (generated code refers to the module constant by name)."""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import operator

from ..diagnostics import AttnError
from ..ir import Expr, Spec, const, map_exprs, substitute


def bind_params(consts: dict[str, object]):
    """Pass factory: the pass that binds compile-time params to `consts` (or their defaults)."""

    def bind(spec: Spec) -> Spec:
        _reject_unknown(spec, consts)
        values = {p.name: _value(spec, p, consts) for p in spec.params if not p.runtime}
        params = tuple(
            dataclasses.replace(p, default=const(values[p.name], p.span)) if p.name in values else p
            for p in spec.params
        )

        def inline(node: Expr):
            if node.op == "param" and node.value in values:
                return const(values[node.value], node.span, name=node.value)
            return None

        spec = map_exprs(spec, lambda e: substitute(e, inline))
        return dataclasses.replace(spec, params=params)

    bind.__name__ = "bind_params"
    return bind


def _reject_unknown(spec: Spec, consts: dict[str, object]) -> None:
    for name in consts:
        param = spec.param(name)
        if param is None:
            names = [p.name for p in spec.params]
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "params of this spec: " + (", ".join(names) or "none")
            raise AttnError(f"spec '{spec.name}' has no param '{name}'", spec.span, hint)
        if param.runtime:
            raise AttnError(
                f"'{name}' is a runtime param; pass it to attention(), not at compile time", param.span
            )


def _value(spec: Spec, param, consts: dict[str, object]):
    if param.name in consts:
        return _coerce(param, consts[param.name])
    if param.default is None:
        raise AttnError(
            f"param '{param.name}' has no value",
            param.span,
            f"give it a default ('= ...') or a value when compiling: -D {param.name}=VALUE on the command line,"
            f" {param.name}=... in Python",
        )
    return param.default.literal


def _coerce(param, value):
    """The value as a plain Python bool, int or float (numpy scalars and int subclasses included)."""
    try:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            if param.type != "bool":
                raise TypeError
            return bool(value)
        if param.type == "int":
            value = int(operator.index(value))
        elif param.type == "float" and isinstance(value, numbers.Real):
            value = float(value)
        else:
            raise TypeError
    except TypeError:
        raise AttnError(f"param '{param.name}' is {param.type}, got {value!r}", param.span) from None
    if param.type == "int" and not -(2**63) <= value < 2**63:
        raise AttnError(f"param '{param.name}' = {value} does not fit in 64 bits", param.span)
    return value
