"""A public studio (a Hugging Face Space): whose run is whose, the line of runs waiting to train, the owner's caps,
a run as one archive, delete (llm/public.py, training.Studio), and two visitors through gradio_client."""

import json
import os
import time
import zipfile
from pathlib import Path

import gradio as gr
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError

import app
from conftest import make_text
from llm import hub, public, studio, viz, worker
from llm.checkpoint import load_checkpoint, read_metrics
from playground import load_playground
from test_hub import _http_error
from test_studio import ADVANCED, settings, start_job, tiny_run_dir, wait_for
from training import SOURCES, Studio, StudioSettings

A, B = "a" * 32, "b" * 32  # two visitors' keys


def public_studio(tmp_path, **caps) -> Studio:
    return Studio(StudioSettings(runs_dir=tmp_path / "runs", train_threads=1, public=True, **caps))


def test_owner_ids_and_provided_runs():
    assert public.owner_id(A) == public.owner_id(A) != public.owner_id(B)
    assert A not in public.owner_id(A)  # runs record a hash, never the key
    for bad in ("", "short", "x" * 200, "../../etc", None, 12, "a b" * 10):
        assert public.owner_id(bad) is None
    mine = worker.RunStatus("r", "finished", owner=public.owner_id(A))
    assert public.owns(mine, A) and not public.owns(mine, B) and not public.owns(mine, "")
    assert public.provided(worker.RunStatus("r", "finished")) and not public.provided(mine)


def test_the_line_in_order_and_leaving_it(tmp_path):
    runs = tmp_path / "runs"
    outs = [worker.new_run(runs, f"r{i}") for i in range(3)]
    for out in outs:
        public.enqueue(out)
    assert [d.name for d, _ in public.line(runs)] == [o.name for o in outs]
    assert [public.place(runs, o.name) for o in outs] == [1, 2, 3] and public.place(runs, "nope") is None
    assert worker.run_status(outs[0]).state == "queued"
    public.leave(outs[0])
    s = worker.run_status(outs[0])
    assert s.state == "stopped" and "left the line" in s.message and public.place(runs, outs[1].name) == 1


def test_prune_removes_the_oldest_finished_visitor_runs_only(tmp_path):
    runs = tmp_path / "runs"
    made = []
    for i, owner in enumerate([A, None, A, A]):  # the second is the Space owner's (no visitor's mark)
        out = worker.new_run(runs, f"r{i}")
        job = {"owner": public.owner_id(owner)} if owner else {}
        worker.write_json(out / worker.JOB, job)
        worker.write_json(out / worker.STATUS, {"state": "finished"})
        (out / "blob").write_bytes(b"x" * 1000)
        os.utime(out, (time.time() - 100 + i, time.time() - 100 + i))  # r0 oldest
        made.append(out)
    public.enqueue(made[3])  # waiting: never removed
    assert public.prune(runs, keep=None, max_bytes=None) == []
    assert public.prune(runs, keep=3, max_bytes=None) == [made[0].name, made[2].name]  # room for one more
    assert not made[0].exists() and made[1].exists() and made[3].exists()
    assert public.disk_used(runs) > 2000 and public.prune(runs, keep=None, max_bytes=10) == []  # nothing removable


def test_archive_holds_the_model_without_the_visitors_mark(tmp_path):
    out = tiny_run_dir(tmp_path)
    worker.write_json(out / worker.JOB, {"owner": public.owner_id(A), "source": "test"})
    z = public.archive(out, tmp_path)
    with zipfile.ZipFile(z) as f:
        names = f.namelist()
        assert f"{out.name}/best/model.safetensors" in names and f"{out.name}/metrics.jsonl" in names
        assert not any("train.bin" in n or "train_state" in n for n in names)
        assert "owner" not in json.loads(f.read(f"{out.name}/{worker.JOB}"))
        f.extractall(tmp_path / "unzipped")
    model, _, _ = load_checkpoint(tmp_path / "unzipped" / out.name)
    assert model.num_params() > 0


