"""Analyses of a lowered spec: tile classification by interval arithmetic, closed-form key bands."""
