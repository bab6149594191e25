"""omniseq: train unified discrete-token any-to-any models.

The package reads as the pipeline: tokenizers -> data -> model -> train -> sample -> eval, around
one merged vocabulary (`omniseq.vocab`) and one document format (`omniseq.document`).
"""

__version__ = "0.1.0"
