"""The example schema, audio decoding (soundfile + soxr) and bad-data handling."""

import io
import json

import numpy as np
import pytest
import soundfile as sf

from mu2slam_hf.data import (
    FIELDS,
    DataError,
    check_example,
    decode_example,
    decode_examples,
    filter_valid,
    load_manifest,
    make_example,
    to_dataset,
    write_manifest,
)


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def test_make_example_has_every_field_and_asr_target_lang():
    example = make_example("a1", "asr", "de", audio="x.flac", source_text="hallo", target_text="hallo")
    assert tuple(example) == FIELDS
    assert example["audio"] == {"path": "x.flac", "bytes": None}
    assert example["target_lang"] == "de"
    check_example(example)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(task="asr", source_lang="de", audio="x.flac", target_text="  "), "empty target text"),
        (dict(task="mt", source_lang="de", source_text="", target_text="hi", target_lang="en"), "empty source"),
        (dict(task="asr", source_lang="xx", audio="x.flac", target_text="hi"), "unknown language"),
        (
            dict(task="ast", source_lang="de", audio="x.flac", target_text="hi", target_lang="klingon"),
            "unknown language",
        ),
        (dict(task="speech", source_lang="de"), "no audio"),
        (dict(task="dance", source_lang="de"), "unknown task"),
    ],
)
def test_check_example_reports_the_id(kwargs, reason):
    with pytest.raises(DataError, match=reason) as info:
        check_example(make_example(id="bad-7", **kwargs))
    assert info.value.example_id == "bad-7" and "bad-7" in str(info.value)


def test_decode_resamples_stereo_44k_ogg_to_16k_mono(tmp_path):
    path = tmp_path / "a.ogg"
    sf.write(path, _tone(1.0, 44_100, channels=2), 44_100, format="OGG", subtype="VORBIS")
    decoded = decode_example(make_example("o", "speech", "cs", audio=str(path)))
    assert decoded["audio"]["sampling_rate"] == 16_000
    assert decoded["audio"]["array"].ndim == 1 and decoded["audio"]["array"].dtype == np.float32
    assert abs(len(decoded["audio"]["array"]) - 16_000) <= 1


def test_decode_from_bytes_and_array():
    buffer = io.BytesIO()
    sf.write(buffer, _tone(0.5, 22_050), 22_050, format="WAV")
    from_bytes = decode_example(make_example("b", "speech", "en", audio={"path": None, "bytes": buffer.getvalue()}))
    assert abs(len(from_bytes["audio"]["array"]) - 8_000) <= 1
    example = make_example("c", "speech", "en")
    example["audio"] = {"array": _tone(0.5, 8_000), "sampling_rate": 8_000}
    assert abs(len(decode_example(example)["audio"]["array"]) - 8_000) <= 1


def test_bad_audio_is_reported_with_id_and_skipped_or_raised(tmp_path):
    good = tmp_path / "good.flac"
    sf.write(good, _tone(0.2, 16_000), 16_000)
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(b"not audio at all")
    examples = [
        make_example("missing-1", "speech", "en", audio=str(tmp_path / "nope.flac")),
        make_example("garbage-2", "speech", "en", audio=str(garbage)),
        make_example("good-3", "speech", "en", audio=str(good)),
    ]
    reported = []
    kept = list(decode_examples(examples, on_error="skip", report=reported.append))
    assert [e["id"] for e in kept] == ["good-3"]
    assert [e.example_id for e in reported] == ["missing-1", "garbage-2"]
    assert "not found" in reported[0].reason and "unreadable" in reported[1].reason
    with pytest.raises(DataError, match="missing-1"):
        list(decode_examples(examples, on_error="raise"))


def test_filter_valid_skips_bad_text_and_language():
    examples = [
        make_example("ok", "text", "fr", source_text="bonjour"),
        make_example("empty", "text", "fr", source_text=""),
        make_example("lang", "text", "tlh", source_text="Qapla'"),
    ]
    reported = []
    assert [e["id"] for e in filter_valid(examples, report=reported.append)] == ["ok"]
    assert [e.example_id for e in reported] == ["empty", "lang"]
    with pytest.raises(DataError, match="empty"):
        list(filter_valid(examples, on_error="raise"))


def test_columns_of_a_dataset_are_read_in_its_row_order_as_of_a_list():
    from mu2slam_hf.data.schema import column_rows, column_values

    rows = [make_example(f"m-{i}", "mt", "de", source_text=f"satz {i}", target_text=f"line {i}", target_lang="en")
            for i in range(25)]  # fmt: skip
    dataset = to_dataset(rows).shuffle(seed=3).select(range(2, 20, 3))  # an indices mapping over the table
    expected = [{"source_text": row["source_text"], "target_lang": row["target_lang"]} for row in dataset]
    assert list(column_rows(dataset, ["source_text", "target_lang"], batch_size=4)) == expected
    assert column_values(dataset, "id") == [row["id"] for row in dataset] == column_values(list(dataset), "id")
    assert column_rows(rows, ["id"]) is rows  # a list is read as it is


