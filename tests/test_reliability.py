"""Faults a careless or a hostile user runs into: settings that must be used or refused, paths that must not be
published, runs that must not trip over each other or over stale files, inputs that must end in one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import train_cli
from conftest import ROOT, TINY, make_text
from llm import hub
from llm.checkpoint import read_config, read_meta, read_metrics
from llm.data import load_split, prepare
from llm.tokenizer import CharTokenizer

RUN = [*TINY, "--eval-interval", "2", "--sample-tokens", "0"]


def run_cli(capsys, *argv) -> tuple[int, str]:
    rc = train_cli.main([*argv])
    return rc, capsys.readouterr().err


def start_cli(args, cwd, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **kw.pop("env", {})}
    return subprocess.Popen([sys.executable, str(ROOT / "train_cli.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


# --- settings: every key used or refused ------------------------------------------------------------------


def test_config_file_sections_are_all_used(tmp_path):
    """A model: section and a training: section (or train:): both used, none dropped."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model:\n  n_layer: 1\n  n-embd: 32\ntraining:\n  max_steps: 3\n  lr: 0.001\n")
    assert train_cli.read_config_file(str(cfg)) == {"n_layer": 1, "n_embd": 32, "max_steps": 3, "lr": 0.001}
    cfg.write_text(json.dumps({"version": 1, "model": {"vocab_size": 300}, "train": {"vocab_size": 300}}))
    assert train_cli.read_config_file(str(cfg)) == {"vocab_size": 300}


@pytest.mark.parametrize("text, words", [
    ("model:\n  n_layer: 1\nlr: 0.1\n", "lr beside the model/train sections"),
    ("model:\n  lr: 0.1\n", "model.lr is a training setting"),
    ("training:\n  n_head: 2\n", "training.n_head is a model setting"),
    ("train:\n  n_layers: 2\n", "train.n_layers is no setting"),
    ("model: 3\n", "model: expected a mapping"),
    ("train:\n  lr: 0.1\ntraining:\n  lr: 0.2\n", "both a train and a training section"),
    ("model:\n  vocab_size: 300\ntrain:\n  vocab_size: 400\n", "vocab_size is 300 in one section and 400"),
])
def test_config_file_keys_not_used_are_refused(tmp_path, capsys, text, words):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    rc, err = run_cli(capsys, "--corpus", str(tmp_path / "c.txt"), "--config", str(cfg))
    assert rc == 1 and words in err and len(err.strip().splitlines()) == 1


def test_a_checkpoints_config_json_works_as_a_settings_file(short_run, tmp_path):
    """Its model.vocab_size (what a char tokenizer came out at, not the 1024 asked for) and train.out are what the
    run recorded, not settings: passed over, not refused and not used."""
    corpus, out = short_run
    char = tmp_path / "char"
    assert train_cli.main(["--corpus", str(corpus), "--out", str(char), *RUN, "--max-steps", "2",
                           "--tokenizer", "char"]) == 0
    flat = train_cli.read_config_file(str(char / "last" / "config.json"))
    assert flat["tokenizer"] == "char" and flat["vocab_size"] == 300 and "out" not in flat


def test_settings_given_on_resume_are_checked_like_a_new_runs(short_run, tmp_path, capsys):
    corpus, out = short_run
    cfg = tmp_path / "more.yaml"
    cfg.write_text("train:\n  time_budget: '60'\n")
    rc, err = run_cli(capsys, "--out", str(out), "--resume", "--config", str(cfg))
    assert rc == 1 and "--time-budget must be a number" in err and len(err.strip().splitlines()) == 1


def test_resume_says_where_the_corpus_is_missing(short_run, tmp_path, capsys):
    corpus, out = short_run
    corpus.rename(tmp_path / "moved.txt")
    rc, err = run_cli(capsys, "--out", str(out), "--resume", "--max-steps", "6")
    assert rc == 1 and "is not at" in err and "--corpus" in err
    assert train_cli.main(["--out", str(out), "--resume", "--max-steps", "6", "--corpus",
                           str(tmp_path / "moved.txt"), "--no-progress"]) == 0


