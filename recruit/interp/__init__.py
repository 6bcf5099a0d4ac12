"""Interpretability tools: which neurons fire, for what, and how they connect."""

from recruit.interp.bdh import (
    NeuronStat,
    activation_density,
    concept_neurons,
    language_chunks,
    language_neurons,
    layer_activations,
    sentence_features,
)
from recruit.interp.graph import GraphDegrees, neuron_graph_degrees
from recruit.interp.stats import MannWhitney, mann_whitney, rankdata

__all__ = [
    "GraphDegrees",
    "MannWhitney",
    "NeuronStat",
    "activation_density",
    "concept_neurons",
    "language_chunks",
    "language_neurons",
    "layer_activations",
    "mann_whitney",
    "neuron_graph_degrees",
    "rankdata",
    "sentence_features",
]
