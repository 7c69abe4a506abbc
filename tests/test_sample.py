"""The sampler: KV cache against the no-cache reference, masks, seeds, stop strings, streamed UTF-8 text."""

import math

import pytest
import torch

from llm.decode import KVCache, decoder
from llm.model import GPT, ModelConfig
from llm.sample import (
    SampleConfig,
    TextStream,
    apply_repetition_penalty,
    generate,
    generate_ids,
    keep_sorted,
    sample_index,
    sample_next,
)
from llm.tokenizer import Tokenizer

POSITIONS = ["rope", "learned", "sinusoidal"]
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """Byte-level: no merges, so ids 0..255 are the bytes and 256 is <|endoftext|>."""
    return Tokenizer(special_tokens=(EOT,))


def tiny(pos: str = "rope", vocab_size: int = 257, block_size: int = 16, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16, pos=pos, **kw)
    model = GPT(cfg).eval()
    if model.ngram is not None:  # the init's zeros would hide a wrong row
        with torch.no_grad():
            model.ngram.weight.normal_(0.0, 0.5)
    return model


def ids_of(model, prompt, **kw) -> list[list[int]]:
    """All tokens of generate_ids as (num_samples lists)."""
    steps = [t.tolist() for t, _ in generate_ids(model, prompt, SampleConfig(**kw))]
    return [list(col) for col in zip(*steps)]


class Scripted(torch.nn.Module):
    """A stand-in model that emits a fixed script of token ids, one per forward (greedy picks it)."""

    def __init__(self, script: list[int], vocab_size: int = 257):
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab_size, block_size=64, n_layer=1, n_head=1, n_embd=2)
        self.lm_head = torch.nn.Linear(2, vocab_size, bias=False)
        self.script, self.calls = script, 0

    def forward(self, idx, targets=None, kv_cache=None):
        logits = torch.zeros(idx.size(0), idx.size(1), self.config.vocab_size)
        logits[:, -1, self.script[self.calls]] = 10.0
        self.calls += 1
        if kv_cache is not None:
            kv_cache.advance(idx.size(1))
        return logits, None


def scripted_events(tok, text_or_ids, **kw):
    script = list(text_or_ids.encode()) if isinstance(text_or_ids, str) else text_or_ids
    cfg = SampleConfig(temperature=0.0, max_new_tokens=kw.pop("max_new_tokens", len(script)), **kw)
    return list(generate(Scripted(script), tok, [10], cfg))


# --- KV cache against the no-cache reference ---------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"ngram_embed": 97, "tie_embeddings": False}], ids=["plain", "ngram-untied"])
@pytest.mark.parametrize("pos", POSITIONS)
def test_cache_logits_match_full_forward_with_chunk_after_filled_cache(pos, extra):
    """Prefill, single tokens, then a multi-token chunk appended to a filled cache (the causal-mask trap:
    SDPA's is_causal is wrong when Tq != Tk; the n-gram embeddings' trap: a chunk's first tokens need the
    cached tokens before them)."""
    model = tiny(pos, **extra)
    idx = torch.randint(0, 257, (2, 16))
    full, _ = model(idx)
    cache = KVCache.for_model(model, batch_size=2)
    with torch.inference_mode():
        parts = [model(idx[:, :5], kv_cache=cache)[0]]  # prefill
        parts += [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(5, 8)]  # one at a time
        parts.append(model(idx[:, 8:13], kv_cache=cache)[0])  # a chunk of 5 after 8 cached
        parts.append(model(idx[:, 13:16], kv_cache=cache)[0])  # fill to block_size
    assert cache.pos == 16
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)
    with torch.inference_mode(), pytest.raises(ValueError, match="block_size"):
        model(idx[:, :1], kv_cache=cache)


