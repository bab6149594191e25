"""The real-media corpus builder: splits, determinism, formats the data pipeline reads, derived media."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from omniseq.data import real_corpus as rc
from omniseq.data.corpus import CorpusConfig, read_corpus
from omniseq.data.demo_corpus import document_of
from omniseq.data.real_sets import MissingDataError
from omniseq.document import segment_from_json
from tests.conftest import SHARED_DATA

SMALL = dict(mnist=12, fsdd=10, ljspeech=3, esc10=3, emoji=6, animated_emoji=4)  # per set and split


def small_config(data: Path, out: Path, seed: int = 0) -> rc.RealCorpusConfig:
    caps = rc.Caps(**{f"{s}_{split}": n for s, n in SMALL.items() for split in rc.SPLITS})
    return rc.RealCorpusConfig(data=str(data), out=str(out), seed=seed, caps=caps, text_chars=500)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """One small corpus for the module (the `shared_data` fixture is per test, so its check is repeated)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set OMNISEQ_SHARED_DATA to point at it)")
    out = tmp_path_factory.mktemp("real") / "a"
    rc.generate(small_config(SHARED_DATA, out))
    return out


def test_files_and_counts(corpus, shared_data):
    index = json.loads((corpus / "index.json").read_text())
    assert index["data"] == str(shared_data.resolve())
    for kind in rc.MODALITY:
        for split in rc.SPLITS:
            n = index["counts"][kind][split]
            assert len(lines(corpus / f"{kind}.{split}.jsonl")) == n > 0, (kind, split)
    assert index["counts"]["digit_image"] == {"train": 12, "eval": 12}
    for c in index["corpora"]:
        assert len(lines(corpus / c["path"])) == c["lines"]
    assert (corpus / "text.txt").is_file() and (corpus / "interleaved.eval.jsonl").is_file()


def test_no_eval_id_appears_in_train(corpus):
    for name in [*rc.MODALITY, "sft"]:
        train = {x["meta"]["id"] for x in lines(corpus / f"{name}.train.jsonl")}
        held = {x["meta"]["id"] for x in lines(corpus / f"{name}.eval.jsonl")}
        assert held and not train & held, name
    for split in rc.SPLITS:  # every item of a split's documents comes from that split
        docs = lines(corpus / f"interleaved.{split}.jsonl")
        assert docs and {it["split"] for d in docs for it in d["meta"]["items"]} == {split}


def test_same_seed_gives_identical_files(corpus, shared_data, tmp_path):
    rc.generate(small_config(shared_data, tmp_path / "b"))
    first, second = files(corpus), files(tmp_path / "b")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k] and k != "index.json"] == []
    index = [json.loads(first["index.json"]), json.loads(second["index.json"])]
    for i in index:
        i["config"].pop("out")  # the only difference: where each was written
    assert index[0] == index[1]


def test_another_seed_picks_other_items(corpus, shared_data, tmp_path):
    rc.generate(small_config(shared_data, tmp_path / "c", seed=1))
    ids = lambda root: {x["meta"]["id"] for x in lines(root / "digit_image.train.jsonl")}  # noqa: E731
    assert ids(corpus) != ids(tmp_path / "c")


def test_candidates_contain_the_truth(corpus):
    convs = [c for c in lines(corpus / "sft.eval.jsonl") if c["meta"]["task"] in rc.CANDIDATE_TASKS]
    assert {c["meta"]["task"] for c in convs} == set(rc.CANDIDATE_TASKS)
    for c in convs:
        cands = c["meta"]["candidates"]
        assert c["meta"]["label"] in cands and len(set(cands)) == len(cands)
        assert 1 < len(cands) <= rc.RealCorpusConfig.emoji_candidates


def test_sft_tasks_and_generation_targets(corpus):
    convs = lines(corpus / "sft.eval.jsonl")
    assert {c["meta"]["task"] for c in convs} == set(rc.PROMPTS)
    digit_of_image = {x["meta"]["id"]: x["meta"]["digit"] for x in lines(corpus / "digit_image.eval.jsonl")}
    for c in convs:
        assert c["messages"][-1]["role"] == "assistant"
        assert {"task", "kind", "split", "label", "id"} <= set(c["meta"])
        if c["meta"]["task"].startswith("text2"):  # the scorers check the generated media against the label
            assert c["meta"]["label"] in c["messages"][0]["text"] and "text" not in c["messages"][-1]
        if c["meta"]["task"] == "digit_speech2digit_image":  # a MNIST image of the clip's digit, same split
            assert c["messages"][1]["audio"].endswith(".wav") and "image" in c["messages"][-1]
            assert digit_of_image[c["meta"]["target_id"]] == c["meta"]["digit"]
            assert c["meta"]["label"] == rc.rs.DIGIT_WORDS[c["meta"]["digit"]]
            # chained (the default): the assistant names the digit, then draws it, in one turn
            assert c["messages"][-2] == {"role": "assistant", "text": f"{c['meta']['label']}. "}


