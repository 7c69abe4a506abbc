"""The scratchgpt playground: generate with your model, see its token probabilities, explore its tokenizer.

    python app.py [--checkpoint DIR_OR_REPO_ID] [--host 127.0.0.1] [--port 7860]

The model: --checkpoint (a directory or a Hub repo id), else $SCRATCHGPT_CHECKPOINT, else the newest
checkpoints/*/best under the current directory, else the bundled model in assets/model/. The handlers come first:
methods of Playground that check a request and call llm/ (what they show is computed and worded by llm/viz.py);
tests call them without a server. Then one builder function per tab lays out its components and wires their
events; build_app puts the tabs together and main() parses the flags and launches.
"""

from __future__ import annotations

try:  # ZeroGPU on Hugging Face Spaces: `spaces` must be imported before anything touches CUDA
    import spaces
except ImportError:
    spaces = None

import inspect
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
import torch

from llm import viz
from llm.checkpoint import CONFIG, CheckpointError, load_checkpoint, metrics_dir, read_config, read_metrics
from llm.cli import ArgumentParser
from llm.config import SettingError
from llm.hub import ENV_CHECKPOINT, default_checkpoint, is_hub_spec, resolve_checkpoint
from llm.sample import KNOBS, Knob, SampleConfig, generate, parse_stop, prepare_prompt

ROOT = Path(__file__).resolve().parent
BUNDLED = ROOT / "assets" / "model"
# ZeroGPU runs a decorated function in a forked worker and pickles its arguments and results, so it wraps the bound
# handlers (the model is inherited by the fork, never pickled) and handlers return plain data (gr.update dicts).
# Outside ZeroGPU spaces.GPU returns the function unchanged.
gpu = spaces.GPU if spaces is not None else (lambda fn: fn)

EXAMPLES = ["ROMEO:\n", "JULIET:\nO Romeo, Romeo,", "First Citizen:\nBefore we proceed any further,",
            "KING RICHARD III:\nNow is the winter of"]
EXPLORER_TEXT = "First Citizen:\nWe are accounted poor citizens, the patricians good.\nWhat authority surfeits on 🍞?"
ATTENTION_TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?"
SEED = Knob("seed", "seed", -1, 2**32 - 1, integer=True, note="-1 = random")
SETTINGS = [k.name for k in KNOBS] + ["seed", "stop"]  # the Generate tab's controls after the prompt, in order
DEFAULTS = {**{k.name: getattr(SampleConfig(), k.name) for k in KNOBS}, "max_new_tokens": 200, "seed": -1,
            "stop": ""}
# Playground.generate's signature, made from SETTINGS: Gradio names the API's parameters after it
GENERATE_SIGNATURE = inspect.Signature(
    [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("self", "prompt")]
    + [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=DEFAULTS[n]) for n in SETTINGS])


@dataclass
class Limits:
    """What one request may ask for. Enforced in the handlers: Gradio checks slider bounds, but not a textbox's
    length or a slider's step on API calls, and the handlers are callable directly too."""

    prompt_chars: int = 2000
    new_tokens: int = 512
    text_chars: int = 10_000  # tokenizer explorer
    attention_tokens: int = 48
    query_chars: int = 100
    vocab_rows: int = 200
    time_s: float = 60.0  # wall-clock per generate request
    queue_size: int = 32
    temperature: float = 2.0
    repetition_penalty: float = 2.0
    stop_strings: int = 8


def fail(message: str) -> gr.Error:
    """The error a bad request gets: its message is shown to the user; no traceback in the server log either."""
    return gr.Error(message, print_exception=False)


