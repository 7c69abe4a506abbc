"""A corpus far bigger than a small model needs: memory and speed of the data path on a generated corpus.

    python bench/data_bench.py [--size-mb 500] [--files 10] [--vocab 1024]

1. Writes --size-mb of generated text (words of a Zipf-like vocabulary, lines and paragraphs) as --files files
   in one directory.
2. `train_cli.py --corpus DIR --max-steps 1`: the whole run (tokenizer training, hashing, encoding into the token
   files, one step) with its peak resident memory: the proportional set sizes (Pss: a page shared by a forked
   worker and its parent counted once) of the process and its worker processes, summed, sampled every 0.1 s.
3. Here, timed apart: training the tokenizer on the stream of the corpus; encoding it into token files
   (llm.data.prepare) with 1 and 2 worker processes; and HF `tokenizers` encoding the same pieces with
   `encode_batch` on 1 and 2 threads (RAYON_NUM_THREADS), given our merges (so both produce the same ids,
   which is checked on the first pieces). `tokenizers` is needed only here (pip install tokenizers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

from llm.corpus import open_corpus
from llm.data import prepare
from llm.tokenizer import Tokenizer


def generate(folder: Path, size_mb: int, files: int, seed: int = 0) -> None:
    """Text of words drawn from 20,000 made-up words with Zipf-like frequencies, in lines and paragraphs."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    lengths = rng.integers(1, 10, 20_000)
    words = np.array(["".join(rng.choice(letters[: 6 + i % 20], n)) for i, n in enumerate(lengths)])
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    per_file = size_mb * 1_000_000 // files
    folder.mkdir(parents=True)
    for k in range(files):
        with open(folder / f"part{k:03d}.txt", "w", encoding="utf-8") as f:
            written = 0
            while written < per_file:
                idx = rng.choice(len(words), 200_000, p=p)
                ends = np.where(rng.random(len(idx)) < 0.08, ".\n", " ")
                ends[rng.random(len(idx)) < 0.004] = ".\n\n"
                text = "".join(np.char.add(words[idx], ends))
                f.write(text)
                written += len(text)


def peak_rss_of(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """Run cmd -> (wall seconds, the peak of its process tree's summed resident memory in bytes, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def poll():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.1)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, err = proc.communicate()
    watcher.join()
    if proc.returncode:
        print(err[-2000:], file=sys.stderr)
    return time.perf_counter() - t0, peak[0], proc.returncode


def _tree_rss(pid: int) -> int:
    """Resident memory of a process and its descendants, each page shared between them (a forked worker's view
    of its parent's torch) counted once: the sum of their proportional set sizes (Pss)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            rollup = (Path("/proc") / str(p) / "smaps_rollup").read_text().splitlines()
            total += 1024 * next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        except (OSError, StopIteration, IndexError, ValueError):
            pass
    return total


def hf_from(tok: Tokenizer):
    """HF `tokenizers` BPE with our merges, our split pattern and byte-level alphabet: the same ids as ours."""
    from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = _bytes_to_unicode()

    def show(b: bytes) -> str:
        return "".join(alphabet[x] for x in b)

    vocab = {show(tok.token_bytes(i)): i for i in range(256 + len(tok.merges))}
    merges = [(show(tok.token_bytes(a)), show(tok.token_bytes(b))) for (a, b), _ in
              sorted(tok.merges.items(), key=lambda kv: kv[1])]
    hf = HFTokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(tok.pattern), behavior="isolated"),
                                                ByteLevel(add_prefix_space=False, use_regex=False)])
    return hf


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte (what ByteLevel shows bytes as)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))


HF_CHILD = """
import json, sys, time
from tokenizers import Tokenizer
hf = Tokenizer.from_str(open(sys.argv[1]).read())
pieces = json.load(open(sys.argv[2]))
t0 = time.perf_counter()
n = sum(len(e.ids) for k in range(0, len(pieces), 64) for e in hf.encode_batch(pieces[k:k + 64]))
print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": n}))
"""


def hf_encode(hf, pieces_file: Path, threads: int, tmp: Path) -> dict:
    path = tmp / "hf.json"
    hf.save(str(path))
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true"}
    done = subprocess.run([sys.executable, "-c", HF_CHILD, str(path), str(pieces_file)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=int, default=500)
    p.add_argument("--files", type=int, default=10)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--hf-mb", type=int, default=100, help="MB of the corpus HF encodes (its speed is per MB)")
    args = p.parse_args()
    try:
        import tokenizers
    except ImportError:
        sys.exit("HF `tokenizers` is needed for this benchmark only: pip install tokenizers")
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, tokenizers "
          f"{tokenizers.__version__}; {args.size_mb} MB in {args.files} files, vocab {args.vocab}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        generate(tmp / "corpus", args.size_mb, args.files)
        print(f"generated in {time.perf_counter() - t:.0f} s", flush=True)
        cmd = [sys.executable, str(ROOT / "train_cli.py"), "--corpus", str(tmp / "corpus"), "--out",
               str(tmp / "run"), "--max-steps", "1", "--eval-iters", "1", "--sample-tokens", "0", "--no-progress",
               "--vocab-size", str(args.vocab)]
        wall, peak, rc = peak_rss_of(cmd, dict(os.environ))
        print(f"train_cli.py to its first step: {wall:.0f} s, peak resident memory {peak / 2**20:,.0f} MiB "
              f"(exit {rc})", flush=True)
        corpus = open_corpus([str(tmp / "corpus")])
        mb = corpus.nbytes() / 1e6
        t = time.perf_counter()
        tok = Tokenizer.train(corpus.pieces(), args.vocab, verbose=False)
        train_s = time.perf_counter() - t
        rows = [("tokenizer training (ours, streamed)", train_s, mb)]
        for workers in (1, 2):
            t = time.perf_counter()
            prepare(corpus, tok, tmp / f"w{workers}", num_workers=workers)
            rows.append((f"encoding into token files, ours, {workers} worker(s)", time.perf_counter() - t, mb))
        same = all((tmp / "w1" / f).read_bytes() == (tmp / "w2" / f).read_bytes() for f in ("train.bin", "val.bin"))
        hf, pieces = hf_from(tok), []
        for piece in corpus.pieces():
            pieces.append(piece)
            if sum(map(len, pieces)) >= args.hf_mb * 1_000_000:
                break
        assert [e.ids for e in hf.encode_batch(pieces[:2])] == [tok.encode(x) for x in pieces[:2]], "ids differ"
        (tmp / "pieces.json").write_text(json.dumps(pieces))
        hf_mb = sum(len(x.encode()) for x in pieces) / 1e6
        for threads in (1, 2):
            r = hf_encode(hf, tmp / "pieces.json", threads, tmp)
            rows.append((f"HF tokenizers encode_batch, {threads} thread(s)", r["seconds"], hf_mb))
    print(f"\n1 and 2 workers wrote identical token files: {same}\n")
    print("| step | MB | seconds | MB/s |")
    print("|---|---|---|---|")
    for name, s, size in rows:
        print(f"| {name} | {size:,.0f} | {s:,.1f} | {size / s:,.2f} |")
    print(f"| `train_cli.py --corpus DIR --max-steps 1`, whole run | {mb:,.0f} | {wall:,.0f} | peak memory "
          f"{peak / 2**20:,.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
