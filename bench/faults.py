"""The fault suite: the trainer, the generation CLI and the app as a careless or a hostile user meets them.

    python bench/faults.py [--only WORD]

Every case runs the real entry points in fresh processes (train_cli.py, python -m llm.generate, app.py's Blocks)
on a small generated corpus in a temporary directory, and judges two things:
- handled cleanly: the run ends as the case wants (a refusal: a non-zero exit with one line on stderr and no
  traceback; a fault survived: the run finishes) and the files are what they should be;
- data lost: a checkpoint saved before the fault no longer loads, or changed when it should not have.
Prints one row per case and the totals, as a Markdown table for bench/README.md (Reliability).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import TINY, make_text  # noqa: E402  the tests' tiny settings and corpus maker

from llm.checkpoint import load_checkpoint, read_metrics  # noqa: E402

RUN = [*TINY, "--eval-interval", "2", "--sample-tokens", "0"]
CASES: list[tuple[str, Callable[[Path], tuple[bool, bool, str]]]] = []


def case(name: str):
    def register(fn):
        CASES.append((name, fn))
        return fn
    return register


def cli(args: list[str], cwd: Path, limit_bytes: int | None = None, timeout: float = 300,
        module: str | None = None) -> subprocess.CompletedProcess:
    """train_cli.py (or `python -m module`) with args; limit_bytes: RLIMIT_FSIZE, writes past it fail (EFBIG)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    cmd = [sys.executable, "-m", module] if module else [sys.executable, str(ROOT / "train_cli.py"), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit if limit_bytes else None)


def one_line(p: subprocess.CompletedProcess, words: str = "") -> bool:
    """A refusal as the standards want it: non-zero, one line on stderr, no traceback, the words in it."""
    err = p.stderr.strip()
    return p.returncode != 0 and len(err.splitlines()) == 1 and "Traceback" not in err and words in err


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for k in ("best", "last") for p in (out / k).glob("*")}


def loads(out: Path) -> bool:
    try:
        for kind in ("best", "last"):
            load_checkpoint(out / kind)
        return True
    except Exception:  # any failure is what this suite counts
        return False


def trained(tmp: Path, steps: int = 4, name: str = "run") -> tuple[Path, Path]:
    corpus, out = tmp / "corpus.txt", tmp / name
    if not corpus.exists():
        corpus.write_text(make_text(), encoding="utf-8")
    p = cli(["--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", str(steps)], tmp)
    assert p.returncode == 0, p.stderr
    return corpus, out


# --- settings ------------------------------------------------------------------------------------------------


@case("config file: model: and training: sections")
def _(tmp):
    cfg = tmp / "c.yaml"
    cfg.write_text("model:\n  dropout: 0.1\ntraining:\n  max_steps: 3\n  weight_decay: 0.05\n")
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    p = cli(["--corpus", str(corpus), "--out", str(tmp / "o"), *RUN, "--config", str(cfg)], tmp)
    saved = json.loads((tmp / "o" / "last" / "config.json").read_text()) if p.returncode == 0 else {}
    train, model = saved.get("train", {}), saved.get("model", {})
    return (train.get("max_steps"), train.get("weight_decay"), model.get("dropout")) == (3, 0.05, 0.1), False, ""


@case("config file: keys beside, under the wrong section, unknown, as text")
def _(tmp):
    texts = ["model:\n  n_layer: 1\nlr: 0.1\n", "model:\n  lr: 0.1\n", "train:\n  n_layers: 2\n",
             "train:\n  lr: 2e-3\n", "lrr: 0.1\n"]
    ok = 0
    for i, text in enumerate(texts):
        (tmp / f"{i}.yaml").write_text(text)
        ok += one_line(cli(["--corpus", "x.txt", "--config", str(tmp / f"{i}.yaml")], tmp))
    return ok == len(texts), False, f"{ok}/{len(texts)} refused in one line"


@case("--resume with --preset / --config")
def _(tmp):
    corpus, out = trained(tmp)
    before = snapshot(out)
    refused = one_line(cli(["--out", str(out), "--resume", "--preset", "small"], tmp), "--n-layer")
    return refused and snapshot(out) == before, not loads(out), ""


