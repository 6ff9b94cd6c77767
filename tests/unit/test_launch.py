"""``serve_app.launch`` (`make serve`) refuses to start Ray without token authentication
unless told to."""

import os
from pathlib import Path

import pytest
import yaml

from serve_app import launch

ROOT = Path(__file__).resolve().parents[2]


def test_refuses_ray_without_authentication(monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    before = dict(os.environ)
    with pytest.raises(SystemExit) as stopped:
        launch.main(["serve_config.yaml"])
    assert stopped.value.code == 2
    assert "--allow-unauthenticated-ray" in capsys.readouterr().err
    assert dict(os.environ) == before  # refused before setting Ray's environment


def test_refuses_a_config_that_can_starve_a_deployment_before_ray_starts(
    monkeypatch, tmp_path, capsys
):
    import ray

    monkeypatch.setattr(os, "environ", dict(os.environ))  # launch sets Ray's environment
    monkeypatch.setattr(ray, "init", lambda **_: pytest.fail("Ray started"))
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["cluster"]["nodes"][0]["num_cpus"] = 1.5
    path = tmp_path / "tight.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as stopped:
        launch.main([str(path)])
    assert stopped.value.code == 2
    assert "unschedulable" in capsys.readouterr().err
