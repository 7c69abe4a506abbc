"""The playground in a real browser: Playwright driving Debian's chromium (headless, no network).

Skipped, with the reason, where chromium or playwright is missing (.ci/run installs chromium).
"""

import contextlib
import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

import pytest

import app
from test_app import free_port, tiny_run, without_endoftext

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium")
HAS_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(not HAS_PLAYWRIGHT, reason="playwright is not installed (pip install playwright)"),
]


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot", ROOT / "bench" / "screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def launched(demo):
    """The app served on a free local port, for the test's duration: its URL."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    loaded = app.load_playground(str(tiny_run(tmp_path_factory)))
    without_endoftext(loaded[0], loaded[1])
    with launched(app.build_app(*loaded)) as url:
        yield url, loaded[0], loaded[1]


@pytest.fixture
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = _screenshot_module().open_browser(pw)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


TEXT = "Text (tokenized as you type)"
# the text a token view draws, without the ids after its tokens
SHOWN_TEXT = ("v => [...v.querySelectorAll('.t')].map(t => { const c = t.cloneNode(true); "
              "c.querySelectorAll('sub').forEach(s => s.remove()); return c.textContent; }).join('')")


def test_generate_then_tokenizer_in_chromium(served, page, tmp_path):
    url = served[0]
    _screenshot_module().generate_in_page(page, url, "KING:", max_new_tokens=40, seed=1, timeout_ms=60_000)
    text = page.locator("#output textarea").input_value()
    assert text.startswith("KING:") and len(text) > len("KING:")
    assert "40 tokens" in page.locator("#stats").inner_text()
    page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)
    assert (tmp_path / "generate.png").stat().st_size > 10_000

    page.get_by_role("tab", name="Tokens").click()
    page.locator("#token-view .t").first.wait_for(timeout=30_000)
    assert page.locator("#token-view .t").count() > 40  # prompt + 40 generated

    page.get_by_role("tab", name="Tokenizer").click()
    page.get_by_label(TEXT).fill("the king <b>speaks</b>")
    page.get_by_text("22 characters").wait_for(timeout=30_000)  # the counts line of the new text
    assert page.locator("#tokenizer-tokens").evaluate(SHOWN_TEXT).replace("·", " ") == "the king <b>speaks</b>"
    assert page.locator("#tokenizer-tokens .tv > b, #tokenizer-tokens .t > b").count() == 0  # no markup from text
    page.locator("#tokenizer-tokens .t").first.click()  # its merge tree
    page.get_by_text(re.compile(r"merge \d+ of \d+|a single byte")).first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "tokenizer.png"), full_page=True)


def test_stop_ends_the_run_cleanly_at_any_moment(served, page):
    """Stop pressed at several moments after Generate: the run ends with its text and a last line that says it
    was stopped, never an error badge; Generate is off while a run streams, and on again after it."""
    url, model, _ = served
    slow = model.register_forward_pre_hook(lambda module, args: time.sleep(0.02))  # 512 tokens: 10 s or more
    try:
        page.goto(url)
        page.get_by_label("Prompt").fill("KING:")
        page.get_by_label("Max new tokens").first.fill("512")
        generate, stop = page.get_by_role("button", name="Generate"), page.get_by_role("button", name="Stop")
        for delay_ms in (200, 700, 2000):
            generate.click()
            page.wait_for_timeout(delay_ms)
            assert generate.is_disabled()  # one run at a time
            stop.click()
            page.locator("#stats").get_by_text("stopped at your Stop").wait_for(timeout=30_000)
            text = page.locator("#output textarea").input_value()
            page.wait_for_timeout(700)
            assert page.locator("#output textarea").input_value() == text  # nothing streams after Stop
            assert text.startswith("KING:")
            n = int(re.search(r"\*?\*?(\d+) tokens?\*?\*? in", page.locator("#stats").inner_text()).group(1))
            assert n < 512
            assert page.get_by_text("Error", exact=True).count() == 0  # no badge, no toast
            assert generate.is_enabled() and stop.is_disabled()
    finally:
        slow.remove()
    generate.click()  # the app still serves
    page.get_by_text("stopped at max new tokens").wait_for(timeout=60_000)


IN_VIEW = "el => { const r = el.getBoundingClientRect(); return r.top >= -8 && r.top < innerHeight - 40; }"


@pytest.mark.parametrize("width, height", [(1280, 900), (390, 844)])
def test_a_clicked_token_shows_its_details_where_one_looks(served, page, width, height):
    """After 200 tokens, a click on the last one: its details and alternatives are in view (beside the tokens on
    a wide screen, scrolled to on a phone) and the token is marked."""
    page.set_viewport_size({"width": width, "height": height})
    _screenshot_module().generate_in_page(page, served[0], "KING:", max_new_tokens=200, seed=3)
    if width < 600:  # a phone shows the first tabs and the rest behind a button
        page.get_by_role("button", name="More tabs").click() if not page.get_by_role("tab", name="Tokens") \
            .is_visible() else None
    page.get_by_role("tab", name="Tokens").click()
    tokens = page.locator("#token-view .t")
    tokens.nth(150).wait_for(timeout=30_000)
    last = tokens.nth(tokens.count() - 1)
    last.scroll_into_view_if_needed()
    last.click()
    page.locator("#token-details").get_by_text("(generated)").wait_for(timeout=30_000)
    page.wait_for_timeout(800)  # the smooth scroll
    assert page.locator("#token-details").evaluate(IN_VIEW)
    assert last.evaluate("el => getComputedStyle(el).outlineStyle") == "solid"
    assert tokens.nth(0).evaluate("el => getComputedStyle(el).outlineStyle") == "none"


def test_a_token_id_out_of_range_is_said_in_place(served, page, capfd):
    """The merge tree box with an id the vocabulary has not: a line in the tree's place, no error badge, and no
    traceback in the server's log; a good id after it shows its tree."""
    page.goto(served[0])
    page.get_by_role("tab", name="Tokenizer").click()
    box = page.get_by_label("Token id")
    for bad in ("99999", "-3"):
        box.fill(bad)
        box.press("Enter")
        # this id's own line: the one before it is still on the page, so a wait for any such line would return
        # before this request is answered, and that answer could land after the good id's below
        page.get_by_text(re.compile(rf"token id must be a whole number from 0 to \d+; got {bad}\)")).wait_for(
            timeout=30_000)
        assert page.get_by_text("Error", exact=True).count() == 0
    box.fill("104")
    box.press("Enter")
    page.get_by_text(re.compile(r"^104 ")).first.wait_for(timeout=30_000)
    assert "Traceback" not in capfd.readouterr().err


