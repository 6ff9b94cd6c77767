"""The family registry and the upstream family on the ingress side (fake handles)."""

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from deployments.common.contracts import JSONFrame
from serve_app.admission import RateLimits
from serve_app.auth import KeyStore, load_keys
from serve_app.config import AppConfig
from serve_app.families import FAMILIES, capabilities_of
from serve_app.ingress import create_app
from serve_app.registry import ModelRegistry
from serve_app.settings import Settings
from tests.unit.fakes import FakeHandle
from tests.unit.test_ingress import assert_envelope

ROOT = Path(__file__).resolve().parents[2]
REMOTE = {"family": "upstream", "base_url": "http://prov.test:9000/v1"}
MODELS = [
    {"id": "local", "family": "llm", "source": "x"},
    {"id": "stt", "family": "whisper", "source": "y"},
    {
        "id": "gpt-4o-mini",
        **REMOTE,
        "upstream_model": "real",
        "context_length": 4096,
        "owned_by": "openai",
    },  # fmt: skip
    {"id": "gpt-4o", **REMOTE},
    {"id": "grok", "family": "upstream", "base_url": "https://api.x.ai/v1"},
]


def config(models=MODELS) -> AppConfig:
    return AppConfig.model_validate({"models": models})


def test_every_family_declares_what_it_serves():
    assert set(FAMILIES) >= {"llm", "whisper", "upstream", "embedding"}
    assert FAMILIES["upstream"].capabilities == {"chat", "completions", "embeddings"}
    assert FAMILIES["embedding"].capabilities == {"embeddings"}
    remote = config().models[2]
    assert capabilities_of(remote) == {"chat", "completions"}  # unless the model says
    assert FAMILIES["whisper"].usage == "audio" and FAMILIES["llm"].usage == "tokens"
    assert not FAMILIES["upstream"].local_weights


def test_one_deployment_per_provider():
    upstream = [m for m in config().models if m.family == "upstream"]
    bound = FAMILIES["upstream"].bind_models(upstream, str)
    assert bound["gpt-4o-mini"] is bound["gpt-4o"] and bound["grok"] is not bound["gpt-4o"]
    names = {app._bound_deployment.name for app in bound.values()}
    assert names == {"upstream-prov-test-9000", "upstream-api-x-ai"}


def test_a_provider_must_agree_on_its_settings():
    models = [m for m in MODELS if m["id"] != "gpt-4o"]
    models.append({"id": "gpt-4o", **REMOTE, "api_key_env": "OTHER_KEY"})
    upstream = [m for m in config(models).models if m.family == "upstream"]
    with pytest.raises(ValueError, match="api_key_env"):
        FAMILIES["upstream"].groups(upstream)


def make(keys=None):
    cfg = config()
    llm = FakeHandle([JSONFrame({"from": "local"})])
    remote = FakeHandle([JSONFrame({"from": "remote"})])
    handles = {"local": llm, "stt": FakeHandle([]), "gpt-4o-mini": remote, "gpt-4o": remote,
               "grok": remote}  # fmt: skip
    registry = ModelRegistry(cfg, handles, 1, FakeHandle([]))
    store = KeyStore(keys or [])
    app = create_app(registry, Settings(), store, RateLimits(None))
    return TestClient(app, raise_server_exceptions=False), llm, remote


def test_models_list_upstream_models_as_llms():
    client, _, _ = make()
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    assert cards["gpt-4o-mini"] == {
        "id": "gpt-4o-mini",
        "object": "model",
        "created": 1,
        "owned_by": "openai",
        "type": "llm",
        "context_length": 4096,
    }


def test_upstream_requests_are_checked_then_sent_as_written():
    client, llm, remote = make()
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
        "dry_multiplier": 0.8,  # the provider decides what it accepts
        "reasoning_effort": "low",
    }
    assert client.post("/v1/chat/completions", json=body).json() == {"from": "remote"}
    _, (endpoint, sent, _) = remote.calls[0]
    assert endpoint == "chat" and sent == body and not llm.calls
    bad = client.post("/v1/chat/completions", json={**body, "temperature": "0"})
    assert assert_envelope(bad, 400)["param"] == "temperature"  # same strict checks


def test_routes_ask_for_a_capability_not_a_family():
    client, _, _ = make()
    files = {"file": ("a.wav", b"RIFF", "audio/wav")}
    response = client.post("/v1/audio/transcriptions", data={"model": "gpt-4o"}, files=files)
    error = assert_envelope(response, 400, "model_not_supported")
    assert "a remote model" in error["message"]


def test_key_scopes_apply_to_upstream_ids():
    keys = load_keys([], None)
    from serve_app.auth import APIKey

    keys.append(APIKey(name="only-local", secret="s1", models=["local"]))
    client, _, remote = make(keys)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    response = client.post(
        "/v1/chat/completions", json=body, headers={"Authorization": "Bearer s1"}
    )
    assert_envelope(response, 403, "permission_denied")
    listed = client.get("/v1/models", headers={"Authorization": "Bearer s1"}).json()["data"]
    assert [m["id"] for m in listed] == ["local"] and not remote.calls


@pytest.mark.parametrize("path", ["examples/gateway.yaml", "examples/loopback-gateway.yaml"])
def test_example_configs_validate(path):
    (app,) = yaml.safe_load((ROOT / path).read_text())["applications"]
    AppConfig.model_validate(app["args"])


def test_loopback_example_is_the_default_plus_its_upstream_models():
    def args(path):
        return yaml.safe_load((ROOT / path).read_text())["applications"][0]["args"]

    default, loopback = args("serve_config.yaml"), args("examples/loopback-gateway.yaml")
    extra = [m for m in loopback["models"] if m not in default["models"]]
    assert [m["id"] for m in extra] == ["gpt-4o-mini", "text-embedding-3-large"]
    loopback["models"] = [m for m in loopback["models"] if m not in extra]
    assert loopback == default


@pytest.mark.parametrize("path", ["serve_config.yaml", "examples/loopback-gateway.yaml"])
def test_laptop_configs_fit_two_cpus(path):
    """`make serve` starts a 2-CPU Ray: every replica must be schedulable at once."""
    (app,) = yaml.safe_load((ROOT / path).read_text())["applications"]
    args = AppConfig.model_validate(app["args"])
    deployments = {"ingress": args.ingress, "audio": args.audio.deployment}
    deployments["rate-limiter"] = args.rate_limiter
    for model in args.models:
        name = getattr(model, "provider_name", model.id)  # one deployment per provider
        deployments[name] = model.deployment
    reserved = sum(
        d.num_cpus * max(d.autoscaling_config.min_replicas, 1) for d in deployments.values()
    )
    assert reserved <= 2, deployments
