"""The shard builder: corpora + vocabulary + tokenizers -> a WebDataset shard set.

    python -m omniseq.data.shards --config configs/data/demo.yaml out=runs/shards/demo workers=2

Every non-empty corpus line gets a place in one global order (shuffled with `seed` when `shuffle`),
and shard k holds the documents of lines [k*S, (k+1)*S) of that order, S = `samples_per_shard`.
A shard is therefore a pure function of its slice, which gives the three properties we need:
  - parallel: one worker process builds one shard at a time (ProcessPoolExecutor, fork);
  - resumable: a shard is written to `.tar.tmp`, renamed when complete, then its `.stats.json` is
    written; on restart, shards with both files are kept and the rest rebuilt from scratch, so no
    sample is written twice and none is lost;
  - deterministic: same config and seed -> byte-identical tars (fixed tar mtime), whatever `workers`.
Bad lines and bad media are skipped and counted by reason (up to `max_skipped` in total), never
written; the counts and the first examples go to manifest.json and to the end-of-run report.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import random
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from omniseq.atomic import write_text_atomic
from omniseq.config import load_config
from omniseq.data.corpus import (
    FORMATS,
    CorpusConfig,
    CorpusError,
    PairConfig,
    corpus_name,
    line_index,
    parse_record,
    read_line,
)
from omniseq.data.shardset import MANIFEST, SHARDSET_FORMAT, DataError, ShardError, encode_sample
from omniseq.document import DocumentCodec
from omniseq.tokenizers.base import MediaError, load_tokenizer
from omniseq.tokenizers.text import TextTokenizer
from omniseq.vocab import MODALITIES, VocabLayout, canonical_json

MAX_EXAMPLES = 20  # skip examples kept for the report
BAD_RECORD_POLICIES = ("skip", "raise")


@dataclass
class ShardConfig:
    root: str = "runs/demo"  # the run's folder; other paths may use it as ${root}/... (the demo configs do)
    corpora: list[CorpusConfig] = field(default_factory=list)  # the JSONL corpora to tokenize
    vocab: str = ""  # the vocabulary manifest.json (or its folder)
    text_tokenizer: str = ""  # folder holding the sentencepiece tokenizer.model
    media_tokenizers: dict[str, str] = field(default_factory=dict)  # modality -> tokenizer folder
    out: str = "runs/shards/default"  # output folder of the shard set
    name: str = "shard"  # shard file prefix: name-000000.tar
    samples_per_shard: int = 1000  # corpus lines per shard (the target shard size)
    shuffle: bool = True  # shuffle lines across corpora before slicing them into shards
    seed: int = 0  # shuffling and pair directions
    workers: int = 1  # worker processes (1 = build in this process)
    max_skipped: int = 1000  # more skipped lines/documents than this is an error
    on_bad_record: str = "skip"  # skip | raise: a line that is not JSON or lacks fields
    pair: PairConfig = field(default_factory=PairConfig)  # pair directions and templates


def corpus_digests(cfg: ShardConfig) -> list[str]:
    """SHA-256 of every corpus file. A shard holds a slice of the lines' global order, so an edited corpus
    moves lines between shards: resuming over it would write some documents twice and lose others."""
    out = []
    for c in cfg.corpora:
        h = hashlib.sha256()
        with Path(c.path).open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out.append(h.hexdigest())
    return out


def config_hash(cfg: ShardConfig, vocab_hash: str, corpora: list[str]) -> str:
    """What determines the shards' content (not `workers` or `out`): the config, the corpora's contents
    (`corpus_digests`) and the vocabulary, whose hash covers every tokenizer's weights (paths alone would
    let a retrained tokenizer or an edited corpus reuse stale shards). Resume refuses shards built with
    another one."""
    d = {**asdict(cfg), "vocab_hash": vocab_hash, "corpora_sha256": corpora}
    for k in ("workers", "out", "max_skipped"):
        d.pop(k)
    return hashlib.sha256(canonical_json(d).encode()).hexdigest()[:16]


def plan(cfg: ShardConfig) -> list[list[tuple[int, int, int, int]]]:
    """Slices of (corpus index, line number, byte offset, copy), one per shard."""
    if not cfg.corpora:
        raise DataError("config field 'corpora' is empty: list at least one corpus")
    if cfg.samples_per_shard <= 0:
        raise DataError(f"samples_per_shard must be positive, got {cfg.samples_per_shard}")
    if cfg.on_bad_record not in BAD_RECORD_POLICIES:  # a typo ("Raise") must not quietly mean skip
        raise DataError(f"on_bad_record: {cfg.on_bad_record!r}, expected one of {BAD_RECORD_POLICIES}")
    if not 0 <= cfg.pair.p_x_to_text <= 1:
        raise DataError(f"pair.p_x_to_text: {cfg.pair.p_x_to_text!r}, expected a probability in [0, 1]")
    lines = []
    for ci, c in enumerate(cfg.corpora):
        if c.format not in FORMATS:
            raise DataError(f"corpora[{ci}].format: {c.format!r}, expected one of {FORMATS}")
        if not isinstance(c.repeat, int) or c.repeat < 1:
            raise DataError(f"corpora[{ci}].repeat: expected an integer >= 1 (copies of each line), got {c.repeat!r}")
        index = line_index(c.path)
        if not index:  # a wrong or unfinished file: building would end "0 samples" and look like success
            raise DataError(f"corpora[{ci}].path: {c.path} holds no records (the file is empty or every line is blank)")
        lines += [(ci, lineno, off, copy) for copy in range(c.repeat) for lineno, off in index]
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(lines)
    S = cfg.samples_per_shard
    return [lines[i : i + S] for i in range(0, len(lines), S)]


_CODEC: DocumentCodec | None = None


def load_codec(cfg: ShardConfig) -> DocumentCodec:
    layout = VocabLayout.load(cfg.vocab)
    media = {m: load_tokenizer(d) for m, d in cfg.media_tokenizers.items()}
    return DocumentCodec(layout, TextTokenizer(cfg.text_tokenizer), media)


def _codec(cfg: ShardConfig) -> DocumentCodec:
    global _CODEC  # one codec per worker process: tokenizers load once, not once per shard
    if _CODEC is None:
        _CODEC = load_codec(cfg)
    return _CODEC


def shard_path(cfg: ShardConfig, k: int, suffix: str = ".tar") -> Path:
    return Path(cfg.out) / f"{cfg.name}-{k:06d}{suffix}"


def build_shard(cfg: ShardConfig, k: int, items: list[tuple[int, int, int, int]], chash: str) -> dict:
    """Write shard k from its slice; returns (and saves) its stats, stamped with the build's `config_hash`."""
    codec = _codec(cfg)
    stats = {
        "file": shard_path(cfg, k).name,
        "samples": 0,
        "tokens": dict.fromkeys(MODALITIES, 0),
        "skipped": {},
        "examples": [],
        "config_hash": chash,
    }

    def skip(reason: str, err: Exception) -> None:
        stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
        if len(stats["examples"]) < MAX_EXAMPLES:
            stats["examples"].append(f"{reason}: {err}")
        if sum(stats["skipped"].values()) > cfg.max_skipped:
            raise DataError(
                f"more than max_skipped={cfg.max_skipped} skips in shard {k}; first: {stats['examples'][:3]}"
            )

    tmp = shard_path(cfg, k, ".tar.tmp")
    files = {}
    with wds.TarWriter(str(tmp), encoder=False, mtime=0) as sink:
        for ci, lineno, off, copy in items:
            corpus = cfg.corpora[ci]
            where = f"{corpus.path}:{lineno}"
            f = files.get(ci) or files.setdefault(ci, open(corpus.path, "rb"))
            try:
                records = parse_record(read_line(f, off, where), corpus, cfg.pair, lineno, cfg.seed, copy)
            except CorpusError as e:
                if cfg.on_bad_record == "raise":
                    raise
                skip("bad_record", e)
                continue
            for j, rec in enumerate(records):
                for i, seg in enumerate(rec.segments):
                    if seg.media is not None and seg.modality not in codec.media:
                        raise DataError(
                            f"{where}: segment {i} is {seg.modality} media, but config field "
                            f"media_tokenizers.{seg.modality} is not set"
                        )
                try:
                    seq = codec.encode(rec.segments)
                except MediaError as e:
                    skip("missing_media" if _missing(e) else "bad_media", f"{where}: {e}")
                    continue
                except FileNotFoundError as e:
                    skip("missing_media", f"{where}: {e}")
                    continue
                except ValueError as e:  # codes out of range, a grid of the wrong shape
                    skip("bad_document", f"{where}: {e}")
                    continue
                # the corpus index keeps keys unique when two corpora share a name (train.jsonl in two folders)
                key = f"{ci}_{corpus_name(corpus)}_{lineno:09d}_{j}{f'_c{copy}' if copy else ''}".replace(".", "_")
                meta = {"source": where, "corpus": corpus_name(corpus), "direction": rec.direction}
                sink.write(encode_sample(key, seq, meta))
                stats["samples"] += 1
                mods = seq.token_modalities()
                for m, name in enumerate(MODALITIES):
                    stats["tokens"][name] += int(np.count_nonzero(mods == m))
    for f in files.values():
        f.close()
    os.replace(tmp, shard_path(cfg, k))
    write_text_atomic(shard_path(cfg, k, ".stats.json"), json.dumps(stats, indent=1))
    return stats


