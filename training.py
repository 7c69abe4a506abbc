"""The Train tab's handlers: bring a text, train a tokenizer and a GPT on it in a worker process, watch it learn.

    Studio(StudioSettings)       plan, start, stop, resume, poll, download, delete, push, and in a public studio
                                 the line of waiting runs (plain methods; tests call them)
    curve_svg(rows)              a run's loss curves as the page draws them

The layout and wiring are train_tab.py's.
Training itself is llm.worker (a process per run, through llm.train as train_cli.py); the words and the settings
(llm.studio.StudioSettings) are llm.studio's; whose run is whose, the line and the caps are llm.public's.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import torch

from llm import card, hub, public, studio, viz, worker
from llm.checkpoint import CONFIG
from llm.config import SettingError
from llm.corpus import BUILTIN_CORPORA, DataError
from llm.model import GPT, ModelConfig
from llm.run import TrainConfig
from llm.studio import StudioSettings
from playground import fail

SOURCES = ["upload a .txt file", "paste text", *BUILTIN_CORPORA]
NO_RUN = "Start a run, or pick one above to watch it."
RESUMABLE = ("stopped", "killed", "failed")  # with a last/ checkpoint
TIMED_FLOPS = 5e9  # a model whose timing pass costs more is estimated from its FLOPs instead


class Studio:
    """The Train tab's handlers. Runs are named, never located by a path from the page: a name must be one of
    the runs directory's own entries."""

    def __init__(self, settings: StudioSettings):
        self.settings = settings
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.sizes = [s for s in studio.SIZES if self.device == "cuda" or s not in studio.GPU_SIZES]
        self._flops: float | None = None  # training FLOP/s measured here once, for the plans of big models
        self._timed: dict[tuple, float] = {}  # seconds per step, by shape
        self._lock = threading.RLock()  # one start, resume or launch from the line at a time: two cannot both pass
        self._keeper: threading.Thread | None = None  # starts waiting runs in their turn (public)
        self._downloads: tempfile.TemporaryDirectory | None = None  # made at the first download, gone with this
        self.slicer = None  # (OUT, seconds) -> done: trains a slice here (ZeroGPU; app.py sets it), else processes
        self.hub_api = lambda token: None  # token -> the Hub client for a push (None: huggingface_hub's; tests fake it)

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

    def start(self, source: str, upload, pasted: str, *settings, key: str = ""):
        """A new run from the page's text and settings -> its name. In a public studio it is the visitor's (`key`),
        and it waits in line while others train."""
        owner = self._owner(key)
        model_cfg, cfg = self.configs(*settings)
        self.check_steps(model_cfg, cfg)
        corpus, data, stem = self._corpus(source, upload, pasted, model_cfg.block_size, cfg)
        with self._lock:
            wait = self._must_wait()
            if not self.settings.public and self.slicer is None:
                self._check_room()
            self._make_room()
            out = None
            try:
                out = worker.new_run(self.settings.runs_dir, stem)
                if data is not None:
                    (out / worker.UPLOAD).write_bytes(data)
                    corpus = (str(out / worker.UPLOAD),)
                cfg = dataclasses.replace(cfg, corpus=corpus, out=str(out))
                worker.write_job(out, model_cfg, cfg, self.settings.train_threads, source=stem.replace("_", " "),
                                 owner=owner)
                if wait:
                    public.enqueue(out)
                else:
                    worker.launch(out)
            except (OSError, RuntimeError) as e:  # a full disk, a runs directory that cannot be written
                if out is not None:
                    shutil.rmtree(out, ignore_errors=True)  # nothing of it trained: no half run left listed
                raise fail(f"could not start the run: {_reason(e)}") from None
        if wait:
            self._keep_line()
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

    def _must_wait(self) -> bool:
        """Whether a run starting now goes into the line: always when slices train here; in a public studio when
        others train or wait."""
        return self.slicer is not None or self.settings.public and (
            self._live() >= self.settings.max_live_runs or bool(public.line(self.settings.runs_dir)))

    def _live(self) -> int:
        return sum(r.live for r in worker.list_runs(self.settings.runs_dir))

    def _make_room(self) -> None:
        """The owner's caps before a new run: the line's length, then the runs kept and their disk, the oldest
        finished visitor runs removed first; refused in words when the room is not there."""
        st = self.settings
        if st.public and len(public.line(st.runs_dir)) >= st.max_waiting:
            raise fail(self._full())
        public.prune(st.runs_dir, st.keep_runs, st.max_runs_bytes)
        if st.keep_runs is not None and len(worker.list_runs(st.runs_dir)) >= st.keep_runs:
            raise fail(f"this server keeps {st.keep_runs} runs at most, and none can be removed (each is training, "
                       "waiting or provided): try again later")
        if st.max_runs_bytes is not None and (used := public.disk_used(st.runs_dir)) >= st.max_runs_bytes:
            raise fail(f"the runs here use {card.fmt_bytes(used)}, all this server allows them "
                       f"({card.fmt_bytes(st.max_runs_bytes)}), and none can be removed: try again later")

    def _full(self) -> str:
        return (f"the line is full: {self.settings.max_waiting} waiting to train, the most this server takes; try "
                "again later")

    def _owner(self, key) -> str | None:
        """The visitor's id in a public studio (gr.Error when the page sent no key); None in a private one."""
        if not self.settings.public:
            return None
        oid = public.owner_id(key)
        if oid is None:
            raise fail("this page sent no visitor key (the page keeps one in the browser's storage): reload it")
        return oid

    def mine(self, s: worker.RunStatus, key) -> bool:
        """Whether this visitor may list, stop, resume, download or delete the run: anyone in a private studio."""
        return not self.settings.public or public.owns(s, key)

    def run_dir(self, name: str, key: str = "") -> Path:
        """A run's directory from its name, only if the runs directory lists it and it is this visitor's (a run of
        another's reads as one that does not exist)."""
        out = worker.find_run(self.settings.runs_dir, name)
        if out is None or not self.mine(worker.run_status(out, metrics=False), key):
            raise fail("pick a run from the list (it may have been deleted)")
        return out

    # --- the line (a public studio)

    def advance(self) -> list[str]:
        """Launch waiting runs, oldest first, while fewer than max_live_runs train; the names launched. With a
        slicer (ZeroGPU) the first in line trains one slice here instead, and goes to the back of the line if it
        is not done: visitors take turns on the one GPU."""
        if self.slicer is not None:
            return self._slice()
        launched = []
        with self._lock:
            for out, resume in public.line(self.settings.runs_dir):
                if self._live() >= self.settings.max_live_runs:
                    break
                try:
                    worker.launch(out, resume=resume)
                    launched.append(out.name)
                except (OSError, RuntimeError) as e:
                    (out / worker.QUEUED).unlink(missing_ok=True)
                    worker.write_json(out / worker.STATUS, {"state": "failed", "message":
                                                            f"could not start: {_reason(e)}", "time": time.time()})
        return launched

    def _slice(self) -> list[str]:
        with self._lock:
            waiting = public.line(self.settings.runs_dir)
            if not waiting:
                return []
            out = waiting[0][0]
            (out / worker.QUEUED).unlink(missing_ok=True)
            # started from now on, while a GPU is found: never read as ended, removable or stopped unseen
            worker.write_json(out / worker.STATUS, {"state": "started", "time": time.time(), "pid": os.getpid(),
                                                    "slice": True})
        try:
            done = self.slicer(out, self.settings.slice_seconds)  # the lock is free meanwhile: pages stay responsive
        except Exception as e:  # noqa: BLE001 - no GPU given (quota, a timeout): the run ends failed, the line goes on
            worker.write_json(out / worker.STATUS, {"state": "failed", "time": time.time(), "message":
                                                    f"its training slice failed: {type(e).__name__}: {e}"})
            return [out.name]
        if not done:
            with self._lock:
                public.enqueue(out, resume=True)
        return [out.name]

    def restart_line(self) -> None:
        """A server started again: runs left waiting in line get a keeper."""
        if (self.settings.public or self.slicer is not None) and public.line(self.settings.runs_dir):
            self._keep_line()

    def _keep_line(self) -> None:
        """The thread that starts waiting runs in their turn (one per studio, from the first run that waits)."""
        with self._lock:
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep, name="scratchgpt-line", daemon=True)
                self._keeper.start()

    def _keep(self) -> None:
        while True:
            try:
                self.advance()
                with self._lock:  # decided under the lock that enqueues: no run can join unseen as it ends
                    if not public.line(self.settings.runs_dir):
                        self._keeper = None  # the next run to wait starts a keeper again
                        return
            except Exception as e:  # noqa: BLE001 - the line must not stop for good: say it, try again
                print(f"scratchgpt: the line of runs: {type(e).__name__}: {e}", flush=True)
            time.sleep(1.0)

    def stop(self, name: str, key: str = ""):
        """-> (the status line, the Stop button: off, so that a second press cannot stop the run unsaved)."""
        out = self.run_dir(name, key)
        with self._lock:  # the keeper cannot launch it meanwhile
            s = worker.run_status(out, metrics=False)
            if s.state == "queued":
                public.leave(out)
                return f"**{name}**: left the line before it trained", gr.update(interactive=False)
        if self.slicer is not None and s.live:
            (out / worker.HALT).touch()  # the slice training here stops at its next step
            return f"**{name}**: stopping: evaluating and saving…", gr.update(interactive=False)
        if not worker.stop(out):
            raise fail(f"{name} is not training")
        how = "evaluating and saving" if s.from_page else "saving, as Ctrl-C would"
        return f"**{name}**: stopping: {how}…", gr.update(interactive=False)

    def resume(self, name: str, key: str = "") -> str:
        out = self.run_dir(name, key)
        s = worker.run_status(out)
        if s.live or s.state == "queued":
            raise fail(f"{name} is {studio.STATE_WORDS[s.state]} already")
        if not s.has_last:
            raise fail(f"{name} has nothing to resume from: it saved no checkpoint (start a new run)")
        if s.state not in RESUMABLE:
            raise fail(f"{name} is {studio.STATE_WORDS.get(s.state, s.state)}: only a run that stopped resumes")
        with self._lock:
            if self._must_wait():
                if len(public.line(self.settings.runs_dir)) >= self.settings.max_waiting:
                    raise fail(self._full())
                public.enqueue(out, resume=True)
                waiting = True
            else:
                self._check_room()
                waiting = False
                try:
                    worker.launch(out, resume=True)
                except (OSError, RuntimeError) as e:
                    raise fail(f"could not resume {name}: {_reason(e)}") from None
        if waiting:
            self._keep_line()
            return f"**{name}**: waiting in line to resume"
        return f"**{name}**: resuming from its last save…"

    # --- taking a run away

    def download(self, name: str, key: str = "") -> str:
        """The run's model, curves and settings as one .zip (a path Gradio serves)."""
        out = self.run_dir(name, key)
        if not (out / "best" / CONFIG).is_file():
            raise fail(f"{name} has no saved model yet: its first evaluation saves one")
        try:
            with self._lock:
                self._downloads = self._downloads or tempfile.TemporaryDirectory(prefix="scratchgpt-downloads-")
            return str(public.archive(out, self._downloads.name))  # NAME.zip made again over the last one
        except OSError as e:
            raise fail(f"could not pack {name}: {_reason(e)}") from None

    def delete(self, name: str, key: str = "") -> str:
        """Remove a run that is not training (a waiting one leaves the line); its files are gone for good."""
        out = self.run_dir(name, key)
        with self._lock:  # the keeper cannot launch it meanwhile
            s = worker.run_status(out, metrics=False)
            if s.live:
                raise fail(f"{name} is training: stop it first")
            try:
                shutil.rmtree(out)
            except OSError as e:
                raise fail(f"could not delete {name}: {_reason(e)}") from None
        return f"**{name}** is deleted."

    def push(self, name: str, repo_id: str, private: bool = False, key: str = "", oauth_token: str | None = None) \
            -> str:
        """Push the run's best/ with its model card to a model repo on the Hub -> a line with its address. The
        token: the visitor's Hugging Face login (OAuth, on a Space) or, in a private studio, the one saved on this
        machine or $HF_TOKEN; it is never stored, logged or shown, and a public studio never uses its own."""
        out = self.run_dir(name, key)
        if not (out / "best" / CONFIG).is_file():
            raise fail(f"{name} has no saved model yet: its first evaluation saves one")
        repo_id = (repo_id or "").strip()
        try:
            hub.check_repo_id(repo_id)  # before anything is uploaded
        except hub.HubError as e:
            raise fail(str(e)) from None
        token = oauth_token or (None if self.settings.public else hub.get_token())
        if not token:
            raise fail("sign in with Hugging Face first (the button above)" if self.settings.public else
                       "no Hugging Face token here: run `hf auth login` or set HF_TOKEN, then push again")
        try:
            url = hub.push_checkpoint(out / "best", repo_id, private=bool(private), token=token,
                                      api=self.hub_api(token))
        except hub.HubError as e:
            raise fail(str(e).replace(token, "<token>")) from None
        return f"Pushed to [{repo_id}]({url}): its model card, weights and tokenizer."

    # --- watching

    def runs(self, key: str = "") -> list[worker.RunStatus]:
        """The runs this visitor's list shows, the newest first."""
        return [r for r in worker.list_runs(self.settings.runs_dir) if self.mine(r, key)]

    def api_runs(self, key: str = "") -> list[dict]:
        """The runs this visitor may watch: name, state and best bits per byte of each, the newest first."""
        self._owner(key)
        return [{"name": r.name, "state": r.state, "best_bits_per_byte": r.best_bits_per_byte} for r in self.runs(key)]

    def runs_update(self, value: str | None = None, key: str = ""):
        runs = self.runs(key)
        choices = [(studio.run_label(r), r.name) for r in runs]
        if value is None or value not in [r.name for r in runs]:  # a page opened afresh, or a run deleted
            value = next((r.name for r in runs if r.live), runs[0].name if runs else None)
        return gr.update(choices=choices, value=value)

    def watch(self, name: str | None, shown: dict, key: str = ""):
        """The timer's refresh: poll's outputs, each skipped when it is what this page shows already (`shown`, a
        session's state, returned updated): a plot redrawn every tick flickers, and a list updated under the
        user's hand closes."""
        choices = [[studio.run_label(r), r.name] for r in self.runs(key)]
        status, progress, plot, sample, *buttons = self.poll(name, key)
        now = {"plot": plot, "sample": (name, sample), "choices": choices}
        keep = {k: shown.get(k) == v for k, v in now.items()}  # the plot's SVG itself: a few KB
        return (status, progress, gr.skip() if keep["plot"] else plot, gr.skip() if keep["sample"] else sample,
                *buttons, gr.skip() if keep["choices"] else gr.update(choices=choices), now)

    def poll(self, name: str | None, key: str = ""):
        """(status line, progress bar, loss plot, sample, Stop, Resume, Open, Download, Delete) for the run being
        watched."""
        if not name:
            return NO_RUN, "", curve_svg([]), "", *_buttons(None)
        out = worker.find_run(self.settings.runs_dir, name)
        s = worker.run_status(out) if out is not None else None
        if s is None or not self.mine(s, key):
            return f"**{viz.escape_markdown(name)}** is gone (deleted?): pick another run", "", curve_svg([]), "", \
                *_buttons(None)
        where = public.place(self.settings.runs_dir, name) if s.state == "queued" else None
        return (studio.status_markdown(s, where), studio.progress_html(s), curve_svg(s.rows), s.sample,
                *_buttons(s))


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
    """Stop, Resume, Open, Download, Delete: on where they would do something."""
    live = bool(s and s.live)
    queued = bool(s and s.state == "queued")
    return (gr.update(interactive=live and not s.stopping or queued),
            gr.update(interactive=bool(s and not live and s.has_last and s.state in RESUMABLE)),
            gr.update(interactive=bool(s and s.has_best)), gr.update(interactive=bool(s and s.has_best)),
            gr.update(interactive=bool(s and not live)))
