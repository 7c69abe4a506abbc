"""The Hub integration without the network: what would be uploaded, loading from a hand-built HF cache, the model
card, the Space front matter, and the CLI's answers to bad input. HfApi's network methods are monkeypatched."""

import hashlib
import importlib.metadata
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, SpaceCard, SpaceHardware, constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, RepositoryNotFoundError

import train_cli
from conftest import ROOT, make_text
from llm import hub, load_checkpoint
from llm.checkpoint import CheckpointError
from llm.card import dataset_ids, loss_curve_svg, render_card

# The Space front matter under test: the top of the repository README.
SPACE_README = ROOT / "README.md"
UPLOADED = {"model.safetensors", "config.json", "tokenizer.json", "meta.json", "metrics.jsonl", "loss_curve.svg",
            "README.md"}
NETWORK = ("create_repo", "create_branch", "upload_folder", "add_space_variable", "request_space_hardware")
SHA_MAIN, SHA_V1 = "a" * 40, "b" * 40


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained run: OUT/{best,last}, metrics.jsonl, data.json."""
    tmp = tmp_path_factory.mktemp("run")
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    out = tmp / "out"
    rc = train_cli.main(["--corpus", str(corpus), "--out", str(out), "--n-layer", "1", "--n-head", "2",
                         "--n-embd", "32", "--block-size", "16", "--batch-size", "4", "--vocab-size", "280",
                         "--max-steps", "4", "--eval-interval", "2", "--eval-iters", "1", "--sample-tokens", "0",
                         "--no-progress", "--no-compile"])
    assert rc == 0
    return out


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch) -> Path:
    """Every test runs offline against an empty HF cache under tmp_path, and any real network call fails."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    for name in NETWORK:
        monkeypatch.setattr(HfApi, name, _no_network(name))
    return cache


def _no_network(name):
    def call(*args, **kwargs):
        raise AssertionError(f"HfApi.{name} called: this input should have failed before any network call")
    return call


def go_online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def record_calls(monkeypatch) -> list:
    """Patch HfApi's network methods to record (name, kwargs) and, for uploads, the files sent."""
    calls = []

    def fake(name):
        def call(self, *args, **kwargs):
            if args:
                kwargs["repo_id"] = args[0]
            if name == "add_space_variable":
                kwargs["key"], kwargs["value"] = args[1], args[2]
            if name == "upload_folder":  # the folder is a temp dir gone after the call: keep its contents
                root = Path(kwargs["folder_path"])
                kwargs["files"] = {p.relative_to(root).as_posix(): p.read_bytes()
                                   for p in sorted(root.rglob("*")) if p.is_file()}
                calls.append((name, kwargs))
                return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/x"})
            calls.append((name, kwargs))
        return call

    for name in NETWORK:
        monkeypatch.setattr(HfApi, name, fake(name))
    return calls


def state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


# -----------------------------------------------------------------------------
# repo ids

@pytest.mark.parametrize("spec", ["alice/tiny", "alice/tiny@v1", "Alice-1/my_model.v2", "alice/tiny@refs/pr/1"])
def test_is_repo_id_accepts(spec):
    assert hub.is_repo_id(spec)


@pytest.mark.parametrize("spec", ["", "alice", "alice/", "/abs/path", "./alice/tiny", "alice/tiny/extra",
                                  "alice/ti--ny", "alice/x..y", "alice/tiny.git", "alice/ti ny", "-a/b", "a/" + "x" * 97])
def test_is_repo_id_rejects(spec):
    assert not hub.is_repo_id(spec)
    with pytest.raises(hub.HubError, match="not a valid model repo id"):
        hub.check_repo_id(spec)


def test_split_revision():
    assert hub.split_revision("alice/tiny@v1") == ("alice/tiny", "v1")
    assert hub.split_revision("alice/tiny") == ("alice/tiny", None)


# -----------------------------------------------------------------------------
# the folder that would be uploaded

