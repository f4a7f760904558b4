"""Metrics against jiwer/sacrebleu and hand-computed values, normalisation, tables, and evaluate_model end to end."""

import json

import jiwer
import numpy as np
import pytest
import sacrebleu
import torch
from conftest import PRESETS

import mu2slam_hf  # noqa: F401
from mu2slam_hf import (
    Mu2SlamConfig,
    Mu2SlamFeatureExtractor,
    Mu2SlamForConditionalGeneration,
    Mu2SlamProcessor,
    build_best_rq,
    train_char_tokenizer,
)
from mu2slam_hf.cli import evaluate as evaluate_cli
from mu2slam_hf.evaluation import (
    accuracy,
    audio_dependence,
    bleu_tokenizer,
    char_error_rate,
    corpus_bleu,
    corpus_chrf,
    evaluate_model,
    make_results,
    metric_entry,
    normalize_text,
    read_results,
    results_tables,
    results_to_markdown,
    score_predictions,
    target_nll,
    word_error_rate,
    write_results,
)

RATE = 16000
LANGUAGES = ["en", "de", "fr"]
CORPUS = ["the cat sat on the mat", "die katze sitzt", "le chat est assis", "hello world", "don't stop"]


def tiny_processor(languages=LANGUAGES, texts=CORPUS, codebook_size: int = 64) -> Mu2SlamProcessor:
    tokenizer = train_char_tokenizer(texts, vocab_size=64)
    codebook = build_best_rq(seed=0, codebook_size=codebook_size)
    return Mu2SlamProcessor(Mu2SlamFeatureExtractor(), tokenizer, codebook, languages=languages)


def tiny_model(processor: Mu2SlamProcessor, seed: int = 0, **overrides) -> Mu2SlamForConditionalGeneration:
    config = Mu2SlamConfig.from_pretrained(
        PRESETS / "tiny", languages=processor.languages, text_vocab_size=len(processor.tokenizer), **overrides
    )
    torch.manual_seed(seed)
    return Mu2SlamForConditionalGeneration(config).eval()


def audio_example(eid: str, task: str, src: str, tgt: str, text: str, seconds: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    array = (0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)
    return {
        "id": eid,
        "task": task,
        "audio": {"array": array, "sampling_rate": RATE, "path": None},
        "source_text": text if task == "asr" else None,
        "target_text": text,
        "source_lang": src,
        "target_lang": tgt,
    }


# ------------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("Hello,  World!", "hello world"),
        ("Don\u2019t stop", "don't stop"),
        ("'quoted' text", "quoted text"),
        ("l'homme, c'est ça.", "l'homme c'est ça"),
        ("well-known  \t fact", "well known fact"),
        ("\uff26\uff55\uff4c\uff4c width", "full width"),  # NFKC
        ("STRASSE Straße", "strasse strasse"),  # casefold
        ("¿Qué? ¡Sí!", "qué sí"),
        ("«guillemets» — dash", "guillemets dash"),
        ("$5 + 3%", "$5 + 3"),  # symbols (S*) stay, punctuation (P*) goes
        ("", ""),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


# ---------------------------------------------------------------------------------------------- metrics


def test_wer_matches_jiwer_and_hand_count():
    refs = ["the cat sat on the mat", "hello world"]
    hyps = ["the cat sit on mat", "hello big world"]
    # 1 substitution + 1 deletion in 6 words, 1 insertion in 2 words: 3 / 8
    assert word_error_rate(refs, hyps) == pytest.approx(100 * 3 / 8)
    assert word_error_rate(refs, hyps) == pytest.approx(100 * jiwer.wer(refs, hyps))


def test_wer_normalises_case_and_punctuation():
    assert word_error_rate(["Hello, World!"], ["hello world"]) == 0.0
    assert word_error_rate(["Don't stop."], ["dont stop"]) == pytest.approx(50.0)


def test_cer_matches_jiwer_and_hand_count():
    refs, hyps = ["abcd ef"], ["abxd e"]
    # 1 substitution (c->x) + 1 deletion (f) over 7 characters (the space counts)
    assert char_error_rate(refs, hyps) == pytest.approx(100 * 2 / 7)
    assert char_error_rate(refs, hyps) == pytest.approx(100 * jiwer.cer(refs, hyps))


def test_empty_references():
    # insertions of an empty reference count against the corpus total
    assert word_error_rate(["", "a b"], ["x", "a b"]) == pytest.approx(50.0)
    assert word_error_rate(["", "!!"], ["", ""]) == 0.0
    assert word_error_rate([""], ["something"]) == 100.0
    assert char_error_rate([""], [""]) == 0.0
    with pytest.raises(ValueError, match="2 references but 1"):
        word_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="No examples"):
        word_error_rate([], [])


