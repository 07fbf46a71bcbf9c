"""A model folder read without loading its weights: the weight files' headers, and a fingerprint.

``check_weights_readable`` is the preflight's check that every actor will be able to load the
folder: each safetensors header parses and every tensor it lists lies inside the file, the shard
index names files that are there, a .bin file is a complete zip archive. It reads kilobytes, not
gigabytes, so it runs before any actor starts.

``model_fingerprint`` identifies the model a checkpoint was trained from (config and tokenizer
files, hashed), so a resume onto another model is caught whatever the folder is called.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path

FINGERPRINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "tokenizer.model", "vocab.json", "merges.txt")
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit


class WeightsError(ValueError):
    """A weight file that no loader could read; names the file and what is wrong."""


def check_weights_readable(folder: str | Path) -> None:
    folder = Path(folder)
    _read_json(folder / "config.json")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(_read_json(index).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise WeightsError(f"{index} names shards that are not in the folder: {missing}")
    for f in sorted(folder.glob("*.safetensors")):
        check_safetensors_header(f)
    for f in sorted(folder.glob("*.bin")):
        if not zipfile.is_zipfile(f):
            raise WeightsError(f"{f}: not a complete torch weights file (no zip directory at its end)")


def check_safetensors_header(path: Path) -> None:
    """The 8-byte header length, the JSON header, and every tensor's byte range inside the file."""
    _read_header(path)


def weight_shapes(folder: str | Path) -> dict[str, tuple[int, ...]] | None:
    """name → shape of every tensor in the folder's safetensors files, from their headers; None when
    the folder has none (a .bin checkpoint: its names are known only by loading it)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    return {name: tuple(t["shape"]) for f in files for name, t in _read_header(f).items() if name != "__metadata__"}


def _read_header(path: Path) -> dict:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: {size} bytes, too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise WeightsError(f"{path}: header length {n} does not fit the {size}-byte file (not safetensors, or cut)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError) as e:
            raise WeightsError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: header is not a JSON object")
    data = size - 8 - n
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = (t.get("data_offsets") or [None, None]) if isinstance(t, dict) else (None, None)
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data):
            raise WeightsError(f"{path}: tensor {name!r} lies outside the file's {data} data bytes "
                               f"(offsets {start}..{end}): the file is cut or corrupt")
    return header


def model_fingerprint(folder: str | Path) -> str:
    """SHA-256 over the config and tokenizer files present (names and contents)."""
    h = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        f = Path(folder) / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise WeightsError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(doc, dict):
        raise WeightsError(f"{path}: not a JSON object")
    return doc
