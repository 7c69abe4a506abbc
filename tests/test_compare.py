"""The Compare tab (compare.py): two models on one prompt and seed, streamed together; both validation curves in
bits per byte; both tokenizers on one text; a public studio's rule on whose runs may be opened."""

import math
import re

import gradio as gr
import pytest

import app
from compare import Compare, bits_per_byte
from playground import BUNDLED_KEY, FIRST, Models, Playground, load_playground
from test_app import tiny_run


@pytest.fixture(scope="module")
def cmp(tmp_path_factory) -> Compare:
    first = Playground(*load_playground(str(tiny_run(tmp_path_factory))), stream_interval=0.0)
    return Compare(Models(first, tmp_path_factory.mktemp("runs")), stream_interval=0.0)


def test_both_models_stream_together_with_their_speed_and_log_probability(cmp):
    updates = list(cmp.generate(FIRST, BUNDLED_KEY, "KING:", 40, 3))
    assert len(updates) > 2  # streamed, not only the end
    text_a, stats_a, text_b, stats_b = updates[-1]
    assert text_a.startswith("KING:") and text_b.startswith("KING:") and text_a != text_b
    for stats in (stats_a, stats_b):
        assert "tokens/s" in stats and "mean log-probability" in stats and "bits per byte" in stats
        assert "generating" not in stats
    again = list(cmp.generate(FIRST, BUNDLED_KEY, "KING:", 40, 3))[-1]
    assert (again[0], again[2]) == (text_a, text_b)  # the same seed gives the same texts
    same = list(cmp.generate(FIRST, FIRST, "KING:", 20, 3))[-1]
    assert same[0] == same[2]  # one model twice: one text (the two generators keep their own random streams)


def test_the_mean_log_probability_is_the_models_own(cmp):
    *_, (_, stats_a, _, _) = cmp.generate(FIRST, FIRST, "KING:", 30, 1)
    nats = float(re.search(r"mean log-probability \*\*(-?[\d.]+)\*\*", stats_a)[1])
    assert -math.log(cmp.models.first.vocab_size) - 3 < nats < 0
    assert bits_per_byte([math.log(0.5)] * 4, "abcd") == pytest.approx(1.0)  # 4 tokens of 1 bit over 4 bytes
    assert bits_per_byte([], "") is None


def test_curves_and_tokenizers_of_both(cmp):
    svg = cmp.curves(FIRST, BUNDLED_KEY)
    assert svg.count("<polyline") == 2 and "bits per byte" in svg and "A: " in svg and "B: bundled model" in svg
    html_a, counts_a, html_b, counts_b = cmp.split(FIRST, BUNDLED_KEY, "the king <b>speaks</b>")
    assert 'data-i="0"' in html_a and 'data-i="0"' in html_b and "<b>speaks" not in html_a + html_b
    assert "**22** characters" in counts_a and "**22** characters" in counts_b
    with pytest.raises(gr.Error, match="the run nope is gone"):
        cmp.curves(FIRST, "run/nope")
    with pytest.raises(gr.Error, match="the prompt is 2,001 characters long"):
        next(cmp.generate(FIRST, FIRST, "x" * 2001))
    with pytest.raises(gr.Error, match="max new tokens"):
        next(cmp.generate(FIRST, FIRST, "KING:", 10_000))


def test_a_visitor_compares_only_models_they_may_open(cmp):
    strict = Compare(cmp.models, lambda key, visitor: key == FIRST or visitor == "me" * 10, stream_interval=0.0)
    with pytest.raises(gr.Error, match="no model 'bundled'"):
        strict.curves(FIRST, BUNDLED_KEY, visitor="someone")
    assert strict.curves(FIRST, BUNDLED_KEY, visitor="me" * 10).count("<polyline") == 2


def test_the_page_has_a_compare_tab(tmp_path_factory):
    demo = app.build_app(*load_playground(str(tiny_run(tmp_path_factory))))
    names = {d["api_name"] for d in demo.config["dependencies"]}
    assert {"compare", "compare_tokenizers"} <= names