def test_bleu_and_chrf_match_sacrebleu():
    refs = ["The cat is on the mat.", "There is a dog in the garden today."]
    hyps = ["The cat sat on the mat.", "A dog is in the garden today."]
    expected = sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score
    assert corpus_bleu(refs, hyps) == pytest.approx(expected)
    assert corpus_bleu(refs, hyps, "de") == pytest.approx(expected)
    assert corpus_chrf(refs, hyps) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert corpus_chrf(refs, refs) == pytest.approx(100.0)
    assert corpus_bleu(refs, ["x y z", "q r s"]) == pytest.approx(0.0)


def test_bleu_tokenizer_by_target_language():
    assert bleu_tokenizer("zh") == "zh"
    assert bleu_tokenizer("en") == bleu_tokenizer(None) == "13a"
    assert bleu_tokenizer("ja") in ("ja-mecab", "13a")  # mecab only where sacrebleu[ja] is installed
    refs, hyps = ["我喜欢猫。"], ["我喜欢狗。"]
    assert corpus_bleu(refs, hyps, "zh") == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)


def test_accuracy():
    assert accuracy([0, 1, 2, 1], [0, 2, 2, 1]) == pytest.approx(75.0)
    assert accuracy(["a"], ["b"]) == 0.0


# ------------------------------------------------------------------------------------------------ tables


def test_tables_list_every_language_with_an_average():
    records = [
        {"task": "asr", "source_lang": lang, "target_lang": lang, "reference": "a b c d", "hypothesis": hyp}
        for lang, hyp in [("fr", "a b c d"), ("de", "a b c x"), ("en", "a x c x")]
    ]
    records += [
        {"task": "ast", "source_lang": src, "target_lang": "en", "reference": "the cat", "hypothesis": "the cat"}
        for src in ("fr", "de")
    ]
    metrics = score_predictions(records)
    results = make_results(
        "runs/x", "data/y", "test", metrics + [metric_entry("classification", "en", "en", "accuracy", 50.0, 4)]
    )
    tables = results_tables(results)
    assert set(tables) == {
        ("asr", "wer"),
        ("asr", "cer"),
        ("ast", "bleu"),
        ("ast", "chrf"),
        ("classification", "accuracy"),
    }
    wer_rows = {label: value for label, value, _ in tables[("asr", "wer")]}
    assert wer_rows == {"de": 25.0, "en": 50.0, "fr": 0.0, "average": 25.0}
    assert [label for label, _, _ in tables[("ast", "bleu")]] == ["de-en", "fr-en", "average"]
    assert tables[("asr", "wer")][-1][2] == 3  # examples summed in the average row
    markdown = results_to_markdown(results)
    for label in ("| de |", "| en |", "| fr |", "| de-en |", "| fr-en |", "**average**", "## ASR WER", "## AST chrF"):
        assert label in markdown
    assert json.loads(json.dumps(results)) == results


def test_metric_entry_rejects_unknown_names():
    with pytest.raises(ValueError, match="Unknown metric"):
        metric_entry("asr", "en", "en", "f1", 1.0, 1)
    with pytest.raises(ValueError, match="Unknown task"):
        metric_entry("qa", "en", "en", "wer", 1.0, 1)


def test_read_results_returns_what_write_results_wrote(tmp_path):
    prediction = {"id": "a", "task": "ast", "source_lang": "fr", "target_lang": "en", "reference": "x"}
    metrics = [metric_entry("ast", "fr", "en", "bleu", 12.5, 3)]
    results = make_results("runs/x", "data/y", "test", metrics, [{**prediction, "hypothesis": "x"}])
    json_path, _ = write_results(results, tmp_path / "eval.json")
    assert read_results(json_path) == results


