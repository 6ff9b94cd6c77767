"""LoRA adapters of an LLM: their ids, where they are, and whether one can be served.

An LLM with a ``lora:`` section serves every adapter in its ``source``: each subfolder in
PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``) is an adapter whose
id is ``<base id>:<subfolder>`` (Ray Serve LLM's convention). ``source`` is a directory or
any URL fsspec reads (``s3://``, ``gs://``, ``hf://``... with their fsspec package).

The ingress lists the source (``AdapterSource``: a new subfolder is found on its first
request, without a redeploy) and routes by Serve's model multiplexing; the LLM replica
fetches an adapter, checks it and loads it into vLLM (``deployments/llm/adapters.py``).
"""

import logging
import time
from pathlib import Path
from typing import Any

import fsspec

from deployments.llm.adapters import CONFIG_FILE, NAME
from serve_app.errors import APIError
from serve_app.log import LOGGER

logger = logging.getLogger(LOGGER)

LIST_EVERY_S = 1.0  # an unknown adapter id lists the source again, at most this often


def split_id(name: str) -> tuple[str, str] | None:
    """``(base, adapter)`` of an adapter id ``base:adapter``; None for any other name."""
    base, sep, adapter = name.rpartition(":")
    return (base, adapter) if sep and base else None


def check_name(name: str, adapter: str) -> None:
    """400 for an adapter name that is not one plain folder name of the source."""
    if not NAME.fullmatch(adapter):
        raise APIError(
            400,
            f"The model '{name[:200]}' names an adapter '{adapter[:100]}' that is not a valid "
            "adapter name (letters, digits, '.', '_' and '-', starting with a letter or digit).",
            param="model",
            code="invalid_adapter",
        )


def location(source: str, resolve: Any) -> str:
    """``source`` as a URL or an absolute directory (``resolve``: relative paths)."""
    return source if "://" in source else resolve(source)


class AdapterSource:
    """The adapters in one LLM's ``source``, listed again when asked for one it lacks."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._names: frozenset[str] = frozenset()
        self._listed = 0.0

    def names(self, fresh: bool = False) -> frozenset[str]:
        """The adapters found at the last listing (listed first if never; ``fresh``: if it
        is older than ``LIST_EVERY_S``)."""
        if not self._listed or (fresh and time.monotonic() - self._listed >= LIST_EVERY_S):
            self._list()
        return self._names

    def has(self, adapter: str) -> bool:
        """Whether ``adapter`` is in the source; an unknown one lists it again (at most
        every ``LIST_EVERY_S``: a flood of unknown ids costs one listing a second)."""
        return adapter in self.names() or adapter in self.names(fresh=True)

    def _list(self) -> None:
        self._listed = time.monotonic()
        try:
            fs, root = fsspec.core.url_to_fs(self.url)
            found = fs.glob(f"{root}/*/{CONFIG_FILE}")
        except FileNotFoundError:
            found = []
        except Exception:
            logger.exception("could not list the adapters in %s", self.url)
            return
        self._names = frozenset(
            name for name in (Path(p).parent.name for p in found) if NAME.fullmatch(name)
        )
