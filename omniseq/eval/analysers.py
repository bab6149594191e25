"""Analysers: read the demo world's attributes back from media, with no learned model where possible.

Issue 9: the harness scores text->image, text->audio, text->video and text->speech by analysing what the
model generated and comparing with the prompt's ground truth. Every analyser takes decoded arrays (uint8
[H, W, 3] images, float waveforms at 16 kHz: SAMPLE_RATE, to which the harness resamples a codec's decode,
uint8 [T, H, W, 3] clips) and returns attributes in the shape of the corpus' "meta"
(omniseq.data.demo_corpus), so omniseq.eval.metrics.compare can score them:

    image   pixels -> nearest palette colour; per colour the largest blob; its box centre -> grid cell,
            its box side -> nearest size, its mask -> the best-overlapping shape template (IoU)
    melody  32 ms frames, spectral peak -> nearest note; runs of one note between energy dips -> notes
    sound   rules on spectral flatness, the number of bursts, and the log-pitch track's slope and wobble
    video   the dominant colour's centroid track -> direction; colour and shape from the middle frame
    speech  nearest neighbour over time-normalised log-mel features of espeak-ng references for the
            finite set of demo utterances (a recogniser trained inside the harness; needs espeak-ng)
"""

from __future__ import annotations

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from omniseq.data import demo_media as dm

SAMPLE_RATE = dm.SAMPLE_RATE  # the rate every audio analyser reads (the demo media's)
PALETTE = np.array([dm.BACKGROUND, *dm.COLOURS.values()], np.float32)  # index 0: background
COLOUR_NAMES = list(dm.COLOURS)
STILL_PX_PER_FRAME = 1.0  # a tracked shape slower than this has no direction (the world's move VIDEO_STEP = 4)
SILENCE_PEAK = 1e-3  # a waveform whose peak stays below -60 dBFS is silence: no transcript


def _rgb(image) -> np.ndarray:
    x = np.asarray(image)
    if x.ndim != 3 or x.shape[2] < 3:
        raise ValueError(f"expected an image of shape [H, W, 3], got {x.shape}")
    return x[..., :3].astype(np.float32)


def colour_labels(image) -> np.ndarray:
    """int [H, W]: index into PALETTE of each pixel (0 = background).

    A pixel's colour is the palette colour its RGB direction is closest to (cosine), and it is foreground
    when its projection onto that colour is at least half of it: a pixel blended half-way with the black
    background, as at a shape's anti-aliased or decoded (blurred) edge, belongs to the shape by the same
    rule that rasterised it. Nearest-RGB labelling instead gave blurred edges to darker palette colours,
    which ate small shapes' corners (shape accuracy 40% on the demo tokenizer's reconstructions)."""
    x = _rgb(image)
    colours = PALETTE[1:]  # [P, 3]
    proj = x @ colours.T / (colours**2).sum(-1)  # [H, W, P]: each pixel as a multiple of each colour
    cos = x @ colours.T / (np.linalg.norm(x, axis=-1, keepdims=True) * np.linalg.norm(colours, axis=-1) + 1e-6)
    best = cos.argmax(-1)  # [H, W]
    alpha = np.take_along_axis(proj, best[..., None], -1)[..., 0]
    return np.where(alpha >= 0.5, best + 1, 0)


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component: stray pixels of a generated image do not move the box."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))


def describe_blob(mask: np.ndarray) -> dict:
    """Shape, size and position of one object's mask [H, W] (bool)."""
    H, W = mask.shape
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    crop = mask[y0 : y1 + 1, x0 : x1 + 1]
    ious = {}
    for shape in dm.SHAPES:
        template = dm.shape_mask(shape, crop.shape[1], crop.shape[0])
        ious[shape] = (template & crop).sum() / max(1, (template | crop).sum())
    row = min(2, int((y0 + y1 + 1) / 2 / (H / 3)))
    col = min(2, int((x0 + x1 + 1) / 2 / (W / 3)))
    sides = dm.shape_sides(W)
    side = max(y1 - y0, x1 - x0) + 1
    return {
        "shape": max(ious, key=ious.get),
        "size": min(sides, key=lambda s: abs(sides[s] - side)),
        "position": dm.POSITIONS[3 * row + col],
    }


