"""The repository's root, where tests find its files and run its commands."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
