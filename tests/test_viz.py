"""llm/viz.py: the playground's view-model helpers, on a throwaway tokenizer and an untrained tiny GPT."""

import math

import pytest
import torch

from conftest import make_text
from llm import attention, viz
from llm.model import GPT, ModelConfig
from llm.sample import SampleConfig, generate
from llm.tokenizer import CharTokenizer, Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(make_text(300), vocab_size=320, verbose=False)


@pytest.fixture(scope="module")
def model(tok) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()


# --- text of a token ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("b, shown", [
    (b"hello", "hello"),
    (b" the", "·the"),
    (b"\n\n", "↵\n↵\n"),
    (b"\t", "→"),
    (b"\x07", "<0x07>"),
    (b"\xe2\x80", "<0xE2><0x80>"),  # the first two bytes of a three-byte character
    (b" \xe2\x80", "·<0xE2><0x80>"),
    (b"\x99a", "<0x99>a"),  # a continuation byte alone, then valid text
    ("é".encode(), "é"),
    ("🍞".encode(), "🍞"),
])
def test_token_text(b, shown):
    assert viz.token_text(b) == shown


def test_token_display_names_special_tokens(tok):
    assert viz.token_display(tok, tok.eot_id) == "<|endoftext|>"
    assert viz.token_display(tok, ord("a")) == "a"


def test_escape_markdown_leaves_no_markup():
    out = viz.escape_markdown("<script>alert(1)</script> *bold* `code` [x](y)\n")
    assert not any(c in out for c in "<>*`[]()\n")
    assert "script" in out and "bold" in out


# --- the model's view ---------------------------------------------------------------------------------------


def test_score_ids_matches_a_manual_softmax(model, tok):
    ids = tok.encode("the king shall speak")
    steps = viz.score_ids(model, ids, num_alternatives=5)
    assert steps[0] is None and len(steps) == len(ids)
    with torch.no_grad():
        probs = model(torch.tensor([ids]))[0][0].softmax(-1)  # (T, V)
    for t in range(1, len(ids)):
        s = steps[t]
        assert s.prob == pytest.approx(probs[t - 1, ids[t]].item(), rel=1e-5)
        assert [p for _, p in s.alternatives] == sorted([p for _, p in s.alternatives], reverse=True)
        assert s.alternatives[0][1] == pytest.approx(probs[t - 1].max().item(), rel=1e-5)
        assert 0.0 <= s.entropy <= math.log(tok.vocab_size) + 1e-5
    assert viz.score_ids(model, ids[:1]) == [None]
    with pytest.raises(ValueError, match="block_size"):
        viz.score_ids(model, [1] * 33)


def test_score_ids_agrees_with_the_sampler_events(model, tok):
    """What the Tokens tab shows for a generated token (from the sampler) is what a re-scoring would show."""
    prompt = tok.encode("the king")
    cfg = SampleConfig(max_new_tokens=6, temperature=0.0, num_alternatives=3)
    events = list(generate(model, tok, prompt, cfg))
    steps = viz.score_ids(model, prompt + [e.token_id for e in events], 3)
    for e, s in zip(events, steps[len(prompt):]):
        assert e.prob == pytest.approx(s.prob, rel=1e-4, abs=1e-6)
        assert e.entropy == pytest.approx(s.entropy, rel=1e-4)


def test_step_markdown_escapes_the_token(tok):
    t = tok.encode("<")[0]
    line = viz.step_markdown(tok, t, viz.Step(0.25, [], math.log(4)), 3, "generated")
    assert "<code>&#60;</code>" in line and "25.00%" in line and "2.00 bits" in line and "4.0 tokens" in line
    assert "first token" in viz.step_markdown(tok, t, None, 0, "prompt")


def test_perplexity_known_answer():
    steps = [None, viz.Step(0.5, [], 0.0), viz.Step(0.25, [], 0.0)]
    assert viz.perplexity(steps) == pytest.approx(2 ** 1.5)
    assert viz.perplexity([None]) is None


# --- tokenizer explorer -------------------------------------------------------------------------------------


def test_chunks_and_counts(tok):
    text = "Héllo world!\n"
    chunks = tok.split(text)
    value, colors = viz.chunk_highlight(chunks)
    assert [v for v, _ in value] == [viz.show_whitespace(c) for c in chunks]
    assert colors["1"] != colors["2"]
    assert viz.text_counts(text, tok.encode(text), len(chunks)) == {
        "characters": 13, "bytes": 14, "chunks": len(chunks), "tokens": len(tok.encode(text)),
        "bytes per token": round(14 / len(tok.encode(text)), 2)}
    assert viz.text_counts("", [], 0)["bytes per token"] == 0.0


def _leaves(node):
    return [node] if not node.children else [leaf for c in node.children for leaf in _leaves(c)]


def test_merge_tree_rebuilds_every_merge(tok):
    for t in range(256, tok.vocab_size - 1):  # every merge token (the last id is <|endoftext|>)
        root = viz.merge_tree(tok, t)
        assert b"".join(tok.token_bytes(leaf.id) for leaf in _leaves(root)) == tok.token_bytes(t)
        assert all(leaf.id < 256 for leaf in _leaves(root))
        a, b = root.children
        assert tok.token_bytes(a.id) + tok.token_bytes(b.id) == tok.token_bytes(t)


def test_merge_tree_text(tok):
    t = max(range(256, tok.vocab_size - 1), key=lambda i: len(tok.token_bytes(i)))
    text = viz.merge_tree_text(tok, t)
    assert text.splitlines()[0].startswith(f"{t}  ") and f"merge {t - 255} of" in text and "└─ " in text
    assert "single byte" in viz.merge_tree_text(tok, 32)
    assert "special" in viz.merge_tree_text(tok, tok.eot_id)
    char = CharTokenizer.train("abc")
    assert "no merges" in viz.merge_tree_text(char, 0)
    with pytest.raises(ValueError, match="out of range"):
        viz.merge_tree(tok, tok.vocab_size)