def _missing(e: MediaError) -> bool:
    """Whether a tokenizer's error is about a media file that does not exist. The built-in tokenizers raise
    MediaError("... file not found") for it, like any unreadable file; the report keeps the two apart because
    they need different fixes (paths vs files). Names in <...> are not paths (<bytes>, <array>)."""
    src = e.source
    return isinstance(src, (str, Path)) and not str(src).startswith("<") and not Path(src).exists()


def _init_worker(workers: int) -> None:
    # each process gets its share of the cores: N workers x all-core torch pools would oversubscribe
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    # a forked worker inherits the parent's handlers: one that catches SIGTERM (a trainer's checkpoint-and-
    # exit handler) would keep an error from stopping the workers (_build_parallel terminates them)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _build_job(job) -> dict:
    return build_shard(*job)  # looked up at call time: a test may wrap build_shard before the workers fork


def _build_parallel(todo: list[tuple], workers: int) -> Iterator[dict]:
    """The stats of each shard of `todo` as it is finished by one of `workers` forked processes.

    A ProcessPoolExecutor, not a multiprocessing.Pool: when a worker dies (the OOM killer's SIGKILL), a Pool
    starts a new one and waits forever for the shard the dead one was building, while the executor fails that
    shard with BrokenProcessPool. No more shards than workers are submitted at a time, so the shards in flight,
    which the error names, are the ones being built."""
    # fork: workers inherit the loaded codec and any tokenizer kinds registered at run time
    ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker, initargs=(workers,))
    jobs = iter(todo)
    running: dict[Future, int] = {}  # shard in flight -> its number
    try:
        while True:
            for job in itertools.islice(jobs, workers - len(running)):
                running[ex.submit(_build_job, job)] = job[1]
            if not running:
                return
            for f in wait(running, return_when=FIRST_COMPLETED).done:
                try:
                    stats = f.result()
                except BrokenProcessPool:
                    lost = sorted(k for g, k in running.items() if not g.done() or g.exception() is not None)
                    raise DataError(
                        f"a worker process died while building shard {' or '.join(map(str, lost))} (killed? out of "
                        "memory?): the shards finished so far are kept; rerun the same command to build the rest "
                        "(fewer `workers` need less memory)"
                    ) from None
                del running[f]
                yield stats
    except BaseException:  # an error here or in the caller (GeneratorExit): stop the running shards now
        for p in list((ex._processes or {}).values()):  # no public way before Python 3.14's terminate_workers()
            p.terminate()
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _done_stats(cfg: ShardConfig, k: int, chash: str) -> dict | None:
    stats_file = shard_path(cfg, k, ".stats.json")
    if not (stats_file.is_file() and shard_path(cfg, k).is_file()):
        return None
    stats = json.loads(stats_file.read_text())
    if stats.get("config_hash") != chash:
        raise DataError(
            f"{stats_file} was built with another config, corpus contents or vocabulary (hash "
            f"{stats.get('config_hash')}, now {chash}): use a new `out` folder or delete the old shards"
        )
    return stats


