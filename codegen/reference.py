"""The reference target: a dense PyTorch module that is obviously right (the oracle).

The module is the shared dense plan (dense.py) rendered through templates/reference: every expression
a tensor expression over broadcast index grids, the score matrix materialized, the normalization in
float64 where the inputs are.
"""

from __future__ import annotations

from attnspec.ir import Spec

from .dense import module_plan
from .render import template_environment


def generate(spec: Spec, source_name: str = "<string>") -> str:
    """The reference module's source for a verified, lowered spec."""
    template = template_environment().get_template("reference/module.py.jinja")
    return template.render(**module_plan(spec, source_name).fields())
