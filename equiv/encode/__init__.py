"""Networks as solver-neutral LP/MILP models."""
