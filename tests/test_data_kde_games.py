"""The KTuberling + KLettres builder on a tiny fake extraction root: texts, speakers, splits, dropped clips."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from mu2slam_hf.cli.build_data import build_kde_games_main
from mu2slam_hf.data import load_manifest
from mu2slam_hf.data.kde_games import KLETTRES_DIR, KTUBERLING_DIR, build_kde_games, ktuberling_text
from mu2slam_hf.data.manifest import hash_split, read_manifest
from mu2slam_hf.data.real_speech import SPLIT_FRACTIONS

SPLITS = ("train", "dev", "test")
SYLLABLES = [f"S{c}A" for c in "BCDFGHKLMNPRST"]  # fourteen en syllables, so that every split gets some


def _sound(path, seconds=0.5, rate=44_100, channels=1, seed=0, amplitude=0.3):
    path.parent.mkdir(parents=True, exist_ok=True)
    tone = amplitude * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)
    noise = amplitude / 30 * np.random.default_rng(seed).standard_normal((len(tone), channels))
    kind = ("OGG", "VORBIS") if path.suffix == ".ogg" else ("WAV", "PCM_16")
    sf.write(path, (tone[:, None] + noise).astype(np.float32), rate, format=kind[0], subtype=kind[1])


def _theme(path, lang, sounds):
    lines = [f'<language code="{lang}">'] + [f'  <sound name="{n}" file="{f}" />' for n, f in sounds] + ["</language>"]
    path.write_text("\n".join(lines), encoding="utf-8")


def _klettres(path, lang, letters, syllables):
    def section(tag, names, sub):
        return (
            [f"<{tag}>"] + [f'<sound name="{n}" file="{lang}/{sub}/{n.lower()}.ogg" />' for n in names] + [f"</{tag}>"]
        )

    body = section("alphabet", letters, "alpha") + section("syllables", syllables, "syllab")
    path.write_text("<!-- comment -->\n<klettres><language code='x'>" + "\n".join(body) + "</language></klettres>")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """fr: ballon, âne, étoile filante, j'aime (elided), avis-recherche (unsure), a missing file and a silent clip;
    es: ojo, ballon's meaning (pelota), gafas de sol, one file for two objects; de: English ids (text unknown).
    KLettres: en letters A B and fourteen syllables + CAR, en_GB CAR (the same item), ru КO (Latin O), tn."""
    root = tmp_path_factory.mktemp("kde")
    sounds = root / KTUBERLING_DIR
    fr = ["patate_ballon", "egypte_ane", "lune_etoile-filante", "robin_j-aime", "robin_avis-recherche", "robin_quiet"]
    fr += ["robin_je-suis-malade"]  # 0.3 s: too short for its 12 letters
    for i, stem in enumerate(fr):
        seconds = 0.3 if "malade" in stem else 1.0 + i / 10
        _sound(sounds / "fr" / f"{stem}.wav", seconds=seconds, seed=i, amplitude=0.0 if "quiet" in stem else 0.3)
    names = ["ball", "egypt_donkey", "moon_star", "robin_love", "robin_wanted", "robin_quiet", "robin_sick"]
    _theme(
        sounds / "fr.soundtheme",
        "fr",
        [*zip(names, [f"fr/{s}.wav" for s in fr], strict=True), ("ghost", "fr/ghost.wav")],
    )
    for i, stem in enumerate(["ojo", "pelota", "gafasdesol", "lazo"]):
        _sound(sounds / "es" / f"{stem}.wav", seconds=1.0, rate=22_050, seed=10 + i)
    _theme(
        sounds / "es.soundtheme", "es",
        [("eye", "es/ojo.wav"), ("ball", "es/pelota.wav"), ("sunglasses", "es/gafasdesol.wav"),
         ("bow", "es/lazo.wav"), ("tie", "es/lazo.wav")],
    )  # fmt: skip
    _sound(sounds / "de" / "ball.ogg", seed=20)
    _theme(sounds / "de.soundtheme", "de", [("ball", "de/ball.ogg")])
    klettres = root / KLETTRES_DIR
    for folder, letters, syllables in (
        ("en", ["A", "B"], [*SYLLABLES, "CAR"]), ("en_GB", [], ["CAR"]), ("ru", [], ["КO"]), ("tn", ["A"], ["BA"])
    ):  # fmt: skip
        (klettres / folder).mkdir(parents=True)
        _klettres(klettres / folder / "sounds.xml", folder, letters, syllables)
        for i, name in enumerate(letters + syllables):
            sub = "alpha" if name in letters else "syllab"
            _sound(klettres / folder / sub / f"{name.lower()}.ogg", seconds=0.4, rate=16_000, seed=len(folder) * 7 + i)
    return root


@pytest.fixture(scope="module")
def corpus(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    build_kde_games_main(["--out", str(out), "--root", str(root)])  # the command line, as a user runs it
    return out


def _rows(directory):
    return {split: read_manifest(directory / f"{split}.jsonl") for split in SPLITS}  # audio paths made absolute


def _by_id(directory):
    return {row["id"]: row for rows in _rows(directory).values() for row in rows}


def test_ktuberling_text_comes_from_the_file_name_with_its_spelling():
    assert ktuberling_text("fr", "fr/lune_etoile-filante.wav") == "étoile filante"
    assert ktuberling_text("fr", "fr/patate_boucle-d-oreille.wav") == "boucle d'oreille"
    assert ktuberling_text("fr", "fr/robin_Tux-l-enfant.wav") == "Tux l'enfant"
    assert ktuberling_text("es", "es/gafasdesol.wav") == "gafas de sol"
    assert ktuberling_text("it", "it/naso.wav") == "naso"
    assert ktuberling_text("de", "de/ball.ogg") is None  # an English id, not the German word
    assert ktuberling_text("fr", "fr/robin_avis-recherche.wav") is None


def test_rows_carry_text_speaker_and_16k_audio(corpus):
    rows = _by_id(corpus)
    assert rows["kde-games-asr-fr-ktuberling.egypt_donkey"]["target_text"] == "âne"
    assert rows["kde-games-asr-fr-ktuberling.robin_love"]["target_text"] == "j'aime"
    assert rows["kde-games-asr-es-ktuberling.sunglasses"]["target_text"] == "gafas de sol"
    car = rows["kde-games-asr-en-klettres.en_GB.syllable.car"]
    assert (car["target_text"], car["source_text"], car["speaker"]) == ("car", "car", "klettres-en_GB")
    assert rows["kde-games-asr-en-klettres.en.syllable.car"]["speaker"] == "klettres-en"
    assert rows["kde-games-asr-ru-klettres.ru.syllable.кo"]["target_text"] == "ко"  # Cyrillic о, not Latin
    assert rows["kde-games-asr-fr-ktuberling.ball"]["speaker"] == "ktuberling-fr"
    for row in rows.values():
        assert row["task"] == "asr" and row["target_lang"] == row["source_lang"]
        info = sf.info(corpus / row["audio"]["path"])
        assert (info.samplerate, info.channels) == (16_000, 1)
        assert info.frames / 16_000 == pytest.approx(row["duration"])
    assert rows["kde-games-asr-fr-ktuberling.moon_star"]["duration"] == pytest.approx(1.2, abs=0.01)
    assert load_manifest(str(corpus), "train", task="asr").num_rows == len(_rows(corpus)["train"]) > 0


def test_unknown_text_letters_silence_and_repeats_are_dropped_and_counted(corpus):
    summary = json.loads((corpus / "summary.json").read_text())
    assert summary["dropped"] == {
        "de/text_unknown": 1, "en/letter": 2, "es/duplicate_audio": 1, "fr/no_file": 1, "fr/silent": 1, "fr/too_fast": 1,
        "fr/text_unknown": 1,
    }  # fmt: skip
    ids = set(_by_id(corpus))
    assert not any("-de-" in i or "-tn-" in i or "alpha" in i or "letter" in i for i in ids)
    assert "kde-games-asr-fr-ktuberling.robin_quiet" not in ids
    assert not (corpus / "audio" / "fr" / "ktuberling.robin_quiet.flac").exists()
    assert sum(summary["clips"][s].get("en", 0) for s in SPLITS) == len(SYLLABLES) + 2
    assert sum(summary["clips"][s].get("fr", 0) for s in SPLITS) == 4
    assert sum(summary["clips"][s].get("es", 0) for s in SPLITS) == 4  # lazo once
    minutes = sum(summary["minutes"][s].get("fr", 0) for s in SPLITS)
    assert minutes == pytest.approx((1.0 + 1.1 + 1.2 + 1.3) / 60, abs=0.1)
    assert summary["speakers"] == ["klettres-en", "klettres-en_GB", "klettres-ru", "ktuberling-es", "ktuberling-fr"]


def test_letters_on_request(root, tmp_path):
    summary = build_kde_games(str(tmp_path), str(root), letters=True)
    rows = _by_id(tmp_path)
    assert rows["kde-games-asr-en-klettres.en.letter.a"]["target_text"] == "a"
    assert summary["kinds"]["en/letter"] == 2 and "en/letter" not in summary["dropped"]


def test_splits_are_by_item_stable_and_disjoint(root, corpus, tmp_path):
    build_kde_games(str(tmp_path), str(root))
    for split in SPLITS:  # the same rows, byte for byte
        assert (corpus / f"{split}.jsonl").read_text() == (tmp_path / f"{split}.jsonl").read_text()
    where: dict[str, str] = {}
    for split, rows in _rows(corpus).items():
        for row in rows:
            text = row["target_text"]
            assert where.setdefault(text, split) == split, f"{text} is in {where[text]} and {split}"
    rows = _by_id(corpus)
    split_of = {i: next(s for s, r in _rows(corpus).items() if any(x["id"] == i for x in r)) for i in rows}
    # one object in every language, one syllable for every speaker: one split each
    assert split_of["kde-games-asr-fr-ktuberling.ball"] == split_of["kde-games-asr-es-ktuberling.ball"]
    assert split_of["kde-games-asr-fr-ktuberling.ball"] == hash_split("kde-games:ktuberling:ball", SPLIT_FRACTIONS)
    assert (
        split_of["kde-games-asr-en-klettres.en.syllable.car"]
        == split_of["kde-games-asr-en-klettres.en_GB.syllable.car"]
    )
    assert len(set(split_of.values())) == 3


def test_missing_games_and_bad_languages_fail_before_writing(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="neither KTuberling .* nor KLettres.*dpkg-deb -x"):
        build_kde_games(str(out), str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        build_kde_games(str(out), str(tmp_path / "empty"), languages=("en", "xx"))
    assert not out.exists()


def test_fetch_failure_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(RuntimeError, match="apt-get.*--root"):
        build_kde_games(str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
