"""The Train tab: bring a text, train a tokenizer and a GPT on it in a worker process, watch it learn.

    StudioSettings.from_env()    where runs live and what a run may take (environment variables, README)
    Studio                       the tab's handlers: plan, start, stop, resume, poll (plain methods; tests call them)
    train_tab(studio, ...)       the layout and wiring; app.py puts it beside the playground's tabs

Training itself is llm.worker (a process per run, through llm.train as train_cli.py); the words are llm.studio's.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch

from llm import card, studio, viz, worker
from llm.config import SettingError
from llm.data import BUILTIN_CORPORA, DataError
from llm.model import GPT, ModelConfig
from llm.run import TrainConfig
from playground import fail

SOURCES = ["upload a .txt file", "paste text", *BUILTIN_CORPORA]
NO_RUN = "Start a run, or pick one above to watch it."
RESUMABLE = ("stopped", "killed", "failed")  # with a last/ checkpoint
TIMED_FLOPS = 5e9  # a model whose timing pass costs more is estimated from its FLOPs instead


@dataclass
class StudioSettings:
    """What the Train tab may do here. From the environment: SCRATCHGPT_RUNS (the runs directory),
    SCRATCHGPT_MAX_CORPUS_MB, SCRATCHGPT_MAX_TIME_BUDGET (seconds), SCRATCHGPT_TRAIN_THREADS (torch threads of a
    training worker; the web server keeps the rest), SCRATCHGPT_MAX_RUNS (runs training at once),
    SCRATCHGPT_MAX_MODELS (models held in memory besides the first)."""

    runs_dir: Path = Path("checkpoints")
    max_corpus_bytes: int = 20_000_000
    max_time_budget: float = 3600.0
    train_threads: int = max((os.cpu_count() or 2) // 2, 1)
    max_live_runs: int = 1
    max_models: int = 3

    @classmethod
    def from_env(cls, runs_dir: str | Path | None = None, train_threads: int | None = None) -> StudioSettings:
        env, d = os.environ, cls()
        try:
            return cls(runs_dir=Path(runs_dir or env.get("SCRATCHGPT_RUNS") or d.runs_dir),
                       max_corpus_bytes=int(float(env.get("SCRATCHGPT_MAX_CORPUS_MB", d.max_corpus_bytes / 1e6)) * 1e6),
                       max_time_budget=float(env.get("SCRATCHGPT_MAX_TIME_BUDGET", d.max_time_budget)),
                       train_threads=int(train_threads or env.get("SCRATCHGPT_TRAIN_THREADS", d.train_threads)),
                       max_live_runs=int(env.get("SCRATCHGPT_MAX_RUNS", d.max_live_runs)),
                       max_models=int(env.get("SCRATCHGPT_MAX_MODELS", d.max_models)))
        except ValueError as e:
            raise ValueError(f"a SCRATCHGPT_ setting is not a number: {e}") from None

    @property
    def server_threads(self) -> int:
        return max((os.cpu_count() or 2) - self.train_threads, 1)


class Studio:
    """The Train tab's handlers. Runs are named, never located by a path from the page: a name must be one of
    the runs directory's own entries."""

    def __init__(self, settings: StudioSettings):
        self.settings = settings
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.sizes = [s for s in studio.SIZES if self.device == "cuda" or s not in studio.GPU_SIZES]
        self._flops: float | None = None  # training FLOP/s measured here once, for the plans of big models
        self._timed: dict[tuple, float] = {}  # seconds per step, by shape
        self._lock = threading.Lock()  # one start or resume at a time: two clicks cannot both pass the checks

    # --- settings and plans

    def configs(self, size, tokenizer, vocab_size, time_budget, *advanced) -> tuple:
        if size not in self.sizes:
            raise fail(f"the model size must be one of {', '.join(self.sizes)}")
        if not isinstance(time_budget, (int, float)) or not 0 < time_budget <= self.settings.max_time_budget:
            raise fail(f"the time budget must be between 1 and {self.settings.max_time_budget:g} seconds")
        try:
            return studio.configs(size, tokenizer, vocab_size, float(time_budget),
                                  dict(zip(studio.ADVANCED, advanced)))
        except (SettingError, ValueError) as e:
            raise fail(studio.say(e)) from None

    def seconds_per_step(self, model_cfg: ModelConfig, cfg: TrainConfig) -> float:
        """A step of this model timed here (kept per shape), or, for a model too big to time in the server, its
        FLOPs at the rate measured once on the tiny size."""
        key = (repr(model_cfg), cfg.batch_size, cfg.grad_accum, cfg.optimizer)
        with self._lock:  # one timing at a time: they would slow each other
            if key not in self._timed:
                if _step_flops(model_cfg, cfg) / cfg.batch_size * min(cfg.batch_size, 4) <= TIMED_FLOPS:
                    self._timed[key] = worker.time_step(model_cfg, cfg, self.device)
                else:
                    m, c = studio.configs("tiny", "bpe", 1024, 60.0, {})
                    self._flops = self._flops or _step_flops(m, c) / worker.time_step(m, c, self.device)
                    self._timed[key] = _step_flops(model_cfg, cfg) / self._flops
                if len(self._timed) > 64:  # shapes a page asked about: the oldest go
                    self._timed.pop(next(iter(self._timed)))
            return self._timed[key]

    def check_steps(self, model_cfg, cfg: TrainConfig) -> None:
        """A step limit replaces the time budget: refused when it would take longer than the budget may."""
        seconds = cfg.max_steps * self.seconds_per_step(model_cfg, cfg)
        if seconds > self.settings.max_time_budget:
            raise fail(f"{cfg.max_steps:,} steps would take about {seconds:,.0f} s here, over the limit of "
                       f"{self.settings.max_time_budget:g} s: lower the step limit")

    def plan(self, *settings) -> str:
        """What the run will be: parameters, tokens per step, steps in the budget on this device."""
        try:
            model_cfg, cfg = self.configs(*settings)
            self.check_steps(model_cfg, cfg)
        except gr.Error as e:
            return f"⚠️ {e.message}"
        p = worker.plan(model_cfg, cfg, self.seconds_per_step(model_cfg, cfg))
        return studio.plan_markdown(p, cfg, self.device)

    # --- starting and stopping

    def start(self, source: str, upload, pasted: str, *settings):
        """A new run from the page's text and settings -> its name."""
        model_cfg, cfg = self.configs(*settings)
        self.check_steps(model_cfg, cfg)
        corpus, data, stem = self._corpus(source, upload, pasted, model_cfg.block_size, cfg)
        with self._lock:
            self._check_room()
            out = None
            try:
                out = worker.new_run(self.settings.runs_dir, stem)
                if data is not None:
                    (out / worker.UPLOAD).write_bytes(data)
                    corpus = (str(out / worker.UPLOAD),)
                cfg = dataclasses.replace(cfg, corpus=corpus, out=str(out))
                worker.write_job(out, model_cfg, cfg, self.settings.train_threads, source=stem.replace("_", " "))
                worker.launch(out)
            except (OSError, RuntimeError) as e:  # a full disk, a runs directory that cannot be written
                if out is not None:
                    shutil.rmtree(out, ignore_errors=True)  # nothing of it trained: no half run left listed
                raise fail(f"could not start the run: {_reason(e)}") from None
        return out.name

    def _corpus(self, source: str, upload, pasted: str, block_size: int, cfg: TrainConfig):
        """(corpus specs, bytes to save as the run's corpus.txt or None, a name for the run)."""
        if source in BUILTIN_CORPORA:
            return (source,), None, source
        if source == SOURCES[0]:
            if not upload:
                raise fail("choose a .txt file to upload first")
            path = Path(upload)  # Gradio's own copy of the upload, in its cache
            try:
                size = path.stat().st_size
                if size > self.settings.max_corpus_bytes:  # not read into memory first
                    raise fail(f"the uploaded file is {card.fmt_bytes(size)}; the limit here is "
                               f"{card.fmt_bytes(self.settings.max_corpus_bytes)}")
                data = path.read_bytes()
            except OSError as e:
                raise fail(f"could not read the uploaded file ({_reason(e)}): upload it again") from None
            what, stem = "the uploaded file", path.stem
        elif source == SOURCES[1]:
            data, what, stem = (pasted or "").encode("utf-8", "surrogatepass"), "the pasted text", "pasted"
        else:
            raise fail(f"the text must come from one of: {', '.join(SOURCES)}")
        try:
            studio.check_text(data, what, self.settings.max_corpus_bytes, block_size, cfg.val_frac,
                              cfg.encoding_errors, cfg.tokenizer)
        except DataError as e:
            raise fail(studio.say(e)) from None
        return (), data, stem

    def _check_room(self) -> None:
        live = [r for r in worker.list_runs(self.settings.runs_dir) if r.live]
        if len(live) >= self.settings.max_live_runs:
            raise fail(f"{live[0].name} is training already: stop it or wait for it to end"
                       if len(live) == 1 else f"{len(live)} runs are training already: wait for one to end")

    def run_dir(self, name: str) -> Path:
        """A run's directory from its name, only if the runs directory lists it."""
        out = worker.find_run(self.settings.runs_dir, name)
        if out is None:
            raise fail("pick a run from the list (it may have been deleted)")
        return out

    def stop(self, name: str):
        """-> (the status line, the Stop button: off, so that a second press cannot stop the run unsaved)."""
        out = self.run_dir(name)
        if not worker.stop(out):
            raise fail(f"{name} is not training")
        how = "evaluating and saving" if worker.run_status(out).from_page else "saving, as Ctrl-C would"
        return f"**{name}**: stopping: {how}…", gr.update(interactive=False)

    def resume(self, name: str) -> str:
        out = self.run_dir(name)
        s = worker.run_status(out)
        if s.live:
            raise fail(f"{name} is training already")
        if not s.has_last:
            raise fail(f"{name} has nothing to resume from: it saved no checkpoint (start a new run)")
        if s.state not in RESUMABLE:
            raise fail(f"{name} is {studio.STATE_WORDS.get(s.state, s.state)}: only a run that stopped resumes")
        with self._lock:
            self._check_room()
            try:
                worker.launch(out, resume=True)
            except (OSError, RuntimeError) as e:
                raise fail(f"could not resume {name}: {_reason(e)}") from None
        return f"**{name}**: resuming from its last save…"

    # --- watching

    def runs_update(self, value: str | None = None):
        runs = worker.list_runs(self.settings.runs_dir)
        choices = [(studio.run_label(r), r.name) for r in runs]
        if value is None:  # a page opened afresh: the run in progress, else the newest
            value = next((r.name for r in runs if r.live), runs[0].name if runs else None)
        return gr.update(choices=choices, value=value)

    def watch(self, name: str | None, shown: dict):
        """The timer's refresh: poll's outputs, each skipped when it is what this page shows already (`shown`, a
        session's state, returned updated): a plot redrawn every tick flickers, and a list updated under the
        user's hand closes."""
        choices = [[studio.run_label(r), r.name] for r in worker.list_runs(self.settings.runs_dir)]
        status, progress, plot, sample, *buttons = self.poll(name)
        now = {"plot": plot, "sample": (name, sample), "choices": choices}
        keep = {k: shown.get(k) == v for k, v in now.items()}  # the plot's SVG itself: a few KB
        return (status, progress, gr.skip() if keep["plot"] else plot, gr.skip() if keep["sample"] else sample,
                *buttons, gr.skip() if keep["choices"] else gr.update(choices=choices), now)

    def poll(self, name: str | None):
        """(status line, progress bar, loss plot, sample, Stop, Resume, Open) for the run being watched."""
        if not name:
            return NO_RUN, "", curve_svg([]), "", *_buttons(None)
        out = worker.find_run(self.settings.runs_dir, name)
        if out is None:
            return f"**{viz.escape_markdown(name)}** is gone (deleted?): pick another run", "", curve_svg([]), "", \
                *_buttons(None)
        s = worker.run_status(out)
        return (studio.status_markdown(s), studio.progress_html(s), curve_svg(s.rows), s.sample, *_buttons(s))


