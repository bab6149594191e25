"""The real-media harness (omniseq.eval.real) and the recipes that drive it (issue 10)."""

from __future__ import annotations

import json
from fractions import Fraction
from math import comb
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

import omniseq.eval.real as real
from omniseq.config import ConfigError, load_config
from omniseq.document import DocumentCodec, Segment
from omniseq.eval.harness import Item
from omniseq.eval.real import (
    AUDIO_RATE,
    RealEvalConfig,
    budget,
    candidate_scores,
    chance,
    chance_tail,
    evaluate,
    forced,
    held_out_items,
    normalise,
    rank_candidates,
    reference_scores,
    score_model,
    split_task,
    word_accuracy,
)
from omniseq.recipe import SHARD_SETS, STAGES, RecipeConfig
from omniseq.sample.generate import CachelessDecoder, GenerateConfig, prompt_ids
from omniseq.sample.guidance import uncond_prompt
from omniseq.sample.run import SampleConfig, SamplingSession
from omniseq.sample.sampling import GuidanceConfig, SamplingConfig
from omniseq.tokenizers.audio_io import write_audio
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


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# runs/d1-cpu's first 60 text -> digit image items: 14 zeros, the other 46 spread over nine digits
UNBALANCED = ["zero"] * 14 + [DIGITS[1 + i % 9] for i in range(46)]


def test_chance_rates():
    emoji = Item("emoji2text", "emoji", [], {"candidates": CANDIDATES, "label": "rocket"})
    # LJ: the expected word accuracy of a training sentence drawn without listening
    lj = Item("speech2text", "speech", [], {"label": "the first book printed"})
    assert chance([emoji, lj], ["the first book printed", "a cat"]) == pytest.approx([0.25, (1.0 + 0.0) / 2])
    assert chance([lj], []) == [0.0]


def test_chance_of_a_labelled_task_is_the_share_of_its_most_common_label():
    """The best constant guess, per task among the items scored: not a flat 1 / 10."""
    digits = [Item("text2digit_image", "digit_image", [], {"label": label}) for label in UNBALANCED]
    sounds = [Item("sound2text", "sound", [], {"label": label}) for label in ["rain", "rain", "dog bark", "rooster"]]
    rates = chance([*digits, *sounds], [])
    assert rates[: len(digits)] == [14 / 60] * 60
    assert rates[len(digits) :] == [0.5] * 4
    balanced = [Item("text2digit_image", "digit_image", [], {"label": label}) for label in DIGITS * 3]
    assert chance(balanced, []) == [0.1] * 30  # ten labels in equal shares: one in ten, as before


def test_chained_answers_are_not_forced_and_get_room_for_the_label(tiny_layout):
    image = tiny_layout.codebook("image").tokens_per_frame() + 4
    drawn, said = Segment("image", media="x.png", role="assistant"), Segment("text", text="seven. ", role="assistant")
    direct = Item("text2digit_image", "digit_image", [], {}, [drawn])
    chained = Item("digit_speech2digit_image", "digit_speech", [], {}, [said, drawn])
    assert (forced(direct), budget(direct, tiny_layout, 32)) == ("image", image)
    assert (forced(chained), budget(chained, tiny_layout, 32)) == (None, 32 + image)
    assert forced(Item("digit_image2text", "digit_image", [], {}, [said])) is None


def test_a_sound_longer_than_the_kinds_budget_gets_its_length_and_a_tenth(tiny_layout, tmp_path):
    """sound_seconds=4 in the corpus: its 4 s references were cut at the fixed 2.2 s before; the default 2 s
    clips keep the 2.2 s budget they were measured with."""
    cb = tiny_layout.codebook("audio")
    budgets = {}
    for seconds in (2.0, 4.0):
        path = tmp_path / f"{seconds}.wav"
        sf.write(path, np.zeros(int(seconds * AUDIO_RATE), np.float32), AUDIO_RATE)
        item = Item("text2sound", "sound", [], {}, [Segment("audio", media=str(path), role="assistant")])
        budgets[seconds] = budget(item, tiny_layout, 32)
    per_second = cb.rate * cb.layers_in_ids
    assert budgets[2.0] == int(2.2 * per_second) + cb.layers_in_ids + 4
    assert budgets[4.0] == int(1.1 * 4.0 * per_second) + cb.layers_in_ids + 4


