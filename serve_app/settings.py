"""Environment settings (``SERVE_APP_*``), read in one place."""

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Process-level settings of the ingress, from the environment."""

    model_config = SettingsConfigDict(env_prefix="SERVE_APP_", extra="ignore")

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated Bearer keys. Empty: the API runs open (local use only).",
    )
    keys_file: str | None = Field(
        None, description="YAML/JSON file of named keys with scopes and limits."
    )
    log_level: str = Field("INFO", description="Log level of the ingress and deployments.")
    health_timeout_s: float = Field(
        5.0, gt=0, description="How long /health waits for each model to answer."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value
