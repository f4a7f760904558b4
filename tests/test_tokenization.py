"""Mu2SLAM text tokenizers: specials, multilingual round trip, unknown characters, eos, persistence, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mu2slam_hf import Mu2SlamConfig, Mu2SlamTokenizer, VocabularyLayout, train_char_tokenizer, train_unigram_tokenizer
from mu2slam_hf.cli import train_tokenizer as train_tokenizer_cli
from mu2slam_hf.vocabulary import EOS_ID, SPECIAL_TOKENS, UNK_ID

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "training_scripts" / "train_tokenizer.py"

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "我们明天早上去北京开会。",
    "東京は日本の首都です。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "El veloz murciélago hindú comía feliz cardillo y kiwi.",
]
CORPUS = SENTENCES * 20


@pytest.fixture(scope="module", params=["char", "unigram"])
def tokenizer(request) -> Mu2SlamTokenizer:
    if request.param == "char":
        return train_char_tokenizer(CORPUS, vocab_size=4096)
    return train_unigram_tokenizer(CORPUS, vocab_size=300)


def test_specials_at_fixed_ids(tokenizer):
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert (tokenizer.unk_token_id, tokenizer.mask_token_id) == (3, 4)


@pytest.mark.parametrize("text", SENTENCES + ["булок 北京 الكلب dog", "a b  c"])
def test_multilingual_round_trip(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids[-1] == EOS_ID and ids.count(EOS_ID) == 1 and UNK_ID not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == tokenizer.normalize_text(text)
    assert tokenizer.normalize_text(text) == " ".join(text.split())


def test_nfkc_and_whitespace_normalisation(tokenizer):
    assert tokenizer.normalize_text("  Ｔｈｅ\tquick\n\nfox ") == "The quick fox"
    assert tokenizer("Ｔｈｅ")["input_ids"] == tokenizer("The")["input_ids"]


def test_unknown_characters_become_unk(tokenizer):
    ids = tokenizer("the ☃ dog 😀")["input_ids"]
    assert ids.count(UNK_ID) == 2 and ids[-1] == EOS_ID
    assert tokenizer.decode(ids, skip_special_tokens=True).split() == ["the", "dog"]


@pytest.mark.parametrize("kind", ["char", "unigram"])
def test_unknown_spans_match_encoding_every_text(kind):
    """The scan encodes only texts with a character the tokenizer cannot write alone; every text gets the spans a
    full encoding gives, with NFKC composition (e + combining acute), compatibility forms and added tokens."""
    train = train_char_tokenizer if kind == "char" else train_unigram_tokenizer
    tokenizer = train(SENTENCES * 3, vocab_size=200 if kind == "unigram" else 4096)
    tokenizer.add_tokens(["☃"])
    texts = SENTENCES + [
        "the ☃ dog 😀",
        "cafe\u0301 e\u0301t\u00e9",
        "Ｔｈｅ ﬁsh",
        "x\u00a0y",
        "",
        "   ",
        "北京 is 😀😀",
    ]
    expected = []
    for text in texts:
        encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
        expected.append([text[b:e] for i, (b, e) in zip(encoding.ids, encoding.offsets, strict=True) if i == UNK_ID])
    assert tokenizer.unknown_spans(texts) == expected
    assert any(expected) and not expected[texts.index("the ☃ dog 😀")].count("☃")


def test_add_special_tokens_false_leaves_out_eos(tokenizer):
    with_eos, without = tokenizer("the dog")["input_ids"], tokenizer("the dog", add_special_tokens=False)["input_ids"]
    assert with_eos == without + [EOS_ID]


def test_batch_padding(tokenizer):
    batch = tokenizer(["the dog", SENTENCES[2]], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2 and batch["input_ids"][0, -1].item() == tokenizer.pad_token_id
    assert batch["attention_mask"][0].sum() == len(tokenizer("the dog")["input_ids"])


def test_vocab_size_feeds_the_model_config(tokenizer):
    config = Mu2SlamConfig(text_vocab_size=len(tokenizer), codebook_size=8)
    ids = tokenizer(SENTENCES)["input_ids"]
    assert max(max(row) for row in ids) < config.text_vocab_size == len(tokenizer) == tokenizer.vocab_size
    assert VocabularyLayout(len(tokenizer), 8).speech_code_offset == len(tokenizer)


def test_save_load_with_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is Mu2SlamTokenizer and len(loaded) == len(tokenizer)
    for text in SENTENCES + ["the ☃ dog"]:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)


def test_char_vocab_is_frequency_ordered_and_capped():
    tokenizer = train_char_tokenizer(["aaab b", "c"], vocab_size=7)
    assert len(tokenizer) == 7 and tokenizer.convert_ids_to_tokens([5, 6]) == ["a", "b"]
    assert tokenizer("c")["input_ids"] == [UNK_ID, EOS_ID]


def test_char_vocab_smaller_than_asked_when_corpus_is_small():
    tokenizer = train_char_tokenizer(["abc abc"], vocab_size=4096)
    assert len(tokenizer) == 5 + 4  # a, b, c and the space piece
    assert tokenizer.decode(tokenizer("cab ba")["input_ids"], skip_special_tokens=True) == "cab ba"


def test_training_is_deterministic():
    assert train_char_tokenizer(CORPUS, 4096).get_vocab() == train_char_tokenizer(CORPUS, 4096).get_vocab()
    first, again = train_unigram_tokenizer(CORPUS, 300), train_unigram_tokenizer(CORPUS, 300)
    # Same pieces and segmentation; ids of the trainer's tail of fallback characters may be permuted.
    assert set(first.get_vocab()) == set(again.get_vocab())
    assert [first.tokenize(text) for text in SENTENCES] == [again.tokenize(text) for text in SENTENCES]


def test_vocab_size_must_leave_room_for_text():
    with pytest.raises(ValueError, match="leaves no room"):
        train_char_tokenizer(CORPUS, vocab_size=5)


def _write_corpus(directory: Path) -> list[Path]:
    corpus, extra = directory / "corpus.txt", directory / "extra.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    extra.write_text("Ωμέγα λέξη\n\n", encoding="utf-8")
    return [corpus, extra]


@pytest.mark.parametrize("kind", ["char", "unigram"])
def test_cli_main_trains_a_tokenizer(tmp_path, kind, capsys):
    inputs, output_dir = _write_corpus(tmp_path), tmp_path / "tokenizer"
    assert (
        train_tokenizer_cli.main(
            ["--kind", kind, "--vocab_size", "300", "--input", *map(str, inputs), "--output_dir", str(output_dir)]
        )
        == 0
    )
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert f"text_vocab_size={len(tokenizer)}" in capsys.readouterr().out
    assert tokenizer.decode(tokenizer("Ωμέγα λέξη")["input_ids"], skip_special_tokens=True) == "Ωμέγα λέξη"


def test_cli_runs_as_a_script(tmp_path):
    inputs, output_dir = _write_corpus(tmp_path), tmp_path / "tokenizer"
    result = subprocess.run(
        [sys.executable, str(CLI), "--kind", "char", "--vocab_size", "4096", "--input", *map(str, inputs),
         "--output_dir", str(output_dir)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (output_dir / "tokenizer.json").is_file() and "text_vocab_size=" in result.stdout
