import os

import pytest

from tests.openai_schema import spec_path


def pytest_configure(config: pytest.Config) -> None:
    if not spec_path().is_file():
        raise pytest.UsageError(f"OpenAI schemas not found at {spec_path()}")


@pytest.fixture(scope="session")
def postgres_dsn():
    """A real PostgreSQL server for the session; skips without Debian's package, except in CI,
    where it must be there."""
    from tests import postgres_server  # noqa: PLC0415

    if not postgres_server.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (`make test-tools` installs it)")
        pytest.skip("no PostgreSQL server (`make test` installs Debian's postgresql)")
    with postgres_server.server() as dsn:
        yield dsn
