"""Finding and reading a corpus, in pieces: a corpus is never held whole in memory.

    resolve_corpus(spec) -> [paths]     a file, a directory (its text files, sorted), a glob, a .gz file, an
                                        http(s) URL (downloaded once into a cache), a built-in name, or
                                        hf:USER/NAME (a Hub dataset's text files, through the HF cache)
    open_corpus(specs) -> Corpus        the documents of several specs (one per file), read in pieces
    Corpus.pieces() / .documents()      the text in pieces of about 4 Mi characters, each cut where the BPE
                                        pre-split cuts anyway, so piece by piece gives what the whole would
    read_text(path) / decode_text(...)  one small file whole (the page's uploads), checked as every corpus is

Every file is checked as it is read: UTF-8 (a bad byte reported by its offset, or replaced with U+FFFD on
`encoding_errors` replace), not binary, not empty.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob
import gzip
import hashlib
import os
import shutil
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llm.bpe import cut_stream, cut_text
from llm.config import FieldNames

BUILTIN_CORPORA = {
    "tiny_shakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
}
PIECE_CHARS = 1 << 22  # about 4 Mi characters a piece
HUB_PREFIX = "hf:"  # hf:USER/NAME, a dataset repository on the Hugging Face Hub
HUB_TEXT_FILES = ("*.txt", "*.txt.gz", "*.text", "*.md")  # what is fetched of one (not its card, README.md)
SNIFF_BYTES = 8192  # a file under a directory or a glob is text when this much of it is UTF-8 with no NUL


class DataError(FieldNames, ValueError):
    """Bad corpus or data file; the message is one line meant for the user (settings marked as in SettingError)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SCRATCHGPT_CACHE", Path.home() / ".cache" / "scratchgpt")) / "corpora"


# -----------------------------------------------------------------------------
# finding the files

def resolve_corpus(spec: str, cache: Path | None = None, timeout: float = 60.0) -> list[Path]:
    """One corpus spec -> its files, in order: a file; a directory or a glob (`**` reaches into directories):
    the text files under it, sorted by path, hidden ones and empty ones left out; a built-in name or an http(s)
    URL: downloaded once into the cache."""
    url = BUILTIN_CORPORA.get(spec, spec)
    if url.startswith(("http://", "https://")):
        return [_download(url, cache or cache_dir(), timeout, name=spec if spec in BUILTIN_CORPORA else None)]
    if spec.startswith(HUB_PREFIX):
        snap = hub_dataset(spec[len(HUB_PREFIX):])  # (a snapshot from the cache may hold other files too)
        files = [f for f in _text_files(snap) if _hub_text(f.relative_to(snap).as_posix())]
        if not files:
            raise DataError(f"{spec} has no text files ({', '.join(HUB_TEXT_FILES)})")
        return files
    path = Path(spec).expanduser()
    if glob.has_magic(spec):
        matches = [Path(m) for m in glob.glob(str(path), recursive=True)]  # ('d/**' gives d/ and d/a.txt alike)
        files = sorted({f for m in matches for f in (_text_files(m) if m.is_dir() else [m] if _is_text(m) else [])})
        if not files:
            raise DataError(f"no text files match {spec}")
        return files
    if not path.exists():
        raise DataError(f"corpus not found: {spec} (a file, a directory, a glob, a URL, or one of: "
                        f"{', '.join(BUILTIN_CORPORA)})")
    if path.is_dir():
        files = _text_files(path)
        if not files:
            raise DataError(f"no text files under {spec}")
        return files
    return [path]


