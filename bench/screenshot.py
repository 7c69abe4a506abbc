"""Screenshot of the playground's Generate tab after a generation, for the README.

    python bench/screenshot.py [--checkpoint DIR] [--out assets/screenshot.png] [--prompt TEXT] [--all-tabs]
    python bench/screenshot.py --train-tab CORPUS [--out assets/train.png]

Launches app.py's Blocks on a free local port, drives Debian's chromium with Playwright (headless, no network),
types the prompt, clicks Generate, waits for the run's stats, and saves a PNG. --all-tabs also saves one
picture per tab next to --out (NAME-tokens.png, ...), to check the layout by eye. --train-tab uploads CORPUS in
the Train tab (its runs in a temporary directory), starts a run with the page's defaults and a 60-second budget,
and takes the picture 40 seconds in.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(checkpoint: str | None = None, **build_kwargs):
    """Build and launch the app for the checkpoint app.py would open; returns (demo, url)."""
    import app

    spec = app.find_checkpoint(checkpoint)
    model, tokenizer, meta, name, metrics, train_config = app.load_playground(spec)
    demo = app.build_app(model, tokenizer, meta, name, metrics, train_config, **build_kwargs)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


def open_browser(playwright):
    chromium = shutil.which("chromium")
    if chromium is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)


def generate_in_page(page, url: str, prompt: str, max_new_tokens: int | None = None, seed: int | None = None,
                     timeout_ms: int = 120_000) -> None:
    """Open the app, type the prompt, click Generate, wait for the finished run's stats line."""
    page.goto(url)
    page.get_by_label("Prompt").fill(prompt)
    if (max_new_tokens is not None or seed is not None) and page.viewport_size["width"] < 640:
        page.get_by_label("Seed").wait_for(state="hidden", timeout=10_000)  # a phone folds the settings on load
        page.get_by_text("Sampling settings").click()
    if max_new_tokens is not None:
        page.get_by_label("Max new tokens").first.fill(str(max_new_tokens))
    if seed is not None:
        page.get_by_label("Seed").fill(str(seed))
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("first token after").wait_for(timeout=timeout_ms)


def train_tab_in_page(page, url: str, corpus: str, seconds: float = 40.0) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Train").click()
    page.locator("#corpus-upload input[type=file]").set_input_files(corpus)
    budget = page.get_by_label("number input for Time budget (s)")
    budget.fill("60")
    budget.press("Tab")
    page.get_by_text("in 60 s").wait_for(timeout=30_000)
    page.get_by_role("button", name="Start training").click()
    page.wait_for_timeout(seconds * 1000)
    page.locator("#run-plot polyline").first.wait_for(timeout=30_000)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="as app.py's --checkpoint (default: what app.py opens)")
    p.add_argument("--out", default=str(ROOT / "assets" / "screenshot.png"))
    p.add_argument("--prompt", default="ROMEO:\n")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--all-tabs", action="store_true")
    p.add_argument("--train-tab", metavar="CORPUS", help="a picture of the Train tab training on CORPUS")
    args = p.parse_args(argv)

    import tempfile

    from playwright.sync_api import sync_playwright

    from train_tab import StudioSettings

    runs = tempfile.mkdtemp(prefix="screenshot-runs-")
    demo, url = launch(args.checkpoint, settings=StudioSettings(runs_dir=Path(runs), train_threads=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = open_browser(pw)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            if args.train_tab:
                train_tab_in_page(page, url, args.train_tab)
                page.screenshot(path=str(out), full_page=True)
                print(f"saved {out}")
                return 0
            generate_in_page(page, url, args.prompt, args.max_new_tokens, args.seed)
            page.screenshot(path=str(out), full_page=True)
            print(f"saved {out}")
            if args.all_tabs:
                for tab in ("Tokens", "Tokenizer", "Model"):
                    page.get_by_role("tab", name=tab).click()
                    page.wait_for_timeout(1500)
                    if tab == "Tokens":
                        page.locator("#token-view .t").nth(9).click()
                        page.wait_for_timeout(800)
                    if tab == "Tokenizer":
                        page.locator("#tokenizer-tokens .t").nth(12).click()
                        page.wait_for_timeout(800)
                    path = out.with_name(f"{out.stem}-{tab.lower()}{out.suffix}")
                    page.screenshot(path=str(path), full_page=True)
                    print(f"saved {path}")
            browser.close()
    finally:
        demo.close()
        from llm import worker

        for run in worker.list_runs(runs):  # a run still training ends with the picture
            worker.stop(Path(runs) / run.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