def analyse_image(image, min_fraction: float = 0.3) -> dict:
    """{"objects": [{colour, shape, size, position}, ...]} in reading order of their cells.

    A colour counts as an object when its largest blob covers at least `min_fraction` of a small
    shape's box: less is noise from a generated image, not a shape."""
    labels = colour_labels(image)
    min_pixels = min_fraction * dm.shape_sides(labels.shape[1])["small"] ** 2
    objects = []
    for index, name in enumerate(COLOUR_NAMES, 1):
        mask = labels == index
        if mask.sum() < min_pixels:
            continue
        blob = largest_blob(mask)
        if blob.sum() >= min_pixels:
            objects.append({"colour": name, **describe_blob(blob)})
    objects.sort(key=lambda o: dm.POSITIONS.index(o["position"]))
    return {"objects": objects}


# ------------------------------------------------------------------------------------------------ audio
def frames_spectrum(wave, sr: int, frame: int = 512, hop: int = 128, nfft: int = 4096):
    """Per frame: RMS [F], power spectrum [F, nfft/2+1], and the bins' frequencies. Zero padding to
    `nfft` gives 3.9 Hz bins at 16 kHz, finer than the 20 Hz between E4 and F4."""
    x = np.asarray(wave, np.float32).reshape(-1)
    if len(x) < frame:
        x = np.pad(x, (0, frame - len(x)))
    windows = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]  # [F, frame]
    rms = np.sqrt((windows**2).mean(axis=1))
    power = np.abs(np.fft.rfft(windows * np.hanning(frame), nfft)) ** 2  # [F, bins]
    return rms, power, np.fft.rfftfreq(nfft, 1 / sr)