def test_manifest_round_trip_resolves_relative_paths(tmp_path):
    examples = [
        make_example("s", "asr", "nl", audio="audio/nl/s.flac", source_text="hoi", target_text="hoi", duration=1.5),
        make_example("t", "mt", "nl", source_text="hoi", target_text="hi", target_lang="en"),
    ]
    write_manifest(tmp_path / "train.jsonl", examples)
    dataset = load_manifest(tmp_path, "train")
    assert dataset.column_names == list(FIELDS) and len(dataset) == 2
    assert dataset[0]["audio"]["path"] == str(tmp_path / "audio/nl/s.flac")
    assert dataset[1]["audio"] is None
    assert len(load_manifest(tmp_path, "train", task="mt")) == 1
    assert len(to_dataset([])) == 0


def test_a_manifest_is_memory_mapped_and_read_again_when_it_is_written_again(tmp_path):
    rows = [make_example(f"t{i}", "text", "nl", source_text=f"zin {i}") for i in range(3)]
    write_manifest(tmp_path / "train.jsonl", rows)
    first = load_manifest(tmp_path, "train")
    assert first.cache_files and first["id"] == ["t0", "t1", "t2"]  # an Arrow file, not rows held in memory
    assert load_manifest(tmp_path, "train")["id"] == first["id"]  # from the cache
    write_manifest(tmp_path / "train.jsonl", rows[:1] + [make_example("new", "text", "nl", source_text="nieuw")])
    assert load_manifest(tmp_path, "train")["id"] == ["t0", "new"]  # never a stale cache
    assert len(load_manifest(tmp_path, "train", task="asr")) == 0  # no rows of the task: empty, not an error
    (tmp_path / "dev.jsonl").write_text("")
    assert len(load_manifest(tmp_path, "dev")) == 0


def test_combined_corpora_keep_every_row_and_point_at_the_original_audio(tmp_path):
    from mu2slam_hf.data.manifest import combine_corpora

    first, second, out = tmp_path / "synth", tmp_path / "real", tmp_path / "both"
    for folder, lang in ((first, "en"), (second, "nl")):
        folder.mkdir()
        rows = [
            make_example(
                f"{lang}1", "asr", lang, audio=f"audio/{lang}1.flac", source_text=f"{lang} a", target_text=f"{lang} a"
            ),
            make_example(f"{lang}2", "mt", lang, source_text=f"{lang} a", target_text="b", target_lang="fr"),
        ]
        write_manifest(folder / "train.jsonl", rows)
    dev = make_example("nl3", "asr", "nl", audio="audio/nl3.flac", source_text="c", target_text="c")
    write_manifest(first / "dev.jsonl", [dev])  # a split only one source has
    summary = combine_corpora(out, [first, second], tasks=["asr"])
    train = load_manifest(out, "train")
    assert train["id"] == ["en1", "nl1"]  # the mt rows left out
    assert train[1]["audio"]["path"] == str(second / "audio/nl1.flac")  # nothing copied
    assert len(load_manifest(out, "dev")) == 1 and not (out / "test.jsonl").exists()
    assert summary["splits"]["train"]["tasks"]["asr"] == {"en": 1, "nl": 1, "total": 2}
    combine_corpora(out, [first, second], tasks=["asr"])  # the same combination again: rewritten
    with pytest.raises(FileExistsError, match="already holds another corpus"):
        combine_corpora(out, [first], tasks=["asr"])
    with pytest.raises(FileExistsError, match="already holds another corpus"):
        combine_corpora(first, [second])


def test_combined_train_rows_of_a_source_repeat_with_their_own_ids(tmp_path):
    from mu2slam_hf.data.manifest import combine_corpora

    synth, real = tmp_path / "synth", tmp_path / "real"
    for folder, lang in ((synth, "en"), (real, "nl")):
        folder.mkdir()
        spoken = make_example(f"{lang}1", "asr", lang, audio=f"audio/{lang}1.flac", source_text="a", target_text="a")
        write_manifest(folder / "train.jsonl", [spoken])
        write_manifest(folder / "dev.jsonl", [{**spoken, "id": f"{lang}-dev", "source_text": "b", "target_text": "b"}])
    summary = combine_corpora(tmp_path / "both", [synth, real], train_repeats=[1, 3])
    assert load_manifest(tmp_path / "both", "train")["id"] == ["en1", "nl1", "nl1#2", "nl1#3"]
    assert load_manifest(tmp_path / "both", "dev")["id"] == ["en-dev", "nl-dev"]  # held-out splits never repeat
    assert summary["combined"]["train_repeats"] == [1, 3]
    with pytest.raises(FileExistsError, match="already holds another corpus"):
        combine_corpora(tmp_path / "both", [synth, real])  # another weighting is another corpus
    with pytest.raises(ValueError, match="one whole count of at least 1 per source"):
        combine_corpora(tmp_path / "other", [synth, real], train_repeats=[2])