def build_shards(cfg: ShardConfig, progress: bool = True) -> dict:
    """Build (or finish building) the shard set; returns the manifest it writes."""
    global _CODEC
    _CODEC = None
    layout = _codec(cfg).layout  # fail on a bad vocab/tokenizer before any work
    slices = plan(cfg)
    chash = config_hash(cfg, layout.hash, corpus_digests(cfg))
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    stats = {k: s for k in range(len(slices)) if (s := _done_stats(cfg, k, chash)) is not None}
    todo = [(cfg, k, slices[k], chash) for k in range(len(slices)) if k not in stats]
    bar = tqdm(total=len(slices), initial=len(stats), desc=f"shards {cfg.name}", unit="shard", disable=not progress)
    skipped = sum(sum(s["skipped"].values()) for s in stats.values())
    if cfg.workers > 1 and len(todo) > 1:
        results = _build_parallel(todo, min(cfg.workers, len(todo)))
    else:
        results = (_build_job(job) for job in todo)
    try:
        with contextlib.closing(results):  # an error below ends the workers, not only this loop
            for s in results:
                stats[int(s["file"].rsplit("-", 1)[1].split(".")[0])] = s
                skipped += sum(s["skipped"].values())
                if skipped > cfg.max_skipped:
                    examples = [e for st in stats.values() for e in st["examples"]][:3]
                    raise DataError(f"more than max_skipped={cfg.max_skipped} skipped documents; first: {examples}")
                bar.update(1)
                bar.set_postfix(skipped=skipped)
    finally:
        bar.close()
    return write_manifest(cfg, layout, [stats[k] for k in range(len(slices))], chash)


