"""The pure helpers of byte-level BPE (minbpe's base.py): pair counts, merges, pre-split chunks, and the
merge training that the Tokenizer class in llm/tokenizer.py calls.

BPE ids: 0..255 are the raw bytes, 256.. the merges in the order they were learned. A corpus too big for
memory is read with read_pieces and counted with count_chunks, piece by piece.
"""

from __future__ import annotations

import heapq
import os
import re
import unicodedata
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from operator import add

import regex
from tqdm import tqdm

GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPLIT_PATTERNS = {"gpt4": GPT4_SPLIT_PATTERN, "gpt2": GPT2_SPLIT_PATTERN}  # names accepted for `pattern`
SURROGATE = re.compile("[\ud800-\udfff]")
_SAFE_CUT = regex.compile(r"(?<=\S)\n(?=\S)")  # see cut_text


def get_stats(ids: Sequence[int], counts: dict | None = None, weight: int = 1) -> dict[tuple[int, int], int]:
    """Count adjacent pairs of ids (each occurrence adds `weight`) into `counts` and return it."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: Sequence[int], pair: tuple[int, int], idx: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by `idx`, scanning left to right (so aaa -> [aa, a])."""
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def render_token(b: bytes) -> str:
    """Readable form of a token's bytes: valid UTF-8 as text, other bytes as \\xNN, control chars as \\uNNNN."""
    s = b.decode("utf-8", errors="backslashreplace")
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c)[0] == "C" else c for c in s)


