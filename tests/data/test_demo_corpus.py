"""The demo corpus generator: deterministic, well-formed corpora, media on disk, speech with espeak-ng."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omniseq.config import ConfigError
from omniseq.data import demo_corpus as dc
from omniseq.data import demo_media as dm
from omniseq.data.corpus import CorpusConfig, read_corpus
from omniseq.document import segment_from_json

TINY = dict(scale="tiny", counts={"image": 12, "melody": 6, "sound": 8, "speech": 4, "video": 4, "interleaved": 4})


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "a"
    dc.generate(dc.DemoConfig(seed=0, **TINY), out)
    return out


def test_same_seed_gives_identical_files(corpus, tmp_path):
    dc.generate(dc.DemoConfig(seed=0, **TINY), tmp_path / "b")
    first, second = files(corpus), files(tmp_path / "b")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_another_seed_gives_other_media(corpus, tmp_path):
    dc.generate(dc.DemoConfig(seed=1, **TINY), tmp_path / "c")
    # by item id: the two seeds hold out other items, so an image may sit in another split's folder
    first, other = ({Path(k).name: v for k, v in files(root).items() if k.startswith("media/image/")}
                    for root in (corpus, tmp_path / "c"))  # fmt: skip
    assert first.keys() == other.keys()
    assert sum(first[k] != other[k] for k in first) > len(first) // 2


def test_every_line_parses_and_its_media_exists(corpus):
    index = json.loads((corpus / "index.json").read_text())
    assert {c["format"] for c in index["corpora"]} == {"pair", "interleaved", "conversation", "text"}
    n_media = 0
    for c in index["corpora"]:
        for lineno, line in enumerate((corpus / c["path"]).read_text().splitlines(), 1):
            obj = json.loads(line)
            for i, seg in enumerate(dc.document_of(obj)):
                s = segment_from_json(seg, corpus, f"{c['path']}:{lineno}[{i}]")
                if s.modality != "text":
                    assert Path(s.media).is_file(), s.media
                    n_media += 1
            assert c["format"] == "text" or obj["meta"]
    assert n_media > 0


def test_corpora_read_through_the_data_pipeline_reader(corpus):
    index = json.loads((corpus / "index.json").read_text())
    for c in index["corpora"]:
        records = list(read_corpus(CorpusConfig(path=str(corpus / c["path"]), format=c["format"])))
        assert len(records) == c["lines"], c["path"]


def test_split_holds_out_items_of_every_kind(corpus):
    index = json.loads((corpus / "index.json").read_text())
    for kind, counts in index["counts"].items():
        train = [json.loads(x)["meta"]["id"] for x in (corpus / f"{kind}.train.jsonl").read_text().splitlines()]
        held = [json.loads(x)["meta"]["id"] for x in (corpus / f"{kind}.eval.jsonl").read_text().splitlines()]
        assert len(held) >= 1 and not set(train) & set(held)
        assert len(train) + len(held) == TINY["counts"][kind] == counts["train"] + counts["eval"]
        for split in ("train", "eval"):  # the tokenizers train on media/<kind>/train: no held-out file may be there
            lines = [json.loads(x) for x in (corpus / f"{kind}.{split}.jsonl").read_text().splitlines()]
            paths = {next(v for k, v in ln.items() if k in ("image", "audio", "video")) for ln in lines}
            assert all(p.startswith(f"media/{kind}/{split}/") for p in paths), (kind, split)
            assert len(list((corpus / "media" / kind / split).iterdir())) == len(paths)


def test_held_out_scenes_melodies_and_videos_have_captions_never_trained_on(tmp_path):
    """In worlds this small an item split held out half its scenes' captions seen in training (leakage).
    Two-note melodies (42 kinds), 60 scenes and 200 videos (96 kinds) make captions repeat, testing the grouping."""
    cfg = dc.DemoConfig(speech="never", scale="tiny", min_notes=2, max_notes=2,
                        counts={"image": 60, "melody": 80, "sound": 40, "video": 200})  # fmt: skip
    dc.generate(cfg, tmp_path)
    for kind in ("image", "melody", "video", "sound"):
        rows = {s: [json.loads(x)["text"] for x in (tmp_path / f"{kind}.{s}.jsonl").read_text().splitlines()]
                for s in ("train", "eval")}  # fmt: skip
        shared = set(rows["train"]) & set(rows["eval"])
        assert len(rows["eval"]) >= 0.1 * (len(rows["train"]) + len(rows["eval"])), kind
        if kind in dc.SPLIT_BY_CAPTION:
            assert len(set(rows["eval"])) < len(rows["eval"]) and not shared, kind  # repeats, all held out together
        else:
            assert shared, kind  # sounds are held out by recording: their classes are trained on


def test_held_out_takes_whole_groups_and_keeps_one_for_training():
    keys = ["a"] * 5 + ["b"] * 3 + ["c"] + ["d"] * 2
    for seed in range(20):
        held = dc.held_out(keys, 0.3, np.random.default_rng(seed))
        groups_held = {keys[i] for i in held}
        assert held == {i for i, k in enumerate(keys) if k in groups_held}  # no group is split
        assert len(held) >= 0.3 * len(keys) and len(groups_held) < 4
    assert dc.held_out(["a", "a", "a"], 0.5, np.random.default_rng(0)) == set()  # one caption: nothing to hold out
    assert len(dc.held_out(["a", "b"], 0.9, np.random.default_rng(0))) == 1


@pytest.mark.parametrize(
    "override, match",
    [({"eval_fraction": 1.0}, "eval_fraction"), ({"image_size": 16}, "image_size: expected at least 24"),
     ({"video_size": 20}, "video_size"), ({"video_frames": 1}, "video_frames: expected 2..6 at video_size 32"),
     ({"video_frames": 8}, "video_frames")],
)  # fmt: skip
def test_bad_sizes_and_shares_are_refused(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        dc.generate(dc.DemoConfig(speech="never", **TINY, **override), tmp_path)


def test_sft_has_both_directions_with_roles(corpus):
    lines = [json.loads(x) for x in (corpus / "sft.train.jsonl").read_text().splitlines()]
    kinds = [k for k in dc.KINDS if k != "speech" or dm.espeak_binary()]
    assert {c["meta"]["task"] for c in lines} == {d for k in kinds for d in (f"{k}2text", f"text2{k}")}
    for conv in lines:
        assert conv["messages"][-1]["role"] == "assistant"
        assert all(m["role"] in ("user", "assistant") for m in conv["messages"])


def test_text_corpus_holds_the_captions(corpus):
    text = (corpus / "text.txt").read_text().splitlines()
    captions = [json.loads(x)["text"] for x in (corpus / "image.train.jsonl").read_text().splitlines()]
    assert set(captions) <= set(text)


def test_without_espeak_speech_is_left_out_and_said(tmp_path, monkeypatch):
    monkeypatch.setattr(dm, "espeak_binary", lambda: None)
    index = dc.generate(dc.DemoConfig(**TINY), tmp_path)
    assert "speech" not in index["counts"] and not (tmp_path / "speech.train.jsonl").exists()
    assert any("speech" in n for n in index["notes"])
    with pytest.raises(ConfigError, match="espeak-ng"):
        dc.generate(dc.DemoConfig(speech="always", **TINY), tmp_path)


@pytest.mark.skipif(dm.espeak_binary() is None, reason="espeak-ng is not installed")
def test_speech_corpus_is_16khz_speech_of_the_transcripts(corpus):
    import soundfile as sf

    from omniseq.eval.analysers import SpeechRecogniser

    recogniser = SpeechRecogniser.from_espeak()  # references over every text of the corpus' speech
    lines = [
        json.loads(line)
        for split in ("train", "eval")
        for line in (corpus / f"speech.{split}.jsonl").read_text().splitlines()
    ]
    assert len(lines) == TINY["counts"]["speech"]
    for obj in lines:
        info = sf.info(str(corpus / obj["audio"]))
        assert info.samplerate == dm.SAMPLE_RATE and info.duration > 0.2
        assert obj["text"] in dm.speech_texts() and obj["meta"]["transcript"] == obj["text"]
        wave, sr = sf.read(str(corpus / obj["audio"]), dtype="float32")
        assert sr == dm.SAMPLE_RATE
        assert np.abs(wave).max() > 0.05 and np.sqrt(np.mean(wave.astype(np.float64) ** 2)) > 0.005, obj["audio"]
        assert recogniser.predict(wave) == obj["text"], obj["audio"]  # it says its text


def test_cli_writes_corpus_and_rejects_bad_config(tmp_path, capsys):
    dc.main(["--out", str(tmp_path / "cli"), "--seed", "2", "--scale", "tiny", "counts.image=3", "speech=never"])
    assert len((tmp_path / "cli" / "image.train.jsonl").read_text().splitlines()) == 2  # 3 minus 1 held out
    with pytest.raises(SystemExit) as e:
        dc.run(dc.main, ["--out", str(tmp_path / "x"), "--scale", "huge"])
    assert e.value.code == 2 and "scale" in capsys.readouterr().err


def test_a_rebuild_into_the_same_folder_leaves_nothing_stale(tmp_path):
    """A rebuild with fewer items and no speech removes the old build's files that later steps would read
    (the image tokenizer trains on all of media/image/train; a speech shard set is built where speech.*.jsonl is)."""
    (tmp_path / "notes.md").write_text("mine")
    dc.generate(dc.DemoConfig(**TINY), tmp_path)
    smaller = {**TINY, "counts": {**TINY["counts"], "image": 5}}
    index = dc.generate(dc.DemoConfig(speech="never", **smaller), tmp_path)
    assert len(list((tmp_path / "media" / "image").rglob("*.png"))) == 5 == sum(index["counts"]["image"].values())
    assert not list(tmp_path.glob("speech.*.jsonl")) and not (tmp_path / "media" / "speech").exists()
    assert (tmp_path / "notes.md").read_text() == "mine"  # what the builder did not write stays


@pytest.mark.skipif(dm.espeak_binary() is None, reason="espeak-ng is not installed: every build is without speech")
def test_the_video_split_does_not_depend_on_whether_speech_is_made(tmp_path):
    more = {**TINY, "counts": {**TINY["counts"], "video": 40}}  # enough held-out clips for two draws to differ
    with_speech = dc.generate(dc.DemoConfig(speech="auto", **more), tmp_path / "a")
    without = dc.generate(dc.DemoConfig(speech="never", **more), tmp_path / "b")
    assert with_speech["counts"]["video"] == without["counts"]["video"]
    held = [sorted(json.loads(x)["meta"]["id"] for x in (tmp_path / d / "video.eval.jsonl").read_text().splitlines())
            for d in ("a", "b")]  # fmt: skip
    assert held[0] == held[1]
