"""Run the embedded default as `make serve` does (`serve_app.launch`) for a benchmark."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import yaml
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]


def _model(model_id: str):
    from serve_app.config import AppConfig

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = AppConfig.model_validate(config["applications"][0]["args"])
    return next(m for m in args.models if m.id == model_id)


def engine_options(model_id: str) -> dict:
    """The engine options the shipped config gives ``model_id``, as its deployment gets them."""
    return _model(model_id).engine.model_dump()


def lora_options(model_id: str) -> dict | None:
    """The ``lora`` options the shipped config gives ``model_id`` (None: no adapters)."""
    lora = getattr(_model(model_id), "lora", None)
    return lora.model_dump() if lora else None


STORY = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def stream_once(
    client: OpenAI, model: str, max_tokens: int, extra_body: dict | None = None
) -> tuple[float, float]:
    """(TTFT seconds, decode tokens/s) of one streamed chat completion at temperature 0."""
    start = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model,
        messages=STORY,
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra_body,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    return first, (tokens - 1) / (total - first)


def scrape(metrics_url: str) -> list:
    """Every sample of one scrape of a Prometheus endpoint (prometheus_client's ``Sample``)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(metrics_url).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


@dataclass
class Server:
    url: str
    pid: int
    ready_s: float  # from the launch to the first 200 on /health
    metrics_url: str  # Ray's Prometheus endpoint

    def metric(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """The samples of ``name`` (e.g. ``ray_serve_actual_batch_size_bucket``) carrying
        ``labels``, from one scrape."""
        return [
            (sample.labels, sample.value)
            for sample in scrape(self.metrics_url)
            if sample.name == name and labels.items() <= sample.labels.items()
        ]

    def memory_mib(self) -> float:
        """Proportional set size (shared pages split between sharers) of `serve run` and
        every process under it (Ray's services, replicas, engine cores)."""
        proc = psutil.Process(self.pid)
        total = 0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss
        return total / 2**20


@contextlib.contextmanager
def healthy_process(
    command: list[str], url: str, env: dict[str, str], deadline_s: float = 600, cwd: Path = ROOT
) -> Iterator[tuple[int, float]]:
    """Run ``command`` in a process group of its own until ``url``/health answers 200:
    ``(pid, seconds until healthy)``. After, SIGTERM to the command (a background process
    started from a script ignores SIGINT), then SIGKILL to the whole group if it has not
    ended within a minute (which can leave vLLM engine cores running: they are in a group
    of their own). Its output goes to a file under ``test-artifacts/``, whose end a failure
    to become healthy quotes."""
    started = time.monotonic()
    log = ROOT / "test-artifacts" / f"{Path(command[0]).name}-{int(time.time())}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("wb") as output:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while True:
            if time.monotonic() - started > deadline_s or proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
                raise RuntimeError(
                    f"{command[:3]} did not become healthy (exit code {proc.poll()}); "
                    f"the end of {log}:\n{tail}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.25)
        yield proc.pid, time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_server(
    deadline_s: float = 600,
    config: str = "serve_config.yaml",
    root: Path = ROOT,
    keys_file: Path | None = None,
) -> Iterator[Server]:
    """Our app as `make serve` runs it (no API keys, unless ``keys_file``), its metrics on
    port 8081. ``root``: another checkout of the app to run instead (e.g. a `git worktree`
    of an older commit; its code reaches Ray's workers through PYTHONPATH)."""
    http = yaml.safe_load((root / config).read_text())["http_options"]
    url = f"http://{http['host']}:{http['port']}"
    metrics_port = 8081
    command = [sys.executable, "-m", "serve_app.launch", config]
    command += ["--metrics-port", str(metrics_port)]
    env = {**os.environ, "SERVE_APP_API_KEYS": "", "SERVE_APP_KEYS_FILE": str(keys_file or "")}
    if root != ROOT:
        env["PYTHONPATH"] = str(root)
    with healthy_process(command, url, env, deadline_s, cwd=root) as (pid, ready_s):
        yield Server(url, pid, ready_s, f"http://127.0.0.1:{metrics_port}/metrics")