def test_chance_tail_of_1100_items_equals_the_exact_sum():
    """Past ~1,030 items the float sum overflowed; the exact tail in integers: sum_i C(n, i) 9^(n-i) / 10^n."""
    n, k = 1100, 125
    exact = Fraction(sum(comb(n, i) * 9 ** (n - i) for i in range(k, n + 1)), 10**n)
    p = chance_tail([1.0] * k + [0.0] * (n - k), 0.1)
    assert p == pytest.approx(float(exact), rel=1e-9) and 0.01 < p < 0.5
    assert 0 < chance_tail([1.0] * 300 + [0.0] * 800, 0.1) < 1e-50  # far above chance: a tiny p, not an error


def test_chance_tail_is_the_binomial_tail():
    assert chance_tail([1.0] * 2, 0.1) == pytest.approx(0.01)  # both hit: 0.1^2
    assert chance_tail([0.0] * 40, 0.1) == pytest.approx(1.0)  # no hits: chance does at least as well
    assert chance_tail([1.0] * 4 + [0.0] * 36, 0.1) == pytest.approx(0.5769, abs=1e-4)  # 4 of 40: what chance expects
    assert chance_tail([1.0] * 10 + [0.0] * 30, 0.1) < 0.01  # 25%: clearly above
    assert chance_tail([0.5, 1.0], 0.1) is None and chance_tail([1.0], 0.0) is None  # graded (LJ), chance 0


class PlantedModel:
    """Logits that favour one answer's token ids when the prompt holds its condition (no `<|uncond|>` in the
    row), and a common answer's ids in every row, far more strongly: the likelihood alone picks the common answer,
    the ranking (likelihood against the twin's) must pick the one the condition raises."""

    def __init__(self, codec: DocumentCodec, favoured: str, common: str):
        self.V, self.uncond = codec.layout.size, codec.layout.id("<|uncond|>")
        self.raised, self.anyway = torch.zeros(self.V), torch.zeros(self.V)
        self.raised[torch.as_tensor(codec.text.encode(favoured))] = 4.0
        self.anyway[torch.as_tensor(codec.text.encode(common))] = 30.0  # outweighs any difference in length

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        cond = ~(ids == self.uncond).any(1)  # [B]
        logits = self.anyway + cond[:, None].float() * self.raised  # [B, V]
        return logits[:, None, :].expand(*ids.shape, self.V).clone()


def session_of(layout, codec, model, **cfg) -> SamplingSession:
    """A SamplingSession around an in-memory model (no export on disk)."""
    session = object.__new__(SamplingSession)
    session.cfg, session.layout, session.codec = SampleConfig(**cfg), layout, codec
    session.model, session.device = model, torch.device("cpu")
    return session


@pytest.mark.parametrize("favoured", CANDIDATES[1:])
def test_rank_candidates_picks_the_answer_the_prompt_raises_not_the_likeliest(tiny_layout, text_tokenizer, favoured):
    codec = DocumentCodec(tiny_layout, text_tokenizer)
    common = CANDIDATES[0]
    session = session_of(tiny_layout, codec, PlantedModel(codec, favoured, common))
    item = Item("emoji2text", "emoji", [Segment("text", text="what emoji is this?", role="user")],
                {"candidates": CANDIDATES, "label": favoured})  # fmt: skip
    assert CANDIDATES[rank_candidates(session, item)] == favoured
    # the plain likelihood after the prompt (no twin) picks the common answer: the test would catch its return
    head = prompt_ids(codec, item.prompt)
    logp = torch.log_softmax(session.model(torch.as_tensor(head[None]))[0, -1], -1)
    answers = [
        codec.encode([*item.prompt, Segment("text", text=c, role="assistant")]).ids[len(head) : -1] for c in CANDIDATES
    ]
    assert CANDIDATES[int(np.argmax([float(logp[torch.as_tensor(a)].sum()) for a in answers]))] == common


