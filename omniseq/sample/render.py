"""Generated ids -> files: PNG / WAV / MP4 per media span, `manifest.json` of every span, `index.html`.

Each row is parsed with `VocabLayout.parse` (pieces with their token positions) and checked with
`DocumentCodec.decode` (roles and specials); media spans go through their tokenizer's `decode`
(image -> uint8 [H, W, 3], audio -> float waveform [N] or [C, N], video -> uint8 [T, H, W, 3]).
A span whose decoding fails is recorded with its error instead of stopping the whole batch.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from omniseq.document import DocumentCodec
from omniseq.tokenizers import video as video_io
from omniseq.vocab import ROLES, DecodeError

EXT = {"image": "png", "audio": "wav", "video": "mp4"}


def write_png(path: Path, image: np.ndarray) -> None:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image decoder returned {image.dtype} {image.shape}, expected uint8 [H, W, 3]")
    Image.fromarray(image).save(path)


def write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:  # [C, N] -> soundfile's [N, C]
        wave = wave.T
    if wave.ndim not in (1, 2) or not len(wave):
        raise ValueError(f"audio decoder returned shape {wave.shape}, expected [N] or [C, N]")
    sf.write(path, np.clip(wave, -1, 1), int(sample_rate))


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """A decoder's uint8 [T, H, W, 3] frames -> H.264 MP4 (omniseq.tokenizers.video.write_mp4), checked first."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"video decoder returned {frames.dtype} {frames.shape}, expected uint8 [T, H, W, 3]")
    video_io.write_mp4(frames, path, fps)


def sample_rate_of(tok) -> int:
    rate = getattr(tok, "sample_rate", None) or tok.config_dict().get("sample_rate")
    if not rate:
        raise ValueError(f"{tok.kind} audio tokenizer exposes no sample_rate (attribute or config key)")
    return int(rate)


def media_rate(codec: DocumentCodec, modality: str) -> float | None:
    """What a decoded span of `modality` plays at: an audio tokenizer's sample rate, a video's frames per second
    (the layout's rate, else the tokenizer's, else 1); None for images and for a modality with no tokenizer."""
    tok = codec.media.get(modality)
    if tok is None or modality == "image":
        return None
    if modality == "audio":
        return sample_rate_of(tok)
    return codec.layout.codebook("video").rate or getattr(tok, "fps", 0) or 1.0


def write_media(path: Path, modality: str, media, rate: float | None) -> Path:
    """One decoded span -> `path` with its modality's suffix (PNG, WAV at `rate` Hz, MP4 at `rate` fps).
    ValueError when `media` is not what that modality's decoder must return."""
    if modality not in EXT:
        raise ValueError(f"no file format for {modality} spans; expected one of {sorted(EXT)}")
    path = Path(path).with_suffix("." + EXT[modality])
    if modality == "image":
        write_png(path, media)
    elif modality == "audio":
        write_wav(path, media, rate)
    else:
        write_mp4(path, media, rate)
    return path


