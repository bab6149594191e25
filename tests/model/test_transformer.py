"""The decoder: causality, document isolation, meta-device init, optional paths, size registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omniseq.config import ConfigError, load_config
from omniseq.model.config import SIZES, ModelConfig, model_config
from omniseq.model.transformer import Transformer, positions_from_documents

V = 50
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer.build(model_config("tiny", V, **overrides)).eval()


def test_no_token_sees_the_future():
    model = tiny()
    ids = torch.randint(0, V, (2, 20))
    changed = ids.clone()
    changed[:, 12] = (changed[:, 12] + 1) % V
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=0)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-4  # the perturbation is visible from t=12 on


def test_no_token_sees_another_document():
    model = tiny()
    docs = torch.tensor([[0] * 8 + [1] * 7 + [2] * 5], dtype=torch.int32)
    pos = positions_from_documents(docs)
    ids = torch.randint(0, V, (1, 20))
    changed = ids.clone()
    changed[0, 2] = (changed[0, 2] + 1) % V  # inside document 0
    with torch.no_grad():
        a = model(ids, position_ids=pos, document_ids=docs)
        b = model(changed, position_ids=pos, document_ids=docs)
        alone = model(ids[:, 8:15])  # document 1 on its own, positions from 0
    torch.testing.assert_close(a[:, 8:], b[:, 8:], rtol=0, atol=0)
    assert (a[:, 2:8] - b[:, 2:8]).abs().max() > 1e-4
    torch.testing.assert_close(a[:, 8:15], alone, rtol=1e-5, atol=1e-5)


def test_positions_restart_at_every_document():
    docs = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    assert positions_from_documents(docs).tolist() == [[0, 1, 2, 0, 1, 0], [0, 0, 1, 2, 3, 4]]


def test_meta_device_init_gives_finite_outputs_and_loss():
    with torch.device("meta"):
        model = Transformer(model_config("tiny", V, tie_embeddings=False))
    assert model.embed.weight.is_meta
    model.to_empty(device="cpu")
    model.init_weights()
    ids = torch.randint(0, V, (2, 16))
    out = model(ids, labels=ids)
    assert torch.isfinite(model(ids)).all() and torch.isfinite(out.loss)
    assert abs(out.loss.item() - torch.log(torch.tensor(float(V))).item()) < 0.5  # near-uniform at init


def test_qk_norm_and_z_loss_paths_train():
    model = tiny(qk_norm=True, z_loss=1e-2)
    assert model.layers[0].attn.q_norm is not None
    ids = torch.randint(0, V, (2, 16))
    out = model(ids, labels=ids)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.layers[0].attn.q_norm.weight.grad.abs().sum() > 0
    n = out.count.sum()
    torch.testing.assert_close(out.loss, out.weighted_sum / n + 1e-2 * out.z_sum / n)


def test_activation_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, V, (2, 16))
    grads = []
    for ckpt in (False, True):
        model = tiny(activation_checkpointing=ckpt).train()
        model(ids, labels=ids).loss.backward()
        grads.append(model.layers[0].attn.wq.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("keep_mib, projections", [(256.0, 1), (0.0, 2)])
def test_small_logits_are_kept_for_backward_and_large_ones_recomputed(monkeypatch, keep_mib, projections):
    """2 x 16 tokens x 50 ids of fp32 logits fit in 256 MiB: the lm_head runs once; at 0 MiB backward
    recomputes it (the chunked loss' checkpoint), and the gradients are the same either way."""
    import omniseq.model.loss as loss

    calls = []

    def counted(*args):
        calls.append(1)
        return chunk_ce(*args)

    chunk_ce = loss._chunk_ce
    monkeypatch.setattr(loss, "_chunk_ce", counted)
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    model = tiny(loss_keep_logits_mib=keep_mib).train()
    model(ids, labels=ids).loss.backward()
    assert len(calls) == projections
    reference = tiny(loss_keep_logits_mib=0.0 if projections == 1 else 256.0).train()  # the other path
    reference(ids, labels=ids).loss.backward()
    torch.testing.assert_close(model.layers[0].attn.wq.weight.grad, reference.layers[0].attn.wq.weight.grad)


def test_dropout_is_random_in_training_and_off_in_eval():
    ids = torch.randint(0, V, (2, 16))
    plain, dropped = tiny(), tiny(dropout=0.5)  # same seed: the same weights
    with torch.no_grad():
        torch.testing.assert_close(dropped(ids), plain(ids), rtol=0, atol=0)  # eval: dropout is off
        dropped.train()
        a, b = dropped(ids), dropped(ids)
    assert (a - b).abs().max() > 1e-3  # two draws of the masks
    assert (a - plain(ids)).abs().max() > 1e-3


def test_dropout_masks_replay_under_activation_checkpointing():
    ids = torch.randint(0, V, (2, 16))
    grads = []
    for ckpt in (False, True):
        model = tiny(activation_checkpointing=ckpt, dropout=0.3).train()
        torch.manual_seed(1)
        model(ids, labels=ids).loss.backward()
        grads.append(model.layers[0].attn.wq.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_forward_loss_equals_loss_of_returned_logits():
    model = tiny()
    ids = torch.randint(0, V, (2, 16))
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100
    with torch.no_grad():
        logits = model(ids)
        out = model(ids, labels=labels)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, V), labels.reshape(-1))
    torch.testing.assert_close(out.loss, ref)