def test_rank_candidates_batched_scores_equal_one_by_one(tiny_layout, text_tokenizer):
    """Right-padding the candidates and their twins into one batch must not change any score: compare with a
    real (random) transformer scoring each candidate alone, after the prompt and after its twin; the scores
    are each candidate's name plus the turn's <|end|>, after the prompt minus after its unconditional twin."""
    from omniseq.model.config import model_config
    from omniseq.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer.build(model_config("tiny", tiny_layout.size)).eval()
    codec = DocumentCodec(tiny_layout, text_tokenizer)
    prompt = [Segment("text", text="what emoji is this?", role="user")]
    session = session_of(tiny_layout, codec, model)
    head = prompt_ids(codec, prompt)

    def logp_after(ctx: np.ndarray, answer: np.ndarray) -> float:
        full = torch.as_tensor(np.concatenate([ctx, answer])[None], dtype=torch.long)
        with torch.no_grad():
            logp = torch.log_softmax(model(full), -1)[0]
        return float(logp[torch.arange(len(ctx) - 1, full.shape[1] - 1), torch.as_tensor(answer)].sum())

    pmi = []
    for cand in CANDIDATES:
        answer = codec.encode([*prompt, Segment("text", text=cand, role="assistant")]).ids[len(head) : -1]
        assert answer[-1] == tiny_layout.id("<|end|>") and len(answer) > 1  # the name, then the turn's end
        pmi.append(logp_after(head, answer) - logp_after(uncond_prompt(tiny_layout, head), answer))
        assert rank_candidates(session, Item("emoji2text", "emoji", prompt, {"candidates": [cand, cand]})) == 0
    item = Item("emoji2text", "emoji", prompt, {"candidates": CANDIDATES, "label": CANDIDATES[0]})
    np.testing.assert_allclose(candidate_scores(session, item), pmi, rtol=0, atol=1e-4)
    assert rank_candidates(session, item) == int(np.argmax(pmi))


class Recording:
    """A full-sequence forward that records the rows of the first call (the prefill) and favours image code 0
    in every row, so that a span follows quickly."""

    def __init__(self, layout):
        self.layout, self.rows = layout, None
        self.cfg = SimpleNamespace(max_seq_len=128)

    def __call__(self, ids):
        if self.rows is None:
            self.rows = ids.clone()
        logits = torch.zeros(*ids.shape, self.layout.size)
        logits[..., self.layout.code_range("image")[0]] = 5.0
        return logits


def test_media_after_words_keeps_the_words_and_guides_against_the_twin_without_them(tiny_layout, text_tokenizer):
    L, codec = tiny_layout, DocumentCodec(tiny_layout, text_tokenizer)
    forward = Recording(L)
    model = CachelessDecoder(forward)
    model.cfg = forward.cfg
    sampling = SamplingConfig(guidance=GuidanceConfig(image=3.0))
    session = session_of(L, codec, model, batch_size=4, generate=GenerateConfig(progress=False, sampling=sampling))
    prompt = prompt_ids(codec, [Segment("text", text="draw the digit you hear", role="user")])
    words = np.asarray(text_tokenizer.encode("seven. "), np.int64)
    image = L.code_range("image")[0]
    said = [
        np.concatenate([words, [L.id("<|image|>"), image]]),  # cut before the span it opened
        np.concatenate([words, [L.id("<|end|>")]]),
        words,
    ]  # before the end of the turn; or all of it
    out = session.media_after_words([prompt] * 3, said, "image", [L.codebook("image").tokens_per_frame() + 2] * 3)
    twin = uncond_prompt(L, prompt)
    rows = forward.rows.numpy()
    for b, o in enumerate(out):
        assert np.array_equal(o[: len(words)], words)
        spans = [seg for seg in L.parse(np.concatenate([prompt, o])) if seg.modality == "image"]
        assert len(spans) == 1 and o[len(words)] == L.id("<|image|>")
        assert np.array_equal(rows[b, : len(prompt) + len(words)], np.concatenate([prompt, words]))
        assert np.array_equal(rows[3 + b, : len(twin)], twin)  # the twin: no words
        assert not np.isin(words, rows[3 + b, : len(twin)]).any()


