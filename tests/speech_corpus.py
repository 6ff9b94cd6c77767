"""Long recordings with known text, synthesised with espeak-ng (Debian's ``espeak-ng``).

Each ``Recording`` is a list of distinct sentences spoken by one voice at one speed, with
pauses between them, rendered to 16 kHz mono float32 together with where each sentence is
(``Rendered.spans``, seconds). The "recorded-style" one adds what a room and a cheap
microphone add: a level that changes between sentences, reverberation, hum and noise.
Nothing is committed but this script; the audio is made when a test or benchmark asks.

    .venv/bin/python -m tests.speech_corpus OUT_DIR   # writes NAME.wav + NAME.txt per recording
"""

import functools
import io
import os
import re
import shutil
import subprocess
import sys
import unicodedata
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

RATE = 16_000


@dataclass(frozen=True)
class Recording:
    name: str
    language: str  # ISO-639-1, what Whisper should detect
    voice: str  # espeak-ng voice
    speed: int  # words per minute
    sentences: tuple[str, ...]
    pauses_s: tuple[float, float] = (0.5, 1.2)  # between sentences, drawn uniformly
    noisy: bool = False
    translation: tuple[str, ...] = ()  # English, sentence by sentence


@dataclass(frozen=True)
class Rendered:
    samples: np.ndarray  # float32, RATE
    spans: tuple[tuple[float, float], ...]  # each sentence's start and end, seconds

    @property
    def duration_s(self) -> float:
        return len(self.samples) / RATE


LIGHTHOUSE = (
    "The lighthouse stood on a rock at the mouth of the harbour.",
    "Every evening the keeper climbed the spiral stairs to light the lamp.",
    "Ships passing in the dark relied on its slow white flash.",
    "In winter the storms threw spray over the gallery rail.",
    "The keeper rowed out with two lanterns, a coil of rope and a flask of tea.",
    "A fishing boat had lost its engine near the northern reef.",
    "He towed it back to the quay before the tide turned.",
    "The village gave him a brass bell to thank him for that night.",
    "Years later the lamp was replaced by an automatic beacon.",
    "Visitors can now climb the tower on summer afternoons.",
    "Scientists measure the tides there now with sensors that send data every ten minutes.",
    "The old logbooks are kept in a glass case in the museum.",
)

KITCHEN = (
    "Bread dough needs warmth and patience before it goes into the oven.",
    "Mix the flour with salt, yeast and lukewarm water in a wide bowl.",
    "Knead it on a floured board until it feels smooth and elastic.",
    "Cover the bowl with a damp cloth and leave it near the stove.",
    "After an hour the dough should have doubled in size.",
    "Press it down gently and shape it into a round loaf.",
    "A shallow cut across the top lets the crust open while it bakes.",
    "Put a tray of water on the lowest shelf to make steam.",
    "Bake the loaf until it sounds hollow when you tap the bottom.",
    "Let it cool on a wire rack before you slice it.",
    "Fresh bread keeps best wrapped in linen rather than plastic.",
    "Stale slices make excellent crumbs for soups and salads.",
    "Many bakers add seeds, herbs or dried fruit to the dough.",
    "Rye flour gives a darker loaf with a sour and earthy taste.",
    "Whole wheat bread is heavier because the bran holds less air.",
    "Some families pass their starter culture down for generations.",
    "A starter is fed with flour and water every single day.",
    "Bubbles on its surface show that the wild yeast is active.",
    "Cold kitchens slow the rise, so plan the baking around the weather.",
    "The smell of baking bread brings neighbours to the door.",
    "Market stalls sell loaves before sunrise to early workers.",
    "Flat breads are cooked quickly on a hot stone or griddle.",
    "Pretzels are dipped in an alkaline bath before they are baked.",
    "Good butter and a little honey are all that warm bread needs.",
)