@pytest.mark.parametrize("size", list(SIZES))
def test_every_size_has_a_yaml_that_loads(size):
    cfg = load_config(ModelConfig, CONFIGS / f"{size}.yaml", ["vocab_size=1000"])
    assert cfg == model_config(size, 1000)


def test_bad_config_names_the_key():
    with pytest.raises(ConfigError, match="n_heads"):
        model_config("tiny", V, n_heads=4, n_kv_heads=3)
    with pytest.raises(ConfigError, match="loss_weights"):
        model_config("tiny", V, loss_weights={"smell": 1.0})
    with pytest.raises(ConfigError, match="attention"):
        model_config("tiny", V, attention="xformers")
    with pytest.raises(ConfigError, match="dropout"):
        model_config("tiny", V, dropout=1.0)
    with pytest.raises(ConfigError, match="unknown model size"):
        model_config("13B", V)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["flex", "flash_varlen"])
def test_gpu_packed_training_step_matches_sdpa_masked(backend):
    from omniseq.model.attention import AttentionBackend

    try:
        AttentionBackend(backend).assert_supported("cuda")
    except RuntimeError as e:
        pytest.skip(str(e))
    docs = torch.tensor([[0] * 100 + [1] * 100 + [2] * 56] * 2, dtype=torch.int32, device="cuda")
    ids = torch.randint(0, V, (2, 256), device="cuda")
    losses = []
    for name in (backend, "sdpa_masked"):
        torch.manual_seed(0)
        model = Transformer.build(model_config("tiny", V, attention=name), "cuda", torch.bfloat16)
        out = model(ids, document_ids=docs, labels=ids)
        out.loss.backward()
        losses.append((out.loss.item(), model.layers[0].attn.wq.weight.grad.float()))
    assert abs(losses[0][0] - losses[1][0]) < 1e-2
    torch.testing.assert_close(losses[0][1], losses[1][1], atol=5e-2, rtol=5e-2)


def test_parameter_count_matches_the_module():
    for tied in (True, False):
        cfg = model_config("tiny", V, tie_embeddings=tied, qk_norm=True)
        model = Transformer.build(cfg)
        assert cfg.num_params() == sum(p.numel() for p in model.parameters())
        assert cfg.num_params(embedding=False) == cfg.num_params() - (0 if tied else V * cfg.dim)


def test_rope_tables_stay_fp32_when_the_weights_are_cast():
    """Training keeps the tables fp32 (DeepSpeed casts parameters only): a bf16 model for sampling must too."""
    from omniseq.model.transformer import rope_tables

    model = tiny()
    exact = rope_tables(model.cfg)
    built = Transformer.build(model.cfg, dtype=torch.bfloat16)
    loaded = Transformer.from_state_dict(model.cfg, dict(model.state_dict()), dtype=torch.bfloat16)
    for m in (model.to(torch.bfloat16), built, loaded, tiny().half()):
        assert m.embed.weight.dtype in (torch.bfloat16, torch.float16)
        for table, want in zip((m.rope_cos, m.rope_sin), exact):
            assert table.dtype == torch.float32
            torch.testing.assert_close(table, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "keys, key",
    [
        ({"n_layers": -3}, "n_layers"),
        ({"n_layers": 0}, "n_layers"),
        ({"n_kv_heads": -2}, "n_kv_heads"),
        ({"ffn_multiple_of": 0}, "ffn_multiple_of"),
        ({"loss_weights": {"image": -1.0}}, "loss_weights"),
    ],
)
def test_model_keys_that_would_train_silently_wrong_or_crash_later_are_refused(keys, key):
    with pytest.raises(ConfigError, match=key):
        model_config("tiny", 50, **keys)
