"""The GCompris voices builder on a tiny fake voices checkout, word lists as JSON and as a Qt .rcc."""

import json
import shutil
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf

from mu2slam_hf.cli.build_data import build_gcompris_main
from mu2slam_hf.data import gcompris
from mu2slam_hf.data.gcompris import (
    CONTENT_PREFIX,
    LANG_RCC,
    QM,
    QM_MAGIC,
    RCC_DIR,
    build_gcompris,
    load_texts,
    place_names,
    read_qm,
    read_rcc,
    speaker_of,
)
from mu2slam_hf.data.manifest import hash_split, read_manifest
from mu2slam_hf.data.real_speech import SPLIT_FRACTIONS

SPLITS = ("train", "dev", "test")
WORDS = [f"thing{i}" for i in range(12)]
TEXTS = {
    "de": {
        "apple.ogg": "der  Apfel ",
        "cave.ogg": "",
        "quiet.ogg": "leise",
        "U0031.ogg": "eins",
        "long.ogg": "ein sehr sehr langes Wort",
    }
    | {f"{w}.ogg": f"das Ding {w[5:]}" for w in WORDS},
    "fr": {"apple.ogg": "une pomme", "U0031.ogg": "un"} | {f"{w}.ogg": f"une chose {w[5:]}" for w in WORDS},
}


def _ogg(path, seconds=0.5, rate=44_100, seed=0, amplitude=0.3):
    path.parent.mkdir(parents=True, exist_ok=True)
    tone = amplitude * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)
    noise = amplitude / 30 * np.random.default_rng(seed).standard_normal(len(tone))
    sf.write(path, (tone + noise).astype(np.float32), rate, format="OGG", subtype="VORBIS")


def _rcc(files: dict[str, bytes], folder: str = "gcompris") -> bytes:
    """A version-3 Qt resource: root -> ``folder`` (one node, its name may hold slashes) -> one file per entry,
    zlib-compressed."""
    names, tree, data = b"", b"", b""

    def name(text):
        nonlocal names
        offset = len(names)
        encoded = text.encode("utf-16-be")
        names += struct.pack(">HI", len(text), 0) + encoded
        return offset

    entries = sorted(files)
    dir_name = name(folder)
    tree += struct.pack(">IHII", 0, 2, 1, 1) + b"\0" * 8  # root: one child, node 1
    tree += struct.pack(">IHII", dir_name, 2, len(entries), 2) + b"\0" * 8
    for entry in entries:
        packed = struct.pack(">I", len(files[entry])) + zlib.compress(files[entry])
        tree += struct.pack(">IHHHI", name(entry), 1, 0, 0, len(data)) + b"\0" * 8
        data += struct.pack(">I", len(packed)) + packed
    header_size = 24
    tree_at, data_at = header_size, header_size + len(tree)
    names_at = data_at + len(data)
    return b"qres" + struct.pack(">IIIII", 3, tree_at, data_at, names_at, 0) + tree + data + names


def _qm(messages: list[tuple[str, str, str]]) -> bytes:
    """A .qm with (context, source, translation) messages, laid out as lrelease writes them."""

    def field(tag, raw):
        return bytes([tag]) + struct.pack(">I", len(raw)) + raw

    block = b"".join(
        field(3, translation.encode("utf-16-be")) + bytes([8]) + struct.pack(">I", 0) + field(6, source.encode())
        + field(7, context.encode()) + b"\x01"
        for context, source, translation in messages
    )  # fmt: skip
    hashes = b"\x42" + struct.pack(">I", 8) + b"\0" * 8
    return QM_MAGIC + hashes + b"\x69" + struct.pack(">I", len(block)) + block


BOARD = """QtObject { property var levels: [
    { "pixmapfile": "africa/africa.svgz", "type": "SHAPE_BACKGROUND_IMAGE" },
    { "pixmapfile": "africa/egypt.svgz", "soundFile": "voices-$CA/$LOCALE/geography/egypt.$CA",
      "toolTipText": qsTr("Egypt"), "x": "0.8", "y": "0.2" },
    { "pixmapfile": "africa/chad.svgz", "soundFile": "voices-$CA/$LOCALE/geography/chad.$CA",
      "toolTipText": qsTr("Chad"), "x": "0.5", "y": "0.4" },
    { "soundFile": "voices-$CA/$LOCALE/geography/usa.$CA", "toolTipText": qsTr("United States of America") }
] }"""


