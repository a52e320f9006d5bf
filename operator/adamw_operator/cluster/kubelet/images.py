"""The images this virtual kubelet can "run": this checkout's own entry points.

There is no container runtime and no image pull. The two images the project builds
(`make images`, named by the chart's values and the examples) are matched on the last
path component of the repository, whatever the registry prefix, tag or digest:
`ghcr.io/adamw-operator/adamw-trainer:0.1.0`, `adamw-trainer:dev` and
`registry.local:5000/x/adamw-trainer@sha256:...` are all the trainer image. Their
ENTRYPOINT and CMD are those of `trainer_image/Dockerfile` and `Dockerfile` (a test
checks they stay equal), resolved on the kubelet's PATH (the venv's `bin`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Image:
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]


IMAGES: dict[str, Image] = {
    "adamw-trainer": Image(entrypoint=("adamw-train",), cmd=("--config", "/etc/adamw/config.yaml")),
    "adamw-operator": Image(entrypoint=("adamw-operator",), cmd=("--all-namespaces",)),
}


class UnknownImage(LookupError):
    """The image is none this kubelet can run (reported as ErrImagePull)."""


def repository_name(image: str) -> str:
    """`ghcr.io/org/adamw-trainer:0.1.0@sha256:..` -> `adamw-trainer`."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def lookup(image: str) -> Image:
    found = IMAGES.get(repository_name(image))
    if found is None:
        known = ", ".join(f"*/{n}:<tag>" for n in IMAGES)
        raise UnknownImage(
            f'Failed to pull image "{image}": this virtual kubelet runs no container images; it runs '
            f"only the project's own images ({known}, any registry and tag) as local processes")
    return found


def container_command(container: Mapping[str, Any]) -> list[str]:
    """Kubernetes' rule: `command` replaces ENTRYPOINT (and drops CMD); `args` replaces CMD."""
    image = lookup(container.get("image") or "")
    command = container.get("command")
    args = container.get("args")
    if command:
        return [*command, *(args or [])]
    return [*image.entrypoint, *(args or image.cmd)]
