"""The playground's handlers and the models it shows; the layout and wiring are in app.py.

    Playground(model, tokenizer, meta, ...)   one loaded model and every handler its tabs call: each checks its
                                              request (gr.Error in words) and calls llm/ (llm/viz.py words it)
    Models(first, runs_dir)                   the models a page may pick: loaded on demand, shared by every browser
                                              session, the least recently used dropped first; a session holds a key
    find_checkpoint, load_playground          the model the server opens with

Tests call the handlers as plain methods, without a server.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch

from llm import attention, hub, tokenview, viz
from llm.checkpoint import (CONFIG, META, METRICS, CheckpointError, load_checkpoint, metrics_dir, read_config,
                            read_metrics)
from llm.config import SettingError
from llm.hub import find_checkpoint as find_default_checkpoint, is_hub_spec, resolve_checkpoint
from llm.sample import KNOBS, Knob, SampleConfig, generate, parse_stop, prepare_prompt

ROOT = Path(__file__).resolve().parent
BUNDLED = hub.BUNDLED
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
    """What the app opens first: hub.find_checkpoint, with this app's bundled model."""
    return find_default_checkpoint(cli_value, cwd, BUNDLED)


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
        self.path = Path(meta["path"]) if meta.get("path") else None  # where it was loaded from (Models)

    def metric_rows(self, fresh: bool = False) -> list[dict]:
        """The rows of the model's metrics.jsonl; `fresh` reads it again (a run still training)."""
        if fresh and self.path is not None:
            self.metrics = run_metrics(self.path)
        return self.metrics

    def summary(self) -> list[list[str]]:
        return viz.summary_rows(self.meta, self.train_config, self.metrics) or [["", "no training info", ""]]

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
                                seed=secrets.randbelow(2**32) if seed == -1 else seed, num_alternatives=10,
                                ranges=self.sample_ranges(), for_people=True)
        except SettingError as e:
            raise fail(str(e)) from None

    def prompt_ids(self, prompt: str) -> tuple[list[int], int]:
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
        yield from Playground.generate_until(self, None, *args, **kwargs)

    generate.__signature__ = GENERATE_SIGNATURE

    def generate_until(self, halt: threading.Event | None, *args, **kwargs):
        """generate, finishing early once `halt` is set (the page's Stop button), with the text so far and a last
        stats line that says so: a run cancelled from outside could not say anything."""
        bound = GENERATE_SIGNATURE.bind(self, *args, **kwargs)  # TypeError for a missing prompt or an unknown name
        bound.apply_defaults()
        settings = {k: v for k, v in bound.arguments.items() if k != "self"}
        prompt = check_text("the prompt", settings.pop("prompt"), self.limits.prompt_chars)
        cfg = self.sample_config(settings)
        ids, cropped = self.prompt_ids(prompt)
        run = viz.TokenRun.of_prompt(ids)
        t0 = time.perf_counter()
        yield prompt, "generating…", run
        events = generate(self.model, self.tokenizer, ids, cfg)
        try:
            yield from self._stream(events, prompt, run, cropped, t0, halt, cfg.seed)
        except ValueError as e:  # the sampler's one line: non-finite scores, buffers that do not fit
            raise fail(str(e)) from None
        finally:
            events.close()

    def _stream(self, events: Iterator, text: str, run: viz.TokenRun, cropped: int, t0: float,
                halt: threading.Event | None = None, seed: int | None = None):
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
            if halt is not None and halt.is_set():
                reason = "halt"
                break
            if ev.text and (n == 1 or now - last >= self.stream_interval):
                last = now
                yield text, viz.progress_line(n, now - t0), run
        yield text, viz.stats_markdown(n, time.perf_counter() - t0, first, reason, cropped, seed), run

    def show_tokens(self, run: viz.TokenRun | None, prompt: str, color_by: str):
        """The Tokens tab: the last run (or the prompt alone) as text coloured by probability (or id), and a
        summary line."""
        if color_by not in ("probability", "id"):
            raise fail("colour by must be 'probability' or 'id'")
        if not run:
            ids, _ = self.prompt_ids(check_text("the prompt", prompt, self.limits.prompt_chars))
            run = viz.TokenRun.of_prompt(ids)
        run.score_prompt(self.model, self.vocab_size)
        ids, steps = run.shown()
        view = tokenview.tokens_html(self.tokenizer, ids, steps, color_by, run.n_prompt,
                                     empty="No tokens: type a prompt in the Generate tab.")
        return view, viz.tokens_summary(run), run

    def token_details(self, run: viz.TokenRun | None, evt: gr.SelectData):
        """A token chosen in the Tokens tab -> a line about it and its top alternatives (a table with bars)."""
        i = _chosen(evt, run.ids if run else [])
        if not run or i is None:
            raise fail("choose one of the tokens shown")
        source = "prompt" if i < run.n_prompt else "generated"
        t, step = run.ids[i], run.steps[i]
        table = tokenview.alternatives_html(self.tokenizer, step, t) if step is not None else ""
        return viz.step_markdown(self.tokenizer, t, step, i, source), table

    def explore(self, text: str) -> tuple[str, tuple, tuple, str]:
        """(ids as JSON, (tokens labelled by id, colours), (pre-split chunks, colours), counts line)."""
        text = check_text("the text", text, self.limits.text_chars)
        chunks = self.tokenizer.split(text)
        ids = self.tokenizer.encode(text)
        counts = viz.counts_markdown(viz.text_counts(text, ids, len(chunks)))
        tokens = tokenview.tokens_html(self.tokenizer, ids, color_by="id", show_ids=True,
                                       empty="Type or paste some text above to see its tokens.")
        return json.dumps(ids), tokens, viz.chunk_highlight(chunks), counts

    def tokenize(self, text: str):
        """The Tokenizer tab: (ids as JSON, tokens labelled by id, pre-split chunks, counts line)."""
        ids, tokens, (chunks, chunk_colors), counts = self.explore(text)
        return ids, tokens, gr.update(value=chunks, color_map=chunk_colors), counts

    def merge_tree(self, token_id) -> str:
        """A token's merge tree; for an id that is none of this vocabulary's, the reason, in the tree's place (a
        typo in a box is no error worth a red badge)."""
        if isinstance(token_id, str):  # the box is text: an empty one shows no stray 0
            if not token_id.strip():
                return "(type a token id)"
            token_id = int(token_id) if token_id.strip().lstrip("-").isdecimal() else token_id.strip()
        try:
            t = check_number(Knob("token_id", "token id", 0, self.tokenizer.vocab_size - 1, integer=True), token_id)
        except gr.Error as e:
            return f"({e.message})"
        return viz.merge_tree_text(self.tokenizer, t)

    def select_token(self, text: str, evt: gr.SelectData):
        """A token clicked in the Tokenizer tab -> (its id, its merge tree)."""
        text = check_text("the text", text, self.limits.text_chars)
        ids = self.tokenizer.encode(text)
        i = _chosen(evt, ids)
        if i is None:
            raise fail("choose one of the tokens shown")
        return ids[i], viz.merge_tree_text(self.tokenizer, ids[i])

    def vocab_tree(self, evt: gr.SelectData):
        """A row clicked in the vocabulary table -> (its token id, its merge tree)."""
        row = evt.row_value if isinstance(evt.row_value, list) else []
        return (row[0], self.merge_tree(row[0])) if row else (gr.skip(), gr.skip())

    def search_vocab(self, query: str):
        query = check_text("the search", query, self.limits.query_chars)
        rows, total = viz.search_vocab(self.tokenizer, query, self.limits.vocab_rows)
        return rows, viz.vocab_count_line(len(rows), total, query)

    def layer_predictions(self, text: str) -> list[list[str]]:
        """The Model tab's "what each layer predicts": for the token after the text (its last tokens, as the
        attention view takes them), each layer's three likeliest guesses, as rows of the table."""
        text = check_text("the text", text, self.limits.prompt_chars)
        ids = self.tokenizer.encode(text)[-min(self.limits.attention_tokens, self.config.block_size):]
        if not ids:
            raise fail("type a short text to see what each layer predicts after it")
        rows = attention.layer_predictions(self.model, ids, k=3)
        return [[f"{i + 1}" + (" (the model's prediction)" if i == len(rows) - 1 else "")]
                + [f"{viz.token_display(self.tokenizer, t)}  {p:.1%}" for t, p in guesses]
                for i, guesses in enumerate(rows)]

    def attention(self, text: str, layer, head: str) -> str:
        """A layer's attention for a short text: every head and their mean as small pictures, and the chosen one
        ("mean" or a head's number) as a heatmap with the tokens along its sides."""
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
        att = attention.attention_maps(self.model, ids[:limit])[layer]  # (H, T, T)
        w = att.mean(0) if head == "mean" else att[int(head)]
        labels = [viz.token_display(self.tokenizer, t) for t in ids[:limit]]
        caption = attention.attention_caption(layer, head, limit, len(ids))
        return attention.heads_html(att, head) + attention.attention_html(labels, w.tolist(), caption)

    def last_generation(self, run: viz.TokenRun | None) -> str:
        """The text of the last generation's last tokens, as many as the attention view shows."""
        if not run or len(run.ids) <= run.n_prompt:
            raise fail("generate some text first (Generate tab): its last tokens are shown here")
        limit = min(self.limits.attention_tokens, self.config.block_size)
        # the longest end that tokenizes again within the limit (bytes that make no character come back as
        # U+FFFD, three bytes each)
        for k in range(min(limit, len(run.ids)), 0, -1):
            text = self.tokenizer.decode(run.ids[-k:])
            if len(self.tokenizer.encode(text)) <= limit:
                return text
        return ""


