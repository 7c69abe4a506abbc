"""scratchgpt: a tokenizer, a GPT, a trainer and a sampler, written from scratch in PyTorch."""

from pathlib import Path

from llm.checkpoint import save_checkpoint
from llm.model import GPT, ModelConfig
from llm.sample import SampleConfig, generate
from llm.tokenizer import CharTokenizer, Tokenizer, load_tokenizer

__all__ = ["Tokenizer", "CharTokenizer", "load_tokenizer", "GPT", "ModelConfig", "SampleConfig", "generate",
           "load_checkpoint", "save_checkpoint"]


def load_checkpoint(spec: str | Path, device: str = "cpu"):
    """(model in eval mode, tokenizer, meta) from a checkpoint directory (OUT, OUT/best or OUT/last) or a Hugging
    Face Hub repo id USER/NAME[@REV], downloaded through the HF cache (llm.checkpoint reads local directories
    only; Hub ids are llm.hub's)."""
    from llm import checkpoint, hub  # here, not above: `import llm` should not import huggingface_hub

    return checkpoint.load_checkpoint(hub.resolve_checkpoint(spec), device)
