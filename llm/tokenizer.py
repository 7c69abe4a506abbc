"""Tokenizers: byte-level BPE (GPT-4 style pre-split) and a character-level tokenizer, same interface.

minbpe's shape: the pure helpers (get_stats, merge, render_token, count_chunks, learn_merges) live in
llm/bpe.py, the classes here. BPE ids: 0..255 are the raw bytes, 256.. the merges in the order they were
learned, then the special tokens.

Text policy, for both tokenizers: lone surrogates (U+D800..U+DFFF, which UTF-8 cannot encode) are replaced
with U+FFFD before encoding, so decode(encode(x)) == x for every string without lone surrogates.
Special-token strings inside text are plain text unless encode(..., allowed_special=...) turns them on.
Big corpora: train on read_pieces(path) (counts chunks piece by piece); encode with encode_batch(texts), which
cuts big texts into slices for a process pool (encode_parallel(text) is the one-text form).
"""

from __future__ import annotations

import heapq
import json
import multiprocessing as mp
import os
import warnings
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import chain, repeat
from pathlib import Path
from typing import Self

import regex

from llm.bpe import (GPT4_SPLIT_PATTERN, SPLIT_PATTERNS, SURROGATE, count_chunks, cut_text, learn_merges,
                     render_token, to_utf8)

EOT = "<|endoftext|>"
VERSION = 1  # of the JSON file
_INF = float("inf")  # rank of a pair that has no merge
_CACHE_LIMIT = 1 << 18  # chunks kept by the encode cache before it is cleared (~50 MB)
_PARALLEL_MIN_CHARS = 1 << 23  # below this, encode_batch(num_workers=None) stays in this process: forking,
# cold worker caches and sending ids back cost about what the workers save (bench/README.md, Tokenizer)


# ----------------------------------------------------------------------------------------------------------
# tokenizers

def _check_specials(special_tokens: Iterable[str]) -> list[str]:
    specials = [special_tokens] if isinstance(special_tokens, str) else list(special_tokens)
    if (not all(isinstance(s, str) and s and not SURROGATE.search(s) for s in specials)
            or len(set(specials)) != len(specials)):
        raise ValueError(f"special_tokens must be distinct non-empty strings, got {specials!r}")
    return specials


