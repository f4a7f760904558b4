"""The Drascula builder on a tiny fake game: drascula.dat's tables, voice files to lines, sentence case, splits."""

import struct

import numpy as np
import pytest
import soundfile as sf

from mu2slam_hf.cli.build_data import build_drascula_main
from mu2slam_hf.data.drascula import (
    DAT_LANGUAGES,
    DAT_TABLES,
    GAME_DIR,
    VOICE_RATE,
    build_drascula,
    read_line_tables,
    sentence_case,
    voice_line,
)
from mu2slam_hf.data.manifest import read_manifest

SPLITS = ("train", "dev", "test")
HERO = {  # line -> text per voiced language; line 4 has no English text
    "en": ["", "THAT'S THE DOOR I'VE SEEN", "NOT REALLY", "I HAVEN'T OPENED IT. SHOULD I?", "", "IT'S A BAR"],
    "es": ["", "Es la puerta que he visto", "Bueno, no", "¿QUE HAGO? ¿LA ARRANCO?", "Ñu", "ES UN BAR"],
}
IGOR = {"en": ["", "MASTER, THIS IS NOT WORKING"], "es": ["", "MAESTRO, ESTO NO RULA"]}
DOOR = {"en": "DOOR NUMBER", "es": "PUERTA NUMERO"}
MORE_LINES = 12  # hero lines 6-17, so that every split gets some


def _block(lines, encoding):
    """A table block as drascula.dat stores it: per line a 4-byte header ending in the entry's size, then the
    NUL-terminated string padded to 4 bytes."""
    block = b""
    for line in lines:
        data = line.encode(encoding) + b"\0"
        data += b"\0" * (-len(data) % 4)
        block += b"\0\0" + struct.pack(">H", 4 + len(data)) + data
    return block


def write_dat(path, tables):
    """A drascula.dat with no game records and ``tables[table][lang]`` lines (missing tables: one empty line)."""
    out = b"DRASCULA\x06" + b"\0\0" * 13 + struct.pack(">H", len(DAT_LANGUAGES))
    for table in DAT_TABLES:
        per_lang = tables.get(table, {})
        count = max((len(v) for v in per_lang.values()), default=1)
        out += struct.pack(">H", count)
        for lang in DAT_LANGUAGES:
            lines = per_lang.get(lang, [f"{lang} {i}" if i else "" for i in range(count)])
            block = _block(lines, "cp1251" if lang == "ru" else "cp850")
            out += struct.pack(">H", len(block)) + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)


def _voice(path, seconds, seed):
    """Raw unsigned 8-bit mono at 11,025 Hz: a tone with a little noise."""
    t = np.arange(int(seconds * VOICE_RATE)) / VOICE_RATE
    wave = 0.4 * np.sin(2 * np.pi * 200 * t) + 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    path.write_bytes(np.clip(128 + 127 * wave, 0, 255).astype(np.uint8).tobytes())


def fake_game(root):
    """An extraction root with en and es folders: hero lines 1-5 (en line 4 empty) and 6-17, Igor's line 1, a
    sound effect S1 and a voice file (19.ALS) past the end of its table. Returns the root."""
    hero = {lang: lines + [f"{DOOR[lang]} {n}" for n in range(6, 6 + MORE_LINES)] for lang, lines in HERO.items()}
    for index, lang in enumerate(("en", "es")):
        folder = root / GAME_DIR / lang
        write_dat(folder / "drascula.dat", {"text": hero, "texti": IGOR})
        for n in range(1, 6 + MORE_LINES):
            _voice(folder / f"{n}.ALS", 1.0 + n / 5, seed=100 * index + n)
        _voice(folder / "I1.ALS", 1.5, seed=100 * index + 90)
        _voice(folder / "S1.ALS", 0.5, seed=100 * index + 91)
        _voice(folder / "19.ALS", 1.0, seed=100 * index + 92)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fake_game(tmp_path_factory.mktemp("drascula"))


def test_line_tables_round_trip_in_every_language(tmp_path):
    tables = {"text": {"en": ["", "HELLO", "A LONGER LINE, PADDED"], "fr": ["", "DEUXIÈME", "ÇA VA"],
                       "ru": ["", "Это дверь", "Нет"], "it": ["", "PIÙ", "È"]}}  # fmt: skip
    write_dat(tmp_path / "drascula.dat", tables)
    read = read_line_tables(str(tmp_path / "drascula.dat"))
    assert set(read) == set(DAT_TABLES)
    for lang, lines in tables["text"].items():
        assert read["text"][lang] == lines
    assert read["text"]["de"] == ["", "de 1", "de 2"]


