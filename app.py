"""The scratchgpt studio: train a GPT on your text, generate with it, see its token probabilities, explore its
tokenizer, switch between models.

    python app.py [--checkpoint DIR_OR_REPO_ID] [--runs DIR] [--train-threads N] [--host 127.0.0.1] [--port 7860]

The model shown first: --checkpoint (a directory or a Hub repo id), else $SCRATCHGPT_CHECKPOINT, else the newest
checkpoints/*/best under the current directory, else the bundled model in assets/model/. The selector at the top
switches a browser session to the bundled model, any run in the runs directory, or a Hub repo id. This file is
layout and wiring: one builder function per tab (the Train tab's is train_tab.py); the handlers are playground.py's
(the model tabs) and training.py's (the Train tab); build_app puts the tabs together and main() parses the flags
and launches.
"""

from __future__ import annotations

try:  # ZeroGPU on Hugging Face Spaces: `spaces` must be imported before anything touches CUDA
    import spaces
except ImportError:
    spaces = None

import inspect
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import torch

from compare import Compare, compare_tab
from llm import attention, public, studio, tokenview, viz, worker
from llm.checkpoint import CheckpointError
from llm.cli import ArgumentParser
from llm.hub import ENV_CHECKPOINT
from llm.sample import KNOBS, Knob
from playground import (BUNDLED, BUNDLED_KEY, DEFAULTS, FIRST, GENERATE_SIGNATURE, SEED, SETTINGS,  # noqa: F401
                        Halts, Limits, Models, Playground, RUN_KEY, fail, find_checkpoint, load_playground,
                        run_metrics)
from train_tab import train_tab
from training import Studio, StudioSettings, curve_svg

# ZeroGPU runs a decorated function in a forked worker and pickles its arguments and results, so it wraps the
# handlers (the models are inherited by the fork, never pickled) and handlers return plain data (gr.update dicts).
# Outside ZeroGPU spaces.GPU returns the function unchanged.
gpu = spaces.GPU if spaces is not None else (lambda fn: fn)
ZERO_GPU = spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def zero_gpu_slicer(seconds: float) -> Callable:
    """On ZeroGPU the GPU exists only inside a spaces.GPU call in this process, so a run trains there, a slice at
    a time (worker.train_slice), each resuming from its last/. Untested until deployed (README)."""
    @spaces.GPU(duration=int(seconds) + 60)  # the slice, its save, and the evaluation when it is stopped
    def train_slice(out: str, seconds: float) -> bool:
        return worker.train_slice(Path(out), seconds)

    return lambda out, seconds: train_slice(str(out), seconds)

EXAMPLES = ["ROMEO:\n", "JULIET:\nO Romeo, Romeo,", "First Citizen:\nBefore we proceed any further,",
            "KING RICHARD III:\nNow is the winter of"]
EXPLORER_TEXT = "First Citizen:\nWe are accounted poor citizens, the patricians good.\nWhat authority surfeits on ☕?"
ATTENTION_TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?"
PRIVATE = {"api_visibility": "private"}  # events the page needs that are no API of the app
PICK_A_TOKEN = "Click a token to see the model's alternatives there."
NO_TREE = "Click a token or a row of the vocabulary,\nor type an id: how that token was built from bytes."
NO_TOKENS = "Generate some text, or open this tab to see the prompt's tokens."
# on a phone: the settings start folded (they stand between the prompt and the output), and Generate brings the
# output into view
FOLD_ON_PHONE = """() => { if (innerWidth < 640) {
    const open = document.querySelector('#sampling .label-wrap.open');
    if (open) open.click();
} }"""
SHOW_OUTPUT = """() => { const o = document.getElementById('output');
    if (o && o.getBoundingClientRect().top > innerHeight - 120) o.scrollIntoView({block: 'start', behavior: 'smooth'});
}"""
# this browser's key to the runs it starts: random, kept in its storage (a reload keeps it; another browser has
# its own); a public studio shows a visitor only the runs made with theirs
VISITOR_KEY = """() => {
    let v = localStorage.getItem('scratchgpt-visitor');
    if (!v || !/^[0-9a-f]{48}$/.test(v)) {
        v = Array.from(crypto.getRandomValues(new Uint8Array(24)), (b) => b.toString(16).padStart(2, '0')).join('');
        localStorage.setItem('scratchgpt-visitor', v);
    }
    return v;
}"""
POLL = {"show_progress": "hidden", "concurrency_limit": None, **PRIVATE}  # a timer's refresh: never queued behind work


