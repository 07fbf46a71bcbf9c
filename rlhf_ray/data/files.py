"""Reading training data: JSON Lines (plain or gzip), Parquet, or a `datasets` source.

Every row keeps where it came from ("train.jsonl line 17") so that any later complaint about it
(a missing field, a prompt that cannot fit) points at the exact line to fix.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

DATASETS_PREFIX = "datasets:"


class DataError(ValueError):
    """A problem with the data, phrased for the user: names the file, the row and what to do."""


@dataclass
class Table:
    source: str
    rows: list[dict]
    numbers: list[int]  # 1-based line (JSONL) or row (other sources) of each row
    unit: str = "row"

    def where(self, i: int) -> str:
        return f"{self.source} {self.unit} {self.numbers[i]}"

    def subset(self, index: list[int]) -> "Table":
        return Table(self.source, [self.rows[i] for i in index], [self.numbers[i] for i in index], self.unit)

    def __len__(self) -> int:
        return len(self.rows)


def read_table(source: str) -> Table:
    """Rows of ``source``: a .jsonl/.jsonl.gz/.parquet file, a folder written by `save_to_disk`,
    or ``datasets:NAME[:SPLIT]`` (read with `datasets.load_dataset`, from the local cache when offline)."""
    if source.startswith(DATASETS_PREFIX):
        name, _, split = source[len(DATASETS_PREFIX):].partition(":")
        return _from_datasets(source, lambda ds: ds.load_dataset(name, split=split or "train"))
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_datasets(source, lambda ds: ds.load_from_disk(str(path)))
    if not path.is_file():
        raise DataError(f"data file {source} does not exist (expected a .jsonl, .jsonl.gz or .parquet file, "
                        f"a dataset folder, or {DATASETS_PREFIX}NAME[:SPLIT])")
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        table = _read_jsonl(path, source)
    elif name.endswith(".parquet"):
        table = _read_parquet(path, source)
    else:
        raise DataError(f"data file {source}: unknown extension; use .jsonl, .jsonl.gz or .parquet")
    if not table.rows:
        raise DataError(f"data file {source} is empty: it has no rows")
    return table


def _read_jsonl(path: Path, source: str) -> Table:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    rows, numbers = [], []
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{source} line {n}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                    "re-save the file as UTF-8") from None
                if not line.strip():
                    continue  # blank lines (a trailing newline) are not rows; numbering still counts them
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{source} line {n}: malformed JSON ({e.msg} at column {e.colno}); "
                                    "each line must be one JSON object") from None
                if not isinstance(row, dict):
                    raise DataError(f"{source} line {n}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
                numbers.append(n)
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{source}: cannot read ({e})") from None
    return Table(source, rows, numbers, "line")


def _read_parquet(path: Path, source: str) -> Table:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{source}: cannot read as Parquet ({e})") from None
    return Table(source, rows, list(range(1, len(rows) + 1)))


def _from_datasets(source: str, load) -> Table:
    try:
        import datasets

        ds = load(datasets)
    except Exception as e:  # offline misses, bad names, bad splits: all surface as different types
        raise DataError(f"{source}: `datasets` could not load it ({type(e).__name__}: {e})") from None
    if isinstance(ds, dict):
        raise DataError(f"{source} holds several splits ({', '.join(ds)}); point at one: "
                        f"{DATASETS_PREFIX}NAME:SPLIT, or the split's own folder")
    rows = list(ds)
    if not rows:
        raise DataError(f"{source} is empty: it has no rows")
    return Table(source, rows, list(range(1, len(rows) + 1)))
