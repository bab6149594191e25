"""The demo world's vocabulary and its renderers: scenes, melodies, sound effects, speech, videos.

Issue 9: "A model that can describe a sound effect should be able to make one." The demo world is
built so that every attribute can be read back from the media without learning (omniseq.eval.analysers
uses the same constants): colours are far apart in RGB and drawn without anti-aliasing on a black
background, shapes are drawn at odd pixel sizes where every shape's mask differs, objects sit on a 3x3
grid of cells, melody notes are whole notes of one octave with no note repeated back to back, sound
effects differ in pitch trajectory, envelope or flatness, and videos move one shape by VIDEO_STEP (4) pixels a frame.

Every renderer takes a `numpy.random.Generator` and returns the media and its ground truth, so a seed
fixes every byte of the corpus.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from PIL import Image, ImageDraw

SAMPLE_RATE = 16_000  # the audio tokenizers' rate (configs/tokenizers/audio.yaml)
BACKGROUND = (0, 0, 0)
COLOURS = {
    "red": (230, 25, 25),
    "green": (30, 180, 40),
    "blue": (40, 80, 240),
    "yellow": (245, 225, 20),
    "purple": (150, 50, 200),
    "orange": (255, 140, 0),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
# Row-major 3x3 grid; the names are also the captions' wording ("at the top left", "in the centre").
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
NOTES = {"C": 60, "D": 62, "E": 64, "F": 65, "G": 67, "A": 69, "B": 71}  # MIDI numbers, C4..B4
SOUNDS = {  # class -> descriptions; each wording holds the class's keyword for metrics.parse_sound
    "rising sweep": ("a rising sweep", "a sweep rising in pitch", "a tone that rises"),
    "falling sweep": ("a falling sweep", "a sweep falling in pitch", "a tone that falls"),
    "beeps": ("a few short beeps", "beeping", "short beeps"),
    "noise burst": ("a burst of noise", "a noise burst", "a short hiss of noise"),
    "low hum": ("a low hum", "a steady low hum", "a deep hum"),
    "high whistle": ("a high whistle", "a steady high whistle", "a shrill whistle"),
    "warble": ("a warbling tone", "a warble", "a tone that warbles"),
}
DIRECTIONS = ("left", "right", "up", "down")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASES = ("hello world", "good morning", "thank you", "how are you", "see you soon", "the demo works")
VOICES = ("en", "en-us")  # espeak-ng's British and American English
VIDEO_STEP = 4  # pixels per frame


def note_frequency(name: str) -> float:
    return 440.0 * 2.0 ** ((NOTES[name] - 69) / 12)


def speech_texts() -> list[str]:
    """The finite set of utterances (the speech recogniser's classes): digits, colour+shape, phrases."""
    return [*DIGITS, *(f"{c} {s}" for c in COLOURS for s in SHAPES), *PHRASES]


# ----------------------------------------------------------------------------------------------- images
def odd_side(x: float) -> int:
    """Nearest odd integer: odd sizes keep circles, triangles and diamonds symmetric and distinct."""
    return max(3, 2 * round((x - 1) / 2) + 1)


def shape_sides(image_size: int) -> dict[str, int]:
    cell = image_size / 3
    return {"small": odd_side(0.5 * cell), "large": odd_side(0.85 * cell)}


def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """bool [height, width]: `shape` filling its box (the analysers match against these templates)."""
    im = Image.new("1", (width, height), 0)
    d = ImageDraw.Draw(im)
    x1, y1 = width - 1, height - 1
    cx, cy = x1 / 2, y1 / 2
    if shape == "circle":
        d.ellipse([0, 0, x1, y1], fill=1)
    elif shape == "square":
        d.rectangle([0, 0, x1, y1], fill=1)
    elif shape == "triangle":
        d.polygon([(cx, 0), (x1, y1), (0, y1)], fill=1)
    elif shape == "diamond":
        d.polygon([(cx, 0), (x1, cy), (cx, y1), (0, cy)], fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.array(im, dtype=bool)


def cell_centre(position: str, image_size: int) -> tuple[float, float]:
    """(x, y) of the centre of a grid cell, in pixels."""
    row, col = divmod(POSITIONS.index(position), 3)
    cell = image_size / 3
    return (col + 0.5) * cell, (row + 0.5) * cell


def paint(canvas: np.ndarray, shape: str, colour: str, side: int, x: float, y: float) -> None:
    """Draw a shape of `side` pixels centred near (x, y) onto canvas [H, W, 3] (clipped at the edges)."""
    x0, y0 = round(x - side / 2), round(y - side / 2)
    mask = shape_mask(shape, side, side)
    H, W = canvas.shape[:2]
    ys, xs = np.nonzero(mask)
    ys, xs = ys + y0, xs + x0
    keep = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
    canvas[ys[keep], xs[keep]] = COLOURS[colour]


def render_scene(rng: np.random.Generator, image_size: int, n_objects: int) -> tuple[np.ndarray, list[dict]]:
    """uint8 [S, S, 3] with `n_objects` shapes of distinct colours in distinct cells, and their attributes."""
    canvas = np.zeros((image_size, image_size, 3), np.uint8)
    canvas[:] = BACKGROUND
    sides = shape_sides(image_size)
    colours = rng.choice(list(COLOURS), n_objects, replace=False)
    places = rng.choice(len(POSITIONS), n_objects, replace=False)
    objects = []
    for colour, place in zip(colours, places):
        obj = {
            "colour": str(colour),
            "shape": str(rng.choice(SHAPES)),
            "size": str(rng.choice(SIZES)),
            "position": POSITIONS[int(place)],
        }
        x, y = cell_centre(obj["position"], image_size)
        jitter = rng.integers(-1, 2, size=2)  # a pixel either way: variety that stays inside the cell
        paint(canvas, obj["shape"], obj["colour"], sides[obj["size"]], x + jitter[0], y + jitter[1])
        objects.append(obj)
    return canvas, objects


def place_phrase(position: str) -> str:
    if position == "centre":
        return "in the centre"
    return f"on the {position}" if position in ("left", "right") else f"at the {position}"


def describe_objects(objects: list[dict]) -> str:
    """'a large red circle at the top left and a small blue square in the centre'."""
    return " and ".join(f"a {o['size']} {o['colour']} {o['shape']} {place_phrase(o['position'])}" for o in objects)


def save_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format="PNG", optimize=False)  # Pillow's PNG bytes depend only on pixels


# ------------------------------------------------------------------------------------------------ audio
def envelope(n: int, attack: float = 0.01, release: float = 0.03) -> np.ndarray:
    """Linear attack and release (seconds): no clicks, and a dip between notes that marks their edges."""
    env = np.ones(n, np.float32)
    a, r = min(n // 2, int(attack * SAMPLE_RATE)), min(n // 2, int(release * SAMPLE_RATE))
    env[:a] = np.linspace(0, 1, a, endpoint=False)
    env[n - r :] = np.linspace(1, 0, r)
    return env


def tone(freq: float | np.ndarray, seconds: float, harmonics=(1.0, 0.3, 0.1)) -> np.ndarray:
    """A tone of constant or per-sample frequency (phase integrated, so sweeps stay continuous)."""
    n = int(round(seconds * SAMPLE_RATE))
    f = np.broadcast_to(np.asarray(freq, np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    wave = sum(a * np.sin((k + 1) * phase) for k, a in enumerate(harmonics))
    return (wave / sum(harmonics)).astype(np.float32)


def render_melody(notes: list[str], note_seconds: float) -> np.ndarray:
    """float32 [T] at 16 kHz: one enveloped tone per note, back to back."""
    n = int(round(note_seconds * SAMPLE_RATE))
    parts = [0.5 * tone(note_frequency(name), note_seconds) * envelope(n) for name in notes]
    return np.concatenate(parts)


def draw_melody(rng: np.random.Generator, min_notes: int, max_notes: int) -> list[str]:
    """Notes with no immediate repeat: a repeated note would have no boundary an analyser could hear."""
    names = list(NOTES)
    notes = [str(rng.choice(names))]
    for _ in range(int(rng.integers(min_notes, max_notes + 1)) - 1):
        notes.append(str(rng.choice([n for n in names if n != notes[-1]])))
    return notes


def render_sound(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, dict]:
    """One sound effect of class `kind` with randomised parameters -> (float32 [T], parameters)."""
    seconds = float(rng.uniform(0.6, 1.0))
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    params: dict = {"seconds": round(seconds, 3)}
    if kind in ("rising sweep", "falling sweep"):
        lo, hi = float(rng.uniform(250, 400)), float(rng.uniform(1200, 2000))
        f0, f1 = (lo, hi) if kind == "rising sweep" else (hi, lo)
        wave = tone(f0 * (f1 / f0) ** (t / seconds), seconds)  # exponential: equal octaves per second
        params.update(start_hz=round(f0, 1), end_hz=round(f1, 1))
    elif kind == "beeps":
        count, freq, beep = int(rng.integers(2, 5)), float(rng.uniform(800, 1200)), 0.1
        m = int(beep * SAMPLE_RATE)
        one = np.concatenate([tone(freq, beep) * envelope(m, 0.005, 0.01), np.zeros(m, np.float32)])
        wave = np.tile(one, count)
        params.update(count=count, hz=round(freq, 1))
        n = len(wave)
    elif kind == "noise burst":
        wave = rng.uniform(-1, 1, n).astype(np.float32) * np.exp(-3 * t / seconds).astype(np.float32)
    elif kind in ("low hum", "high whistle"):
        freq = float(rng.uniform(100, 160) if kind == "low hum" else rng.uniform(2000, 3000))
        wave = tone(freq, seconds, harmonics=(1.0,))  # pure: a whistle's 3rd harmonic would alias past 8 kHz
        params.update(hz=round(freq, 1))
    elif kind == "warble":
        centre, rate = float(rng.uniform(600, 900)), float(rng.uniform(6, 10))
        wave = tone(centre * 2 ** (0.3 * np.sin(2 * np.pi * rate * t)), seconds)  # +-0.3 octave vibrato
        params.update(hz=round(centre, 1), rate_hz=round(rate, 2))
    else:
        raise ValueError(f"unknown sound {kind!r}; expected one of {list(SOUNDS)}")
    return (0.5 * wave * envelope(n, 0.005, 0.02)).astype(np.float32), params


def save_wav(wave: np.ndarray, path: Path) -> None:
    sf.write(str(path), np.clip(wave, -1, 1), SAMPLE_RATE, subtype="PCM_16", format="WAV")


def espeak_binary() -> str | None:
    return shutil.which("espeak-ng")


def draw_voice(rng: np.random.Generator) -> dict:
    """espeak-ng settings of one utterance: speaking rate (words/min), pitch (0-99) and accent."""
    return {
        "speed": int(rng.integers(130, 201)),
        "pitch": int(rng.integers(30, 71)),
        "voice": str(rng.choice(VOICES)),
    }


def speak(text: str, speed: int = 160, pitch: int = 50, voice: str = "en") -> np.ndarray:
    """espeak-ng's rendering of `text` resampled to 16 kHz (soxr), float32 [T]."""
    exe = espeak_binary()
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text]
        subprocess.run(cmd, check=True, capture_output=True)
        wave, sr = sf.read(str(out), dtype="float32")
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    return soxr.resample(wave, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)


# ------------------------------------------------------------------------------------------------ video
def render_video(rng: np.random.Generator, frames: int, size: int) -> tuple[np.ndarray, dict]:  # uint8 [T, S, S, 3]
    """One large shape crossing the frame in one direction, VIDEO_STEP pixels per frame."""
    truth = {
        "colour": str(rng.choice(list(COLOURS))),
        "shape": str(rng.choice(SHAPES)),
        "direction": str(rng.choice(DIRECTIONS)),
    }
    side = shape_sides(size)["large"]
    travel = VIDEO_STEP * (frames - 1)
    start = size / 2 + travel / 2  # centred path: it starts on one side and ends on the other
    across = float(rng.uniform(side / 2 + 1, size - side / 2 - 1))  # the other coordinate stays fixed
    sign = -1 if truth["direction"] in ("left", "up") else 1
    clip = np.zeros((frames, size, size, 3), np.uint8)
    for i in range(frames):
        along = (start if sign < 0 else size - start) + sign * VIDEO_STEP * i
        x, y = (along, across) if truth["direction"] in ("left", "right") else (across, along)
        paint(clip[i], truth["shape"], truth["colour"], side, x, y)
    return clip, truth


def caption_video(truth: dict) -> str:
    return f"a {truth['colour']} {truth['shape']} moving {truth['direction']}"


def save_npz(frames: np.ndarray, path: Path) -> None:
    """npz with one array `frames`, uint8 [T, H, W, 3]; written with a fixed zip timestamp because
    numpy.savez stamps the current time and the corpus must be byte-identical for one seed."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(frames), allow_pickle=False)
    info = zipfile.ZipInfo("frames.npy", date_time=(1980, 1, 1, 0, 0, 0))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED)


def save_mp4(frames: np.ndarray, path: Path, fps: int = 8) -> None:
    """H.264 through PyAV (lossy: analysers still read the colours, but exact pixels need npz)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


def load_video(path: str | Path) -> np.ndarray:
    """uint8 [T, H, W, 3] from the demo's npz or mp4 (for the analysers and tests)."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            return z["frames"]
    import av

    with av.open(str(path)) as f:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])