def test_live_tokenization_follows_every_edit(served, page, tmp_path_factory):
    """Typing, Backspace, Delete, select-all and delete, IME input (insert_text) and a paste each re-tokenize the
    text; an emptied box shows no tokens; the vocabulary search returns to the full list when its query goes."""
    url = served[0]
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(url)
    page.get_by_role("tab", name="Tokenizer").click()
    box, ids = page.get_by_label(TEXT), page.locator("#token-ids textarea")
    tokenizer = app.load_playground(str(tiny_run(tmp_path_factory)))[1]  # the served model's

    def shows(text: str) -> None:
        want = json.dumps(tokenizer.encode(text))
        deadline = time.time() + 15
        while time.time() < deadline and ids.input_value() != want:
            page.wait_for_timeout(100)
        assert ids.input_value() == want, (text, ids.input_value())

    box.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    shows("")
    assert page.locator("#tokenizer-tokens .t").count() == 0
    page.locator("#tokenizer-tokens").get_by_text("Type or paste some text").wait_for(timeout=5_000)
    page.locator("#counts").get_by_text("No text yet").wait_for(timeout=5_000)  # not "0 characters ... 0.00"
    page.keyboard.type("the king")
    shows("the king")
    page.keyboard.press("Backspace")
    shows("the kin")
    page.keyboard.press("Home")
    page.keyboard.press("Delete")
    shows("he kin")
    page.keyboard.insert_text("é ")  # as an input method commits text
    shows("é he kin")
    page.evaluate("navigator.clipboard.writeText(' sweet love')")
    page.keyboard.press("End")
    page.keyboard.press("Control+V")
    shows("é he kin sweet love")
    query, count = page.get_by_label("Search the vocabulary"), page.locator("#vocab-count")
    full = count.inner_text()
    query.fill("the")
    page.locator("#vocab-count").get_by_text("matching").wait_for(timeout=15_000)
    query.press("Control+A")
    query.press("Backspace")
    page.locator("#vocab-count").get_by_text(full).wait_for(timeout=15_000)


@pytest.fixture(scope="module")
def paragraphs(tmp_path_factory):
    """The app on a model whose tokenizer has a token of "." and two newlines (paragraphs end that way)."""
    from conftest import make_text
    from test_app import TINY_RUN

    import train_cli

    d = tmp_path_factory.mktemp("paragraphs")
    (d / "corpus.txt").write_text("\n\n".join(make_text(400).replace(",", ".").splitlines()), encoding="utf-8")
    assert train_cli.main(["--corpus", str(d / "corpus.txt"), "--out", str(d / "out"), *TINY_RUN]) == 0
    loaded = app.load_playground(str(d / "out"))
    with launched(app.build_app(*loaded)) as url:
        yield url, loaded[1]