RIVER = (
    "The river begins as a trickle of melted snow high in the mountains.",
    "It gathers strength as small streams join it on the way down.",
    "Trout hide in the cold pools below the waterfalls.",
    "Further south the valley widens and the current slows.",
    "Farmers once used the water to turn their mill wheels.",
    "A wooden bridge crosses the river beside the old church.",
    "Children fish from the bridge with bent pins and bread crumbs.",
    "Herons stand perfectly still in the shallow reeds.",
    "In spring the meadows flood and turn into silver lakes.",
    "Barges carry gravel and timber towards the coast.",
    "The towpath is now a cycling route through the orchards.",
    "Otters returned to the banks after the water became clean again.",
    "Volunteers count the birds along the river each autumn.",
    "Near the city the banks are lined with warehouses and cranes.",
    "Rowing clubs train on the calm stretch before breakfast.",
    "The estuary is wide and muddy where the river meets the sea.",
    "Thousands of wading birds feed there when the tide is out.",
    "Sailors must watch for sandbanks that move after every storm.",
    "A ferry links the two towns on either side of the mouth.",
    "At dusk the lights of the harbour shine across the water.",
    "Old maps show a ford where the main road crosses today.",
    "Local legends tell of a giant who drank the river dry.",
    "Painters come every summer to capture the changing light.",
    "The river has shaped the lives of everyone who lives beside it.",
)

WORKSHOP = (
    "Welcome everyone, and thank you for coming out on such a rainy morning.",
    "Today we are going to repair an old bicycle together.",
    "First turn the bicycle upside down so it rests on the saddle.",
    "Check whether the wheels spin freely without rubbing the brakes.",
    "This chain is dry and rusty, so it needs cleaning and oil.",
    "A worn brake pad should be replaced rather than adjusted.",
    "Use the small spanner to loosen the nut that holds the wheel.",
    "Now lift the tyre off the rim with the plastic levers.",
    "Pump a little air into the tube and listen for the leak.",
    "Mark the hole with chalk before you let the air out.",
    "Roughen the rubber around the hole with sandpaper.",
    "Spread a thin layer of glue and wait until it turns dull.",
    "Press the patch down firmly and hold it for a minute.",
    "Put the tube back carefully so that it does not twist.",
    "Finally pump the tyre up to the pressure printed on its side.",
    "Does anyone have questions before we try a test ride?",
)

GERMAN = (
    "Ich trinke jeden Morgen eine Tasse Kaffee.",
    "Danach gehe ich mit dem Hund im Park spazieren.",
    "Im Winter ist der Weg oft glatt und dunkel.",
    "Meine Schwester wohnt in einer kleinen Stadt am See.",
    "Sie arbeitet als Lehrerin an einer Grundschule.",
    "Am Wochenende fahren wir gerne mit dem Fahrrad.",
    "Der Markt auf dem Platz hat frisches Obst und Gemüse.",
    "Im Sommer essen wir draußen im Garten.",
    "Mein Bruder kocht am liebsten Suppe mit Kartoffeln.",
    "Die Bibliothek öffnet am Montag erst am Mittag.",
    "Wir haben letzte Woche ein altes Schloss besucht.",
    "Der Zug nach Berlin hatte leider eine Stunde Verspätung.",
    "Im Herbst sammeln die Kinder bunte Blätter im Wald.",
    "Unser Nachbar repariert sein altes Auto selbst.",
    "Abends lese ich gern ein Buch auf dem Sofa.",
    "Morgen besuchen wir meine Großeltern auf dem Land.",
)

GERMAN_IN_ENGLISH = (
    "I drink a cup of coffee every morning.",
    "Then I go for a walk in the park with the dog.",
    "In winter the path is often slippery and dark.",
    "My sister lives in a small town on the lake.",
    "She works as a teacher at a primary school.",
    "At the weekend we like to ride our bicycles.",
    "The market on the square has fresh fruit and vegetables.",
    "In summer we eat outside in the garden.",
    "My brother likes to cook soup with potatoes best.",
    "On Monday the library only opens at noon.",
    "Last week we visited an old castle.",
    "Unfortunately the train to Berlin was an hour late.",
    "In autumn the children collect colourful leaves in the forest.",
    "Our neighbour repairs his old car himself.",
    "In the evening I like to read a book on the sofa.",
    "Tomorrow we are visiting my grandparents in the country.",
)

JAPANESE = (  # in kana: espeak-ng reads no kanji
    "きょうは いい てんき です。",
    "わたしは まいにち こうえんを さんぽ します。",
    "あした ともだちと えいがを みに いきます。",
    "この みせの おちゃは とても おいしい です。",
    "でんしゃは あさ はやく えきを でます。",
)