@case("--resume after the corpus was edited")
def _(tmp):
    corpus, out = trained(tmp)
    corpus.write_text(make_text(seed=5), encoding="utf-8")
    before = snapshot(out)
    p = cli(["--out", str(out), "--resume", "--max-steps", "6"], tmp)
    return one_line(p, "not the text") and snapshot(out) == before, not loads(out), ""


# --- privacy -------------------------------------------------------------------------------------------------


@case("no machine path in a run or its upload")
def _(tmp):
    home = tmp / "home" / "alice"
    home.mkdir(parents=True)
    corpus, out = home / "diary.txt", home / "runs" / "r"
    corpus.write_text(make_text(), encoding="utf-8")
    p = cli(["--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", "4"], tmp)
    stage = cli(["stage", str(out), str(tmp / "stage"), "--sample-tokens", "0"], tmp, module="llm.hub")
    files = [f for d in (out, tmp / "stage") for f in d.rglob("*") if f.is_file()]
    leaks = [f.name for f in files if str(home).encode() in f.read_bytes()]
    return p.returncode == 0 and stage.returncode == 0 and not leaks, False, f"{len(files)} files, {len(leaks)} leak"


# --- runs and stale files -----------------------------------------------------------------------------------------


@case("two runs on one directory; a killed run's lock")
def _(tmp):
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    out = tmp / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, str(ROOT / "train_cli.py"), "--corpus", str(corpus), "--out", str(out),
                              *RUN, "--max-steps", "100000", "--eval-interval", "1000", "--log-interval", "1"],
                             cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(read_metrics(out)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    second = cli(["--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", "4", "--overwrite"], tmp)
    first.kill()
    first.wait()
    third = cli(["--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", "4", "--overwrite"], tmp)
    return one_line(second, f"process {first.pid}") and third.returncode == 0, not loads(out), ""


@case("token files that data.json does not describe")
def _(tmp):
    corpus, out = trained(tmp)
    other = tmp / "other"
    other.mkdir()
    (other / "corpus.txt").write_text(make_text(n_lines=400, seed=9), encoding="utf-8")
    trained(other, name="run")
    shutil.copyfile(other / "run" / "train.bin", out / "train.bin")  # as a kill between the writes leaves it
    p = cli(["--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", "2", "--overwrite"], tmp)
    from llm.data import load_split
    from llm.tokenizer import load_tokenizer

    tok = load_tokenizer(out / "last" / "tokenizer.json")
    ids = [*load_split(out / "train.bin").tolist(), *load_split(out / "val.bin").tolist()]
    return p.returncode == 0 and tok.decode(ids) == corpus.read_text(encoding="utf-8"), not loads(out), ""


@case("an empty data.json")
def _(tmp):
    corpus, out = trained(tmp)
    (out / "data.json").write_text("")
    p = cli(["--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", "2", "--overwrite"], tmp)
    return p.returncode == 0, not loads(out), ""


@case("a new run beside an old metrics.jsonl")
def _(tmp):
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    (tmp / "run").mkdir()
    (tmp / "run" / "metrics.jsonl").write_text('{"kind": "eval", "step": 2, "val_loss": 9.0}\n')
    p = cli(["--corpus", str(corpus), "--out", str(tmp / "run"), *RUN, "--max-steps", "4"], tmp)
    steps = [r["step"] for r in read_metrics(tmp / "run") if r.get("kind") == "eval"]
    return p.returncode == 0 and steps == [2, 4] and all(r.get("val_loss") != 9.0 for r in read_metrics(tmp / "run")), \
        False, ""


@case("SIGKILL during saves and training, then --resume")
def _(tmp, kills: int = 8):  # an evaluation and two saves every step: most kills land in one
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    out, env, rng, lost, resumed = tmp / "run", {**os.environ, "PYTHONPATH": str(ROOT)}, random.Random(0), 0, 0
    for i in range(kills):
        args = ["--resume", "--max-steps", "100000"] if (out / "last").exists() else [
            "--corpus", str(corpus), *RUN, "--max-steps", "100000", "--eval-interval", "1"]
        p = subprocess.Popen([sys.executable, str(ROOT / "train_cli.py"), "--out", str(out), *args, "--no-progress"],
                             cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3 + rng.random() * 3)
        p.kill()
        p.wait()
        lost += (out / "last").exists() and not loads(out)
        resumed += (out / "last").exists()
    return lost == 0 and resumed > 0, lost > 0, f"{kills} kills, {resumed} runs resumed"


@case("SIGKILL during data preparation, then a new run")
def _(tmp):
    corpus = tmp / "big.txt"
    corpus.write_text(make_text(n_lines=60_000), encoding="utf-8")
    env, ok = {**os.environ, "PYTHONPATH": str(ROOT)}, 0
    for delay in (0.5, 1.0, 1.5, 2.0):
        p = subprocess.Popen([sys.executable, str(ROOT / "train_cli.py"), "--corpus", str(corpus), "--out",
                              str(tmp / "run"), *RUN, "--max-steps", "2", "--overwrite"], cwd=tmp, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.kill()
        p.wait()
        again = cli(["--corpus", str(corpus), "--out", str(tmp / "run"), *RUN, "--max-steps", "2", "--overwrite"], tmp)
        ok += again.returncode == 0 and loads(tmp / "run")
    return ok == 4, False, f"{ok}/4 clean after the kill"


# --- faults that end in one line ------------------------------------------------------------------------------


@case("disk full while saving (RLIMIT_FSIZE, 8 levels)")
def _(tmp):
    corpus, out = trained(tmp)
    before, clean = snapshot(out), 0
    levels = [1_000, 10_000, 50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000]
    for limit in levels:
        p = cli(["--out", str(out), "--resume", "--max-steps", "8"], tmp, limit_bytes=limit)
        kept = p.returncode == 0 or snapshot(out) == before
        clean += kept and (p.returncode == 0 or one_line(p))
        if p.returncode == 0:
            before = snapshot(out)
    return clean == len(levels), not loads(out), f"{clean}/{len(levels)} levels clean"


@case("malformed checkpoints: sizes, types, tokenizer, pickles")
def _(tmp):
    corpus, out = trained(tmp)
    edits = {
        "config.json": [("model", "vocab_size", 10**12), ("model", "n_layer", 10**9), ("model", "block_size", 10**12),
                        ("model", "n_layer", "2"), ("model", "pos", "alibi")],
        "tokenizer.json": [(None, "pattern", "(unclosed"), (None, "special_tokens", ["<|endoftext|>"]),
                           (None, "merges", [[10**9, 3]])],
    }
    clean = total = 0
    for name, changes in edits.items():
        for section, key, value in changes:
            d = tmp / f"broken{total}"
            shutil.copytree(out / "best", d)
            obj = json.loads((d / name).read_text())
            (obj[section] if section else obj)[key] = value
            (d / name).write_text(json.dumps(obj))
            p = cli(["--checkpoint", str(d), "--prompt", "x"], tmp, module="llm.generate", timeout=60)
            clean += one_line(p)
            total += 1
    for name, corrupt in (("model.safetensors", lambda b: b[: len(b) // 2]), ("config.json", lambda b: b"{oops"),
                          ("model.safetensors", lambda b: b"\xff" * 64 + b[64:])):
        d = tmp / f"broken{total}"
        shutil.copytree(out / "best", d)
        (d / name).write_bytes(corrupt((d / name).read_bytes()))
        clean += one_line(cli(["--checkpoint", str(d), "--prompt", "x"], tmp, module="llm.generate", timeout=60))
        total += 1
    import torch

    state = torch.load(out / "last" / "train_state.pt", weights_only=True)
    state["x"] = subprocess.CompletedProcess
    torch.save(state, out / "last" / "train_state.pt")
    p = cli(["--out", str(out), "--resume", "--max-steps", "6"], tmp)
    clean += one_line(p, "not loaded") and "weights_only" not in p.stderr
    return clean == total + 1, False, f"{clean}/{total + 1} refused in one line"


@case("NaN losses injected: the run stops, checkpoints kept")
def _(tmp):
    corpus, out = trained(tmp)
    before = snapshot(out)
    inject = ("import sys, train_cli; from llm import train; f = train.GPT.forward; "
              "train.GPT.forward = lambda self, idx, targets=None, **k: (lambda o: (o[0], o[1] * float('nan') "
              "if o[1] is not None else None))(f(self, idx, targets, **k)); "
              f"sys.exit(train_cli.main(['--out', {str(out)!r}, '--resume', '--max-steps', '20', '--no-progress']))")
    p = subprocess.run([sys.executable, "-c", inject], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return one_line(p, "not finite for 5 steps") and snapshot(out) == before, not loads(out), ""


@case("a diverged run (lr 1e30), then sampling")
def _(tmp):
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    out = tmp / "run"
    p = cli(["--corpus", str(corpus), "--out", str(out), *TINY, "--sample-tokens", "8", "--lr", "1e30",
             "--muon-lr", "1e30", "--max-steps", "10", "--eval-interval", "2"], tmp)
    clean = "Traceback" not in p.stderr
    if (out / "best").exists():
        import torch

        model, _, _ = load_checkpoint(out / "best")
        clean &= all(bool(torch.isfinite(q).all()) for q in model.parameters())
        g = cli(["--checkpoint", str(out), "--prompt", "x"], tmp, module="llm.generate")
        clean &= g.returncode == 0 or one_line(g, "not finite")
    return clean, False, "best/ saved" if (out / "best").exists() else "nothing saved"


@case("llm.generate: 10**12 tokens, 10**6 samples, stdout closed")
def _(tmp):
    a = cli(["--checkpoint", str(ROOT / "assets" / "model"), "--prompt", "x", "--max-new-tokens", str(10**12)], tmp,
            module="llm.generate", timeout=60)
    b = cli(["--checkpoint", str(ROOT / "assets" / "model"), "--prompt", "x", "--num-samples", str(10**6)], tmp,
            module="llm.generate", timeout=60)
    c = subprocess.run([sys.executable, "-m", "llm.generate", "--checkpoint", "assets/model", "--prompt", "x"],
                       cwd=ROOT, stderr=subprocess.PIPE, text=True, timeout=60, preexec_fn=lambda: os.close(1))
    return one_line(a) and one_line(b) and one_line(c, "closed"), False, ""


@case("app: a burst of 40 requests, bad requests between")
def _(tmp):
    import app
    from gradio_client import Client

    from bench.app_bench import free_port

    loaded = app.load_playground(str(ROOT / "assets" / "model"))
    demo = app.build_app(*loaded, limits=app.Limits(queue_size=16))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    bad = [("KING:", 2.5, 0.8, 0, 1.0, 0.0, 1.0, 1, "a,b,c,d,e,f,g,h,i"), ("x" * 2001, 5, 0.8, 0, 1.0, 0.0, 1.0, 1, "")]

    def request(i: int) -> str:
        try:
            args = bad[i % 2] if i % 5 == 0 else ("KING:", 20, 0.8, 0, 1.0, 0.0, 1.0, i, "")
            client.predict(*args, api_name="/generate")
            return "served"
        except Exception as e:  # the outcome is what is counted
            text = str(e)
            return "refused" if text and "Traceback" not in text else "bad error"

    try:
        with ThreadPoolExecutor(40) as pool:
            outcomes = list(pool.map(request, range(40)))
        after = client.predict("KING:", 5, 0.8, 0, 1.0, 0.0, 1.0, 1, "", api_name="/generate")[1]
    finally:
        demo.close()
    counts = {k: outcomes.count(k) for k in ("served", "refused", "bad error")}
    return counts["bad error"] == 0 and "**5 tokens**" in after, False, ", ".join(f"{v} {k}" for k, v in counts.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="run the cases whose name contains this")
    args = p.parse_args(argv)
    rows, t0 = [], time.perf_counter()
    for name, fn in CASES:
        if args.only.lower() not in name.lower():
            continue
        with tempfile.TemporaryDirectory(prefix="scratchgpt-faults-") as tmp:
            t = time.perf_counter()
            try:
                handled, lost, note = fn(Path(tmp))
            except Exception as e:  # a case that breaks is a case not handled
                handled, lost, note = False, False, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
            rows.append((name, handled, lost, note, time.perf_counter() - t))
            print(f"{'ok  ' if handled and not lost else 'FAIL'} {name} ({note}) {rows[-1][4]:.0f} s", flush=True)
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print("| case | handled cleanly | data lost | notes |\n|---|---|---|---|")
    for name, handled, lost, note, _ in rows:
        print(f"| {name} | {'yes' if handled else '**no**'} | {'**yes**' if lost else 'no'} | {note} |")
    print(f"\ncases tried: {len(rows)}, handled cleanly: {sum(r[1] for r in rows)}, "
          f"data lost: {sum(r[2] for r in rows)}")
    return 0 if all(r[1] and not r[2] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