def _reason(e: BaseException) -> str:
    """An error's reason without the paths an OSError carries."""
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def _step_flops(model_cfg: ModelConfig, cfg: TrainConfig) -> float:
    with torch.device("meta"):
        fpt = GPT(model_cfg).flops_per_token()
    return fpt * cfg.batch_size * cfg.grad_accum * model_cfg.block_size


def curve_svg(rows: list[dict], title: str = "Loss (live)") -> str:
    """A run's training loss (as logged) and validation loss (at each evaluation), drawn here as SVG: Gradio's
    LinePlot, fed points while it is on screen, drew lines without colour when its first value was empty."""
    return card.loss_curve_svg(rows, width=720, height=300, title=title, empty="no points yet", fit=True)


def _buttons(s: worker.RunStatus | None) -> tuple:
    live = bool(s and s.live)
    return (gr.update(interactive=live and not s.stopping),
            gr.update(interactive=bool(s and not live and s.has_last and s.state in RESUMABLE)),
            gr.update(interactive=bool(s and s.has_best)))


# -----------------------------------------------------------------------------
# layout and wiring

PRIVATE = {"api_visibility": "private"}


def setting(name: str, value, **kw):
    """A control for one setting, with its label and its line of explanation."""
    label, info = studio.FIELDS[name]
    if name == "encoding_errors":
        return gr.Radio(["strict", "replace"], value=value, label=label, info=info, **kw)
    if isinstance(value, float) and name != "time_budget":
        return gr.Number(value, label=label, info=info, **kw)
    return gr.Number(value, label=label, info=info, precision=None, step=1, **kw)


