"""The Tux Paint builder on a tiny fake ``tuxpaint-stamps-default`` tree: rows, splits, resampling, dropped clips."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from mu2slam_hf.cli.build_data import build_tuxpaint_main
from mu2slam_hf.data import load_manifest
from mu2slam_hf.data.manifest import connected_components, hash_split
from mu2slam_hf.data.tuxpaint import STAMPS_DIR, build_tuxpaint, read_description, stamp_split

SPLITS = ("train", "dev", "test")
TRANSLATIONS = {"de": "Eine Katze {i}.", "fr": "Un chat {i}.", "es": "Un gato {i}.", "ru": "Кошка {i}."}


def _description(english: str, translations: dict[str, str]) -> str:
    return "\n".join([english] + [f"{lang}.utf8={text}" for lang, text in translations.items()]) + "\n"


def _ogg(path, seconds=1.0, rate=44_100, channels=2, seed=0):
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)
    noise = 0.01 * np.random.default_rng(seed).standard_normal((len(tone), channels))
    sf.write(path, (tone[:, None] + noise).astype(np.float32), rate, format="OGG", subtype="VORBIS")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """An extraction root: 12 cats (fr readings, es for cat0-cat5, English for cat0), frog and frog-2 (same text,
    same fr file), a French reading without a .txt, Spanish readings without Spanish text, a sound effect and a
    Romanian reading (not one of the languages asked)."""
    root = tmp_path_factory.mktemp("tuxpaint")
    animals = root / STAMPS_DIR / "animals"
    animals.mkdir(parents=True)
    for i in range(12):
        texts = {lang: text.format(i=i) for lang, text in TRANSLATIONS.items()}
        (animals / f"cat{i}.txt").write_text(_description(f"A  cat {i}. ", texts), encoding="utf-8")
        _ogg(animals / f"cat{i}_desc_fr.ogg", seconds=1.0 + i / 10, seed=i)
        if i < 6:
            _ogg(animals / f"cat{i}_desc_es.ogg", rate=8_000, channels=1, seed=100 + i)
    _ogg(animals / "cat0_desc.ogg", seed=50)
    _ogg(animals / "cat0.ogg", seed=51)  # the stamp's sound effect, not a reading
    _ogg(animals / "cat0_desc_ro.ogg", seed=52)
    frog = _description("A frog.", {"fr": "Une grenouille.", "es": "", "it": "Una rana."})
    for name in ("frog", "frog-2"):
        (animals / f"{name}.txt").write_text(frog, encoding="utf-8")
        _ogg(animals / f"{name}_desc_es.ogg", seed=8 if name == "frog" else 9)  # es text empty: dropped
    _ogg(animals / "frog_desc_fr.ogg", seed=7)
    shutil.copy(animals / "frog_desc_fr.ogg", animals / "frog-2_desc_fr.ogg")  # the same recording twice
    _ogg(animals / "ghost_desc_fr.ogg", seed=10)  # no ghost.txt
    return root


@pytest.fixture(scope="module")
def corpus(package, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    build_tuxpaint_main(["--out", str(out), "--stamps-dir", str(package)])
    return out


def _rows(directory):
    return {
        split: [json.loads(line) for line in open(directory / f"{split}.jsonl", encoding="utf-8")] for split in SPLITS
    }


def test_read_description_takes_english_from_the_first_line(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("A   red\tball.\nde.utf8= Ein roter Ball.\nen_GB.utf8=A red ball.\nfr.utf8=\n", encoding="utf-8")
    assert read_description(str(path)) == {"en": "A red ball.", "de": "Ein roter Ball.", "en_GB": "A red ball."}


def test_rows_pair_each_reading_with_its_text_and_every_translation(corpus):
    rows = [row for split in _rows(corpus).values() for row in split]
    by_id = {row["id"]: row for row in rows}
    asr = by_id["tuxpaint-asr-fr-animals.cat3"]
    assert (asr["source_text"], asr["target_text"], asr["speaker"]) == ("Un chat 3.", "Un chat 3.", "tuxpaint-fr")
    assert asr["audio"]["path"] == "audio/fr/animals/cat3.flac"
    ast = [row for row in rows if row["task"] == "ast" and row["id"].startswith("tuxpaint-ast-fr-")]
    ast = [row for row in ast if row["id"].endswith("-animals.cat3")]
    assert [row["target_lang"] for row in ast] == ["en", "de", "es", "ru"]  # English first, then the asked order
    assert {row["source_text"] for row in ast} == {"Un chat 3."}
    assert by_id["tuxpaint-ast-fr-en-animals.cat3"]["target_text"] == "A cat 3."  # whitespace collapsed
    assert by_id["tuxpaint-asr-en-animals.cat0"]["target_text"] == "A cat 0."  # <stamp>_desc.ogg is English
    mt = {row["id"] for row in rows if row["task"] == "mt" and row["id"].endswith("-animals.cat3")}
    assert mt == {f"tuxpaint-mt-{a}-{b}-animals.cat3" for x in TRANSLATIONS for a, b in (("en", x), (x, "en"))}
    assert not any("-ro-" in row["id"] or row["source_lang"] == "ro" for row in rows)


def test_audio_is_resampled_to_16k_mono(corpus):
    rows = [row for split in _rows(corpus).values() for row in split if row["task"] == "asr"]
    for row in rows:
        info = sf.info(corpus / row["audio"]["path"])
        assert (info.samplerate, info.channels) == (16_000, 1)
        assert info.frames / 16_000 == pytest.approx(row["duration"])
    durations = {row["id"]: row["duration"] for row in rows}
    assert durations["tuxpaint-asr-fr-animals.cat5"] == pytest.approx(1.5, abs=0.01)
    assert durations["tuxpaint-asr-es-animals.cat5"] == pytest.approx(1.0, abs=0.01)  # 8 kHz source
    train_asr = [row for row in _rows(corpus)["train"] if row["task"] == "asr"]
    assert load_manifest(str(corpus), "train", task="asr").num_rows == len(train_asr) > 0


def test_missing_text_and_repeated_recordings_are_dropped_and_counted(corpus):
    summary = json.loads((corpus / "summary.json").read_text())
    assert summary["dropped"]["fr/no_txt"] == 1
    assert summary["dropped"]["es/no_text"] == 2
    assert summary["dropped"]["fr/duplicate_audio"] == 1
    ids = {row["id"] for split in _rows(corpus).values() for row in split}
    assert sum(f"tuxpaint-asr-fr-animals.{name}" in ids for name in ("frog", "frog-2")) == 1
    assert not any(i.startswith("tuxpaint-asr-es-animals.frog") for i in ids)
    assert sum(summary["clips"][split].get("fr", 0) for split in SPLITS) == 13  # 12 cats and one frog
    assert sum(summary["clips"][split].get("es", 0) for split in SPLITS) == 6
    minutes = sum(summary["minutes"][split]["fr"] for split in SPLITS if "fr" in summary["minutes"][split])
    assert minutes == pytest.approx((sum(1.0 + i / 10 for i in range(12)) + 1.0) / 60, abs=0.2)


def test_splits_are_by_stamp_stable_and_disjoint(package, corpus, tmp_path):
    again = tmp_path / "again"
    build_tuxpaint(str(again), str(package / STAMPS_DIR))
    first = _rows(corpus)
    assert first == _rows(again)
    where = {}
    for split, rows in first.items():
        for row in rows:
            stamp = row["id"].split("-", 4)[-1] if row["task"] != "asr" else row["id"].split("-", 3)[-1]
            assert where.setdefault(stamp, split) == split, f"{stamp} is in {where[stamp]} and {split}"
    for i in range(12):
        assert where[f"animals.cat{i}"] == stamp_split(f"animals/cat{i}")
    # frog-2 shares frog's text and recording: it goes with frog (the group's first path), not by its own hash
    assert where["animals.frog-2"] == stamp_split("animals/frog") != stamp_split("animals/frog-2")
    assert len(set(where.values())) >= 2


def test_not_a_tuxpaint_tree_fails_before_writing(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("just some text\nanother line\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="not a Tux Paint stamps folder"):
        build_tuxpaint(str(out), str(tmp_path / "notes"))
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        build_tuxpaint(str(out), str(tmp_path / "notes"), languages=("en", "xx"))
    assert not out.exists()


def test_hash_split_follows_the_fractions_and_components_join_shared_keys():
    fractions = {"train": 0.7, "dev": 0.1, "test": 0.2}
    splits = [hash_split(f"k{i}", fractions) for i in range(5000)]
    assert splits == [hash_split(f"k{i}", fractions) for i in range(5000)]
    for name, share in fractions.items():
        assert splits.count(name) / 5000 == pytest.approx(share, abs=0.03)
    assert connected_components([["a"], ["b"], ["a", "c"], ["c"], []]) == [[0, 2, 3], [1], [4]]