def test_a_token_with_two_newlines_is_one_chip(paragraphs, page):
    """In the Tokenizer and the Tokens tab, a token that holds line breaks is one chip (and the text still breaks
    its lines there); clicking it chooses that token."""
    url, tok = paragraphs
    text = "The king.\n\nSweet love.\n\nGood"
    ids = tok.encode(text)
    dot = next(t for t in ids if tok.decode([t]).startswith(".") and tok.decode([t]).count("\n") == 2)
    page.goto(url)
    page.get_by_role("tab", name="Tokenizer").click()
    page.get_by_label(TEXT).fill(text)
    chips = page.locator("#tokenizer-tokens .t")
    deadline = time.time() + 15
    while time.time() < deadline and page.locator("#token-ids textarea").input_value() != json.dumps(ids):
        page.wait_for_timeout(100)
    assert chips.count() == len(ids)
    for i in (ids.index(dot), ids.index(dot) + 1):  # the token with the breaks, and the one after them
        chips.nth(i).click()
        deadline = time.time() + 15
        while time.time() < deadline and page.get_by_label("Token id").input_value() != str(ids[i]):
            page.wait_for_timeout(100)
        assert page.get_by_label("Token id").input_value() == str(ids[i])
    page.get_by_role("tab", name="Generate").click()
    page.get_by_label("Prompt").fill(text)
    page.get_by_role("tab", name="Tokens").click()
    page.locator("#token-view .t").first.wait_for(timeout=15_000)
    assert page.locator("#token-view .t").count() == len(ids)


def test_training_summary_shows_every_row_and_what_ended_the_run(served, page):
    """The bundled model (a run ended by its time budget) picked in the selector: its training summary says the
    budget, not "max steps 0", and shows every row without a scroll bar of its own."""
    page.goto(served[0])
    page.locator("#model-select input").click()
    page.get_by_role("option", name=re.compile("bundled model")).click()
    page.locator("#header").get_by_text("bundled model").wait_for(timeout=30_000)
    page.get_by_role("tab", name="Model").click()
    summary = page.locator("#training-summary")
    summary.get_by_text("time budget (s)").wait_for(timeout=30_000)
    assert summary.get_by_text("max steps").count() == 0
    inner_scroll = summary.evaluate("el => [...el.querySelectorAll('*')].some(e => "
                                    "['auto', 'scroll'].includes(getComputedStyle(e).overflowY) "
                                    "&& e.scrollHeight > e.clientHeight + 2)")
    assert not inner_scroll


# the colour a heatmap cell shows: its background, blended over the first opaque background behind it
CELL_LUMINANCES = """cells => cells.map(td => {
    const rgba = el => (getComputedStyle(el).backgroundColor.match(/[\\d.]+/g) || []).map(Number);
    let [r, g, b, a = 1] = rgba(td), el = td.parentElement;
    while (a < 1 && el) {
        const [R, G, B, A = 1] = rgba(el);
        if (A > 0 && getComputedStyle(el).backgroundColor !== 'rgba(0, 0, 0, 0)') {
            [r, g, b, a] = [a * r + (1 - a) * R, a * g + (1 - a) * G, a * b + (1 - a) * B, 1];
        }
        el = el.parentElement;
    }
    return [parseFloat(td.title.split(': ').pop()), 0.2126 * r + 0.7152 * g + 0.0722 * b];
})"""


def test_attention_heatmap_reads_the_same_in_dark_mode(served, page):
    """More attention is bluer (darker) than less in light and in dark mode alike, as the caption says."""
    for theme in ("light", "dark"):
        page.goto(f"{served[0]}?__theme={theme}")
        page.get_by_role("tab", name="Model").click()
        page.locator("td[title]").first.wait_for(timeout=30_000)
        cells = page.locator("td[title]").evaluate_all(CELL_LUMINANCES)
        least, most = min(cells), max(cells)  # by weight
        assert most[0] > least[0] and most[1] < least[1] - 60, (theme, least, most)


@pytest.fixture
def studio_served(tmp_path):
    """The app with its runs in tmp_path/runs (the first model: the shared tiny run)."""
    from training import StudioSettings

    loaded = app.load_playground(str(tiny_run(tmp_path)))
    with launched(app.build_app(*loaded, settings=StudioSettings(runs_dir=tmp_path / "runs", train_threads=1))) as url:
        yield url


