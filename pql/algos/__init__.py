"""Algorithms: what PQL and PQL-D compute differently (the critic's output and loss)."""
