"""A vLLM plugin: on CPU, a base-model request batched with LoRA requests runs without LoRA.

vLLM's CPU LoRA ops (``vllm/lora/ops/torch_ops``) take each row's adapter by its slot index,
and a row without one (index -1) wraps around to the last slot: a base-model request batched
with adapter requests ran with that adapter's weights, with no error (vLLM PRs #48421 and
#49656, open). The GPU kernels skip those rows. ``register`` (entry point
``vllm.general_plugins`` in pyproject.toml, run by every vLLM process, the engine core's
included) wraps the ops so those rows keep what they held before the op, as on GPU. Proven
by tests/serve/test_lora_api.py (base requests answer the same under mixed load as alone).
"""

import functools
from collections.abc import Callable
from typing import Any

OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")  # the sgmv ops call these


def register() -> None:
    """Wrap the CPU LoRA ops where they are called (idempotent: vLLM may call it again)."""
    from vllm.lora.ops.torch_ops import lora_ops  # noqa: PLC0415
    from vllm.lora.punica_wrapper import punica_cpu  # noqa: PLC0415

    for module in (lora_ops, punica_cpu):
        for name in OPS:
            op = getattr(module, name)
            if not getattr(op, "skips_base_rows", False):
                setattr(module, name, skipping_base_rows(op))


def skipping_base_rows(op: Callable[..., Any]) -> Callable[..., None]:
    """``op(inputs, weights, output, indices, ...)``, leaving the rows of ``output`` whose
    index is -1 (no adapter) as they were."""

    @functools.wraps(op)
    def run(inputs: Any, weights: Any, output: Any, indices: Any, *args: Any, **kw: Any) -> None:
        rows = (indices < 0).nonzero().squeeze(1)
        if not len(rows):
            op(inputs, weights, output, indices, *args, **kw)
            return
        kept = output[rows].clone()
        op(inputs, weights, output, indices.clamp(min=0), *args, **kw)
        output[rows] = kept

    run.skips_base_rows = True
    return run
