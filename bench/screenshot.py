"""The README's five pictures of the studio, made again by one command.

    python bench/screenshot.py [--corpus TEXT_FILE] [--checkpoint DIR] [--out-dir assets] [--prompt TEXT]

Launches app.py's Blocks on a free local port, drives Debian's chromium with Playwright (headless, no network)
as a person would (type the prompt, click Generate, click a token), and saves, into --out-dir:
    generate.png    the Generate tab after a generation (1280 wide)
    tokens.png      the Tokens tab, a token clicked: its alternatives beside the text
    tokenizer.png   the Tokenizer tab, a token clicked: its merge tree
    phone.png       the Tokens tab at phone size (390 x 844)
    dark.png        in dark mode: the Train tab 40 s into a run on --corpus (its runs in a temporary directory,
                    stopped after the picture), or without --corpus the Model tab
"""

from __future__ import annotations

import argparse
import re
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


def pictures(browser, url: str, out: Path, prompt: str, max_new_tokens: int, seed: int,
             corpus: str | None) -> None:
    """The five pictures, each from a fresh page as a visitor would see it."""
    def shot(page, name: str) -> None:
        page.mouse.move(0, 0)  # no hover outline in the picture
        page.screenshot(path=str(out / name), full_page=True)
        print(f"saved {out / name}")

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    generate_in_page(page, url, prompt, max_new_tokens, seed)
    shot(page, "generate.png")
    page.get_by_role("tab", name="Tokens").click()
    page.locator("#token-view .t").nth(9).click()
    page.locator("#alternatives .bar").first.wait_for(timeout=30_000)
    shot(page, "tokens.png")
    page.get_by_role("tab", name="Tokenizer").click()
    page.locator("#tokenizer-tokens .t").nth(12).click()
    page.get_by_text(re.compile(r"merge \d+ of")).first.wait_for(timeout=30_000)
    shot(page, "tokenizer.png")
    page.close()

    phone = browser.new_page(viewport={"width": 390, "height": 844})
    generate_in_page(phone, url, prompt, max_new_tokens, seed)
    phone.get_by_role("tab", name="Tokens").click()
    phone.locator("#token-view .t").nth(9).click()
    phone.locator("#alternatives .bar").first.wait_for(timeout=30_000)
    phone.locator("#tokens-summary").evaluate("e => scrollTo(0, e.getBoundingClientRect().top + scrollY - 150)")
    phone.wait_for_timeout(800)
    phone.mouse.move(0, 0)
    phone.screenshot(path=str(out / "phone.png"))  # one screen, as a phone shows it
    print(f"saved {out / 'phone.png'}")
    phone.close()

    dark = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme="dark")
    if corpus:
        train_tab_in_page(dark, url + "?__theme=dark", corpus)
    else:
        dark.goto(url + "?__theme=dark")
        dark.get_by_role("tab", name="Model").click()
        dark.locator("#attention figure").first.wait_for(timeout=30_000)
    shot(dark, "dark.png")
    dark.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="as app.py's --checkpoint (default: what app.py opens)")
    p.add_argument("--corpus", default=None, help="a text file to train on in the dark picture (the Train tab)")
    p.add_argument("--out-dir", default=str(ROOT / "assets"))
    p.add_argument("--prompt", default="ROMEO:\n")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)

    import tempfile

    from playwright.sync_api import sync_playwright

    from training import StudioSettings

    runs = tempfile.mkdtemp(prefix="screenshot-runs-")
    demo, url = launch(args.checkpoint, settings=StudioSettings(runs_dir=Path(runs), train_threads=1))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = open_browser(pw)
            pictures(browser, url, out, args.prompt, args.max_new_tokens, args.seed, args.corpus)
            browser.close()
    finally:
        demo.close()
        from llm import worker

        for run in worker.list_runs(runs):  # a run still training ends with the picture
            worker.stop(Path(runs) / run.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
