import http.server
import threading
from functools import partial

import numpy as np
import pytest
import torch

from llm import data
from llm.data import DataError, get_batch, load_split, prepare, read_text, resolve_corpus, write_tokens
from llm.tokenizer import CharTokenizer, Tokenizer


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over a folder, counting requests (the only 'network' tests use)."""
    root = tmp_path / "www"
    root.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, hits
    httpd.shutdown()
    httpd.server_close()


def test_url_downloaded_once(server, tmp_path):
    base, root, hits = server
    (root / "input.txt").write_text("to be or not to be\n")
    cache = tmp_path / "cache"
    p1 = resolve_corpus(f"{base}/input.txt", cache=cache)
    p2 = resolve_corpus(f"{base}/input.txt", cache=cache)
    assert p1 == p2 and p1.read_text() == "to be or not to be\n"
    assert len(hits) == 1
    assert not list(cache.glob("*.part*"))


def test_builtin_name_uses_cache(server, tmp_path, monkeypatch):
    base, root, hits = server
    (root / "ts.txt").write_text("First Citizen:\n")
    monkeypatch.setitem(data.BUILTIN_CORPORA, "tiny_shakespeare", f"{base}/ts.txt")
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "c"))
    path = resolve_corpus("tiny_shakespeare")
    assert path.read_text() == "First Citizen:\n" and path.name.endswith("tiny_shakespeare")
    resolve_corpus("tiny_shakespeare")
    assert len(hits) == 1


def test_download_failure_is_one_line(server, tmp_path):
    base, _, _ = server
    with pytest.raises(DataError, match="could not download"):
        resolve_corpus(f"{base}/missing.txt", cache=tmp_path / "c")
    assert not list((tmp_path / "c").glob("*"))


@pytest.mark.parametrize("content,match", [
    (b"", "empty"), (b"  \n\t ", "only whitespace"), (b"abc\xff\xfedef", "offset 3"), (b"ab\x00\x01\x02", "binary"),
])
def test_bad_text(tmp_path, content, match):
    p = tmp_path / "f.txt"
    p.write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_text(p)


def test_replace_encoding_errors(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"abc\xffdef")
    assert read_text(p, "replace") == "abc\ufffddef"


def test_missing_and_directory(tmp_path):
    with pytest.raises(DataError, match="not found"):
        resolve_corpus(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="directory"):
        resolve_corpus(str(tmp_path))


def test_prepare_split_and_reuse(tmp_path):
    text = "hello world, this is a small corpus. " * 50
    tok = CharTokenizer.train(text)
    info = prepare([text], tok, tmp_path, val_frac=0.1)
    train, val = load_split(tmp_path / "train.bin"), load_split(tmp_path / "val.bin")
    assert len(train) == info["train_tokens"] and len(val) == info["val_tokens"]
    assert tok.decode(list(train) + list(val)) == text  # the split is a cut of one token stream
    assert info["val_bytes"] == len(tok.decode_bytes(list(val)))
    mtime = (tmp_path / "train.bin").stat().st_mtime_ns
    assert prepare([text], tok, tmp_path, val_frac=0.1) == info
    assert (tmp_path / "train.bin").stat().st_mtime_ns == mtime  # reused, not rewritten
    info2 = prepare([text + "more"], tok, tmp_path, val_frac=0.1)  # corpus changed: rebuilt
    assert info2["key"] != info["key"]
    assert len(load_split(tmp_path / "train.bin")) + len(load_split(tmp_path / "val.bin")) == len(text) + 4


def test_documents_joined_with_eot(tmp_path):
    tok = Tokenizer.train("aaa bbb ccc " * 20, 260)
    prepare(["aaa", "bbb"], tok, tmp_path, val_frac=0.2, min_tokens=1)
    ids = list(load_split(tmp_path / "train.bin")) + list(load_split(tmp_path / "val.bin"))
    assert ids.count(tok.eot_id) == 1


def test_split_too_short_writes_nothing(tmp_path):
    tok = CharTokenizer.train("hello world")
    with pytest.raises(DataError, match="block_size"):
        prepare(["hello world"], tok, tmp_path / "out", val_frac=0.1, min_tokens=65)
    assert not (tmp_path / "out").exists()


def test_uint32_tokens_and_header(tmp_path):
    ids = np.array([0, 70000, 2**32 - 1], dtype=np.uint32)
    write_tokens(tmp_path / "t.bin", ids)
    assert load_split(tmp_path / "t.bin").tolist() == ids.tolist()
    (tmp_path / "bad.bin").write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match="not a scratchgpt token file"):
        load_split(tmp_path / "bad.bin")
    raw = (tmp_path / "t.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(raw[:-2])
    with pytest.raises(DataError, match="truncated"):
        load_split(tmp_path / "cut.bin")


def test_get_batch_is_driven_by_its_generator():
    data_ = np.arange(1000, dtype=np.uint16)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x1, y1 = get_batch(data_, 16, 4, g1)
    torch.manual_seed(99)  # global RNG must not matter
    x2, y2 = get_batch(data_, 16, 4, g2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (4, 16) and x1.dtype == torch.int64
    assert torch.equal(x1[:, 1:], y1[:, :-1]) and torch.equal(y1, x1 + 1)