def test_an_archive_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """NAME.zip was rewritten in place: a download served while another was packing, or a pack that failed
    halfway, got half an archive. Now each is packed apart and moved over the last one when complete."""
    out = tiny_run_dir(tmp_path)
    dest = tmp_path / "downloads"
    dest.mkdir()
    before = public.archive(out, dest).read_bytes()

    def fail_halfway(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "write", fail_halfway)
    with pytest.raises(OSError):
        public.archive(out, dest)
    assert [p.name for p in dest.iterdir()] == [f"{out.name}.zip"]  # no part left behind
    assert (dest / f"{out.name}.zip").read_bytes() == before


# -----------------------------------------------------------------------------
# the Train tab's handlers in a public studio


def test_visitors_see_and_touch_only_their_own_runs(tmp_path):
    st = public_studio(tmp_path)
    with pytest.raises(gr.Error, match="reload"):
        st.start(SOURCES[1], None, make_text(400), *settings(), key="")
    mine = st.start(SOURCES[1], None, make_text(400), *settings(max_steps=20), key=A)
    out = tmp_path / "runs" / mine
    assert [r["name"] for r in st.api_runs(key=A)] == [mine] and st.api_runs(key=B) == []
    assert "gone" in st.poll(mine, key=B)[0]
    for act in (st.stop, st.resume, st.download, st.delete):
        with pytest.raises(gr.Error, match="pick a run from the list"):
            act(mine, key=B)
    wait_for(out, lambda s: s.state == "finished")
    with zipfile.ZipFile(st.download(mine, key=A)) as z:
        assert f"{mine}/best/model.safetensors" in z.namelist()
    assert "deleted" in st.delete(mine, key=A) and not out.exists()


def test_a_second_trainer_waits_in_line_and_sees_its_place(tmp_path):
    st = public_studio(tmp_path, max_waiting=2)
    first = st.start(SOURCES[1], None, make_text(400), *settings(max_steps=400), key=A)
    wait_for(tmp_path / "runs" / first, lambda s: s.state == "running")
    second = st.start(SOURCES[1], None, make_text(400), *settings(max_steps=20), key=B)
    status = st.poll(second, key=B)[0]
    assert "waiting in line, next" in status and st.poll(second, key=B)[4]["interactive"]  # Stop leaves the line
    third = st.start(SOURCES[1], None, make_text(400), *settings(max_steps=20), key=B)
    assert "place 2 (1 ahead of it)" in st.poll(third, key=B)[0]
    with pytest.raises(gr.Error, match="the line is full: 2 waiting to train"):
        st.start(SOURCES[1], None, make_text(400), *settings(), key=A)
    assert "left the line" in st.stop(third, key=B)[0]
    st.stop(first, key=A)  # the first ends: the keeper starts the second in its turn
    s = wait_for(tmp_path / "runs" / second, lambda s: s.state == "finished", timeout=180)
    assert s.owner == public.owner_id(B)


def test_caps_make_room_or_refuse_in_words(tmp_path):
    runs = tmp_path / "runs"
    old = start_job(runs, "old", make_text(400), max_steps=5)
    wait_for(old, lambda s: not s.live)
    worker.write_json(old / worker.JOB, {**worker.read_json(old / worker.JOB), "owner": public.owner_id(A)})
    st = public_studio(tmp_path, keep_runs=1)
    name = st.start(SOURCES[1], None, make_text(400), *settings(max_steps=5), key=B)
    assert not old.exists()  # the oldest finished visitor run made room
    wait_for(runs / name, lambda s: not s.live)
    provided = start_job(runs, "owners", make_text(400), max_steps=5)  # no visitor's mark: never removed
    wait_for(provided, lambda s: not s.live)
    st = public_studio(tmp_path, keep_runs=1, max_runs_bytes=1)
    with pytest.raises(gr.Error, match="keeps 1 runs at most"):
        st.start(SOURCES[1], None, make_text(400), *settings(), key=A)
    st = public_studio(tmp_path, max_runs_bytes=1)
    with pytest.raises(gr.Error, match=r"the runs here use .* all this server allows them \(1 bytes\)"):
        st.start(SOURCES[1], None, make_text(400), *settings(), key=A)


