"""How every message counts things: "1 row", "2 rows", "1,234 streams"."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """`count` with thousands separators and `noun` in the number it takes (regular plurals:
    the nouns our messages count are rows, streams, days, files, keys and versions)."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"