def _plot_points(page, plot: str = "#run-plot") -> int:
    """How many points a loss plot draws (its lines are SVG polylines)."""
    return sum(len((p or "").split()) for p in page.locator(f"{plot} polyline").evaluate_all(
        "lines => lines.map(l => l.getAttribute('points'))"))


def test_train_tab_upload_start_watch_open_in_chromium(studio_served, page, tmp_path):
    """Upload a file, start a run, see the live plot gain points, open the run while it trains (its curves in the
    Model tab gain points too), generate with it, and see the run finish with a sample."""
    from conftest import make_text

    upload = tmp_path / "notes.txt"
    upload.write_text(make_text(400), encoding="utf-8")
    page.goto(studio_served)
    page.get_by_role("tab", name="Train").click()
    page.locator("#corpus-upload input[type=file]").set_input_files(str(upload))
    page.get_by_text("Advanced").click()
    for label, value in (("Layers", 1), ("Heads", 2), ("Width", 32), ("Context length", 32), ("Batch size", 4),
                         ("Step limit", 2000), ("Evaluate every", 200)):
        page.get_by_label(label, exact=True).fill(str(value))
        page.get_by_label(label, exact=True).press("Tab")
    page.get_by_text("2,000 steps").wait_for(timeout=30_000)  # the plan follows the settings
    page.get_by_role("button", name="Start training").click()
    page.locator("#run-status").get_by_text("notes-").wait_for(timeout=30_000)
    deadline, seen = time.time() + 120, set()
    while time.time() < deadline and len(seen) < 2:
        seen.add(_plot_points(page))
        seen.discard(0)
        page.wait_for_timeout(200)
    assert len(seen) >= 2, seen  # the plot refreshed by itself, with more points each time
    # open the run while it trains: the Model tab's curves follow it, then generate with it
    page.get_by_role("button", name="Open in the playground").click()
    page.locator("#header").get_by_text("notes-").wait_for(timeout=30_000)  # the new model is this page's
    page.get_by_role("tab", name="Model").click()
    first = _plot_points(page, "#model-curves")
    deadline = time.time() + 60
    while time.time() < deadline and _plot_points(page, "#model-curves") <= first:
        page.wait_for_timeout(200)
    assert _plot_points(page, "#model-curves") > first > 0
    page.get_by_role("tab", name="Generate").click()
    page.get_by_label("Prompt").fill("KING:")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("first token after").wait_for(timeout=60_000)
    assert len(page.locator("#output textarea").input_value()) > len("KING:")
    page.get_by_role("tab", name="Train").click()
    page.locator("#run-status").get_by_text("finished").wait_for(timeout=120_000)
    assert page.locator("#run-sample textarea").input_value().strip()
    page.reload()  # a page opened again lists the run and shows it
    page.get_by_role("tab", name="Train").click()
    page.locator("#run-status").get_by_text("finished").wait_for(timeout=30_000)
    assert "notes-" in page.locator("#runs input").input_value()


# --- issue 15: each view reads at a glance ------------------------------------------------------------------


def _more_tabs(page, tab: str) -> None:
    """A phone shows the first tabs and the rest behind a button."""
    if page.get_by_role("tab", name=tab).is_visible():
        page.get_by_role("tab", name=tab).click()
    else:
        page.get_by_role("button", name="More tabs").click()
        page.locator(".overflow-dropdown").get_by_role("button", name=tab, exact=True).click()


@pytest.mark.parametrize("width, height", [(1280, 900), (390, 844)])
def test_the_tokens_tab_reads_as_text(served, page, width, height):
    """512 generated tokens: the text with no badge on its tokens, each token's probability on hover, a legend,
    the alternatives with bars; the view keeps to the screen's height on a phone too (no 3,000-pixel wall)."""
    page.set_viewport_size({"width": width, "height": height})
    _screenshot_module().generate_in_page(page, served[0], "KING:", max_new_tokens=512, seed=5)
    _more_tabs(page, "Tokens")
    view = page.locator("#token-view")
    view.locator(".t").nth(500).wait_for(timeout=30_000)
    drawn = view.locator(".t").evaluate_all("ts => ts.reduce((n, t) => n + +(t.dataset.n || 1), 0)")
    assert drawn == len(served[2].encode("KING:")) + 512  # every token once, no more
    assert view.locator(".t *:not(.ws):not(wbr)").count() == 0  # the tokens hold their text only: no badge, no label
    assert "probability" in view.locator(".t").nth(300).get_attribute("title")
    assert view.get_by_text("log scale").is_visible()
    assert view.evaluate("v => v.getBoundingClientRect().height") < 0.8 * height + 120
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    view.locator(".t").nth(20).click()
    page.locator("#alternatives .bar").nth(9).wait_for(timeout=30_000)
    assert page.locator("#alternatives").get_by_text("◀ this token").count() == 1


