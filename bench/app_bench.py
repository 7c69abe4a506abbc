"""Playground start-up and streaming latency, and the studio's, as a user meets them.

    python bench/app_bench.py [--checkpoint DIR] [--starts 3] [--requests 5] [--max-new-tokens 200]
                              [--corpus FILE] [--no-studio]

(a) seconds from `python app.py` (a fresh process: imports, checkpoint load, UI build) to its page being served;
(b) through the API (gradio_client, as a browser's queue would): seconds from submitting `generate` to the first
    streamed update that carries generated text, the run's tokens/s as the app reports it, and for scale the
    round trip of a request that does almost nothing (`tokenize` of two characters).
(c) the studio (unless --no-studio), on the last app started, with its runs in a temporary directory: seconds from
    `start_training` (--corpus uploaded, the page's default settings) to the first loss point in `run_status` (what
    the page's plot shows); seconds to switch to that run's model, the first time (a load) and again (held); and
    (b)'s generate while the run trains against the same once it has been stopped.
(d) a public studio (SCRATCHGPT_PUBLIC=1, a fresh app): what a second visitor waits for (the page, their runs
    listed, a trivial request, generation) while no one trains and while a first visitor's run trains; then the
    second visitor's own `start_training`, which joins the line.
The checkpoint is the one app.py opens (or --checkpoint). Prints a Markdown table for bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_served(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200 and b"gradio" in r.read().lower():
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not served after {timeout:.0f} s")


def start_app(checkpoint: str, runs: str, **env_vars: str) -> tuple[subprocess.Popen, str, float]:
    """Run `python app.py` and return (process, url, seconds until the page is served)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "SCRATCHGPT_RUNS": runs, **env_vars}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint", checkpoint,
                             "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_served(url, proc)
    except BaseException:
        proc.kill()
        raise
    return proc, url, time.perf_counter() - t0


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def first_token(client, prompt: str, max_new_tokens: int, seed: int) -> tuple[float, str]:
    """(seconds from submit to the first update with generated text, the final stats line)."""
    t0 = time.perf_counter()
    job = client.submit(prompt, max_new_tokens, 0.8, 0, 1.0, 0.0, 1.0, seed, "", api_name="/generate")
    ttft = None
    for text, _stats in job:
        if ttft is None and len(text) > len(prompt):
            ttft = time.perf_counter() - t0
    final = job.outputs()[-1]
    return (ttft if ttft is not None else float("nan")), final[1]


def generation(client, args) -> tuple[list[float], list[float]]:
    """(first-token seconds, tokens/s) of args.requests generate requests."""
    ttfts, tps = [], []
    for i in range(1, args.requests + 1):
        ttft, line = first_token(client, args.prompt, args.max_new_tokens, seed=i)
        print(f"request {i}: first token after {1000 * ttft:.0f} ms; {line}", flush=True)
        ttfts.append(ttft)
        tps.append(float(re.search(r"([\d.]+) tokens/s", line).group(1)))
    return ttfts, tps


def studio(client, runs: Path, corpus: str, args) -> dict:
    """(c): start a run, time its first loss point and a model switch, and generate while it trains."""
    from gradio_client import handle_file

    from llm import studio as words

    adv = words.size_settings("tiny")
    t0 = time.perf_counter()
    name = client.predict("upload a .txt file", handle_file(corpus), "", "tiny", "bpe", adv["vocab_size"], 120,
                          *(adv[n] for n in words.ADVANCED), api_name="/start_training")
    first_point = None
    while first_point is None and time.perf_counter() - t0 < 300:
        if "<polyline" in client.predict(name, api_name="/run_status")[2]:  # the plot has a line
            first_point = time.perf_counter() - t0
        time.sleep(0.1)
    print(f"run {name}: first loss point after {first_point:.1f} s", flush=True)
    while not (runs / name / "best" / "config.json").is_file():
        time.sleep(0.2)
    switches = []
    for key in (f"run/{name}", "start", f"run/{name}", "start", f"run/{name}"):
        t = time.perf_counter()
        client.predict(key, api_name="/switch_model")
        switches.append(time.perf_counter() - t)
    client.predict("start", api_name="/switch_model")
    training = generation(client, args)
    client.predict(name, api_name="/stop_training")
    while "training" in client.predict(name, api_name="/run_status")[0].split("\n")[0]:
        time.sleep(0.2)
    idle = generation(client, args)
    return {"first_point": first_point, "switch_cold": switches[0], "switch_warm": switches[2:],
            "training": training, "idle": idle}