@pytest.fixture(scope="module")
def debian_root(texts, tmp_path_factory):
    """An extracted gcompris-qt-data: lang.rcc with the word lists, geography.rcc with one board (Egypt, Chad, USA)
    and gcompris_de.qm (Ägypten for this board; Tschad under two contexts, told apart by the board's)."""
    root = tmp_path_factory.mktemp("debian")
    (root / RCC_DIR).mkdir(parents=True)
    contents = {f"content-{lang}.json": (texts / f"content-{lang}.json").read_bytes() for lang in TEXTS}
    (root / LANG_RCC).write_bytes(_rcc(contents, CONTENT_PREFIX.strip("/")))
    (root / RCC_DIR / "geography.rcc").write_bytes(_rcc({"board1_0.qml": BOARD.encode()}))
    (root / QM.format(lang="de")).parent.mkdir(parents=True)
    messages = [("board1_0", "Egypt", "Ägypten"), ("other", "Chad", "Tschad (alt)"), ("board1_0", "Chad", "Tschad")]
    (root / QM.format(lang="de")).write_bytes(_qm(messages + [("board1_0", "United States of America", "USA")]))
    return root


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """de and fr: apple, twelve things, a number and a letter; de also a word without text (cave), a word not in
    the list (ghost), a silent word and a colors folder; README attributions for the de alphabet."""
    root = tmp_path_factory.mktemp("voices")
    for lang in TEXTS:
        for i, word in enumerate(["apple", *WORDS]):
            _ogg(root / lang / "words" / f"{word}.ogg", seconds=1.0 + i / 20, seed=i)
        _ogg(root / lang / "alphabet" / "U0031.ogg", seed=40)
        _ogg(root / lang / "alphabet" / "U0061.ogg", seed=41)
    for word, amplitude in (("cave", 0.3), ("ghost", 0.3)):
        _ogg(root / "de" / "words" / f"{word}.ogg", seed=50, amplitude=amplitude)
    _ogg(root / "de" / "words" / "quiet.ogg", amplitude=0.0)
    _ogg(root / "de" / "colors" / "black.ogg", seed=60)
    _ogg(root / "de" / "words" / "long.ogg", seconds=0.5, seed=61)  # 20 letters in 0.5 s: not what it says
    for i, place in enumerate(["egypt", "chad", "usa", "atlantis"]):
        _ogg(root / "de" / "geography" / f"{place}.ogg", seed=70 + i)
    (root / "de" / "alphabet" / "README").write_text(
        "\ufeffU0031.ogg\t\t\tCopyright Martin Herweg 2001 / Release under GPL\n", encoding="utf-8"
    )
    (root / "fr" / "words" / "README").write_text("Voices by someone.\nUnder the GPLv3.\n", encoding="utf-8")
    (root / "fr" / "README").write_bytes("Sons de Martin Šín\n".encode("iso-8859-15"))  # not UTF-8: Latin-9
    (root / "fr" / "alphabet" / "README").write_text("U0031.oggClara Coudoin 2004 / GPL\n")  # no tab
    return root


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resource")
    for lang, table in TEXTS.items():
        (folder / f"content-{lang}.json").write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def corpus(voices, texts, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    build_gcompris_main(["--out", str(out), "--voices-dir", str(voices), "--text", str(texts), "--langs", "de,fr"])
    return out


def _rows(directory):
    rows = {split: read_manifest(directory / f"{split}.jsonl") for split in SPLITS}
    return {row["id"]: (split, row) for split, split_rows in rows.items() for row in split_rows}


def test_rcc_and_json_give_the_same_texts(texts, tmp_path):
    blobs = {f"content-{lang}.json": (texts / f"content-{lang}.json").read_bytes() for lang in TEXTS}
    rcc = tmp_path / "lang.rcc"
    rcc.write_bytes(_rcc(blobs, CONTENT_PREFIX.strip("/")))
    assert read_rcc(str(rcc)) == {f"{CONTENT_PREFIX}{name}": blob for name, blob in blobs.items()}
    from_json = load_texts(str(texts), ("de", "fr"))
    assert from_json["de"]["words/apple.ogg"] == "der Apfel" and "words/cave.ogg" not in from_json["de"]
    assert from_json["fr"]["alphabet/U0031.ogg"] == "un"
    assert load_texts(str(rcc), ("de", "fr")) == from_json  # a lang.rcc gives the same
    (tmp_path / "other.rcc").write_bytes(_rcc(blobs))  # the tables, but not where GCompris keeps them
    with pytest.raises(ValueError, match="no content-<lang>.json"):
        load_texts(str(tmp_path / "other.rcc"), ("de",))
    with pytest.raises(ValueError, match="not a Qt resource"):
        read_rcc(str(texts / "content-de.json"))


def test_place_names_come_from_the_boards_and_their_translations(debian_root, tmp_path):
    assert read_qm(str(debian_root / QM.format(lang="de")))["Chad"] == {"other": "Tschad (alt)", "board1_0": "Tschad"}
    names = place_names(str(debian_root), ("en", "de", "fr"))
    assert names["en"] == {"egypt": "Egypt", "chad": "Chad", "usa": "United States of America"}
    assert names["de"] == {"egypt": "Ägypten", "chad": "Tschad", "usa": "USA"}
    assert names["fr"] == {}  # no gcompris_fr.qm: no French place names
    texts = load_texts(str(debian_root), ("de",))["de"]
    assert texts["geography/egypt.ogg"] == "Ägypten" and texts["words/apple.ogg"] == "der Apfel"
    assert texts["alphabet/U0031.ogg"] == "eins" and "words/cave.ogg" not in texts
    with pytest.raises(ValueError, match="not a Qt translation file"):
        read_qm(str(debian_root / LANG_RCC))


def test_places_from_the_debian_text(voices, debian_root, tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(gcompris, "fetch_debian_packages", lambda *args: fetched.append(args[1]) or str(debian_root))
    summary = build_gcompris(str(tmp_path), str(voices), languages=("de",))  # no --text: the Debian package
    assert fetched == [("gcompris-qt-data",)]
    rows = _rows(tmp_path)
    assert rows["gcompris-asr-de-geography.egypt"][1]["target_text"] == "Ägypten"
    assert rows["gcompris-asr-de-geography.chad"][1]["target_text"] == "Tschad"
    assert "gcompris-asr-de-geography.usa" not in rows  # renamed since the recordings: unsure
    assert summary["dropped"]["de/text_unsure"] == 1 and summary["kinds"]["de/place"] == 2
    assert summary["dropped"]["de/text_unknown"] == 3  # cave, ghost, atlantis


def test_readme_in_latin9_is_read(voices):
    assert gcompris.read_attributions(str(voices / "fr")) == ({}, ["Sons de Martin Šín"])


def test_speakers_come_from_the_readme():
    assert (
        speaker_of("de", "alphabet", "Copyright Martin Herweg 2001 / Release under GPL") == "gcompris-de-martin-herweg"
    )
    assert speaker_of("nl", "alphabet", "Voice : Marina Snaaijer / Tech : Ivar") == "gcompris-nl-marina-snaaijer"
    assert speaker_of("fr", "words", None) == "gcompris-fr-words"


def test_rows_texts_speakers_and_audio(corpus):
    rows = _rows(corpus)
    split, apple = rows["gcompris-asr-de-words.apple"]
    assert (apple["target_text"], apple["source_text"], apple["speaker"]) == (
        "der Apfel",
        "der Apfel",
        "gcompris-de-words",
    )
    assert rows["gcompris-asr-de-alphabet.U0031"][1]["speaker"] == "gcompris-de-martin-herweg"
    assert rows["gcompris-asr-fr-alphabet.U0031"][1]["target_text"] == "un"
    for _, row in rows.values():
        info = sf.info(row["audio"]["path"])
        assert (info.samplerate, info.channels) == (16_000, 1)
        assert info.frames / 16_000 == pytest.approx(row["duration"])
    assert rows["gcompris-asr-fr-words.thing3"][1]["duration"] == pytest.approx(1.2, abs=0.01)


def test_unknown_text_letters_silence_and_other_folders_are_counted(corpus):
    summary = json.loads((corpus / "summary.json").read_text())
    assert summary["dropped"] == {
        "de/folder_colors": 1, "de/letter": 1, "de/silent": 1, "de/text_unknown": 6, "de/too_fast": 1, "fr/letter": 1,
    }  # fmt: skip
    assert sum(summary["clips"][s].get("de", 0) for s in SPLITS) == 14  # apple, 12 things, one number
    assert summary["kinds"] == {"de/number": 1, "de/word": 13, "fr/number": 1, "fr/word": 13}
    assert summary["attributions"]["fr/words"] == ["Voices by someone. Under the GPLv3."]
    assert summary["attributions"]["fr/alphabet"] == ["Clara Coudoin 2004 / GPL"]
    assert "gcompris-fr-clara-coudoin" in summary["speakers"]
    assert not (corpus / "audio" / "de" / "words.quiet.flac").exists()


def test_letters_on_request(voices, texts, tmp_path):
    summary = build_gcompris(str(tmp_path), str(voices), str(texts), languages=("de",), letters=True)
    assert _rows(tmp_path)["gcompris-asr-de-alphabet.U0061"][1]["target_text"] == "a"
    assert summary["kinds"]["de/letter"] == 1


def test_splits_are_by_word_across_languages(corpus):
    rows = _rows(corpus)
    for word in ["apple", *WORDS]:
        split = hash_split(f"gcompris:{word}", SPLIT_FRACTIONS)
        assert rows[f"gcompris-asr-de-words.{word}"][0] == rows[f"gcompris-asr-fr-words.{word}"][0] == split
    assert len({split for split, _ in rows.values()}) == 3


def test_missing_voices_or_texts_fail_before_writing(voices, tmp_path, monkeypatch):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a GCompris voices folder.*git clone"):
        build_gcompris(str(out), str(tmp_path / "empty"), str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no GCompris word list.*--text"):
        build_gcompris(str(out), str(voices), str(tmp_path / "empty"))
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(RuntimeError, match="apt-get.*--text"):
        build_gcompris(str(out), str(voices), cache_dir=str(tmp_path / "cache"))
    assert not out.exists()
