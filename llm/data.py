"""From a corpus to memory-mapped token files and random training batches.

    prepare(corpus, tokenizer, out_dir, val_frac)    -> train.bin / val.bin beside the checkpoints, reused by hash,
                                                        written as the corpus streams by (never whole in memory)
    load_split(path)                                 -> np.memmap of token ids
    get_batch(data, block_size, batch_size, gen)     -> (x, y) int64 tensors of shape (B, T), random windows
    Epochs(n_tokens, block_size, seed).take(k, n)    -> the starts of windows k..k+n of a run read in epochs
    windows(data, starts, block_size)                -> (x, y) at those starts

Finding and reading the corpus (files, directories, globs, .gz, URLs) is llm/corpus.py.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import socket
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llm.checkpoint import DATA_INFO, TRAIN_BIN, VAL_BIN, read_data_info, write_data_info
from llm.corpus import Corpus, DataError

MAGIC = b"SGPTTOK\0"  # 8 bytes
BIN_VERSION = 1
HEADER_BYTES = 32  # magic, version (u4), itemsize (u4), count (u8), padding: keeps the ids 32-byte aligned


# -----------------------------------------------------------------------------
# tokenized splits on disk

def data_key(corpus: Corpus | Sequence[str], tokenizer, val_frac: float) -> str:
    """What the token files of a run depend on: the texts, the tokenizer and the split (a sha256)."""
    h = hashlib.sha256()
    for digest in _as_corpus(corpus).digests():
        h.update(digest)
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(f"val_frac={val_frac}".encode())
    return h.hexdigest()


def _as_corpus(corpus: Corpus | Sequence[str]) -> Corpus:
    return corpus if isinstance(corpus, Corpus) else Corpus(texts=tuple(corpus))


PARALLEL_MIN_BYTES = 8 << 20  # below this, worker processes cost more than they save (bench/README.md, Tokenizer)
COPY_TOKENS = 1 << 22  # tokens moved at a time when the stream is split into train and val


def prepare(corpus: Corpus | Sequence[str], tokenizer, out_dir: str | Path, val_frac: float = 0.1,
            min_tokens: int = 2, key: str | None = None, num_workers: int | None = None,
            progress: bool = False) -> dict:
    """Tokenize once into OUT/train.bin and OUT/val.bin, reused while corpus, tokenizer and split are unchanged
    (data.json's key, and the token files as long as it says). `corpus`: a Corpus, or texts.

    Documents are joined with the end-of-text token when the tokenizer has one. The last `val_frac` (in (0, 1),
    checked by TrainConfig) of the token stream is validation. The pieces of the corpus are encoded by
    `num_workers` processes (None: every core for 8 MB or more) straight into the file, so memory does not grow
    with the corpus; the files do not depend on the number of workers. Returns the info dict saved as
    OUT/data.json (token and byte counts for bits per byte). `key`: data_key's, when the caller has it already.
    """
    out_dir, corpus = Path(out_dir), _as_corpus(corpus)
    key = key or data_key(corpus, tokenizer, val_frac)
    info = read_data_info(out_dir)
    if info.get("key") == key and _files_match(out_dir, info, min_tokens):
        return info
    made = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    # data.json goes first and comes back last: a run killed in between leaves no key vouching for the files
    (out_dir / DATA_INFO).unlink(missing_ok=True)
    dtype = np.dtype("<u2" if tokenizer.vocab_size <= 2**16 else "<u4")
    tmp = out_dir / f"{TRAIN_BIN}{tmp_suffix()}"
    try:
        n = _write_stream(tmp, _token_stream(corpus, tokenizer, num_workers, progress), dtype)
        n_val = int(n * val_frac)
        for name, count in (("train", n - n_val), ("val", n_val)):
            if count < min_tokens:
                raise DataError(f"the {name} split has {count} tokens, fewer than block_size + 1 = {min_tokens}: "
                                f"use a longer corpus, a smaller `block_size`, or a different `val_frac`")
        ids = load_split(tmp)
        lengths = np.array([len(tokenizer.decode_bytes([i])) for i in range(tokenizer.vocab_size)], np.int64)
        n_bytes = [sum(int(lengths[ids[i:min(i + COPY_TOKENS, b)]].sum()) for i in range(a, b, COPY_TOKENS))
                   for a, b in ((0, n - n_val), (n - n_val, n))]
        _write_stream(out_dir / VAL_BIN, (ids[i:min(i + COPY_TOKENS, n)] for i in range(n - n_val, n, COPY_TOKENS)),
                      dtype)
        del ids
        _truncate(tmp, n - n_val, dtype)
        os.replace(tmp, out_dir / TRAIN_BIN)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if made:  # a corpus that fails the checks leaves nothing behind
            for f in out_dir.iterdir():
                f.unlink()
            out_dir.rmdir()
        raise
    info = {"key": key, "train_tokens": n - n_val, "val_tokens": n_val, "train_bytes": n_bytes[0],
            "val_bytes": n_bytes[1], "dtype": {2: "uint16", 4: "uint32"}[dtype.itemsize]}
    write_data_info(out_dir, info)
    return info


def _token_stream(corpus: Corpus, tokenizer, num_workers: int | None, progress: bool) -> Iterator:
    """The corpus's ids in order, a piece at a time: the documents' pieces through encode_pieces, with the
    end-of-text token between documents."""
    if num_workers is None:
        num_workers = (os.cpu_count() or 1) if corpus.nbytes() >= PARALLEL_MIN_BYTES else 1
    eot = getattr(tokenizer, "eot_id", None)
    breaks: deque[bool] = deque()  # one per piece sent, in order: is it a document break?
    bar = tqdm(total=corpus.nbytes(), unit="B", unit_scale=True, desc="tokenizing", disable=not progress,
               delay=1.0)

    def pieces():
        for i, doc in enumerate(corpus.documents()):
            if i and eot is not None:
                breaks.append(True)
                yield ""
            for piece in doc:
                breaks.append(False)
                if progress:
                    bar.update(len(piece.encode("utf-8", "surrogatepass")))
                yield piece

    for ids in tokenizer.encode_pieces(pieces(), num_workers):
        yield [eot] if breaks.popleft() else ids
    bar.close()


def _write_stream(path: Path, arrays, dtype: np.dtype) -> int:
    """Token ids arriving in arrays -> a token file (write_tokens' format), written whole or not at all; the
    number of ids. A full disk is a DataError naming the file."""
    n, final = 0, path.with_name(path.name.split(".tmp")[0])
    tmp = path if path != final else path.with_name(f"{path.name}{tmp_suffix()}")
    try:
        with open(tmp, "wb") as f:
            f.write(_header(0, dtype))
            for ids in arrays:
                chunk = np.asarray(ids, dtype=dtype)
                f.write(chunk.tobytes())
                n += len(chunk)
            f.seek(0)
            f.write(_header(n, dtype))
        if tmp != path:
            os.replace(tmp, path)
    except OSError as e:
        raise DataError(f"{final}: could not write the tokens ({e.strerror or e})") from None
    finally:
        if tmp != path:  # (after os.replace there is none)
            tmp.unlink(missing_ok=True)
    return n


def tmp_suffix() -> str:
    """A temporary file's suffix of this process: machines sharing a disk (torchrun) each write their own."""
    return f".tmp-{socket.gethostname()}-{os.getpid()}"


def _truncate(path: Path, count: int, dtype: np.dtype) -> None:
    """Keep the first `count` ids of a token file (the train split of the stream; val was copied out)."""
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + count * dtype.itemsize)
        f.write(_header(count, dtype))


def _header(count: int, dtype: np.dtype) -> bytes:
    return (MAGIC + np.array([BIN_VERSION, dtype.itemsize], "<u4").tobytes()
            + np.array([count], "<u8").tobytes()).ljust(HEADER_BYTES, b"\0")


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
    _write_stream(path, [ids], ids.dtype.newbyteorder("<"))


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
    return windows(data, ix, block_size, device)


def windows(data: np.ndarray, starts: Sequence[int], block_size: int,
            device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The windows at `starts`: x (B, T) and y (B, T) shifted by one."""
    xy = torch.from_numpy(np.stack([data[i: i + block_size + 1] for i in starts]).astype(np.int64))
    x, y = xy[:, :-1], xy[:, 1:]
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.contiguous().to(device)


class Epochs:
    """The training windows of a run read in epochs, as a dataset is, rather than drawn at random: each epoch
    starts at its own random offset below block_size and visits every window at stride block_size from there
    once, in a random order. A text read 20 times then has each part read as often as any other (random draws
    leave some windows out of an epoch and repeat others). The windows of the whole run form one sequence fixed by
    the seed, so window k is a function of k alone: a resumed run reads on where it stopped, and the ranks of
    torchrun (each taking its batch in turn) read what one process accumulating their batches would."""

    def __init__(self, n_tokens: int, block_size: int, seed: int):
        if n_tokens <= block_size:
            raise ValueError(f"{n_tokens} tokens cannot fill a window of {block_size} + 1")
        self.n_tokens, self.block_size, self.seed = n_tokens, block_size, seed
        self.ends = [0]  # ends[e]: windows in the epochs before e
        self.epoch, self.offset, self.order = -1, 0, torch.empty(0, dtype=torch.int32)

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)

    def _offset(self, g: torch.Generator) -> int:
        # at most n_tokens - 1 - block_size, so that an epoch holds at least one window
        return int(torch.randint(min(self.block_size, self.n_tokens - self.block_size), (1,), generator=g))

    def _size(self, epoch: int) -> int:
        return (self.n_tokens - 1 - self._offset(self._generator(epoch))) // self.block_size

    def take(self, first: int, count: int) -> list[int]:
        """The starts of windows first .. first + count - 1 of the run (a slice of each epoch they fall in)."""
        starts, k, end = [], first, first + count
        while k < end:
            while self.ends[-1] <= k:
                self.ends.append(self.ends[-1] + self._size(len(self.ends) - 1))
            epoch = bisect.bisect_right(self.ends, k) - 1
            if epoch != self.epoch:
                g = self._generator(epoch)
                self.offset = self._offset(g)
                n = self.ends[epoch + 1] - self.ends[epoch]  # _size(epoch), from the same first draw
                # the order as a tensor of 4-byte window numbers: 4 MB for a billion tokens at block 1024
                self.epoch, self.order = epoch, torch.randperm(n, generator=g, dtype=torch.int32 if n < 2**31
                                                               else torch.int64)
            stop = min(end, self.ends[epoch + 1])
            part = self.order[k - self.ends[epoch]: stop - self.ends[epoch]].long()
            starts.extend((self.offset + self.block_size * part).tolist())
            k = stop
        return starts
