"""Document data written by tests: the same documents as jsonl, parquet and an hfDisk dataset.

Each document names its own index (`doc-17`), so a test can tell which documents ended
up in which split. The BPE tokenizer comes from `hf_models` (trained in the test session).
"""

from __future__ import annotations

import json
from pathlib import Path

ADJECTIVES = ["quick", "lazy", "bright", "quiet", "heavy", "small"]
NOUNS = ["fox", "dog", "weight", "moment", "tensor", "gradient"]
VERBS = ["jumps over", "follows", "decays toward", "updates", "scales", "checks"]


def document(i: int) -> str:
    a, n, v, m = ADJECTIVES[i % 6], NOUNS[(i // 6) % 6], VERBS[(i // 36) % 6], NOUNS[(i * 7) % 6]
    return f"doc-{i}: the {a} {n} {v} the {m}. The {a} {n} {v} the {m} again."


def instruction(i: int) -> dict[str, str]:
    return {"question": f"What does the {NOUNS[i % 6]} do in doc-{i}?",
            "answer": f" It {VERBS[(i // 6) % 6]} the {NOUNS[(i * 5) % 6]}."}


def texts(n: int) -> list[str]:
    return [document(i) for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_parquet(path: Path, records: list[dict], row_group_size: int = 100) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=row_group_size)
    return path


def write_hf_disk(path: Path, records: list[dict]) -> Path:
    import datasets

    datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path
