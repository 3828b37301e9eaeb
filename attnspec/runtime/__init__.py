"""Run-time support: loading and caching generated modules."""
