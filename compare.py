"""The Compare tab's handlers: two models side by side on the same prompt and seed, on one plot of validation
bits per byte, and on the same text to tokenize. The layout is app.py's compare_tab.

    Compare(models, may_open)    generate (both streamed together), curves, split; plain methods, tests call them

Bits per byte compare models whatever their tokenizers: a model's loss per token, divided by the bytes a token
holds, in bits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import gradio as gr

from llm import card, tokenview
from llm.checkpoint import metric_rows
from llm.sample import KNOBS, SampleConfig, generate
from playground import SEED, Models, Playground, check_number, check_text, fail

COLORS = ("#2563eb", "#d97706")  # model A, model B
MAX_NEW_TOKENS = 256
MAX_NEW = next(k for k in KNOBS if k.name == "max_new_tokens")


def bits_per_byte(logprobs: list[float], text: str) -> float | None:
    """-sum(log2 p) over the generated tokens, per byte of the text they make."""
    n_bytes = len(text.encode("utf-8"))
    return -sum(logprobs) / math.log(2) / n_bytes if n_bytes and logprobs else None


def stats_line(n: int, seconds: float, logprobs: list[float], text: str, done: bool) -> str:
    """A model's line under its text: tokens, its speed, the mean log-probability it gave its own tokens."""
    parts = [f"**{n} tokens**", f"**{n / seconds:.1f} tokens/s**" if seconds > 0 else "…"]
    if logprobs:
        bpb = bits_per_byte(logprobs, text)
        parts.append(f"mean log-probability **{sum(logprobs) / len(logprobs):.3f}** nats per token"
                     + (f" ({bpb:.3f} bits per byte)" if bpb is not None else ""))
    return " · ".join(parts) + ("" if done else " · generating…")


class _Side:
    """One model's half of a comparison: its events, text, log-probabilities and its own seconds."""

    def __init__(self, events: Iterator):
        self.events, self.text, self.logp, self.seconds, self.done, self.note = events, "", [], 0.0, False, ""

    def step(self) -> None:
        if self.done:
            return
        t = time.perf_counter()
        ev = next(self.events, None)
        self.seconds += time.perf_counter() - t
        if ev is None:
            self.done = True
            return
        self.text += ev.text
        self.logp.append(math.log(max(ev.prob, 1e-12)))
        self.done = ev.finish_reason is not None

    def end(self, why: str) -> None:
        if not self.done:
            self.done, self.note = True, why

    def line(self) -> str:
        line = stats_line(len(self.logp), self.seconds, self.logp, self.text, self.done)
        return line + (f" · stopped at {self.note}" if self.note else "")


class Compare:
    """Two of the page's models, by the selector's keys; `may_open(key, visitor)` says whether a visitor may open
    one (a public studio's rule)."""

    def __init__(self, models: Models, may_open: Callable[[str, str], bool] = lambda key, visitor: True,
                 stream_interval: float = 0.05):
        self.models, self.may_open, self.stream_interval = models, may_open, stream_interval

    def pair(self, key_a: str, key_b: str, visitor: str = "") -> tuple[Playground, Playground]:
        pgs = []
        for key in (key_a, key_b):
            if not isinstance(key, str) or not self.may_open(key, visitor):
                raise fail(f"no model {key!r} here: pick one from the list")
            try:
                pgs.append(self.models.get(key))
            except (OSError, ValueError) as e:  # CheckpointError is a ValueError
                raise fail(str(e)) from None
        return pgs[0], pgs[1]

    def generate(self, key_a: str, key_b: str, prompt: str, max_new_tokens: int = 120, seed: int = 1,
                 visitor: str = "") -> Iterator[tuple[str, str, str, str]]:
        """Both models on the prompt with the same seed and the app's default sampling, streamed together: (A's
        text, A's line, B's text, B's line)."""
        a, b = self.pair(key_a, key_b, visitor)
        prompt = check_text("the prompt", prompt, a.limits.prompt_chars)
        n = int(check_number(MAX_NEW, max_new_tokens, 1, MAX_NEW_TOKENS))
        cfg = SampleConfig(max_new_tokens=n, seed=int(check_number(SEED, seed, 0)), num_alternatives=1)
        runs = [_Side(generate(pg.model, pg.tokenizer, pg.prompt_ids(prompt)[0], cfg)) for pg in (a, b)]
        last, t0 = 0.0, time.perf_counter()
        try:
            while not all(r.done for r in runs):
                for r in runs:  # a token from each in turn: each one's time is its own
                    r.step()
                if time.perf_counter() - t0 > a.limits.time_s:  # the app's limit per request
                    for r in runs:
                        r.end(f"the time limit of {a.limits.time_s:g} s per request")
                if time.perf_counter() - last >= self.stream_interval or all(r.done for r in runs):
                    last = time.perf_counter()
                    yield tuple(x for r in runs for x in (prompt + r.text, r.line()))
        except ValueError as e:  # the sampler's one line: non-finite scores
            raise fail(str(e)) from None
        finally:
            for r in runs:
                r.events.close()

    def curves(self, key_a: str, key_b: str, visitor: str = "") -> str:
        """Both models' validation bits per byte against the tokens they had seen, on one plot."""
        series, colors = {}, {}
        for i, pg in enumerate(self.pair(key_a, key_b, visitor)):
            label = f"{'AB'[i]}: {pg.name}"
            if label in series:
                label += " (again)"
            series[label] = [(r["tokens_seen"], r["bits_per_byte"]) for r in metric_rows(pg.metric_rows(fresh=True),
                                                                                       "eval")
                             if all(isinstance(r.get(k), (int, float)) for k in ("tokens_seen", "bits_per_byte"))]
            colors[label] = COLORS[i]
        return card.curves_svg(series, colors, "Validation loss", "tokens seen in training", "bits per byte",
                               width=720, height=300, empty="neither model has recorded evaluations", fit=True)

    def split(self, key_a: str, key_b: str, text: str, visitor: str = "") -> tuple[str, str, str, str]:
        """The same text through both tokenizers: (A's tokens, A's counts, B's tokens, B's counts)."""
        out = []
        for pg in self.pair(key_a, key_b, visitor):
            _, tokens, _, counts = pg.explore(text)  # as the Tokenizer tab shows it
            out += [tokens, counts]
        return out[0], out[1], out[2], out[3]


