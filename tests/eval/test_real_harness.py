"""The real-media harness (omniseq.eval.real) and the recipes that drive it (issue 10)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from omniseq.config import load_config
from omniseq.document import DocumentCodec, Segment
from omniseq.eval.harness import Item
from omniseq.eval.real import (
    budget,
    chance,
    chance_tail,
    forced,
    normalise,
    rank_candidates,
    split_task,
    word_accuracy,
)
from omniseq.recipe import SHARD_SETS, STAGES, RecipeConfig
from omniseq.train.config import StageConfig

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = ["grinning face", "red heart", "thumbs up", "rocket"]


def test_task_names_split_into_source_and_target():
    assert split_task("digit_speech2digit_image") == ("digit_speech", "digit_image")
    assert split_task("emoji_video2text") == ("emoji_video", "text")


def test_label_normalisation_and_word_accuracy():
    assert normalise("  Seven! ") == normalise("seven") == "seven"
    assert word_accuracy("the cat sat", "The cat sat.") == 1.0
    assert word_accuracy("the cat", "the cat sat on") == 0.5  # two deletions in four words
    assert word_accuracy("a b c d e f g h", "x") == 0.0  # floored, never negative


def test_chance_rates(tiny_layout):
    item = Item("emoji2text", "emoji", [], {"candidates": CANDIDATES, "label": "rocket"})
    assert chance(item, []) == 0.25
    assert chance(Item("text2digit_image", "digit_image", [], {"label": "seven"}), []) == 0.1
    # LJ: the expected word accuracy of a training sentence drawn without listening
    lj = Item("speech2text", "speech", [], {"label": "the first book printed"})
    assert chance(lj, ["the first book printed", "a cat"]) == pytest.approx((1.0 + 0.0) / 2)
    assert chance(lj, []) == 0.0


def test_chained_answers_are_not_forced_and_get_room_for_the_label(tiny_layout):
    image = tiny_layout.codebook("image").tokens_per_frame() + 4
    drawn, said = Segment("image", media="x.png", role="assistant"), Segment("text", text="seven. ", role="assistant")
    direct = Item("text2digit_image", "digit_image", [], {}, [drawn])
    chained = Item("digit_speech2digit_image", "digit_speech", [], {}, [said, drawn])
    assert (forced(direct), budget(direct, tiny_layout, 32)) == ("image", image)
    assert (forced(chained), budget(chained, tiny_layout, 32)) == (None, 32 + image)
    assert forced(Item("digit_image2text", "digit_image", [], {}, [said])) is None


def test_chance_tail_is_the_binomial_tail():
    assert chance_tail([1.0] * 2, 0.1) == pytest.approx(0.01)  # both hit: 0.1^2
    assert chance_tail([0.0] * 40, 0.1) == pytest.approx(1.0)  # no hits: chance does at least as well
    assert chance_tail([1.0] * 4 + [0.0] * 36, 0.1) == pytest.approx(0.5769, abs=1e-4)  # 4 of 40: what chance expects
    assert chance_tail([1.0] * 10 + [0.0] * 30, 0.1) < 0.01  # 25%: clearly above
    assert chance_tail([0.5, 1.0], 0.1) is None and chance_tail([1.0], 0.0) is None  # graded (LJ), chance 0


class PlantedModel:
    """Logits that favour the token ids of one answer text: the ranking must pick that answer."""

    def __init__(self, codec: DocumentCodec, favoured: str):
        self.V = codec.layout.size
        self.bonus = torch.zeros(self.V)
        self.bonus[torch.as_tensor(codec.text.encode(favoured))] = 8.0
        self.calls = 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.bonus.expand(*ids.shape, self.V).clone()


@pytest.mark.parametrize("favoured", CANDIDATES)
def test_rank_candidates_picks_the_most_likely_answer(tiny_layout, text_tokenizer, favoured):
    codec = DocumentCodec(tiny_layout, text_tokenizer)
    session = SimpleNamespace(codec=codec, model=PlantedModel(codec, favoured), device=torch.device("cpu"))
    item = Item("emoji2text", "emoji", [Segment("text", text="what emoji is this?", role="user")],
                {"candidates": CANDIDATES, "label": favoured})  # fmt: skip
    assert CANDIDATES[rank_candidates(session, item)] == favoured


def test_rank_candidates_batched_scores_equal_one_by_one(tiny_layout, text_tokenizer):
    """Right-padding the candidates into one batch must not change any candidate's score: compare with a
    real (random) transformer scoring each candidate alone."""
    from omniseq.model.config import model_config
    from omniseq.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer.build(model_config("tiny", tiny_layout.size)).eval()
    codec = DocumentCodec(tiny_layout, text_tokenizer)
    prompt = [Segment("text", text="what emoji is this?", role="user")]
    session = SimpleNamespace(codec=codec, model=model, device=torch.device("cpu"))
    alone = []
    for cand in CANDIDATES:
        one = Item("emoji2text", "emoji", prompt, {"candidates": [cand, cand], "label": cand})
        full = codec.encode([*prompt, Segment("text", text=cand, role="assistant")]).ids[:-1]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.as_tensor(full[None], dtype=torch.long)), -1)[0]
        n = len(full) - len(codec.encode(prompt).ids)  # answer tokens after <|assistant|>
        alone.append(float(logp[torch.arange(len(full) - n - 1, len(full) - 1), torch.as_tensor(full[-n:])].sum()))
        assert rank_candidates(session, one) == 0
    item = Item("emoji2text", "emoji", prompt, {"candidates": CANDIDATES, "label": CANDIDATES[0]})
    assert rank_candidates(session, item) == int(np.argmax(alone))


@pytest.mark.parametrize("recipe", ["real_small_cpu.yaml", "real_small.yaml"])
def test_real_recipes_load_and_every_stage_config_accepts_their_overrides(recipe):
    cfg = load_config(RecipeConfig, REPO / "configs" / "recipes" / recipe)
    assert cfg.world == "real" and set(cfg.per_stage) <= set(STAGES)
    for name in SHARD_SETS:
        assert (REPO / cfg.shard_configs.format(name=name)).is_file(), name
    for tok in (cfg.image_tokenizer, cfg.audio_tokenizer):
        assert (REPO / tok).is_file(), tok
    for step, stage in STAGES.items():
        overrides = ["root=runs/x", *cfg.stage_overrides, *cfg.per_stage.get(step, [])]
        loaded = load_config(StageConfig, REPO / "configs" / "stages" / f"{stage}.yaml", overrides)
        assert loaded.steps > 0 and loaded.data.seq_len == int(
            next(o for o in cfg.stage_overrides if o.startswith("data.seq_len=")).split("=")[1]
        )
