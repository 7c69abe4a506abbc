"""The studio: runs trained in worker processes (llm/worker.py), the Train tab's words (llm/studio.py) and its
handlers (training.py), the model selector (playground.Models), and the launched app through gradio_client."""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import gradio as gr
import pytest

import app
import train_cli
from conftest import ROOT, make_text
from llm import studio, worker
from llm.auto import NGRAM_ROWS
from llm.checkpoint import CheckpointError, read_metrics
from llm.config import SettingError
from llm.corpus import DataError
from llm.model import GPT
from llm.run import TrainConfig
from playground import FIRST, Models, Playground, load_playground
from training import SOURCES, Studio, StudioSettings

# a run of a few seconds: 1 layer x 32 dims (the Advanced settings, in studio.ADVANCED order)
ADVANCED = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 4, "lr": 3e-3,
            "max_steps": 40, "eval_interval": 10, "dropout": 0.0, "seed": 1, "val_frac": 0.1,
            "encoding_errors": "strict"}


def settings(**changes) -> list:
    """The Train tab's settings after the text: size, tokenizer, vocabulary, time budget, advanced."""
    adv = {**ADVANCED, **changes}
    return ["tiny", "bpe", 300, 600, *(adv[n] for n in studio.ADVANCED)]


def wait_for(out: Path, done, timeout: float = 120.0) -> worker.RunStatus:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = worker.run_status(out)
        if done(s):
            return s
        time.sleep(0.1)
    raise AssertionError(f"timed out; the run is {s.state}: {(out / worker.LOG).read_text()[-2000:]}")


