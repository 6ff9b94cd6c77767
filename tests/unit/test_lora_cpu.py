"""The vLLM plugin that keeps LoRA off base-model rows of a mixed batch on CPU
(deployments/llm/lora_cpu.py), on vLLM's own CPU ops."""

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops
from vllm.lora.punica_wrapper import punica_cpu

from deployments.llm.lora_cpu import OPS, register, skipping_base_rows

SLOTS, RANK, WIDTH = 2, 4, 8


def weights(shape):
    return torch.randn(SLOTS, 1, *shape, generator=torch.Generator().manual_seed(0))


def test_rows_without_an_adapter_are_left_as_they_were_and_the_others_as_vllm_computes():
    x = torch.randn(3, WIDTH)
    indices = torch.tensor([0, -1, 1])
    a, b = weights((RANK, WIDTH)), weights((WIDTH, RANK))
    # Unpatched, the row of index -1 takes the last slot's adapter (the bug).
    shrunk = torch.zeros(3, RANK)
    lora_ops.bgmv_shrink(x, a, shrunk, indices, 1.0)
    assert shrunk[1].abs().sum() > 0
    fixed = torch.zeros(3, RANK)
    skipping_base_rows(lora_ops.bgmv_shrink)(x, a, fixed, indices, 1.0)
    assert torch.equal(fixed[1], torch.zeros(RANK))
    assert torch.equal(fixed[[0, 2]], shrunk[[0, 2]])
    y = torch.ones(3, WIDTH)
    expected = y.clone()
    lora_ops.bgmv_expand(fixed, b, expected, indices, True)
    skipping_base_rows(lora_ops.bgmv_expand)(fixed, b, y, indices, True)
    assert torch.equal(y[1], torch.ones(WIDTH)) and torch.equal(y[[0, 2]], expected[[0, 2]])
    sliced = torch.ones(3, 2 * WIDTH)
    skipping_base_rows(lora_ops.bgmv_expand_slice)(fixed, b, sliced, indices, WIDTH, WIDTH, False)
    assert torch.equal(sliced[1], torch.ones(2 * WIDTH))


@pytest.fixture
def restored():
    saved = {(m, n): getattr(m, n) for m in (lora_ops, punica_cpu) for n in OPS}
    yield
    for (module, name), value in saved.items():
        setattr(module, name, value)


def test_register_wraps_the_ops_where_they_are_called_once(restored):
    register()
    register()  # vLLM may load a plugin more than once
    for module in (lora_ops, punica_cpu):
        op = module.bgmv_shrink
        assert op.skips_base_rows and not getattr(op.__wrapped__, "skips_base_rows", False)
    x, a, out = torch.randn(2, WIDTH), weights((RANK, WIDTH)), torch.zeros(2, RANK)
    lora_ops.sgmv_shrink(x, a, out, None, torch.tensor([1, 1]), torch.tensor([-1, 0]), 2, 1, 2, 1.0)
    assert torch.equal(out[0], torch.zeros(RANK)) and out[1].abs().sum() > 0
