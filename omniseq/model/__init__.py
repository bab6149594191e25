"""The omniseq model: a Llama-style decoder over the merged vocabulary (docs/model.md).

from omniseq.model import ModelConfig, Transformer, model_config
model = Transformer.build(model_config("tiny", vocab_size=layout.size))
out = model(**batch)              # batch contract: input_ids, labels, position_ids, document_ids, ...
out.loss.backward()
"""

from omniseq.model.attention import AttentionBackend, attention, prepare_mask
from omniseq.model.config import SIZES, ModelConfig, model_config
from omniseq.model.kv_cache import KVCache
from omniseq.model.loss import LossOutput, chunked_cross_entropy
from omniseq.model.transformer import Transformer

__all__ = [
    "SIZES",
    "AttentionBackend",
    "KVCache",
    "LossOutput",
    "ModelConfig",
    "Transformer",
    "attention",
    "chunked_cross_entropy",
    "model_config",
    "prepare_mask",
]
