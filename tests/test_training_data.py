"""Training on a user's own data: CSV/TSV/JSONL tables, audiofolders, `datasets` folders and our manifests all reach
the loop as the same canonical rows; bad data is named before step 1 and nothing is written."""

import csv
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from conftest import PRESETS

from mu2slam_hf import Mu2SlamForConditionalGeneration, Mu2SlamProcessor
from mu2slam_hf.cli.train import finetune_main
from mu2slam_hf.data import make_example, write_flac, write_manifest
from mu2slam_hf.data.training_data import DataSourceError, TrainingData
from mu2slam_hf.data.validation import CorpusError
from mu2slam_hf.training import Mu2SlamTrainer, RecipeError, recipe_from_dict
from mu2slam_hf.training.preflight import UnknownTextError

SR = 16_000
TEXTS = {"en": ["one two", "three four", "five six"], "fr": ["un deux", "trois quatre", "cinq six"]}
RECIPE = {
    "stage": "finetune", "model": str(PRESETS / "tiny"), "examples_per_step": {"asr": 2}, "max_steps": 2,
    "log_interval": 1, "eval_interval": 2, "checkpoint_interval": 100, "dev_examples_per_task": 2,
    "eval_max_new_tokens": 4, "speech_codebook": {"normalization_examples": 4}, "language_temperature": {},
}  # fmt: skip


def clip(path: Path, seconds: float, pitch: float) -> float:
    t = np.arange(int(SR * seconds)) / SR
    return write_flac(path, 0.3 * np.sin(2 * np.pi * pitch * t))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, list[dict]]:
    """split -> rows {file, text, lang, seconds} of tone clips under <root>/clips (train and validation)."""
    root = tmp_path_factory.mktemp("own-data")
    rows = {"train": [], "validation": []}
    for split in rows:
        for lang, texts in TEXTS.items():
            for i, text in enumerate(texts):
                name = f"{split}-{lang}-{i}.flac"
                seconds = clip(root / "clips" / name, 0.3 + 0.1 * i, 200 + 40 * i)
                rows[split].append({"file": name, "text": text, "lang": lang, "seconds": seconds})
    rows["root"] = root
    return rows


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def table(clips, split: str, prefix: str = "clips/") -> list[dict]:
    """Common Voice's column names: path, sentence, locale."""
    return [{"path": prefix + r["file"], "sentence": r["text"], "locale": r["lang"]} for r in clips[split]]


def csv_data(clips, delimiter=",", suffix=".csv") -> TrainingData:
    root = clips["root"]
    train = write_csv(root / f"train{suffix}", table(clips, "train"), delimiter)
    dev = write_csv(root / f"dev{suffix}", table(clips, "validation"), delimiter)
    return TrainingData(
        train_file=str(train), validation_file=str(dev), audio_column_name="path", text_column_name="sentence",
        source_lang_column_name="locale",
    )  # fmt: skip


def audiofolder_data(clips) -> TrainingData:
    root = clips["root"] / "audiofolder"
    for split in ("train", "validation"):
        rows = [{"file_name": f"../../clips/{r['file']}", "transcription": r["text"]} for r in clips[split]]
        rows = [row for row, r in zip(rows, clips[split], strict=True) if r["lang"] == "en"]
        write_csv(root / split / "metadata.csv", rows)
    return TrainingData(
        dataset_name=str(root), audio_column_name="file_name", text_column_name="transcription", source_lang="en"
    )


def disk_data(clips) -> TrainingData:
    """A `save_to_disk` DatasetDict with an `Audio` column holding the encoded bytes (as Hub datasets do)."""
    splits = {}
    for split in ("train", "validation"):
        rows = table(clips, split)
        audio = [{"path": Path(r["path"]).name, "bytes": (clips["root"] / r["path"]).read_bytes()} for r in rows]
        columns = {"audio": audio, "sentence": [r["sentence"] for r in rows], "locale": [r["locale"] for r in rows]}
        dataset = datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio(sampling_rate=SR))
        splits[split] = dataset
    folder = clips["root"] / "disk"
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return TrainingData(dataset_name=str(folder), text_column_name="sentence", source_lang_column_name="locale")


def snapshot_data(clips) -> TrainingData:
    """A local snapshot of a Hub dataset: parquet files per split under data/ (the Hub's layout)."""
    folder = clips["root"] / "snapshot"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    disk = datasets.load_from_disk(str(disk_data(clips).dataset_name))
    for split, dataset in disk.items():
        dataset.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return TrainingData(dataset_name=str(folder), text_column_name="sentence", source_lang_column_name="locale")