@pytest.mark.parametrize("extra", [{}, {"qk_norm": True, "logit_softcap": 4.0}, {"value_embed": True, "x0_mix": True},
                                   {"vocab_multiple": 64}, {"ngram_embed": 97, "unet": True, "tie_embeddings": False}],
                         ids=["plain", "qknorm-softcap", "valueembed-x0mix", "padded-vocab", "ngram-unet-untied"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("norm,mlp", [("rmsnorm", "swiglu"), ("layernorm", "gelu"), ("rmsnorm", "relu2")])
@pytest.mark.parametrize("pos", POSITIONS)
def test_decoder_steps_equal_forward_for_every_variant(pos, norm, mlp, bias, extra):
    """decoder(model), the sampler's lean one-token step (its own code), against forward: the same logits and
    cache as forward's one-token steps up to float rounding, and close to one full forward, for three rows that
    share a batch-1 prefill. The tolerance is float32 rounding's: over 15 seeds the step used under 5% of it,
    while leaving out one folded RMSNorm gain overshoots it 50-fold or more."""
    model = tiny(pos, norm=norm, mlp=mlp, bias=bias, **extra)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_f.weight", "lambdas", "skip_weights")):
                p.normal_(0.5 if name.endswith(("weight", "lambdas", "skip_weights")) else 0.0, 0.1)  # not the init's
    idx = torch.cat([torch.randint(0, 257, (1, 6)).expand(3, 6), torch.randint(0, 257, (3, 10))], dim=1)
    full, _ = model(idx)
    caches = [KVCache.for_model(model, batch_size=3) for _ in range(2)]
    with torch.inference_mode():
        step = decoder(model)
        prefill = [model(idx[:1, :6], kv_cache=c)[0][:, -1] for c in caches]
        fast = [step(idx[:, t : t + 1], caches[0]) for t in range(6, 16)]
        plain = [model(idx[:, t : t + 1], kv_cache=caches[1])[0][:, -1] for t in range(6, 16)]
        with pytest.raises(ValueError, match="block_size"):
            step(idx[:, :1], caches[0])
    assert caches[0].pos == 16
    tight = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(caches[0].kv, caches[1].kv, **tight)
    torch.testing.assert_close(torch.stack(fast, 1), torch.stack(plain, 1), **tight)
    expected = torch.cat([prefill[0].expand(3, -1)[:, None], torch.stack(fast, 1)], dim=1)
    torch.testing.assert_close(expected, full[:, 5:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("half", ["bf16 weights", "bf16 autocast"])
def test_decoder_in_half_precision_matches_forward(half):
    """The decoder's RoPE multiplies in complex fp32, which a bf16 tensor cannot view as: it must take the fp32 way."""
    model = tiny("rope")
    if half == "bf16 weights":
        model = model.to(torch.bfloat16)
    idx = torch.randint(0, 257, (2, 8))
    caches = [KVCache.for_model(model, batch_size=2) for _ in range(2)]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=half == "bf16 autocast"):
        for c in caches:
            model(idx[:, :4], kv_cache=c)
        step = decoder(model)
        fast = torch.stack([step(idx[:, t : t + 1], caches[0]) for t in range(4, 8)], 1)
        plain = torch.stack([model(idx[:, t : t + 1], kv_cache=caches[1])[0][:, -1] for t in range(4, 8)], 1)
    assert fast.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), plain.float(), rtol=0.05, atol=0.05)


def test_forward_hooks_see_every_step():
    """The lean decoder makes no module calls, so a model with forward hooks anywhere in it (the app's tests ban a
    token with one) is sampled through forward: the hooks run on the prefill and on every step."""
    model = tiny()
    for module in (model, model.h[1].mlp):
        calls = []
        handle = module.register_forward_hook(lambda m, args, output, calls=calls: calls.append(1))
        try:
            tokens = ids_of(model, list(range(10)), temperature=1.0, seed=0, max_new_tokens=12)[0]
        finally:
            handle.remove()
        assert len(calls) == 12  # the prefill, then 11 one-token steps
        assert tokens == ids_of(model, list(range(10)), temperature=1.0, seed=0, max_new_tokens=12)[0]  # decoder


@pytest.mark.parametrize("extra", [{}, {"ngram_embed": 97}], ids=["plain", "ngram"])
@pytest.mark.parametrize("pos", POSITIONS)
def test_greedy_with_cache_equals_no_cache_past_block_size(pos, extra):
    """40 new tokens from a block of 16: the window slides (and the cache refills) several times."""
    model = tiny(pos, **extra)
    prompt = [72, 101, 108, 108, 111, 32]
    cached = ids_of(model, prompt, temperature=0.0, max_new_tokens=40, use_kv_cache=True)
    plain = ids_of(model, prompt, temperature=0.0, max_new_tokens=40, use_kv_cache=False)
    assert cached == plain


@pytest.mark.parametrize("extra", [{}, {"ngram_embed": 97}], ids=["plain", "ngram"])
@pytest.mark.parametrize("use_kv_cache", [True, False])
@pytest.mark.parametrize("pos", POSITIONS)
def test_each_token_is_the_argmax_of_a_full_forward_on_its_window(pos, use_kv_cache, extra):
    """Both paths checked against the model directly, window slides included (a window's first tokens have no
    n-gram context in either)."""
    model = tiny(pos, block_size=8, **extra)
    prompt = [5, 6, 7]
    bs, keep = 8, 8 - 8 // 4
    tokens, start = list(prompt), 0
    cfg = SampleConfig(temperature=0.0, max_new_tokens=20, use_kv_cache=use_kv_cache)
    for t, logits in generate_ids(model, prompt, cfg):
        window = torch.tensor([tokens[start:]])
        with torch.inference_mode():
            expected = model(window)[0][0, -1]
        torch.testing.assert_close(logits[0], expected, rtol=1e-4, atol=1e-5)
        assert t.item() == expected.argmax().item()
        tokens.append(t.item())
        if len(tokens) - start > bs:
            start = len(tokens) - keep


def test_num_samples_share_one_prefill():
    model = tiny()
    calls = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(tuple(args[0].shape)), with_kwargs=True)
    out = ids_of(model, list(range(10)), num_samples=3, temperature=1.0, seed=0, max_new_tokens=5)
    assert calls[0] == (1, 10)  # one prefill, batch 1
    assert calls[1:] == [(3, 1)] * 4  # then one token per step for every sample
    assert len({tuple(s) for s in out}) > 1  # the samples differ
    greedy = ids_of(model, list(range(10)), num_samples=3, temperature=0.0, max_new_tokens=5)
    assert greedy[0] == greedy[1] == greedy[2] == ids_of(model, list(range(10)), temperature=0.0, max_new_tokens=5)[0]