def _text_files(folder: Path) -> list[Path]:
    """The text files under a directory, sorted by path; hidden files and directories (.git) left out."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / f for f in files if not f.startswith(".")]
    return sorted(f for f in out if _is_text(f))


def _is_text(path: Path) -> bool:
    """Not empty, and the first SNIFF_BYTES (decompressed, for .gz) are UTF-8 with no NUL byte."""
    try:
        if path.stat().st_size == 0:
            return False
        with _open(path) as f:
            head = f.read(SNIFF_BYTES)
    except (OSError, EOFError):
        return False
    if not head or b"\0" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # (a character cut at the end is fine)
    except UnicodeDecodeError:
        return False
    return True


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def is_local(spec: str) -> bool:
    """A corpus spec that names files here (not a built-in name, a URL or a Hub dataset)."""
    return not BUILTIN_CORPORA.get(spec, spec).startswith(("http://", "https://", HUB_PREFIX))


def _hub_text(name: str) -> bool:
    """A file of a Hub dataset's snapshot that is part of the corpus: a text file, not the repository's card."""
    return name != "README.md" and any(fnmatch.fnmatch(name, p) for p in HUB_TEXT_FILES)


def hf_offline() -> bool:
    """HF_HUB_OFFLINE, read at call time (huggingface_hub.constants read it once, at import)."""
    env = os.environ.get("HF_HUB_OFFLINE")
    if env is not None and env.strip():
        return env.strip().upper() in {"1", "ON", "YES", "TRUE"}
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_dataset(repo: str) -> Path:
    """USER/NAME[@REVISION] of a Hub dataset repository -> the local snapshot of its text files, fetched once into
    the Hugging Face cache (HF_HUB_OFFLINE=1: from the cache only)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    repo_id, _, revision = repo.partition("@")
    offline = hf_offline()
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision or None,
                                      allow_patterns=list(HUB_TEXT_FILES), ignore_patterns=["README.md"],
                                      local_files_only=offline))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE=1 forbids downloading it" if offline else "the Hub could not be reached"
        raise DataError(f"{HUB_PREFIX}{repo} is not in the Hugging Face cache and {why}") from None
    except (HFValidationError, OSError) as e:  # (the Hub's HTTP errors are OSErrors too)
        first = str(e).strip().splitlines()[0].replace("`", "'") if str(e).strip() else type(e).__name__
        raise DataError(f"could not fetch {HUB_PREFIX}{repo}: {first}") from None


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


# -----------------------------------------------------------------------------
# reading, in pieces

@dataclass(frozen=True)
class Corpus:
    """The documents of a corpus, one per file (or given texts), read in pieces whenever they are needed: for
    the tokenizer, the hash that vouches for the token files, and the token files themselves."""

    paths: tuple[Path, ...] = ()
    texts: tuple[str, ...] = ()  # documents given as text (tests; the page's uploads)
    errors: str = "strict"
    piece_chars: int = PIECE_CHARS

    def documents(self) -> Iterator[Iterator[str]]:
        for text in self.texts:
            yield iter(cut_text(text, max(1, len(text) // self.piece_chars)))
        for path in self.paths:
            yield stream_text(path, self.errors, self.piece_chars)

    def pieces(self) -> Iterator[str]:
        for doc in self.documents():
            yield from doc

    def nbytes(self) -> int:
        """The text's size in bytes (of a .gz file, what its trailer says it holds)."""
        return sum(len(t.encode("utf-8", "surrogatepass")) for t in self.texts) + sum(map(_text_size, self.paths))

    def digests(self) -> Iterator[bytes]:
        """The sha256 of each document's UTF-8, document by document."""
        for doc in self.documents():
            d = hashlib.sha256()
            for piece in doc:
                d.update(piece.encode("utf-8", "surrogatepass"))
            yield d.digest()


def open_corpus(specs: Sequence[str], errors: str = "strict", piece_chars: int = PIECE_CHARS) -> Corpus:
    """Corpus specs (resolve_corpus's) -> the Corpus of all their files, in order."""
    if errors not in ("strict", "replace"):
        raise DataError(f"encoding errors must be 'strict' or 'replace', got {errors!r}")
    return Corpus(tuple(p for s in specs for p in resolve_corpus(s)), errors=errors, piece_chars=piece_chars)


def _text_size(path: Path) -> int:
    size = path.stat().st_size
    if path.suffix == ".gz" and size >= 18:  # ISIZE: the text's size modulo 2**32
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            text = struct.unpack("<I", f.read(4))[0]
        while text < size and size >= 1 << 20:  # (text of 4 GB or more: it wrapped)
            text += 1 << 32
        return text
    return size


def stream_text(path: Path, errors: str = "strict", piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """One file (.gz decompressed) in pieces of about piece_chars, cut at safe newlines (cut_stream), checked as
    it is read: UTF-8 (a bad byte named by its offset), no NUL byte, not empty. Line endings stay as they are."""
    return cut_stream(_checked_blocks(path, errors, piece_chars))


def _checked_blocks(path: Path, errors: str, block_bytes: int) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    offset = chars = 0  # bytes read so far; characters decoded so far
    seen_text = False
    with _open(path) as f:
        while True:
            block = f.read(block_bytes)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous block
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not valid UTF-8: byte 0x{e.object[e.start]:02x} at offset "
                                f"{offset - pending + e.start} (set `encoding_errors` to replace to substitute "
                                "U+FFFD)") from None
            offset += len(block)
            if (nul := text.find("\0")) >= 0:
                raise DataError(f"{path} looks like a binary file (NUL byte at character {chars + nul})")
            chars += len(text)
            seen_text = seen_text or bool(text) and not text.isspace()
            if not block:
                break
            yield text
    if not seen_text:
        raise DataError(f"{path} is empty" + (" (only whitespace)" if chars else ""))
    if text:
        yield text


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
