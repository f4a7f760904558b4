"""WMT newstest / Multi30k / Tatoeba corpus: split per set, FLORES/NTREX never read, held-out text, errors.

Offline: every test builds from small trees written here in the layout of the two repositories
(OPUS-MT-testsets ``testsets/<src>-<tgt>/<set>.<iso3>``, multi30k ``data/task1/raw/train.<lang>.gz``).
"""

import gzip
import json
import os

import pytest

from mu2slam_hf.cli.build_data import build_parallel_text_main
from mu2slam_hf.data import read_manifest, write_manifest
from mu2slam_hf.data.parallel_text import build_parallel_text, set_split, source_set
from mu2slam_hf.data.schema import make_example

# (folder, set): [(xx sentence, English sentence)]
TESTSETS = {
    ("deu-eng", "newstest2017"): [("Der Hund schläft.", "The dog sleeps."), ("Es regnet heute.", "It rains today.")],
    ("eng-deu", "newstest2017"): [("Der Hund schläft.", "The dog sleeps."), ("Es regnet heute.", "It rains today.")],
    ("deu-eng", "news-test2008"): [("Das Haus ist alt.", "The house is old."), ("", "An empty line.")],
    ("deu-eng", "tatoeba-test-v2021-08-07"): [("Ich bin müde.", "I am tired."), ("Tom!", "Tom!"),
                                              ("Wir gehen nach Hause.", "We are going home.")],
    ("deu-eng", "newstest2019"): [("Der Zug ist spät.", "The train is late."), ("Es regnet HEUTE!", "Rain today.")],
    ("eng-deu", "newstest2019"): [("Die Wahl war knapp.", "The election was close.")],
    ("deu-eng", "newstest2020"): [("Der Markt fiel.", "The market fell.")],
    ("eng-deu", "newstest2020"): [("Das Spiel endete.", "The game ended.")],
    ("deu-eng", "newstestB2020"): [("Der Markt fiel.", "Markets fell.")],
    ("deu-eng", "multi30k_test_2016_flickr"): [("Ein Mann läuft.", "A man runs.")],
    ("deu-eng", "flores200-devtest"): [("Geheimer Satz aus FLORES.", "A secret FLORES sentence.")],
    ("deu-eng", "ntrex128"): [("Geheimer Satz aus NTREX.", "A secret NTREX sentence.")],
    ("eng-ces", "newstest2019"): [("Vlak jede pozdě.", "The train runs late.")],
    ("ces-eng", "newssyscomb2009"): [("Pes spí.", "The dog sleeps."), ("Vlak jede pozdě!", "Trains run late.")],
}  # fmt: skip
ISO3 = {"deu": "de", "ces": "cs"}
MULTI30K = {"en": ["Two dogs play.", "A girl sings.", "I am tired."],
            "de": ["Zwei Hunde spielen.", "Ein Mädchen singt.", "Ich bin so müde."],
            "fr": ["Deux chiens jouent.", "Une fille chante.", "Je suis fatigué."],
            "cs": ["Dva psi si hrají.", "Dívka zpívá.", "Jsem unavený."]}  # fmt: skip


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in lines))


@pytest.fixture
def sources(tmp_path):
    """(testsets folder, multi30k repository) in the layouts of OPUS-MT-testsets and multi30k/dataset."""
    testsets = tmp_path / "OPUS-MT-testsets" / "testsets"
    for (folder, name), pairs in TESTSETS.items():
        iso = next(code for code in folder.split("-") if code != "eng")
        write_lines(str(testsets / folder / f"{name}.{iso}"), [text for text, _ in pairs])
        write_lines(str(testsets / folder / f"{name}.eng"), [english for _, english in pairs])
    # never opened: a FLORES file that is not even line-aligned would raise if it were read
    write_lines(str(testsets / "deu-eng" / "flores101-dev.deu"), ["Eins.", "Zwei."])
    write_lines(str(testsets / "deu-eng" / "flores101-dev.eng"), ["One."])
    multi30k = tmp_path / "multi30k-dataset"
    for lang, lines in MULTI30K.items():
        write_lines(str(multi30k / "data" / "task1" / "raw" / f"train.{lang}.gz"), lines)
    return str(testsets), str(multi30k)