def render(
    codec: DocumentCodec,
    rows: Sequence[Sequence[int]],
    out_dir: str | Path,
    prompt_lens: Sequence[int] | None = None,
) -> dict:
    """Render full id rows (prompt + generated) into `out_dir`; returns the manifest it writes.

    Pieces before `prompt_lens[b]` are marked `"generated": false`; a text run that crosses it (a plain
    document continued without chat turns) is split there into a prompt piece and a generated one.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("row*_*.*"):  # a previous render's media, which this manifest would not name
        if re.fullmatch(r"row\d+_\d+\.\w+", old.name):
            old.unlink()
    layout = codec.layout
    role_ids = {layout.id(f"<|{r}|>"): r for r in ROLES if f"<|{r}|>" in layout.special_ids}
    end_id = layout.special_ids.get("<|end|>")
    manifest = {"vocab_hash": layout.hash, "rows": []}
    for b, row in enumerate(rows):
        ids = np.asarray(row, dtype=np.int64)
        p_len = prompt_lens[b] if prompt_lens is not None else 0
        entry = {"row": b, "tokens": len(ids), "prompt_tokens": int(p_len), "error": None, "pieces": []}
        manifest["rows"].append(entry)
        try:
            pieces = layout.parse(ids)
            codec.decode(ids)
        except DecodeError as e:
            entry["error"] = str(e)
            continue
        role = None
        for j, p in enumerate(pieces):
            if p.modality == "special":
                tok = int(p.payload[0])
                role = role_ids.get(tok, None if tok == end_id else role)
                continue
            if p.modality == "text":
                entry["pieces"] += _text_items(codec, p.payload, p.start, p_len, role)
                continue
            item = {
                "modality": p.modality,
                "tokens": p.end - p.start,
                "role": role,
                "generated": p.end > p_len,  # a span the prompt opened and the model finished counts as generated
                "shape": list(p.payload.shape),
            }
            item |= _render_media(codec, p.modality, p.payload, out / f"row{b:03d}_{j:02d}.{EXT[p.modality]}")
            entry["pieces"].append(item)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    (out / "index.html").write_text(page(manifest), encoding="utf-8")
    return manifest


def _text_items(codec: DocumentCodec, ids: np.ndarray, start: int, p_len: int, role: str | None) -> list[dict]:
    """A text run as manifest pieces, split where generation starts: without chat turns (`chat: false`) the
    model continues the prompt's text, and only the continuation is the model's."""
    cut = min(max(p_len - start, 0), len(ids))
    full = codec.text.decode(ids)
    head = codec.text.decode(ids[:cut])
    # Decode the whole run and take what follows the prompt's text, so a word split at the cut keeps its
    # spacing; decode the tail alone only if the tokenizer does not decode prefix-wise.
    tail = full[len(head) :] if full.startswith(head) else codec.text.decode(ids[cut:])
    parts = [(head, cut, False), (tail, len(ids) - cut, True)]
    return [{"modality": "text", "tokens": n, "role": role, "generated": gen, "text": t} for t, n, gen in parts if n]


def _render_media(codec: DocumentCodec, modality: str, codes: np.ndarray, path: Path) -> dict:
    tok = codec.media.get(modality)
    if tok is None:
        return {"file": None, "error": f"no {modality} tokenizer loaded"}
    try:
        path = write_media(path, modality, tok.decode(codes), media_rate(codec, modality))
    except (ValueError, RuntimeError) as e:
        return {"file": None, "error": f"{type(e).__name__}: {e}"}
    return {"file": path.name}


def page(manifest: dict) -> str:
    """A self-contained HTML page showing each row's interleaved result in order."""
    tags = {
        "image": '<img src="{}">',
        "audio": '<audio controls src="{}"></audio>',
        "video": '<video controls src="{}"></video>',
    }
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>omniseq samples</title><style>",
        "body{font-family:sans-serif;max-width:60em;margin:auto}",
        ".row{border-top:1px solid #ccc;padding:1em 0} .prompt{color:#777} .err{color:#b00}",
        "img,video{max-width:24em;image-rendering:pixelated;display:block}",
        "</style></head><body><h1>omniseq samples</h1>",
    ]
    for row in manifest["rows"]:
        parts.append(f"<div class='row'><h2>row {row['row']}</h2>")
        if row["error"]:
            parts.append(f"<p class='err'>{html.escape(row['error'])}</p>")
        for p in row["pieces"]:
            cls = "" if p["generated"] else " class='prompt'"
            role = f"<b>{p['role']}:</b> " if p.get("role") else ""
            if p["modality"] == "text":
                parts.append(f"<p{cls}>{role}{html.escape(p['text'])}</p>")
            elif p.get("file"):
                parts.append(f"<div{cls}>{role}" + tags[p["modality"]].format(html.escape(p["file"])) + "</div>")
            else:
                parts.append(f"<p class='err'>{p['modality']}: {html.escape(p.get('error') or '')}</p>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
