"""From corpus names to memory-mapped token files and random training batches.

    resolve_corpus("tiny_shakespeare" | URL | path)  -> local paths (URLs downloaded once into a cache)
    read_corpus(paths)                               -> list of texts (UTF-8, errors reported with byte offsets)
    prepare(texts, tokenizer, out_dir, val_frac)     -> train.bin / val.bin beside the checkpoints, reused by hash
    load_split(path)                                 -> np.memmap of token ids
    get_batch(data, block_size, batch_size, gen)     -> (x, y) int64 tensors of shape (B, T)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from llm.checkpoint import DATA_INFO, TRAIN_BIN, VAL_BIN, read_data_info, write_data_info
from llm.config import FieldNames

BUILTIN_CORPORA = {
    "tiny_shakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
}
MAGIC = b"SGPTTOK\0"  # 8 bytes
BIN_VERSION = 1
HEADER_BYTES = 32  # magic, version (u4), itemsize (u4), count (u8), padding: keeps the ids 32-byte aligned


class DataError(FieldNames, ValueError):
    """Bad corpus or data file; the message is one line meant for the user (settings marked as in SettingError)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SCRATCHGPT_CACHE", Path.home() / ".cache" / "scratchgpt")) / "corpora"


# -----------------------------------------------------------------------------
# finding and reading the corpus

def resolve_corpus(spec: str, cache: Path | None = None, timeout: float = 60.0) -> Path:
    """A built-in name, an http(s) URL (downloaded once into the cache) or a local file path -> local path."""
    url = BUILTIN_CORPORA.get(spec, spec)
    if url.startswith(("http://", "https://")):
        return _download(url, cache or cache_dir(), timeout, name=spec if spec in BUILTIN_CORPORA else None)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"corpus not found: {spec} (a file path, a URL, or one of: {', '.join(BUILTIN_CORPORA)})")
    if path.is_dir():
        raise DataError(f"corpus is a directory, not a text file: {spec}")
    return path


def is_local(spec: str) -> bool:
    """A corpus spec that names a file here (not a built-in name or a URL)."""
    return not BUILTIN_CORPORA.get(spec, spec).startswith(("http://", "https://"))


def corpus_from(out_dir: str | Path, specs: Sequence[str]) -> list[str]:
    """Corpus specs as a run keeps them to resume: local files relative to its directory (so no absolute path
    of this machine is stored), built-in names and URLs as they are."""
    base = Path(out_dir).resolve()
    return [_relative(Path(s).expanduser().resolve(), base) if is_local(s) else s for s in specs]