def train_tab(st: Studio, timer: gr.Timer) -> tuple[gr.Dropdown, gr.Button, gr.Markdown, list]:
    """The tab. Returns what app.py wires to the rest of the page: the runs list, the Open button (it opens the
    run in the other tabs), and the plan with the settings it is made from (filled when the page loads)."""
    cap, sizes = st.settings.max_corpus_bytes, st.sizes
    defaults = studio.size_settings("tiny")
    with gr.Tab("Train", id="train"):
        gr.Markdown("Train a tokenizer and a GPT on your own text. Training runs in its own process: close the page "
                    "and it goes on; come back to watch it or to open the model in the other tabs.")
        with gr.Row():
            with gr.Column(scale=2):
                source = gr.Radio(SOURCES, value=SOURCES[0], label="Text to learn from")
                upload = gr.File(label=f"A .txt file (UTF-8, up to {card.fmt_bytes(cap)})", file_types=[".txt"],
                                 type="filepath", elem_id="corpus-upload")
                pasted = gr.Textbox(label=f"Text (up to {card.fmt_bytes(cap)})", lines=6, visible=False,
                                    max_length=cap, elem_id="corpus-paste")
                size = gr.Radio(sizes, value="tiny", label=studio.FIELDS["size"][0],
                                info=" · ".join(f"{s}: {studio.SIZES[s][1]}" for s in sizes))
                tokenizer = gr.Radio([("BPE", "bpe"), ("characters", "char")], value="bpe",
                                     label=studio.FIELDS["tokenizer"][0], info=studio.FIELDS["tokenizer"][1])
                vocab = gr.Slider(257, 8192, defaults["vocab_size"], step=1, label=studio.FIELDS["vocab_size"][0],
                                  info=studio.FIELDS["vocab_size"][1])
                budget = gr.Slider(10, st.settings.max_time_budget, min(120, st.settings.max_time_budget), step=10,
                                   label=studio.FIELDS["time_budget"][0], info=studio.FIELDS["time_budget"][1])
                with gr.Accordion("Advanced", open=False):
                    advanced = [setting(n, defaults[n]) for n in studio.ADVANCED]
                plan = gr.Markdown(elem_id="run-plan")
                start = gr.Button("Start training", variant="primary")
            with gr.Column(scale=3):
                # custom values: the list is filled per page, and the handlers check every name against the runs
                runs = gr.Dropdown([], label="Runs (page and command line)", allow_custom_value=True, elem_id="runs")
                status = gr.Markdown(NO_RUN, elem_id="run-status")
                progress = gr.HTML(elem_id="run-progress")
                with gr.Row():
                    stop = gr.Button("Stop", variant="stop", interactive=False)
                    resume = gr.Button("Resume", interactive=False)
                    open_btn = gr.Button("Open in the playground", variant="primary", interactive=False)
                plot = gr.HTML(curve_svg([]), elem_id="run-plot")
                sample = gr.Textbox(label="Sample at the latest evaluation", lines=4, interactive=False,
                                    elem_id="run-sample")
                shown = gr.State({})  # what the timer last sent this page (Studio.watch); a State in Tabs is a tab
    settings = [size, tokenizer, vocab, budget, *advanced]
    watch = [status, progress, plot, sample, stop, resume, open_btn]
    source.change(lambda s: (gr.update(visible=s == SOURCES[0]), gr.update(visible=s == SOURCES[1])), [source],
                  [upload, pasted], queue=False, **PRIVATE)
    size.change(lambda s: [gr.update(value=v) for v in _size_values(s)], [size], [vocab, *advanced], **PRIVATE)
    for c in settings:
        c.change(st.plan, settings, [plan], trigger_mode="always_last", show_progress="hidden", **PRIVATE)
    # the new run's name (what the API returns) into the list, then the list with its entry
    start.click(st.start, [source, upload, pasted, *settings], [runs], api_name="start_training") \
        .success(st.runs_update, [runs], [runs], **PRIVATE)
    stop.click(st.stop, [runs], [status, stop], api_name="stop_training")
    resume.click(st.resume, [runs], [status], api_name="resume_training")
    runs.change(st.poll, [runs], watch, show_progress="hidden", api_name="run_status")
    timer.tick(st.watch, [runs, shown], [*watch, runs, shown], show_progress="hidden", concurrency_limit=None,
               **PRIVATE)
    return runs, open_btn, plan, settings


def _size_values(size: str) -> list:
    values = studio.size_settings(size)
    return [values["vocab_size"], *(values[n] for n in studio.ADVANCED)]
