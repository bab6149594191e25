"""Training-step throughput: forward + backward + AdamW step on random packed rows; prints ONE JSON line.

    python bench/train_step.py --size 1B --seq-len 2048 --batch 8 --docs-per-row 4 --compile
    python bench/train_step.py --size tiny --seq-len 256 --batch 4 --causal       # plain causal rows
    python bench/train_step.py --size demo --vocab 4577 --seq-len 512 --set dim=192 loss_keep_logits_mib=0

Packed rows (default) split every row into --docs-per-row documents of random lengths and pass
document_ids, so the document-causal backend runs (flash_varlen / flex on a GPU, sdpa_masked on the CPU);
--causal passes no document_ids (sdpa_causal). FLOPs per token are ModelConfig.flops_per_token (nanoGPT /
PaLM: 6 * N + 12 * n_layers * n_heads * head_dim * seq_len, N without the input embedding; the attention
term counts the full score matrix for both modes, so packed and causal runs compare on the same work).
MFU is against the device's dense bf16 peak (989 TFLOP/s for H100/H200 SXM); on the CPU only tokens/s
and achieved TFLOP/s are reported.
On a shared, oversubscribed CPU set OMP_NUM_THREADS=1: spinning OpenMP threads made runs on the
2-core dev machine 10-100x slower and the numbers meaningless.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import yaml

from omniseq.model.config import model_config
from omniseq.model.transformer import Transformer
from omniseq.train.logger import device_peak_tflops


def packed_batch(batch: int, seq_len: int, docs: int, vocab: int, device, generator) -> dict:
    """Random rows cut into `docs` documents at random boundaries, in the batch contract's layout."""
    ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    document_ids = torch.zeros(batch, seq_len, dtype=torch.int32)
    for row in range(batch):
        cuts = torch.randperm(seq_len - 1, generator=generator)[: docs - 1] + 1
        for cut in cuts.tolist():
            document_ids[row, cut:] += 1
    labels = torch.roll(ids, -1, dims=1)
    last_of_doc = torch.ones(batch, seq_len, dtype=torch.bool)
    last_of_doc[:, :-1] = document_ids[:, 1:] != document_ids[:, :-1]
    labels[last_of_doc] = -100
    out = dict(input_ids=ids, labels=labels, document_ids=document_ids)
    return {k: v.to(device) for k, v in out.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny")
    p.add_argument("--vocab", type=int, default=32768, help="vocabulary size (a layout's size)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--docs-per-row", type=int, default=4)
    p.add_argument("--causal", action="store_true", help="plain causal rows: no document_ids")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", default=None, help="bfloat16 (GPU default) or float32 (CPU default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--attention", default="auto", help="attention backend (auto, flash_varlen, flex, sdpa_masked)")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="ModelConfig keys (docs/model.md)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    keys = dict(
        max_seq_len=max(args.seq_len, 16),
        attention="auto" if args.causal else args.attention,
        activation_checkpointing=args.activation_checkpointing,
    )
    cfg = model_config(args.size, args.vocab, **{**keys, **model_keys(args.set)})
    torch.manual_seed(0)
    model = Transformer.build(cfg, device=device, dtype=dtype).train()
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    batch = packed_batch(args.batch, args.seq_len, 1 if args.causal else args.docs_per_row, args.vocab, device, gen)
    if args.causal:
        batch.pop("document_ids")

    def step() -> torch.Tensor:
        out = step_model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps

    tokens = args.batch * args.seq_len
    tflops = cfg.flops_per_token(args.seq_len) * tokens / seconds / 1e12
    peak = device_peak_tflops(device)
    result = {
        "bench": "train_step",
        "size": args.size,
        "params": cfg.num_params(),
        "vocab": args.vocab,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "mode": "causal" if args.causal else f"packed_{args.docs_per_row}_docs",
        "attention": _backend_name(model, batch),
        "dtype": str(dtype).removeprefix("torch."),
        "compile": args.compile,
        "set": args.set,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "step_s": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds, 1),
        "tflops": round(tflops, 4),
        "mfu": round(tflops / peak, 4) if peak else None,
        "peak_tflops": peak,
        "loss": round(float(loss), 4),
    }
    print(json.dumps(result))
    return result


def model_keys(pairs: list[str]) -> dict:
    """`key=value` strings -> {key: YAML value}."""
    bad = [p for p in pairs if not p.partition("=")[2].strip()]
    if bad:
        raise SystemExit(f"--set {bad[0]!r}: expected key=value with a value")
    return {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in pairs)}


def _backend_name(model: Transformer, batch: dict) -> str:
    from omniseq.model.attention import resolve_backend

    docs = batch.get("document_ids")
    weight = model.embed.weight
    return resolve_backend(model.cfg.attention, weight.device, weight.dtype, docs is not None).value


if __name__ == "__main__":
    main()