def test_a_number_written_as_text_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train:\n  lr: 2e-3\n")  # YAML 1.1 reads 2e-3 as a string
    rc, err = run_cli(capsys, "--corpus", str(tmp_path / "c.txt"), "--config", str(cfg))
    assert rc == 1 and "--lr must be a number, got '2e-3'" in err and "2.0e-3" in err
    assert len(err.strip().splitlines()) == 1


@pytest.fixture
def short_run(tmp_path, capsys):
    """A finished 4-step run: (corpus, out)."""
    corpus, out = tmp_path / "corpus.txt", tmp_path / "run"
    corpus.write_text(make_text(), encoding="utf-8")
    assert train_cli.main(["--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", "4"]) == 0
    capsys.readouterr()
    return corpus, out


def test_resume_checks_config_files_and_presets_like_flags(short_run, tmp_path, capsys):
    corpus, out = short_run
    rc, err = run_cli(capsys, "--out", str(out), "--resume", "--preset", "tiny")
    assert rc == 1 and "--n-layer" in err and "--resume" in err  # the preset's model is not the run's
    cfg = tmp_path / "more.json"
    cfg.write_text(json.dumps({"max_steps": 6}))
    assert train_cli.main(["--out", str(out), "--resume", "--config", str(cfg), "--no-progress"]) == 0
    assert read_meta(out / "last")["step"] == 6 and "max_steps 6 (was 4)" in capsys.readouterr().out


def test_resume_refuses_a_corpus_edited_in_place(short_run, capsys):
    corpus, out = short_run
    corpus.write_text(make_text(seed=1), encoding="utf-8")
    rc, err = run_cli(capsys, "--out", str(out), "--resume", "--max-steps", "6", "--no-progress")
    assert rc == 1 and "is not the text this run was trained on" in err
    assert read_meta(out / "last")["step"] == 4


# --- privacy: names, not paths ------------------------------------------------------------------------------


def test_no_path_of_the_machine_in_a_run_or_its_upload(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    corpus, out = home / "diary.txt", home / "runs" / "mine"
    corpus.write_text(make_text(), encoding="utf-8")
    assert train_cli.main(["--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", "4"]) == 0
    stage = hub.stage_checkpoint(out, tmp_path / "stage", sample_tokens=0)
    leaks = [p for p in [*out.rglob("*"), *stage.rglob("*")] if p.is_file() and str(home).encode() in p.read_bytes()]
    assert not leaks
    assert read_config(out / "best")[1]["corpus"] == ["diary.txt"] and read_meta(stage)["corpus"] == ["diary.txt"]
    assert train_cli.main(["--out", str(out), "--resume", "--max-steps", "6", "--no-progress"]) == 0  # still found


def test_the_bundled_model_holds_no_path():
    for name in ("config.json", "meta.json"):
        text = (ROOT / "assets" / "model" / name).read_text(encoding="utf-8")
        assert "/" not in "".join(json.loads(text).get("train", {}).get("corpus", [])) and '"/' not in text, name


# --- runs and stale files ---------------------------------------------------------------------------------------


def test_a_second_run_on_the_same_directory_is_refused_and_a_dead_ones_lock_taken(tmp_path, capsys):
    corpus, out = tmp_path / "corpus.txt", tmp_path / "run"
    corpus.write_text(make_text(), encoding="utf-8")
    first = start_cli(["--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", "100000",
                       "--eval-interval", "1000", "--log-interval", "1"], tmp_path)
    try:
        wait_for(lambda: len(read_metrics(out)) >= 2)
        rc, err = run_cli(capsys, "--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", "4",
                          "--overwrite")
        assert rc == 1 and f"in use by process {first.pid}" in err and len(err.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / ".lock").exists()  # left by the killed run, held by nobody
    assert train_cli.main(["--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", "4", "--overwrite"]) == 0
    assert not (out / ".lock").exists()


def test_token_files_that_do_not_match_data_json_are_rebuilt(tmp_path):
    """A run killed between writing the token files and data.json must not leave a key vouching for them."""
    a, b = make_text(seed=0), make_text(n_lines=400, seed=1)
    tok = CharTokenizer.train(a + b)
    info_a = prepare([a], tok, tmp_path / "a", val_frac=0.1)
    prepare([b], tok, tmp_path / "b", val_frac=0.1)
    for name in ("train.bin", "val.bin"):  # b's tokens under a's data.json
        (tmp_path / "a" / name).write_bytes((tmp_path / "b" / name).read_bytes())
    assert prepare([a], tok, tmp_path / "a", val_frac=0.1) == info_a
    ids = np.concatenate([load_split(tmp_path / "a" / "train.bin"), load_split(tmp_path / "a" / "val.bin")])
    assert tok.decode(ids.tolist()) == a


def test_an_empty_data_json_does_not_block_the_directory(short_run, capsys):
    corpus, out = short_run
    (out / "data.json").write_text("")
    rc, err = run_cli(capsys, "--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", "2", "--overwrite")
    assert rc == 0, err


def test_a_new_run_starts_a_new_log(tmp_path, capsys):
    corpus, out = tmp_path / "corpus.txt", tmp_path / "run"
    corpus.write_text(make_text(), encoding="utf-8")
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 2, "val_loss": 9.0}) + "\n")
    assert train_cli.main(["--corpus", str(corpus), "--out", str(out), *RUN, "--max-steps", "4"]) == 0
    assert [r["step"] for r in read_metrics(out) if r["kind"] == "eval"] == [2, 4]
    assert all(r.get("val_loss") != 9.0 for r in read_metrics(out))


