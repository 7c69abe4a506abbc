import json
import os

import pytest
import torch

from llm.checkpoint import (CheckpointError, load_checkpoint, load_train_state, read_config, resolve,
                            save_checkpoint)
from llm.model import GPT, ModelConfig
from llm.run import TrainConfig
from llm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train("hello world, the quick brown fox jumps over the lazy dog. " * 20, 280)


def tiny_model(tok, **kw):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, **kw))


def test_round_trip_and_directory_forms(tmp_path, tok):
    model = tiny_model(tok)
    save_checkpoint(tmp_path / "best", model, tok, {"lr": 1.0}, {"step": 3, "val_loss": 2.5})
    for p in (tmp_path, tmp_path / "best"):
        loaded, tok2, meta = load_checkpoint(p)
        assert meta["step"] == 3 and meta["versions"]["torch"] == torch.__version__
        assert tok2.encode("the lazy dog") == tok.encode("the lazy dog")
        for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), k
        assert not loaded.training
    # tied embeddings are stored once and still tied after loading
    assert loaded.lm_head.weight.data_ptr() == loaded.wte.weight.data_ptr()


@pytest.mark.parametrize("pos,norm,mlp,tie", [("learned", "layernorm", "gelu", False), ("sinusoidal", "rmsnorm",
                                                                                         "swiglu", True)])
def test_variants_round_trip(tmp_path, tok, pos, norm, mlp, tie):
    model = tiny_model(tok, pos=pos, norm=norm, mlp=mlp, tie_embeddings=tie)
    save_checkpoint(tmp_path / "c", model, tok)
    loaded, _, _ = load_checkpoint(tmp_path / "c")
    x = torch.tensor([tok.encode("hello world")])
    assert torch.equal(model.eval()(x)[0], loaded(x)[0])


def test_a_checkpoint_from_before_a_setting_existed_reads_as_it_was_trained(tmp_path, tok):
    """config.json written before value_embed, ema and shuffle existed lacks them: it describes a model without
    value embeddings and a run without an average, its batches drawn at random (ABSENT), not the new defaults,
    which would not fit its weights (or, resumed, would read other batches than the run began with)."""
    model = tiny_model(tok, value_embed=False)
    save_checkpoint(tmp_path / "old", model, tok, {"lr": 1.0, "ema": 0.0, "shuffle": False})
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["model"]["value_embed"], cfg["model"]["vocab_multiple"], cfg["train"]["ema"], cfg["train"]["shuffle"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    loaded, _, _ = load_checkpoint(tmp_path / "old")
    config, train = read_config(tmp_path / "old")
    assert not loaded.config.value_embed and not config.value_embed and train["ema"] == 0.0
    assert train["shuffle"] is False
    assert config.vocab_multiple == loaded.config.vocab_multiple == 1  # no padded table then
    assert TrainConfig().ema and TrainConfig().shuffle  # what a new run gets


def test_crash_between_renames_leaves_a_loadable_checkpoint(tmp_path, tok, monkeypatch):
    save_checkpoint(tmp_path / "last", tiny_model(tok), tok, meta={"step": 1})
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last", tiny_model(tok), tok, meta={"step": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    _, _, meta = load_checkpoint(tmp_path)  # the previous checkpoint, found under .last.old
    assert meta["step"] == 1
    save_checkpoint(tmp_path / "last", tiny_model(tok), tok, meta={"step": 3})
    assert load_checkpoint(tmp_path / "last")[2]["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_interrupted_write_leaves_no_partial_directory(tmp_path, tok, monkeypatch):
    save_checkpoint(tmp_path / "last", tiny_model(tok), tok, meta={"step": 1})
    monkeypatch.setattr(Tokenizer, "save", lambda self, path: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last", tiny_model(tok), tok, meta={"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_refuses_mismatches_by_name(tmp_path, tok):
    d = tmp_path / "c"
    save_checkpoint(d, tiny_model(tok), tok)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["n_embd"] = 32
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"wte.weight: shape \(\d+, 16\) in the file, \(\d+, 32\)"):
        load_checkpoint(d)
    cfg["model"]["n_embd"], cfg["model"]["n_layers"] = 16, 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown key.*n_layers"):
        load_checkpoint(d)
    del cfg["model"]["n_layers"]
    cfg["model"]["vocab_size"] = 100
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="tokenizer has 280 tokens but the model's vocab_size is 100"):
        load_checkpoint(d)


def test_an_ngram_table_the_file_lacks_or_sizes_otherwise_is_refused_before_building(tmp_path, tok, monkeypatch):
    """config.json asking for an n-gram table the weights do not hold, or one of another size (a huge one would
    be allocated before load_weights could compare), is refused from the file's header: no model is built."""
    d = tmp_path / "c"
    save_checkpoint(d, tiny_model(tok, ngram_embed=32), tok)
    assert load_checkpoint(d)[0].config.ngram_embed == 32
    monkeypatch.setattr("llm.checkpoint.GPT", lambda config: pytest.fail("a model was built"))
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["ngram_embed"] = 1 << 24
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"ngram.weight: shape \(33, 16\) in the file, \(16777217, 16\)"):
        load_checkpoint(d)
    save_checkpoint(d, tiny_model(tok), tok)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["ngram_embed"] = 32
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing tensor ngram.weight"):
        load_checkpoint(d)


@pytest.mark.parametrize("victim,content,match", [
    ("model.safetensors", b"not safetensors", "not a readable safetensors"),
    ("config.json", b"{oops", "not valid JSON"),
    ("tokenizer.json", b"[]", "tokenizer.json"),
])
def test_corrupt_files(tmp_path, tok, victim, content, match):
    d = tmp_path / "c"
    save_checkpoint(d, tiny_model(tok), tok)
    (d / victim).write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(d)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="expected config.json"):
        resolve(tmp_path)


def test_train_state_needs_no_pickle(tmp_path, tok):
    state = {"step": 7, "rng": torch.get_rng_state(), "nested": {"a": [1, 2.5, "x"]}}
    save_checkpoint(tmp_path / "last", tiny_model(tok), tok, train_state=state)
    loaded = load_train_state(tmp_path / "last")  # weights_only=True inside
    assert loaded["step"] == 7 and torch.equal(loaded["rng"], state["rng"])
    save_checkpoint(tmp_path / "best", tiny_model(tok), tok)
    with pytest.raises(CheckpointError, match="only a last/ checkpoint"):
        load_train_state(tmp_path / "best")
    model_cfg, train = read_config(tmp_path / "last")
    assert model_cfg.n_embd == 16 and train == {}
