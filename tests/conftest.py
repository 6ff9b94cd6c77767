import pytest

from tests.openai_schema import spec_path


def pytest_configure(config: pytest.Config) -> None:
    if not spec_path().is_file():
        raise pytest.UsageError(f"OpenAI schemas not found at {spec_path()}")
