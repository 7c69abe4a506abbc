"""The CLI, python -m llm.generate, on a checkpoint written by the test."""

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm.checkpoint import save_checkpoint
from llm.generate import main
from llm.model import GPT, ModelConfig
from llm.tokenizer import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tokenizer = CharTokenizer.train("hello world, how are you? 日本語 🙂\n")
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16))
    out = tmp_path_factory.mktemp("run")
    save_checkpoint(out / "best", model, tokenizer)
    return out


def run(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_streams_prompt_and_continuation(ckpt, capsys):
    code, out, err = run(capsys, "--checkpoint", str(ckpt), "--prompt", "hello", "--max-new-tokens", "20",
                         "--seed", "1")
    assert code == 0 and err == ""
    assert out.startswith("hello") and out.endswith("\n") and len(out) > len("hello\n")
    again = run(capsys, "--checkpoint", str(ckpt / "best"), "--prompt", "hello", "--max-new-tokens", "20",
                "--seed", "1")
    assert again[1] == out  # same seed, same text


def test_all_sampling_flags(ckpt, capsys):
    code, out, err = run(
        capsys, "--checkpoint", str(ckpt), "--prompt", "how", "--max-new-tokens", "30", "--temperature", "0.9",
        "--top-k", "500", "--top-p", "0.9", "--min-p", "0.05", "--repetition-penalty", "1.3", "--stop", r"\n",
        "--stop", "you", "--seed", "3", "--num-samples", "2", "--no-kv-cache",
    )
    assert code == 0 and err == ""
    assert out.count("--- sample") == 2
    assert "you" not in out.replace("how", "")


def test_greedy_cache_and_no_cache_agree(ckpt, capsys):
    args = ["--checkpoint", str(ckpt), "--prompt", "wor", "--max-new-tokens", "30", "--temperature", "0"]
    assert run(capsys, *args)[1] == run(capsys, *args, "--no-kv-cache")[1]


def test_long_prompt_is_reported(ckpt, capsys):
    code, _, err = run(capsys, "--checkpoint", str(ckpt), "--prompt", "hello " * 10, "--max-new-tokens", "2")
    assert code == 0 and "first 44 tokens were dropped" in err


def test_interactive_loop(ckpt, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nworld\n"))
    code, out, _ = run(capsys, "--checkpoint", str(ckpt), "--interactive", "--max-new-tokens", "5")
    assert code == 0 and out.count("> ") == 3  # two prompts, then EOF
    assert "hello" in out and "world" in out


@pytest.mark.parametrize(
    "args, words",
    [
        (["--prompt", "hi", "--temperature", "abc"], "invalid float value: 'abc'"),
        (["--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
        (["--prompt", "hi", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--prompt", "hi", "--temperature", "-1"], "--temperature must be a number >= 0"),
        (["--prompt", "hi", "--top-k", "-2"], "--top-k must be an integer >= 0"),
        ([], "give --prompt TEXT or --interactive"),
    ],
)
def test_bad_numbers_give_one_line(ckpt, capsys, args, words):
    code, out, err = run(capsys, "--checkpoint", str(ckpt), *args)
    assert code != 0 and out == "" and words in err and err.count("\n") == 1


def test_missing_checkpoint_one_line_no_traceback(tmp_path):
    """The real entry point, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "llm.generate", "--checkpoint", str(tmp_path / "nope"), "--prompt",
                           "hi"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1, proc.stderr
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_broken_checkpoint_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    code, out, err = run(capsys, "--checkpoint", str(tmp_path), "--prompt", "hi")
    assert code == 1 and out == "" and err.startswith("error:") and err.count("\n") == 1


def test_without_checkpoint_it_opens_what_the_app_opens(tmp_path, monkeypatch, capsys):
    """No --checkpoint and nothing trained here: the bundled model, as app.py would open it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCRATCHGPT_CHECKPOINT", raising=False)
    assert main(["--prompt", "ROMEO:", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")


def test_a_missing_path_is_said_as_one(tmp_path, monkeypatch, capsys):
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["--checkpoint", "checkpoints/nope", "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert "checkpoints/nope" in err and "Hub" not in err and len(err.strip().splitlines()) == 1


def test_device_flag(ckpt, capsys, monkeypatch):
    """--device cpu runs there; a device this machine lacks is one line and exit 2, before any loading."""
    assert main(["--checkpoint", str(ckpt), "--prompt", "ab", "--max-new-tokens", "3", "--seed", "1",
                              "--device", "cpu"]) == 0
    on_cpu = capsys.readouterr().out
    assert on_cpu.startswith("ab")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--checkpoint", str(ckpt), "--prompt", "ab", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --device cuda: no CUDA GPU is available"
    assert main(["--checkpoint", str(ckpt), "--prompt", "ab", "--max-new-tokens", "3", "--seed", "1",
                              "--device", "auto"]) == 0  # no GPU here: the CPU, the same text
    assert capsys.readouterr().out == on_cpu
