"""Ablation studies: spec -> job matrix -> launcher -> results store."""
