import pytest

from tests.unit.responses_app import App
from tests.unit.stores import make_store  # noqa: F401 - a fixture of the store tests


@pytest.fixture
def app(tmp_path):
    """The Responses ingress on a fake backend (``responses_app.App``)."""
    made = App(tmp_path)
    with made.http:  # one event loop for the whole test: background tasks outlive requests
        yield made