def check_text(name: str, value, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise fail(f"{name} must be text")
    if len(value) > limit:
        raise fail(f"{name} is {len(value):,} characters long; the limit is {limit:,} characters")
    return value


def check_number(knob: Knob, value, low: float | None = None, high: float | None = None) -> int | float:
    """knob.check in words for people, as a gr.Error."""
    try:
        return knob.check(value, low, high, for_people=True)
    except SettingError as e:
        raise fail(str(e)) from None


def find_checkpoint(cli_value: str | None = None, cwd: str | os.PathLike = ".") -> str:
    """--checkpoint, else $SCRATCHGPT_CHECKPOINT, else the newest checkpoints/*/best (by mtime) under cwd,
    else the bundled assets/model/. CheckpointError (one line) when there is none."""
    if cli_value is not None and not cli_value.strip():
        raise CheckpointError("--checkpoint is empty: give a checkpoint directory or a Hub repo id USER/NAME")
    spec = default_checkpoint(cli_value)
    if spec:
        return spec
    runs = [p for p in Path(cwd).glob("checkpoints/*/best") if p.is_dir()]
    if runs:
        return str(max(runs, key=lambda p: p.stat().st_mtime))
    if (BUNDLED / CONFIG).is_file():
        return str(BUNDLED)
    raise CheckpointError("no model to open: pass --checkpoint DIR, set SCRATCHGPT_CHECKPOINT, or train one with "
                          "`python train_cli.py --corpus FILE` (it writes checkpoints/<name>/best); the bundled "
                          f"model {BUNDLED} is missing too")


def model_name(spec: str, path: Path) -> str:
    if is_hub_spec(spec):
        return spec  # a Hub repo id: the snapshot path means nothing to the reader
    if path.resolve() == BUNDLED.resolve():
        return "bundled model (assets/model)"
    return f"{path.parent.name}/{path.name}" if path.name in ("best", "last") else path.name


def run_metrics(path: Path) -> list[dict]:
    """metrics.jsonl inside the checkpoint (Hub repos, Spaces) or beside it (OUT/metrics.jsonl, assets/)."""
    d = metrics_dir(path)
    return read_metrics(d) if d else []


def load_playground(spec: str, device: str | None = None) -> tuple:
    """(model, tokenizer, meta, name, metrics, train_config) for a checkpoint spec."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, meta = load_checkpoint(resolve_checkpoint(spec), device=device)
    path = Path(meta["path"])
    _, train_config = read_config(path)
    return model, tokenizer, meta, model_name(spec, path), run_metrics(path), train_config


# -----------------------------------------------------------------------------
# handlers


class Playground:
    """The loaded model and every handler the UI calls. Handlers check their inputs (gr.Error with the limit in
    words) and return what the components show; they are plain methods, so tests call them without a server."""

    def __init__(self, model, tokenizer, meta: dict, name: str = "model", metrics: list[dict] | None = None,
                 train_config: dict | None = None, limits: Limits | None = None, stream_interval: float = 0.05):
        self.model, self.tokenizer, self.meta = model.eval(), tokenizer, meta
        self.name, self.metrics, self.train_config = name, metrics or [], train_config or {}
        self.limits = limits or Limits()
        # Seconds between streamed updates: Gradio does not run the generator ahead while it sends one, so an
        # update per token would cap a fast model's speed (bench/README.md, Playground).
        self.stream_interval = stream_interval
        self.config = model.config
        self.vocab_size = min(tokenizer.vocab_size, model.config.vocab_size)
        self.device = str(next(model.parameters()).device)

    def header(self) -> str:
        return viz.header_markdown(self.name, self.model.num_params(), self.meta, self.config, self.device)

    def sample_ranges(self) -> dict[str, tuple[float | None, float | None]]:
        """Where this app narrows a knob's valid range (low, high; None = the knob's own): the request limits."""
        lim = self.limits
        return {"max_new_tokens": (None, lim.new_tokens), "temperature": (None, lim.temperature),
                "top_k": (None, self.vocab_size), "repetition_penalty": (1, lim.repetition_penalty)}

    def sample_config(self, settings: dict) -> SampleConfig:
        """The Generate tab's settings (named as in SETTINGS) -> a SampleConfig, each checked once, in words."""
        seed = -1 if settings["seed"] is None else check_number(SEED, settings["seed"])
        stop = parse_stop(check_text("stop strings", settings["stop"], 200))
        if len(stop) > self.limits.stop_strings:
            raise fail(f"at most {self.limits.stop_strings} stop strings; got {len(stop)}")
        try:
            return SampleConfig(**{k.name: settings[k.name] for k in KNOBS}, stop=stop,
                                seed=None if seed == -1 else seed, num_alternatives=10,
                                ranges=self.sample_ranges(), for_people=True)
        except SettingError as e:
            raise fail(str(e)) from None

    def _prompt_ids(self, prompt: str) -> tuple[list[int], int]:
        """Prompt -> (the ids the model sees, tokens cropped from the front)."""
        try:
            ids, cropped = prepare_prompt(self.tokenizer, prompt, self.config.block_size)
        except ValueError as e:
            raise fail(str(e)) from None
        return ids[cropped:], cropped

    def generate(self, *args, **kwargs) -> Iterator[tuple[str, str, viz.TokenRun]]:
        """generate(prompt, max_new_tokens=200, temperature=0.8, ..., seed=-1, stop=""): the settings in SETTINGS
        order or by name (GENERATE_SIGNATURE). Streams (prompt + text so far, stats line, the token view's run)
        as tokens arrive."""
        bound = GENERATE_SIGNATURE.bind(self, *args, **kwargs)  # TypeError for a missing prompt or an unknown name
        bound.apply_defaults()
        settings = {k: v for k, v in bound.arguments.items() if k != "self"}
        prompt = check_text("the prompt", settings.pop("prompt"), self.limits.prompt_chars)
        cfg = self.sample_config(settings)
        ids, cropped = self._prompt_ids(prompt)
        run = viz.TokenRun.of_prompt(ids)
        t0 = time.perf_counter()
        yield prompt, "generating…", run
        events = generate(self.model, self.tokenizer, ids, cfg)
        try:
            yield from self._stream(events, prompt, run, cropped, t0)
        except ValueError as e:  # the sampler's one line: non-finite scores, buffers that do not fit
            raise fail(str(e)) from None
        finally:
            events.close()

    def _stream(self, events: Iterator, text: str, run: viz.TokenRun, cropped: int, t0: float):
        """generate's updates from the sampler's events (asked for at t0), one per stream_interval at most."""
        n, reason, first, last = 0, "length", None, t0
        for ev in events:
            n += 1
            now = time.perf_counter()
            first = first or now - t0
            run.add(ev.token_id, ev)
            text += ev.text
            reason = ev.finish_reason or reason
            if now - t0 > self.limits.time_s:
                reason = f"the time limit of {self.limits.time_s:g} s per request"
                break
            if ev.text and (n == 1 or now - last >= self.stream_interval):
                last = now  # the running count stays on screen if the user presses Stop
                yield text, viz.progress_line(n, now - t0), run
        yield text, viz.stats_markdown(n, time.perf_counter() - t0, first, reason, cropped), run

    generate.__signature__ = GENERATE_SIGNATURE

    def show_tokens(self, run: viz.TokenRun | None, prompt: str, color_by: str):
        """The Tokens tab: the last run (or the prompt alone) as coloured tokens, and a summary line."""
        if color_by not in ("probability", "id"):
            raise fail("colour by must be 'probability' or 'id'")
        if not run:
            ids, _ = self._prompt_ids(check_text("the prompt", prompt, self.limits.prompt_chars))
            run = viz.TokenRun.of_prompt(ids)
        run.score_prompt(self.model, self.vocab_size)
        value, colors = viz.highlight(viz.token_spans(self.tokenizer, *run.shown(), color_by))
        return gr.update(value=value, color_map=colors), viz.tokens_summary(run, color_by), run

    def token_details(self, run: viz.TokenRun | None, evt: gr.SelectData):
        """A token chosen in the Tokens tab -> a line about it and its top alternatives."""
        i = evt.index if isinstance(evt.index, int) else -1
        if not run or not 0 <= i < len(run.ids):
            raise fail("choose one of the tokens shown")
        source = "prompt" if i < run.n_prompt else "generated"
        t, step = run.ids[i], run.steps[i]
        rows = viz.alternative_rows(self.tokenizer, step, t) if step is not None else []
        return viz.step_markdown(self.tokenizer, t, step, i, source), rows

    def explore(self, text: str) -> tuple[str, tuple, tuple, str]:
        """(ids as JSON, (tokens labelled by id, colours), (pre-split chunks, colours), counts line)."""
        text = check_text("the text", text, self.limits.text_chars)
        chunks = self.tokenizer.split(text)
        ids = self.tokenizer.encode(text)
        counts = viz.counts_markdown(viz.text_counts(text, ids, len(chunks)))
        tokens = viz.highlight(viz.token_spans(self.tokenizer, ids, color_by="id"))
        return json.dumps(ids), tokens, viz.chunk_highlight(chunks), counts

    def tokenize(self, text: str):
        """The Tokenizer tab: (ids as JSON, tokens labelled by id, pre-split chunks, counts line)."""
        ids, (tokens, colors), (chunks, chunk_colors), counts = self.explore(text)
        return ids, gr.update(value=tokens, color_map=colors), gr.update(value=chunks, color_map=chunk_colors), counts

    def merge_tree(self, token_id) -> str:
        t = check_number(Knob("token_id", "token id", 0, self.tokenizer.vocab_size - 1, integer=True), token_id)
        return viz.merge_tree_text(self.tokenizer, t)

    def select_token(self, text: str, evt: gr.SelectData):
        """A token clicked in the Tokenizer tab -> (its id, its merge tree)."""
        text = check_text("the text", text, self.limits.text_chars)
        ids = self.tokenizer.encode(text)
        i = evt.index if isinstance(evt.index, int) else -1
        if not 0 <= i < len(ids):
            raise fail("choose one of the tokens shown")
        return ids[i], viz.merge_tree_text(self.tokenizer, ids[i])

    def search_vocab(self, query: str):
        query = check_text("the search", query, self.limits.query_chars)
        rows, total = viz.search_vocab(self.tokenizer, query, self.limits.vocab_rows)
        return rows, viz.vocab_count_line(len(rows), total, query)

    def attention(self, text: str, layer, head: str) -> str:
        """Heatmap of one layer's attention (one head, or the mean over heads) for a short text."""
        text = check_text("the text", text, self.limits.prompt_chars)
        if isinstance(layer, str) and layer.isdecimal():  # the dropdown's choices are text, as the API shows them
            layer = int(layer)
        layer = check_number(Knob("layer", "layer", 0, self.config.n_layer - 1, integer=True), layer)
        if head not in ["mean"] + [str(h) for h in range(self.config.n_head)]:
            raise fail(f"head must be 'mean' or a number from 0 to {self.config.n_head - 1}")
        limit = min(self.limits.attention_tokens, self.config.block_size)
        ids = self.tokenizer.encode(text)
        if not ids:
            raise fail("type a short text to see its attention")
        att = viz.attention_maps(self.model, ids[:limit])[layer]  # (H, T, T)
        w = att.mean(0) if head == "mean" else att[int(head)]
        labels = [viz.token_display(self.tokenizer, t) for t in ids[:limit]]
        return viz.attention_html(labels, w.tolist(), viz.attention_caption(layer, head, limit, len(ids)))


