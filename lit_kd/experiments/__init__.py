"""Experiments: objective × τ × seed sweeps and the paper-style report."""