def write_manifest(cfg: ShardConfig, layout: VocabLayout, shard_stats: list[dict], chash: str) -> dict:
    tokens = {m: sum(s["tokens"][m] for s in shard_stats) for m in MODALITIES}
    skipped: dict[str, int] = {}
    for s in shard_stats:
        for reason, n in s["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    manifest = {
        "format": SHARDSET_FORMAT,
        "name": cfg.name,
        "vocab_hash": layout.hash,
        "config_hash": chash,  # the build's (config_hash): a stream state saved over another build is refused
        "samples": sum(s["samples"] for s in shard_stats),
        "tokens": {**tokens, "total": sum(tokens.values())},
        "shards": [{k: s[k] for k in ("file", "samples", "tokens")} for s in shard_stats],
        "skipped": skipped,
        "skipped_examples": [e for s in shard_stats for e in s["examples"]][:MAX_EXAMPLES],
        "config": asdict(cfg),
    }
    write_text_atomic(Path(cfg.out) / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML file (configs/data/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. workers=4 out=runs/shards/x")
    args = ap.parse_args(argv)
    cfg = load_config(ShardConfig, args.config, args.overrides)
    try:
        m = build_shards(cfg)
    except (DataError, ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{m['samples']} samples, {m['tokens']['total']} tokens in {len(m['shards'])} shards -> {cfg.out}")
    for reason, n in sorted(m["skipped"].items()):
        example = next((e for e in m["skipped_examples"] if e.startswith(reason)), "")
        print(f"skipped {n} ({reason})" + (f", e.g. {example.split(': ', 1)[1]}" if example else ""))


if __name__ == "__main__":
    from omniseq.cli import run

    run(main)