def peak_frequency(power: np.ndarray, freqs: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Frequency [F] of the strongest bin in [lo, hi] per frame."""
    band = (freqs >= lo) & (freqs <= hi)
    return freqs[band][power[:, band].argmax(axis=1)]


def runs(labels: list) -> list[tuple[object, int, int]]:
    """(label, start, end) of each run of equal consecutive labels."""
    out, i = [], 0
    for label, group in itertools.groupby(labels):
        n = len(list(group))
        out.append((label, i, i + n))
        i += n
    return out


def analyse_melody(wave, sr: int = dm.SAMPLE_RATE, min_frames: int = 3) -> dict:
    """{"notes": [...]}: note names in order. A note is a run of >= `min_frames` frames (24 ms) with one
    nearest note; shorter runs are frames straddling two notes."""
    rms, power, freqs = frames_spectrum(wave, sr)
    if rms.max() <= 0:
        return {"notes": []}
    names = list(dm.NOTES)
    ref = np.log2([dm.note_frequency(n) for n in names])
    lo, hi = dm.note_frequency(names[0]) * 0.9, dm.note_frequency(names[-1]) * 1.05  # below C4's 2nd harmonic
    pitch = np.log2(peak_frequency(power, freqs, lo, hi))
    nearest = np.abs(pitch[:, None] - ref[None]).argmin(axis=1)
    active = rms > 0.2 * rms.max()
    labels = [names[k] if a else None for k, a in zip(nearest, active)]
    notes: list[str] = []
    last_end = -1
    for label, start, end in runs(labels):
        if label is None or end - start < min_frames:
            continue
        # A run separated from the previous same-named run only by straddling frames (no silence) is one note.
        if notes and notes[-1] == label and all(lab is not None for lab in labels[last_end:start]):
            last_end = end
            continue
        notes.append(label)
        last_end = end
    return {"notes": notes}


def spectral_flatness(power: np.ndarray, freqs: np.ndarray, lo: float = 100, hi: float = 7000) -> np.ndarray:
    band = power[:, (freqs >= lo) & (freqs <= hi)] + 1e-12
    return np.exp(np.log(band).mean(axis=1)) / band.mean(axis=1)


def analyse_sound(wave, sr: int = dm.SAMPLE_RATE) -> dict:
    """{"sound": class, "bursts": n}. Rules, in order: flat spectrum -> noise burst; several bursts ->
    beeps; log-pitch moving > 0.8 octave -> rising/falling sweep; wobbling > 0.08 octave -> warble;
    otherwise a steady tone, below 500 Hz a hum, above a whistle."""
    rms, power, freqs = frames_spectrum(wave, sr)
    if rms.max() <= 0:
        return {"sound": None, "bursts": 0}
    active = rms > 0.1 * rms.max()
    bursts = sum(1 for a, s, e in runs(list(active)) if a and e - s >= 3)
    if np.median(spectral_flatness(power, freqs)[active]) > 0.2:
        return {"sound": "noise burst", "bursts": bursts}
    if bursts >= 2:
        return {"sound": "beeps", "bursts": bursts}
    t = np.nonzero(active)[0].astype(np.float64)
    pitch = np.log2(peak_frequency(power, freqs, 50, 7000)[active])
    slope, intercept = np.polyfit(t, pitch, 1) if len(t) > 1 else (0.0, pitch.mean())
    change = slope * (t[-1] - t[0])  # octaves over the sound
    wobble = np.std(pitch - (slope * t + intercept))
    if abs(change) > 0.8:
        kind = "rising sweep" if change > 0 else "falling sweep"
    elif wobble > 0.08:
        kind = "warble"
    else:
        kind = "low hum" if np.median(pitch) < np.log2(500) else "high whistle"
    return {"sound": kind, "bursts": bursts}


# ------------------------------------------------------------------------------------------------ video
def analyse_video(frames) -> dict:
    """{"colour", "shape", "direction"} of the clip's main object, from its centroid track."""
    clip = np.asarray(frames)
    if clip.ndim != 4 or clip.shape[-1] < 3:
        raise ValueError(f"expected a clip of shape [T, H, W, 3], got {clip.shape}")
    labels = np.stack([colour_labels(f) for f in clip])  # [T, H, W]
    counts = np.bincount(labels.reshape(-1), minlength=len(PALETTE))[1:]
    if counts.sum() == 0:
        return {"colour": None, "shape": None, "direction": None}
    index = 1 + int(counts.argmax())
    track = [ndimage.center_of_mass(labels[t] == index) for t in range(len(clip)) if (labels[t] == index).any()]
    ys, xs = np.array(track).T if track else (np.zeros(1), np.zeros(1))
    steps = np.arange(len(xs))
    dx = np.polyfit(steps, xs, 1)[0] if len(xs) > 1 else 0.0  # pixels per frame
    dy = np.polyfit(steps, ys, 1)[0] if len(ys) > 1 else 0.0
    if max(abs(dx), abs(dy)) < STILL_PX_PER_FRAME:  # a still (or one-frame) clip moves nowhere, not "left"
        direction = None
    elif abs(dx) >= abs(dy):
        direction = "right" if dx > 0 else "left"
    else:
        direction = "down" if dy > 0 else "up"
    middle = labels[len(clip) // 2] == index
    shape = describe_blob(largest_blob(middle))["shape"] if middle.any() else None
    return {"colour": COLOUR_NAMES[index - 1], "shape": shape, "direction": direction}


# ----------------------------------------------------------------------------------------------- speech
@functools.lru_cache(maxsize=8)
def mel_filterbank(sr: int, nfft: int, n_mels: int, fmin: float = 60.0, fmax: float = 7600.0) -> np.ndarray:
    """Triangular filters [n_mels, nfft/2+1] evenly spaced on the HTK mel scale."""
    mel = lambda f: 2595 * np.log10(1 + np.asarray(f) / 700)
    edges = 700 * (10 ** (np.linspace(mel(fmin), mel(fmax), n_mels + 2) / 2595) - 1)
    freqs = np.fft.rfftfreq(nfft, 1 / sr)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)


def speech_features(wave, sr: int = dm.SAMPLE_RATE, n_mels: int = 40, n_frames: int = 32) -> np.ndarray:
    """Unit vector [n_mels * n_frames]: log-mel frames (25 ms, hop 10 ms) over the voiced span,
    stretched to `n_frames` (speaking rate drops out), minus each band's mean (voice colour drops out)."""
    x = np.asarray(wave, np.float32).reshape(-1)
    x = np.pad(x, (0, max(0, 400 - len(x))))
    windows = np.lib.stride_tricks.sliding_window_view(x, 400)[::160] * np.hanning(400)  # [F, 400]
    power = np.abs(np.fft.rfft(windows, 512)) ** 2
    logmel = np.log(power @ mel_filterbank(sr, 512, n_mels).T + 1e-8)  # [F, n_mels]
    energy = logmel.max(axis=1)
    voiced = np.nonzero(energy > energy.max() - 8.0)[0]  # within ~35 dB of the loudest frame
    logmel = logmel[voiced[0] : voiced[-1] + 1]
    grid = np.linspace(0, len(logmel) - 1, n_frames)
    stretched = np.stack([np.interp(grid, np.arange(len(logmel)), band) for band in logmel.T])  # [n_mels, n_frames]
    stretched -= stretched.mean(axis=1, keepdims=True)
    flat = stretched.reshape(-1)
    return flat / (np.linalg.norm(flat) + 1e-8)


class SpeechRecogniser:
    """Nearest neighbour (cosine) over `speech_features` of reference utterances: the demo's speech is a
    finite set of texts (demo_media.speech_texts), so recognition is classification over that set."""

    def __init__(self, waves: list[np.ndarray], texts: list[str]):
        if len(waves) != len(texts) or not waves:
            raise ValueError(f"need as many reference texts as waves (>= 1), got {len(texts)} and {len(waves)}")
        self.texts = list(texts)
        self.refs = np.stack([speech_features(w) for w in waves])  # [N, D]

    @classmethod
    def from_espeak(
        cls, texts: list[str] | None = None, speeds=(140, 170, 200), pitches=(50,), voices=dm.VOICES
    ) -> SpeechRecogniser:
        """References rendered by espeak-ng over a grid covering the corpus' voice ranges."""
        texts = texts or dm.speech_texts()
        grid = list(itertools.product(texts, speeds, pitches, voices))
        with ThreadPoolExecutor(max_workers=4) as pool:  # each call waits on an espeak-ng process
            waves = list(pool.map(lambda g: dm.speak(g[0], speed=g[1], pitch=g[2], voice=g[3]), grid))
        return cls(waves, [t for t, *_ in grid])

    def predict(self, wave) -> str:
        """The nearest reference's text; "" for silence or nothing, whose all-zero features tie with every
        reference (argmax then named the first, "zero", and an empty answer to "say zero." scored 100%)."""
        x = np.asarray(wave, dtype=np.float64).reshape(-1)
        if x.size == 0 or np.abs(x).max() < SILENCE_PEAK:
            return ""
        return self.texts[int(np.argmax(self.refs @ speech_features(x)))]


def analyse(kind: str, media, recogniser=None) -> dict:
    """Dispatch on the corpus kind (image, melody, sound, speech, video)."""
    if kind == "image":
        return analyse_image(media)
    if kind == "melody":
        return analyse_melody(media)
    if kind == "sound":
        return analyse_sound(media)
    if kind == "video":
        return analyse_video(media)
    if kind == "speech":
        if recogniser is None:
            raise ValueError("speech analysis needs a SpeechRecogniser (SpeechRecogniser.from_espeak())")
        return {"transcript": recogniser.predict(media)}
    raise ValueError(f"unknown kind {kind!r}; expected image, melody, sound, speech or video")