def mt_rows(out, split):
    return {(r["source_lang"], r["target_lang"], r["source_text"]): r for r in read_manifest(f"{out}/{split}.jsonl")
            if r["task"] == "mt"}  # fmt: skip


def all_texts(out):
    return {r[k] for split in ("train", "dev", "test") for r in read_manifest(f"{out}/{split}.jsonl")
            for k in ("source_text", "target_text") if r[k]}  # fmt: skip


def test_set_split_follows_the_years_and_skips_other_benchmarks():
    assert [set_split(f"newstest{y}") for y in (2009, 2018, 2019, 2020, 2021)] == ["train"] * 2 + ["dev", "test", None]
    assert set_split("news-test2008") == set_split("newssyscomb2009") == "train"
    assert set_split("tatoeba-test-v2020-07-28") == "train"
    unused = ("flores101-devtest", "flores200-dev", "FLORES-newstest2019", "ntrex128", "newstestB2020", "tico19")
    assert all(set_split(name) is None for name in unused)
    assert source_set("pt-mt-de-en-tatoeba-test-v2021-08-07.deu-eng.3") == "tatoeba-test-v2021-08-07"
    assert source_set("pt-text-en-news-test2008.deu-eng.1") == "news-test2008"
    with pytest.raises(ValueError, match="not an id of the parallel text corpus"):
        source_set("lo-mt-de-en-text.shared.01-par_id1")


def test_rows_and_splits(sources, tmp_path):
    out = str(tmp_path / "corpus")
    summary = build_parallel_text(out, *sources, languages=("de", "cs"))
    train, dev, test = (mt_rows(out, split) for split in ("train", "dev", "test"))
    # training sets in both directions, the mirrored folder's copy once, Multi30k de/cs (no fr: not asked)
    assert ("de", "en", "Der Hund schläft.") in train and ("en", "de", "The dog sleeps.") in train
    assert ("en", "cs", "The dog sleeps.") in train and ("cs", "en", "Dva psi si hrají.") in train
    assert sum(key[2] == "Der Hund schläft." for key in train) == 1
    assert train[("de", "en", "Ich bin müde.")]["target_text"] == "I am tired."
    assert not any(key[2] in ("Deux chiens jouent.", "Tom!", "An empty line.", "") for key in train)
    # dev/test (2019 on: source-original) only in the direction of their folder
    assert set(dev) == {("de", "en", "Der Zug ist spät."), ("de", "en", "Es regnet HEUTE!"),
                        ("en", "de", "The election was close."), ("en", "cs", "The train runs late.")}  # fmt: skip
    assert set(test) == {("de", "en", "Der Markt fiel."), ("en", "de", "The game ended.")}
    assert source_set(test[("de", "en", "Der Markt fiel.")]["id"]) == "newstest2020"
    assert summary["sets"]["test"] == {"newstest2020": {"de-en": 1, "en-de": 1}}
    assert summary["sets"]["train"]["multi30k-train"] == {"cs-en": 3, "de-en": 3, "en-cs": 3, "en-de": 3}
    assert summary["missing"]["dev"] == ["cs-en"] and summary["missing"]["test"] == ["cs-en", "en-cs"]
    text = [r for r in read_manifest(f"{out}/train.jsonl") if r["task"] == "text"]
    assert sum(r["source_text"] == "The dog sleeps." for r in text) == 1  # one text row per distinct sentence
    # unused sets are counted, not read into any split
    assert summary["cleaning"]["unused/newstestB2020"] == 1 and "Markets fell." not in all_texts(out)
    assert summary["cleaning"]["unused/multi30k_test_2016_flickr"] == 1 and "A man runs." not in all_texts(out)


