"""Errors that reach users as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class ImagesynthError(ValueError):
    """Bad input or a state the user can fix: the message names the value and what was expected."""


class DataError(ImagesynthError):
    """A dataset spec, folder or image that cannot be used."""


class ModelFileError(ImagesynthError):
    """A model directory or weights file that cannot be loaded safely."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> ImagesynthError:
    """Error for an unknown registry name, listing the valid ones."""
    return ImagesynthError(f"unknown {kind} {name!r}; expected one of: {', '.join(sorted(valid))}")
