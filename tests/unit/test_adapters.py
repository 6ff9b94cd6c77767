"""LoRA adapters: ids, the listing of a source, the checks before vLLM loads one, and how the
ingress lists, authorizes and routes them (fake backend; the engine side is in
tests/serve/test_lora_api.py)."""

import asyncio
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save_file

from deployments.common.contracts import JSONFrame
from deployments.llm.adapters import AdapterError, check_adapter, lora_modules
from serve_app import adapters
from serve_app.admission import RateLimits
from serve_app.auth import APIKey, KeyStore
from serve_app.config import AppConfig
from serve_app.ingress import create_app
from serve_app.registry import ModelRegistry
from serve_app.settings import Settings
from tests.openai_schema import validate
from tests.unit.fakes import FakeHandle
from tests.unit.test_ingress import assert_envelope

BASE = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "lm_head"}


def write_adapter(folder, rank=8, modules=("model.layers.0.self_attn.q_proj",), **config):
    """A PEFT-format adapter (config + LoRA matrices) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps({**settings, **config}))
    tensors = {}
    for module in modules:
        tensors[f"base_model.model.{module}.lora_A.weight"] = np.ones((rank, 4), np.float32)
        tensors[f"base_model.model.{module}.lora_B.weight"] = np.ones((4, rank), np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def test_a_peft_adapter_passes_its_checks(tmp_path):
    folder = write_adapter(tmp_path / "ok", modules=("model.layers.0.self_attn.q_proj", "lm_head"))
    assert lora_modules(folder / "adapter_model.safetensors") == {
        "model.layers.0.self_attn.q_proj",
        "lm_head",
    }
    assert check_adapter(folder, 8, BASE)["r"] == 8


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"rank": 16}, "rank r=16 is not served here (one of 1, 8)"),
        ({"rank": 3}, "rank r=3"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"use_dora": True}, "DoRA"),
        ({"peft_type": "IA3"}, "not a PEFT LoRA config"),
        ({"modules": ("encoder.block.0.q",)}, "modules the base model does not have"),
        ({"modules": ()}, "no LoRA matrices"),
    ],
)
def test_an_adapter_vllm_would_refuse_or_serve_as_the_base_is_refused(tmp_path, change, why):
    folder = write_adapter(tmp_path / "bad", **change)
    with pytest.raises(AdapterError, match=why.replace("(", r"\(").replace(")", r"\)")):
        check_adapter(folder, 8, BASE)


def test_missing_or_corrupt_files_are_refused(tmp_path):
    folder = write_adapter(tmp_path / "a")
    (folder / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterError, match="cannot be read"):
        check_adapter(folder, 8, BASE)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="has no adapter_model.safetensors"):
        check_adapter(folder, 8, BASE)
    (folder / "adapter_config.json").write_text("{")
    with pytest.raises(AdapterError, match="not valid JSON"):
        check_adapter(folder, 8, BASE)


def test_the_source_is_listed_again_for_an_adapter_it_lacks(tmp_path, monkeypatch):
    monkeypatch.setattr(adapters, "LIST_EVERY_S", 0.0)
    write_adapter(tmp_path / "pirate")
    (tmp_path / "notes").mkdir()  # no adapter_config.json: not an adapter
    source = adapters.AdapterSource(str(tmp_path))
    assert source.names() == {"pirate"}
    write_adapter(tmp_path / "robot")  # added later: served on its first request
    assert source.has("robot") and not source.has("ghost")
    assert adapters.AdapterSource(str(tmp_path / "missing")).names() == frozenset()


def make_client(tmp_path, handle, keys=None):
    write_adapter(tmp_path / "adapters" / "pirate")
    write_adapter(tmp_path / "adapters" / "robot")
    config = AppConfig.model_validate(
        {
            "models": [
                {
                    "id": "chat",
                    "family": "llm",
                    "source": "x",
                    "aliases": ["talk"],
                    "lora": {"source": str(tmp_path / "adapters")},
                },
                {"id": "plain", "family": "llm", "source": "y"},
            ]
        }
    )
    registry = ModelRegistry(config, {"chat": handle, "plain": FakeHandle([])}, created=1)
    app = create_app(registry, Settings(), KeyStore(keys or []), RateLimits(None))
    return TestClient(app, raise_server_exceptions=False)


def test_adapters_are_listed_under_their_base_and_routed_by_multiplexing(tmp_path):
    handle = FakeHandle([JSONFrame({"ok": True})])
    client = make_client(tmp_path, handle)
    listing = client.get("/v1/models").json()
    validate(listing, "ListModelsResponse")
    ids = [(m["id"], m.get("parent")) for m in listing["data"]]
    assert ids == [("chat", None), ("chat:pirate", "chat"), ("chat:robot", "chat"), ("plain", None)]
    validate(client.get("/v1/models/chat:robot").json(), "Model")
    body = {"model": "talk:pirate", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert handle.routed == ["pirate"]  # the base's deployment, routed for this adapter


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("chat:ghost", 404, "model_not_found"),
        ("plain:pirate", 404, "model_not_found"),  # that model has no adapters
        ("chat:../adapters/pirate", 400, "invalid_adapter"),
        ("chat:.hidden", 400, "invalid_adapter"),
        ("chat:%2e%2e", 400, "invalid_adapter"),
        ("chat:pirate/../robot", 400, "invalid_adapter"),
        ("chat:s3://bucket/x", 404, "model_not_found"),  # base 'chat:s3' does not exist
    ],
)
def test_an_adapter_id_that_is_unknown_or_leaves_the_source_is_refused(
    tmp_path, model, status, code
):
    client = make_client(tmp_path, FakeHandle([JSONFrame({"ok": True})]))
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    error = assert_envelope(client.post("/v1/chat/completions", json=body), status, code)
    assert error["param"] == "model"


def test_a_key_may_name_one_adapter_or_every_adapter_of_a_base(tmp_path):
    keys = [
        APIKey(name="one", secret="one", models=["chat:pirate"]),
        APIKey(name="all", secret="all", models=["talk:*"]),
    ]
    client = make_client(tmp_path, FakeHandle([JSONFrame({"ok": True})]), keys)

    def listed(secret):
        data = client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"}).json()
        return [m["id"] for m in data["data"]]

    assert listed("one") == ["chat:pirate"]
    assert listed("all") == ["chat:pirate", "chat:robot"]  # the adapters, not the base

    def chat(secret, model):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {secret}"}
        return client.post("/v1/chat/completions", json=body, headers=headers).status_code

    assert (chat("one", "chat:pirate"), chat("one", "chat:robot"), chat("one", "chat")) == (
        200,
        403,
        403,
    )
    assert (chat("all", "chat:robot"), chat("all", "chat")) == (200, 403)


def test_a_load_that_times_out_fails_its_requests_for_a_while_unretried(tmp_path, monkeypatch):
    """A slow load ends at ``load_timeout_s`` with a clear error; requests in the next
    ``FAILED_S`` get it at once, without loading again; after that, one load is tried."""
    from deployments.llm import adapters as replica

    class SlowEngine:
        loads = 0

        async def add_adapter(self, name, folder):
            SlowEngine.loads += 1
            await asyncio.sleep(60)

    write_adapter(tmp_path / "source" / "slow")
    monkeypatch.setattr(replica, "base_modules", lambda source: BASE)
    lora = {"source": str(tmp_path / "source"), "max_rank": 8, "load_timeout_s": 0.2}
    held = replica.Adapters(SlowEngine(), "base", "unused", {**lora, "max_adapters_per_replica": 2})
    monkeypatch.setattr(replica, "FAILED_S", 1.0)

    async def load():
        with pytest.raises(AdapterError, match=r"it did not load within 0.2s"):
            await held._load("slow")

    asyncio.run(load())
    assert SlowEngine.loads == 1
    asyncio.run(load())
    assert SlowEngine.loads == 1  # answered from the memory of the failure
    time.sleep(1.0)
    asyncio.run(load())
    assert SlowEngine.loads == 2