def api_wait(client, name: str, words: str, timeout: float = 120.0) -> str:
    """Poll the app's /run_status (as the page does every 2 s) until the run's state reads `words`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.predict(name, api_name="/run_status")[0]
        if f"**: {words}" in status:
            return status
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {words!r}: {status}")


def start_job(runs: Path, name: str, corpus_text: str, **train) -> Path:
    out = worker.new_run(runs, name)
    (out / worker.UPLOAD).write_text(corpus_text, encoding="utf-8")
    model_cfg, cfg = studio.configs("tiny", "bpe", 300, 600.0, {**ADVANCED, **train},
                                    corpus=(str(out / worker.UPLOAD),), out=str(out))
    worker.write_job(out, model_cfg, cfg, threads=1, source="test")
    worker.launch(out)
    return out


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out) if r.get("kind") == "train"}


# -----------------------------------------------------------------------------
# the page's words and settings


@pytest.mark.parametrize("data, expected", [
    (b"", "the uploaded file is empty"),
    (b" \n\t", "only whitespace"),
    (b"abc\x00def" * 100, "binary file"),
    (b"hello \xff world" * 60, "not valid UTF-8: byte 0xff at offset 6"),
    (b"a short text", "too short for a context of 32 tokens"),
    (b"x" * 2000, "the limit here is 1.0 kB"),
], ids=["empty", "whitespace", "binary", "not-utf8", "short", "large"])
def test_a_page_corpus_is_checked_in_words(data, expected):
    with pytest.raises(DataError) as e:
        studio.check_text(data, "the uploaded file", 1000, 32, 0.1)
    message = studio.say(e.value)
    assert expected in message and "`" not in message and "--" not in message


def test_replace_lets_bad_bytes_through_and_a_long_enough_text_passes():
    text = studio.check_text(b"hello \xff world\n" * 100, "the pasted text", 10_000, 32, 0.1, errors="replace")
    assert "\ufffd" in text
    with pytest.raises(DataError, match="“Invalid UTF-8”"):  # its hint names the page's control
        try:
            studio.check_text(b"\xff" * 1000, "the pasted text", 10_000, 32, 0.1)
        except DataError as e:
            raise DataError(studio.say(e)) from None


def test_too_short_counts_characters_for_a_character_tokenizer():
    data = "é".encode() * 400  # 800 bytes, 400 characters; a context of 64 needs 650 tokens in all
    assert studio.check_text(data, "the pasted text", 10_000, 64, 0.1, tokenizer="bpe")  # up to 800 tokens
    with pytest.raises(DataError, match="at least 650 characters"):
        studio.check_text(data, "the pasted text", 10_000, 64, 0.1, tokenizer="char")


def test_configs_speak_the_page_labels():
    model, cfg = studio.configs("tiny", "bpe", 300, 60.0, ADVANCED)
    # a step count replaces the time budget, so that the schedule follows steps (exact on resume)
    assert (model.n_layer, model.vocab_size, cfg.max_steps, cfg.time_budget, cfg.compile) == (1, 300, 40, 0.0, False)
    assert studio.configs("tiny", "bpe", 300, 60.0, {**ADVANCED, "max_steps": 0})[1].time_budget == 60.0
    with pytest.raises(ValueError) as e:
        studio.configs("tiny", "bpe", 300, 60.0, {**ADVANCED, "n_embd": 33})
    assert studio.say(e.value) == "“Width” (33) must be divisible by “Heads” (2)"
    with pytest.raises(SettingError, match="whole number"):
        studio.configs("tiny", "bpe", 300, 60.0, {**ADVANCED, "n_layer": 1.5})
    assert studio.size_settings("small")["n_embd"] == 128  # the sizes are train_cli.py's presets' shapes
    # each size's cosine ends at a tenth of the page's lr (the large size took the gpt2 preset's fixed min_lr,
    # 6e-5, and refused a lower lr that the page had no way around)
    assert [studio.configs(size, "bpe", 4096, 60.0, {"lr": 3e-5})[1].min_lr for size in studio.SIZES] == \
        [3e-6] * len(studio.SIZES)
    # characters get the rule's n-gram embeddings, as train_cli.py gives them; BPE none
    assert studio.configs("tiny", "char", 300, 60.0, ADVANCED)[0].ngram_embed == NGRAM_ROWS
    assert model.ngram_embed == 0


def test_plan_counts_what_the_trainer_builds():
    model_cfg, cfg = studio.configs("tiny", "bpe", 300, 10.0, {**ADVANCED, "max_steps": 0})
    p = worker.plan(model_cfg, cfg, seconds_per_step=0.01)
    assert p.params == GPT(model_cfg).num_params()
    assert p.tokens_per_step == 4 * 32 and p.steps == 1000
    assert "1,000 steps in 10 s" in studio.plan_markdown(p, cfg, "cpu")
    assert worker.plan(model_cfg, TrainConfig(max_steps=50, time_budget=10.0), 0.01).steps == 50


def test_progress_and_status_escape_what_they_show():
    s = worker.RunStatus("<b>run</b>", "running", step=5, max_steps=10, message="<script>")
    assert "<b>run" not in studio.progress_html(s) and "step 5 of 10" in studio.progress_html(s)
    assert 'aria-valuenow="50"' in studio.progress_html(s)


# -----------------------------------------------------------------------------
# runs in worker processes


def test_stop_then_resume_ends_bit_identical_to_one_piece(tmp_path):
    text = make_text(400)
    ref = start_job(tmp_path / "runs", "ref", text)
    cut = start_job(tmp_path / "runs", "cut", text)
    wait_for(cut, lambda s: s.step >= 12)
    assert worker.stop(cut)
    s = wait_for(cut, lambda s: not s.live)
    assert s.state == "stopped" and 12 <= s.step < 40, s
    stopped_at = json.loads((cut / "last" / "meta.json").read_text())["step"]
    assert (cut / "best").is_dir()  # Stop evaluated: last/ and best/ are saved where it stopped
    assert json.loads((cut / "best" / "meta.json").read_text())["step"] == stopped_at == s.step
    worker.launch(cut, resume=True)
    assert wait_for(cut, lambda s: not s.live).state == "finished"
    assert wait_for(ref, lambda s: not s.live).state == "finished"
    a, b = losses(ref), losses(cut)
    assert sorted(a) == sorted(b) and a == b
    assert (ref / "last" / "model.safetensors").read_bytes() == (cut / "last" / "model.safetensors").read_bytes()


def test_a_killed_worker_is_marked_stopped_and_resumes(tmp_path):
    out = start_job(tmp_path / "runs", "killed", make_text(400), max_steps=100000)
    s = wait_for(out, lambda s: s.has_last and s.state == "running")
    os.kill(worker.read_json(out / worker.STATUS)["pid"], signal.SIGKILL)
    s = wait_for(out, lambda s: not s.live, timeout=30)
    assert s.state == "killed" and "stopped unexpectedly" in studio.run_label(s) and "resume" in s.message
    assert worker.stop(out) is False  # nothing runs there
    worker.launch(out, resume=True)
    wait_for(out, lambda s: s.state == "running" and s.step > 20)
    assert worker.stop(out)
    assert wait_for(out, lambda s: not s.live).state == "stopped"


def test_a_second_stop_is_not_sent_and_the_run_is_saved(tmp_path):
    out = start_job(tmp_path / "runs", "twice", make_text(400), max_steps=100000)
    wait_for(out, lambda s: s.state == "running" and s.step >= 10)
    assert worker.stop(out) and worker.stop(out)  # an impatient double click: one SIGTERM, one evaluation
    assert worker.run_status(out).stopping
    s = wait_for(out, lambda s: not s.live)
    assert s.state == "stopped" and s.message.startswith("stopped at step") and s.has_best, s


def test_a_dead_worker_is_not_taken_for_a_live_one(tmp_path):
    """status.json says "started" with the id of a live process that is no worker (ids are reused after a
    restart): the run is not "starting", Stop signals nobody, and a new run may start."""
    out = tmp_path / "runs" / "stale"
    out.mkdir(parents=True)
    (out / worker.JOB).write_text("{}")
    worker.write_json(out / worker.STATUS, {"state": "started", "pid": os.getpid()})
    s = worker.run_status(out)
    assert s.state == "killed" and not s.live
    assert worker.stop(out) is False  # and this test process is still here


def test_a_failed_run_with_a_save_resumes(tmp_path):
    st = Studio(StudioSettings(runs_dir=tmp_path / "runs"))
    out = start_job(tmp_path / "runs", "failing", make_text(400), max_steps=60)
    assert wait_for(out, lambda s: not s.live).state == "finished"
    worker.write_json(out / worker.STATUS, {"state": "failed", "message": "out of memory"})
    assert "resuming" in st.resume(out.name)
    assert wait_for(out, lambda s: not s.live).state == "finished"


def test_stop_before_the_first_step(tmp_path):
    out = start_job(tmp_path / "runs", "early", make_text(400))
    assert worker.run_status(out).state == "starting"
    assert worker.stop(out)
    s = wait_for(out, lambda s: not s.live, timeout=30)
    assert s.state == "stopped" and s.step == 0 and s.message == "stopped before the first training step", s
    assert not (out / "last").exists()


def test_a_cli_run_shows_live_and_finished(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    out = tmp_path / "runs" / "cli"
    from test_train import _run_cli

    p = _run_cli(["--corpus", str(corpus), "--out", str(out), "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
                  "--block-size", "32", "--batch-size", "4", "--vocab-size", "300", "--max-steps", "100000",
                  "--eval-interval", "10", "--no-progress", "--no-compile"], tmp_path)
    s = wait_for(out, lambda s: s.state == "running" and s.has_last)  # the settings: from its first save
    assert not s.from_page and s.max_steps == 100000 and s.tokens_per_sec
    assert [r.name for r in worker.list_runs(tmp_path / "runs")] == ["cli"]
    assert worker.stop(out)  # the page's Stop works on it too: SIGTERM, as train_cli.py handles it
    p.wait(timeout=60)
    assert worker.run_status(out).state == "stopped"  # before its step limit: not "finished"


# -----------------------------------------------------------------------------
# the Train tab's handlers


@pytest.fixture
def st(tmp_path) -> Studio:
    return Studio(StudioSettings(runs_dir=tmp_path / "runs", max_corpus_bytes=100_000, max_time_budget=600))


@pytest.mark.parametrize("data, expected", [
    (b"", "empty"), (b"\x00\x01\x02" * 400, "binary"), (b"\xc3\x28" * 600, "not valid UTF-8: byte 0xc3 at offset 0"),
    (b"x" * 200_000, "the limit here is 100.0 kB"), (b"tiny", "too short"),
], ids=["empty", "binary", "not-utf8", "large", "short"])
def test_bad_uploads_are_refused_in_words(st, tmp_path, data, expected):
    f = tmp_path / "upload.txt"
    f.write_bytes(data)
    with pytest.raises(gr.Error) as e:
        st.start(SOURCES[0], str(f), "", *settings())
    assert expected in e.value.message and str(tmp_path) not in e.value.message
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # nothing was started


def test_start_twice_stop_and_names_only(st, tmp_path):
    with pytest.raises(gr.Error, match="choose a .txt file"):
        st.start(SOURCES[0], None, "", *settings())
    # long enough to be stopped while it trains; 5,000 went over the 600 s limit on a loaded machine (the plan
    # scales a speed measured in the server, so load makes the steps look dearer)
    name = st.start(SOURCES[1], None, make_text(400), *settings(max_steps=2000))
    with pytest.raises(gr.Error, match="training already"):
        st.start(SOURCES[1], None, make_text(400), *settings())
    with pytest.raises(gr.Error, match="pick a run"):
        st.stop("../" + name)
    wait_for(tmp_path / "runs" / name, lambda s: s.state == "running" and s.step >= 10)
    line, stop_button = Studio(st.settings).stop(name)  # a restarted server finds the run and stops it
    assert "stopping" in line and stop_button["interactive"] is False
    wait_for(tmp_path / "runs" / name, lambda s: not s.live)
    status, _progress, plot, sample, stop, resume, open_btn, download, delete = st.poll(name)
    assert "stopped" in status and stop["interactive"] is False and resume["interactive"] and open_btn["interactive"]
    assert download["interactive"] and delete["interactive"]
    assert plot.count("<polyline") == 2 and "val (last" in plot and sample  # training and validation loss
    with pytest.raises(gr.Error, match="not training"):
        st.stop(name)
    *first, shown = st.watch(name, {})  # the timer's refresh sends the plot once, then skips it while unchanged
    assert first[2] == plot and first[-1]["choices"]
    *again, _ = st.watch(name, shown)
    assert again[2] == again[3] == again[-1] == gr.skip()
    shutil.rmtree(tmp_path / "runs" / name)  # deleted while selected
    assert "gone" in st.poll(name)[0]


def test_settings_out_of_range_are_refused(st):
    with pytest.raises(gr.Error, match="time budget"):
        st.configs("tiny", "bpe", 300, 10_000, *settings()[4:])
    with pytest.raises(gr.Error, match="model size"):
        st.configs("large", "bpe", 300, 60, *settings()[4:])  # GPU sizes only where there is a GPU
    assert "⚠️" in st.plan("tiny", "bpe", 300, 60, *settings(n_head=3)[4:])
    assert "parameters" in st.plan(*settings())


# -----------------------------------------------------------------------------
# the models a page picks from


def test_models_load_runs_by_name_and_drop_the_least_recent(tmp_path, run_dir_pair):
    first, runs = run_dir_pair
    models = Models(first, runs, keep=1)
    a, b = models.get("run/a"), models.get("run/b")
    assert a is not b and models.loaded() == ["run/b"]
    assert models.get(FIRST) is first
    assert models.get("run/b") is b  # held: not loaded again
    for bad in ("run/../a", "run/missing", "/etc/passwd", "run/"):
        with pytest.raises(CheckpointError, match="gone|no model"):
            models.get(bad)


@pytest.fixture
def run_dir_pair(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    from test_app import TINY_RUN

    for name in ("a", "b"):
        assert train_cli.main(["--corpus", str(corpus), "--out", str(tmp_path / "runs" / name), *TINY_RUN]) == 0
    first = Playground(*load_playground(str(tmp_path / "runs" / "a")))
    return first, tmp_path / "runs"


# -----------------------------------------------------------------------------
# the launched app


def test_upload_train_switch_and_generate_through_the_api(tmp_path):
    from gradio_client import Client, handle_file
    from test_app import free_port

    loaded = load_playground(str(tiny_run_dir(tmp_path)))
    demo = app.build_app(*loaded, stream_interval=0.0, settings=StudioSettings(runs_dir=tmp_path / "runs"))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        upload = tmp_path / "my text.txt"
        upload.write_text(make_text(400), encoding="utf-8")
        name = client.predict(SOURCES[0], handle_file(str(upload)), "", *settings(), api_name="/start_training")
        assert name.startswith("my_text-")
        out = tmp_path / "runs" / name
        api_wait(client, name, "finished")  # polled as the page does
        header = client.predict(f"run/{name}", api_name="/switch_model")
        assert "40 steps" in header  # the new run (the model opened first made 6)
        text, stats, *_ = client.predict("the", 20, api_name="/generate")
        assert text.startswith("the") and ("20 tokens" in stats or "end of text" in stats)
        # the model belongs to the session: another client still sees the model the server opened with
        other = Client(f"http://127.0.0.1:{port}/", verbose=False)
        sample = "the king shall speak to thee, sweet love"
        mine = json.loads(client.predict(sample, api_name="/tokenize")[0])
        theirs = json.loads(other.predict(sample, api_name="/tokenize")[0])
        assert mine == load_playground(str(out))[1].encode(sample) != theirs == loaded[1].encode(sample)
        with pytest.raises(Exception, match="pick a run"):
            client.predict("nope", api_name="/stop_training")

        # stop, resume, and a worker killed: the run is marked stopped, not left "training"
        name = client.predict(SOURCES[1], None, make_text(400), *settings(max_steps=5000), api_name="/start_training")
        out = tmp_path / "runs" / name
        wait_for(out, lambda s: s.state == "running" and s.step >= 10)
        client.predict(name, api_name="/stop_training")
        api_wait(client, name, "stopped")
        stopped = worker.run_status(out)
        client.predict(name, api_name="/resume_training")
        wait_for(out, lambda s: s.state == "running" and s.step > stopped.step)
        os.kill(worker.read_json(out / worker.STATUS)["pid"], signal.SIGKILL)
        api_wait(client, name, "stopped unexpectedly")
    finally:
        demo.close()


def tiny_run_dir(tmp_path) -> Path:
    from test_app import TINY_RUN

    if (tmp_path / "first" / "best").is_dir():
        return tmp_path / "first"
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    assert train_cli.main(["--corpus", str(corpus), "--out", str(tmp_path / "first"), *TINY_RUN]) == 0
    return tmp_path / "first"


def test_downloads_share_one_folder_made_at_the_first_and_removed_with_the_studio(tmp_path, monkeypatch):
    """A studio made a temporary folder for its .zip files when it was built and never removed it: every server
    (and every test) left one behind."""
    import gc
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    (tmp_path / "runs").mkdir()
    tiny_run_dir(tmp_path / "runs")

    def folders() -> list:
        return list(tmp.glob("scratchgpt-downloads-*"))

    st = Studio(StudioSettings(runs_dir=tmp_path / "runs", train_threads=1))
    assert folders() == []  # nothing until a download
    first, again = Path(st.download("first")), Path(st.download("first"))
    assert first == again and first.is_file() and folders() == [first.parent]
    del st
    gc.collect()
    assert folders() == []


def test_a_run_outlives_a_server_restart(tmp_path):
    """`python app.py` killed while its run trains, started again: the run trained on, is listed as training,
    and the new server stops it."""
    import subprocess
    import sys
    import urllib.request

    from gradio_client import Client
    from test_app import free_port

    def serve() -> tuple[subprocess.Popen, Client]:
        port = free_port()
        env = {**os.environ, "SCRATCHGPT_RUNS": str(tmp_path / "runs"), "GRADIO_ANALYTICS_ENABLED": "False"}
        p = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint", str(tiny_run_dir(tmp_path)),
                              "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                return p, Client(f"http://127.0.0.1:{port}/", verbose=False)
            except OSError:
                time.sleep(0.2)
        p.kill()
        raise AssertionError("app.py did not serve")

    server, client = serve()
    try:
        name = client.predict(SOURCES[1], None, make_text(400), *settings(max_steps=5000), api_name="/start_training")
        api_wait(client, name, "training")
    finally:
        server.kill()
        server.wait()
    out = tmp_path / "runs" / name
    before = worker.run_status(out).step
    server, client = serve()
    try:
        api_wait(client, name, "training")
        assert worker.run_status(out).step > before  # it went on without a server
        client.predict(name, api_name="/stop_training")
        api_wait(client, name, "stopped")
    finally:
        server.kill()
        server.wait()
