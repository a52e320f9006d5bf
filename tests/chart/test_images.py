"""The two Dockerfiles: linted with the real hadolint; what they run exercised outside a
container (no Docker engine here), with the same commands."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"operator": ROOT / "Dockerfile", "trainer": ROOT / "trainer_image" / "Dockerfile"}


def instruction(dockerfile: Path, name: str) -> list[str]:
    """The last exec-form (JSON) value of an instruction such as ENTRYPOINT or CMD."""
    values = re.findall(rf"^{name}\s+(\[.*\])\s*$", dockerfile.read_text(), flags=re.M)
    assert values, f"{dockerfile} has no exec-form {name}"
    return json.loads(values[-1])


def console_script(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(found).exists(), f"{name} is not installed (pip install -e .)"
    return found


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_is_clean(image):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[image])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("image", DOCKERFILES)
def test_runs_as_a_numeric_non_root_user(image):
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILES[image].read_text(), flags=re.M)
    uid = users[-1].split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0


def test_entrypoints_are_the_project_console_scripts():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert instruction(DOCKERFILES["operator"], "ENTRYPOINT") == ["adamw-operator"]
    assert instruction(DOCKERFILES["trainer"], "ENTRYPOINT") == ["adamw-train"]
    assert {"adamw-operator", "adamw-train"} <= set(scripts)


def test_operator_entrypoint_and_default_command_run(tmp_path):
    cmd = [console_script("adamw-operator"), *instruction(DOCKERFILES["operator"], "CMD"), "--help"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--all-namespaces" in proc.stdout, proc.stderr


def test_trainer_entrypoint_reads_the_config_path_the_operator_mounts(tmp_path):
    """The image's CMD names /etc/adamw/config.yaml, where the operator mounts the job's
    ConfigMap; run the same command with that path pointing at a bad config: the trainer
    must refuse it (exit 2) naming the field, before any work."""
    cmd = instruction(DOCKERFILES["trainer"], "CMD")
    assert cmd == ["--config", "/etc/adamw/config.yaml"]
    config = tmp_path / "config.yaml"
    config.write_text("optimizer: {lr: -1}\n")
    proc = subprocess.run([console_script("adamw-train"), "--config", str(config)],
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "optimizer.lr" in proc.stderr


def test_trainer_image_pins_follow_constraints():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), flags=re.M))
    norm = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    in_image = re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\\]*)", DOCKERFILES["trainer"].read_text())
    assert in_image, "the trainer Dockerfile pins its pip packages"
    for name, version in in_image:
        assert norm.get(name.lower().replace("_", "-")) == version, f"{name}=={version} differs from constraints.txt"
    # Everything the trainer extra needs besides torch (which the CUDA base image brings).
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trainer"]
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[<>=!~ ]", d)[0].lower().replace("_", "-") for d in extra + core} - {"torch"}
    assert wanted <= {n.lower().replace("_", "-") for n, _ in in_image}


def test_operator_image_has_no_torch():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "[operator]" in DOCKERFILES["operator"].read_text()
    assert not any(d.startswith("torch") for d in extras["operator"])


def test_dockerignore_keeps_the_context_small():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".tools", "tests"} <= ignored
