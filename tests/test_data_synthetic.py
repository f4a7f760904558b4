"""The synthetic corpus's speech engines: the seeded choice between espeak-ng and Festival, Festival's text encodings,
the missing-voice error, and real Festival synthesis (skipped where Festival's voices are not installed)."""

import json

import numpy as np
import pytest
import soundfile as sf

from mu2slam_hf.data import synthetic
from mu2slam_hf.data.synthetic import FESTIVAL_VOICES, festival_text, festival_voices, voice_settings

KEYS = [f"line-{i}" for i in range(200)]
INSTALLED = festival_voices()
# Sentences with every kind of letter a voice's encoding must carry (Czech háčeks and long vowels, Italian accents).
SENTENCES = {
    "en": "It’s a quiet café, isn’t it?",
    "cs": "Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "it": "Perché la città è così bella?",
    "ru": "«Съешь же ещё этих мягких французских булок».",
}


def needs_voices(*voices: str):
    missing = [voice for voice in voices if voice not in INSTALLED]
    return pytest.mark.skipif(bool(missing), reason=f"Festival voices not installed: {missing}")


def engines(seed: int, lang: str, fraction: float) -> list[str]:
    return [voice_settings(seed, key, lang, fraction)["engine"] for key in KEYS]


def test_fraction_zero_is_espeak_only_and_one_is_festival_where_a_language_has_a_voice():
    for lang in ("en", "cs", "it", "ru", "de", "fr"):
        assert set(engines(0, lang, 0.0)) == {"espeak-ng"}
        assert set(engines(0, lang, 1.0)) == {"festival" if lang in FESTIVAL_VOICES else "espeak-ng"}
    chosen = {voice_settings(0, key, "cs", 1.0)["voice"] for key in KEYS}
    assert chosen == set(FESTIVAL_VOICES["cs"])


def test_engine_choice_is_seeded_per_line_and_nested_across_fractions():
    assert engines(0, "en", 0.3) == engines(0, "en", 0.3)
    assert engines(0, "en", 0.3) != engines(1, "en", 0.3)
    assert voice_settings(3, "line-7", "cs", 0.5) == voice_settings(3, "line-7", "cs", 0.5)
    low, high = engines(0, "it", 0.3), engines(0, "it", 0.6)
    assert 0.2 < low.count("festival") / len(KEYS) < 0.4
    assert all(h == "festival" for lo, h in zip(low, high, strict=True) if lo == "festival")
    # A line espeak-ng still speaks keeps its espeak-ng voice: builds at fraction 0 are those made before Festival.
    for key in KEYS:
        settings = voice_settings(0, key, "en", 0.3)
        if settings["engine"] == "espeak-ng":
            assert settings == voice_settings(0, key, "en")


def test_festival_text_is_in_each_voices_encoding():
    assert festival_text(SENTENCES["en"], "en") == b"It's a quiet cafe, isn't it?"
    assert festival_text(SENTENCES["cs"], "cs") == SENTENCES["cs"].encode("iso-8859-2")
    assert festival_text(SENTENCES["it"], "it") == SENTENCES["it"].encode("iso-8859-1")
    assert festival_text(SENTENCES["ru"], "ru") == '"Съешь же ещё этих мягких французских булок".'.encode()
    with pytest.raises(UnicodeEncodeError):
        festival_text("It costs 5 €", "en")


def _without(names: tuple[str, ...]):
    real = synthetic.shutil.which
    return lambda name: None if name in names else real(name)


def test_missing_festival_is_an_error_with_the_apt_command_before_anything_is_spoken(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic.shutil, "which", _without(("text2wave", "festival")))
    monkeypatch.setattr(synthetic, "number_groups", lambda *_: pytest.fail("reached the text"))  # checked first
    with pytest.raises(RuntimeError, match="apt-get install -y --no-install-recommends festival festvox-kallpc16k"):
        synthetic.build_synthetic(str(tmp_path), ("de", "en"), use_fillets=False, festival_fraction=0.5)
    with pytest.raises(RuntimeError, match="festvox-czech-dita"):
        synthetic.synthesize_lines([("a", "cs", "jedna")], str(tmp_path), festival_fraction=0.5)
    assert not (tmp_path / "audio").exists()
    with pytest.raises(ValueError, match="festival_fraction"):
        synthetic.build_synthetic(str(tmp_path), ("en",), use_fillets=False, festival_fraction=1.5)