def _chosen(evt: gr.SelectData, ids: list[int]) -> int | None:
    """The index of the token a click on a token view chose (tokenview.VIEW_JS sends it), or None."""
    i = evt.index
    return i if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(ids) else None


class Halts:
    """The page's Stop button: one flag per generation in progress, under an id the page holds (a gr.State), so
    that Stop ends its own page's run and no other."""

    def __init__(self):
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def begin(self) -> str:
        run_id = secrets.token_hex(8)
        with self._lock:
            self._flags[run_id] = threading.Event()
        return run_id

    def get(self, run_id) -> threading.Event | None:
        return self._flags.get(run_id) if isinstance(run_id, str) else None

    def halt(self, run_id) -> None:
        if flag := self.get(run_id):
            flag.set()

    def end(self, run_id) -> None:
        with self._lock:
            self._flags.pop(run_id, None)


# -----------------------------------------------------------------------------
# the models a page may pick

FIRST, BUNDLED_KEY = "start", "bundled"  # keys of the model the server opened with, and of assets/model
RUN_KEY = re.compile(r"run/([A-Za-z0-9][A-Za-z0-9_.-]*)")  # a run directly under the runs directory, by name


class Models:
    """Every model the page can show, by key: FIRST, BUNDLED_KEY, `run/NAME` (that run's best/, reloaded when
    the run saves a better one) or a Hub repo id. Loaded on first use and shared by the sessions; at most `keep`
    besides the first are held, the least recently used dropped first. Keys are names, never paths: a run is
    found only directly under runs_dir."""

    def __init__(self, first: Playground, runs_dir: str | Path | None = None, keep: int = 3, allow_hub: bool = True,
                 **playground_kwargs):
        self.first, self.keep, self.allow_hub = first, max(keep, 1), allow_hub
        self.runs_dir = Path(runs_dir) if runs_dir else None
        self.kwargs = playground_kwargs  # limits, stream_interval: as the first model's
        self._loaded: OrderedDict[tuple, Playground] = OrderedDict()
        self._lock = threading.Lock()  # guards _loaded and _loading
        self._loading: dict[str, threading.Lock] = {}  # one per key, held while that model loads

    def locate(self, key: str) -> tuple[str, tuple]:
        """key -> (the checkpoint spec to load, its cache key: the key and the version of the files)."""
        if key == BUNDLED_KEY:
            return str(BUNDLED), (key, _version(BUNDLED))
        m = RUN_KEY.fullmatch(key or "")
        if m and self.runs_dir is not None:
            best = self.runs_dir / m[1] / "best"
            if not (self.runs_dir / m[1]).is_dir():
                raise CheckpointError(f"the run {m[1]} is gone (deleted?): pick another model")
            if not (best / CONFIG).is_file():
                raise CheckpointError(f"the run {m[1]} has no saved model yet: its first evaluation saves one")
            return str(best), (key, _version(best))
        if self.allow_hub and is_hub_spec(key or ""):
            return key, (key, None)
        raise CheckpointError(f"no model {key!r} here: pick one from the list" +
                              (" or type a Hub repo id USER/NAME" if self.allow_hub else ""))

    def get(self, key: str) -> Playground:
        """The model for a key, loading it if needed (CheckpointError, OSError or ValueError if it cannot be)."""
        if key == FIRST or key == BUNDLED_KEY and self.first.path is not None \
                and self.first.path.resolve() == BUNDLED.resolve():
            return self.first
        spec, cache_key = self.locate(key)
        with self._lock:
            if cache_key in self._loaded:
                self._loaded.move_to_end(cache_key)
                return self._loaded[cache_key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # two sessions asking for one model load it once; other models do not wait for it
            with self._lock:
                if cache_key in self._loaded:
                    return self._loaded[cache_key]
            pg = Playground(*load_playground(spec), **self.kwargs)
            with self._lock:
                for old in [k for k in self._loaded if k[0] == key]:  # an older version of the same run
                    del self._loaded[old]
                self._loaded[cache_key] = pg
                while len(self._loaded) > self.keep:
                    self._loaded.popitem(last=False)
            return pg

    def metrics_version(self, key: str) -> int | None:
        """For a run's key, when its metrics.jsonl last changed (a run training writes it; its model's curves,
        figures and best/ follow); None for other keys."""
        m = RUN_KEY.fullmatch(key or "")
        if not m or self.runs_dir is None:
            return None
        try:
            return (self.runs_dir / m[1] / METRICS).stat().st_mtime_ns
        except OSError:
            return None

    def loaded(self) -> list[str]:
        return [k[0] for k in self._loaded]


def _version(path: Path) -> int:
    try:
        return (path / META).stat().st_mtime_ns
    except OSError:
        return 0