# -----------------------------------------------------------------------------
# the session's model: every handler of the model tabs gets its key (a gr.State) first


def session_model(models: Models, key: str) -> Playground:
    try:
        return models.get(key)
    except (CheckpointError, OSError, ValueError) as e:
        raise fail(str(e)) from None


def on(models: Models, method: str) -> Callable:
    """Playground.<method> of the session's model, called with the key first; its signature is the method's with
    `key` for `self` (Gradio names the API's parameters after it)."""
    if inspect.isgeneratorfunction(getattr(Playground, method)):
        def handler(key, *args, **kwargs):
            yield from getattr(session_model(models, key), method)(*args, **kwargs)
    else:
        def handler(key, *args, **kwargs):
            return getattr(session_model(models, key), method)(*args, **kwargs)

    sig = inspect.signature(getattr(Playground, method))
    key = inspect.Parameter("key", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    handler.__signature__ = sig.replace(parameters=[key, *list(sig.parameters.values())[1:]])
    handler.__name__ = method
    # Gradio finds an event's data parameter (gr.SelectData) by its type hint, not by the signature
    hints = typing.get_type_hints(getattr(Playground, method))
    handler.__annotations__ = {n: h for n, h in hints.items() if inspect.isclass(h) and issubclass(h, gr.EventData)}
    return handler


def generate_handler(models: Models, halts: Halts) -> Callable:
    """Playground.generate_until for the session's model and its page's Stop flag; the API sees generate's
    parameters (the key and the run's id are States, which the API does not show)."""
    def generate(key, run_id, *args, **kwargs):
        yield from session_model(models, key).generate_until(halts.get(run_id), *args, **kwargs)

    states = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("key", "run_id")]
    generate.__signature__ = GENERATE_SIGNATURE.replace(
        parameters=[*states, *list(GENERATE_SIGNATURE.parameters.values())[1:]])
    return generate


# -----------------------------------------------------------------------------
# layout and wiring: one function per tab; each returns what it does when the session's model changes


def knob_slider(knob: Knob, low: float | None, high: float | None, value: float) -> gr.Slider:
    """A slider for a sampling knob over the app's range (its own `slider` ends where it has them)."""
    lo, hi = knob.low if low is None else low, knob.high if high is None else high
    if knob.slider:
        lo, hi = knob.slider[0], min(knob.slider[1], hi)
    info = "; ".join(x for x in (knob.help, knob.note) if x) or None  # what it does, then what "off" is
    return gr.Slider(lo, hi, value, step=knob.step, label=knob.label[:1].upper() + knob.label[1:],
                     info=info)  # no precision=0: Gradio's int() of a NaN is an error with no words


