"""Run every `benchmarks/bench_*.py` module and update its section of BENCHMARKS.md.

    python -m benchmarks.run_all                 # all benchmarks, write BENCHMARKS.md
    python -m benchmarks.run_all --only optimizer_step --quick --no-write

Each section of BENCHMARKS.md sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`;
only the sections of benchmarks that ran are replaced, so results measured elsewhere
(the GPU section) stay until that benchmark runs again on such a machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import pkgutil
import re
import sys
from pathlib import Path

import benchmarks

REPORT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = """# Benchmarks

Produced by `make bench` (`python -m benchmarks.run_all`). Each section is rewritten
when its benchmark runs; ratios are measured side by side in one run, because shared VMs
change speed from one second to the next.
"""


def discover() -> list[str]:
    return sorted(
        m.name[len("bench_"):]
        for m in pkgutil.iter_modules(benchmarks.__path__)
        if m.name.startswith("bench_")
    )


def update_section(text: str, name: str, title: str, body: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"<!-- bench:{name} -->\n## {title}\n\n_Measured {stamp}._\n\n{body.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + "\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", help="run only this benchmark (repeatable)")
    p.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    p.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    p.add_argument("--report", type=Path, default=REPORT, help="markdown file to update")
    # One thread by default: on a shared 2-core VM, multi-threaded timings swing far more
    # (an OpenMP thread waits on a descheduled sibling), which drowns the ratios we report.
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    names = discover()
    unknown = set(args.only or []) - set(names)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; known: {names}")
    text = args.report.read_text() if args.report.exists() else HEADER
    failed = []
    for name in args.only or names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        title = (module.__doc__ or name).strip().splitlines()[0].rstrip(".")
        print(f"== {name}: {title}", flush=True)
        try:
            body = module.run(args)
        except Exception as err:  # one broken benchmark should not hide the others
            failed.append(name)
            print(f"   FAILED: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        if body is None:  # the benchmark does not apply here (e.g. needs CUDA)
            print("   skipped", flush=True)
            continue
        print(body, flush=True)
        text = update_section(text, name, title, body)
        if not args.no_write:
            args.report.write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