def test_byte_tokens_of_one_character_show_it(served, page):
    """In the Tokenizer tab, é and 🍞 (byte tokens in the test's vocabulary) are drawn as their characters, with
    their bytes on hover; each of their ids can still be clicked for its merge tree."""
    page.goto(served[0])
    page.get_by_role("tab", name="Tokenizer").click()
    page.get_by_label(TEXT).fill("é🍞")
    group = page.locator("#tokenizer-tokens .t[data-n]")
    group.first.wait_for(timeout=30_000)
    assert page.locator("#tokenizer-tokens").evaluate(SHOWN_TEXT) == "é🍞"
    assert "bytes C3 A9" in group.first.get_attribute("title")
    group.nth(1).locator("b").nth(2).click()  # 🍞's third byte, 0x8D
    page.get_by_text("141  '<0x8D>'").wait_for(timeout=30_000)
    assert page.get_by_label("Token id").input_value() == "141"


def test_a_vocabulary_row_shows_its_merge_tree(served, page):
    page.goto(served[0])
    page.get_by_role("tab", name="Tokenizer").click()
    token_id = page.locator("#vocab [data-testid=cell-3-0]").inner_text().strip()
    page.locator("#vocab [data-testid=cell-3-1]").click()
    page.get_by_text(re.compile(rf"^{token_id}  '.*merge \d+ of")).first.wait_for(timeout=30_000)
    assert page.get_by_label("Token id").input_value() == token_id


def test_model_tab_every_head_and_the_last_generation(served, page):
    """Every head of a layer as a small picture (a click shows it large), the attention of the last generation's
    end, and the config and the summary in words."""
    _screenshot_module().generate_in_page(page, served[0], "KING:", max_new_tokens=60, seed=2)
    output = page.locator("#output textarea").input_value()
    page.get_by_role("tab", name="Model").click()
    heads = page.locator("#attention figure")
    heads.first.wait_for(timeout=30_000)
    n_head = served[1].config.n_head
    assert heads.count() == n_head + 1
    heads.nth(1).click()
    page.locator("#attention caption").get_by_text("head 1").wait_for(timeout=30_000)
    page.get_by_role("button", name="On the last generation").click()
    box = page.get_by_label(re.compile("Short text"))
    deadline = time.time() + 30
    while time.time() < deadline and box.input_value() == app.ATTENTION_TEXT:
        page.wait_for_timeout(100)
    assert output.endswith(box.input_value()) and len(box.input_value()) > 10
    assert page.locator("#model-config").get_by_text("how many numbers stand for each token").is_visible()


def test_on_a_phone_every_tab_fits_and_the_settings_come_before_the_output(served, page):
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(served[0])
    page.get_by_label("Seed").wait_for(state="hidden", timeout=10_000)  # the settings start folded

    def top(sel: str) -> float:
        return page.locator(sel).evaluate("e => e.getBoundingClientRect().top")

    assert top("#sampling") < top("#output") and top("#sampling") < 844 + 200
    for tab in ("Generate", "Tokens", "Tokenizer", "Model", "Train"):
        _more_tabs(page, tab)
        page.wait_for_timeout(800)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, tab


def test_compare_two_models_side_by_side(served, page):
    """The Compare tab: the model opened at start against the bundled one, generated together; both curves on
    one plot; both tokenizers' split of the same text."""
    page.goto(served[0])
    page.get_by_role("tab", name="Compare").click()
    assert "bundled model" in page.locator("#compare-b input").input_value()
    page.locator("#compare-curves polyline").nth(1).wait_for(timeout=30_000)  # two models, two curves
    page.get_by_role("button", name="Generate with both").click()
    for side in "ab":
        page.locator(f"#compare-stats-{side}").get_by_text("mean log-probability").wait_for(timeout=60_000)
        assert page.locator(f"#compare-out-{side} textarea").input_value().startswith("ROMEO:")
    page.wait_for_timeout(1000)
    assert page.get_by_text("generating…").count() == 0  # both ended
    for side in "ab":
        assert page.locator(f"#compare-split-{side} .t").count() > 10