# --- faults that must end in one line ---------------------------------------------------------------------


@pytest.mark.parametrize("writer, error", [
    ("save_file", "SafetensorError"),  # safetensors' words for a full disk
    ("torch_save", "RuntimeError"),  # torch's: "[enforce fail at inline_container.cc] ... file write failed"
])
def test_disk_full_while_saving_is_one_line_and_keeps_the_last_checkpoint(short_run, monkeypatch, capsys,
                                                                          writer, error):
    from safetensors import SafetensorError

    from llm import checkpoint

    corpus, out = short_run
    before = (out / "last" / "model.safetensors").read_bytes()

    def full(*args, **kwargs):
        raise (SafetensorError if error == "SafetensorError" else RuntimeError)(
            "No space left on device (os error 28)\nmore lines of the library's own")

    if writer == "save_file":
        monkeypatch.setattr(checkpoint, "save_file", full)
    else:
        monkeypatch.setattr(checkpoint.torch, "save", full)
    rc, err = run_cli(capsys, "--out", str(out), "--resume", "--max-steps", "6", "--no-progress")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert str(out / "last") in err and "No space left on device" in err and "Traceback" not in err
    assert (out / "last" / "model.safetensors").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def broken_copy(src: Path, dest: Path, config=None, tokenizer=None, meta=None) -> Path:
    """A copy of the checkpoint src with config.json, tokenizer.json or meta.json edited."""
    import shutil

    shutil.copytree(src, dest)
    for name, edit in (("config.json", config), ("tokenizer.json", tokenizer), ("meta.json", meta)):
        if edit:
            obj = json.loads((dest / name).read_text())
            edit(obj)
            (dest / name).write_text(json.dumps(obj))
    return dest


