"""The toy world's identification features, added to the production registry by the callers that
run on the toy world (the evaluation rules' scripts, the toy config's startup check)."""

from __future__ import annotations

from brainldm.evaluation.extractors import FeatureExtractor, register_extractors


def toy_semantic(**options) -> FeatureExtractor:
    """Identification feature ``toy_semantic``: the shipped attribute classifier's probabilities
    (option ``toy_weights``: a toy weights folder; default the shipped one)."""
    from brainldm.toy.semantic import ToySemanticExtractor  # torch: only when one is built

    return ToySemanticExtractor(options.get("toy_weights"))


def register_toy_extractors() -> None:
    """Make ``toy_semantic`` a configurable identification feature and two-way metric."""
    register_extractors({"toy_semantic": toy_semantic})