def manifest_data(clips) -> TrainingData:
    root = clips["root"]
    (root / "manifest").mkdir(exist_ok=True)
    for split, name in (("train", "train"), ("validation", "dev")):
        rows = [
            make_example(f"{split}-{i}", "asr", r["lang"], audio=str(root / "clips" / r["file"]),
                         target_text=r["text"], source_text=r["text"], duration=r["seconds"])
            for i, r in enumerate(clips[split])
        ]  # fmt: skip
        write_manifest(root / "manifest" / f"{name}.jsonl", rows)
    return TrainingData(dataset_name=str(root / "manifest"))


KINDS = {
    "table": csv_data, "audiofolder": audiofolder_data, "disk": disk_data, "manifest": manifest_data,
    "hub": snapshot_data,
}  # fmt: skip


def essentials(rows) -> list[tuple]:
    """What training reads from a row: task, audio (file name or bytes' size), texts, languages, duration."""
    out = []
    for row in rows:
        audio = row["audio"]
        name = Path(audio["path"]).name if audio["path"] else None
        out.append((row["task"], name, row["target_text"], row["source_lang"], row["target_lang"],
                    round(row["duration"], 3)))  # fmt: skip
    return sorted(out)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_of_data_gives_the_canonical_rows_of_the_manifest(clips, kind):
    data = KINDS[kind](clips)
    assert data.kind == kind
    expected = [r for r in clips["train"] if kind != "audiofolder" or r["lang"] == "en"]
    rows = list(data.load("train"))
    assert essentials(rows) == sorted(
        ("asr", r["file"], r["text"], r["lang"], r["lang"], round(r["seconds"], 3)) for r in expected
    )
    assert data.resolved_eval_split() == ("dev" if kind == "manifest" else "validation")
    if kind in ("disk", "hub"):
        assert all(row["audio"]["bytes"] for row in rows)  # decoded later by soundfile, not torchcodec


def test_a_corpus_without_a_dev_split_is_refused_for_dev_unless_test_is_asked_for(tmp_path):
    """Dev never falls back to the test split unasked: decoders and LM weights chosen on it would be tuned on test."""
    for split in ("train", "test"):
        write_manifest(tmp_path / f"{split}.jsonl", [])
    with pytest.raises(DataSourceError, match=r"no dev split .*eval_split_name='test'"):
        TrainingData(dataset_name=str(tmp_path)).resolved_eval_split()
    assert TrainingData(dataset_name=str(tmp_path), eval_split_name="test").resolved_eval_split() == "test"
    (tmp_path / "test.jsonl").unlink()
    assert TrainingData(dataset_name=str(tmp_path)).resolved_eval_split() is None  # no held-out split: no dev


def test_tsv_and_jsonl_tables_read_like_csv(clips):
    reference = essentials(csv_data(clips).load("train"))
    assert essentials(csv_data(clips, "\t", ".tsv").load("train")) == reference
    path = clips["root"] / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in table(clips, "train")))
    jsonl = TrainingData(train_file=str(path), audio_column_name="path", text_column_name="sentence",
                         source_lang_column_name="locale")  # fmt: skip
    assert essentials(jsonl.load("train")) == reference


