"""GPT and ModelConfig: shapes, loss, causality, variants, the attention-weights path, counts."""

import math

import pytest
import torch
import torch.nn.functional as F

from llm.model import GPT, ModelConfig
from llm.ngram import NGRAM_CONTEXT, NGRAM_ORDERS, ngram_rows

VARIANTS = [
    {"pos": pos, "norm": norm, "mlp": mlp, "tie_embeddings": tie}
    for pos, norm, mlp, tie in [
        ("rope", "rmsnorm", "swiglu", True),
        ("learned", "layernorm", "gelu", False),
        ("sinusoidal", "rmsnorm", "gelu", True),
        ("rope", "layernorm", "gelu", False),
        ("learned", "rmsnorm", "swiglu", True),
        ("sinusoidal", "layernorm", "swiglu", False),
        ("rope", "rmsnorm", "relu2", True),
    ]
]


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = {"vocab_size": 37, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}
    return GPT(ModelConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"pos": "alibi"}, "pos must be one of"),
        ({"norm": "batchnorm"}, "norm must be one of"),
        ({"mlp": "relu"}, "mlp must be one of"),
        ({"n_embd": 30, "n_head": 4}, "divisible"),
        ({"n_embd": 12, "n_head": 4}, "even head size"),  # rope needs pairs
        ({"n_layer": 0}, "n_layer must be an integer >= 1"),
        ({"vocab_size": -5}, "vocab_size"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
        ({"logit_softcap": -1.0}, "logit_softcap must be a number >= 0"),
        ({"logit_softcap": math.inf}, "logit_softcap must be a number >= 0"),
        ({"ngram_embed": -1}, "ngram_embed must be an integer from 0"),
        ({"ngram_embed": 1 << 30}, "ngram_embed must be an integer from 0"),
    ],
)
def test_config_rejects_bad_values(kw, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**kw)


def test_odd_head_size_is_fine_without_rope():
    GPT(ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=4, n_embd=12, pos="learned"))


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_forward_shapes_loss_and_causality(kw):
    model = tiny(**kw)
    idx = torch.randint(0, 37, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 37) and loss is None
    # untrained model: predictions near uniform, so the loss on random targets is near ln(V) (known answer)
    _, loss = model(idx, torch.randint(0, 37, (3, 16)))
    assert abs(loss.item() - math.log(37)) < 0.1
    # a later token never changes earlier logits
    idx2 = idx.clone()
    idx2[:, 10:] = (idx2[:, 10:] + 1) % 37
    logits2, _ = model(idx2)
    torch.testing.assert_close(logits[:, :10], logits2[:, :10])
    assert not torch.allclose(logits[:, 10:], logits2[:, 10:])


def test_loss_ignores_minus_one():
    model = tiny()
    idx = torch.randint(0, 37, (2, 8))
    targets = idx.clone()
    targets[:, :3] = -1
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits[:, 3:].reshape(-1, 37), idx[:, 3:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_tied_embeddings():
    m = tiny(tie_embeddings=True)
    assert m.lm_head.weight is m.wte.weight
    m = tiny(tie_embeddings=False)
    assert m.lm_head.weight is not m.wte.weight


def test_an_untied_head_is_its_own_matrix_and_otherwise_the_same_model():
    """Known answer: an untied model whose head holds a copy of the token table computes the tied model's
    logits; it counts one more vocab x n_embd matrix, and a step moves the two apart."""
    tied, untied = tiny(tie_embeddings=True), tiny(tie_embeddings=False)
    untied.load_state_dict({**tied.state_dict(), "lm_head.weight": tied.wte.weight.detach().clone()})
    idx = torch.randint(0, 37, (2, 9))
    torch.testing.assert_close(untied(idx)[0], tied(idx)[0], rtol=0, atol=0)
    assert untied.num_params() - tied.num_params() == 37 * 16
    untied.train()
    untied(idx, idx)[1].backward()
    torch.optim.SGD(untied.parameters(), lr=0.1).step()
    assert not torch.equal(untied.lm_head.weight, untied.wte.weight)


@pytest.mark.parametrize("pos", ["rope", "learned", "sinusoidal"])
def test_attention_weights_only_when_asked(pos):
    model = tiny(pos=pos)
    idx = torch.randint(0, 37, (2, 9))
    fast = model(idx)
    assert len(fast) == 2  # the fast path returns no attention
    logits, attn = model.attention_maps(idx)
    torch.testing.assert_close(logits, fast[0])
    assert len(attn) == 2 and all(a.shape == (2, 2, 9, 9) for a in attn)
    for a in attn:
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 9))
        assert (a.triu(diagonal=1) == 0).all()  # causal