def test_combine_command_keeps_the_tasks_and_target_languages_asked_for(tmp_path, capsys):
    from mu2slam_hf.cli.build_data import combine_main

    source = tmp_path / "text"
    source.mkdir()
    rows = [make_example(f"m{i}", "mt", lang, source_text=f"{lang} {i}", target_text=f"{target} {i}",
                         target_lang=target) for i, (lang, target) in enumerate((("de", "en"), ("en", "de"), ("fr", "en")))]  # fmt: skip
    write_manifest(source / "train.jsonl", rows)
    combine_main([str(source), "--out", str(tmp_path / "into-en"), "--tasks", "mt", "--target-langs", "en"])
    assert load_manifest(tmp_path / "into-en", "train")["id"] == ["m0", "m2"]
    assert "train rows left out (their text is held out): 0" in capsys.readouterr().out


def test_combined_train_split_leaves_out_sentences_of_any_sources_dev_or_test(tmp_path):
    """Real speech split by level and synthetic speech split by sentence: the same sentence can be in one corpus's
    test split and the other's train split. The combination must not train on it."""
    from mu2slam_hf.data.manifest import combine_corpora

    synth, real, out = tmp_path / "synth", tmp_path / "real", tmp_path / "both"
    synth.mkdir()
    real.mkdir()

    def spoken(example_id: str, lang: str, text: str) -> dict:
        audio = f"audio/{example_id}.flac"
        return make_example(example_id, "asr", lang, audio=audio, source_text=text, target_text=text)

    write_manifest(synth / "train.jsonl", [spoken("s1", "nl", "Een boot.")])
    write_manifest(synth / "test.jsonl", [spoken("s2", "nl", "Zie je dat oog?")])
    write_manifest(real / "dev.jsonl", [spoken("r0", "cs", "Co?")])
    translated = make_example("r3", "ast", "cs", audio="audio/r3.flac", source_text="Loď.", target_text="A boat!",
                              target_lang="en")  # fmt: skip
    write_manifest(real / "test.jsonl", [translated])
    real_train = [spoken("r1", "nl", "zie je DAT oog"), spoken("r2", "cs", "co"), spoken("r4", "en", "A boat."),
                  spoken("r5", "nl", "Een vis.")]  # fmt: skip
    write_manifest(real / "train.jsonl", real_train)
    summary = combine_corpora(out, [synth, real], tasks=["asr"])
    # case and punctuation do not make another sentence; an AST test row's translation counts too
    assert load_manifest(out, "train")["id"] == ["s1", "r5"]
    assert summary["held_out_text_dropped"] == 3
    assert load_manifest(out, "test")["id"] == ["s2"] and load_manifest(out, "dev")["id"] == ["r0"]


def test_combined_dev_and_test_rows_take_turns_between_sources_so_first_rows_cover_each(tmp_path):
    """Dev evaluation and test subsets read the first rows of each language: in a combination of a synthetic and a
    real corpus they must not all be synthetic. Train rows keep the sources' order."""
    from mu2slam_hf.data.manifest import combine_corpora
    from mu2slam_hf.evaluation import spread_over_languages

    synth, real, out = tmp_path / "synth", tmp_path / "real", tmp_path / "both"
    for folder, prefix, count in ((synth, "s", 4), (real, "r", 2)):
        folder.mkdir()
        for split in ("train", "dev"):
            rows = [make_example(f"{prefix}-{split}{i}", "asr", "fr", audio=f"audio/{split}{i}.flac",
                                 source_text=f"{prefix} {split} {i}", target_text=f"{prefix} {split} {i}")
                    for i in range(count)]  # fmt: skip
            write_manifest(folder / f"{split}.jsonl", rows)
    combine_corpora(out, [synth, real], tasks=["asr"])
    dev = [json.loads(line) for line in (out / "dev.jsonl").read_text().splitlines()]
    assert [row["id"] for row in dev] == ["s-dev0", "r-dev0", "s-dev1", "r-dev1", "s-dev2", "s-dev3"]
    assert {row["id"][0] for row in spread_over_languages(dev, 2)} == {"s", "r"}
    assert load_manifest(out, "train")["id"] == [f"s-train{i}" for i in range(4)] + ["r-train0", "r-train1"]


def test_combined_corpora_keep_only_the_asked_target_languages(tmp_path):
    """A translation stage into English combines corpora of both directions: only the rows into English stay."""
    from mu2slam_hf.data.manifest import combine_corpora

    source, out = tmp_path / "text", tmp_path / "into-en"
    source.mkdir()
    rows = [
        make_example("1", "mt", "de", source_text="Ein Boot.", target_text="A boat.", target_lang="en"),
        make_example("2", "mt", "en", source_text="A boat.", target_text="Ein Boot.", target_lang="de"),
        make_example("3", "text", "de", source_text="Ein Fisch."),
    ]
    write_manifest(source / "train.jsonl", rows)
    summary = combine_corpora(out, [source], tasks=["mt"], target_langs=["en"])
    assert load_manifest(out, "train")["id"] == ["1"]
    assert summary["combined"]["target_langs"] == ["en"]
    with pytest.raises(FileExistsError, match="already holds another corpus"):
        combine_corpora(out, [source], tasks=["mt"])  # the same sources into every language: another corpus