def visitor(client, url: str, args) -> dict:
    """What a visitor waits for: the page itself, their runs listed, a trivial request, and generation."""
    def ms(fn) -> list[float]:
        out = []
        for _ in range(args.requests):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    return {"page": ms(lambda: urllib.request.urlopen(url, timeout=30).read()),
            "list": ms(lambda: client.predict(B_KEY, api_name="/list_runs")),
            "tokenize": ms(lambda: client.predict("hi", api_name="/tokenize")), "generate": generation(client, args)}


A_KEY, B_KEY = "a" * 32, "b" * 32  # two visitors' keys (the page makes a random one per browser)


def public_studio(checkpoint: str, corpus: str, args) -> dict:
    """(d) a public studio (SCRATCHGPT_PUBLIC=1): a second visitor's waits, idle and while the first visitor's run
    trains; then the second visitor's own start, which joins the line."""
    from gradio_client import Client, handle_file

    from llm import studio as words

    runs = tempfile.mkdtemp(prefix="app_bench_public-")
    proc, url, _ = start_app(checkpoint, runs, SCRATCHGPT_PUBLIC="1")
    try:
        first, second = Client(url, verbose=False), Client(url, verbose=False)
        idle = visitor(second, url, args)
        adv = words.size_settings("tiny")
        settings = ["tiny", "bpe", adv["vocab_size"], 120, *(adv[n] for n in words.ADVANCED)]
        name = first.predict("upload a .txt file", handle_file(corpus), "", *settings, A_KEY,
                             api_name="/start_training")
        while "<polyline" not in first.predict(name, A_KEY, api_name="/run_status")[2]:
            time.sleep(0.2)
        busy = visitor(second, url, args)
        t = time.perf_counter()
        theirs = second.predict("upload a .txt file", handle_file(corpus), "", *settings, B_KEY,
                                api_name="/start_training")
        joined = time.perf_counter() - t
        line = second.predict(theirs, B_KEY, api_name="/run_status")[0]
        print(f"second visitor's run: {line.splitlines()[0]}", flush=True)
        for who, run, key in ((second, theirs, B_KEY), (first, name, A_KEY)):
            who.predict(run, key, api_name="/stop_training")
    finally:
        stop_app(proc)
        shutil.rmtree(runs, ignore_errors=True)
    return {"idle": idle, "busy": busy, "joined": joined, "line": line}


