"""The one-knob rule (llm/auto.py): shapes from the budget and the text, dropout from the passes over it."""

import pytest

import train_cli
from conftest import TINY
from llm.auto import (LADDER, NGRAM_ROWS, PARAMS_PER_TOKEN, TOKENS_PER_PARAM, auto_settings, bpe_vocab,
                      bytes_per_token, flops_per_token, params)
from llm.model import ModelConfig
from llm.run import TrainConfig


def tokens_per_param(shape, seconds, flops, vocab=1024):
    return seconds * flops / flops_per_token(shape, vocab) / params(shape, vocab)


def test_a_laptop_cpu_for_five_minutes_gets_the_defaults():
    """Tiny shakespeare, 300 s at the FLOP/s this project's 2-core machine measures: the smallest shape, which is
    the configs' defaults, and dropout 0.1 for its ~20 passes over the text."""
    chosen, why = auto_settings({}, 1_115_394, 60e9)
    d, t = ModelConfig(), TrainConfig()
    assert {k: chosen[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout")} == \
        {"n_layer": d.n_layer, "n_head": d.n_head, "n_embd": d.n_embd, "block_size": d.block_size,
         "dropout": d.dropout}
    assert chosen["batch_size"] == t.batch_size and chosen["lr"] == t.lr and "min_lr" not in chosen  # a tenth of lr
    assert chosen["vocab_size"] == 8192  # one token per 128 bytes: 8,714, down to a power of two
    assert "3 layers x 96" in why and "passes over the text" in why and "BPE 8192" in why


def test_the_vocabulary_grows_with_the_text():
    """BPE's vocabulary: the largest power of two up to one token per 128 bytes, from 1024 to 32768; a size
    given is kept, and a character-level run has none to choose."""
    assert [bpe_vocab(n) for n in (0, 5000, 262_143, 262_144, 1_115_394, 2_000_000, 10**7, 10**12)] == \
        [1024, 1024, 1024, 2048, 8192, 8192, 32768, 32768]
    assert "vocab_size" not in auto_settings({"vocab_size": 1024}, 1_115_394, 60e9)[0]
    assert "vocab_size" not in auto_settings({"tokenizer": "char"}, 1_115_394, 60e9)[0]
    assert bytes_per_token("bpe", 1024) == 2.6 and bytes_per_token("bpe", 8192) == pytest.approx(3.95)
    assert bytes_per_token("char", 4096) == 1.0


def test_character_level_gets_ngram_embeddings_and_bpe_does_not():
    """The n-gram table is the rule's at character level only (llm/auto.py, step 4); a size given is kept, 0
    included, and the line says what was chosen."""
    chosen, why = auto_settings({"tokenizer": "char"}, 1_115_394, 60e9)
    assert chosen["ngram_embed"] == NGRAM_ROWS and f"n-gram embeddings of {NGRAM_ROWS:,} rows" in why
    assert "ngram_embed" not in auto_settings({}, 1_115_394, 60e9)[0]
    assert "ngram_embed" not in auto_settings({"tokenizer": "char", "ngram_embed": 0}, 1_115_394, 60e9)[0]
    assert auto_settings({"tokenizer": "char", "n_layer": 2}, 1_115_394, 60e9)[0]["ngram_embed"] == NGRAM_ROWS  # a
    # shape given turns the ladder off, not the table


def test_compute_bound_picks_the_largest_shape_that_reads_enough_tokens():
    """A big text (no data bound) on a fast GPU: the chosen shape reads >= 20 tokens per parameter, the next one
    up would not."""
    flops, seconds = 300e12, 600.0
    chosen, _ = auto_settings({"time_budget": seconds}, 10_000_000_000, flops)
    i = next(i for i, s in enumerate(LADDER) if s.n_embd == chosen["n_embd"] and s.n_layer == chosen["n_layer"])
    assert 0 < i < len(LADDER) - 1
    vocab = chosen["vocab_size"]
    assert vocab == 32768
    assert tokens_per_param(LADDER[i], seconds, flops, vocab) >= TOKENS_PER_PARAM
    assert tokens_per_param(LADDER[i + 1], seconds, flops, vocab) < TOKENS_PER_PARAM
    assert chosen["dropout"] == 0.0  # under 4 passes over 10 GB


def test_data_bound_caps_the_model_by_the_text_and_drops_out_more():
    """1 MB at character level on the same GPU: compute would allow GPT-2 small, the text allows at most 10
    parameters per character (nanoGPT's shakespeare-char point): 6 x 384, with dropout 0.2 for its many passes."""
    chosen, why = auto_settings({"tokenizer": "char", "time_budget": 600.0}, 1_115_394, 300e12)
    assert (chosen["n_layer"], chosen["n_embd"]) == (6, 384) and chosen["dropout"] == 0.2
    assert params(LADDER[3], 256) <= PARAMS_PER_TOKEN * 1_115_394 < params(LADDER[4], 256)


def test_a_step_limit_needs_no_speed_and_given_settings_are_kept():
    given = {"max_steps": 30, "dropout": 0.0}
    chosen, _ = auto_settings(given, 5000, None)
    assert "dropout" not in chosen and chosen["n_layer"] == LADDER[0].n_layer
    # a shape setting turns the ladder off; dropout still follows the passes over the text
    chosen, why = auto_settings({"max_steps": 60, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32,
                                 "batch_size": 8}, 5000, None)
    assert chosen == {"dropout": 0.1, "vocab_size": 1024} and "8 passes" in why  # 60 x 8 x 32 over 5000 / 2.6
    assert auto_settings({**given, "n_layer": 2, "vocab_size": 512}, 5000, None) == ({}, "")  # nothing to choose

    # under torchrun each step reads every process's batch: twice the passes with 2 processes
    shape = {"max_steps": 60, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 8}
    _, why = auto_settings(shape, 5000, None, world=2)
    assert "16 passes" in why and "on each of 2 processes" in why  # 60 x 8 x 32 x 2 tokens over 1,923


def test_train_cli_says_what_it_chose_and_a_flag_overrides_it(corpus, tmp_path, capsys):
    from llm.checkpoint import read_config

    common = ["--corpus", str(corpus), "--max-steps", "2", "--eval-interval", "2", "--no-progress",
              "--sample-tokens", "0", "--vocab-size", "300"]
    assert train_cli.main([*common, "--out", str(tmp_path / "a"), "--n-layer", "1"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("settings for "))
    assert "--dropout" in line and "--n-layer" not in line and "--block-size" not in line  # a shape given: no ladder
    model, _ = read_config(tmp_path / "a" / "last")
    assert model.n_layer == 1 and f"--dropout {model.dropout:g}" in line

    assert train_cli.main([*common, "--out", str(tmp_path / "b"), "--dropout", "0.05"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("settings for "))
    model, train = read_config(tmp_path / "b" / "last")
    assert "--dropout" not in line and model.dropout == 0.05
    assert f"--n-embd {model.n_embd}" in line
    assert (model.n_layer, model.n_embd, train["batch_size"]) == (LADDER[0].n_layer, LADDER[0].n_embd,
                                                                  LADDER[0].batch_size)


@pytest.mark.parametrize("preset_args", [["--preset", "tiny"], TINY])
def test_presets_and_shape_flags_keep_their_shape(corpus, tmp_path, capsys, preset_args):
    out = tmp_path / "run"
    assert train_cli.main(["--corpus", str(corpus), "--out", str(out), "--max-steps", "2", "--eval-interval", "2",
                           "--no-progress", "--sample-tokens", "0", *preset_args]) == 0
    from llm.checkpoint import read_config

    model, _ = read_config(out / "last")
    expected = 128 if preset_args[0] == "--preset" else 32
    assert model.n_embd == expected


def test_measure_flops(monkeypatch):
    import math

    import torch

    import llm.auto as auto

    flops = auto.measure_flops(torch.device("cpu"))
    assert math.isfinite(flops) and 1e6 < flops < 1e14  # a CPU: timed on the smallest shape
    monkeypatch.setattr(auto, "peak_flops", lambda device: 989e12)  # a GPU of a known kind: a third of its peak
    assert auto.measure_flops(torch.device("cpu")) == pytest.approx(989e12 / 3)