def test_translation_tables_and_manifest_language_selection(clips, tmp_path):
    pairs = [{"de": f"eins {i}", "en": f"one {i}"} for i in range(4)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in pairs))
    data = TrainingData(train_file=str(path), source_text_column_name="de", text_column_name="en",
                        source_lang="de", target_lang="en")  # fmt: skip
    rows = list(data.load("train"))
    assert {(r["task"], r["source_lang"], r["target_lang"]) for r in rows} == {("mt", "de", "en")}
    assert [r["source_text"] for r in rows] == [p["de"] for p in pairs]
    manifest = manifest_data(clips)
    manifest.source_lang = "fr"
    assert {row["source_lang"] for row in manifest.load("train")} == {"fr"}
    rows = [json.loads(line) for line in (Path(manifest.dataset_name) / "train.jsonl").read_text().splitlines()]
    rows[0]["source_lang"] = rows[0]["target_lang"] = "xx"  # an English row: a pair this run leaves out
    broken = clips["root"] / "manifest-broken"
    broken.mkdir(exist_ok=True)
    (broken / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    TrainingData(dataset_name=str(broken), source_lang="fr").check({"train": ["asr"]}, ["en", "fr"])
    with pytest.raises(CorpusError, match=r"train.jsonl:1: example 'train-0': unknown language source_lang='xx'"):
        TrainingData(dataset_name=str(broken)).check({"train": ["asr"]}, ["en", "fr"])


def train_on(kind_or_data, clips, output_dir: Path, **recipe):
    data = KINDS[kind_or_data](clips) if isinstance(kind_or_data, str) else kind_or_data
    return Mu2SlamTrainer(recipe_from_dict({**RECIPE, **recipe}), data, str(output_dir), log_with=None,
                          progress=False).train()  # fmt: skip


@pytest.fixture(scope="module")
def trained(clips, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("trained-on-a-table") / "run"
    train_on("table", clips, output_dir)
    return output_dir


@pytest.mark.parametrize("kind", ["table", "audiofolder", "disk", "hub"])
def test_every_kind_trains_and_its_model_loads(clips, kind, trained, tmp_path):
    output_dir = trained if kind == "table" else tmp_path / "run"
    if kind != "table":
        result = train_on(kind, clips, output_dir)
        assert result.step == 2 and np.isfinite(result.log[-1]["loss"])
    assert "dev/asr_cer" in json.loads((output_dir / "dev_results.json").read_text())[-1]
    Mu2SlamForConditionalGeneration.from_pretrained(output_dir)


def test_unknown_characters_and_languages_are_refused_or_added(clips, trained, tmp_path):
    rows = table(clips, "train")
    for row, text in zip(rows, ["ça été", "żółw", "żaba"], strict=False):
        row["sentence"] = text
    rows[1]["locale"] = rows[2]["locale"] = "pl"
    path = write_csv(clips["root"] / "new.csv", rows)
    data = TrainingData(train_file=str(path), audio_column_name="path", text_column_name="sentence",
                        source_lang_column_name="locale")  # fmt: skip
    fine_tune = {"model": None, "init_checkpoint": str(trained)}
    with pytest.raises(CorpusError, match=r"unknown language source_lang='pl'"):
        train_on(data, clips, tmp_path / "a", **fine_tune)
    accented = TrainingData(train_file=str(write_csv(clips["root"] / "fr.csv", [rows[0]])), audio_column_name="path",
                          text_column_name="sentence", source_lang_column_name="locale")  # fmt: skip
    with pytest.raises(UnknownTextError, match=r"(?s)en: 1 of 1 texts, 50% of the characters; unknown: 'é' x2, "
                                               r"'ç' x1.*--extend_vocabulary"):  # fmt: skip
        train_on(accented, clips, tmp_path / "b", **fine_tune)
    assert nothing_written(tmp_path / "b")

    train_on(data, clips, tmp_path / "c", **fine_tune, extend_vocabulary=True)
    processor = Mu2SlamProcessor.from_pretrained(tmp_path / "c")
    model = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path / "c")
    assert model.config.languages[-1] == "pl" and processor.languages == model.config.languages
    assert not any(processor.tokenizer.unknown_spans(["ça été", "żółw"]))
    assert (
        processor.tokenizer.decode(processor.tokenizer("żółw ça")["input_ids"], skip_special_tokens=True) == "żółw ça"
    )
    assert model.config.text_vocab_size == len(processor.tokenizer)


def test_a_character_model_moves_to_a_subword_tokenizer(clips, trained, tmp_path):
    data = KINDS["table"](clips)
    fine_tune = {"model": None, "init_checkpoint": str(trained)}
    train_on(
        data, clips, tmp_path / "sub", **fine_tune, tokenizer={"kind": "unigram", "vocab_size": 40, "replace": True}
    )
    processor = Mu2SlamProcessor.from_pretrained(tmp_path / "sub")
    model = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path / "sub")
    old = Mu2SlamProcessor.from_pretrained(trained).tokenizer
    assert model.config.text_vocab_size == len(processor.tokenizer) != len(old)
    pieces = processor.tokenizer.tokenize("three four")
    assert any(len(piece.lstrip("\u2581")) > 1 for piece in pieces)  # subwords, not characters
    assert processor.tokenizer.decode(processor.tokenizer("three four")["input_ids"], skip_special_tokens=True) == (
        "three four"
    )
    assert model.config.codebook_size == Mu2SlamForConditionalGeneration.from_pretrained(trained).config.codebook_size
    with pytest.raises(ValueError, match=r"tokenizer.replace moves a trained seq2seq model"):
        recipe_from_dict({**RECIPE, "tokenizer": {"kind": "unigram", "replace": True}})


def test_training_script_takes_the_transformers_argument_names(clips, tmp_path):
    data = csv_data(clips)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    finetune_main([
        "--recipe", str(recipe), "--train_file", data.train_file, "--validation_file", data.validation_file,
        "--audio_column_name", "path", "--text_column_name", "sentence", "--source_lang_column_name", "locale",
        "--output_dir", str(tmp_path / "run"), "--no_tensorboard", "--no_progress",
    ])  # fmt: skip
    assert (tmp_path / "run" / "model.safetensors").exists()


def train_bad(data, output_dir: Path):
    Mu2SlamTrainer(recipe_from_dict(RECIPE), data, str(output_dir), log_with=None, progress=False).train()