# -----------------------------------------------------------------------------
# layout and wiring: one function per tab


PRIVATE = dict(api_visibility="private")  # events the page needs that are no API of the app


def knob_slider(knob: Knob, low: float | None, high: float | None, value: float) -> gr.Slider:
    """A slider for a sampling knob over the app's range (its own `slider` ends where it has them)."""
    lo, hi = knob.low if low is None else low, knob.high if high is None else high
    if knob.slider:
        lo, hi = knob.slider[0], min(knob.slider[1], hi)
    return gr.Slider(lo, hi, value, step=knob.step, label=knob.label[:1].upper() + knob.label[1:],
                     info=knob.note or None)  # no precision=0: Gradio's int() of a NaN is an error with no words


def generate_tab(pg: Playground, run: gr.State) -> gr.Textbox:
    """Prompt, settings, streamed output. Returns the prompt box (the Tokens tab shows it when there is no run)."""
    lim, ranges = pg.limits, pg.sample_ranges()
    with gr.Tab("Generate"):
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(EXAMPLES[0], lines=4, label="Prompt", max_length=lim.prompt_chars)
                with gr.Row():
                    go = gr.Button("Generate", variant="primary")
                    stop_btn = gr.Button("Stop", variant="stop")
                output = gr.Textbox(lines=14, max_lines=30, label="Output (prompt + generated text)",
                                    interactive=False, buttons=["copy"], elem_id="output")
                stats = gr.Markdown("Generation stats appear here after a run.", elem_id="stats")
                gr.Examples([[e] for e in EXAMPLES], [prompt], label="Example prompts", cache_examples=False,
                            api_name="load_example", **PRIVATE)
            with gr.Column(scale=2):
                controls = [knob_slider(k, *ranges.get(k.name, (None, None)), DEFAULTS[k.name]) for k in KNOBS]
                controls.append(gr.Number(DEFAULTS["seed"], label="Seed", info=SEED.note, step=1,
                                          minimum=SEED.low))
                controls.append(gr.Textbox(DEFAULTS["stop"], label="Stop strings", max_length=200,
                                           info=r"comma-separated; \n is a newline, e.g. \n\n"))
    gen = go.click(gpu(pg.generate), [prompt, *controls], [output, stats, run], api_name="generate")
    stop_btn.click(None, None, None, cancels=[gen], api_name="stop", **PRIVATE)
    # a new prompt starts a new run: the Tokens tab then shows the prompt alone
    prompt.change(lambda: None, None, run, api_name="clear_run", queue=False, **PRIVATE)
    return prompt


