"""The ``whisper`` family: speech to text on faster-whisper, one deployment per model."""

from typing import Literal

from pydantic import Field

from serve_app.families.base import Family, cpu_threads_env, register
from serve_app.options import DeploymentOptions, LocalModelBase, StrictModel


class WhisperEngineOptions(StrictModel):
    """faster-whisper options."""

    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Where the model runs.")
    compute_type: str = Field("int8", description="CTranslate2 compute type (int8, float16...).")
    beam_size: int = Field(5, ge=1, le=16, description="Beam width for decoding.")
    vad_filter: bool = Field(
        True,
        description="Skip non-speech with Silero VAD (faster-whisper's, offline): without it "
        "silence and faint noise come out as invented text ('You You You') after seconds to "
        "minutes of decoding (bench/silence_bench.py).",
    )
    cpu_threads: int = Field(
        0,
        ge=0,
        description="CTranslate2 CPU threads, also the replica's OMP_NUM_THREADS (0: Ray's "
        "default, floor(num_cpus), at least 1).",
    )
    max_batch_size: int = Field(
        8,
        ge=1,
        le=64,
        description="30-second windows, from any requests, decoded together in one model call.",
    )
    batch_wait_timeout_s: float = Field(
        0.01,
        ge=0,
        le=1,
        description="How long an idle model waits for more windows before a call (windows "
        "that arrive while it is busy batch up without waiting).",
    )


class WhisperModelConfig(LocalModelBase):
    """One speech-to-text model served by its own faster-whisper deployment (CTranslate2)."""

    family: Literal["whisper"]
    engine: WhisperEngineOptions = Field(default_factory=WhisperEngineOptions)
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(max_ongoing_requests=8, max_queued_requests=32),
        description="Placement and scaling of this model's replicas.",
    )

    @property
    def context_length(self) -> int | None:
        return None


FAMILY = register(
    Family(
        name="whisper",
        config=WhisperModelConfig,
        deployment="deployments.whisper.deployment:WhisperDeployment",
        capabilities=frozenset({"transcriptions", "translations"}),
        usage="audio",
        model_type="stt",
        noun="a speech-to-text model",
        # CTranslate2 reads OMP_NUM_THREADS once, at load. Left to Ray (floor(num_cpus), at
        # least 1) it computes other encoder outputs than with `cpu_threads` threads (up to 2
        # apart on whisper-base: another transcript than faster-whisper's own), and slower.
        replica_env=cpu_threads_env,
    )
)