def public_rows(fig: dict) -> None:
    def row(label: str, idle: list[float], busy: list[float], unit: str = "ms", scale: float = 1000) -> None:
        i, b = statistics.median(idle) * scale, statistics.median(busy) * scale
        print(f"| public studio, second visitor: {label} ({unit}) | {i:.0f} | {b:.0f} | {b / i:.2f} |")

    print()
    print("| measure | idle | while the first visitor trains | ratio |")
    print("|---|---|---|---|")
    row("page load", fig["idle"]["page"], fig["busy"]["page"])
    row("`list_runs`", fig["idle"]["list"], fig["busy"]["list"])
    row("`tokenize` of 2 characters", fig["idle"]["tokenize"], fig["busy"]["tokenize"])
    row("first streamed token", fig["idle"]["generate"][0], fig["busy"]["generate"][0])
    row("generate", fig["idle"]["generate"][1], fig["busy"]["generate"][1], "tokens/s", 1)
    print(f"| public studio, second visitor: `start_training` while the line is busy (ms) | | "
          f"{1000 * fig['joined']:.0f} | |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="default: what app.py opens")
    p.add_argument("--starts", type=int, default=3, help="fresh `python app.py` processes to time")
    p.add_argument("--requests", type=int, default=5, help="generate requests per measurement")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--prompt", default="ROMEO:\n")
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"),
                   help="the text the studio's run trains on")
    p.add_argument("--no-studio", action="store_true", help="skip (c) and (d)")
    args = p.parse_args(argv)

    import app
    from gradio_client import Client

    checkpoint = str(Path(app.find_checkpoint(args.checkpoint)).resolve())
    runs = Path(tempfile.mkdtemp(prefix="app_bench_runs-"))
    starts = []
    for i in range(args.starts):
        proc, url, dt = start_app(checkpoint, str(runs))
        starts.append(dt)
        print(f"start {i + 1}: page served after {dt:.2f} s", flush=True)
        if i < args.starts - 1:
            stop_app(proc)
    try:
        client = Client(url, verbose=False)
        cold, _ = first_token(client, args.prompt, args.max_new_tokens, seed=0)  # the first request after start
        ttfts, tps = generation(client, args)
        trips = []
        for _ in range(args.requests):  # the queue's own latency: a request that does almost nothing
            t = time.perf_counter()
            client.predict("hi", api_name="/tokenize")
            trips.append(time.perf_counter() - t)
        fig = None if args.no_studio else studio(client, runs, args.corpus, args)
    finally:
        stop_app(proc)
        shutil.rmtree(runs, ignore_errors=True)
    public = None if args.no_studio else public_studio(checkpoint, args.corpus, args)

    import torch

    from llm.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(checkpoint)
    print()
    print(f"checkpoint {checkpoint}: {model.num_params():,} parameters, {model.config.n_layer} layers x "
          f"{model.config.n_embd}, block {model.config.block_size}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}")
    print()
    print("| measure | median | min | max |")
    print("|---|---|---|---|")
    print(f"| `python app.py` to page served (s), {len(starts)} starts | {statistics.median(starts):.2f} | "
          f"{min(starts):.2f} | {max(starts):.2f} |")
    print(f"| first streamed token through the API (ms), {len(ttfts)} requests | "
          f"{1000 * statistics.median(ttfts):.0f} | {1000 * min(ttfts):.0f} | {1000 * max(ttfts):.0f} |")
    print(f"| generate through the API, {args.max_new_tokens} new tokens (tokens/s) | {statistics.median(tps):.0f} | "
          f"{min(tps):.0f} | {max(tps):.0f} |")
    print(f"| round trip of a trivial request, `tokenize` of 2 characters (ms) | {1000 * statistics.median(trips):.0f} "
          f"| {1000 * min(trips):.0f} | {1000 * max(trips):.0f} |")
    print(f"| first streamed token, first request after start (ms) | {1000 * cold:.0f} | | |")
    if fig:
        print(f"| studio: `start_training` to the first loss point on the page (s) | {fig['first_point']:.1f} | | |")
        w = fig["switch_warm"]
        print(f"| studio: switch to the run's model, first time: a load (ms) | {1000 * fig['switch_cold']:.0f} | | |")
        print(f"| studio: switch between held models (ms), {len(w)} switches | {1000 * statistics.median(w):.0f} | "
              f"{1000 * min(w):.0f} | {1000 * max(w):.0f} |")
        for label, (tt, tp) in (("while a run trains", fig["training"]), ("idle, after it", fig["idle"])):
            print(f"| studio: first streamed token {label} (ms) | {1000 * statistics.median(tt):.0f} | "
                  f"{1000 * min(tt):.0f} | {1000 * max(tt):.0f} |")
            print(f"| studio: generate {label} (tokens/s) | {statistics.median(tp):.0f} | {min(tp):.0f} | "
                  f"{max(tp):.0f} |")
        ratio = statistics.median(fig["training"][1]) / statistics.median(fig["idle"][1])
        print(f"| studio: tokens/s while training / idle | {ratio:.2f} | | |")
    if public:
        public_rows(public)
    return 0


if __name__ == "__main__":
    sys.exit(main())