RECORDINGS: dict[str, Recording] = {
    r.name: r
    for r in (
        Recording("lighthouse", "en", "en-us", 145, LIGHTHOUSE, pauses_s=(0.6, 1.4)),
        Recording("workshop", "en", "en-gb-x-rp", 140, WORKSHOP, (1.0, 4.0), noisy=True),
        Recording("bread-and-river", "en", "en-us+f3", 165, KITCHEN + RIVER, (0.4, 1.2)),
        Recording("german", "de", "de", 135, GERMAN, translation=GERMAN_IN_ENGLISH),
        Recording("japanese", "ja", "ja", 130, JAPANESE),
    )
}
ACCURACY = ("lighthouse", "workshop", "bread-and-river", "german")  # word error rates


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def require_espeak(what: str, *, allow_module_level: bool = False) -> None:
    """For a test that renders ``what`` with espeak-ng: without it, skip (offline, before
    ``make test`` has installed it), except in CI (the ``CI`` environment variable set),
    where it must be there: fail, as the PostgreSQL fixture does, so a CI run cannot pass
    with these tests skipped. Module level (``allow_module_level``): fails the collection."""
    if espeak_available():
        return
    import pytest  # noqa: PLC0415 - tests only; the benches use this module too

    if os.environ.get("CI"):
        message = f"CI needs espeak-ng to render {what}: `make test` installs it"
        pytest.fail(message, pytrace=False)
    pytest.skip(
        f"no espeak-ng to render {what} (`make test` installs it)",
        allow_module_level=allow_module_level,
    )


def speak(text: str, voice: str, speed: int) -> np.ndarray:
    """One utterance from espeak-ng at RATE, float32, silence trimmed off both ends."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)
    samples = soxr.resample(pcm.astype(np.float32) / 32768, rate, RATE)
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples[:0]


@functools.cache
def render(name: str) -> Rendered:
    """``RECORDINGS[name]`` as audio, deterministic (the pauses and noise are seeded)."""
    recording = RECORDINGS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    pieces = [np.zeros(int(0.5 * RATE), dtype=np.float32)]
    spans = []
    position = len(pieces[0])
    for sentence in recording.sentences:
        speech = speak(sentence, recording.voice, recording.speed)
        if recording.noisy:
            speech = speech * rng.uniform(0.35, 1.0)
        spans.append((position / RATE, (position + len(speech)) / RATE))
        pause = np.zeros(int(rng.uniform(*recording.pauses_s) * RATE), dtype=np.float32)
        pieces += [speech, pause]
        position += len(speech) + len(pause)
    samples = np.concatenate(pieces)
    if recording.noisy:
        samples = _room(samples, rng)
    return Rendered(samples.astype(np.float32), tuple(spans))


def _room(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reverberation (a 0.3 s decaying impulse response), mains hum and pink-ish noise at
    about 20 dB below the speech."""
    tail = np.arange(int(0.3 * RATE)) / RATE
    impulse = rng.standard_normal(len(tail)) * np.exp(-tail / 0.06) * 0.08
    impulse[0] = 1.0
    wet = np.convolve(samples, impulse)[: len(samples)]
    hum = 0.004 * np.sin(2 * np.pi * 50 * np.arange(len(samples)) / RATE)
    white = rng.standard_normal(len(samples))
    pink = np.convolve(white, np.ones(8) / 8, mode="same")
    level = np.sqrt(np.mean(samples[np.abs(samples) > 0.01] ** 2))
    noise = pink / np.sqrt(np.mean(pink**2)) * level * 0.1
    return np.clip(wet + hum + noise, -1, 1)


def text(name: str, *, translated: bool = False) -> str:
    recording = RECORDINGS[name]
    return " ".join(recording.translation if translated else recording.sentences)


def normalise(words: str) -> str:
    """Lower case, punctuation and accents folded, for word error rates."""
    folded = unicodedata.normalize("NFKD", words.lower())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^\w']+", " ", folded).replace("'", "").split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER in percent after ``normalise`` (jiwer's edit distance over words)."""
    import jiwer

    return 100 * jiwer.wer(normalise(reference), normalise(hypothesis) or "<empty>")


def main(out_dir: str) -> int:
    from tests.audio_files import wav_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in RECORDINGS:
        rendered = render(name)
        (out / f"{name}.wav").write_bytes(wav_bytes(rendered.samples, RATE))
        (out / f"{name}.txt").write_text(text(name) + "\n")
        print(f"{name}: {rendered.duration_s:.1f} s, {len(rendered.spans)} sentences")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
