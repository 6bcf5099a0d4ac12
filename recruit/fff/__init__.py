"""Fast feedforward (FFF) layers: UltraFastBERT's conditional feed-forward, its conversions and kernels.

``fff.py`` holds the layer and its slow reference; ``convert.py`` puts FFFs into (or MLPs out of) a GPT and
distils a dense MLP into an FFF; ``encoder.py`` does both for Hugging Face BERT-style encoders and ``decoder.py``
for Hugging Face decoders with an ``mlp`` per block (GPT-2, Llama and kin), saving and loading them with their FFFs;
``kernels/`` holds the fused CPU and Triton inference kernels, which the layer uses in eval mode when they are
importable.
"""

from recruit.fff.convert import DistillReport, ZeroFF, drop_mlps, from_dense, record_mlp_inputs, replace_mlps
from recruit.fff.fff import FastFeedForward, FFFConfig, HardeningLoss

__all__ = [
    "DistillReport",
    "FFFConfig",
    "FastFeedForward",
    "HardeningLoss",
    "ZeroFF",
    "drop_mlps",
    "from_dense",
    "record_mlp_inputs",
    "replace_mlps",
]
