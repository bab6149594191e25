"""Data: corpora -> WebDataset shards -> a streaming, token-share mixer and a document packer.

docs/data.md describes the formats and the design; `build_train_stream` is the trainer's entry point.
"""
