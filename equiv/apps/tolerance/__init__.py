"""Simplification up to a tolerance: neurons replaced by constants or affine maps, merged, each set of
replacements accepted only under a sound bound on the output change, the written model certified by `check`."""