def test_translation_results_carry_the_sacrebleu_signatures_of_their_scores(tmp_path):
    """A reader can only compare BLEU across papers with its signature: the results JSON and Markdown name it."""
    metrics = [
        metric_entry("mt", "de", "en", "bleu", 20.0, 2),
        metric_entry("mt", "de", "en", "chrf", 40.0, 2),
        metric_entry("ast", "en", "zh", "bleu", 10.0, 2),
    ]
    results = make_results("runs/x", "data/y", "test", metrics)
    bleu, chrf = results["sacrebleu_signatures"]["bleu"], results["sacrebleu_signatures"]["chrf"]
    version = f"version:{sacrebleu.__version__}"
    assert {signature.split("|tok:")[1].split("|")[0] for signature in bleu} == {"13a", "zh"}
    assert all(signature.startswith("nrefs:1|case:mixed") and version in signature for signature in bleu)
    assert chrf == [f"nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|{version}"]
    assert f"chrF `{chrf[0]}`" in results_to_markdown(results)
    # ASR alone has none; a results file keeps the signatures it was written with, not this sacreBLEU's.
    assert "sacrebleu_signatures" not in make_results("m", "d", "test", [metric_entry("asr", "en", "en", "cer", 1, 1)])
    json_path, _ = write_results({**results, "sacrebleu_signatures": {"bleu": ["older"]}}, tmp_path / "eval.json")
    assert read_results(json_path)["sacrebleu_signatures"] == {"bleu": ["older"]}
    raw = json.loads((tmp_path / "eval.json").read_text())
    (tmp_path / "eval.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "sacrebleu_signatures"}))
    assert "sacrebleu_signatures" not in read_results(json_path)


def test_read_results_names_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.json' not found\. Run `python training_scripts/evaluate"):
        read_results(tmp_path / "missing.json")
    entry = {"task": "asr", "source_lang": "en", "target_lang": "en", "name": "f1", "value": 1.0, "num_examples": 2}
    for name, content, problem in [
        ("unknown.json", {"model": "m", "data": "d", "split": "test", "metrics": [entry]}, "Unknown metric 'f1'"),
        ("no_split.json", {"model": "m", "data": "d", "metrics": []}, "KeyError: 'split'"),
    ]:
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(ValueError, match=rf"{name}' is not an evaluation JSON \(.*{problem}"):
            read_results(tmp_path / name)


# -------------------------------------------------------------------------------------------- end to end


def test_evaluate_model_runs_every_task_and_language():
    processor = tiny_processor()
    model = tiny_model(processor)
    examples = [
        audio_example("a1", "asr", "fr", "fr", "le chat", 0.6, 1),
        audio_example("a2", "asr", "fr", "fr", "est assis", 1.1, 2),
        audio_example("a3", "asr", "de", "de", "die katze", 0.8, 3),
        audio_example("t1", "ast", "fr", "en", "the cat", 0.9, 4),
        {"id": "m1", "task": "mt", "audio": None, "source_text": "hello world", "target_text": "die katze",
         "source_lang": "en", "target_lang": "de"},
        {"id": "s1", "task": "speech", "audio": None, "source_text": None, "target_text": None,
         "source_lang": "en", "target_lang": None},
    ]  # fmt: skip
    results = evaluate_model(
        model, processor, examples, batch_size=2, max_new_tokens=5, return_predictions=True,
        model_name="tiny", data_name="toy", split="test",
    )  # fmt: skip
    assert (results["model"], results["data"], results["split"]) == ("tiny", "toy", "test")
    keys = {(m["task"], m["source_lang"], m["target_lang"], m["name"]) for m in results["metrics"]}
    assert keys == {
        ("asr", "fr", "fr", "wer"), ("asr", "fr", "fr", "cer"), ("asr", "de", "de", "wer"), ("asr", "de", "de", "cer"),
        ("ast", "fr", "en", "bleu"), ("ast", "fr", "en", "chrf"), ("mt", "en", "de", "bleu"), ("mt", "en", "de", "chrf"),
    }  # fmt: skip
    counts = {(m["task"], m["source_lang"]): m["num_examples"] for m in results["metrics"]}
    assert counts[("asr", "fr")] == 2
    assert sorted(p["id"] for p in results["predictions"]) == ["a1", "a2", "a3", "m1", "t1"]
    # the metric is recomputed from the predictions: nothing is made up
    fr = [p for p in results["predictions"] if p["task"] == "asr" and p["source_lang"] == "fr"]
    wer_fr = next(m["value"] for m in results["metrics"] if m["name"] == "wer" and m["source_lang"] == "fr")
    assert wer_fr == pytest.approx(
        word_error_rate([p["reference"] for p in fr], [p["hypothesis"] for p in fr]), abs=1e-4
    )
    # batching by length gives the same hypotheses as one example at a time
    alone = evaluate_model(model, processor, examples[:1], batch_size=1, max_new_tokens=5, return_predictions=True)
    assert (
        alone["predictions"][0]["hypothesis"]
        == next(p for p in results["predictions"] if p["id"] == "a1")["hypothesis"]
    )
    only_mt = evaluate_model(model, processor, examples, tasks=("mt",), max_new_tokens=5)
    assert {m["task"] for m in only_mt["metrics"]} == {"mt"} and "predictions" not in only_mt


def test_evaluate_model_cuts_outputs_only_at_the_models_own_length_limit(caplog):
    """A fixed evaluation limit below the model's would cut hypotheses of long references and count their missing
    ends as errors; by default the model's generation config decides, and `generate` warns about each cut output."""
    processor = tiny_processor()
    model = tiny_model(processor)
    examples = [audio_example(f"a{i}", "asr", "fr", "fr", "le chat est assis", 0.6 + 0.3 * i, i) for i in range(3)]
    examples.append({"id": "m1", "task": "mt", "audio": None, "source_text": "hello world", "target_text": "die katze",
                     "source_lang": "en", "target_lang": "de"})  # fmt: skip

    def hypothesis_lengths(**options) -> list[int]:
        predictions = evaluate_model(model, processor, examples, batch_size=2, return_predictions=True, **options)
        return [len(processor.tokenizer(p["hypothesis"], add_special_tokens=False)["input_ids"])
                for p in predictions["predictions"]]  # fmt: skip

    model.generation_config.max_new_tokens = 3
    with caplog.at_level("WARNING"):
        own = hypothesis_lengths()
    assert max(own) <= 3
    assert "reached the 3-token limit" in caplog.text
    model.generation_config.max_new_tokens = 40
    longer = hypothesis_lengths()
    assert max(longer) > 3  # the untrained model does not stop early: the model's larger limit was used
    assert hypothesis_lengths(max_new_tokens=3) == own  # an explicit limit still applies


def test_evaluate_model_decodes_asr_with_the_models_own_decoder_unless_told_otherwise():
    """Library figures are those of `generate`'s default ASR decoding (the decoder the model's run chose on dev);
    dev evaluation, which makes that choice, keeps scoring the attention decoder as the plain `asr_cer`."""
    from accelerate import Accelerator

    from mu2slam_hf.instances import InstanceBuilder
    from mu2slam_hf.training.dev import DevEvaluator

    processor = tiny_processor()
    model = tiny_model(processor)
    model.set_asr_ctc_weight(1.0)  # as if dev had chosen the CTC head
    examples = [audio_example(f"a{i}", "asr", lang, lang, text, 0.5 + 0.2 * i, i)
                for i, (lang, text) in enumerate([("fr", "le chat"), ("de", "die katze"), ("fr", "est assis")])]  # fmt: skip

    dev = DevEvaluator(InstanceBuilder(processor, model.config, stage="finetune"), {"asr": examples}, max_new_tokens=6)
    assert dev.max_new_tokens == 13  # raised from 6 to fit "est assis" + eos (10 tokens) with a quarter to spare

    def hypotheses(**options) -> list[str]:
        results = evaluate_model(model, processor, examples, ("asr",), batch_size=2, max_new_tokens=13,
                                 return_predictions=True, **options)  # fmt: skip
        return [p["hypothesis"] for p in sorted(results["predictions"], key=lambda p: p["id"])]

    default = hypotheses()
    assert default == hypotheses(decoder="model") == hypotheses(decoder="ctc")
    attention = hypotheses(decoder="attention")
    assert default != attention
    assert hypotheses(ctc_weight=0.3) == hypotheses(decoder="attention", ctc_weight=0.3)
    with pytest.raises(ValueError, match="pass decoder='attention' with it"):
        evaluate_model(model, processor, examples, ("asr",), decoder="model", ctc_weight=0.3)
    with pytest.raises(ValueError, match="decoder must be one of"):
        evaluate_model(model, processor, examples, ("asr",), decoder="joint")

    metrics = dev.evaluate(model, Accelerator(cpu=True))
    references = [e["target_text"] for e in sorted(examples, key=lambda e: e["id"])]
    assert metrics["dev/asr_cer"] == pytest.approx(char_error_rate(references, attention), abs=1e-4)
    assert metrics["dev/asr_cer_ctc"] == pytest.approx(char_error_rate(references, default), abs=1e-4)

    model.set_asr_ctc_weight(0.0)  # no CTC in the model's choice: the attention decoder
    assert hypotheses() == attention


def test_dev_decoding_limit_fits_the_longest_reference_within_the_models_positions():
    from mu2slam_hf.training.dev import decoding_limit

    processor = tiny_processor()
    rows = [{"target_text": "le chat"}, {"target_text": "est assis"}, {"target_text": None}]
    longest = len(processor.tokenizer("est assis")["input_ids"])
    assert decoding_limit(processor, rows, 64, 255) == 64  # the recipe's limit where every reference fits
    assert decoding_limit(processor, rows, 4, 255) == longest + (longest + 3) // 4
    assert decoding_limit(processor, rows, 4, 8) == 8
    assert decoding_limit(processor, [], 4, 255) == 4


def test_nll_is_the_models_own_loss_per_token_and_ignores_batching():
    processor = tiny_processor()
    model = tiny_model(processor)
    examples = [
        audio_example("a1", "asr", "fr", "fr", "le chat", 0.6, 1),
        audio_example("a2", "asr", "fr", "fr", "est assis", 1.1, 2),
        audio_example("t1", "ast", "fr", "en", "the cat sat", 0.9, 4),
        {"id": "m1", "task": "mt", "audio": None, "source_text": "hello world", "target_text": "die katze",
         "source_lang": "en", "target_lang": "de"},
    ]  # fmt: skip
    batched = {r["id"]: r for r in target_nll(model, processor, examples, batch_size=4)}
    for example in examples:
        alone = target_nll(model, processor, [example], batch_size=1)[0]
        assert alone["tokens"] == batched[example["id"]]["tokens"]
        assert alone["nll"] == pytest.approx(batched[example["id"]]["nll"], rel=1e-4)
    # one MT example: nll / tokens is the model's mean decoder loss on it
    inputs = processor(text="hello world", text_target="die katze", src_lang="en", tgt_lang="de")
    loss = model(**inputs).loss.item()
    assert batched["m1"]["nll"] / batched["m1"]["tokens"] == pytest.approx(loss, rel=1e-4)
    results = evaluate_model(model, processor, examples, batch_size=2, max_new_tokens=3, with_loss=True)
    nll_fr = next(m for m in results["metrics"] if m["name"] == "nll" and m["task"] == "asr")
    pair = [batched["a1"], batched["a2"]]
    assert nll_fr["num_examples"] == 2
    assert nll_fr["value"] == pytest.approx(sum(r["nll"] for r in pair) / sum(r["tokens"] for r in pair), abs=1e-4)
    assert {m["name"] for m in results["metrics"] if m["task"] == "mt"} == {"bleu", "chrf", "nll"}


def test_audio_dependence_is_zero_without_audio_use_and_positive_with_it():
    processor = tiny_processor()
    model = tiny_model(processor)
    examples = [
        audio_example(f"a{i}", "asr", lang, lang, text, 0.5 + 0.1 * i, i)
        for i, (lang, text) in enumerate(
            [("fr", "le chat"), ("fr", "est assis"), ("de", "die katze"), ("de", "sitzt")]
        )
    ]
    # a model whose decoder cannot see the encoder predicts the same text from any audio
    blind = tiny_model(processor)
    for layer in blind.model.decoder.layers:
        torch.nn.init.zeros_(layer.cross_attn.out_proj.weight)
        torch.nn.init.zeros_(layer.cross_attn.out_proj.bias)
    assert audio_dependence(blind, processor, examples)["gap"] == pytest.approx(0.0, abs=1e-5)
    # a model that learned these clips gives its references a lower NLL with their own audio (the clips are random
    # noise: after 60 steps the model knows each language's two texts but not yet which clip says which)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(120):
        for example in examples:
            batch = processor(
                audio=example["audio"]["array"], sampling_rate=RATE, text_target=example["target_text"],
                src_lang=example["source_lang"], tgt_lang=example["source_lang"],
            )  # fmt: skip
            model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    result = audio_dependence(model.eval(), processor, examples)
    assert result["gap"] > 0.5 and result["other_audio"] - result["own_audio"] == pytest.approx(result["gap"])
    with pytest.raises(ValueError, match="at least 2 per source language"):
        audio_dependence(model, processor, examples[:1])


def _saved_model_and_corpus(tmp_path, asr_ctc_weight=None):
    """A tiny model folder (with a dev choice of ASR decoder when given) and a test split of 3 ASR rows + 1 MT."""
    from mu2slam_hf.data import write_flac, write_manifest

    processor = tiny_processor()
    model = tiny_model(processor)
    if asr_ctc_weight is not None:
        model.set_asr_ctc_weight(asr_ctc_weight)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    rows = []
    for index, (lang, text) in enumerate([("fr", "le chat"), ("de", "die katze"), ("fr", "est assis")]):
        write_flac(data / "audio" / f"{index}.flac", np.zeros(RATE // 2, dtype=np.float32) + 0.01 * index)
        rows.append({"id": f"a{index}", "task": "asr", "audio": {"path": f"audio/{index}.flac", "bytes": None},
                     "source_text": text, "target_text": text, "source_lang": lang, "target_lang": lang})  # fmt: skip
    rows.append({"id": "m0", "task": "mt", "audio": None, "source_text": "hello world", "target_text": "le chat",
                 "source_lang": "en", "target_lang": "fr"})  # fmt: skip
    write_manifest(data / "test.jsonl", rows)
    return tmp_path / "model", data


def test_evaluate_script_writes_json_and_markdown(tmp_path):
    model, data = _saved_model_and_corpus(tmp_path)
    output = tmp_path / "out" / "eval.json"
    argv = ["--model", str(model), "--data", str(data), "--split", "test", "--tasks", "asr,mt"]
    assert evaluate_cli.main([*argv, "--max_examples", "2", "--max_new_tokens", "4", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    asr = {(m["source_lang"], m["name"]): m["num_examples"] for m in results["metrics"] if m["task"] == "asr"}
    assert asr == {("fr", "wer"): 1, ("fr", "cer"): 1, ("de", "wer"): 1, ("de", "cer"): 1}  # 2 ASR examples at most
    assert {m["task"] for m in results["metrics"]} == {"asr", "mt"} and results["split"] == "test"
    assert "## MT BLEU" in (tmp_path / "out" / "eval.md").read_text()


def test_evaluate_script_decodes_asr_with_the_models_own_decoder_by_default(tmp_path, capsys):
    """The figures a user gets from evaluate.py are those of the model's default decoding (the decoder its run chose
    on dev), not of the attention decoder whatever the model chose."""
    model, data = _saved_model_and_corpus(tmp_path, asr_ctc_weight=1.0)  # the dev choice: the CTC head
    argv = ["--model", str(model), "--data", str(data), "--split", "test", "--tasks", "asr", "--save_predictions",
            "--max_new_tokens", "6"]  # fmt: skip

    def hypotheses(name: str, *options: str) -> list[str]:
        output = tmp_path / f"{name}.json"
        assert evaluate_cli.main([*argv, "--output", str(output), *options]) == 0
        return [record["hypothesis"] for record in json.loads(output.read_text())["predictions"]]

    default = hypotheses("default")
    assert "ASR decoding: the model's own, the CTC head (generation_config.json)" in capsys.readouterr().out
    assert default == hypotheses("ctc", "--decoder", "ctc", "--lm_weight", "0")
    assert default != hypotheses("attention", "--decoder", "attention")
    assert hypotheses("joint", "--ctc_weight", "0.3") == hypotheses("joint_too", "--decoder", "attention",
                                                                     "--ctc_weight", "0.3")  # fmt: skip
    with pytest.raises(SystemExit) as refused:
        evaluate_cli.parse_args([*argv, "--decoder", "model", "--ctc_weight", "0.3"])
    assert refused.value.code == 2
    assert "pass --decoder attention with it" in capsys.readouterr().err

    unchosen, _ = _saved_model_and_corpus(tmp_path / "unchosen")  # no dev choice: generate's attention decoder
    argv[1] = str(unchosen)
    assert hypotheses("unchosen") == hypotheses("unchosen_attention", "--decoder", "attention")
