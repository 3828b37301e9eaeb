"""A spec as an attention implementation of HF transformers (its AttentionInterface):

    from attnspec.integrations import transformers as attnspec_hf
    attnspec_hf.register("local_sink", "local_sink.attn", target="triton")
    model = AutoModelForCausalLM.from_config(config, attn_implementation="local_sink")

Each attention layer then calls the compiled spec with its q, k and v ([B, H, S, D], kv heads not
repeated: the spec's GQA). transformers' conventions are mapped onto the spec, or refused where they
conflict: the spec's mask is the layer's (a causal layer needs a spec that keeps no key after its query;
an attention mask beyond the causal one, from padding or packed sequences, is an error), its scale must
be the layer's `scaling`, and attention dropout is refused in training. A spec's learnable inputs
belong to each layer: `attach(model, name)` gives every attention layer its own `nn.Module` of the spec
(the `attnspec` submodule, sized from the model's config) before an optimizer is built; a layer without
one gets it at its first call. Other inputs and runtime params are given at registration.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from ..diagnostics import AttnError

SUBMODULE = "attnspec"  # the name of a layer's spec module (its learnable inputs)


@dataclass
class SpecAttention:
    """The function transformers calls for each attention layer (registered under `name`)."""

    name: str
    module: ModuleType  # the compiled spec
    inputs: dict = field(default_factory=dict)  # values of the spec's inputs that are not learnable
    params: dict = field(default_factory=dict)  # values of its runtime params
    scale: float | None = None  # the spec's logit scale where it is a constant (None: 1 / sqrt(D))
    scale_known: bool = True
    keeps_future_keys: bool = False  # the spec keeps a key after its query (not causal)
    learnable: bool = False  # the spec has learnable inputs: each layer owns a module of them

    def __call__(self, layer, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        self._check(layer, query, key, attention_mask, scaling, dropout)
        spec_layer = getattr(layer, SUBMODULE, None)
        if spec_layer is None and self.learnable:
            spec_layer = self._make_layer(layer.config, query.device)
            layer.add_module(SUBMODULE, spec_layer)
        call = spec_layer if spec_layer is not None else self.module.attention
        out = call(query, key, value, **self.inputs, **self.params)
        return out.transpose(1, 2).contiguous(), None

    def _check(self, layer, query, key, attention_mask, scaling, dropout) -> None:
        if dropout and layer.training:
            raise AttnError(f"{self.name}: the layer asks for attention dropout {dropout}, which the spec does not have",
                            hint="set the config's attention_dropout to 0.0")
        if getattr(layer, "is_causal", False) and self.keeps_future_keys:
            raise AttnError(f"{self.name}: the model's attention is causal, but the spec keeps keys after their query",
                            hint="add `mask kv <= q + (SKV - SQ)` to the spec (a causal language model must not see later tokens)")
        if scaling is not None and self.scale_known:
            mine = self.scale if self.scale is not None else 1.0 / math.sqrt(query.shape[-1])
            if not math.isclose(mine, float(scaling), rel_tol=1e-6):
                raise AttnError(f"{self.name}: the layer scales the logits by {float(scaling):.6g}, the spec by {mine:.6g}",
                                hint=f"write `scale = {float(scaling)!r}` in the spec, or configure the model's scaling")
        if attention_mask is not None:
            _check_mask(self.name, attention_mask, query.shape[2], key.shape[2])

    def _make_layer(self, config, device) -> torch.nn.Module:
        sizes = _sizes(config)
        wanted = list(inspect.signature(self.module.Module.__init__).parameters)[1:]
        missing = [s for s in wanted if s not in ("dtype", "device") and s not in sizes]
        if missing:
            raise AttnError(f"{self.name}: the spec's learnable inputs are sized by {', '.join(missing)}, which the model's config does not give")
        return self.module.Module(**{s: sizes[s] for s in wanted if s in sizes}, device=device)


def register(name: str, spec_file, *, target: str = "reference", spec: str | None = None, inputs: dict | None = None,
             params: dict | None = None, consts: dict | None = None) -> SpecAttention:
    """Compile the spec (a path or the text of an .attn file) for `target` and register it with
    transformers as the attention implementation `name` (and its mask function as transformers' sdpa
    one, so that a padded batch reaches the check instead of being dropped). `inputs`: values of the
    spec's inputs that are not learnable; `params`: its runtime params; `consts`: compile-time params."""
    import transformers

    from .. import api
    from ..show import draw_mask, drawing_sizes

    module = api.compile(spec_file, target, spec, consts=consts or {})
    text, source = api._read(spec_file)
    lowered, source_name = api._lowered(text, "reference", spec, consts or {}, source)
    given = set(inputs or {})
    learnable = {i.name for i in lowered.inputs if i.learnable}
    needed = [i.name for i in lowered.arguments if i.name not in learnable and i.name not in given]
    if needed:
        raise AttnError(f"{name}: transformers passes q, k and v only; give the spec's input '{needed[0]}' with inputs={{...}}",
                        hint="or declare it `learnable`: each attention layer then owns it")
    scale = lowered.scale
    drawing = draw_mask(lowered, drawing_sizes(lowered, 24, 24), Path(source_name).name)  # batch 0, head 0, sample inputs
    rows, cols = drawing.mask.shape
    call = SpecAttention(name, module, dict(inputs or {}), dict(params or {}),
                         scale=None if scale is None else (scale.literal if scale.op == "const" else None),
                         scale_known=scale is None or scale.op == "const",
                         keeps_future_keys=bool((drawing.mask & (torch.arange(cols)[None, :] > torch.arange(rows)[:, None])).any()),
                         learnable=bool(learnable))
    transformers.AttentionInterface.register(name, call)
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:  # older transformers pass an eager-style mask to every implementation
        pass
    else:
        AttentionMaskInterface.register(name, sdpa_mask)
    return call


def attach(model: torch.nn.Module, name: str) -> int:
    """Give every attention layer of `model` that runs `name` its own module of the spec (its learnable
    inputs), before an optimizer is built. Returns how many layers got one."""
    from transformers import AttentionInterface

    call = AttentionInterface._global_mapping.get(name)
    if not isinstance(call, SpecAttention):
        raise AttnError(f"'{name}' is not a spec registered with attnspec.integrations.transformers.register")
    device = next(model.parameters()).device
    count = 0
    for layer in model.modules():
        if hasattr(layer, "scaling") and hasattr(layer, "is_causal") and getattr(layer, "config", None) is not None:
            if getattr(layer, SUBMODULE, None) is None and call.learnable:
                layer.add_module(SUBMODULE, call._make_layer(layer.config, device))
            count += 1
    return count


def _sizes(config) -> dict:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"H": heads, "HKV": getattr(config, "num_key_value_heads", None) or heads, "D": head_dim}


def _check_mask(name: str, mask: torch.Tensor, sq: int, skv: int) -> None:
    """An attention mask from transformers (bool: True attends; float: 0 attends) must keep exactly the
    causal pairs, end-aligned, in every batch: the spec's own mask does the rest."""
    keep = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    keep = keep[..., :sq, :skv]
    causal = torch.arange(skv, device=mask.device)[None, :] <= torch.arange(sq, device=mask.device)[:, None] + (skv - sq)
    if not bool((keep == causal).all()):
        raise AttnError(f"{name}: transformers passed an attention mask beyond the causal one (padding or packed sequences), "
                        "which the spec does not take", hint="call the model without padding, or write the padding into the spec's mask")