def tokens_tab(pg: Playground, run: gr.State, prompt: gr.Textbox) -> None:
    """The last run's tokens coloured by probability (or id); a click shows the model's alternatives."""
    with gr.Tab("Tokens") as tab:
        color_by = gr.Radio(["probability", "id"], value="probability", label="Colour tokens by")
        summary = gr.Markdown("Generate some text, or open this tab to see the prompt's tokens.")
        view = gr.HighlightedText(label="Prompt and generated tokens", show_legend=False, combine_adjacent=False,
                                  elem_id="token-view")
        info = gr.Markdown()
        alternatives = gr.Dataframe(headers=viz.ALT_HEADERS, label="Top alternatives at this step",
                                    interactive=False, datatype=["str", "str", "number", "number"])
    for name, trigger in (("show_tokens", tab.select), ("recolor_tokens", color_by.change)):
        trigger(gpu(pg.show_tokens), [run, prompt, color_by], [view, summary, run], api_name=name, **PRIVATE)
    view.select(pg.token_details, [run], [info, alternatives], api_name="token_details", **PRIVATE)


def tokenizer_tab(pg: Playground) -> None:
    """Live tokenization with ids and pre-split chunks, merge trees, and the vocabulary."""
    lim, tok = pg.limits, pg.tokenizer
    ids0, tokens0, chunks0, counts0 = pg.explore(EXPLORER_TEXT)
    vocab0, vocab_count0 = pg.search_vocab("")
    with gr.Tab("Tokenizer"):
        text = gr.Textbox(EXPLORER_TEXT, lines=5, label="Text", max_length=lim.text_chars)
        tokenize_btn = gr.Button("Tokenize", variant="primary")
        counts = gr.Markdown(counts0)
        chunks = gr.HighlightedText(chunks0[0], color_map=chunks0[1], show_inline_category=False,
                                    label="Pre-split chunks (merges never cross them)", elem_id="chunks")
        tokens = gr.HighlightedText(tokens0[0], color_map=tokens0[1], label="Tokens with their ids "
                                    "(click one for its merge tree)", elem_id="tokenizer-tokens")
        ids_box = gr.Textbox(ids0, label="Token ids", interactive=False, buttons=["copy"])
        with gr.Row():
            token_id = gr.Number(None, label="Token id", step=1, minimum=0, maximum=tok.vocab_size - 1,
                                 scale=1)
            tree = gr.Code(None, label="Merge tree: how the token was built from bytes", language=None,
                           show_line_numbers=False, interactive=False, scale=3)
        with gr.Accordion("Vocabulary", open=True):
            query = gr.Textbox("", label="Search the vocabulary", max_length=lim.query_chars,
                               placeholder="text (' the' or '·the') or an id")
            vocab_count = gr.Markdown(vocab_count0)
            vocab = gr.Dataframe(vocab0, headers=viz.VOCAB_HEADERS, interactive=False, max_height=320,
                                 datatype=["number", "str", "number", "str"])
        with gr.Accordion("Special tokens", open=False):
            gr.Dataframe(viz.special_rows(tok), headers=["id", "token"], interactive=False)
    explore = [text], [ids_box, tokens, chunks, counts]
    tokenize_btn.click(pg.tokenize, *explore, api_name="tokenize")
    text.input(pg.tokenize, *explore, api_name="tokenize_live", trigger_mode="always_last", **PRIVATE)
    tokens.select(pg.select_token, [text], [token_id, tree], api_name="select_token", **PRIVATE)
    token_id.submit(pg.merge_tree, [token_id], [tree], api_name="merge_tree")
    query.input(pg.search_vocab, [query], [vocab, vocab_count], api_name="search_vocab", trigger_mode="always_last")


