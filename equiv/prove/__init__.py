"""Proofs: neuron stability, equivalence of two networks, falsification."""
