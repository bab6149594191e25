"""KV-cache decode throughput: tokens/s at batch 1 and 16, eager and compiled, with MBU; and the time to
generate one 256-code image span through the sampler (constraints, sampling) with and without in-batch
classifier-free guidance; ONE JSON line.

    python bench/decode.py --size 1B --prompt-len 128 --new-tokens 256           # on a GPU
    python bench/decode.py --size tiny --vocab 2000 --new-tokens 32 --no-compile  # CPU smoke run

Each configuration prefills random prompts, then times `decode_step` (greedy argmax kept on the device, no
host sync per token). MBU (memory-bandwidth utilisation, gpt-fast's GB/s) counts the bytes one step must
read: all weights plus the KV cache up to the current position, averaged over the run, against the
device's HBM bandwidth (H200 4.8 TB/s, H100 SXM 3.35 TB/s); null on the CPU.
On a shared, oversubscribed CPU set OMP_NUM_THREADS=1: spinning OpenMP threads made runs on the
2-core dev machine 10-100x slower and the numbers meaningless.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from omniseq.model.config import model_config
from omniseq.model.transformer import Transformer

PEAK_BANDWIDTH_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0}


def device_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in PEAK_BANDWIDTH_GBS.items() if key in name), None)


def run_one(model: Transformer, batch: int, prompt_len: int, new_tokens: int, compiled: bool, device) -> dict:
    cfg = model.cfg
    model.setup_cache(batch, prompt_len + new_tokens)
    step = torch.compile(model.decode_step, mode="reduce-overhead", fullgraph=True) if compiled else model.decode_step
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    prompts = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device=device)

    def generate(n: int) -> None:
        model.reset_cache()
        logits = model.prefill(prompts)
        positions = torch.full((batch,), prompt_len, device=device)
        for _ in range(n):
            nxt = logits.argmax(-1, keepdim=True)
            logits = step(nxt, positions)
            positions = positions + 1

    generate(min(new_tokens, 4))  # warm-up: compiles / captures the graph
    sync()
    start = time.perf_counter()
    generate(new_tokens)
    sync()
    seconds = time.perf_counter() - start
    prefill_start = time.perf_counter()
    model.reset_cache()
    model.prefill(prompts)
    sync()
    seconds -= time.perf_counter() - prefill_start  # leave only the decode steps
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    per_pos = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * model.embed.weight.element_size() * batch
    mean_kv_bytes = per_pos * (prompt_len + new_tokens / 2)
    gbs = (weight_bytes + mean_kv_bytes) * new_tokens / seconds / 1e9
    bandwidth = device_bandwidth(device)
    return {
        "batch": batch,
        "compiled": compiled,
        "tokens_per_s": round(batch * new_tokens / seconds, 1),
        "steps_per_s": round(new_tokens / seconds, 2),
        "gb_per_s": round(gbs, 3),
        "mbu": round(gbs / bandwidth, 4) if bandwidth else None,
    }


def time_image_span(cfg_size: str, batch: int, guidance: float, device, dtype) -> dict:
    """Seconds to generate one 16x16 image span (256 codes of an 8192-code VQ, Chameleon-like) per row,
    prompt 16 text ids, the model of `cfg_size` over that vocabulary, through omniseq.sample.generate."""
    from omniseq.sample.generate import GenerateConfig, generate
    from omniseq.sample.sampling import GuidanceConfig, SamplingConfig
    from omniseq.vocab import CodebookSpec, TextSpec, VocabLayout

    layout = VocabLayout.build(TextSpec("bench", 32000), [CodebookSpec("image", "bench", 8192, grid=(16, 16))])
    model = Transformer.build(model_config(cfg_size, layout.size, max_seq_len=512), device=device, dtype=dtype).eval()
    sampling = SamplingConfig(guidance=GuidanceConfig(image=guidance))
    gen = GenerateConfig(max_new_tokens=260, progress=False, sampling=sampling)
    rng = torch.Generator().manual_seed(0)
    prompts = [[layout.id("<bos>"), *torch.randint(0, 32000, (16,), generator=rng).tolist()] for _ in range(batch)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generate(model, layout, prompts, gen, force=["image"] * batch, device=device)  # warm-up
    sync()
    start = time.perf_counter()
    out = generate(model, layout, prompts, gen, force=["image"] * batch, device=device)
    sync()
    seconds = time.perf_counter() - start
    codes = min(int(((o >= layout.code_range("image")[0]) & (o < layout.code_range("image")[1])).sum()) for o in out)
    return {"batch": batch, "guidance": guidance, "seconds": round(seconds, 3), "codes_per_row": codes}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny")
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    p.add_argument("--no-compile", action="store_true", help="only the eager decode step")
    p.add_argument("--dtype", default=None, help="bfloat16 (GPU default) or float32 (CPU default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-image-span", action="store_true", help="skip the image-span timing")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cfg = model_config(args.size, args.vocab, max_seq_len=args.prompt_len + args.new_tokens)
    torch.manual_seed(0)
    model = Transformer.build(cfg, device=device, dtype=dtype).eval()
    runs = []
    for batch in (int(b) for b in args.batches.split(",")):
        for compiled in (False,) if args.no_compile else (False, True):
            runs.append(run_one(model, batch, args.prompt_len, args.new_tokens, compiled, device))
    batches = [int(b) for b in args.batches.split(",")]
    spans = (
        [] if args.no_image_span else [time_image_span(args.size, b, g, device, dtype) for b in batches for g in (1, 3)]
    )
    result = {
        "bench": "decode",
        "size": args.size,
        "params": cfg.num_params(),
        "vocab": args.vocab,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "dtype": str(dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_gb_per_s": device_bandwidth(device),
        "runs": runs,
        "image_span": spans,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