def generate_tab(models: Models, key: gr.State, run: gr.State) -> tuple[gr.Textbox, Callable]:
    """Prompt, settings, streamed output. Returns the prompt box (the Tokens tab shows it when there is no run)."""
    pg, halts = models.first, Halts()
    lim, ranges = pg.limits, pg.sample_ranges()
    with gr.Tab("Generate", id="generate"):
        with gr.Row():  # on a phone the columns stack: the prompt, the buttons and the settings come first
            with gr.Column(scale=2, min_width=300):
                prompt = gr.Textbox(EXAMPLES[0], lines=4, label="Prompt", max_length=lim.prompt_chars)
                gr.Examples([[e] for e in EXAMPLES], [prompt], label="Example prompts", cache_examples=False,
                            api_name="load_example", **PRIVATE)
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", min_width=90)
                    stop_btn = gr.Button("Stop", variant="stop", interactive=False, min_width=70)
                    more = gr.Button("Continue", elem_id="continue", min_width=90)  # from the output
                with gr.Accordion("Sampling settings", open=True, elem_id="sampling"):
                    controls = [knob_slider(k, *ranges.get(k.name, (None, None)), DEFAULTS[k.name]) for k in KNOBS]
                    controls.append(gr.Number(DEFAULTS["seed"], label="Seed", step=1, minimum=SEED.low,
                                              info="the same seed and settings give the same text; -1 = a new "
                                                   "one each time (the line under the output says which)"))
                    controls.append(gr.Textbox(DEFAULTS["stop"], label="Stop strings", max_length=200,
                                               info=r"comma-separated; \n is a newline, e.g. \n\n"))
            with gr.Column(scale=3, min_width=300):
                output = gr.Textbox(lines=20, max_lines=40, label="Output (prompt + generated text)",
                                    interactive=False, buttons=["copy"], elem_id="output")
                stats = gr.Markdown("Generation stats appear here after a run.", elem_id="stats")
        run_id = gr.State(None)  # the streaming run's, for Stop (a State must sit inside a tab, not among the Tabs)
    # the output becomes the prompt (its end, where the prompt is too short for all of it), ready for Generate
    more.click(lambda text: (text or "")[-lim.prompt_chars:], [output], [prompt], queue=False, **PRIVATE)
    # Generate is off while a run streams and Stop only then; Stop sets the run's flag, and the run ends itself
    # with its text and a last line (Gradio's cancels would end it mid-update, with nothing said)

    def begin():
        return halts.begin(), gr.update(interactive=False), gr.update(interactive=True)

    def end(rid):
        halts.end(rid)
        return None, gr.update(interactive=True), gr.update(interactive=False)

    go.click(begin, None, [run_id, go, stop_btn], queue=False, js=SHOW_OUTPUT, **PRIVATE) \
        .then(gpu(generate_handler(models, halts)), [key, run_id, prompt, *controls], [output, stats, run],
              api_name="generate") \
        .then(end, [run_id], [run_id, go, stop_btn], queue=False, **PRIVATE)
    stop_btn.click(halts.halt, [run_id], None, queue=False, api_name="stop", **PRIVATE)
    # a new prompt starts a new run: the Tokens tab then shows the prompt alone
    prompt.change(lambda: None, None, run, api_name="clear_run", queue=False, **PRIVATE)
    top_k = controls[[k.name for k in KNOBS].index("top_k")]

    def switched(dep):  # the vocabulary bounds top-k; the old model's text stays, its stats go
        dep.success(lambda k: (gr.update(maximum=min(200, session_model(models, k).vocab_size)),
                               "Generation stats appear here after a run."), [key], [top_k, stats], **PRIVATE)
    return prompt, switched


def tokens_tab(models: Models, key: gr.State, run: gr.State, prompt: gr.Textbox) -> Callable:
    """The last run's text, each token's background its probability (or its id); a click shows the model's
    alternatives there."""
    with gr.Tab("Tokens", id="tokens") as tab:
        with gr.Row():
            color_by = gr.Radio(["probability", "id"], value="probability", label="Colour tokens by", scale=0,
                                min_width=220)
            with gr.Column(min_width=300):  # (a Markdown's own min_width does not make a phone's row wrap)
                summary = gr.Markdown(NO_TOKENS, elem_id="tokens-summary")
        with gr.Row():  # the details beside the tokens on a wide screen, under them on a phone
            with gr.Column(scale=3, min_width=300):  # (a gr.HTML's own scale is not applied)
                view = gr.HTML(tokenview.empty_html(NO_TOKENS), css_template=tokenview.STYLE,
                               js_on_load=tokenview.view_js("token-details"), elem_id="token-view",
                               label="Prompt and generated tokens", show_label=True, container=True, padding=True)
            with gr.Column(scale=2, elem_id="token-details", min_width=300):
                info = gr.Markdown(PICK_A_TOKEN)
                alternatives = gr.HTML("", css_template=tokenview.STYLE, elem_id="alternatives")
    for name, trigger in (("show_tokens", tab.select), ("recolor_tokens", color_by.change)):
        trigger(gpu(on(models, "show_tokens")), [key, run, prompt, color_by], [view, summary, run], api_name=name,
                **PRIVATE)
    view.select(on(models, "token_details"), [key, run], [info, alternatives], api_name="token_details",
                **PRIVATE)

    def switched(dep):  # another model's tokenizer: the old run's ids mean nothing to it
        dep.success(lambda: (None, "", NO_TOKENS, PICK_A_TOKEN, ""), None, [run, view, summary, info, alternatives],
                    **PRIVATE)
    return switched


