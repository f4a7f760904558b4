"""Public-corpus loaders on tiny local copies in each corpus's released layout and on `datasets` objects."""

import gzip
import json

import datasets
import numpy as np
import pytest
import soundfile as sf

from mu2slam_hf.data import FIELDS, DataError, decode_example
from mu2slam_hf.data.corpora import iso_code, load_corpus


def _wav(path, seconds=0.3, rate=48_000, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(np.arange(int(seconds * rate)) / 5).astype(np.float32), rate, format=fmt)
    return path


def _tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in ([header] if header else []) + rows) + "\n", encoding="utf-8")


def test_covost2_local_ast_asr_and_bad_rows(tmp_path):
    _wav(tmp_path / "clips" / "common_voice_fr_1.mp3", fmt="MP3")
    _wav(tmp_path / "clips" / "common_voice_fr_2.mp3", fmt="MP3")
    _tsv(tmp_path / "covost_v2.fr_en.train.tsv", ["path", "sentence", "translation", "client_id"], [
        ["common_voice_fr_1.mp3", "Bonjour à tous.", "Hello everyone.", "c1"],
        ["common_voice_fr_2.mp3", "Merci.", "", "c2"],
        ["common_voice_fr_3.mp3", "Absent.", "Missing.", "c3"],
    ])  # fmt: skip
    reported = []
    ast = load_corpus("covost2", "train", data_dir=tmp_path, report=reported.append)
    assert ast.column_names == list(FIELDS) and len(ast) == 1
    row = ast[0]
    assert (row["task"], row["source_lang"], row["target_lang"]) == ("ast", "fr", "en")
    assert (row["source_text"], row["target_text"], row["speaker"]) == ("Bonjour à tous.", "Hello everyone.", "c1")
    assert decode_example(row)["audio"]["sampling_rate"] == 16_000
    assert {e.example_id for e in reported} == {
        "covost2-fr-en-common_voice_fr_2.mp3",
        "covost2-fr-en-common_voice_fr_3.mp3",
    }
    asr = load_corpus("covost2", "train", data_dir=tmp_path, task="asr", on_error="skip", report=lambda e: None)
    assert len(asr) == 2 and asr[1]["target_text"] == "Merci."
    with pytest.raises(DataError, match="common_voice_fr_2"):
        load_corpus("covost2", "train", data_dir=tmp_path, on_error="raise")


def test_covost2_full_tsv_with_split_column(tmp_path):
    _wav(tmp_path / "clips" / "a.mp3", fmt="MP3")
    _tsv(tmp_path / "covost_v2.en_de.tsv", ["path", "sentence", "translation", "client_id", "split"], [
        ["a.mp3", "Hi.", "Hallo.", "c", "train"], ["a.mp3", "Bye.", "Tschüss.", "c", "dev"],
    ])  # fmt: skip
    assert load_corpus("covost2", "dev", data_dir=tmp_path)["target_text"] == ["Tschüss."]


def test_common_voice_local_and_hf(tmp_path):
    root = tmp_path / "cv-corpus-17.0-2024-03-15" / "cy"
    _wav(root / "clips" / "common_voice_cy_1.mp3", fmt="MP3")
    header = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
              "gender", "accents", "variant", "locale", "segment"]  # fmt: skip
    _tsv(
        root / "train.tsv",
        header,
        [["c1", "common_voice_cy_1.mp3", "s1", "Bore da.", "", "2", "0", "", "", "", "", "cy", ""]],
    )
    local = load_corpus("common_voice", "train", data_dir=root)
    assert (local[0]["task"], local[0]["source_lang"], local[0]["target_text"]) == ("asr", "cy", "Bore da.")
    speech = load_corpus("common_voice", "train", data_dir=root, task="speech")
    assert speech[0]["target_text"] is None and speech[0]["audio"]["path"].endswith("common_voice_cy_1.mp3")
    hf = datasets.Dataset.from_dict(
        {"client_id": ["c1"], "path": ["common_voice_cy_1.mp3"], "audio": [str(root / "clips" / "common_voice_cy_1.mp3")],
         "sentence": ["Bore da."], "up_votes": [2], "down_votes": [0], "age": [""], "gender": [""], "accent": [""],
         "locale": ["cy"], "segment": [""], "variant": [""]},
    ).cast_column("audio", datasets.Audio(sampling_rate=48_000))  # fmt: skip
    mapped = load_corpus("common_voice", "train", dataset=hf)
    assert mapped.column_names == list(FIELDS) and mapped[0]["source_lang"] == "cy"
    assert len(decode_example(mapped[0])["audio"]["array"]) == pytest.approx(0.3 * 16_000, abs=2)