@pytest.mark.parametrize("which", ["", "best", "last"])
def test_staged_folder_is_complete_and_loads(run_dir, tmp_path, which):
    dest = hub.stage_checkpoint(run_dir / which if which else run_dir, tmp_path / "stage", repo_id="alice/tiny",
                                sample_tokens=8)
    assert {p.name for p in dest.iterdir()} == UPLOADED  # train_state.pt of last/ stays home
    assert (dest / "metrics.jsonl").read_bytes() == (run_dir / "metrics.jsonl").read_bytes()
    model, tokenizer, meta = load_checkpoint(dest)
    original, _, _ = load_checkpoint(run_dir / (which or "best"))
    for k, v in state(original).items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert tokenizer.encode("KING: my lord") == load_checkpoint(run_dir)[1].encode("KING: my lord")
    assert meta["step"] == 4


def test_staged_card_and_curve(run_dir, tmp_path):
    dest = hub.stage_checkpoint(run_dir, tmp_path / "stage", repo_id="alice/tiny", sample_tokens=8)
    card = ModelCard.load(dest / "README.md")
    assert card.data.library_name == "scratchgpt" and card.data.pipeline_tag == "text-generation"
    assert card.data.license == "mit" and "scratchgpt" in card.data.tags
    meta = json.loads((dest / "meta.json").read_text())
    text = card.text
    assert f"{meta['val_loss']:.4f}" in text and f"{meta['bits_per_byte']:.3f}" in text
    assert "| steps | 4 |" in text and "| tokens seen | 256" in text and f"| parameters | {meta['params']:,} |" in text
    assert "corpus.txt" in text and str(run_dir.parent) not in text  # no local paths published
    assert "![train and validation loss against step](loss_curve.svg)" in text
    assert "## Sample" in text and "## Limitations" in text and 'load_checkpoint("alice/tiny")' in text
    svg = ET.fromstring((dest / "loss_curve.svg").read_text())
    assert svg.tag.endswith("svg") and len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 2


def test_stage_without_sample_uses_the_logged_one(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "eval", "step": 4, "val_loss": 5.0, "sample": "KING: hark ```"}) + "\n")
    dest = hub.stage_checkpoint(run, tmp_path / "stage", sample_tokens=0)
    text = (dest / "README.md").read_text()
    assert "````text\nKING: hark ```\n````" in text and "logged during training" in text


# -----------------------------------------------------------------------------
# the model card and the loss curve, from made-up figures (known answers)