def test_public_mode_from_the_environment(monkeypatch):
    monkeypatch.delenv("SCRATCHGPT_PUBLIC", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    s = StudioSettings.from_env()
    assert not s.public and s.keep_runs is None and s.max_runs_bytes is None
    monkeypatch.setenv("SPACE_ID", "someone/studio")  # a Hugging Face Space
    s = StudioSettings.from_env()
    assert s.public and s.keep_runs == 50 and s.max_runs_bytes == 10_000_000_000
    monkeypatch.setenv("SCRATCHGPT_PUBLIC", "0")
    assert not StudioSettings.from_env().public
    monkeypatch.setenv("SCRATCHGPT_PUBLIC", "1")
    monkeypatch.setenv("SCRATCHGPT_KEEP_RUNS", "7")
    assert StudioSettings.from_env().keep_runs == 7


# -----------------------------------------------------------------------------
# two visitors against the launched app


def test_two_clients_cannot_reach_each_others_runs(tmp_path):
    from gradio_client import Client

    from test_app import free_port

    loaded = load_playground(str(tiny_run_dir(tmp_path)))
    st = StudioSettings(runs_dir=tmp_path / "runs", train_threads=1, public=True, max_waiting=1)
    demo = app.build_app(*loaded, stream_interval=0.0, settings=st)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        alice, bob = (Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(2))
        name = alice.predict(SOURCES[1], None, make_text(400), *settings(max_steps=400), A,
                             api_name="/start_training")
        wait_for(tmp_path / "runs" / name, lambda s: s.state == "running" and s.has_best)
        assert [r["name"] for r in alice.predict(A, api_name="/list_runs")] == [name]
        assert bob.predict(B, api_name="/list_runs") == []
        assert "gone" in bob.predict(name, B, api_name="/run_status")[0]
        for endpoint in ("/stop_training", "/download_run", "/delete_run"):
            with pytest.raises(Exception, match="pick a run from the list"):
                bob.predict(name, B, api_name=endpoint)
        with pytest.raises(Exception, match="no model"):
            bob.predict(f"run/{name}", B, api_name="/switch_model")
        theirs = bob.predict(SOURCES[1], None, make_text(400), *settings(max_steps=20), B, api_name="/start_training")
        assert "waiting in line, next" in bob.predict(theirs, B, api_name="/run_status")[0]
        with pytest.raises(Exception, match="the line is full: 1 waiting"):  # the owner's cap, in words
            alice.predict(SOURCES[1], None, make_text(400), *settings(), A, api_name="/start_training")
        with pytest.raises(Exception, match="reload"):  # no key, no run
            bob.predict(SOURCES[1], None, make_text(400), *settings(), "", api_name="/start_training")
        alice.predict(name, A, api_name="/stop_training")
        wait_for(tmp_path / "runs" / theirs, lambda s: s.state == "finished", timeout=180)
        assert "finished" in bob.predict(theirs, B, api_name="/run_status")[0]
        header = alice.predict(f"run/{name}", A, api_name="/switch_model")  # one's own opens
        assert viz.escape_markdown(name) in header
    finally:
        demo.close()


# -----------------------------------------------------------------------------
# push to the Hub


class FakeHub:
    """The Hub client a push uses: takes only GOOD as a token, records what it was sent."""

    def __init__(self, token: str, calls: list):
        self.token, self.calls = token, calls

    def _check(self):
        if self.token != GOOD:
            raise _http_error(HfHubHTTPError, 401, f"401 Unauthorized: invalid credentials {self.token}")

    def create_repo(self, repo_id, **kwargs):
        self._check()
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self._check()
        files = sorted(p.name for p in Path(kwargs["folder_path"]).rglob("*") if p.is_file())
        self.calls.append(("upload_folder", kwargs["repo_id"], files))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/1"})


GOOD, BAD = "hf_good_secret_token_123", "hf_bad_secret_token_456"


@pytest.fixture
def pushable(tmp_path, monkeypatch):
    """A finished run of visitor A's in a public studio, and a private studio on the same runs; the Hub faked."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    runs = tmp_path / "runs"
    out = start_job(runs, "mine", make_text(400), max_steps=10)
    wait_for(out, lambda s: s.state == "finished")
    worker.write_json(out / worker.JOB, {**worker.read_json(out / worker.JOB), "owner": public.owner_id(A)})
    calls = []
    studios = {}
    for mode in (True, False):
        st = Studio(StudioSettings(runs_dir=runs, public=mode))
        st.hub_api = lambda token: FakeHub(token, calls)
        studios[mode] = st
    return studios, out.name, calls


def test_push_with_no_token_a_bad_token_and_a_good_one(pushable, monkeypatch, capfd):
    studios, name, calls = pushable
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(gr.Error, match="no Hugging Face token here"):
        studios[False].push(name, "someone/my-gpt")
    with pytest.raises(gr.Error, match="sign in with Hugging Face first"):
        studios[True].push(name, "someone/my-gpt", key=A)  # a public studio never uses the machine's token
    monkeypatch.setattr(hub, "get_token", lambda: BAD)  # the Space owner's token: not used in public
    with pytest.raises(gr.Error, match="sign in"):
        studios[True].push(name, "someone/my-gpt", key=A)
    with pytest.raises(gr.Error, match="not a valid model repo id"):
        studios[True].push(name, "not a repo", key=A, oauth_token=GOOD)
    with pytest.raises(gr.Error, match="pick a run from the list"):
        studios[True].push(name, "someone/my-gpt", key=B, oauth_token=GOOD)
    assert calls == []  # nothing was sent for any of these
    with pytest.raises(gr.Error) as bad:
        studios[True].push(name, "someone/my-gpt", key=A, oauth_token=BAD)
    assert "401" in bad.value.message and "write access" in bad.value.message and BAD not in bad.value.message
    said = studios[True].push(name, "someone/my-gpt", True, key=A, oauth_token=GOOD)
    assert "[someone/my-gpt](https://huggingface.co/someone/my-gpt/commit/1)" in said
    (_, repo, kwargs), (_, _, files) = calls
    assert repo == "someone/my-gpt" and kwargs["private"] is True
    assert {"README.md", "model.safetensors", "tokenizer.json", "config.json"} <= set(files)
    monkeypatch.setattr(hub, "get_token", lambda: GOOD)
    assert "Pushed to" in studios[False].push(name, "someone/my-gpt")  # a private studio: the machine's token
    out = capfd.readouterr()
    for token in (GOOD, BAD):  # the token is never shown, logged or stored
        assert token not in said and token not in out.out + out.err
        for f in (studios[True].settings.runs_dir / name).rglob("*"):
            assert not f.is_file() or token.encode() not in f.read_bytes()


# -----------------------------------------------------------------------------
# ZeroGPU: training in slices in the server's process


def _job(runs, name: str, **train):
    """A run directory with its job and text, not started."""
    out = worker.new_run(runs, name)
    (out / worker.UPLOAD).write_text(make_text(400), encoding="utf-8")
    model_cfg, cfg = studio.configs("tiny", "bpe", 300, 600.0, {**ADVANCED, **train},
                                    corpus=(str(out / worker.UPLOAD),), out=str(out))
    worker.write_job(out, model_cfg, cfg, threads=1, source="test")
    return out


def test_a_run_cut_into_slices_ends_as_the_same_run_in_one_piece(tmp_path):
    whole = _job(tmp_path / "runs", "whole", max_steps=150, eval_interval=50)
    assert worker.train_slice(whole, 600.0) is True  # one slice holds it all
    sliced = _job(tmp_path / "runs", "sliced", max_steps=150, eval_interval=50)
    cuts = 0
    while not worker.train_slice(sliced, 0.05):
        cuts += 1
        assert worker.run_status(sliced).has_last and cuts < 200
    assert cuts >= 2, cuts  # it was cut, and resumed from last/ each time
    for kind in ("last", "best"):
        assert (whole / kind / "model.safetensors").read_bytes() == (sliced / kind / "model.safetensors").read_bytes()
    evals = [{k: r[k] for k in ("step", "val_loss", "train_loss")} for r in read_metrics(whole) if r["kind"] == "eval"]
    assert evals == [{k: r[k] for k in ("step", "val_loss", "train_loss")} for r in read_metrics(sliced)
                     if r["kind"] == "eval"]
    assert worker.run_status(sliced).state == "finished"


def test_visitors_take_turns_on_one_gpu_in_slices(tmp_path):
    st = public_studio(tmp_path, slice_seconds=0.3)
    turns = []

    def slicer(out, seconds):
        turns.append(out.name)
        return worker.train_slice(out, seconds)

    st.slicer = slicer
    a = st.start(SOURCES[1], None, make_text(400), *settings(max_steps=60), key=A)
    b = st.start(SOURCES[1], None, make_text(400), *settings(max_steps=60), key=B)
    for name in (a, b):
        wait_for(tmp_path / "runs" / name, lambda s: s.state == "finished", timeout=180)
    assert turns[:4] == [a, b, a, b]  # taking turns, each resuming where its last slice ended


def test_stop_ends_a_slice_training_in_the_server(tmp_path):
    st = public_studio(tmp_path, slice_seconds=30.0)
    st.slicer = worker.train_slice
    # a step limit far beyond a slice, and within the page's hour even when a loaded machine times the steps
    # slowly (100,000 steps were refused there)
    name = st.start(SOURCES[1], None, make_text(400), *settings(max_steps=20_000), key=A)
    out = tmp_path / "runs" / name
    wait_for(out, lambda s: s.state == "running" and s.step >= 5)
    assert "stopping" in st.stop(name, key=A)[0]  # never a signal: the server is the process training
    s = wait_for(out, lambda s: s.state == "stopped")
    assert s.has_last and not (out / worker.HALT).exists()


def test_a_slice_that_gets_no_gpu_fails_its_run_and_the_line_goes_on(tmp_path):
    st = public_studio(tmp_path, slice_seconds=5.0)

    seen = []

    def slicer(out, seconds):  # the first run in line gets no GPU
        seen.append(out.name)
        if out.name == seen[0]:
            raise RuntimeError("no GPU could be had (quota)")
        return worker.train_slice(out, seconds)

    st.slicer = slicer
    a = st.start(SOURCES[1], None, make_text(400), *settings(max_steps=20), key=A)
    b = st.start(SOURCES[1], None, make_text(400), *settings(max_steps=20), key=B)
    s = wait_for(tmp_path / "runs" / b, lambda s: s.state == "finished", timeout=120)
    failed = worker.run_status(tmp_path / "runs" / a)
    assert failed.state == "failed" and "no GPU could be had" in failed.message and s.owner == public.owner_id(B)


def test_runs_left_waiting_get_a_keeper_after_a_restart(tmp_path):
    runs = tmp_path / "runs"
    out = _job(runs, "left", max_steps=10)
    worker.write_json(out / worker.JOB, {**worker.read_json(out / worker.JOB), "owner": public.owner_id(A)})
    public.enqueue(out)  # the server stopped with it in line
    public_studio(tmp_path).restart_line()
    wait_for(out, lambda s: s.state == "finished")
