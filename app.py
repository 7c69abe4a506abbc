"""The scratchgpt playground: generate with your model, see its token probabilities, explore its tokenizer.

    python app.py [--checkpoint DIR_OR_REPO_ID] [--host 127.0.0.1] [--port 7860]

The model: --checkpoint (a directory or a Hub repo id), else $SCRATCHGPT_CHECKPOINT, else the newest
checkpoints/*/best under the current directory, else the bundled model in assets/model/. The handlers come first:
methods of Playground, plain Python that tests call without a server; what they show is computed by llm/viz.py.
Then build_app lays out the tabs and wires the events; main() parses the flags and launches.
"""

from __future__ import annotations

try:  # ZeroGPU on Hugging Face Spaces: `spaces` must be imported before anything touches CUDA
    import spaces
except ImportError:
    spaces = None

import argparse
import json
import math
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
from llm.checkpoint import CheckpointError, load_checkpoint, metrics_dir, read_config, read_metrics
from llm.hub import ENV_CHECKPOINT, default_checkpoint
from llm.sample import SampleConfig, generate

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


def check_number(name: str, value, low: float, high: float, integer: bool = False, low_open: bool = False,
                 note: str = ""):
    """value as int/float if low <= value <= high (low < value when low_open), else gr.Error in words."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        kind = "a whole number" if integer else "a number"
        lo, hi = (int(low), int(high)) if integer else (f"{low:g}", f"{high:g}")
        span = f"above {lo} and at most {hi}" if low_open else f"from {lo} to {hi}"
        raise fail(f"{name} must be {kind} {span}{note}; got {value!r}")
    return int(value) if integer else float(value)


def parse_stop(text: str, limit: int) -> tuple[str, ...]:
    r"""'\n\n, END' -> ('\n\n', 'END'): comma-separated; \n, \t, \, and \\ are understood."""
    marks = {"\\\\": "\0b", "\\,": "\0c"}  # protect escaped backslashes and commas while splitting
    for k, v in marks.items():
        text = text.replace(k, v)
    out = []
    for part in text.split(","):
        part = part.strip(" ").replace("\\n", "\n").replace("\\t", "\t")
        part = part.replace("\0c", ",").replace("\0b", "\\")
        if part and part not in out:
            out.append(part)
    if len(out) > limit:
        raise fail(f"at most {limit} stop strings; got {len(out)}")
    return tuple(out)


def find_checkpoint(cli_value: str | None = None, cwd: str | os.PathLike = ".") -> str:
    """--checkpoint, else $SCRATCHGPT_CHECKPOINT, else the newest checkpoints/*/best (by mtime) under cwd,
    else the bundled assets/model/. CheckpointError (one line) when there is none."""
    spec = default_checkpoint(cli_value)
    if spec:
        return spec
    runs = [p for p in Path(cwd).glob("checkpoints/*/best") if p.is_dir()]
    if runs:
        return str(max(runs, key=lambda p: p.stat().st_mtime))
    if (BUNDLED / "config.json").is_file():
        return str(BUNDLED)
    raise CheckpointError("no model to open: pass --checkpoint DIR, set SCRATCHGPT_CHECKPOINT, or train one with "
                          "`python train_cli.py --corpus FILE` (it writes checkpoints/<name>/best); the bundled "
                          f"model {BUNDLED} is missing too")


def model_name(spec: str, path: Path) -> str:
    if not Path(spec).exists():
        return spec  # a Hub repo id: the snapshot path means nothing to the reader
    if path.resolve() == BUNDLED.resolve():
        return "bundled model (assets/model)"
    return f"{path.parent.name}/{path.name}" if path.name in ("best", "last") else path.name


def run_metrics(path: Path) -> list[dict]:
    """metrics.jsonl inside the checkpoint (Hub repos, Spaces) or beside it (OUT/metrics.jsonl, assets/)."""
    d = metrics_dir(path)
    return read_metrics(d) if d else []


# -----------------------------------------------------------------------------
# handlers