def test_media_after_words_only_shows_the_words_with_the_turn_as_its_twin(tiny_layout, text_tokenizer):
    """words_only (RealEvalConfig.chain_draw_from=words): the drawing's row is the user's turn as <|uncond|>,
    then the words; its guidance twin stays the twin without them."""
    L, codec = tiny_layout, DocumentCodec(tiny_layout, text_tokenizer)
    forward = Recording(L)
    model = CachelessDecoder(forward)
    model.cfg = forward.cfg
    sampling = SamplingConfig(guidance=GuidanceConfig(image=3.0))
    session = session_of(L, codec, model, batch_size=2, generate=GenerateConfig(progress=False, sampling=sampling))
    prompt = prompt_ids(codec, [Segment("text", text="draw the digit you hear", role="user")])
    words = np.asarray(text_tokenizer.encode("seven. "), np.int64)
    budget = L.codebook("image").tokens_per_frame() + 2
    (out,) = session.media_after_words([prompt], [words], "image", [budget], words_only=True)
    twin = uncond_prompt(L, prompt)
    rows = forward.rows.numpy()
    assert np.array_equal(out[: len(words)], words) and out[len(words)] == L.id("<|image|>")
    assert np.array_equal(rows[0, : len(twin) + len(words)], np.concatenate([twin, words]))
    assert np.array_equal(rows[1, : len(twin)], twin)
    assert (rows[1, len(twin) :] == L.id("<pad>")).all()  # the guidance twin: no words after it


def test_held_out_items_rank_every_emoji_and_cap_the_rest(tmp_path):
    lines = [{"messages": [{"role": "user", "text": f"q{i}"}, {"role": "assistant", "text": "a"}],
              "meta": {"task": task, "kind": "emoji", "label": "a", "candidates": ["a", "b"]}}
             for task in ("emoji2text", "digit_image2text") for i in range(5)]  # fmt: skip
    (tmp_path / "sft.eval.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = RealEvalConfig(corpus=str(tmp_path), per_direction=2)
    count = lambda items: {t: sum(it.task == t for it in items) for t in ("emoji2text", "digit_image2text")}  # noqa: E731
    assert count(held_out_items(cfg)) == {"emoji2text": 5, "digit_image2text": 2}
    cfg.ranked_per_direction = 3
    assert count(held_out_items(cfg)) == {"emoji2text": 3, "digit_image2text": 2}


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


def test_evaluate_rejects_an_unknown_chain_draw_from_before_loading_anything():
    with pytest.raises(ConfigError, match="chain_draw_from"):
        evaluate(RealEvalConfig(corpus="/nonexistent", chain_draw_from="clip"))


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("per_direction", 0, "per_direction: expected at least 1"),
        ("ranked_per_direction", -1, "ranked_per_direction: expected 0"),
        ("references", ["random", "blind"], r"references: \['blind'\] unknown; expected a list of \['random'\]"),
    ],
)
def test_evaluate_rejects_a_key_it_would_act_on_wrongly_before_loading_anything(key, value, expected):
    """per_direction 0 dropped every task but the ranked two; a reference row it has no code for was left out.
    The corpus does not exist: a check after reading it (or the model) would fail with another error."""
    with pytest.raises(ConfigError, match=expected):
        evaluate(RealEvalConfig(corpus="/nonexistent", **{key: value}))


def test_evaluate_accepts_no_references_and_the_random_row():
    for references in ([], ["random"]):
        with pytest.raises(FileNotFoundError, match="sft.eval.jsonl"):  # past the checks, at the corpus
            evaluate(RealEvalConfig(corpus="/nonexistent", references=references))


