"""Shard builder: exact contents, determinism, resume, and bad input skipped, counted and reported."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from omniseq.config import to_dict
from omniseq.data.corpus import CorpusConfig, CorpusError, PairConfig, read_corpus
from omniseq.data.loader import SourceConfig, build_train_stream
from omniseq.data.shards import build_shards, load_codec, main
from omniseq.data.shardset import DataError, decode_sample, iter_shard, read_manifest
from omniseq.tokenizers.image import VQImageConfig, VQImageTokenizer
from omniseq.tokenizers.image_io import ImageIOConfig
from omniseq.vocab import VocabLayout


def shard_docs(out: str, layout) -> dict[str, tuple]:
    m = read_manifest(out, layout)
    docs = {}
    for s in m["shards"]:
        for raw in iter_shard(str(Path(out) / s["file"])):
            d = decode_sample(raw, s["file"], layout.size)
            meta = json.loads(raw["json"])
            docs[meta["source"] + ":" + raw["__key__"][-1]] = (
                d.ids.tolist(),
                None if d.loss is None else d.loss.tolist(),
            )
    return docs


def test_shards_hold_exactly_the_encoded_documents(shard_env):
    cfg, layout = shard_env
    m = build_shards(cfg, progress=False)
    codec = load_codec(cfg)
    expect = {}
    for c in cfg.corpora:
        for rec in read_corpus(c, cfg.pair, cfg.seed):
            seq = codec.encode(rec.segments)
            j = 0 if rec.direction in ("", "x2t", "t2x") else None
            loss = None if seq.loss_mask[1:].all() else seq.loss_mask.tolist()
            expect[f"{rec.where}:{j}"] = (seq.ids.tolist(), loss)
    assert shard_docs(cfg.out, layout) == expect
    assert m["samples"] == len(expect) == 96 and len(m["shards"]) == 10
    assert m["tokens"]["total"] == sum(len(ids) for ids, _ in expect.values())
    assert m["tokens"]["audio"] > 0 and m["tokens"]["image"] > 0 and m["skipped"] == {}
    assert m["vocab_hash"] == layout.hash and m["config"]["seed"] == cfg.seed


def tars(out: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.tar"))}


def test_deterministic_across_workers_and_resumable(shard_env, tmp_path):
    cfg, _ = shard_env
    build_shards(cfg, progress=False)
    first = tars(cfg.out)
    par = replace(cfg, out=str(tmp_path / "par"), workers=2)
    build_shards(par, progress=False)
    assert tars(par.out) == first
    # a kill mid-run: one shard finished but unrecorded, one half-written, one never started
    os.remove(Path(par.out) / "shard-000003.stats.json")
    (Path(par.out) / "shard-000005.tar").rename(Path(par.out) / "shard-000005.tar.tmp")
    os.remove(Path(par.out) / "shard-000007.tar")
    kept = os.stat(Path(par.out) / "shard-000000.tar").st_mtime_ns
    build_shards(par, progress=False)
    assert tars(par.out) == first
    assert os.stat(Path(par.out) / "shard-000000.tar").st_mtime_ns == kept  # finished shards are kept
    with pytest.raises(DataError, match="another config"):
        build_shards(replace(par, seed=4), progress=False)


def test_resume_refuses_shards_of_a_retrained_tokenizer(shard_env):
    """Same paths, new tokenizer weights: the shards' ids mean other codes now and must not be reused."""
    cfg, layout = shard_env
    build_shards(cfg, progress=False)
    retrained = replace(layout.codebook("audio"), fingerprint="weights after retraining")
    VocabLayout(layout.text, layout.specials, {**layout.codebooks, "audio": retrained}).save(cfg.vocab)
    with pytest.raises(DataError, match="another config, corpus contents or vocabulary"):
        build_shards(cfg, progress=False)


