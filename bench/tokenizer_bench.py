"""Benchmark llm.tokenizer against HF `tokenizers` on one corpus: training time, encode speed, compression.

    python bench/tokenizer_bench.py [corpus] [--vocab 512 2048 4096 8192] [--repeat 3] [--hf-single-thread]

Both sides get the same job: byte-level BPE with the GPT-4 split pattern, the 256 byte values as initial
alphabet, one special token, the whole file as one string. HF runs as a pre_tokenizers.Split with our pattern
followed by ByteLevel without its own regex. Every figure is the best of --repeat runs, ours and HF's taken
in turn so that both see the same load. Encoding is timed on a freshly loaded tokenizer (cold chunk cache on
our side, cold word cache on HF's), one encode() call over the whole file.
`tokenizers` is needed only here (pip install tokenizers), never by the package.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llm.bpe import GPT4_SPLIT_PATTERN
from llm.tokenizer import EOT, Tokenizer


def best_of(fn, repeat: int) -> tuple[float, object]:
    """(fastest wall time of `repeat` calls, result of the last call)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def hf_train(text: str, vocab_size: int):
    from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    return tok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", nargs="?", default=str(REPO.parent / "shared/data/tinyshakespeare.txt"))
    p.add_argument("--vocab", type=int, nargs="+", default=[512, 2048, 4096, 8192])
    p.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is reported")
    p.add_argument("--hf-single-thread", action="store_true", help="TOKENIZERS_PARALLELISM=false for HF")
    args = p.parse_args()
    if args.hf_single_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by tokenizers when it first parallelises
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        sys.exit("HF `tokenizers` is not installed; it is only needed for this benchmark: pip install tokenizers")

    text = Path(args.corpus).read_text(encoding="utf-8")
    n_bytes = len(text.encode("utf-8"))
    print(f"corpus {args.corpus}: {n_bytes / 1e6:.2f} MB, {os.cpu_count()} CPUs, best of {args.repeat}, "
          f"HF {'single thread' if args.hf_single_thread else 'default threads'}")
    head = (f"{'vocab':>6} | {'train s':>7} {'HF s':>6} {'ratio':>5} | {'enc MB/s':>8} {'HF MB/s':>7} {'ratio':>5} | "
            f"{'B/tok':>5} {'HF B/tok':>8} {'diff %':>6}")
    print(head + "\n" + "-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        for vocab_size in args.vocab:
            ours_t, hf_t, ours_e, hf_e = [], [], [], []
            for _ in range(args.repeat):  # interleaved: both sides see the same machine load
                t, ours = best_of(lambda: Tokenizer.train(text, vocab_size, verbose=False), 1)
                ours_t.append(t)
                t, hf = best_of(lambda: hf_train(text, vocab_size), 1)
                hf_t.append(t)
                ours.save(f"{tmp}/ours.json")
                fresh = Tokenizer.load(f"{tmp}/ours.json")
                t, ids = best_of(lambda: fresh.encode(text), 1)
                ours_e.append(t)
                hf_fresh = HFTokenizer.from_str(hf.to_str())
                t, enc = best_of(lambda: hf_fresh.encode(text), 1)
                hf_e.append(t)
            assert ours.decode(ids) == text, "round trip failed"
            ours_bpt, hf_bpt = n_bytes / len(ids), n_bytes / len(enc.ids)
            ours_mbs, hf_mbs = n_bytes / min(ours_e) / 1e6, n_bytes / min(hf_e) / 1e6
            print(f"{ours.vocab_size:>6} | {min(ours_t):>7.3f} {min(hf_t):>6.3f} {min(ours_t) / min(hf_t):>5.2f} | "
                  f"{ours_mbs:>8.2f} {hf_mbs:>7.2f} {ours_mbs / hf_mbs:>5.2f} | "
                  f"{ours_bpt:>5.3f} {hf_bpt:>8.3f} {100 * (ours_bpt - hf_bpt) / hf_bpt:>+6.2f}")
    print("targets: train ratio <= 1.00 at vocab 4096, encode ratio >= 2.00, |diff %| <= 1.00")


if __name__ == "__main__":
    main()
