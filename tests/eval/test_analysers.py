"""Analysers recover the demo world's ground truth from its media (>= 99% over generated sets)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from omniseq.data import demo_corpus as dc
from omniseq.data import demo_media as dm
from omniseq.eval import analysers as an


def accuracy(pairs) -> float:
    pairs = list(pairs)
    return sum(p == t for p, t in pairs) / len(pairs)


def by_cell(objects):
    return sorted(objects, key=lambda o: dm.POSITIONS.index(o["position"]))


@pytest.mark.parametrize("size,max_objects", [(32, 1), (32, 3), (64, 2)])
def test_image_analyser_reads_colour_shape_size_position(size, max_objects):
    rng = np.random.default_rng(size + max_objects)
    pairs = []
    for _ in range(200):
        image, objects = dm.render_scene(rng, size, int(rng.integers(1, max_objects + 1)))
        pairs.append((an.analyse_image(image)["objects"], by_cell(objects)))
    assert accuracy(pairs) >= 0.99


def test_image_analyser_reads_blurred_scenes():
    """A decoded image is blurred at the edges (a VQ decoder at 8x8 codes): the analyser must still read
    small shapes. Nearest-RGB labelling read 82% of these scenes exactly; the blend rule reads all."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    pairs = []
    for _ in range(200):
        image, objects = dm.render_scene(rng, 32, 1)
        blurred = ndimage.gaussian_filter(image.astype(np.float32), sigma=(0.6, 0.6, 0)).round().astype(np.uint8)
        pairs.append((an.analyse_image(blurred)["objects"], by_cell(objects)))
    assert accuracy(pairs) >= 0.95


def test_image_analyser_sees_nothing_in_an_empty_image():
    assert an.analyse_image(np.zeros((32, 32, 3), np.uint8)) == {"objects": []}


def test_melody_analyser_reads_the_notes():
    rng = np.random.default_rng(0)
    melodies = [dm.draw_melody(rng, 3, 5) for _ in range(150)]
    assert accuracy((an.analyse_melody(dm.render_melody(m, 0.25))["notes"], m) for m in melodies) >= 0.99


def test_melody_analyser_hears_nothing_in_silence():
    assert an.analyse_melody(np.zeros(4000, np.float32)) == {"notes": []}


def test_sound_analyser_tells_every_class_apart():
    rng = np.random.default_rng(1)
    pairs = []
    for kind in dm.SOUNDS:
        for _ in range(25):
            wave, params = dm.render_sound(rng, kind)
            got = an.analyse_sound(wave)
            pairs.append((got["sound"], kind))
            if kind == "beeps":
                pairs.append((got["bursts"], params["count"]))
    assert accuracy(pairs) >= 0.99


@pytest.mark.parametrize("size", [32, 64])
def test_video_analyser_reads_motion_colour_and_shape(size):
    rng = np.random.default_rng(size)
    pairs = []
    for _ in range(80):
        clip, truth = dm.render_video(rng, 8, size)
        pairs.append((an.analyse_video(clip), truth))
    assert accuracy(pairs) >= 0.99


def test_analysers_read_the_written_corpus_files(tmp_path):
    """PNG, 16-bit WAV, npz and mp4 files as written by the generator, through `analyse`."""
    counts = {"image": 20, "melody": 10, "sound": 14, "speech": 0, "video": 6, "interleaved": 0}
    for fmt in ("npz", "mp4"):
        out = tmp_path / fmt
        dc.generate(dc.DemoConfig(seed=5, counts=counts, video_format=fmt, speech="never"), out)
        for kind in ("image", "melody", "sound", "video"):
            for split in ("train", "eval"):
                for line in (out / f"{kind}.{split}.jsonl").read_text().splitlines():
                    obj = json.loads(line)
                    path = out / obj[dc.MODALITY[kind]]
                    if kind == "image":
                        got = an.analyse("image", np.asarray(Image.open(path).convert("RGB")))
                        assert got["objects"] == by_cell(obj["meta"]["objects"])
                    elif kind == "video":
                        got = an.analyse("video", dm.load_video(path))
                        assert got == {k: obj["meta"][k] for k in ("colour", "shape", "direction")}
                    else:
                        wave, sr = sf.read(str(path), dtype="float32")
                        got = an.analyse(kind, wave)
                        key = "notes" if kind == "melody" else "sound"
                        assert sr == dm.SAMPLE_RATE and got[key] == obj["meta"][key]


@pytest.mark.skipif(dm.espeak_binary() is None, reason="espeak-ng is not installed")
def test_speech_recogniser_transcribes_unseen_voices():
    recogniser = an.SpeechRecogniser.from_espeak()
    rng = np.random.default_rng(7)
    texts = dm.speech_texts()
    pairs = []
    for i in range(len(texts)):  # every utterance once, at a speed and pitch drawn as the corpus draws them
        voice = dm.draw_voice(rng)
        pairs.append((an.analyse("speech", dm.speak(texts[i], **voice), recogniser)["transcript"], texts[i]))
    assert accuracy(pairs) >= 0.99


@pytest.mark.parametrize("frames", [1, 4])
def test_a_still_video_has_no_direction(frames):
    """A shape that does not move (or a one-frame clip) is not read as moving left, which gave motionless
    output the direction of every "moving left" prompt."""
    clip, truth = dm.render_video(np.random.default_rng(0), 4, 32)
    still = np.repeat(clip[:1], frames, axis=0)
    read = an.analyse_video(still)
    assert read["direction"] is None and read["colour"] == truth["colour"]


def test_silence_has_no_transcript():
    """Silence's features are all zero and tie with every reference: argmax named the first text, so an
    empty answer to its prompt scored 100%."""
    t = np.arange(8000) / dm.SAMPLE_RATE
    waves = [np.sin(2 * np.pi * f * t) * np.hanning(len(t)) for f in (300.0, 900.0)]
    recogniser = an.SpeechRecogniser(waves, ["zero", "one"])
    assert recogniser.predict(waves[1]) == "one"
    assert recogniser.predict(np.zeros(8000)) == "" and recogniser.predict(np.zeros(0)) == ""
