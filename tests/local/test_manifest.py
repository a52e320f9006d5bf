"""Reading manifests for `adamw-job run`: the job document, and refusals that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from adamw_operator.local.manifest import load_manifest, validate_manifest
from adamw_trainer.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_the_quickstart_job_is_found_beside_its_claim() -> None:
    manifest = load_manifest(ROOT / "examples" / "quickstart.yaml")
    metadata, spec = validate_manifest(manifest, "quickstart.yaml")
    assert metadata["name"] == "quickstart" and spec.replicas == 2 and spec.gpus_per_replica == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: AdamWTrainingJob\napiVersion: training.adamw.io/v1alpha1\nmetadata: {name: a}\n"
         "spec: {image: x}\n---\nkind: AdamWTrainingJob\napiVersion: training.adamw.io/v1alpha1\n"
         "metadata: {name: b}\nspec: {image: x}\n", "holds 2 AdamWTrainingJobs (a, b)"),
        ("kind: Pod\napiVersion: v1\nmetadata: {name: a}\n", "kind: must be AdamWTrainingJob"),
        ("a: [1, 2\n", "not valid YAML"),
        ("kind: AdamWTrainingJob\napiVersion: training.adamw.io/v1alpha1\nmetadata: {name: a}\n"
         "spec: {image: x, replicas: 2, pod: {env: [{name: RANK, value: '3'}]}}\n",
         "spec.pod.env[0].name: RANK is set by the operator"),
    ],
)
def test_refusals_name_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        validate_manifest(load_manifest(path), str(path))
    assert expected in str(err.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_manifest(tmp_path / "absent.yaml")


def test_a_run_directory_is_held_by_one_run_at_a_time(tmp_path: Path) -> None:
    from adamw_operator.local.run_dir import RunDirBusy, exclusive, in_use

    assert not in_use(tmp_path / "run")
    with exclusive(tmp_path / "run"):
        assert in_use(tmp_path / "run")
        with pytest.raises(RunDirBusy, match="in use by another adamw-job run"), exclusive(tmp_path / "run"):
            pass
    assert not in_use(tmp_path / "run")


def test_a_suspended_job_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adamw_operator.local.cli import main

    path = tmp_path / "job.yaml"
    path.write_text("kind: AdamWTrainingJob\napiVersion: training.adamw.io/v1alpha1\n"
                    "metadata: {name: paused}\nspec: {image: x, suspend: true}\n")
    assert main(["run", str(path), "--dir", str(tmp_path / "run")]) == 0
    assert "spec.suspend: true" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()