def test_too_long_input_raises():
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_fixed_tables_stay_out_of_the_state_dict():
    for pos in ("rope", "sinusoidal"):
        keys = tiny(pos=pos).state_dict().keys()
        assert not any("rope" in k or "pos_table" in k for k in keys)
    assert "wpe.weight" in tiny(pos="learned").state_dict()


def test_num_params_and_flops():
    m = tiny(pos="learned", tie_embeddings=False, mlp="gelu", norm="layernorm", value_embed=False)
    C, V, T, L = 16, 37, 16, 2
    per_layer = C + 3 * C * C + C * C + C + 4 * C * C + 4 * C * C  # ln_1, attn, ln_2, mlp (bias=False)
    total = V * C + T * C + L * per_layer + C + V * C  # wte, wpe, blocks, ln_f, lm_head
    assert m.num_params() == total
    assert m.num_params(non_embedding=True) == total - V * C - T * C
    assert m.flops_per_token() == 6 * (total - V * C - T * C) + 12 * L * C * T
    tied = tiny(pos="learned", tie_embeddings=True, mlp="gelu", norm="layernorm", value_embed=False)
    assert tied.num_params() == total - V * C  # the shared matrix counts once
    ve = tiny(pos="learned", tie_embeddings=False, mlp="gelu", norm="layernorm", value_embed=True)
    assert ve.num_params() == total + L * V * C  # a table per block: lookups, so not in the FLOPs
    assert ve.flops_per_token() == m.flops_per_token()


def test_a_few_steps_learn_a_repeated_sequence():
    model = tiny().train()
    idx = torch.arange(17).remainder(37)[None].repeat(4, 1)
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        _, loss = model(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 2


@pytest.mark.parametrize("kw", [{"dropout": 0.2}, {"dropout": 0.0, "attn_dropout": 0.2}])
def test_dropout_only_in_training(kw):
    model = tiny(**kw)
    idx = torch.randint(0, 37, (2, 8))
    torch.testing.assert_close(model(idx)[0], model(idx)[0])  # eval: deterministic
    model.train()
    assert not torch.allclose(model(idx)[0], model(idx)[0])


def test_attention_dropout_is_its_own_setting():
    """`dropout` no longer touches the attention weights: with only it on, the attention maps of training mode
    are the eval ones (each row sums to 1); with attn_dropout they are not."""
    idx = torch.randint(0, 37, (1, 8))
    for kw, dropped in (({"dropout": 0.5}, False), ({"dropout": 0.0, "attn_dropout": 0.5}, True)):
        torch.manual_seed(0)
        model = tiny(**kw).train()
        calls = []
        real = torch.nn.functional.dropout

        def spy(x, p=0.5, training=True, inplace=False):
            calls.append((tuple(x.shape), p if training else 0.0))
            return real(x, p, training, inplace)

        torch.nn.functional.dropout = spy
        try:
            model.attention_maps(idx)
        finally:
            torch.nn.functional.dropout = real
        on_weights = [p for shape, p in calls if len(shape) == 4]  # (B, H, T, T): the attention weights
        assert on_weights and all((p > 0) == dropped for p in on_weights)


def test_model_cast_to_bf16_keeps_its_positions():
    """model.to(torch.bfloat16) only rounds the RoPE table. A complex table would lose its imaginary part (sin):
    with attention sharp enough for positions to matter, that moved logits by 23-37% of their scale over 10
    seeds, where bf16 rounding moves them by 1-3%."""
    model = tiny(n_embd=32)
    with torch.no_grad():
        for block in model.h:
            block.attn.c_attn.weight.mul_(30)  # sharp attention
        model.wte.weight.mul_(20)
    idx = torch.randint(0, 37, (2, 16))
    ref = model(idx)[0]
    out = model.to(torch.bfloat16)(idx)[0].float()
    assert (out - ref).abs().max() < 0.08 * ref.abs().max()


def test_rope_in_half_precision_matches_float32():
    """Under autocast the projections come out bf16; rope computes in fp32 and hands back bf16."""
    from llm.model import apply_rope, rope_frequencies

    x = torch.randn(2, 5, 2, 3, 8)
    freqs = rope_frequencies(16, 8, 10000.0)[:5, None, None]
    out = apply_rope(x.bfloat16(), freqs)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), apply_rope(x, freqs), rtol=2e-2, atol=2e-2)
    # rotation keeps each pair's length
    torch.testing.assert_close(apply_rope(x, freqs).norm(dim=-1), x.norm(dim=-1))