def to_utf8(text: str) -> bytes:
    """UTF-8 bytes of `text`, lone surrogates replaced by U+FFFD (the module's surrogate policy)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return SURROGATE.sub("\ufffd", text).encode("utf-8")


MAX_CHUNKS = 2_000_000  # distinct chunks counted at once (about 0.4 GB) before the rare ones are let go


def count_chunks(pieces: str | Iterable[str], pattern: str = GPT4_SPLIT_PATTERN,
                 max_chunks: int = MAX_CHUNKS) -> Counter[str]:
    """Count the pre-split chunks of a corpus given as one string or an iterator of pieces.

    Each piece is split on its own, so pieces must be cut where the split cuts anyway: whole documents,
    or the output of cut_text / read_pieces. Memory grows with the number of distinct chunks, not the corpus,
    and stays bounded: past `max_chunks` distinct chunks, those seen least often (once, then twice, ...) are
    dropped until a half is left, and a warning says so (their counts, and merges only they would make, are lost).
    """
    compiled = regex.compile(SPLIT_PATTERNS.get(pattern, pattern))
    counts: Counter[str] = Counter()
    dropped = 0  # the highest count of a chunk let go
    for piece in [pieces] if isinstance(pieces, str) else pieces:
        counts.update(compiled.findall(piece))
        if len(counts) > max_chunks:
            floor = 0
            while len(counts) > max_chunks // 2:
                floor += 1
                counts = Counter({c: n for c, n in counts.items() if n > floor})
            dropped = max(dropped, floor)
    if dropped:
        warnings.warn(f"the corpus has more than {max_chunks:,} distinct pre-split chunks: those seen {dropped} "
                      "time(s) or fewer at a count were let go to bound memory (merges only rare words would make "
                      "may be missed)", stacklevel=2)
    return counts


def cut_text(text: str, n_parts: int) -> list[str]:
    """Cut text into about n_parts slices, each cut right after a newline between two non-space characters.

    Neither built-in split pattern lets a chunk run across such a point or ends a chunk differently when the
    text stops there, so split(a + b) == split(a) + split(b) for the slices. Text with no such newline (a
    single line, or CRLF line ends) stays one slice.
    """
    cuts, step = [0], max(1, len(text) // max(1, n_parts))
    while (m := _SAFE_CUT.search(text, cuts[-1] + step)) is not None:
        cuts.append(m.end())
    cuts.append(len(text))
    return [text[i:j] for i, j in zip(cuts, cuts[1:]) if j > i]


_WORD_GAP = regex.compile(r"(?<=\p{L}) (?=\p{L})")  # one space between letters: a chunk starts at the space


def cut_stream(blocks: Iterable[str], max_chars: int = 1 << 24) -> Iterator[str]:
    """Text arriving in blocks (of a file larger than memory) -> pieces cut as in cut_text, at safe newlines.
    Text with none for max_chars characters (a file of one line, or CRLF line ends) is cut before the last space
    between two letters instead, which both split patterns also start a chunk at; with neither, it stays whole."""
    rest = ""
    for block in blocks:
        buf = rest + block  # the last safe cut is at or after the end of rest (rest had none)
        cut = max((m.end() for m in _SAFE_CUT.finditer(buf, max(0, len(rest) - 1))), default=0)
        if not cut and len(buf) > max_chars:
            cut = max((m.start() for m in _WORD_GAP.finditer(buf, max(0, len(buf) - max_chars))), default=0)
        if cut:
            yield buf[:cut]
        rest = buf[cut:]
    if rest:
        yield rest


def read_pieces(path: str | os.PathLike, piece_chars: int = 1 << 22) -> Iterator[str]:
    """Yield a UTF-8 text file in pieces of about `piece_chars`, cut as in cut_text (for files larger than
    memory: Tokenizer.train(read_pieces(path), ...)). Line endings are kept as they are in the file."""
    with open(path, encoding="utf-8", newline="") as f:
        yield from cut_stream(iter(lambda: f.read(piece_chars), ""))


def _pair_index(chunk_counts: Mapping[str, int]):
    """learn_merges' starting point: (words, freqs, stats, where). A chunk is kept as a str whose code points
    are its token ids, and a pair as a 2-character str: then str.find and str.replace (left to right,
    non-overlapping, exactly BPE's merge) run in C. stats: pair -> occurrences weighted by chunk count;
    where: pair -> the chunks that had it (may go stale)."""
    words: list[str] = []
    freqs: list[int] = []
    for chunk, count in chunk_counts.items():
        if len(b := to_utf8(chunk)) > 1:  # a single byte has no pair
            words.append(b.decode("latin-1"))  # code point k = byte k
            freqs.append(count)
    stats: dict[str, int] = defaultdict(int)
    where: dict[str, list[int]] = defaultdict(list)
    for i, (w, f) in enumerate(zip(words, freqs)):
        for pair in map(add, w, w[1:]):
            stats[pair] += f
            where[pair].append(i)
    return words, freqs, stats, where


def learn_merges(chunk_counts: Mapping[str, int], n_merges: int, verbose: bool = False) -> dict[tuple[int, int], int]:
    """Learn up to n_merges BPE merges from chunk -> count; returns {pair: new id} in merge order.

    The corpus is never rescanned: pair counts and a pair -> chunks index are updated only for the chunks a
    merge touches, and the best pair comes from a heap. Ties go to the smallest pair (a, b), so the result
    does not depend on hash seeds or chunk order. Stops early when no pair is left.
    """
    words, freqs, stats, where = _pair_index(chunk_counts)
    # Lazy max-heap of (-count, pair), at most one entry per pair, so the pop order (and the result) does not
    # depend on the order of pushes. A merge only ever lowers the count of an existing pair (every new pair
    # contains the new id), so a popped entry whose count went stale is pushed back with the real count.
    heap = [(-c, p) for p, c in stats.items()]
    heapq.heapify(heap)
    merges: dict[tuple[int, int], int] = {}
    bar = tqdm(total=n_merges, desc="bpe merges", unit="merge", disable=not verbose, delay=1.0)
    while len(merges) < n_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        count = stats[pair]
        if count != -neg_count:
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        idx = 256 + len(merges)
        merges[ord(pair[0]), ord(pair[1])] = idx
        a, b, new = pair[0], pair[1], chr(idx)
        born = defaultdict(list)  # new pair (contains idx) -> one chunk index per occurrence
        for i in where.pop(pair):
            w, f = words[i], freqs[i]
            j, end = w.find(pair), -1  # end: where the previous occurrence stopped (its `new` is our left)
            while j >= 0:  # fix only the neighbours' pairs
                if j:
                    left = new if j == end else w[j - 1]
                    stats[left + a] -= f
                    born[left + new].append(i)
                if j + 2 < len(w):
                    stats[b + w[j + 2]] -= f
                    born[new + w[j + 2]].append(i)
                end = j + 2
                j = w.find(pair, end)
            words[i] = w.replace(pair, new)  # a stale index entry (pair gone from the chunk) changes nothing
        del stats[pair]
        for p in born:
            where[p] = born[p]
            # += : a later occurrence in the same merge may already have taken some back ("abab" -> x x)
            stats[p] += sum(map(freqs.__getitem__, born[p]))
            if stats[p] > 0:
                heapq.heappush(heap, (-stats[p], p))
        bar.update()
    bar.close()
    return merges
