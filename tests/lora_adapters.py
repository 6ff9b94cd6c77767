"""LoRA adapters the tests make with peft: random ones (``init_lora_weights=False``: peft's
default init zeroes B, which would equal the base model) and broken ones, next to the
default's trained adapters, in one source folder."""

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "models" / "smollm2-135m-instruct"
DEFAULT_ADAPTERS = ROOT / "models" / "smollm2-135m-instruct-adapters"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(out: Path, seed: int, rank: int = 8, targets: list[str] = TARGETS) -> Path:
    """A random LoRA of the base in PEFT's format (deterministic for a seed)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets)
    config.init_lora_weights = False
    peft = get_peft_model(model, config)
    with torch.no_grad():  # strong enough to change greedy answers
        for name, param in peft.named_parameters():
            if "lora_" in name:
                param.mul_(4.0)
    peft.save_pretrained(out, safe_serialization=True)
    return out


def adapter_source(folder: Path, random: int = 8) -> Path:
    """``folder`` as a LoRA source: the default's adapters, ``random`` random ones
    (``random-<i>``) and broken ones: ``too-wide`` (rank 16), ``foreign`` (weights for
    modules SmolLM2 lacks), ``corrupt`` (unreadable weights)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for adapter in DEFAULT_ADAPTERS.iterdir():
        if adapter.is_dir():
            shutil.copytree(adapter, folder / adapter.name)
    for i in range(random):
        make_adapter(folder / f"random-{i}", seed=i)
    make_adapter(folder / "too-wide", seed=100, rank=16)
    foreign = make_adapter(folder / "foreign", seed=101, targets=["q_proj"])
    _rename_tensors(foreign / "adapter_model.safetensors", "self_attn.q_proj", "attention.wq")
    corrupt = shutil.copytree(folder / "random-0", folder / "corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    config = json.loads((foreign / "adapter_config.json").read_text())
    config["target_modules"] = ["wq"]
    (foreign / "adapter_config.json").write_text(json.dumps(config))
    return folder


def _rename_tensors(path: Path, old: str, new: str) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({name.replace(old, new): t for name, t in tensors.items()}, str(path))
