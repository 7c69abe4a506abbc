"""app.py: checkpoint resolution, the handlers as plain functions, and the launched app through gradio_client."""

import functools
import inspect
import json
import os
import pickle
import re
import socket
import time
from pathlib import Path

import gradio as gr
import pytest

import app
import playground
import train_cli
from conftest import make_text
from llm.checkpoint import CheckpointError
from llm.sample import parse_stop

TINY_RUN = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
            "--vocab-size", "300", "--max-steps", "6", "--eval-interval", "3", "--eval-iters", "1",
            "--sample-tokens", "0", "--no-progress", "--no-compile"]
_RUN: dict[str, Path] = {}


def tiny_run(tmp_path_factory) -> Path:
    """OUT of a few-step training run on a generated corpus, made once per test session (test_browser uses it)."""
    if "out" not in _RUN:
        d = tmp_path_factory.mktemp("app_run")
        (d / "corpus.txt").write_text(make_text(), encoding="utf-8")
        assert train_cli.main(["--corpus", str(d / "corpus.txt"), "--out", str(d / "out"), *TINY_RUN]) == 0
        _RUN["out"] = d / "out"
    return _RUN["out"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


def without_endoftext(model, tokenizer):
    """Make <|endoftext|> impossible: a nearly untrained model draws it about once in 300 tokens, which would end
    a run early on a machine whose floating point picks other samples. Returns the hook's handle."""
    def hook(module, args, output):
        logits = output[0].clone()
        logits[..., tokenizer.eot_id] = float("-inf")
        return (logits, *output[1:])

    return model.register_forward_hook(hook)


@pytest.fixture(scope="module")
def loaded(run_dir):
    loaded = app.load_playground(str(run_dir))
    without_endoftext(loaded[0], loaded[1])
    return loaded


@pytest.fixture(scope="module")
def pg(loaded) -> app.Playground:
    return app.Playground(*loaded, stream_interval=0.0)


def select(index: int) -> gr.SelectData:
    return gr.SelectData(None, {"index": index, "value": None})


def drawn(view: str) -> list[int]:
    """The token indices a token view (tokenview.tokens_html) draws, in order: a piece drawn from n tokens
    (data-n) stands for n of them."""
    found = re.findall(r'<span class="t" data-i="(\d+)"(?: data-n="(\d+)")?', view)
    return [int(i) + k for i, n in found for k in range(int(n or 1))]


# --- loading ------------------------------------------------------------------------------------------------


def test_find_checkpoint_order(tmp_path, monkeypatch):
    monkeypatch.delenv(app.ENV_CHECKPOINT, raising=False)
    monkeypatch.setattr(playground, "BUNDLED", tmp_path / "assets" / "model")
    with pytest.raises(CheckpointError, match="no model to open: pass --checkpoint"):
        app.find_checkpoint(None, tmp_path)
    (tmp_path / "assets" / "model").mkdir(parents=True)
    (tmp_path / "assets" / "model" / "config.json").write_text("{}")
    assert app.find_checkpoint(None, tmp_path) == str(tmp_path / "assets" / "model")
    old, new = tmp_path / "checkpoints" / "old" / "best", tmp_path / "checkpoints" / "new" / "best"
    for i, d in enumerate((new, old)):  # made in the wrong order: mtime decides, not creation or name
        d.mkdir(parents=True)
        os.utime(d, (1000 + i * 1000, 1000 + i * 1000))
    assert app.find_checkpoint(None, tmp_path) == str(old)
    monkeypatch.setenv(app.ENV_CHECKPOINT, "user/model")
    assert app.find_checkpoint(None, tmp_path) == "user/model"
    assert app.find_checkpoint("mine", tmp_path) == "mine"


def test_main_without_a_model_is_one_line_and_nonzero(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(app.ENV_CHECKPOINT, raising=False)
    monkeypatch.setattr(playground, "BUNDLED", tmp_path / "nothing")
    monkeypatch.chdir(tmp_path)
    assert app.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("app.py: error: no model to open")
    assert app.main(["--checkpoint", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_load_playground(loaded, run_dir):
    model, tokenizer, meta, name, metrics, train_config = loaded
    assert name == "out/best" and meta["path"] == str(run_dir / "best")
    assert [r["step"] for r in metrics] == [3, 6] and train_config["max_steps"] == 6
    assert next(model.parameters()).device.type == "cpu"  # no CUDA on the test machine


def test_metrics_inside_or_beside_the_checkpoint(tmp_path):
    (tmp_path / "best").mkdir()
    assert app.run_metrics(tmp_path / "best") == []
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    assert app.run_metrics(tmp_path / "best") == [{"step": 1}]
    (tmp_path / "best" / "metrics.jsonl").write_text('{"step": 2}\n')  # a Hub repo or a Space keeps it inside
    assert app.run_metrics(tmp_path / "best") == [{"step": 2}]


def test_header(pg):
    h = pg.header()
    assert "out&#47;best" in h and "26.1K parameters" in h and "val loss 5." in h and "bits per byte" in h
    assert "**Train** tab" in h and "press **Generate**" in h  # what this is and what to try first


def test_a_random_seed_is_shown_and_gives_the_text_again(pg):
    *_, (text, stats, _) = pg.generate("KING:", **{**GEN, "seed": -1})
    seed = int(re.search(r"seed \*\*(\d+)\*\*", stats).group(1))
    *_, (again, stats_again, _) = pg.generate("KING:", **{**GEN, "seed": seed})
    assert again == text and f"seed **{seed}**" in stats_again


# --- generate -----------------------------------------------------------------------------------------------

GEN = dict(max_new_tokens=30, temperature=0.8, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=7,
           stop="")


def test_generate_streams_and_reports(pg):
    updates = list(pg.generate("KING:", **GEN))
    assert len(updates) >= 3
    texts = [u[0] for u in updates]
    assert all(t.startswith("KING:") for t in texts)
    assert all(len(a) <= len(b) for a, b in zip(texts, texts[1:]))  # text only grows
    text, stats, run = updates[-1]
    assert "**30 tokens**" in stats and "tokens/s" in stats and "max new tokens" in stats
    assert len(run.ids) == run.n_prompt + 30 and run.steps[-1].prob > 0
    assert list(pg.generate("KING:", **GEN))[-1][0] == text  # same seed, same text


def test_generate_seed_minus_one_is_random(pg):
    texts = {list(pg.generate("KING:", **{**GEN, "seed": seed, "temperature": 2.0}))[-1][0] for seed in (-1, -1, None)}
    assert len(texts) > 1  # 30 tokens at temperature 2: equal draws are next to impossible


def test_generate_empty_prompt_starts_at_endoftext(pg):
    *_, (text, stats, run) = pg.generate("", **{**GEN, "max_new_tokens": 3})
    assert run.ids[0] == pg.tokenizer.eot_id and run.n_prompt == 1


def test_generate_crops_a_long_prompt(pg):
    *_, (_, stats, run) = pg.generate("the king " * 40, **{**GEN, "max_new_tokens": 2})
    assert "did not fit the context" in stats and run.n_prompt == pg.config.block_size


def test_generate_stops_at_the_time_limit(loaded):
    slow = app.Playground(*loaded, limits=app.Limits(time_s=0.0))
    *_, (_, stats, run) = slow.generate("KING:", **GEN)
    assert "**1 token**" in stats and "time limit of 0 s" in stats


@pytest.mark.parametrize("field, value, words", [
    ("max_new_tokens", 0, "max new tokens must be a whole number from 1 to 512"),
    ("max_new_tokens", 10**6, "from 1 to 512"),
    ("max_new_tokens", 2.5, "whole number"),
    ("max_new_tokens", float("nan"), "whole number"),
    ("max_new_tokens", "12", "whole number"),
    ("max_new_tokens", True, "whole number"),
    ("temperature", -0.1, "temperature must be a number from 0 to 2 (0 = greedy)"),
    ("temperature", float("inf"), "temperature"),
    ("top_k", -1, "top-k must be a whole number from 0 to"),
    ("top_p", 0.0, "top-p must be a number above 0 and at most 1"),
    ("min_p", 1.5, "min-p must be a number from 0 to 1"),
    ("repetition_penalty", 0.5, "repetition penalty must be a number from 1 to 2"),
    ("seed", -2, "seed must be a whole number from -1 to 4294967295 (-1 = random)"),
    ("seed", 1.5, "seed"),
    ("stop", "a,b,c,d,e,f,g,h,i", "at most 8 stop strings"),
    ("stop", "x" * 201, "stop strings is 201 characters long; the limit is 200"),
])
def test_generate_rejects_out_of_range_settings(pg, field, value, words):
    with pytest.raises(gr.Error, match=words.replace("(", r"\(").replace(")", r"\)")):
        next(pg.generate("KING:", **{**GEN, field: value}))


def test_generate_rejects_a_long_prompt(pg):
    with pytest.raises(gr.Error, match="the prompt is 2,001 characters long; the limit is 2,000 characters"):
        next(pg.generate("x" * 2001, **GEN))
    with pytest.raises(gr.Error, match="must be text"):
        next(pg.generate(["KING:"], **GEN))


@pytest.mark.parametrize("text, stops", [
    ("", ()),
    (r"\n\n, END", ("\n\n", "END")),
    (r"a\,b, c\\n", ("a,b", "c\\n")),
    (" x , x ,", ("x",)),
])
def test_parse_stop(text, stops):
    assert parse_stop(text) == stops


def test_generate_stop_string(pg):
    *_, (text, stats, _) = pg.generate("KING:", **{**GEN, "max_new_tokens": 200, "temperature": 2.0,
                                                   "stop": "e"})
    assert "e" not in text[len("KING:"):] and ("a stop string" in stats or "max new tokens" in stats)


# --- tokens tab ---------------------------------------------------------------------------------------------


def test_show_tokens_and_details(pg):
    *_, (_, _, run) = pg.generate("KING:", **GEN)
    view, summary, run = pg.show_tokens(run, "KING:", "probability")
    assert drawn(view) == list(range(len(run.ids)))
    cut = re.search(r'class="cut" title="[^"]*"></span><span class="t" data-i="(\d+)"', view)
    assert cut and int(cut[1]) == run.n_prompt  # the mark where the generated text starts
    assert run.scored and run.steps[0] is None and run.steps[1] is not None
    assert f"{run.n_prompt} prompt tokens, 30 generated" in summary and "perplexity" in summary
    md, table = pg.token_details(run, select(run.n_prompt))
    assert "(generated)" in md and "Entropy" in md and table.count("<tr") >= 11 and "◀ this token" in table
    assert table.count('class="bar"') == table.count("<tr") - 1  # a bar per alternative
    md, table = pg.token_details(run, select(0))
    assert "first token" in md and table == ""
    with pytest.raises(gr.Error, match="choose one of the tokens"):
        pg.token_details(run, select(len(run.ids)))
    with pytest.raises(gr.Error, match="choose one of the tokens"):
        pg.token_details(None, select(0))


def test_show_tokens_without_a_run_scores_the_prompt(pg):
    view, summary, run = pg.show_tokens(None, "the king", "id")
    ids = pg.tokenizer.encode("the king")
    assert run.ids == ids and "0 generated" in summary
    assert drawn(view) == list(range(len(ids))) and "one colour per token id" in view
    with pytest.raises(gr.Error, match="colour by"):
        pg.show_tokens(None, "x", "size")


# --- tokenizer tab ------------------------------------------------------------------------------------------


def test_tokenize(pg):
    text = "First Citizen:\nWe are 🍞 poor."
    ids, tokens, chunks, counts = pg.tokenize(text)
    ids = json.loads(ids)
    assert pg.tokenizer.decode(ids) == text
    assert re.findall(r'<b data-i="\d+">(\d+)</b>', tokens) == [str(i) for i in ids]  # every id, in order
    assert "".join(c for c, _ in chunks["value"]).replace("·", " ").replace("↵", "") == text
    assert f"**{len(ids)}** tokens" in counts and "**29** characters · **32** bytes" in counts
    with pytest.raises(gr.Error, match="the text is 10,001 characters long; the limit is 10,000"):
        pg.tokenize("x" * 10_001)


def test_layer_predictions_handler(pg):
    rows = pg.layer_predictions("the king shall")
    assert len(rows) == pg.config.n_layer and rows[-1][0].endswith("(the model's prediction)")
    assert all(len(r) == 4 and r[1].endswith("%") for r in rows)
    with pytest.raises(gr.Error, match="type a short text"):
        pg.layer_predictions("")


def test_merge_tree_handlers(pg):
    text = "the king"
    t = pg.tokenizer.encode(text)[0]
    assert pg.select_token(text, select(0)) == (t, pg.merge_tree(t))
    assert pg.merge_tree(float(t)).startswith(f"{t}  ")
    for bad in (-1, pg.tokenizer.vocab_size, 1.5, None):  # said in the tree's place, not raised
        said = pg.merge_tree(bad)
        assert said.startswith("(token id must be a whole number from 0 to 299") and said.endswith(")"), said
    with pytest.raises(gr.Error, match="choose one of the tokens"):
        pg.select_token(text, select(99))
    # the id box is text: empty says what to do, digits are an id, anything else gets the same line
    assert pg.merge_tree("") == "(type a token id)" and pg.merge_tree(f" {t} ") == pg.merge_tree(t)
    assert pg.merge_tree("abc").startswith("(token id must be a whole number") and "-1" in pg.merge_tree("-1")
    row = gr.SelectData(None, {"index": [2, 1], "value": "x", "row_value": [t, "x", 1, "merge"]})
    assert pg.vocab_tree(row) == (t, pg.merge_tree(t))  # a vocabulary row clicked: its id and its tree


def test_search_vocab_handler(pg):
    rows, shown = pg.search_vocab("")
    assert len(rows) == 200 and shown == "200 of 300 tokens (longest first)"
    rows, shown = pg.search_vocab("th")
    assert rows and all("th" in r[1] for r in rows) and "matching" in shown
    with pytest.raises(gr.Error, match="the search is 101 characters long; the limit is 100"):
        pg.search_vocab("k" * 101)


def test_attention_on_the_last_generation(pg):
    with pytest.raises(gr.Error, match="generate some text first"):
        pg.last_generation(None)
    *_, (text, _, run) = pg.generate("KING:", **GEN)
    last = pg.last_generation(run)
    assert text.endswith(last) and len(pg.tokenizer.encode(last)) <= 32  # as many tokens as the view shows
    out = pg.attention(last, 0, "1")
    assert re.findall(r'data-head="(\w+)"', out) == ["0", "1", "mean"] and "head 1" in out


def test_attention_handler(pg):
    out = pg.attention("<b>the king</b>", 0, "mean")
    assert "<table" in out and "&lt;" in out and "<b" not in out and "</b" not in out and "mean over heads" in out
    assert "head 1" in pg.attention("the king", 0, "1")
    assert "the first 32 of its" in pg.attention("the king " * 20, 0, "0")
    with pytest.raises(gr.Error, match="layer must be a whole number from 0 to 0"):
        pg.attention("the king", 1, "mean")
    with pytest.raises(gr.Error, match="head must be 'mean' or a number from 0 to 1"):
        pg.attention("the king", 0, "2")
    with pytest.raises(gr.Error, match="type a short text"):
        pg.attention("", 0, "mean")


def test_a_character_level_model_works_too():
    import torch

    from llm.model import GPT, ModelConfig
    from llm.tokenizer import CharTokenizer

    tok = CharTokenizer.train(make_text(50))
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    pg = app.Playground(model, tok, {}, stream_interval=0.0)
    assert "val loss" not in pg.header()
    ids, tokens, chunks, counts = pg.tokenize("the king")
    assert tok.decode(json.loads(ids)) == "the king" and len(chunks["value"]) == 1  # no pre-split
    assert "no merges" in pg.merge_tree(json.loads(ids)[0])
    *_, (text, stats, run) = pg.generate("the", **{**GEN, "max_new_tokens": 20})
    view, _, _ = pg.show_tokens(run, "the", "probability")
    assert drawn(view) == list(range(len(run.ids)))
    assert "<table" in pg.attention("the king", 0, "mean")
    demo = app.build_app(model, tok, {})  # no metrics, no training info: the model tab still builds
    assert demo.config["title"] == "scratchgpt studio"


# --- ZeroGPU ------------------------------------------------------------------------------------------------


def fake_zero_gpu(task):
    """spaces.GPU on ZeroGPU without a GPU: the task runs as given, its arguments and results cross a pickle
    boundary (a forked worker and two queues there)."""
    def cross(x):
        return pickle.loads(pickle.dumps(x))

    if inspect.isgeneratorfunction(task):
        @functools.wraps(task)
        def handler(*args, **kwargs):
            args, kwargs = cross((args, kwargs))
            for result in task(*args, **kwargs):
                yield cross(result)
    else:
        @functools.wraps(task)
        def handler(*args, **kwargs):
            args, kwargs = cross((args, kwargs))
            return cross(task(*args, **kwargs))
    return handler


def test_gpu_handlers_survive_zero_gpu_pickling(pg, loaded, monkeypatch):
    *_, (text, stats, run) = fake_zero_gpu(pg.generate)("KING:", **GEN)
    assert "**30 tokens**" in stats
    view, _, run = fake_zero_gpu(pg.show_tokens)(run, "KING:", "probability")
    assert run.scored and drawn(view) == list(range(len(run.ids)))
    assert "<table" in fake_zero_gpu(pg.attention)("the king", 0, "mean")
    monkeypatch.setattr(app, "gpu", fake_zero_gpu)
    demo = app.build_app(*loaded)
    generate = next(d for d in demo.config["dependencies"] if d["api_name"] == "generate")
    assert generate["types"]["generator"]  # Gradio still streams it


# --- the launched app ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(loaded):
    demo = app.build_app(*loaded, stream_interval=0.0)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    from gradio_client import Client

    try:
        yield demo, Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def test_the_tabs_hold_only_tabs(served):
    """A component made among the Tabs but outside a Tab (a gr.State too) shows up as an extra, broken tab."""
    demo, _ = served
    types = {c["id"]: c["type"] for c in demo.config["components"]}

    def tabs_children(node):
        if types.get(node["id"]) == "tabs":
            yield [types[c["id"]] for c in node.get("children", [])]
        for child in node.get("children", []):
            yield from tabs_children(child)

    assert list(tabs_children(demo.config["layout"])) == [["tabitem"] * 6]  # Generate, Tokens, Tokenizer, Model, Compare, Train


def test_every_event_is_named_and_the_queue_is_bounded(served):
    demo, client = served
    deps = [d for d in demo.config["dependencies"] if not d["types"]["cancel"]]  # gradio's own cancel helper
    assert all(d["api_name"] and d["api_name"] != "unnamed" for d in deps)
    public = {d["api_name"] for d in deps if d["api_visibility"] == "public"}
    assert {"generate", "tokenize"} <= public
    assert demo._queue.max_size == app.Limits().queue_size
    assert {"/generate", "/tokenize"} <= set(client.view_api(print_info=False, return_format="dict")
                                             ["named_endpoints"])


def test_api_generate_streams(served):
    _, client = served
    job = client.submit("KING:", 40, 0.8, 0, 1.0, 0.0, 1.0, 3, "", api_name="/generate")
    updates = list(job)
    assert len(updates) >= 3
    text, stats = job.outputs()[-1]
    assert text.startswith("KING:") and len(text) > len("KING:") and "**40 tokens**" in stats


def test_api_generate_takes_settings_by_name(served):
    """The API's parameters are named after the settings (Gradio reads them off the handler's signature)."""
    _, client = served
    params = [p["parameter_name"] for p in client.view_api(print_info=False, return_format="dict")
              ["named_endpoints"]["/generate"]["parameters"]]
    assert params == ["prompt", *app.SETTINGS]
    text, stats = client.predict("KING:", max_new_tokens=4, seed=2, api_name="/generate")
    assert "**4 tokens**" in stats
    with pytest.raises(TypeError, match="temprature"):
        next(app.Playground.generate(None, "KING:", temprature=0.5))


def test_api_attention_takes_the_choices_it_advertises(served):
    _, client = served
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/attention"]["parameters"]
    layer = next(p for p in params if p["parameter_name"] == "layer")
    assert layer["python_type"]["type"] == "Literal['0']"
    assert "<table" in client.predict("the king", "0", "mean", api_name="/attention")


def test_api_nan_for_a_whole_number_says_what_is_wrong(served):
    """JSON's NaN (gradio_client will not send it; a raw request can) gets the app's own words, not an empty error."""
    import httpx

    demo, client = served
    for name, data in (("generate", '["KING:", NaN, 0.8, 0, 1.0, 0.0, 1.0, 1, ""]'), ("merge_tree", "[NaN]")):
        r = httpx.post(f"{client.src}gradio_api/call/{name}", content=f'{{"data": {data}}}',
                       headers={"content-type": "application/json"})
        events = httpx.get(f"{client.src}gradio_api/call/{name}/{r.json()['event_id']}", timeout=30).text
        last = json.loads(events.strip().splitlines()[-1].removeprefix("data: "))
        said = last["error"] if name == "generate" else last[0]  # the merge tree box says it in the tree's place
        assert said and "whole number" in said and "nan" in said, (name, events)


def test_api_tokenize_round_trips(served, pg):
    _, client = served
    text = "What authority surfeits on 🍞?\n"
    ids = json.loads(client.predict(text, api_name="/tokenize")[0])
    assert pg.tokenizer.decode(ids) == text


def test_api_bad_requests_get_errors_and_the_app_still_serves(served):
    from gradio_client.exceptions import AppError

    _, client = served
    bad = [(("KING:", 10**6, 0.8, 0, 1.0, 0.0, 1.0, 1, ""), "maximum"),  # the slider's own bound check
           (("KING:", 2.5, 0.8, 0, 1.0, 0.0, 1.0, 1, "a,b,c,d,e,f,g,h,i"), "at most 8 stop strings"),
           (("x" * 2001, 5, 0.8, 0, 1.0, 0.0, 1.0, 1, ""), "the limit is 2,000 characters")]
    for args, words in bad:
        with pytest.raises(AppError, match=words):
            client.predict(*args, api_name="/generate")
    with pytest.raises(AppError, match="limit is 10,000"):
        client.predict("x" * 10_001, api_name="/tokenize")
    with pytest.raises(AppError, match="not in the list of choices"):  # the dropdown's own check
        client.predict("the king", 3, "mean", api_name="/attention")
    t = time.perf_counter()
    text, stats = client.predict("KING:", 5, 0.8, 0, 1.0, 0.0, 1.0, 1, "", api_name="/generate")
    assert "**5 tokens**" in stats and time.perf_counter() - t < 30
