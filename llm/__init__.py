"""scratchgpt: a tokenizer, a GPT, a trainer and a sampler, written from scratch in PyTorch."""

from llm.checkpoint import load_checkpoint, save_checkpoint
from llm.model import GPT, ModelConfig
from llm.sample import SampleConfig, generate
from llm.tokenizer import CharTokenizer, Tokenizer, load_tokenizer

__all__ = ["Tokenizer", "CharTokenizer", "load_tokenizer", "GPT", "ModelConfig", "SampleConfig", "generate",
           "load_checkpoint", "save_checkpoint"]
