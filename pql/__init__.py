"""Parallel Q-Learning (Li et al., ICML 2023): a tested harness to train, ablate and report on it."""
