"""Jinja templates, one family (folder) per target, shipped as package data."""

from pathlib import Path

TEMPLATE_DIR = Path(__file__).parent
