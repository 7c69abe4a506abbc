"""Tests for llm/tokenizer.py: round trips, exact bytes, special-token safety, training, files, bad input.
Hermetic: every tokenizer is trained here on text made here; files only under tmp_path."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from llm.bpe import (GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, count_chunks, cut_stream, cut_text, get_stats,
                     learn_merges, merge, read_pieces, render_token)
from llm.tokenizer import EOT, CharTokenizer, Tokenizer, load_tokenizer

WORDS = ["the", "The", "and", "thee", "thou", "hath", "king", "queen", "don't", "I'll", "we've", "ROMEO", "1234",
         "3.14", "naïve", "café", "日本語", "中文", "שלום", "مرحبا", "e\u0301", "👍", "👩\u200d👩\u200d👧", "<|", "|>", "\t"]
PUNCT = [" ", " ", " ", " ", ", ", ". ", "!\n", "?\n\n", ":\n", ";  ", "\r\n", "  \n", " --- ", "'s "]
ODD = ["", "\x00", "\x00\x01\x02\x1f\x7f", "\r\n", "a\r\nb\r\n\r\n", "\n\n\n", " ", "   x", "x   ",
       "日本語のテキストです", "中文字符", "שלום עולם", "مرحبا بالعالم", "e\u0301 a\u0308 n\u0303",
       "👩\u200d👩\u200d👧\u200d👦", "👍🏽", "\U0010ffff", "\ufeffBOM", "\u2028\u2029", "\ufffd",
       "a" * 10_000, " " * 10_000, "\n" * 10_000, "'s" * 10_000, "<|endoftext|>", "<|endoftext|" * 3]


SYLLABLES = ["th", "e", "an", "or", "st", "ing", "qu", "ee", "k", "ro", "me", "o", "wh", "ere", "fa", "ir", "é", "ü",
             "ka", "ta", "na", "ni", "ya", "日", "本", "ß", "ch", "ll", "y", "s"]


def make_corpus(n_words: int = 8000, seed: int = 0) -> str:
    """Made-up text with a Zipf-like word distribution, numbers, punctuation, CJK, emoji and odd whitespace."""
    rng = random.Random(seed)
    lexicon = WORDS + ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(600)]
    lexicon += [w.capitalize() for w in lexicon[:80]] + [str(rng.randint(0, 99999)) for _ in range(20)]
    weights = [1 / (r + 1) for r in range(len(lexicon))]
    return "".join(w + rng.choice(PUNCT) for w in rng.choices(lexicon, weights, k=n_words))


CORPUS = make_corpus()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, 256 + 300 + 2, special_tokens=(EOT, "<|pad|>"), verbose=False)


@pytest.fixture(scope="module")
def tok2() -> Tokenizer:
    return Tokenizer.train(CORPUS, 256 + 200 + 1, pattern=GPT2_SPLIT_PATTERN, verbose=False)


@pytest.fixture(scope="module")
def char_tok() -> CharTokenizer:
    return CharTokenizer.train(CORPUS)


corpus_like = st.lists(st.one_of(st.sampled_from(WORDS + PUNCT), st.text(max_size=4)), max_size=30).map("".join)


# ---------------------------------------------------------------------------------------------- round trips

@settings(max_examples=2000, deadline=None)
@given(st.text())
def test_round_trip_any_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=700, deadline=None)
@given(corpus_like)
def test_round_trip_corpus_like(tok, tok2, text):
    for t in (tok, tok2):
        ids = t.encode(text)
        assert t.decode(ids) == text
        assert t.decode_bytes(ids) == text.encode("utf-8")


@pytest.mark.parametrize("text", ODD, ids=lambda s: repr(s[:12]))
def test_round_trip_odd_strings(tok, tok2, char_tok, text):
    for t in (tok, tok2):
        assert t.decode(t.encode(text)) == text
        assert "".join(t.split(text)) == text
    if all(c in char_tok.chars for c in text):
        assert char_tok.decode(char_tok.encode(text)) == text


def test_decode_bytes_exact_for_every_id(tok):
    expected = [bytes([i]) for i in range(256)]
    for a, b in tok.merges:  # rebuild every token from the merges, independently of the class
        expected.append(expected[a] + expected[b])
    expected += [s.encode() for s in tok.special_tokens]
    assert tok.vocab_size == len(expected)
    for i, b in enumerate(expected):
        assert tok.decode_bytes([i]) == tok.token_bytes(i) == b
    assert tok.decode_bytes(range(tok.vocab_size)) == b"".join(expected)


def bpe_reference(b: bytes, merges: dict) -> list[int]:
    """Textbook BPE on one chunk: merge every occurrence of the lowest-ranked pair present, repeat."""
    ids = list(b)
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            return ids
        ids = merge(ids, pair, merges[pair])
    return ids


@settings(max_examples=500, deadline=None)
@given(st.one_of(corpus_like.map(str.encode), st.binary(max_size=300),
                 st.lists(st.sampled_from([b"a", b" ", b"\n", b"th", b"e"]), max_size=400).map(b"".join)))
def test_chunk_bpe_matches_reference(tok, b):
    expected = bpe_reference(b, tok.merges)
    assert tok._encode_chunk(b) == expected  # short path, or the whole-token shortcut
    assert tok._encode_long(b) == expected  # the heap path used above 64 bytes


def test_token_bytes_reencode(tok, tok2):
    for t in (tok, tok2):
        checked = 0
        for i in range(256 + len(t.merges)):
            b = t.token_bytes(i)
            assert bpe_reference(b, t.merges) == [i]  # what the whole-token shortcut in encode relies on
            try:
                s = b.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(t.split(s)) == 1:  # a token whose text pre-splits into two chunks cannot come back whole
                assert t.encode(s) == [i], (i, s)
                checked += 1
        assert checked > len(t.merges) // 2
    for s, i in tok.special_tokens.items():
        assert tok.encode(s, allowed_special="all") == [i]


# ---------------------------------------------------------------------------------------------- special tokens

@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(corpus_like, st.sampled_from([EOT, "<|pad|>"])), max_size=12))
def test_special_token_injection(tok, parts):
    text = "".join(parts)
    ids = tok.encode(text)
    assert not set(ids) & set(tok.special_tokens.values())
    assert tok.decode(ids) == text
    ids_all = tok.encode(text, allowed_special="all")
    assert tok.decode(ids_all) == text
    assert ids_all.count(tok.eot_id) == text.count(EOT)
    only_eot = tok.encode(text, allowed_special={EOT})
    assert tok.special_tokens["<|pad|>"] not in only_eot and only_eot.count(tok.eot_id) == text.count(EOT)


def test_special_tokens_ids_and_errors(tok):
    assert tok.special_tokens == {EOT: 556, "<|pad|>": 557} and tok.eot_id == 556 and tok.vocab_size == 558
    assert tok.encode(f"a{EOT}b", allowed_special=EOT) == tok.encode("a") + [556] + tok.encode("b")
    with pytest.raises(ValueError, match="<|nope|>"):
        tok.encode("x", allowed_special={"<|nope|>"})
    assert Tokenizer.train("ab ab", 258, special_tokens=(), verbose=False).eot_id is None
    with pytest.raises(ValueError, match="distinct"):
        Tokenizer.train("ab", 300, special_tokens=("<a>", "<a>"))


# ---------------------------------------------------------------------------------------------- training

def test_known_answer_wikipedia():
    t = Tokenizer.train("aaabdaaabac", 256 + 3, special_tokens=(), verbose=False)
    assert t.merges == {(97, 97): 256, (97, 98): 257, (256, 257): 258}  # tie (256,97)/(97,98): smallest pair
    assert t.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert t.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"


def naive_merges(text: str, n_merges: int) -> dict:
    """Reference trainer: recount every pair before every merge (minbpe style), same tie-break."""
    words = [(list(c.encode()), n) for c, n in count_chunks(text).items()]
    merges = {}
    for idx in range(256, 256 + n_merges):
        stats = {}
        for w, n in words:
            get_stats(w, stats, n)
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        merges[pair] = idx
        words = [(merge(w, pair, idx), n) for w, n in words]
    return merges


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="aab c\n'1.é", max_size=200), st.integers(0, 40))
def test_incremental_training_matches_naive(text, n_merges):
    assert learn_merges(count_chunks(text), n_merges) == naive_merges(text, n_merges)


def test_training_matches_naive_on_corpus():
    text = CORPUS[:5000]
    assert learn_merges(count_chunks(text), 150) == naive_merges(text, 150)


def test_determinism_across_runs_and_hash_seeds(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    Tokenizer.train(CORPUS, 400, verbose=False).save(a)
    Tokenizer.train(CORPUS, 400, verbose=False).save(b)
    assert a.read_bytes() == b.read_bytes()
    # a fresh interpreter with another hash seed writes the same bytes
    module = Path(__file__).resolve().parent.parent / "llm" / "tokenizer.py"
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8", newline="")
    script = ("import importlib.util, sys, hashlib; s = importlib.util.spec_from_file_location('t', sys.argv[1]); "
              "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
              "text = open(sys.argv[2], encoding='utf-8', newline='').read(); "
              "m.Tokenizer.train(text, 400, verbose=False).save(sys.argv[3])")
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}.json"
        subprocess.run([sys.executable, "-c", script, str(module), str(tmp_path / "corpus.txt"), str(out)],
                       check=True, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"})
        assert out.read_bytes() == a.read_bytes()


def test_iterator_training_equals_string_training(tmp_path):
    whole = Tokenizer.train(CORPUS, 400, verbose=False)
    pieces = Tokenizer.train(iter(cut_text(CORPUS, 13)), 400, verbose=False)
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8", newline="")
    from_file = Tokenizer.train(read_pieces(path, piece_chars=1000), 400, verbose=False)
    assert whole.to_dict() == pieces.to_dict() == from_file.to_dict()
    assert "".join(read_pieces(path, piece_chars=1000)) == CORPUS


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("ab1 \n\r\t.'é日") + ["'s", "\n\n", " \n"]), max_size=200).map("".join),
       st.integers(1, 8))
def test_cut_text_keeps_the_split(tok, tok2, text, n_parts):
    parts = cut_text(text, n_parts)
    assert "".join(parts) == text
    for t in (tok, tok2):
        assert [c for p in parts for c in t.split(p)] == t.split(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("ab1 \r\t.'é日") + ["'s", "\r\n", " a", "b "]), max_size=200).map("".join),
       st.integers(1, 9), st.integers(2, 12))
def test_cut_stream_without_newlines_keeps_the_split(tok, tok2, text, block, max_chars):
    """Text with no safe newline (one line, CRLF line ends) is still cut into bounded pieces, between two
    letters at a space, and the split of the pieces is the split of the whole."""
    parts = list(cut_stream((text[i:i + block] for i in range(0, len(text), block)), max_chars=max_chars))
    assert "".join(parts) == text
    for t in (tok, tok2):
        assert [c for p in parts for c in t.split(p)] == t.split(text)


def test_cut_stream_bounds_a_long_line():
    line = " ".join(["word"] * 10_000)  # 50,000 characters, no newline
    parts = list(cut_stream((line[i:i + 1000] for i in range(0, len(line), 1000)), max_chars=4000))
    assert "".join(parts) == line and max(map(len, parts)) <= 5000 and len(parts) > 10


def test_no_progress_bar_for_short_training(capsys):
    Tokenizer.train(CORPUS[:2000], 300, verbose=True)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------- files

def test_save_load_identity(tok, tok2, char_tok, tmp_path):
    for t in (tok, tok2, char_tok):
        path = tmp_path / f"{t.type}.json"
        t.save(path)
        loaded = load_tokenizer(path)
        assert type(loaded) is type(t) and loaded.to_dict() == t.to_dict()
        assert loaded.encode(CORPUS[:3000]) == t.encode(CORPUS[:3000])
        loaded.save(tmp_path / "again.json")
        assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
        assert type(t).load(path).to_dict() == t.to_dict()
    with pytest.raises(ValueError, match="not 'char'"):
        CharTokenizer.load(tmp_path / "bpe.json")


def test_file_is_readable(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    text = path.read_text(encoding="utf-8")
    d = json.loads(text)
    assert d["type"] == "bpe" and d["version"] == 1 and d["pattern"] == GPT4_SPLIT_PATTERN
    assert d["vocab_size"] == tok.vocab_size and d["special_tokens"] == tok.special_tokens
    assert len(d["merges"]) == 300 and d["vocab"]["32"] == " " and d["vocab"]["10"] == "\\u000a"
    assert d["vocab"]["556"] == EOT
    assert text.count("\n") > 300 + tok.vocab_size  # one merge / token per line
    some_word = next(i for i in range(256, tok.vocab_size) if tok.token_bytes(i) == b" the")
    assert d["vocab"][str(some_word)] == " the"


def test_render_token():
    assert render_token(b"a\nb\x00") == "a\\u000ab\\u0000"
    assert render_token("é日".encode()) == "é日"
    assert render_token(b"\xff\xe6\x97") == "\\xff\\xe6\\x97"  # invalid UTF-8 stays visible byte by byte


@pytest.mark.parametrize("content, match", [
    ("not json", "not a tokenizer file"),
    ('{"type": "wordpiece", "version": 1}', "unknown tokenizer type"),
    ('{"type": "bpe", "version": 99}', "version 99"),
    ('{"type": "bpe", "version": 1, "pattern": "x", "special_tokens": {}, "merges": [[300, 1]]}', "bad merge"),
    ('{"type": "bpe", "version": 1, "pattern": "x", "special_tokens": {}}', "merges"),
    ('{"type": "char", "version": 1, "special_tokens": {}, "chars": ["ab"]}', "single characters"),
])
def test_load_bad_files(tmp_path, content, match):
    (tmp_path / "t.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        load_tokenizer(tmp_path / "t.json")


# ---------------------------------------------------------------------------------------------- bad input

def test_bad_training_input():
    for empty in ("", [], iter(["", ""])):
        with pytest.raises(ValueError, match="empty corpus"):
            Tokenizer.train(empty, 300)
        with pytest.raises(ValueError, match="empty corpus"):
            CharTokenizer.train(empty)
    with pytest.raises(ValueError, match="at least 257"):
        Tokenizer.train("abc", 256)
    assert Tokenizer.train("abc", 257, verbose=False).vocab_size == 257  # bytes + EOT, no merges
    with pytest.raises(ValueError, match="too small"):
        CharTokenizer.train("abc", vocab_size=1)


def test_vocab_size_unreachable_warns_and_records_real_size(tmp_path):
    with pytest.warns(UserWarning, match="ran out of pairs"):
        t = Tokenizer.train("ab ab abc", 1000, verbose=False)
    assert t.vocab_size == 256 + len(t.merges) + 1 < 1000
    t.save(tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["vocab_size"] == t.vocab_size
    with pytest.warns(UserWarning, match="only 3 characters"):
        c = CharTokenizer.train("abcabc", vocab_size=100)
    assert c.vocab_size == 3 + 1 + 1  # a b c, the U+FFFD fallback, EOT


@pytest.mark.parametrize("bad", [-1, 558, 10**9])
def test_ids_out_of_range(tok, char_tok, bad):
    with pytest.raises(ValueError, match=rf"token id {bad}\b"):
        tok.decode([1, 2, bad, 3])
    with pytest.raises(ValueError, match=rf"token id {bad}\b"):
        tok.token_bytes(bad)
    with pytest.raises(ValueError, match=rf"token id {bad}\b"):
        char_tok.decode_bytes([bad])
    assert tok.decode([]) == "" and tok.decode_bytes([]) == b""


def test_invalid_utf8_decodes_with_replacement(tok):
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # half of 日
    assert tok.decode_bytes([0xE6, 0x97]) == b"\xe6\x97"


# ---------------------------------------------------------------------------------------------- surrogates

def test_lone_surrogates_become_replacement_char(tok, char_tok):
    for text in ["a\ud800b", "\udfff", "x\ud83d", "\ud83d\ude00 (a pair of lone surrogates)"]:
        expected = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
        assert tok.decode(tok.encode(text)) == expected
        assert tok.encode(text) == tok.encode(expected)
        assert char_tok.decode(char_tok.encode(text)) == "".join(c if c in char_tok.chars else "\ufffd" for c in expected)
    t = Tokenizer.train("ab\ud800ab\ud800", 261, verbose=False)  # training applies the same policy
    assert t.decode(t.encode("ab\ud800")) == "ab\ufffd"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=5), st.integers(0xD800, 0xDFFF).map(chr)), max_size=10).map("".join))
def test_surrogate_policy_property(tok, text):
    expected = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    assert tok.decode(tok.encode(text)) == expected


# ---------------------------------------------------------------------------------------------- char tokenizer

def test_char_tokenizer(char_tok):
    assert char_tok.type == "char" and char_tok.chars == sorted(char_tok.chars)
    assert "\ufffd" in char_tok.chars and char_tok.eot_id == char_tok.vocab_size - 1
    text = CORPUS[:2000]
    ids = char_tok.encode(text)
    assert len(ids) == len(text) and char_tok.decode(ids) == text
    assert char_tok.decode_bytes(ids) == text.encode()
    assert char_tok.split(text) == [text] and char_tok.split("") == []
    unk = char_tok.chars.index("\ufffd")
    assert char_tok.encode("Zz€") == [unk, unk, unk]  # none of these is in the corpus: the documented fallback
    assert char_tok.decode(char_tok.encode("a€t")) == "a\ufffdt"
    assert char_tok.encode(EOT) != [char_tok.eot_id] and char_tok.encode(EOT, allowed_special="all") == [char_tok.eot_id]


def test_char_tokenizer_vocab_size_keeps_most_frequent():
    c = CharTokenizer.train("aaaabbbcc d", vocab_size=4, special_tokens=())
    assert c.chars == ["a", "b", "c", "\ufffd"] and c.vocab_size == 4  # " " and "d" (1 each) left out
    assert c.encode("abd") == [0, 1, 3]


# ---------------------------------------------------------------------------------------------- batch encoding

def test_encode_batch_equals_encode(tok, char_tok):
    texts = [CORPUS[:20_000], "", ODD[10], CORPUS[5000:9000] + EOT + "tail", "a" * 3000]
    for t in (tok, char_tok):
        expected = [t.encode(x) for x in texts]
        assert t.encode_batch(texts) == expected  # small: stays in this process
        assert t.encode_batch(texts, num_workers=2) == expected  # process pool over slices
        assert t.encode_parallel(texts[0], num_workers=2) == expected[0]
        with_eot = [t.encode(x, allowed_special="all") for x in texts]
        assert t.encode_batch(texts, num_workers=2, allowed_special="all") == with_eot


def test_counting_chunks_is_bounded_and_says_so():
    """Past max_chunks distinct chunks the rarest are let go (memory stays bounded), with a warning; chunks
    frequent from the start keep their exact counts."""
    words = ["".join("abcdefghij"[int(d)] for d in f"{n:04d}") for n in range(2000)]  # aaaa, aaab, ...: one-offs
    pieces = [f"the cat {' '.join(words[50 * i: 50 * i + 50])}\n" for i in range(40)]
    with pytest.warns(UserWarning, match="distinct pre-split chunks"):
        counts = count_chunks(iter(pieces), max_chunks=300)
    assert len(counts) <= 300
    assert counts["the"] == 40 and counts[" cat"] == 40
    assert count_chunks(iter(pieces)) == count_chunks("".join(pieces))  # under the cap: exact, no warning