def model_tab(pg: Playground) -> None:
    """The config, the training summary and loss curves, and an attention heatmap."""
    lim, cfg = pg.limits, pg.config
    with gr.Tab("Model") as tab:
        with gr.Row():
            gr.Dataframe([[k, str(v)] for k, v in vars(cfg).items()], headers=["config", "value"],
                         label=f"Model config · {pg.model.num_params():,} parameters", interactive=False)
            gr.Dataframe(viz.summary_rows(pg.meta, pg.train_config, pg.metrics) or [["", "no training info"]],
                         headers=["training", "value"], label="Training summary", interactive=False)
        points = viz.loss_curve_rows(pg.metrics)
        if points:
            gr.LinePlot(pd.DataFrame(points), x="step", y="loss", color="split", label="Loss curves",
                        color_map={"train": "#2563eb", "val": "#ea580c"}, x_title="step",
                        y_title="loss (nats per token)")
        else:
            gr.Markdown("No metrics.jsonl beside this checkpoint: no loss curves to show.")
        gr.Markdown("### Attention")
        with gr.Row():
            attn_limit = min(lim.attention_tokens, cfg.block_size)
            attn_text = gr.Textbox(ATTENTION_TEXT, label=f"Short text (its first {attn_limit} tokens are shown)",
                                   scale=3, max_length=lim.prompt_chars)
            layer = gr.Dropdown([str(i) for i in range(cfg.n_layer)], value="0", label="Layer", scale=1)
            head = gr.Dropdown(["mean"] + [str(h) for h in range(cfg.n_head)], value="mean", label="Head", scale=1)
        attn_btn = gr.Button("Show attention")
        heatmap = gr.HTML()
    attn = gpu(pg.attention), [attn_text, layer, head], [heatmap]
    attn_btn.click(*attn, api_name="attention")
    for name, trigger in (("attention_layer", layer.change), ("attention_head", head.change),
                          ("attention_tab", tab.select)):
        trigger(*attn, api_name=name, **PRIVATE)