def test_kv_cache_protocol():
    cache = KVCache(n_layer=2, batch_size=3, n_head=2, max_len=4, head_dim=2)
    k = torch.randn(1, 2, 3, 2)
    k_all, _ = cache.update(1, k, k + 1)  # batch-1 prefill lands in every row
    assert k_all.shape == (1, 2, 3, 2) and cache.pos == 0
    cache.advance(3)
    assert (cache.k[1][:, :, :3] == k).all() and (cache.v[1][:, :, :3] == k + 1).all()
    k_all, _ = cache.update(0, torch.ones(3, 2, 1, 2), torch.ones(3, 2, 1, 2))
    assert k_all.shape == (3, 2, 4, 2)
    cache.advance(1)
    with pytest.raises(ValueError, match="holds 4 positions"):
        cache.update(0, k, k)
    cache.reset()
    assert cache.pos == 0


# --- masks and token selection -----------------------------------------------------------------------------


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """The tests' reference for the masks (llm.sample had it, used by nothing else): logits (B, V) -> logits with
    every token outside the top-k, top-p and min-p sets at -inf, each applied on what the previous one left."""
    V = logits.size(-1)
    vals, idx = logits.topk(min(top_k, V) if top_k else V, dim=-1)  # (B, K) sorted descending
    keep = keep_sorted(vals.softmax(-1), top_p, min_p)
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(-1, idx, vals.masked_fill(~keep, float("-inf")))


def test_top_k_keeps_exactly_k_and_clamps():
    logits = torch.randn(4, 50)
    for k in (1, 7, 50):
        kept = filter_logits(logits, top_k=k).isfinite()
        assert (kept.sum(-1) == k).all()
        assert (logits[kept].view(4, k).min(-1).values >= logits.topk(k).values[:, -1]).all()
    assert filter_logits(logits, top_k=10**6).isfinite().all()  # above the vocabulary: clamped, no error


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    for p, n in [(1e-6, 1), (0.5, 1), (0.7, 2), (0.81, 3), (0.96, 4), (1.0, 4)]:
        assert filter_logits(logits, top_p=p).isfinite().sum().item() == n, p
    torch.manual_seed(0)
    for p in (0.1, 0.5, 0.9):
        sorted_probs = torch.randn(8, 100).mul(2).softmax(-1).sort(descending=True).values
        keep = keep_sorted(sorted_probs, top_p=p)
        n = keep.sum(-1)
        mass = (sorted_probs * keep).sum(-1)
        assert (n >= 1).all() and (mass >= p - 1e-6).all()
        without_last = mass - sorted_probs.gather(1, (n - 1)[:, None]).squeeze(1)
        assert (without_last < p).all()  # smallest: dropping the last kept token falls short