def tokenizer_tab(models: Models, key: gr.State) -> Callable:
    """Live tokenization with ids and pre-split chunks, merge trees, and the vocabulary."""
    pg = models.first
    lim, tok = pg.limits, pg.tokenizer
    ids0, tokens0, chunks0, counts0 = pg.explore(EXPLORER_TEXT)
    vocab0, vocab_count0 = pg.search_vocab("")
    with gr.Tab("Tokenizer", id="tokenizer"):
        text = gr.Textbox(EXPLORER_TEXT, lines=4, label="Text (tokenized as you type)", max_length=lim.text_chars)
        counts = gr.Markdown(counts0, elem_id="counts")
        tokens = gr.HTML(tokens0, css_template=tokenview.STYLE, js_on_load=tokenview.view_js("merge-tree"),
                         label="Tokens with their ids (click one for its merge tree)", show_label=True,
                         container=True, padding=True, elem_id="tokenizer-tokens")
        ids_box = gr.Textbox(ids0, label="Token ids", interactive=False, buttons=["copy"], elem_id="token-ids")
        chunks = gr.HighlightedText(chunks0[0], color_map=chunks0[1], show_inline_category=False,
                                    label="Pre-split chunks (merges never cross them)", elem_id="chunks")
        with gr.Row():
            with gr.Column(scale=3, min_width=300):
                query = gr.Textbox("", label="Search the vocabulary (click a row for its merge tree)",
                                   max_length=lim.query_chars, placeholder="text (' the' or '·the') or an id")
                vocab_count = gr.Markdown(vocab_count0, elem_id="vocab-count")
                vocab = gr.Dataframe(vocab0, headers=viz.VOCAB_HEADERS, interactive=False, max_height=300,
                                     datatype=["number", "str", "number", "str"], elem_id="vocab")
            with gr.Column(scale=2, min_width=300, elem_id="merge-tree"):
                # text, checked by the handler: a Number shows a stray 0 when empty, and its bounds would refuse an id
                # out of range with an error badge and a traceback
                token_id = gr.Textbox("", label="Token id", info=f"0 to {tok.vocab_size - 1:,}", max_length=20,
                                      placeholder="e.g. 104, then Enter")
                tree = gr.Code(NO_TREE, label="Merge tree: how the token was built from bytes", language=None,
                               show_line_numbers=False, interactive=False)
        with gr.Accordion("Special tokens", open=False):
            specials = gr.Dataframe(viz.special_rows(tok), headers=["id", "token"], interactive=False)
    explore = [key, text], [ids_box, tokens, chunks, counts]
    # .change, not .input: .input sent the box's value from before the last key, so Backspace, Delete, a cut or
    # IME input left the tokens one edit behind (and an emptied box showed the old ones)
    text.change(on(models, "tokenize"), *explore, api_name="tokenize", trigger_mode="always_last")
    tokens.select(on(models, "select_token"), [key, text], [token_id, tree], api_name="select_token", **PRIVATE)
    vocab.select(on(models, "vocab_tree"), [key], [token_id, tree], api_name="vocab_tree", **PRIVATE)
    token_id.submit(on(models, "merge_tree"), [key, token_id], [tree], api_name="merge_tree")
    query.change(on(models, "search_vocab"), [key, query], [vocab, vocab_count], api_name="search_vocab",
                 trigger_mode="always_last")

    def other_model(k, q):
        pg = session_model(models, k)
        return (gr.update(info=f"0 to {pg.tokenizer.vocab_size - 1:,}", value=None), NO_TREE, *pg.search_vocab(q),
                viz.special_rows(pg.tokenizer))

    def switched(dep):
        dep.success(on(models, "tokenize"), *explore, **PRIVATE)
        dep.success(other_model, [key, query], [token_id, tree, vocab, vocab_count, specials], **PRIVATE)
    return switched


