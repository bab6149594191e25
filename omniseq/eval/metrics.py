"""Attribute accuracy per direction on the demo world (issue 9).

Both halves of an evaluation land in the shape of the corpus' "meta" (omniseq.data.demo_corpus):
generated media through omniseq.eval.analysers.analyse, generated text through `parse_text` here, so
one `compare(kind, predicted, truth)` scores every direction:

    x -> text   parse_text(kind, generated text)      vs the item's meta
    text -> x   analysers.analyse(kind, decoded media) vs the prompt's meta

`compare` returns per-attribute scores in [0, 1] plus "exact" (everything right); `mean_scores`
averages them over a set of items.
"""

from __future__ import annotations

import re
from collections import defaultdict

from omniseq.data import demo_media as dm

OBJECT_FIELDS = ("colour", "shape", "size", "position")
VIDEO_FIELDS = ("colour", "shape", "direction")
SOUND_KEYWORDS = (  # first match wins; every wording in demo_media.SOUNDS holds its class's stem
    ("ris", "rising sweep"),
    ("fall", "falling sweep"),
    ("beep", "beeps"),
    ("noise", "noise burst"),
    ("hiss", "noise burst"),
    ("warbl", "warble"),
    ("hum", "low hum"),
    ("whistle", "high whistle"),
)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def first_of(tokens: list[str], vocabulary) -> str | None:
    return next((t for t in tokens if t in vocabulary), None)


def parse_position(tokens: list[str]) -> str | None:
    """'at the top left' -> 'top left', 'on the right' -> 'right', 'in the centre' -> 'centre'."""
    row = first_of(tokens, ("top", "bottom"))
    col = first_of(tokens, ("left", "right"))
    if row or col:
        return " ".join(p for p in (row, col) if p)
    return "centre" if first_of(tokens, ("centre", "center", "middle")) else None


def parse_objects(text: str) -> dict:
    """'a large red circle at the top left and a small blue square in the centre' -> {"objects": [...]}:
    one object per clause that names a colour or a shape; missing attributes are None."""
    objects = []
    for clause in re.split(r"\band\b|[,;.]", text.lower()):
        tokens = words(clause)
        obj = {
            "colour": first_of(tokens, dm.COLOURS),
            "shape": first_of(tokens, dm.SHAPES),
            "size": first_of(tokens, dm.SIZES),
            "position": parse_position(tokens),
        }
        if obj["colour"] or obj["shape"]:
            objects.append(obj)
    return {"objects": objects}


def parse_notes(text: str) -> dict:
    """'C E G' (or 'C4, E4, G4') -> {"notes": ["C", "E", "G"]}; capitals only: "a" is an article."""
    return {"notes": re.findall(r"\b([A-G])\d?\b", text)}


def parse_sound(text: str) -> dict:
    low = text.lower()
    return {"sound": next((cls for key, cls in SOUND_KEYWORDS if key in low), None)}


def parse_motion(text: str) -> dict:
    tokens = words(text)
    return {
        "colour": first_of(tokens, dm.COLOURS),
        "shape": first_of(tokens, dm.SHAPES),
        "direction": first_of(tokens, dm.DIRECTIONS),
    }


def normalise_transcript(text: str) -> str:
    return " ".join(words(text))


def parse_text(kind: str, text: str) -> dict:
    """Generated text -> attributes in the shape of the kind's meta."""
    if kind == "image":
        return parse_objects(text)
    if kind == "melody":
        return parse_notes(text)
    if kind == "sound":
        return parse_sound(text)
    if kind == "video":
        return parse_motion(text)
    if kind == "speech":
        return {"transcript": normalise_transcript(text)}
    raise ValueError(f"unknown kind {kind!r}; expected image, melody, sound, speech or video")


def describe(attributes: dict) -> str:
    """Attributes (parse_text's or an analyser's) -> a short phrase for a picture's caption: `red circle large
    top left`, `C E G`, `beeps 3`, `blue square up`; `nothing` where nothing was found."""
    parts = []
    for value in attributes.values():
        if isinstance(value, list) and all(isinstance(o, dict) for o in value):  # objects
            parts.append("; ".join(" ".join(str(v) for v in o.values() if v is not None) for o in value))
        elif isinstance(value, list):  # notes
            parts.append(" ".join(str(v) for v in value))
        elif value is not None and value != 0:
            parts.append(str(value))
    return " ".join(p for p in parts if p) or "nothing"


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance between two sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def sequence_scores(pred: list, truth: list) -> dict[str, float]:
    """exact match, and 1 - edit distance / length (the note or word accuracy, floored at 0)."""
    accuracy = max(0.0, 1 - edit_distance(pred, truth) / max(1, len(truth)))
    return {"exact": float(pred == truth), "accuracy": accuracy}


def object_scores(pred: list[dict], truth: list[dict]) -> dict[str, float]:
    """Each true object is matched to the unused predicted object agreeing on most attributes; scores are
    per attribute over max(true, predicted) objects, so an extra object counts against them as a missing one
    does (over true objects alone, naming or drawing every colour scored 100%); "exact" also needs the count."""
    unused = list(pred)
    hits: dict[str, float] = dict.fromkeys(OBJECT_FIELDS, 0.0)
    for t in truth:
        if not unused:
            break
        best = max(unused, key=lambda p: sum(p.get(f) == t[f] for f in OBJECT_FIELDS))
        unused.remove(best)
        for f in OBJECT_FIELDS:
            hits[f] += best.get(f) == t[f]
    n = max(1, len(truth), len(pred))
    out = {f: hits[f] / n for f in OBJECT_FIELDS}
    out["count"] = float(len(pred) == len(truth))
    out["exact"] = float(out["count"] == 1.0 and all(out[f] == 1.0 for f in OBJECT_FIELDS))
    return out


def compare(kind: str, pred: dict, truth: dict) -> dict[str, float]:
    """Per-attribute scores in [0, 1] and "exact" for one item."""
    if kind == "image":
        return object_scores(pred.get("objects", []), truth["objects"])
    if kind == "melody":
        return sequence_scores(pred.get("notes", []), truth["notes"])
    if kind == "sound":
        return {"exact": float(pred.get("sound") == truth["sound"])}
    if kind == "video":
        out = {f: float(pred.get(f) == truth[f]) for f in VIDEO_FIELDS}
        return {**out, "exact": float(all(out.values()))}
    if kind == "speech":
        said, meant = (
            normalise_transcript(pred.get("transcript") or ""),
            normalise_transcript(truth["transcript"]),
        )
        return sequence_scores(said.split(), meant.split())
    raise ValueError(f"unknown kind {kind!r}; expected image, melody, sound, speech or video")


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average of each key over the rows (and "n", the number of rows)."""
    sums: dict[str, float] = defaultdict(float)
    for row in rows:
        for k, v in row.items():
            sums[k] += v
    return {**{k: v / len(rows) for k, v in sums.items()}, "n": len(rows)} if rows else {"n": 0}