BROKEN = {
    "vocab_size 1e12": dict(config=lambda c: c["model"].update(vocab_size=10**12)),
    "n_layer 1e9": dict(config=lambda c: c["model"].update(n_layer=10**9)),
    "block_size 1e12": dict(config=lambda c: c["model"].update(block_size=10**12)),
    "block_size 1e12 learned": dict(config=lambda c: c["model"].update(block_size=10**12, pos="learned")),
    "n_layer as text": dict(config=lambda c: c["model"].update(n_layer="2")),
    "invalid split regex": dict(tokenizer=lambda t: t.update(pattern="(unclosed")),
    "special tokens as a list": dict(tokenizer=lambda t: t.update(special_tokens=["<|endoftext|>"])),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_malformed_checkpoint_is_refused_before_a_model_is_built(short_run, tmp_path, monkeypatch, capsys, case):
    from llm import checkpoint

    _, out = short_run
    d = broken_copy(out / "best", tmp_path / "broken", **BROKEN[case])
    built = []
    monkeypatch.setattr(checkpoint, "GPT", lambda config: built.append(config))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_checkpoint(d)
    assert not built and "\n" not in str(e.value)
    monkeypatch.undo()
    from llm.generate import main as generate_main

    assert generate_main(["--checkpoint", str(d), "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_wrongly_typed_metadata_and_metrics_still_open_in_the_app(short_run, tmp_path):
    import app

    _, out = short_run
    d = broken_copy(out, tmp_path / "odd", meta=None)
    for kind in ("best", "last"):
        meta = json.loads((d / kind / "meta.json").read_text())
        meta.update(val_loss="low", step="many", bits_per_byte=None)
        (d / kind / "meta.json").write_text(json.dumps(meta))
    with open(d / "metrics.jsonl", "a") as f:
        f.write('[1, 2]\n"text"\n{"kind": "eval", "step": "x", "val_loss": "y"}\n')
    loaded = app.load_playground(str(d))
    assert "val loss" not in app.Playground(*loaded).header()
    app.build_app(*loaded)
    assert train_cli.main(["--out", str(d), "--resume", "--max-steps", "6", "--no-progress"]) == 0


def test_a_pickled_training_state_is_refused_without_suggesting_to_unpickle_it(short_run, capsys):
    import torch

    _, out = short_run
    state = torch.load(out / "last" / "train_state.pt", weights_only=True)
    state["note"] = subprocess.CompletedProcess  # any class: what weights_only refuses
    torch.save(state, out / "last" / "train_state.pt")
    rc, err = run_cli(capsys, "--out", str(out), "--resume", "--max-steps", "6")
    assert rc == 1 and "not loaded" in err and "weights_only" not in err and len(err.strip().splitlines()) == 1


def test_a_diverged_run_never_saves_broken_weights_and_sampling_says_so(short_run, capsys):
    """A sound run, then lr 1e30: the loss can stay finite while the weights or scores are not; best/ and last/
    must keep the sound weights, and sampling from huge weights ends in one line, not an index error."""
    import torch

    from llm.checkpoint import load_checkpoint
    from llm.model import GPT, ModelConfig
    from llm.sample import SampleConfig, generate
    from llm.tokenizer import Tokenizer

    corpus, out = short_run
    state = torch.load(out / "last" / "train_state.pt", weights_only=True)
    for opt in state["optimizers"]:  # the run goes on as before, but with a learning rate that blows up
        for group in opt["param_groups"]:
            group["initial_lr"] = 1e30
    torch.save(state, out / "last" / "train_state.pt")
    sound = {k: (out / k / "model.safetensors").read_bytes() for k in ("best", "last")}
    rc, err = run_cli(capsys, "--out", str(out), "--resume", "--max-steps", "12", "--sample-tokens", "8",
                      "--no-progress")
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1
    assert rc == 1 and "not finite" in err  # it diverged
    for kind in ("best", "last"):
        model, tokenizer, _ = load_checkpoint(out / kind)
        assert all(torch.isfinite(p).all() for p in model.parameters()), kind
        if read_meta(out / kind)["step"] > 4:  # saved after the blow-up: then it must still sample
            assert list(generate(model, tokenizer, "x", SampleConfig(max_new_tokens=4, seed=0)))
        else:
            assert (out / kind / "model.safetensors").read_bytes() == sound[kind]
    tok = Tokenizer(special_tokens=("<|endoftext|>",))
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=257, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        model.wte.weight.fill_(float("nan"))  # broken for sure: huge weights overflow or not by summation order
    for kw in ({}, {"top_k": 5}, {"temperature": 0.0}):
        with pytest.raises(ValueError, match="scores are not finite"):
            list(generate(model, tok, "hi", SampleConfig(max_new_tokens=5, seed=0, **kw)))


@pytest.mark.parametrize("args, words", [
    (["--max-new-tokens", str(10**12)], "--max-new-tokens must be an integer >= 1 and <= 100000"),
    (["--num-samples", str(10**6)], "--num-samples must be an integer >= 1 and <= 64"),
])
def test_generate_caps_what_one_command_asks_for(args, words):
    proc = subprocess.run([sys.executable, "-m", "llm.generate", "--checkpoint", "assets/model", "--prompt", "x",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_generate_with_standard_output_closed_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "llm.generate", "--checkpoint", "assets/model", "--prompt", "x",
                           "--max-new-tokens", "3"], cwd=ROOT, stderr=subprocess.PIPE, text=True, timeout=120,
                          preexec_fn=lambda: os.close(1))
    assert proc.returncode == 1 and proc.stderr.strip() == "error: standard output is closed: nowhere to write the text"


def test_the_nan_stop_suggests_grad_clip_only_when_it_would_change_something(tmp_path, monkeypatch, capsys):
    from llm import train as train_mod

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    real_forward = train_mod.GPT.forward

    def nan_forward(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        return logits, (loss * float("nan") if loss is not None else None)

    monkeypatch.setattr(train_mod.GPT, "forward", nan_forward)
    for clip, suggested in (("1.0", False), ("0", True)):
        rc, err = run_cli(capsys, "--corpus", str(corpus), "--out", str(tmp_path / clip), *RUN, "--max-steps", "8",
                          "--grad-clip", clip)
        assert rc == 1 and "not finite for 5 steps" in err and ("--grad-clip 1.0" in err) == suggested


def test_app_refuses_an_empty_checkpoint_name(capsys, monkeypatch):
    import app

    monkeypatch.setattr(app, "load_playground", lambda *a: pytest.fail("the empty name opened a model"))
    assert app.main(["--checkpoint", ""]) == 1
    assert "--checkpoint is empty" in capsys.readouterr().err


def test_odd_metadata_does_not_stop_a_resume(short_run, capsys):
    corpus, out = short_run
    meta = json.loads((out / "last" / "meta.json").read_text())
    meta["wall_time"] = "long"
    (out / "last" / "meta.json").write_text(json.dumps(meta))
    rc, err = run_cli(capsys, "--out", str(out), "--resume", "--max-steps", "6", "--no-progress")
    assert rc == 0, err


def test_disk_full_while_writing_the_tokens_is_one_line_and_leaves_no_part(tmp_path, monkeypatch, capsys):
    import builtins

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    real_open = builtins.open

    def full_disk(file, mode="r", *args, **kwargs):
        if ".bin.tmp" in str(file):
            raise OSError(28, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk)
    rc, err = run_cli(capsys, "--corpus", str(corpus), "--out", str(tmp_path / "run"), *RUN, "--max-steps", "2")
    assert rc == 1 and "train.bin: could not write the tokens (No space left on device)" in err
    assert not list(tmp_path.rglob("*.tmp*"))


def test_an_evaluation_not_saved_does_not_become_the_best_to_beat(tmp_path, monkeypatch, capsys):
    """An evaluation whose weights are not saved (here its sample met non-finite scores) must not lower the bar
    for best/: a later, sound evaluation that beats the saved best is saved."""
    from llm import train as train_mod
    from llm.sample import NonFiniteScores

    vals, samples = iter([3.0, 1.0, 2.0]), iter(["ok", None, "ok"])

    def sample(*args, **kwargs):
        text = next(samples)
        if text is None:
            raise NonFiniteScores()
        return text

    monkeypatch.setattr(train_mod, "estimate_loss", lambda *a, **k: dict.fromkeys(("train", "val"), next(vals)))
    monkeypatch.setattr(train_mod, "sample_text", sample)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    out = tmp_path / "run"
    assert train_cli.main(["--corpus", str(corpus), "--out", str(out), *TINY, "--max-steps", "6",
                           "--eval-interval", "2"]) == 0
    assert (read_meta(out / "best")["step"], read_meta(out / "best")["val_loss"]) == (6, 2.0)


def test_generation_too_big_for_memory_is_one_value_error():
    import torch

    from llm.model import GPT, ModelConfig
    from llm.sample import SampleConfig, generate_ids

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    with pytest.raises(ValueError, match="too many to hold in memory"):
        next(generate_ids(model, [1, 2], SampleConfig(max_new_tokens=10**13, num_samples=64)))


def test_the_app_reports_broken_weights_and_odd_layers_in_words():
    import gradio as gr
    import torch

    import app
    from llm.model import GPT, ModelConfig
    from llm.tokenizer import Tokenizer

    tok = Tokenizer(special_tokens=("<|endoftext|>",))
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():
        model.wte.weight.fill_(float("nan"))  # broken for sure: huge weights overflow or not by summation order
    pg = app.Playground(model, tok, {}, stream_interval=0.0)
    with pytest.raises(gr.Error, match="scores are not finite"):
        list(pg.generate("hi", max_new_tokens=5))
    with pytest.raises(gr.Error, match="layer must be a whole number"):
        pg.attention("hi", "²", "mean")  # a digit to str.isdigit, not to int()