class Playground:
    """The loaded model and every handler the UI calls. Handlers validate their inputs and raise gr.Error with
    the limit in words; they are plain methods, so tests call them without a server."""

    def __init__(self, model, tokenizer, meta: dict, name: str = "model", metrics: list[dict] | None = None,
                 train_config: dict | None = None, limits: Limits | None = None, stream_interval: float = 0.05):
        self.model, self.tokenizer, self.meta = model.eval(), tokenizer, meta
        self.name, self.metrics, self.train_config = name, metrics or [], train_config or {}
        self.limits = limits or Limits()
        # Seconds between streamed updates. Each update costs the server a few ms, and Gradio does not run the
        # generator ahead meanwhile, so one update per token would cap a fast model at ~150 tokens/s.
        self.stream_interval = stream_interval
        self.config = model.config
        self.vocab_size = min(tokenizer.vocab_size, model.config.vocab_size)
        self.device = str(next(model.parameters()).device)

    def header(self) -> str:
        m = self.meta
        parts = [f"**{viz.escape_markdown(self.name)}**", f"{viz.format_count(self.model.num_params())} parameters"]
        if m.get("val_loss") is not None:
            parts.append(f"val loss {m['val_loss']:.3f}")
        if m.get("bits_per_byte") is not None:
            parts.append(f"{m['bits_per_byte']:.3f} bits per byte")
        if m.get("step") is not None:
            parts.append(f"{m['step']:,} steps")
        c = self.config
        parts.append(f"{c.n_layer} layer{'s' * (c.n_layer != 1)} × {c.n_embd} dims, context {c.block_size} tokens")
        parts.append(f"on {self.device}")
        return "# scratchgpt playground\nModel: " + " · ".join(parts)

    def _prompt_ids(self, prompt: str) -> tuple[list[int], int]:
        """Prompt -> (ids the model sees, tokens cropped from the front). An empty prompt starts at <|endoftext|>."""
        ids = self.tokenizer.encode(prompt)
        if not ids:
            if self.tokenizer.eot_id is None:
                raise fail("type a prompt: this model's tokenizer has no <|endoftext|> token to start from")
            ids = [self.tokenizer.eot_id]
        cropped = max(0, len(ids) - self.config.block_size)
        return ids[cropped:], cropped

    def sample_config(self, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed,
                      stop: str) -> SampleConfig:
        lim = self.limits
        seed = None if seed is None else check_number("seed", seed, -1, 2**32 - 1, integer=True, note=" (-1 = random)")
        seed = None if seed == -1 else seed
        cfg = SampleConfig(
            max_new_tokens=check_number("max new tokens", max_new_tokens, 1, lim.new_tokens, integer=True),
            temperature=check_number("temperature", temperature, 0, lim.temperature, note=" (0 = greedy)"),
            top_k=check_number("top-k", top_k, 0, self.vocab_size, integer=True, note=" (0 = off)"),
            top_p=check_number("top-p", top_p, 0, 1, low_open=True, note=" (1 = off)"),
            min_p=check_number("min-p", min_p, 0, 1, note=" (0 = off)"),
            repetition_penalty=check_number("repetition penalty", repetition_penalty, 1, lim.repetition_penalty,
                                            note=" (1 = off)"),
            stop=parse_stop(check_text("stop strings", stop, 200), lim.stop_strings),
            seed=seed, num_alternatives=10)
        try:
            cfg.validate()
        except ValueError as e:
            raise fail(str(e)) from None
        return cfg

    def generate(self, prompt: str, max_new_tokens: float = 200, temperature: float = 0.8, top_k: float = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: float | None = -1,
                 stop: str = "") -> Iterator[tuple[str, str, dict]]:
        """Stream (prompt + text so far, stats line, run) as tokens arrive. `run` (the token view's state) holds
        the ids and, for each generated token, its viz.Step."""
        prompt = check_text("the prompt", prompt, self.limits.prompt_chars)
        cfg = self.sample_config(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop)
        ids, cropped = self._prompt_ids(prompt)
        run = {"ids": list(ids), "n_prompt": len(ids), "steps": [None] * len(ids), "scored": False}
        note = f" · the prompt's first {cropped:,} tokens did not fit the context and were dropped" if cropped else ""
        text, n, reason, first = prompt, 0, "length", None
        t0 = last = time.perf_counter()
        yield text, "generating…", run
        events = generate(self.model, self.tokenizer, ids, cfg)
        try:
            for ev in events:
                n += 1
                now = time.perf_counter()
                first = first or now - t0
                run["ids"].append(ev.token_id)
                run["steps"].append(viz.Step(ev.prob, ev.alternatives, ev.entropy))
                text += ev.text
                reason = ev.finish_reason or reason
                if now - t0 > self.limits.time_s:
                    reason = f"the time limit of {self.limits.time_s:g} s per request"
                    break
                if ev.text and (n == 1 or now - last >= self.stream_interval):
                    last = now  # the running count stays on screen if the user presses Stop
                    yield text, f"{n} tokens so far · {n / (now - t0):.1f} tokens/s · generating…", run
        finally:
            events.close()
        dt = time.perf_counter() - t0
        why = {"length": "max new tokens", "eos": "end of text", "stop": "a stop string"}.get(reason, reason)
        stats = (f"**{n} token{'s' * (n != 1)}** in {dt:.2f} s · **{n / dt:.1f} tokens/s** · first token after "
                 f"{1000 * (first or dt):.0f} ms · stopped at {why}{note}")
        yield text, stats, run

    def show_tokens(self, run: dict | None, prompt: str, color_by: str):
        """The Tokens tab: the last run (or the prompt alone) as coloured tokens, and a summary line."""
        if color_by not in ("probability", "id"):
            raise fail("colour by must be 'probability' or 'id'")
        if not run:
            ids, _ = self._prompt_ids(check_text("the prompt", prompt, self.limits.prompt_chars))
            run = {"ids": ids, "n_prompt": len(ids), "steps": [None] * len(ids), "scored": False}
        if not run["scored"]:
            n = run["n_prompt"]
            run["steps"][:n] = viz.score_ids(self.model, run["ids"][:n], 10, self.vocab_size)
            run["scored"] = True
        # a run still streaming grows in another thread: show the tokens it has so far, ids and steps paired
        T = min(len(run["ids"]), len(run["steps"]))
        ids, steps = run["ids"][:T], run["steps"][:T]
        value, colors = viz.highlight(viz.token_spans(self.tokenizer, ids, steps, color_by))
        n_gen = T - run["n_prompt"]
        ppl = viz.perplexity(steps[run["n_prompt"]:]) if n_gen else viz.perplexity(steps)
        summary = (f"{run['n_prompt']} prompt tokens, {n_gen} generated"
                   + (f" · perplexity of the {'generated' if n_gen else 'prompt'} tokens {ppl:.2f}" if ppl else "")
                   + (" · green = likely, red = unlikely (log scale)" if color_by == "probability" else "")
                   + " · click a token for the model's alternatives")
        return gr.update(value=value, color_map=colors), summary, run

    def token_details(self, run: dict | None, evt: gr.SelectData):
        """A token chosen in the Tokens tab -> a line about it and its top alternatives."""
        i = evt.index if isinstance(evt.index, int) else -1
        if not run or not 0 <= i < len(run["ids"]):
            raise fail("choose one of the tokens shown")
        source = "prompt" if i < run["n_prompt"] else "generated"
        t, step = run["ids"][i], run["steps"][i]
        rows = viz.alternative_rows(self.tokenizer, step, t) if step is not None else []
        return viz.step_markdown(self.tokenizer, t, step, i, source), rows

    def explore(self, text: str) -> tuple[str, tuple, tuple, str]:
        """(ids as JSON, (tokens labelled by id, colours), (pre-split chunks, colours), counts line)."""
        text = check_text("the text", text, self.limits.text_chars)
        chunks = self.tokenizer.split(text)
        ids = self.tokenizer.encode(text)
        c = viz.text_counts(text, ids, len(chunks))
        counts = " · ".join(f"**{v:,}** {k}" if isinstance(v, int) else f"**{v:.2f}** {k}" for k, v in c.items())
        tokens = viz.highlight(viz.token_spans(self.tokenizer, ids, color_by="id"))
        return json.dumps(ids), tokens, viz.chunk_highlight(chunks), counts

    def tokenize(self, text: str):
        """The Tokenizer tab: (ids as JSON, tokens labelled by id, pre-split chunks, counts line)."""
        ids, (tokens, colors), (chunks, chunk_colors), counts = self.explore(text)
        return ids, gr.update(value=tokens, color_map=colors), gr.update(value=chunks, color_map=chunk_colors), counts

    def merge_tree(self, token_id) -> str:
        t = check_number("token id", token_id, 0, self.tokenizer.vocab_size - 1, integer=True)
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
        shown = f"{len(rows)} of {total:,} tokens" + (" (longest first)" if not query else " matching")
        return rows, shown

    def attention(self, text: str, layer, head: str) -> str:
        """Heatmap of one layer's attention (one head, or the mean over heads) for a short text."""
        text = check_text("the text", text, self.limits.prompt_chars)
        layer = check_number("layer", layer, 0, self.config.n_layer - 1, integer=True)
        heads = ["mean"] + [str(h) for h in range(self.config.n_head)]
        if head not in heads:
            raise fail(f"head must be 'mean' or a number from 0 to {self.config.n_head - 1}")
        limit = min(self.limits.attention_tokens, self.config.block_size)
        ids = self.tokenizer.encode(text)
        if not ids:
            raise fail("type a short text to see its attention")
        note = f" (the first {limit} of its {len(ids)} tokens)" if len(ids) > limit else ""
        ids = ids[:limit]
        att = viz.attention_maps(self.model, ids)[layer]  # (H, T, T)
        w = att.mean(0) if head == "mean" else att[int(head)]
        which = "mean over heads" if head == "mean" else f"head {head}"
        labels = [viz.token_display(self.tokenizer, t) for t in ids]
        return viz.attention_html(labels, w.tolist(), f"layer {layer}, {which}{note}: row = query token, column = "
                                                      "key token it attends to; darker = more attention")