def model_tab(models: Models, key: gr.State, timer: gr.Timer, header: gr.Markdown, run: gr.State) -> Callable:
    """The config and the training summary in words, the loss curves with a note on the fit (live while the run
    trains: the page's header too), and every attention head of a layer."""
    pg = models.first
    lim, cfg = pg.limits, pg.config
    tables = {"interactive": False, "max_height": 2000, "wrap": True, "column_widths": ["24%", "16%", "60%"]}
    with gr.Tab("Model", id="model") as tab:
        with gr.Row():
            # tall enough for every row: a table that scrolls inside its box hides half of it
            config = gr.Dataframe(viz.config_rows(cfg), headers=["config", "value", "what it is"],
                                  label=config_label(pg), elem_id="model-config", **tables)
            summary = gr.Dataframe(pg.summary(), headers=["training", "value", "what it is"],
                                   label="Training summary", elem_id="training-summary", **tables)
        curves = gr.HTML(curve_svg(pg.metric_rows(), "Loss curves"), elem_id="model-curves")
        fit = gr.Markdown(viz.fit_note(pg.metric_rows()), elem_id="fit-note")
        attn = attention_view(models, key, tab, run)
        lens = layer_guesses(models, key, tab, lim)
        shown = gr.State(None)  # the curves this page shows (in the tab: a State among the Tabs is taken for one)

    def live(k, shown):  # a run's model whose metrics changed (it trains): its curves, summary and header again
        version = models.metrics_version(k)
        if version is None or (k, version) == shown:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), shown
        pg = session_model(models, k)  # a better best/ saved meanwhile is loaded now
        rows = pg.metric_rows(fresh=True)
        return curve_svg(rows, "Loss curves"), viz.fit_note(rows), pg.summary(), pg.header(), (k, version)

    timer.tick(live, [key, shown], [curves, fit, summary, header, shown], **POLL)

    def other_model(k):
        pg = session_model(models, k)
        c = pg.config
        return (gr.update(value=viz.config_rows(c), label=config_label(pg)), pg.summary(),
                curve_svg(pg.metric_rows(), "Loss curves"), viz.fit_note(pg.metric_rows()),
                gr.update(choices=[str(i) for i in range(c.n_layer)], value="0"),
                gr.update(choices=["mean"] + [str(h) for h in range(c.n_head)], value="mean"),
                gr.update(label=f"Short text (its first {min(lim.attention_tokens, c.block_size)} tokens are shown)"),
                "", None)

    def switched(dep):
        dep.success(other_model, [key], [config, summary, curves, fit, *attn, lens], **PRIVATE)
    return switched


def attention_view(models: Models, key: gr.State, tab: gr.Tab, run: gr.State) -> list:
    """The Model tab's attention (laid out where it is called): every head of a layer as a small picture, one
    large; on a typed text or the last generation. Returns [layer, head, text, view] (a new model resets them)."""
    lim, cfg = models.first.limits, models.first.config
    gr.Markdown("### Attention\nWhere each token looks back to: every head of a layer at once (click one to "
                "see it large).")
    attn_limit = min(lim.attention_tokens, cfg.block_size)
    with gr.Row():
        text = gr.Textbox(ATTENTION_TEXT, label=f"Short text (its first {attn_limit} tokens are shown)",
                          scale=3, max_length=lim.prompt_chars, min_width=260)
        layer = gr.Dropdown([str(i) for i in range(cfg.n_layer)], value="0", label="Layer", scale=1, min_width=100)
        head = gr.Dropdown(["mean"] + [str(h) for h in range(cfg.n_head)], value="mean", label="Head (large)",
                           scale=1, min_width=100)
    with gr.Row():
        show = gr.Button("Show attention")
        last = gr.Button("On the last generation", elem_id="attention-last")
    view = gr.HTML(js_on_load=attention.HEADS_JS, elem_id="attention")
    attn = gpu(on(models, "attention")), [key, text, layer, head], [view]
    show.click(*attn, api_name="attention")
    for name, trigger in (("attention_layer", layer.change), ("attention_head", head.change),
                          ("attention_tab", tab.select)):
        trigger(*attn, api_name=name, **PRIVATE)
    last.click(on(models, "last_generation"), [key, run], [text], api_name="last_generation", **PRIVATE) \
        .success(*attn, **PRIVATE)

    def pick_head(evt: gr.SelectData):  # a small picture clicked: that head, large
        return evt.value

    view.select(pick_head, None, [head], **PRIVATE)
    return [layer, head, text, view]


