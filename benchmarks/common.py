"""Shared benchmark helpers: machine description, timing, a memory-bandwidth probe."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def describe_machine(device: torch.device | None = None) -> str:
    """One line saying where the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads"
    ]
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        parts.append(f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)")
    return "; ".join(parts)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device, repeat: int = 1) -> float:
    """Seconds per call of `fn`, averaged over `repeat` back-to-back calls."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


def interleaved(
    variants: dict[str, Callable[[], object]],
    device: torch.device,
    rounds: int = 7,
    repeat: int = 3,
    warmup: int = 2,
) -> dict[str, list[float]]:
    """Time each variant in turn, round after round, so drifts in machine speed (shared
    VMs swing 2x within seconds) hit every variant alike. Returns seconds per call."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(time_once(fn, device, repeat))
    return times


def rotated(runners: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each runner (which times itself and returns seconds) once as a warm-up (allocator,
    kernels, cuBLAS handles), then `rounds` times, rotating the order each round so no
    runner always runs right after another."""
    for fn in runners.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(runners[name]())
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


class BandwidthProbe:
    """In-place axpy (a += s*b) over n floats: 8 bytes read + 4 written per element.

    In place, like the optimizer: a kernel that writes a separate output also pays a
    read-for-ownership of it on CPUs, which would make the probe look slower than the
    memory is and flatter every fraction measured against it.
    """

    bytes_per_element = 12

    def __init__(self, n: int, device: torch.device):
        self.a = torch.randn(n, device=device)
        self.b = torch.randn(n, device=device)
        self.n = n

    def __call__(self) -> None:
        self.a.add_(self.b, alpha=1e-6)

    def gbps(self, seconds: float) -> float:
        return self.bytes_per_element * self.n / seconds / 1e9


def md_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