def test_voxpopuli_local_and_hf(tmp_path):
    uid = "20180612-0900-PLENARY-12-de_20180612-18:25:03_5"
    lang_dir = tmp_path / "transcribed_data" / "de"
    _wav(lang_dir / "2018" / f"{uid}.ogg", rate=16_000, fmt="OGG")
    _tsv(lang_dir / "asr_train.tsv",
         ["id", "raw_text", "normalized_text", "speaker_id", "split", "gender", "is_gold_transcript", "accent"],
         [[uid, "Herr Präsident!", "herr präsident", "124", "train", "male", "True", "None"]])  # fmt: skip
    local = load_corpus("voxpopuli", "train", data_dir=tmp_path)
    assert (local[0]["id"], local[0]["source_lang"], local[0]["target_text"]) == (
        f"voxpopuli-de-{uid}",
        "de",
        "Herr Präsident!",
    )
    assert decode_example(local[0])["audio"]["array"].shape == (4_800,)
    hf = datasets.Dataset.from_dict({"audio_id": [uid], "language": [1], "audio": [str(lang_dir / "2018" / f"{uid}.ogg")],
                                     "raw_text": [""], "normalized_text": ["herr präsident"], "speaker_id": ["124"]})  # fmt: skip
    hf = hf.cast_column("language", datasets.ClassLabel(names=["en", "de"])).cast_column("audio", datasets.Audio())
    mapped = load_corpus("voxpopuli", "train", dataset=hf)
    assert (mapped[0]["source_lang"], mapped[0]["target_text"]) == ("de", "herr präsident")


def test_fleurs_local_asr_and_ast_join(tmp_path):
    for code, text in (("fr_fr", "Le chat dort."), ("en_us", "The cat sleeps.")):
        _wav(tmp_path / code / "audio" / "test" / f"{code}-1.wav", rate=16_000)
        _tsv(
            tmp_path / code / "test.tsv",
            None,
            [["1905", f"{code}-1.wav", text, text.lower(), "l e", "4800", "FEMALE"]],
        )
    asr = load_corpus("fleurs", "test", data_dir=tmp_path, language="fr_fr")
    assert (asr[0]["source_lang"], asr[0]["target_text"]) == ("fr", "Le chat dort.")
    ast = load_corpus("fleurs", "test", data_dir=tmp_path, task="ast", source_lang="fr_fr", target_lang="en_us")
    assert (ast[0]["target_lang"], ast[0]["target_text"], ast[0]["source_text"]) == (
        "en",
        "The cat sleeps.",
        "Le chat dort.",
    )
    assert iso_code("cmn_hans_cn") == "zh" and iso_code("zh-CN") == "zh"