def test_flores_and_ntrex_are_never_read(sources, tmp_path):
    out = str(tmp_path / "corpus")
    summary = build_parallel_text(out, sources[0], languages=("de",))
    assert not any("FLORES" in t or "NTREX" in t or t in ("One.", "Eins.") for t in all_texts(out))
    skipped = {key for key in summary["cleaning"] if key.startswith("skipped_benchmark/")}
    assert skipped == {f"skipped_benchmark/deu-eng/{f}" for f in
                       ("flores101-dev.deu", "flores200-devtest.deu", "ntrex128.deu")}  # fmt: skip


def test_train_rows_sharing_a_dev_test_or_extra_sentence_are_dropped(sources, tmp_path):
    other = tmp_path / "libreoffice"
    other.mkdir()
    held = make_example("lo-mt-de-en-x", "mt", "de", source_text="Wir gehen nach Hause", target_text="Home.",
                        target_lang="en")  # fmt: skip
    write_manifest(other / "test.jsonl", [held])
    write_manifest(other / "train.jsonl", [make_example("lo-text-en-y", "text", "en", source_text="I am tired.")])
    out = str(tmp_path / "corpus")
    summary = build_parallel_text(out, *sources, languages=("de", "cs"), held_out=(str(other),))
    train = mt_rows(out, "train")
    # "Es regnet heute." is newstest2019's "Es regnet HEUTE!" once normalised; "Vlak jede pozdě!" is en->cs dev
    for dropped in ("Es regnet heute.", "Vlak jede pozdě!", "Wir gehen nach Hause."):
        assert not any(dropped in (r["source_text"], r["target_text"]) for r in train.values())
    # another corpus's train split is no reason to drop a pair
    assert ("de", "en", "Ich bin müde.") in train
    assert summary["cleaning"]["train/held_out/newstest2017"] == 1
    assert summary["cleaning"]["train/held_out/tatoeba-test-v2021-08-07"] == 1
    assert summary["dropped"]["train/held_out"] == 3 and summary["held_out_sentences"] == 2
    assert not any("Wir gehen" in (t or "") for r in read_manifest(f"{out}/train.jsonl") for t in
                   (r["source_text"], r["target_text"]))  # fmt: skip


def test_bad_input_is_refused_before_anything_is_written(sources, tmp_path):
    out = tmp_path / "corpus"
    with pytest.raises(ValueError, match=r"unknown language code\(s\) \['xx'\]"):
        build_parallel_text(str(out), *sources, languages=("de", "xx"))
    with pytest.raises(FileNotFoundError, match="no folder .*eng-ita.*OPUS-MT-testsets"):
        build_parallel_text(str(out), sources[0], languages=("de", "it"))
    with pytest.raises(FileNotFoundError, match="OPUS-MT-testsets"):
        build_parallel_text(str(out), str(tmp_path / "nowhere"), languages=("de",))
    with pytest.raises(FileNotFoundError, match="no Multi30k train.en.gz"):
        build_parallel_text(str(out), multi30k_dir=sources[0], languages=("de",))
    with pytest.raises(FileNotFoundError, match="neither a .jsonl manifest nor a corpus folder"):
        build_parallel_text(str(out), *sources, languages=("de",), held_out=(str(tmp_path),))
    write_lines(os.path.join(sources[0], "deu-eng", "newstest2016.eng"), ["One line only."])
    write_lines(os.path.join(sources[0], "deu-eng", "newstest2016.deu"), ["Eine.", "Zwei."])
    with pytest.raises(ValueError, match="newstest2016.deu has 2 lines but .*newstest2016.eng has 1"):
        build_parallel_text(str(out), *sources, languages=("de",))
    assert not out.exists()


def test_cli_writes_the_corpus_and_names_directions_without_dev(sources, tmp_path, capsys):
    out = tmp_path / "corpus"
    build_parallel_text_main(["--out", str(out), "--testsets-dir", os.path.dirname(sources[0]), "--langs", "cs"])
    printed = capsys.readouterr().out
    assert "no dev rows for cs-en" in printed and "no test rows for cs-en, en-cs" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["languages"] == ["en", "cs"] and summary["splits"]["dev"]["tasks"]["mt"] == {"en-cs": 1, "total": 1}
