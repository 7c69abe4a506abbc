"""What the command lines share (train_cli.py, python -m llm.generate, python -m llm.hub): one-line usage
errors, and the library's field names spelled as flags."""

from __future__ import annotations

import argparse

from llm.config import FieldNames


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a usage error on one line (not the usage block and then the error)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def flag(field: str) -> str:
    """block_size -> --block-size."""
    return "--" + field.replace("_", "-")


def as_flags(error: BaseException) -> str:
    """An error's one line, with the settings it names spelled as this command line's flags."""
    return error.render(flag) if isinstance(error, FieldNames) else str(error)