CONFIG = {"version": 1, "model": {"vocab_size": 4096, "block_size": 256, "n_layer": 6, "n_head": 6, "n_embd": 384,
                                  "pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "tie_embeddings": True},
          "train": {"tokenizer": "bpe", "batch_size": 32, "grad_accum": 2, "optimizer": "muon", "lr": 0.003}}
META = {"step": 1200, "tokens_seen": 19_660_800, "val_loss": 1.4812, "bits_per_byte": 1.2345, "train_time": 3725.0,
        "wall_time": 3800.0, "corpus": ["tiny_shakespeare"], "hardware": "NVIDIA T4", "params": 10_745_088}
ROWS = [{"kind": "train", "step": s, "loss": 4.0 - s / 600} for s in range(10, 1201, 10)] + [
    {"kind": "eval", "step": 600, "train_loss": 2.1, "val_loss": 2.2},
    {"kind": "eval", "step": 1200, "train_loss": 1.3811, "val_loss": 1.4812}]
DATA = {"train_tokens": 300_000, "val_tokens": 33_000, "train_bytes": 1_003_854, "val_bytes": 111_540}


def test_card_known_answer():
    text = render_card(CONFIG, META, ROWS, repo_id="alice/shakespeare", data=DATA, sample="ROMEO: hi",
                       sample_settings="temperature 0.8")
    card = ModelCard(text)
    assert card.data.datasets == ["karpathy/tiny_shakespeare"]
    for expected in ["# shakespeare", "| parameters | 10,745,088 |", "| context (block_size) | 256 tokens |",
                     "| vocabulary | 4,096 (byte-level BPE) |", "| tied embeddings | yes |",
                     "| corpus | tiny_shakespeare (1.1 MB) |", "| corpus tokens | 333,000 (300,000 train / 33,000 val) |",
                     "| tokens seen | 19,660,800 (65.5 epochs) |", "| steps | 1,200 |",
                     "| batch per step | 32 x 2 x 256 = 16,384 tokens |",
                     "| training time | 1 h 02 min (wall clock 1 h 03 min) |", "| hardware | NVIDIA T4 |",
                     "| final train loss | 1.3811 (step 1200) |", "| final val loss | 1.4812 (step 1200) |",
                     "| bits per byte (val) | 1.234 |", "```text\nROMEO: hi\n```", "at most 256 tokens"]:
        assert expected in text, expected


def test_card_with_nothing_known():
    text = render_card({}, {}, [], image=None)
    card = ModelCard(text)
    assert card.data.pipeline_tag == "text-generation" and not card.data.datasets
    assert "n/a" in text and "## Loss curve" not in text and "## Sample" not in text


@pytest.mark.parametrize("corpus,expected", [
    (["tiny_shakespeare"], ["karpathy/tiny_shakespeare"]),
    (["https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/x.txt"], ["roneneldan/TinyStories"]),
    (["/home/me/input.txt", "https://example.com/a.txt"], []),
])
def test_dataset_ids(corpus, expected):
    assert dataset_ids(corpus) == expected


@pytest.mark.parametrize("rows", [
    [],
    [{"kind": "eval", "step": 0, "train_loss": 5.6, "val_loss": 5.6}],
    [{"kind": "eval", "step": 2, "train_loss": float("nan"), "val_loss": float("inf")},
     {"kind": "eval", "step": 4, "train_loss": 3.0, "val_loss": 3.1}],
    [{"kind": "train", "step": s, "loss": 1 + 1 / s} for s in range(1, 20001)],
    ROWS,
])
def test_loss_curve_is_small_valid_svg(rows):
    svg = loss_curve_svg(rows)
    root = ET.fromstring(svg)
    assert root.get("width") == "640" and len(svg) < 20_000
    assert "nan" not in svg.lower() and "inf" not in svg.lower()


# -----------------------------------------------------------------------------
# loading by repo id from the HF cache

def build_cache(cache: Path, repo_id: str, files: Path, sha: str, ref: str | None = "main") -> Path:
    """The layout huggingface_hub writes: blobs by hash, snapshots/<sha>/ of symlinks, refs/<ref> -> sha."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in files.iterdir():
        h = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, repo / "blobs" / h)
        os.symlink(Path("..", "..", "blobs", h), snap / f.name)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(sha)
    return snap


@pytest.fixture(scope="module")
def staged(run_dir, tmp_path_factory) -> Path:
    return hub.stage_checkpoint(run_dir, tmp_path_factory.mktemp("staged"), repo_id="alice/tiny", sample_tokens=0)


def test_download_from_cache_offline(staged, offline_hub):
    snap = build_cache(offline_hub, "alice/tiny", staged, SHA_MAIN)
    path = hub.download("alice/tiny")
    assert path == snap and (path / "config.json").is_file()
    model, tokenizer, meta = load_checkpoint(hub.resolve_checkpoint("alice/tiny"))
    assert meta["path"] == str(snap) and meta["step"] == 4
    assert hub.resolve_checkpoint(str(staged)) == staged  # a local path stays local
    assert hub.metrics_dir(path) == path  # a model repo keeps metrics.jsonl beside the weights


def test_download_revisions(staged, offline_hub):
    build_cache(offline_hub, "alice/tiny", staged, SHA_MAIN)
    v1 = build_cache(offline_hub, "alice/tiny", staged, SHA_V1, ref="v1")
    assert hub.download("alice/tiny@v1") == v1
    assert hub.download("alice/tiny", revision=SHA_V1) == v1
    with pytest.raises(hub.HubError, match="not in the Hugging Face cache"):
        hub.download("alice/tiny@v2")


def test_load_checkpoint_by_repo_id(staged, offline_hub):
    snap = build_cache(offline_hub, "alice/tiny", staged, SHA_MAIN)
    _, _, meta = load_checkpoint("alice/tiny")
    assert meta["path"] == str(snap)


def test_the_model_selector_takes_a_repo_id(staged, run_dir, offline_hub):
    from playground import Models, Playground, load_playground

    snap = build_cache(offline_hub, "alice/tiny", staged, SHA_MAIN)
    models = Models(Playground(*load_playground(str(run_dir))))
    assert models.get("alice/tiny").path == snap and models.loaded() == ["alice/tiny"]
    with pytest.raises(hub.HubError, match="alice/missing"):
        models.get("alice/missing")
    with pytest.raises(hub.CheckpointError, match="no model 'alice/tiny' here: pick one from the list$"):
        Models(models.first, allow_hub=False).get("alice/tiny")


def test_offline_and_not_cached_is_one_clear_error(offline_hub):
    with pytest.raises(hub.HubError) as e:
        hub.download("alice/missing")
    msg = str(e.value)
    assert "alice/missing" in msg and "HF_HUB_OFFLINE=1" in msg and str(offline_hub) in msg and "\n" not in msg


def test_cached_repo_that_is_not_a_checkpoint(tmp_path, offline_hub):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "weights.bin").write_bytes(b"x")
    build_cache(offline_hub, "alice/other", tmp_path / "other", SHA_MAIN)
    with pytest.raises(hub.HubError, match="not a scratchgpt checkpoint"):
        hub.download("alice/other")


# -----------------------------------------------------------------------------
# uploads (HfApi monkeypatched: what would be sent)

def test_push_sends_the_staged_folder(run_dir, monkeypatch):
    go_online(monkeypatch)
    calls = record_calls(monkeypatch)
    url = hub.push_checkpoint(run_dir, "alice/tiny", private=True, revision="v1", sample_tokens=8)
    assert url == "https://huggingface.co/alice/tiny/commit/x"
    (n1, create), (n2, branch), (n3, upload) = calls
    assert (n1, n2, n3) == ("create_repo", "create_branch", "upload_folder")
    assert create["repo_id"] == "alice/tiny" and create["private"] is True and create["exist_ok"] is True
    assert branch["branch"] == "v1" and upload["revision"] == "v1" and upload["repo_type"] == "model"
    assert set(upload["files"]) == UPLOADED and "step 4" in upload["commit_message"]
    assert upload["files"]["model.safetensors"] == (run_dir / "best" / "model.safetensors").read_bytes()
    assert b'load_checkpoint("alice/tiny")' in upload["files"]["README.md"]


def test_push_to_main_creates_no_branch(run_dir, monkeypatch):
    go_online(monkeypatch)
    calls = record_calls(monkeypatch)
    hub.push_checkpoint(run_dir / "last", "alice/tiny", sample_tokens=0)
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1]["private"] is False and "train_state.pt" not in calls[1][1]["files"]


def _http_error(cls, status: int, message: str):
    import httpx2  # huggingface_hub's HTTP client

    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return cls(message, response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("error,expected", [
    (lambda: _http_error(HfHubHTTPError, 403, "403 Forbidden: no write access\nrequest id: x"),
     "403 Forbidden: no write access (check that your token has write access)"),
    (lambda: _http_error(RepositoryNotFoundError, 404, "404 Not Found"), "repository not found"),
    (lambda: LocalTokenNotFoundError("no token"), "not logged in to Hugging Face"),
    (lambda: ConnectionError("[Errno 101] Network is unreachable"), "ConnectionError: [Errno 101]"),
])
def test_push_errors_are_one_line(run_dir, monkeypatch, capsys, error, expected):
    go_online(monkeypatch)

    def create_repo(self, *args, **kwargs):
        raise error()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    assert hub.main(["push", str(run_dir), "alice/tiny", "--sample-tokens", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("llm.hub: error: could not push to alice/tiny: ") and err.count("\n") == 1
    assert expected in err


def test_push_refuses_when_offline(run_dir):
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE=1"):
        hub.push_checkpoint(run_dir, "alice/tiny")


def test_check_can_push(monkeypatch):
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE"):
        hub.check_can_push("alice/tiny")
    go_online(monkeypatch)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(hub.HubError, match="not logged in"):
        hub.check_can_push("alice/tiny")
    monkeypatch.setattr(hub, "get_token", lambda: "hf_x")
    assert hub.check_can_push("alice/tiny@v1") == "alice/tiny"
    with pytest.raises(hub.HubError, match="not a valid"):
        hub.check_can_push("alice")


# -----------------------------------------------------------------------------
# the Space

def test_space_front_matter_parses():
    card = SpaceCard.load(SPACE_README)
    d = card.data
    assert d.sdk == "gradio" and d.sdk_version == importlib.metadata.version("gradio")
    assert d.python_version == "3.11" and isinstance(d.python_version, str)  # unquoted, 3.10 would read as 3.1
    assert d.app_file == "app.py" and d.license == "mit" and isinstance(d.models, list)
    assert d.title and d.emoji and d.colorFrom in COLORS and d.colorTo in COLORS
    assert d.suggested_hardware in {h.value for h in SpaceHardware}
    assert 0 < len(d.short_description) <= 60
    assert hub.read_space_card(SPACE_README).data.sdk == "gradio"


COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


@pytest.fixture
def app_root(tmp_path) -> Path:
    """A repository as deploy-space sees it, with files that must and must not travel."""
    root = tmp_path / "repo"
    for rel in ["app.py", "train_cli.py", "requirements.txt", "llm/__init__.py", "llm/hub.py", "assets/css/a.css",
                "llm/__pycache__/hub.cpython-311.pyc", "tests/test_hub.py", "bench/b.py", "checkpoints/x/best/c.json",
                ".git/HEAD", "notes.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "README.md").write_text(SPACE_README.read_text(encoding="utf-8") + "\n# scratchgpt\n", encoding="utf-8")
    return root


SPACE_UPLOAD = {"app.py", "train_cli.py", "requirements.txt", "README.md", "llm/__init__.py", "llm/hub.py",
                "assets/css/a.css"}


def test_space_files(app_root):
    assert set(hub.space_files(app_root)) == SPACE_UPLOAD
    assert "llm/hub.py" in hub.space_files(ROOT) and not any(f.startswith("tests/") for f in hub.space_files(ROOT))


def test_deploy_space_with_local_checkpoint(app_root, run_dir, monkeypatch):
    go_online(monkeypatch)
    calls = record_calls(monkeypatch)
    url = hub.deploy_space("alice/playground", app_root, checkpoint=str(run_dir), hardware="t4-small")
    assert url == "https://huggingface.co/spaces/alice/playground"
    names = [c[0] for c in calls]
    assert names == ["create_repo", "upload_folder", "add_space_variable", "request_space_hardware"]
    create, upload, var = calls[0][1], calls[1][1], calls[2][1]
    assert create["repo_type"] == "space" and create["space_sdk"] == "gradio"
    bundled = {f"checkpoint/best/{n}" for n in ("model.safetensors", "config.json", "tokenizer.json", "meta.json")}
    bundled.add("checkpoint/metrics.jsonl")  # laid out like a run: SCRATCHGPT_CHECKPOINT=checkpoint means its best/
    assert set(upload["files"]) == SPACE_UPLOAD | bundled and upload["delete_patterns"] == list(hub.SPACE_FILES)
    assert (var["key"], var["value"]) == (hub.ENV_CHECKPOINT, "checkpoint")
    assert calls[3][1]["repo_id"] == "alice/playground"


def test_bundled_space_checkpoint_loads_like_a_run(app_root, run_dir, tmp_path):
    dest = hub.stage_space(tmp_path / "space", app_root, checkpoint=str(run_dir / "best"))
    _, _, meta = load_checkpoint(dest / "checkpoint")
    assert meta["path"] == str(dest / "checkpoint" / "best")
    assert hub.metrics_dir(meta["path"]) == dest / "checkpoint"


def test_deploy_space_with_model_repo(app_root, monkeypatch):
    go_online(monkeypatch)
    calls = record_calls(monkeypatch)
    hub.deploy_space("alice/playground", app_root, checkpoint="alice/tiny")
    upload = calls[1][1]
    assert set(upload["files"]) == SPACE_UPLOAD
    readme = upload["files"]["README.md"].decode()
    assert SpaceCard(readme).data.models == ["alice/tiny"] and "# scratchgpt" in readme
    assert (calls[2][1]["key"], calls[2][1]["value"]) == (hub.ENV_CHECKPOINT, "alice/tiny")


@pytest.mark.parametrize("readme,expected", [
    ("# just a readme\n", "lacks title, sdk, sdk_version, app_file"),
    ("---\ntitle: x\nsdk: [unclosed\n---\n", "does not parse"),
    ("---\ntitle: x\nsdk: docker\nsdk_version: '1'\napp_file: app.py\n---\n", "needs 'gradio'"),
    ("---\ntitle: x\nsdk: gradio\nsdk_version: 6.31.0\napp_file: main.py\n---\n", "'main.py' from README.md is not"),
    (None, "README.md is missing"),
])
def test_deploy_space_needs_space_front_matter(app_root, monkeypatch, readme, expected):
    go_online(monkeypatch)
    if readme is None:
        (app_root / "README.md").unlink()
    else:
        (app_root / "README.md").write_text(readme)
    with pytest.raises(hub.HubError, match=expected) as e:
        hub.deploy_space("alice/playground", app_root)
    assert "\n" not in str(e.value)


def test_default_checkpoint(monkeypatch, tmp_path):
    monkeypatch.delenv(hub.ENV_CHECKPOINT, raising=False)
    assert hub.find_checkpoint(None, tmp_path) == str(hub.BUNDLED)  # nothing trained here: the bundled model
    monkeypatch.setenv(hub.ENV_CHECKPOINT, "alice/tiny")
    assert hub.find_checkpoint(None, tmp_path) == "alice/tiny" and hub.find_checkpoint("out", tmp_path) == "out"


def test_a_missing_local_path_is_no_hub_id(tmp_path, monkeypatch):
    """'checkpoints/nope' where a checkpoints/ directory exists is a missing path, not a repo to download."""
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not hub.is_hub_spec("checkpoints/nope") and hub.is_hub_spec("alice/tiny")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint("checkpoints/nope")
    assert "Hub" not in str(e.value) and "checkpoints/nope" in str(e.value)


# -----------------------------------------------------------------------------
# the command line: bad input is one line and a non-zero exit, never a traceback

@pytest.mark.parametrize("argv,expected", [
    (["push", "{tmp}/nothing", "alice/tiny"], "does not exist"),
    (["push", "{tmp}", "alice/tiny"], "expected config.json"),
    (["push", "{run}", "not a repo"], "not a valid model repo id"),
    (["push", "{run}", "alice/tiny"], "HF_HUB_OFFLINE=1"),
    (["stage", "{tmp}/nothing", "{tmp}/dest"], "does not exist"),
    (["download", "alice/missing"], "not in the Hugging Face cache"),
    (["download", "alice"], "not a valid model repo id"),
    (["deploy-space", "alice", "--root", "{tmp}"], "not a valid Space repo id"),
    (["deploy-space", "alice/space", "--root", "{tmp}"], "HF_HUB_OFFLINE=1"),
    (["deploy-space", "alice/space", "--checkpoint", "./no/such/dir", "--root", "{tmp}"], None),
])
def test_cli_bad_input(argv, expected, run_dir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    assert hub.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("llm.hub: error: ") and err.count("\n") == 1 and "Traceback" not in err
    if expected:
        assert expected in err


def test_cli_bad_checkpoint_for_space_online(tmp_path, capsys, monkeypatch):
    go_online(monkeypatch)
    assert hub.main(["deploy-space", "alice/space", "--checkpoint", "./no/such/dir", "--root", str(tmp_path)]) == 1
    assert "neither a local checkpoint directory nor a USER/NAME repo id" in capsys.readouterr().err


def test_cli_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        hub.main(["push"])
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_cli_stage_and_download(run_dir, tmp_path, offline_hub, capsys):
    assert hub.main(["stage", str(run_dir), str(tmp_path / "s"), "--repo-id", "alice/tiny", "--sample-tokens", "0"]) == 0
    snap = build_cache(offline_hub, "alice/tiny", tmp_path / "s", SHA_MAIN)
    capsys.readouterr()
    assert hub.main(["download", "alice/tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(snap)
