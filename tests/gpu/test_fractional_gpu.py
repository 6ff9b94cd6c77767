"""vLLM on CUDA with two LLM replicas sharing one GPU (num_gpus: 0.5). Skipped without CUDA."""

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs CUDA")]


def test_two_replicas_share_one_gpu_and_answer(tmp_path):
    import ray
    from openai import OpenAI
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import AppConfig
    from tests.serve.conftest import _wait_healthy, free_port

    config = yaml.safe_load((ROOT / "cluster" / "serve_config.gpu.yaml").read_text())
    args = config["applications"][0]["args"]
    llm = args["models"][0]
    llm["deployment"]["autoscaling_config"] = {"min_replicas": 2, "max_replicas": 2}
    os.environ.pop("SERVE_APP_API_KEYS", None)
    ray.init(address="local", num_gpus=1, _temp_dir=str(tmp_path / "ray"))
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(AppConfig.model_validate(args)), name="openai", route_prefix="/")
        _wait_healthy(f"http://127.0.0.1:{port}")
        status = serve.status().applications["openai"].deployments
        replicas = status[f"llm-{llm['id']}"].replica_states
        assert replicas.get("RUNNING") == 2, replicas
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model=llm["id"],
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
        )
        assert "Paris" in reply.choices[0].message.content
    finally:
        serve.shutdown()
        ray.shutdown()