def layer_guesses(models: Models, key: gr.State, tab: gr.Tab, lim: Limits) -> gr.Dataframe:
    """The Model tab's "what each layer predicts" (laid out where it is called); returns its table."""
    gr.Markdown("### What each layer predicts\nThe output head applied after each layer: the model's guess for "
                "the next token, forming layer by layer (the last row is its prediction).")
    with gr.Row():
        text = gr.Textbox(ATTENTION_TEXT, label="Text (what comes after it?)", scale=3, max_length=lim.prompt_chars)
        show = gr.Button("Show the guesses", scale=1)
    lens = gr.Dataframe(headers=["after layer", "1st guess", "2nd", "3rd"], interactive=False, elem_id="layer-guesses")
    guesses = gpu(on(models, "layer_predictions")), [key, text], [lens]
    show.click(*guesses, api_name="layer_predictions")
    tab.select(*guesses, api_name="layer_predictions_tab", **PRIVATE)
    return lens


def config_label(pg: Playground) -> str:
    return f"Model config · {pg.model.num_params():,} parameters"


# -----------------------------------------------------------------------------
# the page


def model_choices(models: Models, st: Studio, visitor: str = "") -> list[tuple[str, str]]:
    """The selector's entries: the model opened first, the bundled one, and every run with a saved best/ (in a
    public studio: the visitor's own runs and the runs no visitor started, the Space owner's)."""
    first = models.first
    choices = [(f"{first.name} (opened at start)", FIRST)]
    opened = first.path.resolve() if first.path is not None else None
    if opened != BUNDLED.resolve() and (BUNDLED / "config.json").is_file():
        choices.append(("bundled model (assets/model)", BUNDLED_KEY))
    for r in worker.list_runs(st.settings.runs_dir, metrics=False):
        if r.has_best and opened != (st.settings.runs_dir / r.name / "best").resolve() \
                and (st.mine(r, visitor) or public.provided(r)):
            choices.append((studio.run_label(r), f"run/{r.name}"))
    return choices


def may_open(models: Models, st: Studio, k: str, visitor: str) -> bool:
    """Whether this visitor may open the model `k`: a run of another visitor's reads as no model at all."""
    m = RUN_KEY.fullmatch(k or "")
    if not st.settings.public or not m:
        return True
    out = worker.find_run(st.settings.runs_dir, m[1])
    s = worker.run_status(out, metrics=False) if out is not None else None
    return s is not None and (st.mine(s, visitor) or public.provided(s))


