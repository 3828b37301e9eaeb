"""attnspec: write an attention variant once, compile it to verified PyTorch / Triton code."""

from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source checkout, grammar/, codegen/ and templates/ sit beside this package; an installed
# wheel maps them inside it (attnspec.grammar, attnspec.codegen, attnspec.templates).
_root = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "codegen").exists() and (_root / "codegen" / "__init__.py").exists():
    __path__.append(str(_root))  # noqa: F821 - the package's own search path

__all__ = ["AttnError", "compile", "compile_source", "load_program", "__version__"]
_LAZY = {"compile": "api", "compile_source": "api", "load_program": "api", "AttnError": "diagnostics"}


def __getattr__(name: str):
    """The API loads on first use: `import attnspec` (and the pytest plugin in attnspec.testing) stays
    cheap for programs that never compile anything."""
    if name not in _LAZY:
        raise AttributeError(f"module 'attnspec' has no attribute '{name}'")
    from importlib import import_module

    return getattr(import_module(f".{_LAZY[name]}", __name__), name)