def test_a_missing_voice_names_its_package_and_languages_without_voices_need_none(monkeypatch):
    monkeypatch.setattr(synthetic, "festival_voices", lambda: {"kal_diphone", "ked_diphone"})
    with pytest.raises(
        RuntimeError, match=r"for en: .*install -y --no-install-recommends festival festvox-us-slt-hts`"
    ):
        synthetic.check_festival(("de", "en"))
    synthetic.check_festival(("de", "fr", "es", "nl"))


def test_the_cli_threads_festival_fraction(tmp_path, monkeypatch):
    from mu2slam_hf.cli import build_data

    seen = {}

    def build(out, languages, **options):
        seen.update(options)
        return {"splits": {}, "total_hours": 0, "groups": {}, "failures": {}, "clips_per_engine": {}}

    monkeypatch.setattr(build_data, "build_synthetic", build)
    monkeypatch.setattr(build_data, "format_summary", lambda summary: "")
    build_data.build_synthetic_main(["--out", str(tmp_path), "--festival-fraction", "0.25"])
    assert seen["festival_fraction"] == 0.25
    build_data.build_synthetic_main(["--out", str(tmp_path)])
    assert seen["festival_fraction"] == 0.0


@pytest.mark.parametrize(
    "lang, voice", [(lang, voice) for lang, voices in FESTIVAL_VOICES.items() for voice in voices]
)
def test_every_festival_voice_says_its_languages_letters(lang, voice):
    """16 kHz audio of about a sentence's length: Czech read as UTF-8 lasts about 18 s (spelled out), Italian none."""
    if voice not in INSTALLED:
        pytest.skip(f"Festival voice {voice} not installed")
    settings = {"engine": "festival", "voice": voice, "lang": lang, "stretch": 1.0, "scale": 0.8}
    array = synthetic.synthesize(SENTENCES[lang], settings)
    assert array.dtype == np.float32 and array.ndim == 1
    assert 1.0 < len(array) / 16_000 < 7.0 and np.abs(array).max() > 0.05
    slower = synthetic.synthesize(SENTENCES[lang], settings | {"stretch": 1.2})
    if not voice.endswith("_clunits"):  # unit selection keeps its units' durations
        assert len(slower) > 1.1 * len(array)


@needs_voices(*FESTIVAL_VOICES["en"])
def test_a_build_with_festival_speaks_english_with_festival_german_with_espeak_and_reports_a_bad_line(tmp_path):
    summary = synthetic.build_synthetic(
        str(tmp_path / "corpus"), ("en", "de"), num_numbers=4, use_fillets=False, festival_fraction=1.0
    )
    assert summary["clips_per_engine"] == {"espeak": {"de": 4}, "festival": {"en": 4}}
    assert not summary["failures"] and summary["festival_fraction"] == 1.0
    rows = [
        json.loads(line) for split in ("train", "dev", "test") for line in open(tmp_path / "corpus" / f"{split}.jsonl")
    ]
    for row in rows:
        if row["task"] == "asr":
            engine = "festival-" if row["source_lang"] == "en" else "espeak-de+"
            assert row["speaker"].startswith(engine)
            info = sf.info(str(tmp_path / "corpus" / row["audio"]["path"]))
            assert (info.samplerate, info.channels, info.format) == (16_000, 1, "FLAC")
    lines = [("good", "en", "twenty one"), ("euro", "en", "It costs 5 €")]
    audio, failures = synthetic.synthesize_lines(lines, str(tmp_path / "lines"), num_workers=1, festival_fraction=1.0)
    assert set(audio) == {"good"} and audio["good"]["en"][2].startswith("festival-")
    assert list(failures) == ["euro/en"] and "UnicodeEncodeError" in failures["euro/en"]