def test_resume_refuses_shards_of_an_edited_corpus(shard_env):
    """Same paths, a line removed: every later line moves to another shard, so kept shards would hold some
    documents twice and lose others."""
    cfg, _ = shard_env
    build_shards(cfg, progress=False)
    os.remove(Path(cfg.out) / "shard-000004.stats.json")  # a kill before shard 4 was recorded
    corpus = Path(cfg.corpora[3].path)
    corpus.write_text("".join(corpus.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(DataError, match="shard-000000.stats.json was built with another config, corpus contents"):
        build_shards(cfg, progress=False)


def test_corpora_with_the_same_name_get_distinct_keys_and_load(shard_env, tmp_path):
    cfg, layout = shard_env
    corpora = []
    for d in ("coco", "cc3m"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "train.jsonl").write_text(json.dumps({"text": f"the red cat sat on {d}"}) + "\n")
        corpora.append(CorpusConfig(path=str(tmp_path / d / "train.jsonl"), format="text"))
    out = str(tmp_path / "same")
    m = build_shards(replace(cfg, corpora=corpora, out=out, shuffle=False), progress=False)
    keys = [raw["__key__"] for raw in iter_shard(str(Path(out) / m["shards"][0]["file"]))]
    assert keys == ["0_train_000000001_0", "1_train_000000001_0"]
    stream = build_train_stream([SourceConfig(out)], 64, 1, 0, 1, seed=0, layout=layout)
    assert stream.worker_stream(0).sources[0].fetch(1)[0] is not None  # one sample each, not one merged


def test_pair_directions_follow_the_probability(shard_env):
    cfg, layout = shard_env
    cfg = replace(cfg, corpora=cfg.corpora[:1])
    dirs = [r.direction for r in read_corpus(cfg.corpora[0], cfg.pair, 0)]
    assert set(dirs) == {"x2t", "t2x"}
    only = replace(cfg.pair, p_x_to_text=1.0)
    assert {r.direction for r in read_corpus(cfg.corpora[0], only, 0)} == {"x2t"}
    both = replace(cfg.pair, both=True)
    assert [r.direction for r in read_corpus(cfg.corpora[0], both, 0)] == ["x2t", "t2x"] * 24
    m = build_shards(replace(cfg, pair=both), progress=False)
    assert m["samples"] == 48


def test_a_repeated_corpus_is_copied_each_copy_its_own_direction(shard_env, tmp_path):
    cfg, layout = shard_env
    one = replace(cfg, corpora=cfg.corpora[:1], out=str(tmp_path / "one"))
    three = replace(one, corpora=[replace(cfg.corpora[0], repeat=3)], out=str(tmp_path / "three"))
    m1, m3 = build_shards(one, progress=False), build_shards(three, progress=False)
    assert m3["samples"] == 3 * m1["samples"] == 72
    keys, dirs = set(), {}
    for s in m3["shards"]:
        for raw in iter_shard(str(Path(three.out) / s["file"])):
            keys.add(raw["__key__"])
            meta = json.loads(raw["json"])
            dirs.setdefault(meta["source"], []).append(meta["direction"])
    assert len(keys) == 72  # no copy overwrites another
    assert all(len(d) == 3 for d in dirs.values()) and any(len(set(d)) == 2 for d in dirs.values())
    with pytest.raises(DataError, match=r"corpora\[0\].repeat: expected an integer >= 1"):
        build_shards(replace(one, corpora=[replace(cfg.corpora[0], repeat=0)]), progress=False)


def test_bad_lines_and_media_are_skipped_counted_and_reported(shard_env, capsys):
    cfg, layout = shard_env
    d = Path(cfg.corpora[0].path).parent
    (d / "broken.npy").write_bytes(b"not an array")
    lines = Path(cfg.corpora[0].path).read_text().splitlines()
    lines[2] = '{"image": "missing.npy", "text": "gone"}'
    lines[4] = '{"image": "broken.npy", "text": "bad"}'
    lines[6] = "{not json"
    lines[8] = '{"image": "img1.npy"}'
    Path(cfg.corpora[0].path).write_text("\n".join(lines) + "\n")
    m = build_shards(cfg, progress=False)
    assert m["skipped"] == {"missing_media": 1, "bad_media": 1, "bad_record": 2}
    assert m["samples"] == 92
    examples = " ".join(m["skipped_examples"])
    assert "pairs.jsonl:7" in examples and "pairs.jsonl:9" in examples and "broken.npy" in examples
    with pytest.raises(DataError, match="max_skipped=3"):
        build_shards(replace(cfg, out=cfg.out + "2", max_skipped=3), progress=False)
    with pytest.raises(CorpusError, match=r"pairs.jsonl:7: not valid JSON"):
        build_shards(replace(cfg, out=cfg.out + "3", on_bad_record="raise", shuffle=False), progress=False)
    main(["out=" + cfg.out + "4", *overrides(cfg)])
    assert "skipped 1 (bad_media)" in capsys.readouterr().out


def overrides(cfg) -> list[str]:
    import yaml

    p = Path(cfg.out).parent / "cfg.yaml"
    from omniseq.config import to_dict

    d = to_dict(cfg)
    d.pop("out")
    p.write_text(yaml.safe_dump(d))
    return ["--config", str(p)]


def test_cli_reports_user_errors_in_one_line(shard_env, capsys):
    cfg, _ = shard_env
    with pytest.raises(SystemExit) as e:
        main([f"out={cfg.out}", "corpora=[]", *overrides(cfg)])
    assert e.value.code == 2 and "corpora" in capsys.readouterr().err


def test_media_without_a_tokenizer_is_a_config_error(shard_env):
    cfg, _ = shard_env
    with pytest.raises(DataError, match="media_tokenizers.image is not set"):
        build_shards(replace(cfg, media_tokenizers={}), progress=False)


def test_codes_only_corpus_needs_no_media_tokenizer(shard_env):
    cfg, layout = shard_env
    m = build_shards(replace(cfg, corpora=cfg.corpora[1:2], media_tokenizers={}), progress=False)
    assert m["samples"] == 24 and m["tokens"]["audio"] > 0
    assert np.isclose(sum(s["samples"] for s in m["shards"]), 24)


def text_corpus(path: Path, n: int) -> list[CorpusConfig]:
    path.write_text("".join(json.dumps({"text": f"the cat {i} sat on the mat"}) + "\n" for i in range(n)))
    return [CorpusConfig(str(path), "text")]


# Run in a child process: with the old multiprocessing.Pool this build never returned, and a test that hangs
# would stall the whole test run instead of failing.
KILL_A_WORKER = """
import os, signal, sys
from omniseq.config import load_config
from omniseq.data import shards

build = shards.build_shard

def build_or_die(cfg, k, items, chash):
    if k == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
    return build(cfg, k, items, chash)

shards.build_shard = build_or_die  # the workers fork after this, so they inherit it
try:
    shards.build_shards(load_config(shards.ShardConfig, sys.argv[1]), progress=False)
except shards.DataError as e:
    sys.exit(f"DataError: {e}")
"""


def test_a_killed_worker_is_a_data_error_not_a_hang_and_a_rerun_finishes_the_set(shard_env, tmp_path):
    cfg, _ = shard_env
    cfg = replace(cfg, corpora=text_corpus(tmp_path / "t.jsonl", 40), media_tokenizers={}, samples_per_shard=5)
    serial = replace(cfg, out=str(tmp_path / "serial"))
    build_shards(serial, progress=False)
    par = replace(cfg, workers=2)
    (tmp_path / "par.yaml").write_text(yaml.safe_dump(to_dict(par)))
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_A_WORKER, str(tmp_path / "par.yaml")],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _, err = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child and the workers it forked
        child.communicate()
        pytest.fail("the build hung after a worker was killed")
    assert child.returncode == 1, err
    assert re.search(r"DataError: a worker process died while building shard (\d+ or )?2( or \d+)? \(killed\? out", err)
    assert "rerun the same command to build the rest" in err
    assert not (Path(par.out) / "shard-000002.tar").exists()
    build_shards(par, progress=False)  # the rerun the message promises: it finishes the same set
    assert tars(par.out) == tars(serial.out)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(on_bad_record="Raise"), "on_bad_record: 'Raise', expected one of ('skip', 'raise')"),
        (dict(on_bad_record=""), "on_bad_record: '', expected one of ('skip', 'raise')"),
        (dict(pair=PairConfig(p_x_to_text=1.5)), "pair.p_x_to_text: 1.5, expected a probability in [0, 1]"),
        (dict(pair=PairConfig(p_x_to_text=-0.1)), "pair.p_x_to_text: -0.1, expected a probability in [0, 1]"),
    ],
)
def test_bad_builder_settings_are_refused_naming_the_key_the_value_and_what_was_expected(shard_env, change, match):
    cfg, _ = shard_env
    with pytest.raises(DataError, match=re.escape(match)):
        build_shards(replace(cfg, **change), progress=False)
    assert not list(Path(cfg.out).glob("*.tar"))  # refused before any work


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_a_corpus_without_records_is_an_error_naming_the_file(shard_env, tmp_path, capsys, content):
    cfg, _ = shard_env
    (tmp_path / "empty.jsonl").write_text(content)
    corpora = [cfg.corpora[3], CorpusConfig(str(tmp_path / "empty.jsonl"), "text")]
    with pytest.raises(DataError, match=r"corpora\[1\].path: .*empty.jsonl holds no records"):
        build_shards(replace(cfg, corpora=corpora), progress=False)
    with pytest.raises(SystemExit) as e:
        main([f"out={cfg.out}", *overrides(replace(cfg, corpora=corpora[1:]))])
    assert e.value.code == 2 and "empty.jsonl holds no records" in capsys.readouterr().err


