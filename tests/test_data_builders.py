"""Corpus builders: the Fish Fillets NG parser and splits, the real-speech benchmark and the synthetic corpus.

The Fish Fillets packages are fetched with ``apt-get download`` once per test session (CI has Debian
package access); a failure to fetch fails the tests with the reason.
"""

import json
import os

import numpy as np
import pytest
import soundfile as sf
from filelock import FileLock

from mu2slam_hf.cli.build_data import build_fillets_main, build_synthetic_main
from mu2slam_hf.data import decode_example, load_manifest
from mu2slam_hf.data.fillets import _ENTRY, fetch_fillets, level_split, read_dialogs
from mu2slam_hf.data.manifest import normalize_text

LANGS = ("en", "de", "cs", "ru")


@pytest.fixture(scope="session")
def game_dir(tmp_path_factory):
    shared = tmp_path_factory.getbasetemp().parent  # shared by the pytest-xdist workers
    with FileLock(str(shared / "fillets.lock")):
        return fetch_fillets(str(shared / "fillets-cache"))


@pytest.fixture(scope="session")
def synth_dir(game_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    argv = ["--out", str(out), "--langs", ",".join(LANGS), "--max-groups", "16", "--numbers", "4",
            "--fillets-dir", game_dir]  # fmt: skip
    build_synthetic_main(argv)
    return out


def test_lua_parser_handles_multiline_escapes_and_missing_translation(tmp_path):
    source = (
        'dialogId("a-1", "font_small", "Hello \\"fish\\".")\ndialogStr("Ahoj \\"rybo\\".")\n\n'
        'dialogId("a-2", "font_big",\n"Two lines.")\ndialogStr(\n"Dva řádky.")\n'
        'dialogId("a-3", "font_big", "Untranslated.")\n-- a comment\n'
    )
    level = tmp_path / "script" / "lvl"
    level.mkdir(parents=True)
    (level / "dialogs_cs.lua").write_text(source, encoding="utf-8")
    assert len(_ENTRY.findall(source)) == 3
    dialogs = read_dialogs(str(tmp_path), ("en", "cs"))
    assert dialogs[("lvl", "a-1")] == {"font": "font_small", "en": 'Hello "fish".', "cs": 'Ahoj "rybo".'}
    assert dialogs[("lvl", "a-2")]["cs"] == "Dva řádky."
    assert "cs" not in dialogs[("lvl", "a-3")]


def test_level_split_is_deterministic_and_uses_every_split(game_dir):
    levels = sorted(os.listdir(os.path.join(game_dir, "script")))
    splits = [level_split(level) for level in levels]
    assert splits == [level_split(level) for level in levels]
    assert {"train", "dev", "test"} == set(splits)
    assert splits.count("test") >= 10


def _manifests(directory):
    return {
        split: [json.loads(line) for line in open(directory / f"{split}.jsonl")] for split in ("train", "dev", "test")
    }


def test_synthetic_counts_match_summary_and_formula(synth_dir):
    summary = json.loads((synth_dir / "summary.json").read_text())
    manifests = _manifests(synth_dir)
    n = len(LANGS)
    assert not summary["failures"]
    for split, rows in manifests.items():
        groups = summary["groups"][split]
        assert groups >= 4
        counts = summary["splits"][split]["tasks"]
        expected = {"speech": n, "text": n, "asr": n, "ast": 2 * (n - 1), "mt": 2 * (n - 1)}
        assert {task: c["total"] for task, c in counts.items()} == {t: k * groups for t, k in expected.items()}
        assert summary["splits"][split]["examples"] == len(rows) == sum(expected.values()) * groups
        assert len({row["id"] for row in rows}) == len(rows)
    assert summary["total_hours"] > 0


def test_synthetic_text_never_crosses_splits_nor_touches_test_levels(synth_dir, game_dir):
    texts = {}
    for split, rows in _manifests(synth_dir).items():
        texts[split] = {normalize_text(row[k]) for row in rows for k in ("source_text", "target_text") if row[k]}
    assert (
        not texts["train"] & texts["test"] and not texts["train"] & texts["dev"] and not texts["dev"] & texts["test"]
    )
    test_level_texts = {
        normalize_text(text)
        for (level, _), entry in read_dialogs(game_dir).items()
        if level_split(level) == "test"
        for lang, text in entry.items()
        if lang != "font"
    }
    assert not set().union(*texts.values()) & test_level_texts


def test_synthetic_audio_is_16k_mono_flac(synth_dir):
    dataset = load_manifest(synth_dir, "dev", task="asr")
    assert sorted(set(dataset["source_lang"])) == sorted(LANGS)
    info = sf.info(dataset[0]["audio"]["path"])
    assert (info.samplerate, info.channels, info.format) == (16_000, 1, "FLAC")
    decoded = decode_example(dataset[0])
    assert decoded["audio"]["array"].ndim == 1
    assert abs(len(decoded["audio"]["array"]) / 16_000 - dataset[0]["duration"]) < 0.01
    assert len({row["speaker"] for row in load_manifest(synth_dir, "train", task="speech")}) > 3


def test_real_speech_benchmark_cs_nl(game_dir, tmp_path):
    train_level, test_level = (
        "airplane",
        next(lv for lv in sorted(os.listdir(os.path.join(game_dir, "script"))) if level_split(lv) == "test"),
    )
    assert level_split(train_level) == "train"
    build_fillets_main(["--out", str(tmp_path), "--fillets-dir", game_dir, "--levels", f"{train_level},{test_level}"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["levels"]["train"] == [train_level] and summary["levels"]["test"] == [test_level]
    test = load_manifest(tmp_path, "test")
    assert set(test["task"]) == {"asr", "ast"} and set(test["source_lang"]) == {"cs", "nl"}
    assert all(level_split(i.split("-")[3]) == "test" for i in test["id"])
    ast = load_manifest(tmp_path, "train", task="ast")
    assert set(ast["target_lang"]) == {"en"}
    row = next(r for r in ast if r["id"] == "fillets-ast-cs-en-airplane-let-m-divna")
    assert (
        row["target_text"] == "What kind of strange ship is that?" and row["source_text"] == "Co je to za divnou loď?"
    )
    decoded = decode_example(row)
    assert decoded["audio"]["sampling_rate"] == 16_000 and decoded["audio"]["array"].ndim == 1
    assert 0.5 < len(decoded["audio"]["array"]) / 16_000 < 10 and np.abs(decoded["audio"]["array"]).max() > 0.01
    info = sf.info(row["audio"]["path"])
    assert (info.samplerate, info.channels) == (16_000, 1)


def test_all_train_groups_keeps_the_capped_builds_dev_and_test_groups_and_speaks_every_train_group():
    from mu2slam_hf.data.synthetic import TextGroup, assign_splits, subsample

    groups = [TextGroup(f"g{i}", {"en": f"sentence number {i}", "de": f"Satz Nummer {i}"}) for i in range(300)]
    assign_splits(groups, seed=0)
    capped = subsample(groups, 60, seed=0)
    every_train = subsample(groups, 60, seed=0, all_train_groups=True)

    def keys(chosen, split):
        return [g.key for g in chosen if g.split == split]

    for split in ("dev", "test"):
        assert keys(every_train, split) == keys(capped, split) and keys(capped, split)
    assert keys(every_train, "train") == [g.key for g in groups if g.split == "train"]
    assert set(keys(capped, "train")) < set(keys(every_train, "train"))


def test_a_url_is_not_speakable():
    from mu2slam_hf.data.synthetic import speakable

    assert not speakable({"en": "Download video from http://fillets.sf.net/intro.avi", "cs": "Video je tam."})
    assert not speakable({"en": "See WWW.example.org for more."})
    assert speakable({"en": "Wouldn't it help if we select Desktop/Line up Icons?", "nl": "command.com draaien"})


def test_groups_with_a_url_are_left_out_and_no_other_group_moves(tmp_path, monkeypatch):
    from mu2slam_hf.data import synthetic

    made = synthetic.number_groups

    def with_a_url(count, languages, seed):
        groups = made(count, languages, seed)
        return groups + [synthetic.TextGroup("url", {lang: "Get it from http://example.org/x" for lang in languages})]

    plain = synthetic.build_synthetic(str(tmp_path / "plain"), ("en",), num_numbers=6, use_fillets=False)
    monkeypatch.setattr(synthetic, "number_groups", with_a_url)
    built = synthetic.build_synthetic(str(tmp_path / "url"), ("en",), num_numbers=6, use_fillets=False)
    assert built["unspeakable_groups"] == ["url"] and plain["unspeakable_groups"] == []
    for split in ("train", "dev", "test"):
        rows = [json.loads(line) for line in (tmp_path / "url" / f"{split}.jsonl").open()]
        assert not any("http://" in (row["source_text"] or "") for row in rows)  # not even its text rows
        assert [row["id"] for row in rows] == [
            json.loads(line)["id"] for line in (tmp_path / "plain" / f"{split}.jsonl").open()
        ]
