"""Shared fixtures: small corpora made on the spot (tests never read ../shared or the network)."""

import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORDS = ("the king shall speak to thee and thou art my lord what is this night good morrow sweet love "
         "I will not go hence for she doth come my heart is true as steel").split()


def make_text(n_lines: int = 200, seed: int = 0) -> str:
    """Shakespeare-ish lines from a small vocabulary: learnable structure in a few KB."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if i % 8 == 0:
            lines.append(rng.choice(["KING:", "QUEEN:", "ROMEO:", "JULIET:"]))
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", ",", "!", "?", ";"]))
    return "\n".join(lines) + "\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


# flags for a run that takes seconds: 2 layers x 32 dims
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
        "--vocab-size", "300", "--eval-iters", "2", "--sample-tokens", "8", "--no-progress", "--warmup-steps", "5",
        "--lr", "3e-3", "--no-compile"]