def test_logit_softcap_bounds_the_logits_and_keeps_small_ones():
    from llm.model import softcap

    x = torch.tensor([-1000.0, -3.0, 0.0, 0.01, 3.0, 1000.0])
    capped = softcap(x, 15.0)
    assert capped.abs().max() <= 15.0 and capped[0] == pytest.approx(-15.0) and capped[2] == 0.0  # tanh: float 1.0
    assert capped[3] == pytest.approx(0.01, rel=1e-6)  # near the identity for small logits (known answer)
    assert torch.equal(softcap(x, 0.0), x)  # 0 = off
    model = tiny(logit_softcap=2.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000.0)  # logits that would be huge
    logits, _ = model(torch.randint(0, 37, (2, 16)))
    assert logits.abs().max() <= 2.0


def test_qk_norm_bounds_the_attention_logits():
    """With qk_norm each head's q and k have norm sqrt(hd), so q.k / sqrt(hd) stays within +-sqrt(hd) however large
    the weights grow: the attention cannot saturate into one-hot rows."""
    plain, normed = tiny(), tiny(qk_norm=True)
    for m in (plain, normed):
        with torch.no_grad():
            m.h[0].attn.c_attn.weight.mul_(300.0)
    idx = torch.randint(0, 37, (1, 16))
    _, (att_plain, *_) = plain.attention_maps(idx)
    _, (att_normed, *_) = normed.attention_maps(idx)
    hd = 16 // 2
    # a softmax over logits within +-sqrt(hd) puts at most e^(2 sqrt(hd)) / (e^(2 sqrt(hd)) + T - 1) on one key
    bound = math.exp(2 * math.sqrt(hd)) / (math.exp(2 * math.sqrt(hd)) + 15)
    assert att_normed[0, :, -1].max() <= bound + 1e-6
    assert att_plain[0, :, -1].max() > 0.999  # without it, scaled weights make a one-hot row
    assert normed.config.qk_norm and not plain.config.qk_norm


