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
