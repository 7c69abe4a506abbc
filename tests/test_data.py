import http.server
import threading
from pathlib import Path
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm import corpus as data
from llm.corpus import DataError, open_corpus, read_text, resolve_corpus, stream_text
from llm.data import Epochs, get_batch, load_split, prepare, windows, write_tokens
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
    [p1] = resolve_corpus(f"{base}/input.txt", cache=cache)
    [p2] = resolve_corpus(f"{base}/input.txt", cache=cache)
    assert p1 == p2 and p1.read_text() == "to be or not to be\n"
    assert len(hits) == 1
    assert not list(cache.glob("*.part*"))


def test_builtin_name_uses_cache(server, tmp_path, monkeypatch):
    base, root, hits = server
    (root / "ts.txt").write_text("First Citizen:\n")
    monkeypatch.setitem(data.BUILTIN_CORPORA, "tiny_shakespeare", f"{base}/ts.txt")
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "c"))
    [path] = resolve_corpus("tiny_shakespeare")
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
    with pytest.raises(DataError, match=match):  # read in pieces, the same checks
        list(stream_text(p, piece_chars=2))


def test_a_bad_byte_far_in_is_named_by_its_offset_when_streamed(tmp_path):
    """The offset counts from the file's start across blocks, and a character cut by a block's end is no error."""
    good = "héllo wörld\n" * 1000  # 2-byte characters: blocks of 7 bytes cut many of them
    p = tmp_path / "f.txt"
    p.write_bytes(good.encode() + b"\xff" + b"tail\n")
    with pytest.raises(DataError, match=f"offset {len(good.encode())}"):
        list(stream_text(p, piece_chars=7))
    assert "".join(stream_text(p, "replace", piece_chars=7)) == good + "\ufffdtail\n"


def test_replace_encoding_errors(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"abc\xffdef")
    assert read_text(p, "replace") == "abc\ufffddef"


def test_missing_and_empty_directory(tmp_path):
    with pytest.raises(DataError, match="not found"):
        resolve_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "empty.txt").write_text("")
    with pytest.raises(DataError, match="no text files under"):
        resolve_corpus(str(tmp_path / "d"))
    with pytest.raises(DataError, match="no text files match"):
        resolve_corpus(str(tmp_path / "*.md"))


