"""The audio preprocessor: a CPU-only pool that decodes uploads for the Whisper replicas."""

import asyncio
import logging

from deployments.audio.decode import AudioDecodeError, AudioTooLongError, decode_audio
from deployments.common.contracts import DecodedAudio, ErrorFrame

logger = logging.getLogger("ray.serve.deployments.audio")


class AudioPreprocessor:
    """Decodes any container PyAV reads to mono 16 kHz float32, off the model replicas."""

    def __init__(self, max_duration_s: float) -> None:
        self.max_duration_s = max_duration_s

    async def decode(self, data: bytes) -> DecodedAudio | ErrorFrame:
        """Return the decoded audio, or a 400 ``ErrorFrame`` saying why it could not be decoded.

        The caller passes this call's ``DeploymentResponse`` straight to a Whisper replica.
        """
        try:
            samples = await asyncio.to_thread(
                decode_audio, data, max_duration_s=self.max_duration_s
            )
        except AudioTooLongError as exc:
            return ErrorFrame(
                400, f"Audio file is too long: {exc}.", param="file", code="audio_too_long"
            )
        except AudioDecodeError as exc:
            return ErrorFrame(
                400,
                f"Audio file could not be decoded: {exc}. Supported formats include flac, "
                "m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav and webm.",
                param="file",
                code="invalid_audio",
            )
        return DecodedAudio(samples, 16_000)

    async def check_health(self) -> None:
        """Nothing to ask: decoding is stateless."""
