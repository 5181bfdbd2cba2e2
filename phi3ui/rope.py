"""Rotary position embeddings as OpenVINO runs them: the window a LongRoPE Phi model can use
here, and fp16 exports whose rotary constants are rounded.

LongRoPE (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) rotates queries and keys with its short
factors while a sequence is at most `original_max_position_embeddings` (4,096) tokens long,
and with its long factors, at every position, once it is longer: transformers reads the
whole sequence again at the switch. optimum-intel 2.2 exports both sets without capping the
positions and picks one per inference call, from the largest position id in that call. A
prompt longer than 4,096 read in one call is therefore right (tests/test_longrope.py), but
nothing reads a KV cache again when a sequence passes 4,096:

* an answer that crosses 4,096 goes on over keys rotated with the short factors;
* the prefix cache re-uses such keys when a conversation's next turn passes 4,096;
* continuous batching reads a prompt in chunks (256 tokens by default), so a long prompt's
  first 4,096 positions get the short factors; and it picks one set per step for every
  sequence in the batch, so a short conversation batched beside a long one gets the long set.

(transformers 5.5's own `generate()` goes wrong at the switch too, and optimum-intel 2.2's
raises a TypeError there.) Within the trained window every engine is exact, so phi3ui keeps
such a model to it: `usable_window`.

Separately, `--weight-format fp16` rounds the rotary constants themselves (LongRoPE's factors,
plain RoPE's inverse frequencies) to fp16: OpenVINO keeps the rest of the rotary arithmetic in
f32, but not these. A relative error of up to 5e-4 in a frequency is an angle error that grows
with the position: on Phi-3-mini's head size, 0.8 radians at position 4,000 for plain RoPE's
second frequency, 1.5 for a short factor of 1.02. On the tiny test model it moved the logits at
4,000 tokens by 4.1 and changed the argmax. `keep_rotary_exact` puts the exact values back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import openvino as ov

LONGROPE_TYPES = ("longrope", "su")  # "su": the name Phi-3-mini-128k's first config used
DEFAULT_WINDOW = 4096


@dataclass(frozen=True)
class LongRope:
    """A LongRoPE model's windows and factor sets, from its config.json."""

    trained_window: int  # original_max_position_embeddings: the short factors up to here
    window: int  # max_position_embeddings: what the long factors stretch it to
    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]


def _rope_settings(config: dict) -> dict:
    """The RoPE settings as published (`rope_scaling`) or as transformers 5 saves them
    (`rope_parameters`)."""
    return config.get("rope_scaling") or config.get("rope_parameters") or {}


def longrope(config: dict) -> LongRope | None:
    """The model's LongRoPE settings, or None when it does not use LongRoPE."""
    rope = _rope_settings(config)
    if (rope.get("rope_type") or rope.get("type")) not in LONGROPE_TYPES:
        return None
    window = int(config.get("max_position_embeddings") or DEFAULT_WINDOW)
    trained = rope.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
    return LongRope(trained_window=int(trained or window), window=window,
                    short_factor=tuple(rope.get("short_factor") or ()),
                    long_factor=tuple(rope.get("long_factor") or ()))


def usable_window(config: dict) -> int:
    """The most tokens, prompt and answer together, the model takes here: its own window, or
    a LongRoPE model's trained window, past which OpenVINO's engines are not exact."""
    window = int(config.get("max_position_embeddings") or DEFAULT_WINDOW)
    settings = longrope(config)
    return min(window, settings.trained_window) if settings else window


def window_note(config: dict) -> str:
    """Why the window is below the model's own, in the page's words; "" when it is not."""
    settings = longrope(config)
    if not settings or settings.window <= settings.trained_window:
        return ""
    return (f"LongRoPE: past the {settings.trained_window} tokens it was trained on, the "
            f"{settings.window}-token window needs its long factors over the whole conversation, "
            f"which OpenVINO's engines do not apply exactly")


# fp16 exports --------------------------------------------------------------------------


def _head_dims(config: dict) -> int:
    """How many of a head's dimensions are rotated."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return int(head_dim * float(_rope_settings(config).get("partial_rotary_factor") or
                                config.get("partial_rotary_factor") or 1.0))


def exact_rotary_values(config: dict) -> list[np.ndarray]:
    """The rotary constants an export holds, in float32 as transformers computes them:
    LongRoPE's two factor sets, or plain RoPE's inverse frequencies."""
    import numpy as np

    settings = longrope(config)
    if settings:
        return [np.array(factors, dtype=np.float32) for factors in (settings.short_factor, settings.long_factor)]
    rope = _rope_settings(config)
    if (rope.get("rope_type") or rope.get("type") or "default") != "default":
        return []  # other scalings compute their frequencies differently; not matched here
    theta = np.float32(rope.get("rope_theta") or config.get("rope_theta") or 10000.0)
    dims = _head_dims(config)
    exponents = np.arange(0, dims, 2).astype(np.float32) / np.float32(dims)
    return [(np.float32(1.0) / theta ** exponents).astype(np.float32)]


def _rounded_match(constant: ov.Node, exact: list[np.ndarray]) -> np.ndarray | None:
    """The exact values an fp16 constant is the rounding of, if it is one of them."""
    import numpy as np
    import openvino as ov

    if constant.get_type_name() != "Constant" or constant.get_output_element_type(0) != ov.Type.f16:
        return None
    size = int(np.prod(tuple(constant.get_output_shape(0))))
    if all(candidate.size != size for candidate in exact):  # a weight: not read, not converted
        return None
    values = constant.get_data().astype(np.float32).ravel()
    for candidate in exact:
        rounded = candidate.astype(np.float16).astype(np.float32)
        if values.shape == candidate.shape and np.array_equal(values, rounded) and not np.array_equal(rounded, candidate):
            return candidate.reshape(tuple(constant.get_output_shape(0)))
    return None


def rounded_rotary_constants(model: ov.Model, config: dict) -> list[tuple[ov.Node, np.ndarray]]:
    """The model's fp16-rounded rotary constants, each as the f32 conversion that reads it
    and the exact values it should hold."""
    exact = exact_rotary_values(config)
    found = []
    for node in model.get_ordered_ops():
        if node.get_type_name() == "Convert" and exact:
            values = _rounded_match(node.input_value(0).get_node(), exact)
            if values is not None:
                found.append((node, values))
    return found


def keep_rotary_exact(folder: Path, config: dict) -> int:
    """Put the exact rotary constants back into an fp16 export in `folder` (in place; the
    weights are left as they are). Returns how many constants were replaced; 0 leaves the
    folder untouched. Meant to run right after `optimum-cli export openvino --weight-format
    fp16`, before the export is checked and cached."""
    import openvino as ov
    from openvino import opset13 as ops

    xml = Path(folder) / "openvino_model.xml"
    model = ov.Core().read_model(xml)
    rounded = rounded_rotary_constants(model, config)
    for convert, values in rounded:
        exact = ops.constant(values)
        exact.set_friendly_name(convert.get_friendly_name())
        for target in convert.output(0).get_target_inputs():
            target.replace_source_output(exact.output(0))
    if rounded:
        staged = xml.with_name(f".{xml.stem}.{os.getpid()}.xml")
        ov.save_model(model, staged, compress_to_fp16=False)
        del model  # the old weights file may be mapped until the model goes
        os.replace(staged.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(staged, xml)
    return len(rounded)
