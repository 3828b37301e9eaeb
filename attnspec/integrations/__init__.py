"""attnspec specs inside other libraries' models (each integration imports its library only when used)."""