def test_min_p_threshold():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert filter_logits(logits, min_p=0.2).isfinite().tolist() == [[True, True, True, False]]  # >= 0.1
    assert filter_logits(logits, min_p=0.61).isfinite().tolist() == [[True, False, False, False]]
    assert filter_logits(logits, min_p=1.0).isfinite().sum() == 1  # the top token always stays


def test_sample_next_stays_inside_the_masks():
    torch.manual_seed(0)
    logits = torch.randn(64, 30)
    g = torch.Generator().manual_seed(0)
    for kw in ({"top_k": 3}, {"top_p": 0.5}, {"min_p": 0.3}, {"top_k": 5, "top_p": 0.8, "min_p": 0.1}):
        allowed = filter_logits(logits / 0.7, **kw).isfinite()
        for _ in range(5):
            t = sample_next(logits, SampleConfig(temperature=0.7, **kw), g)
            assert allowed.gather(1, t[:, None]).all(), kw


def test_sample_index_follows_the_weights_and_never_draws_a_zero():
    g = torch.Generator().manual_seed(0)
    weights = torch.tensor([[0.0, 2.0, 0.0, 1.0, 1.0, 0.0]]).repeat(4000, 1)  # unnormalized, zeros at both ends
    draws = sample_index(weights, g).squeeze(1)
    counts = torch.bincount(draws, minlength=6).tolist()
    assert counts[0] == counts[2] == counts[5] == 0
    assert abs(counts[1] / 4000 - 0.5) < 0.03 and abs(counts[3] / 4000 - 0.25) < 0.03


def test_repetition_penalty_known_answer():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]


def test_temperature_zero_ignores_the_seed():
    model = tiny()
    runs = [ids_of(model, [1, 2, 3], temperature=0.0, seed=s, max_new_tokens=12) for s in (0, 1, None)]
    assert runs[0] == runs[1] == runs[2]


def test_same_seed_same_tokens_whatever_the_global_rng():
    model = tiny()
    a = ids_of(model, [1, 2, 3], temperature=1.0, seed=123, max_new_tokens=20)
    torch.manual_seed(999)
    torch.rand(100)  # other work using the global generator in between
    b = ids_of(model, [1, 2, 3], temperature=1.0, seed=123, max_new_tokens=20)
    c = ids_of(model, [1, 2, 3], temperature=1.0, seed=124, max_new_tokens=20)
    assert a == b and a != c


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"temperature": -0.1}, "temperature must be a number >= 0"),
        ({"temperature": float("nan")}, "temperature must be a number >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"min_p": 2.0}, r"min_p must be in \[0, 1\]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be a number > 0"),
        ({"num_samples": 0}, "num_samples must be an integer >= 1"),
        ({"stop": ("",)}, "stop must be a sequence of non-empty strings"),
        ({"stop": "\n"}, "stop must be a sequence of non-empty strings"),
    ],
)
def test_invalid_settings_say_the_valid_range(tok, kw, words):
    with pytest.raises(ValueError, match=words):
        next(generate(tiny(), tok, "hi", SampleConfig(**kw)))


# --- events and text -----------------------------------------------------------------------------------------


def test_events_carry_probabilities_alternatives_and_entropy(tok):
    model = tiny()
    events = list(generate(model, tok, "hi", SampleConfig(max_new_tokens=6, seed=0, num_alternatives=4)))
    assert [e.index for e in events] == list(range(6)) and events[-1].finish_reason == "length"
    prompt = tok.encode("hi")
    for e in events:
        with torch.inference_mode():
            probs = model(torch.tensor([prompt]))[0][0, -1].softmax(-1)
        assert e.prob == pytest.approx(probs[e.token_id].item(), rel=1e-4)
        assert [i for i, _ in e.alternatives] == probs.topk(4).indices.tolist()
        assert [p for _, p in e.alternatives] == sorted((p for _, p in e.alternatives), reverse=True)
        assert 0 <= e.entropy <= math.log(257) + 1e-4
        assert e.entropy == pytest.approx(-(probs * probs.log()).sum().item(), rel=1e-4)
        prompt.append(e.token_id)