def test_not_a_dat_and_a_truncated_one_are_refused(tmp_path):
    (tmp_path / "bad.dat").write_bytes(b"NOTDRASC\x06")
    with pytest.raises(ValueError, match="not a ScummVM drascula.dat"):
        read_line_tables(str(tmp_path / "bad.dat"))
    write_dat(tmp_path / "drascula.dat", {"text": {"en": ["", "HELLO"]}})
    (tmp_path / "cut.dat").write_bytes((tmp_path / "drascula.dat").read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated drascula.dat"):
        read_line_tables(str(tmp_path / "cut.dat"))


def test_voice_files_name_their_table_line_and_speaker():
    assert voice_line("12.ALS") == ("text", 12, "hero")
    assert voice_line("d4.als") == ("textd", 4, "drascula")
    assert voice_line("BJ3.ALS") == ("textbj", 3, "bj")
    assert voice_line("VB58.ALS") == ("textvb", 58, "von-braun")
    assert voice_line("D83.ALS") == ("text", 83, "trunk")  # the trunk: the hero's line 83 from a D file
    assert voice_line("S3.ALS") is None and voice_line("F1.ALS") is None and voice_line("1.ALD") is None


def test_sentence_case_for_lines_in_capitals_only():
    assert sentence_case("I HAVEN'T OPENED IT. SHOULD I?", "en") == "I haven't opened it. Should I?"
    assert sentence_case("¿QUE HAGO? ¿LA ARRANCO?", "es") == "¿Que hago? ¿La arranco?"
    assert sentence_case("È LA PORTA. NON C'È", "it") == "È la porta. Non c'è"
    assert sentence_case("Bueno, no", "es") == "Bueno, no"


def test_build_writes_each_voiced_line_once_with_its_text_speaker_and_split(root, tmp_path):
    summary = build_drascula(str(tmp_path / "out"), root=str(root), num_workers=1)
    rows = [r for split in SPLITS for r in read_manifest(tmp_path / "out" / f"{split}.jsonl")]
    by_id = {r["id"]: r for r in rows}
    assert by_id["drascula-asr-en-text.3"]["target_text"] == "I haven't opened it. Should I?"
    assert by_id["drascula-asr-es-text.1"]["target_text"] == "Es la puerta que he visto"  # mixed case kept
    assert by_id["drascula-asr-es-texti.1"]["target_text"] == "Maestro, esto no rula"
    assert by_id["drascula-asr-es-texti.1"]["speaker"] == "drascula-es-igor"
    assert by_id["drascula-asr-en-text.1"]["speaker"] == "drascula-en-hero"
    assert "drascula-asr-en-text.4" not in by_id and "drascula-asr-es-text.4" in by_id  # no English text
    assert sum(r["task"] == "asr" for r in rows) == 2 * (6 + MORE_LINES) - 1
    # AST from each clip to its line in the five other languages of drascula.dat, English first
    ast = by_id["drascula-ast-es-en-text.3"]
    assert (ast["task"], ast["target_lang"], ast["target_text"]) == ("ast", "en", "I haven't opened it. Should I?")
    assert ast["audio"] == by_id["drascula-asr-es-text.3"]["audio"]
    assert by_id["drascula-ast-en-es-text.3"]["target_text"] == "¿Que hago? ¿La arranco?"
    assert by_id["drascula-ast-en-ru-text.6"]["target_text"] == "ru 6"
    assert "drascula-ast-es-en-text.4" not in by_id and "drascula-ast-es-de-text.4" in by_id  # no English line
    clips = [r for r in rows if r["task"] == "asr"]
    assert sum(r["task"] == "ast" for r in rows) == 5 * len(clips) - 1
    assert all(read_manifest(tmp_path / "out" / f"{split}.jsonl") for split in SPLITS)
    assert summary["dropped"] == {"en/no_text": 2, "en/not_speech": 1, "es/no_text": 1, "es/not_speech": 1}
    # a line (its meaning) is in one split in every language
    split_of = {}
    for split in SPLITS:
        for row in read_manifest(tmp_path / "out" / f"{split}.jsonl"):
            assert split_of.setdefault(row["id"].rsplit("-", 1)[1], split) == split
    # 16 kHz FLAC of the raw 11,025 Hz voice: duration kept
    row = by_id["drascula-asr-en-text.2"]
    audio, rate = sf.read(tmp_path / "out" / row["audio"]["path"])
    assert rate == 16_000 and abs(len(audio) / rate - 1.4) < 0.01 and abs(row["duration"] - 1.4) < 0.01
    assert not list((tmp_path / "out").glob(".voices-*"))  # the staged WAVs are removed


def test_build_refuses_bad_input_before_writing(root, tmp_path):
    with pytest.raises(ValueError, match="voices in en,es only"):
        build_drascula(str(tmp_path / "it"), root=str(root), languages=("it",))
    with pytest.raises(ValueError, match="not a Drascula game folder"):
        build_drascula(str(tmp_path / "none"), root=str(tmp_path))
    assert not (tmp_path / "it").exists() and not (tmp_path / "none").exists()


def test_command_line(root, tmp_path, capsys):
    build_drascula_main(["--out", str(tmp_path / "cli"), "--root", str(root / GAME_DIR), "--langs", "es"])
    printed = capsys.readouterr().out
    assert "asr" in printed and "dropped" in printed
    rows = [r for split in SPLITS for r in read_manifest(tmp_path / "cli" / f"{split}.jsonl")]
    assert {r["source_lang"] for r in rows} == {"es"} and sum(r["task"] == "asr" for r in rows) == 6 + MORE_LINES