def _relative(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # Windows: another drive has no relative path; resuming needs the path, so it stays
        return str(path)


def corpus_at(out_dir: str | Path, specs: Sequence[str]) -> tuple[str, ...]:
    """corpus_from's specs back to usable ones, for a run in out_dir."""
    return tuple(str(Path(out_dir) / s) if is_local(s) else s for s in specs)


def _download(url: str, cache: Path, timeout: float, name: str | None = None) -> Path:
    stem = name or Path(url.split("?")[0]).name or "corpus"
    dest = cache / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{stem}"
    if dest.is_file():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        os.replace(tmp, dest)  # only a complete download is ever seen under its final name
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"could not download {url}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def read_text(path: Path, errors: str = "strict") -> str:
    """Read one UTF-8 file. With errors='strict', a bad byte is reported by its offset; 'replace' swaps in U+FFFD."""
    return decode_text(path.read_bytes(), str(path), errors)


def decode_text(data: bytes, name: str, errors: str = "strict") -> str:
    """A corpus's bytes -> its text, checked as every corpus is (UTF-8, not binary, not empty); `name` says what
    it is in the messages (a path, or "the uploaded file")."""
    if errors not in ("strict", "replace"):
        raise DataError(f"encoding errors must be 'strict' or 'replace', got {errors!r}")
    try:
        text = data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(f"{name} is not valid UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} "
                        f"(set `encoding_errors` to replace to substitute U+FFFD)") from None
    if "\x00" in text:
        raise DataError(f"{name} looks like a binary file (NUL byte at character {text.index(chr(0))})")
    if not text.strip():
        raise DataError(f"{name} is empty" + (" (only whitespace)" if text else ""))
    return text


def read_corpus(specs: list[str], errors: str = "strict") -> tuple[list[str], list[Path]]:
    paths = [resolve_corpus(s) for s in specs]
    return [read_text(p, errors) for p in paths], paths


# -----------------------------------------------------------------------------
# tokenized splits on disk

def data_key(texts: list[str], tokenizer, val_frac: float) -> str:
    """What the token files of a run depend on: the texts, the tokenizer and the split (a sha256)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(f"val_frac={val_frac}".encode())
    return h.hexdigest()


def prepare(texts: list[str], tokenizer, out_dir: str | Path, val_frac: float = 0.1,
            min_tokens: int = 2, key: str | None = None) -> dict:
    """Tokenize once into OUT/train.bin and OUT/val.bin, reused while corpus, tokenizer and split are unchanged
    (data.json's key, and the token files as long as it says).

    Documents are joined with the end-of-text token when the tokenizer has one. The last `val_frac` (in (0, 1),
    checked by TrainConfig) of the token stream is validation. Returns the info dict saved as OUT/data.json
    (token and byte counts for bits per byte). `key`: data_key's, when the caller has it already.
    """
    out_dir = Path(out_dir)
    key = key or data_key(texts, tokenizer, val_frac)
    info = read_data_info(out_dir)
    if info.get("key") == key and _files_match(out_dir, info, min_tokens):
        return info

    eot = getattr(tokenizer, "eot_id", None)
    ids: list[int] = []
    for i, doc in enumerate(tokenizer.encode_batch(texts)):
        if i and eot is not None:
            ids.append(eot)
        ids.extend(doc)
    n_val = int(len(ids) * val_frac)
    train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    for name, part in (("train", train), ("val", val)):
        if len(part) < min_tokens:
            raise DataError(f"the {name} split has {len(part)} tokens, fewer than block_size + 1 = {min_tokens}: "
                            f"use a longer corpus, a smaller `block_size`, or a different `val_frac`")
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a corpus that fails the checks leaves nothing behind
    # data.json goes first and comes back last: a run killed in between leaves no key vouching for the files
    (out_dir / DATA_INFO).unlink(missing_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    write_tokens(out_dir / TRAIN_BIN, np.asarray(train, dtype=dtype))
    write_tokens(out_dir / VAL_BIN, np.asarray(val, dtype=dtype))
    info = {"key": key, "train_tokens": len(train), "val_tokens": len(val),
            "train_bytes": len(tokenizer.decode_bytes(train)), "val_bytes": len(tokenizer.decode_bytes(val)),
            "dtype": np.dtype(dtype).name}
    write_data_info(out_dir, info)
    return info


def _files_match(out_dir: Path, info: dict, min_tokens: int) -> bool:
    """The token files are what data.json describes: token counts (headers and sizes) and dtype agree."""
    for split, name in (("train", TRAIN_BIN), ("val", VAL_BIN)):
        count = info.get(f"{split}_tokens")
        if not isinstance(count, int) or count < min_tokens:
            return False
        try:
            data = load_split(out_dir / name)
        except (DataError, OSError):
            return False
        if len(data) != count or data.dtype.itemsize != {"uint16": 2, "uint32": 4}.get(info.get("dtype")):
            return False
    return True


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's saved form: same dict, same token ids."""
    return hashlib.sha256(json.dumps(tokenizer.to_dict(), sort_keys=True).encode()).hexdigest()


def write_tokens(path: Path, ids: np.ndarray) -> None:
    """Token ids with a header, written whole or not at all; a full disk is a DataError naming the file."""
    header = MAGIC + np.array([BIN_VERSION, ids.dtype.itemsize], "<u4").tobytes() + np.array([len(ids)], "<u8").tobytes()
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # (machines sharing a disk each their own)
    try:
        with open(tmp, "wb") as f:
            f.write(header.ljust(HEADER_BYTES, b"\0"))
            f.write(ids.astype(ids.dtype.newbyteorder("<"), copy=False).tobytes())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: could not write the tokens ({e.strerror or e})") from None


def load_split(path: str | Path) -> np.memmap:
    """Memory-map a token file written by write_tokens, checking its header."""
    path = Path(path)
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[:8] != MAGIC:
        raise DataError(f"{path} is not a scratchgpt token file")
    version, itemsize = np.frombuffer(header[8:16], "<u4")
    (count,) = np.frombuffer(header[16:24], "<u8")
    if version != BIN_VERSION or itemsize not in (2, 4):
        raise DataError(f"{path}: unsupported token file (version {version}, itemsize {itemsize})")
    if path.stat().st_size != HEADER_BYTES + int(count) * int(itemsize):
        raise DataError(f"{path} is truncated: header says {count} tokens")
    return np.memmap(path, dtype="<u2" if itemsize == 2 else "<u4", mode="r", offset=HEADER_BYTES, shape=(int(count),))


def get_batch(data: np.ndarray, block_size: int, batch_size: int, generator: torch.Generator,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x (B, T) and y (B, T) shifted by one. The generator is the only source of randomness."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    xy = torch.from_numpy(np.stack([data[i: i + block_size + 1] for i in ix]).astype(np.int64))
    x, y = xy[:, :-1], xy[:, 1:]
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.contiguous().to(device)
