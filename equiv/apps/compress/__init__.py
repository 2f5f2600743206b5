"""`equiv compress`: propose compressed models (exact simplification, neuron pruning, ALDS low rank, weight
rounding), certify each against the original with `equiv check`, and hand back the smallest proved one."""

from .candidate import Candidate, Size, size_of
from .search import CompressOptions, CompressResult, Record, Target, compress

__all__ = ["Candidate", "CompressOptions", "CompressResult", "Record", "Size", "Target", "compress", "size_of"]