# -----------------------------------------------------------------------------
# layout and wiring

def compare_tab(cmp: Compare, choices: Callable[[str], list[tuple[str, str]]], visitor, prompt: str,
                text: str, gpu: Callable = lambda fn: fn) -> None:
    """The tab: two model pickers (filled by `choices(visitor)` when the tab opens), a prompt generated by both, the
    validation curves, and a text split by both tokenizers. `gpu` wraps what computes with the models (app.py's:
    spaces.GPU on ZeroGPU)."""
    private = {"api_visibility": "private"}
    first = choices("")
    with gr.Tab("Compare", id="compare") as tab:
        gr.Markdown("Two models on the same prompt and seed, side by side, with the speed of each and how likely "
                    "each found its own text; their validation curves on one plot, and both tokenizers on one text. "
                    "Bits per byte compare models whatever their tokenizers.")
        with gr.Row():
            pick_a = gr.Dropdown(first, value=first[0][1], label="Model A", elem_id="compare-a")
            pick_b = gr.Dropdown(first, value=first[min(1, len(first) - 1)][1], label="Model B", elem_id="compare-b")
        with gr.Row():
            prompt_box = gr.Textbox(prompt, lines=2, label="Prompt", scale=3)
            n = gr.Slider(1, MAX_NEW_TOKENS, 120, step=1, label="Max new tokens", scale=1)
            seed = gr.Number(1, label="Seed", precision=0, minimum=0, scale=1)
        go = gr.Button("Generate with both", variant="primary")
        with gr.Row():
            outs = []
            for side in "AB":
                with gr.Column(min_width=300):
                    outs.append(gr.Textbox(label=f"Model {side}", lines=10, interactive=False,
                                           elem_id=f"compare-out-{side.lower()}"))
                    outs.append(gr.Markdown(elem_id=f"compare-stats-{side.lower()}"))
        curves = gr.HTML(elem_id="compare-curves")
        gr.Markdown("### Both tokenizers on one text")
        text_box = gr.Textbox(text, lines=3, label="Text", max_length=10_000)
        with gr.Row():
            splits = []
            for side in "AB":
                with gr.Column(min_width=300):
                    splits.append(gr.HTML(css_template=tokenview.STYLE, label=f"Model {side}'s tokens",
                                          show_label=True, container=True, padding=True,
                                          elem_id=f"compare-split-{side.lower()}"))
                    splits.append(gr.Markdown())
    def generate(key_a, key_b, prompt, max_new_tokens, seed, visitor):
        yield from cmp.generate(key_a, key_b, prompt, max_new_tokens, seed, visitor=visitor)

    def plot(key_a, key_b, visitor):
        return cmp.curves(key_a, key_b, visitor=visitor)

    def split(key_a, key_b, text, visitor):
        return cmp.split(key_a, key_b, text, visitor=visitor)

    go.click(gpu(generate), [pick_a, pick_b, prompt_box, n, seed, visitor], outs, api_name="compare")
    both = [pick_a, pick_b]
    for trigger in (tab.select, pick_a.change, pick_b.change):
        trigger(plot, [*both, visitor], [curves], **private)
        trigger(split, [*both, text_box, visitor], splits, **private)
    text_box.change(split, [*both, text_box, visitor], splits, trigger_mode="always_last", api_name="compare_tokenizers")
    tab.select(lambda v: [gr.update(choices=choices(v))] * 2, [visitor], both, **private)