def test_mls_local_and_hf(tmp_path):
    root = tmp_path / "mls_german"
    _wav(root / "train" / "audio" / "1054" / "1228" / "1054_1228_000000.flac", rate=16_000)
    (root / "train" / "transcripts.txt").write_text("1054_1228_000000\tund so ging es weiter\n", encoding="utf-8")
    local = load_corpus("mls", "train", data_dir=root)
    assert (local[0]["source_lang"], local[0]["speaker"], local[0]["target_text"]) == (
        "de",
        "1054",
        "und so ging es weiter",
    )
    hf = datasets.Dataset.from_dict({"audio": [local[0]["audio"]["path"]], "transcript": ["und so"], "id": ["1054_1228_000000"],
                                     "speaker_id": ["1054"], "audio_duration": [0.3]}).cast_column("audio", datasets.Audio())  # fmt: skip
    mapped = load_corpus("mls", "train", dataset=hf, language="german")
    assert (mapped[0]["source_lang"], mapped[0]["duration"]) == ("de", pytest.approx(0.3))


def test_mc4_local_train_and_validation(tmp_path):
    for name, text in (("c4-nl.tfrecord-00000-of-01024.json.gz", "Hallo wereld."),
                       ("c4-nl-validation.tfrecord-00000-of-00004.json.gz", "Dag.")):  # fmt: skip
        with gzip.open(tmp_path / name, "wt", encoding="utf-8") as handle:
            handle.write(json.dumps({"text": text, "timestamp": "2020-01-01T00:00:00Z", "url": "https://x.nl"}) + "\n")
    train = load_corpus("mc4", "train", data_dir=tmp_path)
    assert (train[0]["task"], train[0]["source_lang"], train[0]["source_text"]) == ("text", "nl", "Hallo wereld.")
    assert load_corpus("mc4", "validation", data_dir=tmp_path)["source_text"] == ["Dag."]
    hf = datasets.Dataset.from_dict({"text": ["Hoi."], "timestamp": [""], "url": [""]})
    assert load_corpus("mc4", "train", dataset=hf, language="nl")[0]["source_lang"] == "nl"


def test_wmt_local_and_hf(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "europarl-v7.de-en.de").write_text("Guten Tag.\nDanke.\n", encoding="utf-8")
    (tmp_path / "train" / "europarl-v7.de-en.en").write_text("Good day.\nThanks.\n", encoding="utf-8")
    local = load_corpus("wmt", "train", data_dir=tmp_path, source_lang="de", target_lang="en")
    assert local["target_text"] == ["Good day.", "Thanks."] and set(local["task"]) == {"mt"}
    hf = datasets.DatasetDict({"validation": datasets.Dataset.from_dict(
        {"translation": [{"de": "Hallo.", "en": "Hello."}, {"de": "", "en": "Empty."}]})})  # fmt: skip
    hf.config_name = "de-en"
    mapped = load_corpus("wmt", "dev", dataset=hf, source_lang="en", target_lang="de", report=lambda e: None)
    assert (mapped[0]["source_text"], mapped[0]["target_text"], mapped[0]["source_lang"]) == ("Hello.", "Hallo.", "en")
    assert len(mapped) == 1


def test_ted_local_and_hf(tmp_path):
    _tsv(tmp_path / "all_talks_test.tsv", ["talk_name", "en", "pt-br", "ru"], [
        ["talk1", "Thank you.", "Obrigado.", "__NULL__"], ["talk1", "Hello.", "_ _ NULL _ _", "Привет."],
    ])  # fmt: skip
    pt = load_corpus("ted", "test", data_dir=tmp_path, source_lang="pt-br", target_lang="en")
    assert (len(pt), pt[0]["source_lang"], pt[0]["target_text"]) == (1, "pt", "Thank you.")
    multi = datasets.Dataset.from_dict(
        {"translations": [{"language": ["en", "ru"], "translation": ["Hello.", "Привет."]}], "talk_name": ["t"]})  # fmt: skip
    mapped = load_corpus("ted", "test", dataset=multi, source_lang="ru", target_lang="en")
    assert (mapped[0]["source_text"], mapped[0]["target_text"]) == ("Привет.", "Hello.")


def test_unknown_corpus_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus"):
        load_corpus("librispeech", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        load_corpus("mc4", "train")
    with pytest.raises(ValueError, match="provides tasks"):
        load_corpus("mc4", "train", data_dir=tmp_path, task="asr")