def build_app(model, tokenizer, meta: dict, name: str = "model", metrics: list[dict] | None = None,
              train_config: dict | None = None, limits: Limits | None = None, stream_interval: float = 0.05,
              settings: StudioSettings | None = None) -> gr.Blocks:
    """The studio's Blocks, queued; the caller launches it. The model given is the one each session starts on."""
    first = Playground(model, tokenizer, meta, name, metrics, train_config, limits, stream_interval)
    st = Studio(settings or StudioSettings.from_env())
    if ZERO_GPU:
        st.slicer = zero_gpu_slicer(st.settings.slice_seconds)
    st.restart_line()
    public_mode = st.settings.public  # visitors pick no Hub id: the Space's owner chooses the models it holds
    models = Models(first, st.settings.runs_dir, keep=st.settings.max_models, limits=limits,
                    stream_interval=stream_interval, allow_hub=not public_mode)
    # no calls home; a public studio's uploads and downloads leave Gradio's cache after an hour
    with gr.Blocks(title="scratchgpt studio", analytics_enabled=False,
                   delete_cache=(3600, 3600) if public_mode else None) as demo:
        key = gr.State(FIRST)  # this session's model
        visitor = gr.Textbox("", visible=False)  # this browser's key to its runs (VISITOR_KEY fills it)
        with gr.Row(equal_height=True):
            header = gr.Markdown(first.header(), elem_id="header")
            selector = gr.Dropdown(model_choices(models, st), value=FIRST, label="Model", allow_custom_value=True,
                                   info="a run or the bundled model" + ("" if public_mode else
                                                                         ", or a Hub repo id USER/NAME"),
                                   elem_id="model-select", scale=0, min_width=320)
        run = gr.State(None)  # the Tokens tab's viz.TokenRun
        timer = gr.Timer(2.0)  # the live views' refresh
        with gr.Tabs() as tabs:
            prompt, generate_switched = generate_tab(models, key, run)
            hooks = [generate_switched, tokens_tab(models, key, run, prompt), tokenizer_tab(models, key),
                     model_tab(models, key, timer, header, run)]
            compare_tab(Compare(models, lambda k, v: may_open(models, st, k, v), stream_interval),
                        lambda v: model_choices(models, st, v), visitor, EXAMPLES[0], EXPLORER_TEXT, gpu)
            runs, open_btn, plan, settings_inputs = train_tab(st, timer, visitor)

        gr.api(st.api_runs, api_name="list_runs")  # (outside the Tabs: an endpoint among them is taken for a tab)

        def switch(k, v):
            if not may_open(models, st, k, v):
                raise fail(f"no model {k!r} here: pick one from the list")
            pg = session_model(models, k)
            return k, pg.header()

        switched = selector.change(switch, [selector, visitor], [key, header], api_name="switch_model")
        for hook in hooks:
            hook(switched)
        open_btn.click(lambda name, v: (gr.update(choices=model_choices(models, st, v), value=f"run/{name}"),
                                        gr.Tabs(selected="generate")), [runs, visitor], [selector, tabs], **PRIVATE)
        selector.focus(lambda v: gr.update(choices=model_choices(models, st, v)), [visitor], [selector], **PRIVATE)
        demo.load(None, js=FOLD_ON_PHONE)
        demo.load(None, None, [visitor], js=VISITOR_KEY, **PRIVATE) \
            .then(lambda v: st.runs_update(None, key=v), [visitor], [runs], **PRIVATE)
        demo.load(st.plan, settings_inputs, [plan], **PRIVATE)
    return demo.queue(max_size=first.limits.queue_size, default_concurrency_limit=1)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="app.py", description="The scratchgpt studio (Gradio).")
    p.add_argument("--checkpoint", help="checkpoint directory (OUT, OUT/best or OUT/last) or a Hub repo id; "
                   f"default ${ENV_CHECKPOINT}, else the newest checkpoints/*/best, else assets/model/")
    p.add_argument("--runs", help="where runs are listed and the page's runs are written (default $SCRATCHGPT_RUNS, "
                   "else checkpoints/)")
    p.add_argument("--train-threads", type=int, help="torch threads of a training run; the server keeps the rest "
                   "(default $SCRATCHGPT_TRAIN_THREADS, else half the cores)")
    p.add_argument("--host", default=None, help="address to serve on (default 127.0.0.1, or $GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860, or $GRADIO_SERVER_PORT)")
    args = p.parse_args(argv)
    if args.train_threads is not None and args.train_threads < 1:
        p.error("--train-threads must be at least 1")
    try:
        settings = StudioSettings.from_env(args.runs, args.train_threads)
        model, tokenizer, meta, name, metrics, train_config = load_playground(find_checkpoint(args.checkpoint))
    except (CheckpointError, OSError, ValueError) as e:
        print(f"app.py: error: {e}", file=sys.stderr)
        return 1
    torch.set_num_threads(settings.server_threads)
    demo = build_app(model, tokenizer, meta, name, metrics, train_config, settings=settings)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=settings.max_corpus_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