def test_relu2_known_answer():
    from llm.model import mlp_activation

    h = torch.tensor([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    assert mlp_activation(h, "relu2").tolist() == [[0.0, 0.0, 0.0, 0.25, 9.0]]
    assert tiny(mlp="relu2").h[0].mlp.c_fc.weight.shape == (64, 16)  # 4 * C hidden, no gate


def test_value_embeddings_add_a_per_token_vector_to_the_values_causally():
    """A zeroed table is the plain model; one token's row moves the logits only from that token's position on."""
    plain, ve = tiny(value_embed=False), tiny(value_embed=True)
    missing = ve.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == [f"h.{i}.attn.value_embed.weight" for i in range(2)]
    idx = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        for b in ve.h:
            b.attn.value_embed.weight.zero_()
        torch.testing.assert_close(ve(idx)[0], plain(idx)[0])
        ve.h[0].attn.value_embed.weight[5].normal_()  # token 5, at position 4
        moved = (ve(idx)[0] - plain(idx)[0]).abs().amax(dim=-1)[0]  # (T,)
    assert moved[:4].max() < 1e-6 and moved[4:].min() > 1e-4
    assert ve.num_params(non_embedding=True) == plain.num_params(non_embedding=True)  # lookups, not compute
    from llm.optim import configure_optimizers

    adamw, muon = configure_optimizers(ve, "muon", 1e-3, 0.1, (0.9, 0.95))
    on_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert all(id(b.attn.value_embed.weight) in on_adamw for b in ve.h)  # a table, not a hidden matrix for Muon


def test_ngram_rows_known_answer():
    """The 2, 3 and 4 tokens ending at each position: equal n-grams share a row, a missing token gets the table's
    last row, and an n-gram's row depends on each of its tokens."""
    assert NGRAM_ORDERS == (2, 3, 4) and NGRAM_CONTEXT == 3
    ids = torch.tensor([[-1, -1, -1, 5, 6, 7, 5, 6, 7, 6, 7]])  # three missing tokens, then the text
    rows = ngram_rows(ids, 1000)
    assert rows.shape == (1, 8, 3) and rows.dtype == torch.long
    two, three, four = (rows[0, :, i].tolist() for i in range(3))
    assert two[:1] + three[:2] + four[:3] == [1000] * 6  # the first n - 1 positions have no n-gram
    assert two[1] == two[4] and two[2] == two[5] == two[7]  # (5, 6) twice; (6, 7) three times
    assert three[2] == three[5]  # (5, 6, 7) twice
    assert three[3] != three[6] and three[7] != three[2]  # (6, 7, 5) against (6, 7, 6), (7, 6, 7) against
    # (5, 6, 7): the newest and the oldest token count
    assert four[3] != four[6]  # (5, 6, 7, 5) against (5, 6, 7, 6)
    assert len({*two[1:4], *three[2:5], *four[3:6]}) == 9  # different n-grams, different rows here
    assert all(0 <= r < 1000 for r in two[1:] + three[2:] + four[3:])
    # spread: the 37 x 37 pairs of a small vocabulary over 4096 rows collide about as often as random rows would
    a, b = torch.meshgrid(torch.arange(37), torch.arange(37), indexing="ij")
    pairs = torch.stack([torch.full((37 * 37,), -1)] * 2 + [a.flatten(), b.flatten()], 1)  # (1369, 3 + 1)
    pair_rows = ngram_rows(pairs, 4096)[:, 0, 0]
    assert pair_rows.unique().numel() > 0.8 * 37 * 37  # random rows: 1 - e^(-1369/4096) of 4096, 85% distinct


def test_ngram_embeddings_start_as_the_plain_model_and_add_the_last_three_tokens():
    """A zeroed table (the init) is the plain model; a row moves the logits only from the first position whose
    n-gram lands on it."""
    plain, ng = tiny(), tiny(ngram_embed=50)
    missing = ng.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["ngram.weight"]
    idx = torch.tensor([[1, 2, 3, 4, 1, 2, 3, 9]])
    torch.testing.assert_close(ng(idx)[0], plain(idx)[0])
    row = ngram_rows(F.pad(idx, (3, 0), value=-1), 50)[0, 1, 0].item()  # the pair (1, 2), at positions 1 and 5
    with torch.no_grad():
        ng.ngram.weight[row].normal_()
        moved = (ng(idx)[0] - plain(idx)[0]).abs().amax(dim=-1)[0]  # (T,)
    assert moved[0] < 1e-6 and moved[1] > 1e-4  # from the pair's position on
    assert ng.num_params(non_embedding=True) == plain.num_params(non_embedding=True)  # a lookup, not compute
    from llm.optim import configure_optimizers

    adamw, _ = configure_optimizers(ng, "muon", 1e-3, 0.1, (0.9, 0.95))
    assert any(p is ng.ngram.weight for g in adamw.param_groups for p in g["params"])  # a table, not for Muon


def test_unet_skips_start_closed_and_pair_the_first_blocks_with_the_last():
    """Zero skip weights (the init) are the plain model; with 4 blocks, block 3 takes block 0's output and block 2
    takes block 1's: a weight opened moves the logits, and both weights get a gradient."""
    plain, unet = tiny(n_layer=4), tiny(n_layer=4, unet=True)
    assert unet.load_state_dict(plain.state_dict(), strict=False).missing_keys == ["skip_weights"]
    assert unet.skip_weights.shape == (2,) and tiny(n_layer=3, unet=True).skip_weights.shape == (1,)
    idx = torch.randint(0, 37, (2, 16))
    torch.testing.assert_close(unet(idx)[0], plain(idx)[0])
    _, loss = unet.train()(idx, idx)
    loss.backward()
    assert (unet.skip_weights.grad.abs() > 0).all()
    outputs = []  # each block's output, to check the pairing by hand
    hooks = [b.register_forward_hook(lambda m, args, out: outputs.append(out)) for b in unet.h]
    with torch.no_grad():
        unet.eval().skip_weights.copy_(torch.tensor([0.7, 0.0]))  # block 0 -> block 3 only
        unet(idx)
        for h in hooks:
            h.remove()
        block_3_input = outputs[2] + 0.7 * outputs[0]
        x0 = unet.wte(idx).view(-1, unet.config.n_embd)
        freqs = unet.wpe.rotations(0, 16)[:, None, None]
        torch.testing.assert_close(unet.h[3](block_3_input, x0, idx, freqs, None, None, None), outputs[3])


def test_x0_mix_starts_as_the_plain_model_and_learns_its_mix():
    plain, mixed = tiny(), tiny(x0_mix=True)
    missing = mixed.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["h.0.lambdas", "h.1.lambdas"]
    idx = torch.randint(0, 37, (2, 16))
    torch.testing.assert_close(mixed(idx)[0], plain(idx)[0])  # lambdas (1, 0): x itself
    _, loss = mixed.train()(idx, idx)
    loss.backward()
    assert all(b.lambdas.grad[1].abs() > 0 for b in mixed.h)  # the embeddings' share gets a gradient
    with torch.no_grad():  # (0, 1) everywhere: every block starts from the embeddings alone, so block 0's output
        for b in mixed.h:  # no longer reaches the last block's input
            b.lambdas.copy_(torch.tensor([0.0, 1.0]))
        before = mixed.eval()(idx)[0]
        mixed.h[0].mlp.c_proj.weight.normal_()
        after = mixed(idx)[0]
    torch.testing.assert_close(before, after)


def test_a_padded_token_table_changes_nothing_but_its_shape(tmp_path):
    """vocab_multiple rounds the token table and the output layer up (for a GPU's matrix units); the extra rows
    are cut off the logits, so the model computes what the unpadded one does, counts its parameters, saves and
    loads, and never produces an extra id, however large their rows' scores would be."""
    from llm.checkpoint import load_checkpoint, save_checkpoint
    from llm.sample import SampleConfig, generate_ids
    from llm.tokenizer import CharTokenizer

    plain, padded = tiny(), tiny(vocab_multiple=64)
    assert padded.wte.weight.shape == (64, 16) and padded.config.padded_vocab == 64 and plain.config.padded_vocab == 37
    with torch.no_grad():
        for (name, p), q in zip(padded.named_parameters(), plain.parameters()):
            p.copy_(q) if p.shape == q.shape else p[: q.shape[0]].copy_(q)
        padded.wte.weight[37:] = 50.0  # rows that would win every prediction if they were not cut off
    idx = torch.randint(0, 37, (2, 10))
    (a, la), (b, lb) = plain(idx, idx), padded(idx, idx)
    assert b.shape == a.shape == (2, 10, 37)
    torch.testing.assert_close(b, a)
    torch.testing.assert_close(lb, la)
    assert padded.num_params() == plain.num_params()
    assert padded.num_params(non_embedding=True) == plain.num_params(non_embedding=True)
    steps = generate_ids(padded, [1, 2, 3], SampleConfig(max_new_tokens=12, temperature=2.0, seed=0))
    assert all(0 <= t < 37 for ids, _ in steps for t in ids.flatten().tolist())
    tok = CharTokenizer.train("".join(chr(97 + i % 26) for i in range(200)))
    save_checkpoint(tmp_path / "p", padded, tok, {"lr": 1.0})
    loaded, _, _ = load_checkpoint(tmp_path / "p")
    assert loaded.config.vocab_multiple == 64 and torch.equal(loaded(idx)[0], padded(idx)[0])
    with pytest.raises(ValueError, match="vocab_multiple"):
        ModelConfig(vocab_multiple=0)


def test_a_new_run_pads_its_token_table_on_cuda_only():
    from llm.runtime import vocab_multiple

    assert vocab_multiple(torch.device("cuda")) == 64 and vocab_multiple(torch.device("cpu")) == 1
    assert vocab_multiple(torch.device("mps")) == 1