def test_unchained_answers_are_the_media_alone(shared_data, tmp_path):
    cfg = small_config(shared_data, tmp_path / "c")
    cfg.sets, cfg.chain = ["mnist", "fsdd"], []
    rc.generate(cfg)
    convs = [c for c in lines(tmp_path / "c" / "sft.eval.jsonl") if c["meta"]["task"] == "digit_speech2digit_image"]
    assert convs and all([m["role"] for m in c["messages"]] == ["user", "user", "assistant"] for c in convs)


def test_repeated_tasks_get_copies_with_their_own_prompts_in_train_only(shared_data, tmp_path):
    cfg = small_config(shared_data, tmp_path / "r")
    cfg.sets, cfg.repeats = ["esc10"], {"sound2text": 3}
    rc.generate(cfg)
    train = [c for c in lines(tmp_path / "r" / "sft.train.jsonl") if c["meta"]["task"] == "sound2text"]
    evals = [c for c in lines(tmp_path / "r" / "sft.eval.jsonl") if c["meta"]["task"] == "sound2text"]
    per_clip = {}
    for c in train:
        per_clip.setdefault(c["meta"]["id"], []).append(c["meta"]["prompt"])
    assert len(per_clip) == SMALL["esc10"] and all(len(p) == 3 for p in per_clip.values())
    assert len({p for ps in per_clip.values() for p in ps}) > 1  # prompts drawn per copy, not copied
    assert len(evals) == SMALL["esc10"]  # held-out items once each
    others = [c for c in lines(tmp_path / "r" / "sft.train.jsonl") if c["meta"]["task"] == "text2sound"]
    assert len(others) == SMALL["esc10"]


def test_corpora_read_through_the_data_pipeline_reader(corpus):
    index = json.loads((corpus / "index.json").read_text())
    for c in index["corpora"]:
        records = list(read_corpus(CorpusConfig(path=str(corpus / c["path"]), format=c["format"])))
        assert len(records) == c["lines"], c["path"]
    for name in ("sft.eval", "digit_speech.train", "interleaved.train"):
        for obj in lines(corpus / f"{name}.jsonl")[:5]:
            for seg in document_of(obj):
                s = segment_from_json(seg, corpus)
                assert s.modality == "text" or Path(s.media).is_file(), s.media


def test_derived_media(corpus):
    for x in lines(corpus / "digit_image.eval.jsonl"):
        image = Image.open(corpus / x["image"])
        assert (image.mode, image.size) == ("RGB", (32, 32)) and x["image"].startswith("media/digit_image/eval/")
    corner = np.asarray(image)[:2]
    assert corner.max() == 0  # padded with black: a white digit on black
    for x in lines(corpus / "emoji_video.train.jsonl"):
        frames = np.load(corpus / x["video"])["frames"]
        assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    for x in lines(corpus / "sound.train.jsonl"):
        info = sf.info(str(corpus / x["audio"]))
        assert info.samplerate == 16000 and info.duration == pytest.approx(2.0)
    for x in lines(corpus / "speech.train.jsonl"):
        assert Path(x["audio"]).is_absolute()  # referenced, never copied


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(MissingDataError, match="nowhere"):
        rc.generate(rc.RealCorpusConfig(data=str(tmp_path / "nowhere"), out=str(tmp_path / "o")))
    with pytest.raises(SystemExit) as e:
        rc.run(rc.main, ["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and "nowhere" in err and "Traceback" not in err


def test_missing_set_file_names_it(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(MissingDataError, match="mnist_9000.npz"):
        rc.generate(rc.RealCorpusConfig(data=str(tmp_path / "data"), out=str(tmp_path / "o"), sets=["mnist"]))


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(rc.ConfigError, match="sets"):
        rc.generate(rc.RealCorpusConfig(out=str(tmp_path), sets=["cifar"]))
    with pytest.raises(rc.ConfigError, match="video_frames"):
        rc.generate(rc.RealCorpusConfig(out=str(tmp_path), video_frames=17))
    with pytest.raises(rc.ConfigError, match="chain: 'text2digit_image' is not a media -> media task"):
        rc.generate(rc.RealCorpusConfig(out=str(tmp_path), chain=["text2digit_image"]))
    with pytest.raises(rc.ConfigError, match="repeats: {'sound2txt': 2}"):
        rc.generate(rc.RealCorpusConfig(out=str(tmp_path), repeats={"sound2txt": 2}))
    with pytest.raises(rc.ConfigError, match="repeats: {'sound2text': 0}"):
        rc.generate(rc.RealCorpusConfig(out=str(tmp_path), repeats={"sound2text": 0}))
