"""The real transformer plugs into the generation loop as a `Decoder` (its static-KV-cache methods match
the protocol): cached generation equals cacheless generation token for token, guidance rows included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniseq.config import ConfigError
from omniseq.document import DocumentCodec
from omniseq.sample import CachelessDecoder, ConstraintConfig, GenerateConfig, generate
from omniseq.sample.run import SampleConfig, SamplingSession
from omniseq.vocab import CodebookSpec, VocabLayout

model_mod = pytest.importorskip("omniseq.model")


def test_transformer_is_a_decoder_and_cache_matches_recompute(tiny_layout, text_tokenizer):
    L = tiny_layout
    torch.manual_seed(0)
    model = model_mod.Transformer(model_mod.ModelConfig(vocab_size=L.size, max_seq_len=128)).eval()
    bos = L.id("<bos>")
    prompts = [[bos, *text_tokenizer.encode("a red cat")], [bos], [bos, L.id("<|image|>")]]
    cfg = GenerateConfig(
        max_new_tokens=30,
        progress=False,
        check_constraints=True,
        constraints=ConstraintConfig(audio_max_frames=4),
    )
    force = [None, "audio", None]
    cached = generate(model, L, prompts, cfg, force=force)
    recomputed = generate(CachelessDecoder(lambda ids: model(ids).float()), L, prompts, cfg, force=force)
    for p, a, b in zip(prompts, cached, recomputed):
        assert np.array_equal(a, b)
        L.parse(np.concatenate([p, a]))


def long_and_short(L, text_tokenizer) -> list[np.ndarray]:
    bos = L.id("<bos>")
    return [np.array([bos, *text_tokenizer.encode("say hi")]), np.array([bos] * 100)]


def test_each_row_needs_only_its_own_prompt_plus_budget_in_the_cache(tiny_layout, text_tokenizer):
    """Rows have their own positions: a short prompt with a long budget beside a long prompt with a short one
    fits a 128-position model (the cache is max over rows of prompt + budget, not longest prompt + largest
    budget), guidance twins included, and each row is what it would be alone."""
    L = tiny_layout
    torch.manual_seed(0)
    model = model_mod.Transformer(model_mod.ModelConfig(vocab_size=L.size, max_seq_len=128)).eval()
    prompts, budgets = long_and_short(L, text_tokenizer), [70, 10]
    cfg = GenerateConfig(progress=False, check_constraints=True, constraints=ConstraintConfig(audio_max_frames=4))
    force, seeds = ["audio", None], [5, 6]
    both = generate(model, L, prompts, cfg, budgets=budgets, force=force, seeds=seeds)
    for b in range(2):
        row = slice(b, b + 1)
        alone = generate(model, L, prompts[row], cfg, budgets=budgets[row], force=force[row], seeds=seeds[row])
        assert np.array_equal(both[b], alone[0]), b
    assert len(both[0]) > 10  # the short row used more budget than the long one had


def session(L, text_tokenizer, **generate_cfg) -> SamplingSession:
    """A SamplingSession around a random 128-position model (no export on disk), one prompt per batch."""
    s = SamplingSession.__new__(SamplingSession)
    s.cfg = SampleConfig(batch_size=1, generate=GenerateConfig(progress=False, **generate_cfg))
    torch.manual_seed(0)
    s.model = model_mod.Transformer(model_mod.ModelConfig(vocab_size=L.size, max_seq_len=128)).eval()
    s.layout, s.codec, s.device = L, DocumentCodec(L, text_tokenizer), torch.device("cpu")
    return s


def test_a_long_prompt_does_not_cut_the_other_rows_budgets(tiny_layout, text_tokenizer):
    """generate_ids caps each row by the context its own prompt leaves: a 100-token prompt elsewhere in the list
    leaves a forced 64-token audio answer (20 frames x 3 layers + 4) its whole budget."""
    L = tiny_layout
    s = session(L, text_tokenizer, constraints=ConstraintConfig(audio_min_frames=20, audio_max_frames=20))
    short, long = long_and_short(L, text_tokenizer)
    alone = s.generate_ids([short], [70], ["audio"])
    both = s.generate_ids([short, long], [70, 10], ["audio", None])
    assert len(both[0]) >= 64 and np.array_equal(both[0], alone[0])
    assert s.row_budgets([short, long], None) == [128 - len(short), 28]
    assert s.row_budgets([short, long], [70, 10]) == [70, 10]
    with pytest.raises(ConfigError, match="prompt 1 has 128 tokens; the model's context is 128"):
        s.row_budgets([short, np.ones(128, dtype=np.int64)], None)


def test_a_refused_budget_names_the_prompt_not_its_row_in_the_batch(tiny_layout, text_tokenizer):
    """One prompt per batch: the second prompt is row 0 of its batch, and the error still names prompt 1."""
    L = tiny_layout
    s = session(L, text_tokenizer)
    short, _ = long_and_short(L, text_tokenizer)
    with pytest.raises(ValueError, match="prompt 1 is forced to answer with image"):
        s.generate_ids([short, short], [64, 3], [None, "image"])
    images_only = VocabLayout.build(text_tokenizer.spec(), [CodebookSpec("image", "test", 16, grid=(2, 3))])
    s = session(images_only, text_tokenizer)
    with pytest.raises(ConfigError, match=r"prompt 1: force 'audio', but the checkpoint has \['image'\]"):
        s.generate_ids([short, short], [8, 8], [None, "audio"])


def test_a_compiled_session_rounds_its_cache_to_a_few_shapes_with_the_same_tokens(tiny_layout, text_tokenizer):
    """With compile on, each batch's cache is its need rounded up to a power of two (at most the context), so
    the compiled step meets a few shapes rather than one per batch; the extra slots change no token."""
    L = tiny_layout
    s = session(L, text_tokenizer)
    short, long = long_and_short(L, text_tokenizer)
    plain = s.generate_ids([short, long, short], [9, 5, 20])
    sizes, setup = [], s.model.setup_cache
    s.model.setup_cache = lambda b, n, *a: (sizes.append(n), setup(b, n, *a))[1]
    s.cfg.compile = True  # the flag only: this test checks the cache shapes, not torch.compile
    rounded = s.generate_ids([short, long, short], [9, 5, 20])
    assert all(np.array_equal(a, b) for a, b in zip(plain, rounded))
    need = [len(short) + 9, len(long) + 5, len(short) + 20]
    assert sizes == [min(1 << (n - 1).bit_length(), 128) for n in need]
