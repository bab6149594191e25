"""Interleaved generation: constrained decoding, per-modality sampling, in-batch guidance, rendering.

docs/sampling.md describes the state machine, every setting and the decoder protocol.
"""

from omniseq.sample.constraints import ConstraintConfig, ConstraintError, SpanConstraints
from omniseq.sample.generate import CachelessDecoder, Decoder, GenerateConfig, generate
from omniseq.sample.guidance import combine, uncond_prompt
from omniseq.sample.sampling import GuidanceConfig, ModalitySampling, Sampler, SamplingConfig

__all__ = [
    "CachelessDecoder", "ConstraintConfig", "ConstraintError", "Decoder", "GenerateConfig",
    "GuidanceConfig", "ModalitySampling", "Sampler", "SamplingConfig", "SpanConstraints", "combine",
    "generate", "uncond_prompt",
]  # fmt: skip
