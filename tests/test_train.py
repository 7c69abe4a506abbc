"""The trainer end to end on a few KB of text: checkpoints, resume exactness, signals, bad input."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_cli
from conftest import ROOT, TINY, make_text
from llm import train as train_mod
from llm.checkpoint import load_checkpoint, read_metrics


def losses_by_step(out):
    return {r["step"]: r["loss"] for r in read_metrics(out) if r["kind"] == "train"}


def test_end_to_end_tiny_run(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    rc = train_cli.main(["--corpus", str(corpus), "--out", str(out), *TINY, "--max-steps", "30",
                         "--eval-interval", "10", "--log-interval", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "best val loss" in printed and f"python app.py --checkpoint {out}" in printed
    losses = losses_by_step(out)
    assert len(losses) == 30
    assert sum(list(losses.values())[-5:]) / 5 < sum(list(losses.values())[:5]) / 5 - 0.5  # loss falls
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert all(r["bits_per_byte"] > 0 and "sample" in r for r in evals)
    for kind in ("best", "last"):
        model, tok, meta = load_checkpoint(out / kind)
        assert meta["step"] in (10, 20, 30) and meta["val_loss"] == min(
            r["val_loss"] for r in evals if r["step"] <= meta["step"])
        ids = torch.tensor([tok.encode("The king")])
        logits, _ = model(ids)
        assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert (out / "last" / "train_state.pt").exists() and not (out / "best" / "train_state.pt").exists()
    # no pickle needed for the training state either
    state = torch.load(out / "last" / "train_state.pt", weights_only=True)
    assert state["step"] == 30
    # generation from the loaded best model
    from llm.sample import SampleConfig, generate

    model, tok, _ = load_checkpoint(out)
    events = list(generate(model, tok, "The", SampleConfig(max_new_tokens=20, seed=0)))
    assert 1 <= len(events) <= 20 and all(0 <= e.token_id < tok.vocab_size for e in events)
    assert "".join(e.text for e in events) == tok.decode([e.token_id for e in events if e.token_id != tok.eot_id])


def _run_cli(args, cwd, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train_cli.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_resume_is_exact(corpus, tmp_path):
    """SIGINT a run mid-way, resume it: every step's loss equals the uninterrupted run's, bit for bit."""
    common = [*TINY, "--corpus", str(corpus), "--max-steps", "60", "--eval-interval", "15", "--log-interval", "1",
              "--dropout", "0.1"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    p = _run_cli([*common, "--out", str(ref)], tmp_path)
    assert p.wait(timeout=300) == 0, p.stderr.read()

    p = _run_cli([*common, "--out", str(cut)], tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and len(losses_by_step(cut)) < 8:
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    stopped_at = json.loads((cut / "last" / "meta.json").read_text())["step"]
    assert 8 <= stopped_at < 60, "the run finished before the signal; make it longer"

    p = _run_cli([*common, "--out", str(cut), "--resume"], tmp_path)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    a, b = losses_by_step(ref), losses_by_step(cut)
    assert sorted(a) == sorted(b) == list(range(1, 61))
    assert [a[s] for s in range(1, 61)] == [b[s] for s in range(1, 61)]
    ra = [r["val_loss"] for r in read_metrics(ref) if r["kind"] == "eval"]
    rb = [r["val_loss"] for r in read_metrics(cut) if r["kind"] == "eval"]
    assert ra == rb


def test_resume_refuses_conflicting_flags(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(["--corpus", str(corpus), "--out", str(out), *TINY, "--max-steps", "4",
                           "--eval-interval", "4"]) == 0
    before = (out / "last" / "model.safetensors").read_bytes()
    capsys.readouterr()
    rc = train_cli.main(["--out", str(out), "--resume", "--n-embd", "64", "--lr", "0.1", "--max-steps", "8"])
    err = capsys.readouterr().err
    assert rc == 1 and "--n-embd" in err and "--lr" in err and len(err.strip().splitlines()) == 1
    assert (out / "last" / "model.safetensors").read_bytes() == before
    # a new run into the same directory would replace saved work: refused without --overwrite
    rc = train_cli.main(["--corpus", str(corpus), "--out", str(out), *TINY, "--max-steps", "4"])
    assert rc == 1 and "--resume" in capsys.readouterr().err


def test_best_never_overwritten_by_worse_eval(corpus, tmp_path, monkeypatch):
    vals = iter([3.0, 2.0, 2.5, 1.5, 4.0])

    def fake_estimate(model, splits, *a, **k):
        v = next(vals)
        return {"train": v, "val": v}

    monkeypatch.setattr(train_mod, "estimate_loss", fake_estimate)
    out = tmp_path / "run"
    rc = train_cli.main(["--corpus", str(corpus), "--out", str(out), *TINY, "--max-steps", "10",
                         "--eval-interval", "2", "--sample-tokens", "0"])
    assert rc == 0
    best = json.loads((out / "best" / "meta.json").read_text())
    last = json.loads((out / "last" / "meta.json").read_text())
    assert (best["step"], best["val_loss"]) == (8, 1.5)
    assert (last["step"], last["val_loss"]) == (10, 4.0)


def test_non_finite_loss_stops_and_keeps_checkpoints(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert train_cli.main(["--corpus", str(corpus), "--out", str(out), *TINY, "--max-steps", "4",
                           "--eval-interval", "2"]) == 0
    saved = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "metrics.jsonl"}
    real_forward = train_mod.GPT.forward

    def nan_forward(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        return logits, (loss * float("nan") if loss is not None else None)

    monkeypatch.setattr(train_mod.GPT, "forward", nan_forward)
    capsys.readouterr()
    rc = train_cli.main(["--out", str(out), "--resume", "--max-steps", "20"])
    err = capsys.readouterr().err
    assert rc == 1 and "not finite for 5 steps" in err
    assert {p: p.read_bytes() for p in saved} == saved


def test_sigterm_then_second_signal_leaves_no_partial_files(corpus, tmp_path):
    out = tmp_path / "run"
    p = _run_cli(["--corpus", str(corpus), "--out", str(out), *TINY, "--max-steps", "100000",
                  "--eval-interval", "1000", "--log-interval", "1"], tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and len(losses_by_step(out)) < 3:
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 0
    model, _, meta = load_checkpoint(out / "last")
    assert meta["step"] >= 3
    assert not [f for f in out.iterdir() if f.name.startswith(".")]


BAD = [
    (lambda t: ["--corpus", str(t / "missing.txt")], "not found"),
    (lambda t: ["--corpus", str(t)], "no text files under"),
    (lambda t: ["--corpus", _write(t / "e.txt", b"")], "empty"),
    (lambda t: ["--corpus", _write(t / "w.txt", b" \n\n\t ")], "whitespace"),
    (lambda t: ["--corpus", _write(t / "b.bin", bytes([0, 1, 2, 3]) * 100)], "binary"),
    (lambda t: ["--corpus", _write(t / "u.txt", b"good text \xff\xfe more")], "offset 10"),
    (lambda t: ["--corpus", _write(t / "s.txt", b"just a few words here"), "--block-size", "64"], "block_size"),
    (lambda t: ["--corpus", _write(t / "ok.txt", make_text().encode()), "--lr", "-1"], "--lr"),
    (lambda t: ["--corpus", _write(t / "ok.txt", make_text().encode()), "--batch-size", "0"], "--batch-size"),
    (lambda t: ["--corpus", _write(t / "ok.txt", make_text().encode()), "--vocab-size", "100"], "--vocab-size"),
    (lambda t: ["--corpus", _write(t / "ok.txt", make_text().encode()), "--n-embd", "30", "--n-head", "4"], "n_head"),
]


def _write(path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("make_args,match", BAD)
def test_bad_input_one_line_nothing_written(tmp_path, monkeypatch, capsys, make_args, match):
    monkeypatch.chdir(tmp_path)
    args = make_args(tmp_path)
    before = set(tmp_path.rglob("*"))
    rc = train_cli.main([*args, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and match in err and "Traceback" not in err
    assert set(tmp_path.rglob("*")) == before


def test_bad_flag_is_one_line_from_the_real_entry_point(tmp_path):
    p = _run_cli(["--corpus", "x.txt", "--batch-size", "many"], tmp_path)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and len(err.strip().splitlines()) == 1 and "--batch-size" in err
    p = _run_cli(["--corpus", str(tmp_path / "missing.txt")], tmp_path)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists()


def test_config_file_and_presets(corpus, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("n_layer: 1\nn_embd: 32\nn_head: 2\nblock_size: 16\nmax_steps: 3\neval_interval: 3\n")
    out = tmp_path / "run"
    rc = train_cli.main(["--corpus", str(corpus), "--out", str(out), "--config", str(cfg), "--preset", "tiny",
                         "--batch-size", "4", "--vocab-size", "280", "--eval-iters", "1", "--no-progress", "--no-compile",
                         "--sample-tokens", "0"])
    assert rc == 0, capsys.readouterr().err
    conf = json.loads((out / "last" / "config.json").read_text())
    assert (conf["model"]["n_layer"], conf["model"]["block_size"], conf["train"]["batch_size"]) == (1, 16, 4)
    bad = tmp_path / "bad.json"
    bad.write_text('{"n_layers": 3}')
    rc = train_cli.main(["--corpus", str(corpus), "--config", str(bad)])
    assert rc == 1 and "n_layers" in capsys.readouterr().err
    for name, text in (("broken.yaml", "n_layer: [1, 2\n"), ("broken.json", "{oops")):
        (tmp_path / name).write_text(text)
        rc = train_cli.main(["--corpus", str(corpus), "--config", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert rc == 1 and len(err.strip().splitlines()) == 1 and "not valid" in err


def test_help_gives_every_flag_a_line_and_its_default():
    actions = [a for a in train_cli.build_parser()._actions if a.option_strings != ["-h", "--help"]]
    assert all(a.help for a in actions), [a.option_strings for a in actions if not a.help]
    settings = {train_cli.flag(name) for group in train_cli.SETTING_FLAGS.values() for name, _, _ in group}
    for a in actions:
        if a.option_strings[0] in settings:
            assert "default" in a.help, a.option_strings
    groups = [g.title for g in train_cli.build_parser()._action_groups]
    assert groups[-5:] == ["data", "model", "optimisation", "run", "output"]
    assert "seconds" in next(a.help for a in actions if "--time-budget" in a.option_strings)


def test_overfitting_is_warned_once_with_the_settings_to_turn(monkeypatch, capsys, corpus, tmp_path):
    from types import SimpleNamespace

    from llm.model import ModelConfig

    said = []
    # BPE without dropout; characters with dropout and an n-gram table, told they may go without the table
    for ngram, dropout, tokenizer in ((0, 0.0, "bpe"), (64, 0.1, "char")):
        run = SimpleNamespace(last_losses=None, warned_overfit=False, log=said.append,
                              model=SimpleNamespace(config=ModelConfig(ngram_embed=ngram, dropout=dropout)),
                              cfg=SimpleNamespace(tokenizer=tokenizer, vocab_size=8192))
        for train_loss, val_loss in ((3.0, 3.2), (2.8, 3.1), (2.6, 3.15), (2.4, 3.3)):  # val falls, then rises
            train_mod.warn_overfit(run, {"train": train_loss, "val": val_loss})
    assert len(said) == 2 and all("validation loss rose (3.1000 -> 3.1500)" in s for s in said)
    assert all("`max_steps`" in s for s in said)
    assert "`dropout` 0.1 (now 0)" in said[0] and "`dropout` above 0.1" in said[1]  # the setting as it is now
    assert "`vocab_size`, now 8192" in said[0] and "vocab_size" not in said[1]
    assert "`ngram_embed` 0" not in said[0] and "`ngram_embed` 0" in said[1]
    said.clear()
    quiet = SimpleNamespace(last_losses=None, warned_overfit=False, log=said.append, model=run.model, cfg=run.cfg)
    for train_loss, val_loss in ((3.0, 3.2), (2.9, 3.205), (float("nan"), 9.0)):  # within noise; not finite
        train_mod.warn_overfit(quiet, {"train": train_loss, "val": val_loss})
    assert not said

    def fake_train(*args, log, **kwargs):  # what train_cli.py prints of a trainer's marked line
        log("warning: try `dropout` 0.1 or fewer `max_steps`")
        return {"out": str(tmp_path / "out"), "interrupted": 0, "step": 1, "best_val_loss": None}

    monkeypatch.setattr(train_cli, "train", fake_train)
    train_cli.main(["--corpus", str(corpus), "--out", str(tmp_path / "out"), "--no-progress"])
    assert "try --dropout 0.1 or fewer --max-steps" in capsys.readouterr().out


def test_a_learning_rate_alone_sets_where_the_cosine_ends(corpus, tmp_path):
    """`--lr 1e-4` alone was refused ("--min-lr must be between 0 and --lr"): min_lr's fixed default, and the
    rule's choice of it, were 3e-4. Now the cosine ends at a tenth of the lr given, with the rule's shape or one
    given; a min_lr given is kept."""
    from llm.checkpoint import read_config
    from llm.run import TrainConfig

    shape = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32"]
    for name, extra, min_lr in (("rule", [], 1e-5), ("shape", shape, 1e-5), ("given", ["--min-lr", "0"], 0.0)):
        out = tmp_path / name
        assert train_cli.main(["--corpus", str(corpus), "--out", str(out), "--lr", "1e-4", "--max-steps", "2",
                               "--vocab-size", "300", "--eval-iters", "1", "--sample-tokens", "0", "--no-progress",
                               "--no-compile", *extra]) == 0, name
        train = read_config(out / "last")[1]
        assert train["lr"] == 1e-4 and train["min_lr"] == pytest.approx(min_lr), name
    assert TrainConfig().min_lr == 3e-4 and TrainConfig(lr=6e-3).min_lr == 6e-4  # round, for cards and resume


OPTIONS = [({"qk_norm": True, "logit_softcap": 8.0, "attn_dropout": 0.1}, {}),
           ({"value_embed": True, "x0_mix": True, "mlp": "relu2", "dropout": 0.1}, {"ema": 0.8}),
           ({}, {"shuffle": False}),  # (the defaults read in epochs: the cases above)
           ({"ngram_embed": 64, "unet": True, "n_layer": 2, "tie_embeddings": False}, {})]


@pytest.mark.parametrize("model_kw,train_kw", OPTIONS,
                         ids=["qknorm-softcap-attndropout", "valueembed-x0mix-relu2-dropout-ema", "random-batches",
                              "ngram-unet-untied"])
def test_options_train_save_load_and_resume_exactly(corpus, tmp_path, model_kw, train_kw):
    """The architecture and training options go through the whole trainer: saved in config.json, loaded back,
    and a run cut after each step and resumed ends with the same weights as one run through."""
    from llm.model import ModelConfig
    from llm.run import TrainConfig

    model_cfg = ModelConfig(**{"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, **model_kw})
    cfg = {"corpus": (str(corpus),), "vocab_size": 300, "batch_size": 4, "max_steps": 12, "eval_interval": 4,
           "eval_iters": 1, "sample_tokens": 0, "compile": False, **train_kw}
    whole, cut = TrainConfig(**cfg, out=str(tmp_path / "whole")), TrainConfig(**cfg, out=str(tmp_path / "cut"))
    train_mod.train(model_cfg, whole, progress=False, log=lambda s: None)
    summary = train_mod.train(model_cfg, cut, progress=False, log=lambda s: None, deadline=time.monotonic())
    pieces = 1
    while summary["cut"]:  # one step per call, each resuming from last/
        summary = train_mod.train(None, TrainConfig(out=cut.out), resume=True, progress=False, log=lambda s: None,
                                  deadline=time.monotonic())
        pieces += 1
    assert pieces == 12
    for kind in ("best", "last"):
        assert (tmp_path / "whole" / kind / "model.safetensors").read_bytes() == \
            (tmp_path / "cut" / kind / "model.safetensors").read_bytes()
    model, _, _ = load_checkpoint(tmp_path / "cut")
    assert all(getattr(model.config, k) == v for k, v in model_kw.items())


def test_ema_is_what_is_measured_and_saved(corpus, tmp_path):
    """With `ema`, the checkpoints hold the average (not the raw weights, which last/ keeps to resume from), and
    the validation loss recorded for a checkpoint is that of the weights in it."""
    from llm.checkpoint import read_meta
    from llm.model import ModelConfig
    from llm.run import TrainConfig, start_run
    from llm.train import estimate_loss

    cfg = TrainConfig(corpus=(str(corpus),), out=str(tmp_path / "ema"), vocab_size=300, batch_size=4, max_steps=10,
                      eval_interval=5, eval_iters=2, sample_tokens=0, compile=False, ema=0.9)
    model_cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)
    train_mod.train(model_cfg, cfg, progress=False, log=lambda s: None)
    model, _, meta = load_checkpoint(tmp_path / "ema" / "last")
    raw = torch.load(tmp_path / "ema" / "last" / "train_state.pt", weights_only=True)["raw_weights"]
    assert len(raw) == len(list(model.parameters()))
    assert not all(torch.equal(r, p) for r, p in zip(raw, model.parameters()))  # the average is not the weights
    run = start_run(None, TrainConfig(out=cfg.out, max_steps=10), resume=True, progress=False, log=lambda s: None)
    assert all(torch.equal(r, p) for r, p in zip(raw, run.model.parameters()))  # resumes from the raw ones
    assert all(torch.equal(e, p) for e, p in zip(run.ema, model.parameters()))
    losses = estimate_loss(model, run.splits, 32, 4, 2, torch.device("cpu"), contextlib.nullcontext(), cfg.seed + 1)
    assert losses["val"] == pytest.approx(read_meta(tmp_path / "ema" / "last")["val_loss"], rel=1e-6)


def test_ema_average_known_answer():
    """update_ema: the decay ramps as (1 + step) / (10 + step) up to `ema`; a constant weight stays put."""
    from llm.model import GPT, ModelConfig
    from llm.run import Run, RunState, TrainConfig

    model = GPT(ModelConfig(vocab_size=11, block_size=4, n_layer=1, n_head=1, n_embd=4))
    run = Run(TrainConfig(ema=0.5), model.config, RunState(step=20), None, {}, 1.0, model, model, [], None, None,
              torch.device("cpu"), None, print)
    w = model.wte.weight
    start = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    run.update_ema()  # decay min(0.5, 21 / 30) = 0.5: halfway
    torch.testing.assert_close(run.ema[0], start + 0.5)
    run.state.step = 0
    run.update_ema()  # decay min(0.5, 1 / 10) = 0.1: mostly the weight
    torch.testing.assert_close(run.ema[0], start + 1.0 - 0.1 * 0.5)
    with run.averaged():
        torch.testing.assert_close(w, start + 0.95)
        torch.testing.assert_close(run.raw[0], start + 1.0)
    torch.testing.assert_close(w.detach(), start + 1.0)