def build_app(model, tokenizer, meta: dict, name: str = "model", metrics: list[dict] | None = None,
              train_config: dict | None = None, limits: Limits | None = None,
              stream_interval: float = 0.05) -> gr.Blocks:
    """The playground's Blocks, queued; the caller launches it."""
    pg = Playground(model, tokenizer, meta, name, metrics, train_config, limits, stream_interval)
    with gr.Blocks(title="scratchgpt playground", analytics_enabled=False) as demo:  # no calls home
        gr.Markdown(pg.header())
        run = gr.State(None)  # the Tokens tab's viz.TokenRun
        with gr.Tabs():
            prompt = generate_tab(pg, run)
            tokens_tab(pg, run, prompt)
            tokenizer_tab(pg)
            model_tab(pg)
    return demo.queue(max_size=pg.limits.queue_size, default_concurrency_limit=1)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="app.py", description="The scratchgpt playground (Gradio).")
    p.add_argument("--checkpoint", help="checkpoint directory (OUT, OUT/best or OUT/last) or a Hub repo id; "
                   f"default ${ENV_CHECKPOINT}, else the newest checkpoints/*/best, else assets/model/")
    p.add_argument("--host", default=None, help="address to serve on (default 127.0.0.1, or $GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860, or $GRADIO_SERVER_PORT)")
    args = p.parse_args(argv)
    try:
        model, tokenizer, meta, name, metrics, train_config = load_playground(find_checkpoint(args.checkpoint))
    except (CheckpointError, OSError, ValueError) as e:
        print(f"app.py: error: {e}", file=sys.stderr)
        return 1
    demo = build_app(model, tokenizer, meta, name, metrics, train_config)
    demo.launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