def nothing_written(output_dir: Path) -> bool:
    return not output_dir.exists() or not [p for p in output_dir.rglob("*") if p.is_file() and p.name != ".run.lock"]


def test_bad_data_is_named_before_step_1_and_nothing_is_written(clips, tmp_path):
    data = csv_data(clips)
    data.text_column_name = "transcript"
    with pytest.raises(DataSourceError, match=r"no column 'transcript' \(text_column_name\); its columns are "
                                              r"\['path', 'sentence', 'locale'\]"):  # fmt: skip
        train_bad(data, tmp_path / "a")
    assert nothing_written(tmp_path / "a")

    rows = table(clips, "train")
    rows[1]["path"] = "clips/missing.flac"
    rows[2]["locale"] = "xx"
    bad = TrainingData(train_file=str(write_csv(clips["root"] / "bad.csv", rows)), audio_column_name="path",
                       text_column_name="sentence", source_lang_column_name="locale")  # fmt: skip
    with pytest.raises(CorpusError) as excinfo:
        train_bad(bad, tmp_path / "b")
    message = str(excinfo.value)
    assert "train row 1: example 'train-1': audio file not found" in message and "missing.flac" in message
    assert "train row 2: example 'train-2': unknown language source_lang='xx'" in message
    assert "The model knows the languages en, de" in message and "nothing has been run yet" in message
    assert message.startswith("2 problem(s)")
    assert nothing_written(tmp_path / "b")

    empty = tmp_path / "empty.csv"
    empty.write_text("path,sentence,locale\n")
    with pytest.raises(DataSourceError, match=r"the 'train' split has no rows"):
        train_bad(TrainingData(train_file=str(empty), audio_column_name="path", text_column_name="sentence",
                               source_lang="en"), tmp_path / "c")  # fmt: skip
    assert nothing_written(tmp_path / "c")

    no_language = csv_data(clips)
    no_language.source_lang_column_name = None
    with pytest.raises(DataSourceError, match=r"the language of the data is unknown. Pass --source_lang"):
        train_bad(no_language, tmp_path / "d")


def test_unreadable_layouts_say_what_was_expected(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(
        DataSourceError, match=r"not a corpus folder this package can read: no train.jsonl.*train_file"
    ):
        TrainingData(dataset_name=str(tmp_path / "folder")).load("train")
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(DataSourceError, match=r"x.csv is a file: pass a table as train_file"):
        TrainingData(dataset_name=str(tmp_path / "x.csv")).load("train")
    with pytest.raises(DataSourceError, match=r"exactly one of dataset_name"):
        TrainingData()


def test_more_text_for_the_ctc_language_model_leaves_held_out_sentences_out(clips, tmp_path):
    """`ctc_language_model_text` adds a corpus folder's train text to the CTC language model, without the sentences
    of the run's dev rows or of that folder's dev/test splits; a folder without a train manifest, or the key
    without `ctc_language_model`, is refused before the output folder is made."""
    text = tmp_path / "help-text"
    text.mkdir()
    train = [make_example(f"t{i}", "text", "en", source_text=sentence)
             for i, sentence in enumerate(["seven eight", "nine ten", "One two!", "eleven"])]  # fmt: skip
    write_manifest(text / "train.jsonl", train)  # "One two!" is a dev sentence of the run
    write_manifest(text / "test.jsonl", [make_example("x", "text", "en", source_text="eleven")])
    recipe = {"ctc_language_model": 3, "ctc_language_model_text": [str(text)], "examples_per_step": {"asr": 2}}
    train_on("manifest", clips, tmp_path / "run", **recipe)
    fit = json.loads((tmp_path / "run" / "ctc_language_model_fit.json").read_text())
    extra = fit["extra_text"]  # the second LM: the run's transcripts, then "seven eight" and "nine ten"
    assert extra["sentences"] == {"en": 3 + 2, "fr": 3}
    assert extra["kept"] == (extra["dev_cer"] < extra["train_text_dev_cer"])
    assert fit["dev_cer"] == min(extra["dev_cer"], extra["train_text_dev_cer"])
    assert fit["sentences"] == (extra["sentences"] if extra["kept"] else {"en": 3, "fr": 3})

    with pytest.raises(RecipeError, match=r"hold no train.jsonl"):
        train_on("manifest", clips, tmp_path / "missing", **{**recipe, "ctc_language_model_text": [str(tmp_path)]})
    with pytest.raises(RecipeError, match="set ctc_language_model"):
        train_on("manifest", clips, tmp_path / "no-lm", **{**recipe, "ctc_language_model": None})
    assert not (tmp_path / "missing").exists() and not (tmp_path / "no-lm").exists()