def test_max_new_tokens_respected(tok):
    events = list(generate(tiny(), tok, "abc", SampleConfig(max_new_tokens=7, temperature=1.0, seed=1)))
    assert len(events) == 7 and [e.finish_reason for e in events] == [None] * 6 + ["length"]


@pytest.mark.parametrize("text", ["héllo 🙂 wörld", "日本語のテキスト", "🙂🙃👍🏽 mixed ascii 中文"])
def test_streamed_text_is_whole_characters(tok, text):
    """Multi-byte characters arrive one byte per token; no event shows a replacement character."""
    events = scripted_events(tok, text)
    assert all("\ufffd" not in e.text for e in events)
    assert "".join(e.text for e in events) == text == tok.decode([e.token_id for e in events])


def test_a_split_character_waits_for_its_last_byte(tok):
    events = scripted_events(tok, "日本")
    assert [e.text for e in events] == ["", "", "日", "", "", "本"]


def test_streamed_text_equals_decode_for_random_bytes(tok):
    """Random sampling makes invalid UTF-8 too: the stream still equals decode(all ids)."""
    model = tiny(block_size=32)
    cfg = SampleConfig(max_new_tokens=120, temperature=2.0, seed=3, num_samples=2)
    events = [e for e in generate(model, tok, "x", cfg) if e.token_id != tok.eot_id]
    for s in range(2):
        mine = [e for e in events if e.sample == s]
        assert "".join(e.text for e in mine) == tok.decode([e.token_id for e in mine])


def test_stop_string_cuts_and_never_leaks(tok):
    events = scripted_events(tok, "one two STOP three", stop=("STOP",))
    texts = [e.text for e in events]
    assert "".join(texts) == "one two "
    assert events[-1].finish_reason == "stop" and len(events) == len("one two STOP")
    assert not any(c in t for t in texts for c in "STOP")  # not even a held-back prefix leaks


def test_stop_prefix_is_held_back_then_released(tok):
    events = scripted_events(tok, "a\nb\n\nc", stop=("\n\n",))
    assert [e.text for e in events] == ["a", "", "\nb", "", ""]
    assert events[-1].finish_reason == "stop"
    # a held-back prefix comes out at the end when the stop string never completes
    events = scripted_events(tok, "ab\n", stop=("\n\n",))
    assert [e.text for e in events] == ["a", "b", "\n"] and events[-1].finish_reason == "length"


def test_earliest_stop_string_wins_and_can_split_characters(tok):
    events = scripted_events(tok, "xx🙂yy END", stop=(" END", "🙂"))
    assert "".join(e.text for e in events) == "xx" and events[-1].finish_reason == "stop"


def test_eos_ends_a_sample(tok):
    events = scripted_events(tok, [104, 105, tok.eot_id, 106], max_new_tokens=4)
    assert [e.text for e in events] == ["h", "i", ""]
    assert events[-1].finish_reason == "eos" and events[-1].token_id == tok.eot_id


def test_text_stream_flushes_an_unfinished_character(tok):
    stream = TextStream(tok)
    assert stream.push(0xF0) == "" and stream.push(0x9F) == ""
    assert stream.flush() == tok.decode([0xF0, 0x9F]) == "\ufffd"


def test_long_prompt_is_cropped_and_reported(tok):
    model = tiny(block_size=16)
    events = list(generate(model, tok, "x" * 40, SampleConfig(max_new_tokens=3, seed=0)))
    assert len(events) == 3 and all(e.prompt_cropped == 24 for e in events)
    assert events[0].prompt_cropped == 24
    assert next(iter(generate(model, tok, "x" * 8, SampleConfig(max_new_tokens=1)))).prompt_cropped == 0


def test_empty_prompt_starts_from_eot(tok):
    events = list(generate(tiny(), tok, "", SampleConfig(max_new_tokens=2, seed=0)))
    assert len(events) >= 1
    with pytest.raises(ValueError, match="prompt is empty"):
        next(generate(tiny(), Tokenizer(), "", SampleConfig()))


def test_model_vocab_larger_than_tokenizer_is_never_sampled(tok):
    model = Scripted([280, 104, 290], vocab_size=300)  # padded: ids 257..299 mean nothing to the tokenizer
    events = list(generate(model, tok, "hi", SampleConfig(max_new_tokens=3, temperature=0.0)))
    assert [e.token_id for e in events] == [0, 104, 0]
    assert all(i < 257 for e in events for i, _ in e.alternatives)
