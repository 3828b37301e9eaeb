"""The .attn grammar, shipped as package data (`attnspec.grammar`)."""

from pathlib import Path

GRAMMAR_PATH = Path(__file__).with_name("attn.lark")