def test_search_vocab(tok):
    the = tok.encode(" the")
    assert len(the) == 1  # the corpus is full of " the"
    rows, total = viz.search_vocab(tok, " the")
    assert the[0] in [r[0] for r in rows] and total == len(rows)
    assert [r[0] for r in viz.search_vocab(tok, "·the")[0]] == [r[0] for r in rows]
    rows, _ = viz.search_vocab(tok, str(the[0]))
    assert rows[0] == [the[0], "·the", 4, "merge"]
    rows, total = viz.search_vocab(tok, "", limit=5)
    assert total == tok.vocab_size and len(rows) == 5
    assert [r[2] for r in rows] == sorted([r[2] for r in rows], reverse=True)  # longest first
    assert viz.search_vocab(tok, "no such token here") == ([], 0)
    rows, total = viz.search_vocab(tok, "e", limit=3)
    assert len(rows) == 3 and total > 3


def test_special_rows_and_kinds(tok):
    assert viz.special_rows(tok) == [[tok.eot_id, "<|endoftext|>"]]
    assert [viz.token_kind(tok, t) for t in (65, 300, tok.eot_id)] == ["byte", "merge", "special"]
    assert viz.token_kind(CharTokenizer.train("ab"), 0) == "char"


# --- model tab ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, shown", [(999, "999"), (26_080, "26.1K"), (12_345_678, "12.3M"), (2.5e9, "2.5B")])
def test_format_count(n, shown):
    assert viz.format_count(n) == shown


def test_summary_rows():
    meta = {"step": 6, "val_loss": 5.6977, "bits_per_byte": 4.5014, "tokens_seen": 768}
    full = viz.summary_rows(meta, {"corpus": ["a.txt", "b.txt"], "lr": 0.003}, [{"train_loss": 5.69}])
    assert all(len(r) == 3 and r[2] for r in full)  # every row says what it is
    rows = {name: value for name, value, _ in full}
    assert rows == {"steps": "6", "tokens seen": "768", "val loss (best)": "5.698", "bits per byte": "4.501",
                    "train loss (last eval)": "5.69", "corpus": "a.txt, b.txt", "lr": "0.003",
                    "time budget (s)": "300"}
    assert viz.summary_rows({}) == []
    # a run ended by its time budget says so, not "max steps 0"
    assert ["time budget (s)", "120"] in [r[:2] for r in viz.summary_rows({}, {"max_steps": 0, "time_budget": 120.0})]
    assert ["step limit", "2000"] in [r[:2] for r in viz.summary_rows({}, {"max_steps": 2000, "time_budget": 0.0})]


def test_config_rows_say_what_each_field_is():
    from llm.model import ModelConfig

    rows = viz.config_rows(ModelConfig())
    assert [r[0] for r in rows] == list(vars(ModelConfig()))  # every field, a new one included
    assert all(r[2] for r in rows), [r[0] for r in rows if not r[2]]
    assert dict((r[0], r[1]) for r in rows)["rope_theta"] == "10000.0"


def _evals(*pairs):
    return [{"kind": "eval", "step": 100 * (i + 1), "train_loss": t, "val_loss": v} for i, (t, v) in enumerate(pairs)]


def test_fit_note_says_when_the_model_overfits():
    assert viz.fit_note([]) == ""
    close = viz.fit_note(_evals((4.0, 4.05), (3.5, 3.56)))
    assert "close" in close and "Overfitting" not in close
    gap = viz.fit_note(_evals((4.0, 4.1), (3.0, 3.6)))
    assert gap.startswith("**Overfitting**") and "0.60 below" in gap and "--dropout" in gap and "risen" not in gap
    rising = viz.fit_note(_evals((4.0, 4.1), (3.2, 3.5), (2.8, 3.7)))
    assert "lowest at step 200 (3.500) and has risen since" in rising


def test_attention_maps(model, tok):
    ids = tok.encode("the king shall")
    maps = attention.attention_maps(model, ids)
    T = len(ids)
    assert len(maps) == 2 and maps[0].shape == (2, T, T)
    for a in maps:
        assert torch.allclose(a.sum(-1), torch.ones(2, T), atol=1e-5)
        assert torch.all(a.triu(1) == 0)  # causal
    with pytest.raises(ValueError, match="tokens"):
        attention.attention_maps(model, [])


def test_attention_html_escapes_labels():
    out = attention.attention_html(["<b>", "x\"y"], [[1.0, 0.0], [0.25, 0.75]], caption="<i>")
    assert "<b>" not in out and "&lt;b&gt;" in out and "x&quot;y" in out and "&lt;i&gt;" in out
    assert out.count("<tr>") == 3 and "background:#5c8af0" in out  # 0.75 of the way from white to #2563eb
    assert out.count(attention.MASKED) == 1 and "rgba(" not in out  # opaque: a dark page cannot show through


def test_layer_predictions_end_with_the_models_own(model, tok):
    ids = tok.encode("the king shall")
    rows = attention.layer_predictions(model, ids, k=3)
    assert len(rows) == model.config.n_layer and all(len(r) == 3 for r in rows)
    logits, _ = model(torch.tensor([ids]))
    probs = torch.softmax(logits[0, -1].float(), -1).topk(3)
    assert [t for t, _ in rows[-1]] == probs.indices.tolist()
    assert [p for _, p in rows[-1]] == pytest.approx(probs.values.tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="need 1 to"):
        attention.layer_predictions(model, [])