def test_evaluate_finds_a_constant_answer_not_above_chance_on_unbalanced_labels(tmp_path, monkeypatch):
    """The d1 case: a model that always draws a zero scores 14 of 60 where 14 of the 60 asked for a zero. Against
    a flat 10% that was p 0.002, "clearly above chance"; against the best constant guess it is what chance does."""
    lines = [{"messages": [{"role": "user", "text": f"draw a {label}"}, {"role": "assistant", "text": label}],
              "meta": {"task": "text2digit_image", "kind": "digit_image", "label": label}}
             for label in UNBALANCED]  # fmt: skip
    (tmp_path / "sft.eval.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    always_zero = [float(label == "zero") for label in UNBALANCED]
    assert chance_tail(always_zero, 0.1) < 0.01  # what the flat 10% made of it

    def score_model(session, items, scorers, text_tokens, words_only=False):
        said = [{"task": it.task, "label": it.meta["label"], "scored_as": "zero"} for it in items]
        zero = np.zeros((32, 32, 3), np.uint8)  # one drawing for every request
        return [float(it.meta["label"] == "zero") for it in items], said, [zero] * len(items)

    no_reference = lambda session, items, scorers: {row: [None] * len(items) for row in ("specialist", "tokenizer")}
    monkeypatch.setattr(real, "SamplingSession", lambda cfg: SimpleNamespace(codec=SimpleNamespace(media={})))
    monkeypatch.setattr(real, "fitting_items", lambda session, items, text_tokens: (items, {}))
    monkeypatch.setattr(real, "load_or_train", lambda *args: (None, {}))
    monkeypatch.setattr(real, "score_model", score_model)
    monkeypatch.setattr(real, "reference_scores", no_reference)
    monkeypatch.setattr(real, "write_gallery", lambda *args: {"sheets": {}, "errors": []})
    cfg = RealEvalConfig(corpus=str(tmp_path), per_direction=60, references=[], out=str(tmp_path / "eval"))
    table = evaluate(cfg)["table"]
    assert table["trained"]["text2digit_image"]["main"] == pytest.approx(14 / 60)
    assert table["chance"]["text2digit_image"]["main"] == pytest.approx(14 / 60)
    assert table["trained"]["text2digit_image"]["p_chance"] > 0.4
    assert table["trained"]["text2digit_image"]["distinct"] == 1  # and the table says it drew one image
    assert "text2digit_image 1 of 60" in (tmp_path / "eval" / "results.md").read_text()


class ToneScorer:
    """Reads a clip as the frequency of its strongest bin, assuming AUDIO_RATE (as the real scorers assume 16 kHz)."""

    def predict(self, media: list) -> list[str]:
        (wave,) = media
        assert np.asarray(wave).ndim == 1
        return [f"{np.fft.rfftfreq(len(wave), 1 / AUDIO_RATE)[np.abs(np.fft.rfft(wave)).argmax()]:.0f}"]


def tone(hz: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


class Codec24k:
    """An audio tokenizer decoding at 24 kHz (EnCodec's rate) whatever it is given: a 440 Hz tone."""

    kind, sample_rate = "fake", 24000

    def encode(self, media):
        return np.zeros((1, 4), np.int64)

    def decode(self, codes):
        return tone(440, self.sample_rate)


def test_generated_audio_is_resampled_from_the_codecs_rate_before_it_is_scored(monkeypatch):
    """Fed as it is, the 24 kHz tone reads as 293 Hz at the scorer's 16 kHz; resampled, as the 440 Hz asked."""
    assert ToneScorer().predict([tone(440, 24000)]) == ["293"]  # what the harness scored before
    session = SimpleNamespace(codec=SimpleNamespace(media={"audio": Codec24k()}))
    monkeypatch.setattr(real, "generated_answers", lambda s, items, *args: [("", tone(440, 24000)) for _ in items])
    item = Item("text2digit_speech", "digit_speech", [Segment("text", text="say 440", role="user")], {"label": "440"})
    scores, said, made = score_model(session, [item], {"digit_speech": ToneScorer()}, 8)
    assert scores == [1.0] and said[0]["scored_as"] == "440"
    assert len(made[0]) == 24000  # the gallery writes the decode at the codec's rate


def test_the_tokenizer_round_trip_is_resampled_from_the_codecs_rate_before_it_is_scored(tmp_path):
    path = write_audio(tmp_path / "real.wav", tone(440, AUDIO_RATE), AUDIO_RATE)
    item = Item("text2digit_speech", "digit_speech", [Segment("text", text="say 440", role="user")],
                {"label": "440"}, [Segment("audio", media=str(path), role="assistant")])  # fmt: skip
    session = SimpleNamespace(codec=SimpleNamespace(media={"audio": Codec24k()}))
    rows = reference_scores(session, [item], {"digit_speech": ToneScorer()})
    assert rows == {"specialist": [1.0], "tokenizer": [1.0]}