def test_directories_globs_and_gzip(tmp_path):
    """A directory: its text files sorted by path (binary, empty and hidden ones left out), .gz read through; a
    glob: the same for what it matches; the corpus streams the same text as the files hold."""
    import gzip

    root = tmp_path / "src"
    (root / "b").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "z.txt").write_text("zed\n")
    (root / "a.py").write_text("print(1)\n")
    (root / "b" / "c.txt").write_text("see\n")
    (root / "b" / "d.txt.gz").write_bytes(gzip.compress(b"dee, compressed\n"))
    (root / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (root / "empty.txt").write_text("")
    (root / ".hidden.txt").write_text("secret\n")
    (root / ".git" / "HEAD").write_text("ref: main\n")
    names = [p.relative_to(root).as_posix() for p in resolve_corpus(str(root))]
    assert names == ["a.py", "b/c.txt", "b/d.txt.gz", "z.txt"]
    assert [p.name for p in resolve_corpus(str(root / "**" / "*.txt"))] == ["c.txt", "z.txt"]
    corpus = open_corpus([str(root), str(root / "z.txt")])
    assert ["".join(d) for d in corpus.documents()] == ["print(1)\n", "see\n", "dee, compressed\n", "zed\n", "zed\n"]
    assert corpus.nbytes() == sum(len(t) for t in ("print(1)\n", "see\n", "dee, compressed\n", "zed\n", "zed\n"))


def test_prepare_streams_and_the_workers_do_not_change_the_files(tmp_path):
    """Files cut into many small pieces, encoded by 1 and by 2 worker processes: the same token files, and the
    same ids as encoding each whole file and joining them with the end-of-text token."""
    from conftest import make_text

    texts = [make_text(300, seed=i) for i in range(3)]
    for i, t in enumerate(texts):
        (tmp_path / f"doc{i}.txt").write_text(t, encoding="utf-8")
    tok = Tokenizer.train("".join(texts), 350)
    corpus = open_corpus([str(tmp_path / "doc*.txt")], piece_chars=500)
    assert sum(1 for _ in corpus.pieces()) > 20
    files = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        info = prepare(corpus, tok, out, val_frac=0.1, num_workers=workers)
        files[workers] = [(out / name).read_bytes() for name in ("train.bin", "val.bin")]
    assert files[1] == files[2]
    whole = []
    for i, t in enumerate(texts):
        whole += ([tok.eot_id] if i else []) + tok.encode(t)
    ids = list(load_split(tmp_path / "w1" / "train.bin")) + list(load_split(tmp_path / "w1" / "val.bin"))
    assert ids == whole
    assert info["train_bytes"] + info["val_bytes"] == len(tok.decode_bytes(whole))
    assert prepare(texts, tok, tmp_path / "texts", val_frac=0.1)["key"] == info["key"]  # texts or files alike


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


@settings(max_examples=60, deadline=None)
@given(n_tokens=st.integers(2, 3000), block=st.integers(1, 300), seed=st.integers(0, 2**40))
def test_epochs_read_every_window_once_from_an_offset(n_tokens, block, seed):
    """Each epoch is every window at stride block_size from one offset below block_size, each once, all of them
    inside the text; the epochs differ (in order, and in offset where the text leaves room for one)."""
    if n_tokens <= block:
        with pytest.raises(ValueError, match="cannot fill"):
            Epochs(n_tokens, block, seed)
        return
    epochs = Epochs(n_tokens, block, seed)
    firsts = []
    for e in range(4):
        starts = epochs.take(epochs.ends[e], epochs._size(e))
        offset = min(starts)
        assert offset < block and all(s + block + 1 <= n_tokens for s in starts)
        assert sorted(starts) == list(range(offset, n_tokens - block, block))
        assert len(starts) == (n_tokens - 1 - offset) // block  # every window of the epoch: none left out
        assert epochs.ends[e + 1] - epochs.ends[e] == len(starts)
        firsts.append(starts)
    if n_tokens - block > 1 and (n_tokens - 1) // block > 3:
        assert len({tuple(f) for f in firsts}) > 1


def test_epochs_are_a_function_of_the_window_number():
    """Window k is the same whether read in one go, in batches, backwards or by a fresh reader (a resumed run)."""
    whole = Epochs(5000, 64, 7).take(0, 1000)
    assert len(whole) == 1000
    batches = Epochs(5000, 64, 7)
    assert [s for k in range(0, 1000, 24) for s in batches.take(k, min(24, 1000 - k))] == whole
    back = Epochs(5000, 64, 7)
    assert [back.take(k, 1)[0] for k in reversed(range(1000))] == whole[::-1]
    assert Epochs(5000, 64, 8).take(0, 1000) != whole  # another seed, another order


def test_windows_are_the_text_at_their_starts():
    data_ = np.arange(1000, dtype=np.uint16)
    x, y = windows(data_, [0, 5, 983], 16)
    assert x.shape == y.shape == (3, 16) and x.dtype == torch.int64
    assert x[:, 0].tolist() == [0, 5, 983] and torch.equal(y, x + 1)


def test_a_hub_dataset_from_the_cache_offline(tmp_path, monkeypatch):
    """hf:USER/NAME fetches a dataset repository's text files through the HF cache: here a cache built by hand,
    with HF_HUB_OFFLINE=1, as huggingface_hub lays it out (blobs, snapshots/<sha>/ of symlinks, refs/main)."""
    import hashlib

    from huggingface_hub import constants

    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(DataError, match="not in the Hugging Face cache and HF_HUB_OFFLINE=1"):
        resolve_corpus("hf:alice/poems")
    repo, sha = cache / "datasets--alice--poems", "a" * 40
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / sha / "part").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    for name, text in {"README.md": "# card\n", "part/b.txt": "second\n", "a.txt": "first\n"}.items():
        h = hashlib.sha256(text.encode()).hexdigest()
        (repo / "blobs" / h).write_text(text)
        link = repo / "snapshots" / sha / name
        link.symlink_to(Path("../" * name.count("/") + "../../blobs") / h)
    files = resolve_corpus("hf:alice/poems")
    assert [f.relative_to(repo / "snapshots" / sha).as_posix() for f in files] == ["a.txt", "part/b.txt"]
    assert ["".join(d) for d in open_corpus(["hf:alice/poems"]).documents()] == ["first\n", "second\n"]
    assert not data.is_local("hf:alice/poems") and data.corpus_from(tmp_path, ["hf:alice/poems"]) == ["hf:alice/poems"]


def test_data_key_is_the_one_runs_before_streaming_saved(tmp_path):
    """data.json's key of a run made before the corpus was streamed must still match, or every such run's
    --resume is refused as "not the text this run was trained on": sha256 over each document's sha256, then the
    tokenizer's fingerprint and the split."""
    import hashlib

    from llm.data import data_key, tokenizer_fingerprint

    texts = ["first document\n", "second, é 日\n"]
    tok = CharTokenizer.train("".join(texts))
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest())
    h.update(tokenizer_fingerprint(tok).encode())
    h.update(b"val_frac=0.1")
    for i, t in enumerate(texts):
        (tmp_path / f"d{i}.txt").write_text(t, encoding="utf-8")
    files = open_corpus([str(tmp_path / "d0.txt"), str(tmp_path / "d1.txt")], piece_chars=3)
    assert data_key(texts, tok, 0.1) == data_key(files, tok, 0.1) == h.hexdigest()


def test_a_glob_that_matches_directories_and_their_files_lists_each_file_once(tmp_path):
    (tmp_path / "c" / "sub").mkdir(parents=True)
    (tmp_path / "c" / "a.txt").write_text("a\n")
    (tmp_path / "c" / "sub" / "b.txt").write_text("b\n")
    files = resolve_corpus(str(tmp_path / "c" / "**"))
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["c/a.txt", "c/sub/b.txt"]


@pytest.mark.parametrize("spec,name", [("books/**/*.txt", "books"), ("*.txt", "corpus"), ("hf:alice/poems", "poems"),
                                       ("data/", "data"), ("https://x.org/input.txt?raw=1", "input")])
def test_a_run_is_named_after_its_corpus(spec, name):
    import train_cli

    assert train_cli._corpus_name(spec) == name
