"""llm/tokenview.py: the token views as HTML, on a throwaway tokenizer (ASCII text: any other character is made
of byte tokens)."""

import base64
import colorsys
import re
import struct
import zlib

import pytest
import torch

from conftest import make_text
from llm import attention, tokenview
from llm.sample import Step
from llm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    # paragraphs ending in "." make a token of "." and two newlines
    text = "\n\n".join(make_text(300).replace(",", ".").splitlines())
    return Tokenizer.train(text, vocab_size=320, verbose=False)


def drawn(view: str) -> list[int]:
    found = re.findall(r'<span class="t" data-i="(\d+)"(?: data-n="(\d+)")?', view)
    return [int(i) + k for i, n in found for k in range(int(n or 1))]


def _hue(color: str) -> float:
    r, g, b = (int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return colorsys.rgb_to_hls(r, g, b)[0]


def test_prob_color_goes_from_red_to_green():
    hues = [_hue(tokenview.prob_color(p)) for p in (1e-6, 1e-3, 0.1, 1.0)]
    assert hues == sorted(hues)
    assert hues[0] < 0.02 and abs(hues[-1] - 1 / 3) < 0.02
    assert tokenview.prob_color(None) == tokenview.NO_COLOR


def test_id_colors_are_stable_and_differ_between_neighbours():
    assert tokenview.id_color(42) == tokenview.id_color(42)
    assert len({tokenview.id_color(i) for i in range(20)}) == 20


@pytest.mark.parametrize("p, label", [(None, "none (the first token has no context)"), (1.0, "100%"),
                                      (0.4213, "42%"), (0.0042, "0.4%"), (1e-5, "<0.1%")])
def test_prob_label(p, label):
    assert tokenview.prob_label(p) == label


# --- pieces -------------------------------------------------------------------------------------------------


def test_byte_tokens_of_one_character_are_one_piece(tok):
    ids = tok.encode("a é🍞 b")
    assert ids.count(0xC3) == 1 and 0xF0 in ids  # é and 🍞 are byte tokens in this vocabulary
    ps = tokenview.pieces(tok, ids)
    assert "".join(p.text for p in ps) == "a·é🍞·b" and {"é", "🍞"} <= {p.text for p in ps}
    e, bread = next(p for p in ps if "é" in p.text), next(p for p in ps if "🍞" in p.text)
    assert len(e.ids) == 2 and len(bread.ids) == 4
    assert [i for p in ps for i in range(p.first, p.first + len(p.ids))] == list(range(len(ids)))


def test_bytes_that_make_no_character_are_drawn_one_by_one(tok):
    # a lone continuation byte, a character cut short by the end, and one cut short by another character
    for ids, shown in (([0x99, ord("a")], ["<0x99>", "a"]), ([ord("a"), 0xE2, 0x80], ["a", "<0xE2>", "<0x80>"]),
                       ([0xE2, ord("a")], ["<0xE2>", "a"]), ([0xC3, tok.eot_id], ["<0xC3>", "<|endoftext|>"])):
        assert [p.text for p in tokenview.pieces(tok, ids)] == shown


# --- the views ----------------------------------------------------------------------------------------------


def test_a_token_with_two_line_breaks_is_one_box_then_its_breaks(tok):
    ids = tok.encode("The king.\n\nSweet love.\n\nGood")
    two = next(i for i, t in enumerate(ids) if tok.decode([t]).count("\n") == 2)
    view = tokenview.tokens_html(tok, ids, color_by="id")
    boxes = re.findall(r'<span class="t" data-i="(\d+)"[^>]*>(.*?)</span>(\n*)(?=<span class="t"|</div>)', view)
    assert [int(i) for i, _, _ in boxes] == list(range(len(ids)))
    assert "\n" not in boxes[two][1] and boxes[two][1].count("↵") == 2 and boxes[two][2] == "\n\n"


def test_tokens_html_colours_titles_and_marks(tok):
    ids = tok.encode("the king shall")
    steps = [None] + [Step(0.5, [(i, 0.5)], 1.0) for i in ids[1:]]
    view = tokenview.tokens_html(tok, ids, steps, "probability", n_prompt=2)
    assert drawn(view) == list(range(len(ids)))
    assert view.count(f"background:{tokenview.prob_color(0.5)}") == len(ids) - 1
    assert f"background:{tokenview.NO_COLOR}" in view and "probability 50%" in view and "token 2 (generated)" in view
    assert "log scale" in view and "a line break" in view  # the legend
    by_id = tokenview.tokens_html(tok, ids, color_by="id", show_ids=True)
    assert re.findall(r'<b data-i="(\d+)">(\d+)</b>', by_id) == [(str(i), str(t)) for i, t in enumerate(ids)]
    assert "legend" not in by_id
    with pytest.raises(ValueError, match="color_by"):
        tokenview.tokens_html(tok, ids, color_by="rainbow")
    with pytest.raises(ValueError, match="steps"):
        tokenview.tokens_html(tok, ids, steps[:1])
    assert "nothing here" in tokenview.tokens_html(tok, [], empty="nothing here")


def test_user_text_never_becomes_markup(tok):
    ids = tok.encode('<b>"x"</b> & <script>')
    view = tokenview.tokens_html(tok, ids, color_by="id", show_ids=True)
    assert "<b>" not in view and "<script" not in view and "&lt;" in view
    titles = re.findall(r'title="([^"]*)"', view)
    assert len(titles) >= len(tokenview.pieces(tok, ids)) and all("<" not in t for t in titles)


def test_alternatives_html_marks_the_chosen_token_with_bars(tok):
    step = Step(0.1, [(ord("a"), 0.6), (ord("b"), 0.3)], 0.9)
    table = tokenview.alternatives_html(tok, step, ord("b"))
    assert table.count("<tr") == 3 and table.count("◀ this token") == 1 and 'class="chosen"' in table
    assert "width:120.0px" in table and "width:60.0px" in table and "60.00%" in table  # in proportion
    table = tokenview.alternatives_html(tok, step, ord("z"))  # not among the top ones: added at the end
    rows = table.split("<tr")
    assert len(rows) == 5 and "…" in rows[-1] and "<code>z</code> ◀ this token" in rows[-1] and "10.00%" in rows[-1]


# --- attention: every head at once --------------------------------------------------------------------------


def _png_size(uri: str) -> tuple[int, int, bytes]:
    png = base64.b64decode(uri.split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])
    n = struct.unpack(">I", png[33:37])[0]
    return w, h, zlib.decompress(png[41:41 + n])


def test_heads_html_draws_every_head_and_the_mean():
    att = torch.tensor([[[1.0, 0.0], [0.25, 0.75]], [[1.0, 0.0], [1.0, 0.0]]])  # (H=2, T=2, T=2)
    out = attention.heads_html(att, "1")
    assert re.findall(r'data-head="(\w+)"', out) == ["0", "1", "mean"] and out.count("outline:3px") == 1
    uris = re.findall(r'src="(data:image/png;base64,[^"]+)"', out)
    w, h, raw = _png_size(uris[0])
    assert (w, h) == (2, 2) and len(raw) == 2 * (1 + 3 * 2)
    row1 = raw[7:]  # filter byte, then (0.25 of blue) and (0.75 of blue)
    assert row1[1:4] == bytes(attention._rgb(0.25)) and row1[4:7] == bytes(attention._rgb(0.75))
    assert raw[4:7] == bytes(attention.GREY)  # query 0 cannot see key 1