class _BaseTokenizer:
    """What both tokenizers share: special tokens, decoding, batch encoding and the JSON file.
    Subclasses set type, _vocab (id -> bytes) and special_tokens, and define encode_ordinary and split."""

    type: str
    _vocab: list[bytes]
    special_tokens: dict[str, int]

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def eot_id(self) -> int | None:
        """Id of <|endoftext|>, or None when the tokenizer has no such special token."""
        return self.special_tokens.get(EOT)

    def encode_ordinary(self, text: str) -> list[int]:
        raise NotImplementedError

    def split(self, text: str) -> list[str]:
        raise NotImplementedError

    def _allowed(self, allowed_special: str | Iterable[str]) -> list[str]:
        if allowed_special == "all":
            return list(self.special_tokens)
        allowed = [allowed_special] if isinstance(allowed_special, str) else list(allowed_special)
        if unknown := [s for s in allowed if s not in self.special_tokens]:
            raise ValueError(f"allowed_special names unknown special tokens {unknown}; "
                             f"known: {list(self.special_tokens)}")
        return allowed

    def encode(self, text: str, allowed_special: str | Iterable[str] = ()) -> list[int]:
        """Text -> ids. Special-token strings in `text` are plain text unless listed in allowed_special
        ("all", or a collection of special-token strings), which turns them into their ids."""
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        # longest first, so a special that is a prefix of another does not win
        alternation = "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True))
        ids: list[int] = []
        for i, part in enumerate(regex.split(f"({alternation})", text)):
            if i % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def encode_batch(self, texts: Sequence[str], num_workers: int | None = None,
                     allowed_special: str | Iterable[str] = ()) -> list[list[int]]:
        """Encode many texts; big texts are cut (cut_text) into slices that a process pool encodes.

        This is the data pipeline's entry point. num_workers=None uses os.cpu_count() processes when the texts
        hold at least 8 Mi characters and this process otherwise; 1 always stays here; n > 1 always uses n.
        The result equals [self.encode(t, allowed_special) for t in texts].
        """
        total = sum(len(t) for t in texts)
        if num_workers is None:
            num_workers = (os.cpu_count() or 1) if total >= _PARALLEL_MIN_CHARS else 1
        if num_workers <= 1:
            return [self.encode(t, allowed_special) for t in texts]
        allowed = self._allowed(allowed_special)
        can_cut = not any("\n" in s for s in allowed)  # a cut must not fall inside a special token
        piece_chars = max(1 << 16, total // (4 * num_workers))  # ~4 tasks per worker balances the load
        owner, pieces = [], []  # pieces[k] is a slice of texts[owner[k]]
        for i, t in enumerate(texts):
            parts = cut_text(t, max(1, len(t) // piece_chars)) if can_cut else [t]
            owner += [i] * len(parts)
            pieces += parts
        out: list[list[int]] = [[] for _ in texts]
        for i, ids in zip(owner, self.encode_pieces(pieces, num_workers, allowed)):
            out[i] += ids.tolist()
        return out

    def encode_pieces(self, pieces: Iterable[str], num_workers: int = 1,
                      allowed_special: str | Iterable[str] = ()) -> Iterator[array]:
        """encode(piece, allowed_special) for each piece, lazily and in order, as arrays of ids (pieces cut as
        cut_text cuts join into the whole text's ids). With num_workers > 1 a process pool encodes them, at most
        two a worker in flight, so memory stays bounded however long the stream is; the ids do not depend on
        num_workers."""
        allowed = self._allowed(allowed_special)
        if num_workers <= 1:
            for piece in pieces:
                yield array("I", self.encode(piece, allowed))
            return
        # fork shares this tokenizer (and its warm cache) with the workers for free; spawn pickles it
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
        with ProcessPoolExecutor(num_workers, ctx, initializer=_init_worker, initargs=(self,)) as pool:
            window: deque = deque()
            for piece in pieces:
                window.append(pool.submit(_encode_piece, piece, allowed))
                if len(window) >= 2 * num_workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

    def encode_parallel(self, text: str, num_workers: int | None = None,
                        allowed_special: str | Iterable[str] = ()) -> list[int]:
        """encode(text) computed by encode_batch's process pool over slices of the text."""
        return self.encode_batch([text], num_workers, allowed_special)[0]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the exact bytes they stand for. An id out of range raises ValueError naming it."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # numpy arrays and tensors too
        if ids and (min(ids) < 0 or max(ids) >= len(self._vocab)):
            for i in ids:
                self.token_bytes(i)  # raises for the first bad id
        return b"".join(map(self._vocab.__getitem__, ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; byte sequences that are not valid UTF-8 become U+FFFD (never raises on valid ids)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, id: int) -> bytes:
        if not 0 <= id < len(self._vocab):
            raise ValueError(f"token id {id} is out of range: this tokenizer has ids 0..{len(self._vocab) - 1}")
        return self._vocab[id]

    def to_dict(self) -> dict:
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Write one readable, versioned JSON file (one entry per line; written atomically)."""
        dumps = lambda x: json.dumps(x, ensure_ascii=False)
        lines = []
        for key, value in self.to_dict().items():
            if isinstance(value, list) and value:
                value = "[\n" + ",\n".join(f"    {dumps(x)}" for x in value) + "\n  ]"
            elif isinstance(value, dict) and value:
                value = "{\n" + ",\n".join(f"    {dumps(k)}: {dumps(x)}" for k, x in value.items()) + "\n  }"
            else:
                value = dumps(value)
            lines.append(f"  {dumps(key)}: {value}")
        tmp = Path(f"{path}.tmp")
        tmp.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Self:
        """Load a file written by save(); ValueError if it holds the other type (load_tokenizer takes both)."""
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise ValueError(f"{path} holds a {tok.type!r} tokenizer, not {cls.type!r}")
        return tok


class Tokenizer(_BaseTokenizer):
    """Byte-level BPE: regex pre-split into chunks, then merges by rank inside each chunk.

    `merges` must be a list that BPE training made (train() or a saved file): encode relies on each token's
    bytes encoding back to that token, which training guarantees and a hand-made list may not.
    """

    type = "bpe"

    def __init__(self, merges: Mapping[tuple[int, int], int] | None = None, pattern: str = GPT4_SPLIT_PATTERN,
                 special_tokens: Iterable[str] = ()):
        self.merges = dict(merges or {})  # (a, b) -> new id; ids are 256, 257, ... in merge order = rank
        self.pattern = SPLIT_PATTERNS.get(pattern, pattern)
        self._regex = regex.compile(self.pattern)
        vocab = [bytes([i]) for i in range(256)]
        for (a, b), idx in self.merges.items():
            if idx != len(vocab) or not (0 <= a < idx and 0 <= b < idx):
                raise ValueError(f"bad merge ({a}, {b}) -> {idx}: merges must make ids 256, 257, ... in order")
            vocab.append(vocab[a] + vocab[b])
        specials = _check_specials(special_tokens)
        self.special_tokens = {s: len(vocab) + k for k, s in enumerate(specials)}
        self._vocab = vocab + [s.encode("utf-8") for s in specials]
        self._token_of = {t: i for i, t in enumerate(vocab)}  # bytes -> id, specials left out
        self._cache: dict[str, list[int]] = {}  # chunk -> ids

    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int, special_tokens: Iterable[str] = (EOT,),
              pattern: str = GPT4_SPLIT_PATTERN, verbose: bool = True) -> Tokenizer:
        """Learn vocab_size - 256 - len(special_tokens) merges from a string or an iterator of pieces (see
        count_chunks). A tqdm bar shows when verbose and the merging takes over a second. If the corpus runs
        out of pairs first, warns and returns the smaller tokenizer (its vocab_size is the real size)."""
        specials = _check_specials(special_tokens)
        n_merges = vocab_size - 256 - len(specials)
        if vocab_size > 0x110000:  # learn_merges keeps ids as code points
            raise ValueError(f"vocab_size {vocab_size} is too large: at most {0x110000}")
        if n_merges < 0:
            raise ValueError(f"vocab_size {vocab_size} is too small: 256 byte tokens + {len(specials)} special "
                             f"tokens need at least {256 + len(specials)}")
        chunk_counts = count_chunks(text, pattern)
        if not chunk_counts:
            raise ValueError("cannot train a tokenizer on an empty corpus")
        merges = learn_merges(chunk_counts, n_merges, verbose)
        if len(merges) < n_merges:
            warnings.warn(f"the corpus ran out of pairs after {len(merges)} merges: vocab_size is "
                          f"{256 + len(merges) + len(specials)} instead of {vocab_size}", stacklevel=2)
        return cls(merges, pattern, specials)

    def split(self, text: str) -> list[str]:
        """The pre-split chunks of `text` (merges never cross them)."""
        return self._regex.findall(text)

    def _encode_chunk(self, b: bytes) -> list[int]:
        """BPE on one chunk: apply the earliest learned merge present, leftmost first, until none applies."""
        if (whole := self._token_of.get(b)) is not None:
            return [whole]  # a chunk that is a token encodes to itself (BPE reproduces what training made)
        if len(b) > 64:
            return self._encode_long(b)
        get, inf = self.merges.get, _INF
        ids = list(b)
        # ranks[j]: merge id of (ids[j], ids[j + 1]), inf when there is none; the last entry is a sentinel
        ranks = list(map(get, zip(ids, ids[1:]), repeat(inf)))
        ranks.append(inf)
        while (r := min(ranks)) != inf:
            j = ranks.index(r)  # leftmost; other occurrences of the pair come next rounds (new pairs rank later)
            ids[j:j + 2] = [r]  # a merge's rank is the id it makes
            del ranks[j]
            if j:
                ranks[j - 1] = get((ids[j - 1], r), inf)
            if j + 1 < len(ids):
                ranks[j] = get((r, ids[j + 1]), inf)
        return ids

    def _encode_long(self, b: bytes) -> list[int]:
        """_encode_chunk in O(n log n) for long chunks (10,000 spaces): a heap of (rank, position) candidates
        over a linked list of tokens. An entry is stale once the pair at its position is no longer its pair."""
        get, ids, n = self.merges.get, list(b), len(b)
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        heap = [(r, i) for i, r in enumerate(map(get, zip(ids, ids[1:]))) if r is not None]
        heapq.heapify(heap)
        while heap:
            r, i = heapq.heappop(heap)
            j = nxt[i]
            if ids[i] is None or j == n or get((ids[i], ids[j])) != r:
                continue
            ids[i], ids[j] = r, None  # token j joins token i
            k = nxt[i] = nxt[j]
            if k < n:
                prv[k] = i
                if (rk := get((r, ids[k]))) is not None:
                    heapq.heappush(heap, (rk, i))
            if (p := prv[i]) >= 0 and (rp := get((ids[p], r))) is not None:
                heapq.heappush(heap, (rp, p))
        return [t for t in ids if t is not None]

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, special-token strings treated as plain text."""
        chunks, cache = self._regex.findall(text), self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        for chunk in set(chunks).difference(cache):
            cache[chunk] = self._encode_chunk(to_utf8(chunk))
        return list(chain.from_iterable(map(cache.__getitem__, chunks)))

    def to_dict(self) -> dict:
        return {"type": self.type, "version": VERSION, "vocab_size": self.vocab_size, "pattern": self.pattern,
                "special_tokens": self.special_tokens,
                "merges": [list(pair) for pair in self.merges],  # merge k makes id 256 + k
                "vocab": {str(i): render_token(b) for i, b in enumerate(self._vocab)}}  # for people only

    @classmethod
    def from_dict(cls, d: Mapping) -> Tokenizer:
        merges = {(int(a), int(b)): 256 + k for k, (a, b) in enumerate(d["merges"])}
        specials = sorted(d["special_tokens"], key=d["special_tokens"].get)
        tok = cls(merges, d["pattern"], specials)
        if tok.special_tokens != d["special_tokens"] or tok.vocab_size != d.get("vocab_size", tok.vocab_size):
            raise ValueError("special token ids or vocab_size do not match the merges")
        return tok


class CharTokenizer(_BaseTokenizer):
    """One id per character (sorted by code point), then the special tokens.

    Fallback: a character not in the vocabulary (lone surrogates included) encodes to the id of U+FFFD,
    which is always in the vocabulary, so decode shows it as the replacement character.
    """

    type = "char"
    UNK = "\ufffd"

    def __init__(self, chars: Iterable[str], special_tokens: Iterable[str] = ()):
        self.chars = list(chars)  # id -> character
        if self.UNK not in self.chars:
            self.chars.append(self.UNK)
        if any(len(c) != 1 or SURROGATE.match(c) for c in self.chars) or len(set(self.chars)) < len(self.chars):
            raise ValueError("chars must be distinct single characters (no lone surrogates)")
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        self._unk_id = self._stoi[self.UNK]
        specials = _check_specials(special_tokens)
        self.special_tokens = {s: len(self.chars) + k for k, s in enumerate(specials)}
        self._vocab = [c.encode("utf-8") for c in self.chars] + [s.encode("utf-8") for s in specials]
        self.merges: dict[tuple[int, int], int] = {}  # none: same attributes as Tokenizer
        self.pattern = ""  # no pre-split

    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int | None = None,
              special_tokens: Iterable[str] = (EOT,)) -> CharTokenizer:
        """Vocabulary = every character of the corpus, or the most frequent ones (ties by code point) when
        vocab_size is given; U+FFFD is always included as the fallback. Warns if the corpus has too few."""
        specials = _check_specials(special_tokens)
        counts: Counter[str] = Counter()
        for piece in [text] if isinstance(text, str) else text:
            counts.update(SURROGATE.sub(cls.UNK, piece))
        if not counts:
            raise ValueError("cannot train a tokenizer on an empty corpus")
        counts.pop(cls.UNK, None)  # the fallback is added below, whatever its count
        keep = sorted(counts, key=lambda c: (-counts[c], c))
        if vocab_size is not None:
            room = vocab_size - len(specials) - 1
            if room < 0:
                raise ValueError(f"vocab_size {vocab_size} is too small: need the fallback character + "
                                 f"{len(specials)} special tokens = {1 + len(specials)}")
            if len(keep) < room:
                warnings.warn(f"the corpus has only {len(keep)} characters: vocab_size is "
                              f"{len(keep) + 1 + len(specials)} instead of {vocab_size}", stacklevel=2)
            keep = keep[:room]
        return cls(sorted(keep + [cls.UNK]), specials)

    def split(self, text: str) -> list[str]:
        """No pre-split: the whole text is one chunk."""
        return [text] if text else []

    def encode_ordinary(self, text: str) -> list[int]:
        stoi, unk = self._stoi, self._unk_id
        return [stoi.get(c, unk) for c in text]

    def to_dict(self) -> dict:
        return {"type": self.type, "version": VERSION, "vocab_size": self.vocab_size,
                "special_tokens": self.special_tokens, "chars": self.chars}  # chars[id] is the character

    @classmethod
    def from_dict(cls, d: Mapping) -> CharTokenizer:
        specials = sorted(d["special_tokens"], key=d["special_tokens"].get)
        tok = cls(d["chars"], specials)
        if tok.special_tokens != d["special_tokens"] or tok.vocab_size != d.get("vocab_size", tok.vocab_size):
            raise ValueError("special token ids or vocab_size do not match the characters")
        return tok


def load_tokenizer(path: str | os.PathLike) -> Tokenizer | CharTokenizer:
    """Load a tokenizer file written by save(), whichever type it holds."""
    with open(path, encoding="utf-8") as f:
        try:
            d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not a tokenizer file: {e}") from None
    types = {"bpe": Tokenizer, "char": CharTokenizer}
    if not isinstance(d, dict) or d.get("type") not in types:
        raise ValueError(f"{path}: unknown tokenizer type {d.get('type') if isinstance(d, dict) else None!r}, "
                         f"expected one of {list(types)}")
    if d.get("version") != VERSION:
        raise ValueError(f"{path}: tokenizer file version {d.get('version')!r}, this code reads version {VERSION}")
    try:
        return types[d["type"]].from_dict(d)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, regex.error) as e:
        why = str(e).splitlines()[0] if str(e) else ""  # a wrongly typed field, an invalid split pattern, ...
        raise ValueError(f"{path}: bad {d['type']} tokenizer file ({type(e).__name__}: {why})") from None


# process-pool workers for encode_batch

_worker_tokenizer: _BaseTokenizer | None = None


def _init_worker(tokenizer: _BaseTokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_piece(text: str, allowed: list[str]) -> array:
    return array("I", _worker_tokenizer.encode(text, allowed))  # an array pickles as one buffer
