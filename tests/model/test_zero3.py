"""The model trains identically under DeepSpeed ZeRO-3 (parameters partitioned, gathered on use).

Guards two things that break silently under ZeRO-3: the lm_head / tied embedding is used outside its own
module by the chunked loss, and the loss output must be a dict so ZeRO-3 hooks its tensors for backward.
Runs in a subprocess: deepspeed.initialize sets process-global distributed state.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("deepspeed")

SCRIPT = r"""
import os, socket, sys, torch
with socket.socket() as s:  # a free port: other test processes may be running distributed jobs too
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
import deepspeed
from omniseq.model.config import model_config
from omniseq.model.transformer import Transformer

tied = sys.argv[1] == "tied"
cfg = model_config("tiny", 100, tie_embeddings=tied, loss_chunk_tokens=16, loss_keep_logits_mib=float(sys.argv[2]))
torch.manual_seed(0)
ref = Transformer.build(cfg)
state = {k: v.clone() for k, v in ref.state_dict().items()}
ids = torch.randint(0, 100, (2, 32))
opt = torch.optim.SGD(ref.parameters(), lr=0.5)
expected = []
for _ in range(2):
    loss = ref(ids, labels=ids).loss
    loss.backward(); opt.step(); opt.zero_grad()
    expected.append(loss.item())
model = Transformer.build(cfg)
model.load_state_dict(state)
# gradient_clipping: DeepSpeed defaults it to 1.0, which plain PyTorch does not do
config = {"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 0.0,
          "zero_allow_untested_optimizer": True,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
sgd = torch.optim.SGD(model.parameters(), lr=0.5)
engine, *_ = deepspeed.initialize(model=model, optimizer=sgd, config=config)
got = []
for _ in range(2):
    out = engine(ids, labels=ids)
    engine.backward(out.loss); engine.step()
    got.append(out.loss.item())
print("LOSSES", expected, got)
assert all(abs(a - b) < 1e-5 for a, b in zip(expected, got)), (expected, got)
"""


@pytest.mark.slow
# 0 MiB: the loss recomputes each chunk's logits in backward (a large vocabulary); 256: they are kept
@pytest.mark.parametrize("embeddings, keep_logits_mib", [("tied", 256), ("untied", 256), ("tied", 0)])
def test_zero3_training_matches_plain_pytorch(embeddings, keep_logits_mib, tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, embeddings, str(keep_logits_mib)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
