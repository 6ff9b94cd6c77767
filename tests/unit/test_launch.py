"""``serve_app.launch`` (`make serve`) refuses to start Ray without token authentication
unless told to."""

import os

import pytest

from serve_app import launch


def test_refuses_ray_without_authentication(monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    before = dict(os.environ)
    with pytest.raises(SystemExit) as stopped:
        launch.main(["serve_config.yaml"])
    assert stopped.value.code == 2
    assert "--allow-unauthenticated-ray" in capsys.readouterr().err
    assert dict(os.environ) == before  # refused before setting Ray's environment