# -----------------------------------------------------------------------------
# layout and wiring


def build_app(model, tokenizer, meta: dict, name: str = "model", metrics: list[dict] | None = None,
              train_config: dict | None = None, limits: Limits | None = None,
              stream_interval: float = 0.05) -> gr.Blocks:
    """The playground's Blocks, queued; the caller launches it."""
    pg = Playground(model, tokenizer, meta, name, metrics, train_config, limits, stream_interval)
    lim, cfg = pg.limits, pg.config
    private = dict(api_visibility="private")
    ids0, tokens0, chunks0, counts0 = pg.explore(EXPLORER_TEXT)
    vocab0, vocab_count0 = pg.search_vocab("")

    with gr.Blocks(title="scratchgpt playground", analytics_enabled=False) as demo:  # no calls home
        gr.Markdown(pg.header())
        run = gr.State(None)
        with gr.Tabs():
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
                        gr.Examples([[e] for e in EXAMPLES], [prompt], label="Example prompts",
                                    cache_examples=False, api_name="load_example", **private)
                    with gr.Column(scale=2):
                        max_new = gr.Slider(1, lim.new_tokens, 200, step=1, precision=0, label="Max new tokens")
                        temperature = gr.Slider(0, lim.temperature, 0.8, step=0.05, label="Temperature",
                                                info="0 = greedy")
                        top_k = gr.Slider(0, min(200, pg.vocab_size), 0, step=1, precision=0, label="Top-k",
                                          info="0 = off")
                        top_p = gr.Slider(0.05, 1, 1, step=0.05, label="Top-p", info="1 = off")
                        min_p = gr.Slider(0, 0.5, 0, step=0.01, label="Min-p", info="0 = off")
                        rep = gr.Slider(1, lim.repetition_penalty, 1, step=0.05, label="Repetition penalty",
                                        info="1 = off")
                        seed = gr.Number(-1, label="Seed", info="-1 = random", precision=0, minimum=-1)
                        stop = gr.Textbox("", label="Stop strings", max_length=200,
                                          info=r"comma-separated; \n is a newline, e.g. \n\n")
            with gr.Tab("Tokens") as tokens_tab:
                color_by = gr.Radio(["probability", "id"], value="probability", label="Colour tokens by")
                token_summary = gr.Markdown("Generate some text, or open this tab to see the prompt's tokens.")
                token_view = gr.HighlightedText(label="Prompt and generated tokens", show_legend=False,
                                                combine_adjacent=False, elem_id="token-view")
                token_info = gr.Markdown()
                alternatives = gr.Dataframe(headers=viz.ALT_HEADERS, label="Top alternatives at this step",
                                            interactive=False, datatype=["str", "str", "number", "number"])
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
                    token_id = gr.Number(None, label="Token id", precision=0, minimum=0,
                                         maximum=tokenizer.vocab_size - 1, scale=1)
                    tree = gr.Code(None, label="Merge tree: how the token was built from bytes", language=None,
                                   show_line_numbers=False, interactive=False, scale=3)
                with gr.Accordion("Vocabulary", open=True):
                    query = gr.Textbox("", label="Search the vocabulary", max_length=lim.query_chars,
                                       placeholder="text (' the' or '·the') or an id")
                    vocab_count = gr.Markdown(vocab_count0)
                    vocab = gr.Dataframe(vocab0, headers=viz.VOCAB_HEADERS, interactive=False, max_height=320,
                                         datatype=["number", "str", "number", "str"])
                with gr.Accordion("Special tokens", open=False):
                    gr.Dataframe(viz.special_rows(tokenizer), headers=["id", "token"], interactive=False)
            with gr.Tab("Model") as model_tab:
                with gr.Row():
                    gr.Dataframe([[k, str(v)] for k, v in vars(cfg).items()], headers=["config", "value"],
                                 label=f"Model config · {model.num_params():,} parameters", interactive=False)
                    gr.Dataframe(viz.summary_rows(meta, pg.train_config, pg.metrics) or [["", "no training info"]],
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
                    attn_text = gr.Textbox(ATTENTION_TEXT, label=f"Short text (its first {attn_limit} tokens are "
                                           "shown)", scale=3, max_length=lim.prompt_chars)
                    layer = gr.Dropdown(list(range(cfg.n_layer)), value=0, label="Layer", scale=1)
                    head = gr.Dropdown(["mean"] + [str(h) for h in range(cfg.n_head)], value="mean",
                                       label="Head", scale=1)
                attn_btn = gr.Button("Show attention")
                heatmap = gr.HTML()

        generate_fn, show_tokens_fn, attention_fn = gpu(pg.generate), gpu(pg.show_tokens), gpu(pg.attention)
        gen = go.click(generate_fn, [prompt, max_new, temperature, top_k, top_p, min_p, rep, seed, stop],
                       [output, stats, run], api_name="generate")
        stop_btn.click(None, None, None, cancels=[gen], api_name="stop", **private)
        # a new prompt starts a new run: the Tokens tab then shows the prompt alone
        prompt.change(lambda: None, None, run, api_name="clear_run", queue=False, **private)
        for name, trigger in (("show_tokens", tokens_tab.select), ("recolor_tokens", color_by.change)):
            trigger(show_tokens_fn, [run, prompt, color_by], [token_view, token_summary, run], api_name=name,
                    **private)
        token_view.select(pg.token_details, [run], [token_info, alternatives], api_name="token_details", **private)

        explore = [text], [ids_box, tokens, chunks, counts]
        tokenize_btn.click(pg.tokenize, *explore, api_name="tokenize")
        text.input(pg.tokenize, *explore, api_name="tokenize_live", trigger_mode="always_last", **private)
        tokens.select(pg.select_token, [text], [token_id, tree], api_name="select_token", **private)
        token_id.submit(pg.merge_tree, [token_id], [tree], api_name="merge_tree")
        query.input(pg.search_vocab, [query], [vocab, vocab_count], api_name="search_vocab",
                    trigger_mode="always_last")

        attn = [attn_text, layer, head], [heatmap]
        attn_btn.click(attention_fn, *attn, api_name="attention")
        for name, trigger in (("attention_layer", layer.change), ("attention_head", head.change),
                              ("attention_tab", model_tab.select)):
            trigger(attention_fn, *attn, api_name=name, **private)
    return demo.queue(max_size=lim.queue_size, default_concurrency_limit=1)


def load_playground(spec: str, device: str | None = None) -> tuple:
    """(model, tokenizer, meta, name, metrics, train_config) for a checkpoint spec."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, meta = load_checkpoint(spec, device=device)
    path = Path(meta["path"])
    _, train_config = read_config(path)
    return model, tokenizer, meta, model_name(spec, path), run_metrics(path), train_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="app.py", description="The scratchgpt playground (Gradio).")
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
