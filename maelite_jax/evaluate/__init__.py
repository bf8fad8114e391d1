"""Evaluation: top-1/top-5 under padding, frozen features, k-NN, linear probe, few-shot, sweep."""