def test_a_missing_image_file_counts_as_missing_media_with_a_builtin_tokenizer(shard_env, tmp_path, text_tokenizer):
    """The built-in tokenizers report a missing file as MediaError("image file not found"), not
    FileNotFoundError: the builder must still count it apart from unreadable files."""
    cfg, _ = shard_env
    tiny = dict(downsample=4, base_channels=8, channel_mult=[1, 2], embed_dim=8, codebook_size=32, codebook_dim=4)
    tok = VQImageTokenizer(VQImageConfig(image=ImageIOConfig(size=16), **tiny))
    tok.save(tmp_path / "tok_vq")
    VocabLayout.build(text_tokenizer.spec(), [tok.codebook_spec()]).save(tmp_path / "vocab_vq")
    d = tmp_path / "vq"
    d.mkdir()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(d / "red.png")
    (d / "broken.png").write_bytes(b"not an image")
    rows = [("red.png", "red"), ("gone.png", "x"), ("broken.png", "y")]
    (d / "pairs.jsonl").write_text("".join(json.dumps({"image": i, "text": t}) + "\n" for i, t in rows))
    vq = replace(
        cfg, corpora=[CorpusConfig(str(d / "pairs.jsonl"))], vocab=str(tmp_path / "vocab_vq"),
        media_tokenizers={"image": str(tmp_path / "tok_vq")}, shuffle=False,
    )  # fmt: skip
    m = build_shards(vq, progress=False)
    assert m["samples"] == 1 and m["skipped"] == {"missing_media": 1, "bad_media": 1}
    assert any(e.startswith("missing_media: ") and "gone.png" in e for e in m["skipped_examples"])
