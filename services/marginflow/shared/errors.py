"""Errors shared by every layer (pure: no I/O imports)."""

from __future__ import annotations


class Rejected(ValueError):
    """An input that cannot be accepted. ``code`` is short and machine-readable
    (it becomes the dead-letter reason code and a metric label); ``detail`` explains it."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
