"""Documents from `jsonl`, `parquet` and `hfDisk` data: one record is one document.

Records are read in batches (`Batch`: texts, or prompts and completions) in a fixed
order (files sorted by path, rows in file order), so the token cache built from them is
the same on every node. A record without the configured field stops the run with the
file and line (or row) and the field to set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DataConfig
from .sources import DataError

BATCH_RECORDS = 1024
_SUFFIXES = {"jsonl": (".jsonl",), "parquet": (".parquet",)}


@dataclass
class Batch:
    """Up to BATCH_RECORDS documents: `texts`, or `prompts` with `completions`."""

    texts: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts) or len(self.prompts)

    @property
    def nbytes(self) -> int:
        return sum(len(s.encode()) for part in (self.texts, self.prompts, self.completions) for s in part)


def _fields(cfg: DataConfig) -> list[tuple[str, str]]:
    """(record field, its config name) pairs the source reads."""
    if cfg.prompt_field is not None:
        assert cfg.completion_field is not None  # the config refuses one without the other
        return [(cfg.prompt_field, "data.promptField"), (cfg.completion_field, "data.completionField")]
    return [(cfg.text_field, "data.textField")]


def data_files(cfg: DataConfig) -> list[Path]:
    """The files a source reads, sorted; for `hfDisk` every file under the directory."""
    root = Path(cfg.path or "")
    if not root.exists():
        raise DataError(f"data.path: {root} does not exist; point it at your {cfg.source} data")
    if cfg.source == "hfDisk":
        if not root.is_dir():
            raise DataError(f"data.path: {root} is not a directory; hfDisk reads what save_to_disk wrote")
        return sorted(p for p in root.rglob("*") if p.is_file())
    suffixes = _SUFFIXES[cfg.source]
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    if not files:
        raise DataError(f"data.path: {root} holds no {'/'.join('*' + s for s in suffixes)} files")
    return files


def read_batches(cfg: DataConfig) -> Iterator[Batch]:
    """Every document of the configured source, in order, in batches."""
    if cfg.source == "jsonl":
        yield from _jsonl(cfg)
    elif cfg.source == "parquet":
        yield from _parquet(cfg)
    elif cfg.source == "hfDisk":
        yield from _hf_disk(cfg)
    else:
        raise ValueError(f"{cfg.source} is not a document source")


def _batch_of(columns: list[list[str]], cfg: DataConfig) -> Batch:
    if cfg.prompt_field is not None:
        return Batch(prompts=columns[0], completions=columns[1])
    return Batch(texts=columns[0])


def _jsonl(cfg: DataConfig) -> Iterator[Batch]:
    fields = _fields(cfg)
    for path in data_files(cfg):
        columns: list[list[str]] = [[] for _ in fields]
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{lineno}: not a JSON object ({err.msg}); one object per line") from None
                for column, (name, option) in zip(columns, fields, strict=True):
                    value = record.get(name) if isinstance(record, dict) else None
                    if not isinstance(value, str):
                        raise DataError(_missing(f"{path}:{lineno}", name, option, record))
                    column.append(value)
                if len(columns[0]) >= BATCH_RECORDS:
                    yield _batch_of(columns, cfg)
                    columns = [[] for _ in fields]
        if columns[0]:
            yield _batch_of(columns, cfg)


def _missing(where: str, name: str, option: str, record: object) -> str:
    have = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
    return (f"{where}: record has no text field '{name}' ({option}; the record has: {have}); "
            f"set {option} to the field that holds it, or fix the record")


def _check_columns(where: str, names: list[str], fields: list[tuple[str, str]]) -> None:
    for name, option in fields:
        if name not in names:
            raise DataError(
                f"{where}: no column '{name}' ({option}; columns: {', '.join(names)}); "
                f"set {option} to the column that holds the text"
            )


def _column_values(where: str, start_row: int, values: list, name: str, option: str) -> list[str]:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise DataError(
                f"{where}: row {start_row + i + 1}: field '{name}' ({option}) holds "
                f"{'null' if v is None else type(v).__name__}, not text; fix the record or set {option}"
            )
    return values


def _parquet(cfg: DataConfig) -> Iterator[Batch]:
    import pyarrow.parquet as pq

    fields = _fields(cfg)
    for path in data_files(cfg):
        try:
            pf = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises its own ArrowInvalid for non-parquet files
            raise DataError(f"{path}: not a readable parquet file ({err})") from None
        _check_columns(str(path), pf.schema_arrow.names, fields)
        row = 0
        for rb in pf.iter_batches(batch_size=BATCH_RECORDS, columns=[n for n, _ in fields]):
            columns = [_column_values(str(path), row, rb.column(n).to_pylist(), n, o) for n, o in fields]
            row += rb.num_rows
            yield _batch_of(columns, cfg)


def _hf_disk(cfg: DataConfig) -> Iterator[Batch]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    path = Path(cfg.path or "")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise DataError(f"data.path: {path} is not a dataset saved with save_to_disk ({err})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"data.path: {path} holds splits {', '.join(ds)} but no 'train'; "
                            "save the split to train on (Dataset.save_to_disk) or name it 'train'")
        ds = ds["train"]
    fields = _fields(cfg)
    _check_columns(str(path), list(ds.column_names), fields)
    ds = ds.select_columns([n for n, _ in fields])
    row = 0
    for batch in ds.iter(batch_size=BATCH_RECORDS):
        columns = [_column_values(str(path), row, list(batch[n]), n, o) for n, o in fields]
        row += len(columns[0])
        yield _batch_of(columns, cfg)
