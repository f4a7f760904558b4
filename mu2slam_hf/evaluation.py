"""Evaluation of Mu2SLAM models: WER/CER (ASR), detokenized BLEU/chrF (AST, MT), accuracy (classification).

Every metric but ``nll`` is a percentage in [0, 100] (WER/CER can exceed 100 with many insertions).

Normalisation for WER/CER (:func:`normalize_text`): Unicode NFKC, lower case (``str.casefold``), typographic
apostrophes mapped to ``'``, punctuation (Unicode categories P*) replaced by a space except apostrophes between
two letters or digits ("don't", "l'homme" stay one word), whitespace collapsed and stripped. BLEU and chrF are
computed on the raw (detokenized) strings, as sacreBLEU intends.

Evaluation JSON (shared with ``mu2slam_hf.hub`` / model cards)::

    {"model": str, "data": str, "split": str,
     "metrics": [{"task": "asr"|"ast"|"mt"|"classification"|"lid"|"retrieval", "source_lang": str,
                  "target_lang": str, "name": "wer"|"cer"|"bleu"|"chrf"|"accuracy"|"nll"|"s2t_r1"|..., "value": float,
                  "num_examples": int}, ...]}

plus, where there are BLEU or chrF scores, ``"sacrebleu_signatures": {"bleu": [str], "chrf": [str]}`` (sacreBLEU's
signatures of the scores, e.g. ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``), and, only when asked
for, ``"predictions": [{"id", "task", "source_lang", "target_lang", "reference", "hypothesis"}, ...]``. ``nll`` (only with ``evaluate_model(..., with_loss=True)``) is the teacher-forced
cross-entropy of the reference in nats per target token (eos included), in eval mode: unlike WER or BLEU it
separates models that do not decode well yet. :func:`results_to_markdown` renders one table per (task, metric) as in the paper's
appendix: one row per language (ASR, classification) or direction (AST, MT), then an unweighted average row.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jiwer
import sacrebleu
import torch

from .data.audio import decode_example
from .data.manifest import load_manifest
from .data.schema import SPEECH_TEXT_TASKS, target_language
from .vocabulary import IGNORE_INDEX

METRICS_BY_TASK = {"asr": ("wer", "cer"), "ast": ("bleu", "chrf"), "mt": ("bleu", "chrf")}
GENERATION_TASKS = ("asr", "ast", "mt")
TASK_ORDER = ("asr", "ast", "mt", "classification", "lid", "retrieval")
RETRIEVAL_KS = (1, 5, 10)
# Keys some evaluations add beside the metrics (kept by `read_results`).
OPTIONAL_RESULT_KEYS = ("language_confusion", "retrieval_candidates", "sacrebleu_signatures")
# Recall@k of speech -> text and text -> speech retrieval (percentages, like every metric here).
RETRIEVAL_METRICS = tuple(f"{direction}_r{k}" for direction in ("s2t", "t2s") for k in RETRIEVAL_KS)
METRIC_ORDER = ("wer", "cer", "bleu", "chrf", "accuracy", "nll", *RETRIEVAL_METRICS)
# sacreBLEU tokenizers for target languages whose text has no spaces between words; others use "13a".
BLEU_TOKENIZERS = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'", "\u2018": "'", "\uff07": "'"})
_WHITESPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------------------- normalisation


def normalize_text(text: str) -> str:
    """Text as WER/CER compare it: NFKC, casefolded, punctuation removed (word-internal apostrophes kept).

    Examples: ``"Hello,  World!"`` -> ``"hello world"``; ``"Don’t stop"`` -> ``"don't stop"``;
    ``"'quoted'"`` -> ``"quoted"``; ``"well-known"`` -> ``"well known"``; ``"Ｆｕｌｌ"`` -> ``"full"``.
    """
    text = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    chars = []
    for index, char in enumerate(text):
        if unicodedata.category(char).startswith("P"):
            if char == "'" and _is_word_char(text, index - 1) and _is_word_char(text, index + 1):
                chars.append(char)
            else:
                chars.append(" ")
        else:
            chars.append(char)
    return _WHITESPACE.sub(" ", "".join(chars)).strip()


def _is_word_char(text: str, index: int) -> bool:
    return 0 <= index < len(text) and text[index].isalnum()


# --------------------------------------------------------------------------------------------- metrics


def _check_pairs(references: Sequence[Any], hypotheses: Sequence[Any]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses.")
    if not references:
        raise ValueError("No examples to score.")


def _error_rate(output: Any, num_hypothesis_units: int) -> float:
    """100 * (S + D + I) / N; with no reference units at all: 0 if the hypotheses are empty too, else 100."""
    errors = output.substitutions + output.deletions + output.insertions
    reference_units = output.substitutions + output.deletions + output.hits
    if reference_units == 0:
        return 0.0 if num_hypothesis_units == 0 else 100.0
    return 100.0 * errors / reference_units


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER in percent on normalised text (jiwer): total word errors / total reference words.

    Empty references (after normalisation) are allowed: their hypothesis words count as insertions. If every
    reference is empty the WER is 0 when every hypothesis is empty too, else 100.
    """
    _check_pairs(references, hypotheses)
    refs, hyps = [normalize_text(t) for t in references], [normalize_text(t) for t in hypotheses]
    output = jiwer.process_words(refs, hyps)
    return _error_rate(output, sum(len(h.split()) for h in hyps))


def char_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus CER in percent on normalised text (jiwer; the single spaces between words count as characters).

    Empty references are handled as in :func:`word_error_rate`.
    """
    _check_pairs(references, hypotheses)
    refs, hyps = [normalize_text(t) for t in references], [normalize_text(t) for t in hypotheses]
    output = jiwer.process_characters(refs, hyps)
    return _error_rate(output, sum(len(h) for h in hyps))


@functools.cache
def bleu_tokenizer(target_lang: str | None) -> str:
    """sacreBLEU tokenizer for a target language: "zh" for Chinese, "ja-mecab"/"ko-mecab" for Japanese/Korean
    when their extra dependencies are installed (``sacrebleu[ja]``/``[ko]``), otherwise "13a" (the default)."""
    name = BLEU_TOKENIZERS.get((target_lang or "").split("-")[0].lower())
    if name is None:
        return "13a"
    try:
        sacrebleu.BLEU(tokenize=name).corpus_score(["a"], [["a"]])
    except (ImportError, RuntimeError):
        return "13a"
    return name


@functools.cache
def bleu_signature(target_lang: str | None) -> str:
    """sacreBLEU's signature of :func:`corpus_bleu` into ``target_lang`` (e.g.
    ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``): what a reader needs to compare the score."""
    metric = sacrebleu.BLEU(tokenize=bleu_tokenizer(target_lang))
    metric.corpus_score(["a"], [["a"]])  # the signature names the number of references, known after a score
    return str(metric.get_signature())


@functools.cache
def chrf_signature() -> str:
    """sacreBLEU's signature of :func:`corpus_chrf`."""
    metric = sacrebleu.CHRF()
    metric.corpus_score(["a"], [["a"]])
    return str(metric.get_signature())


def corpus_bleu(references: list[str], hypotheses: list[str], target_lang: str | None = None) -> float:
    """Detokenized corpus BLEU (sacreBLEU defaults: 4-grams, exponential smoothing) with the tokenizer of
    :func:`bleu_tokenizer`; one reference per hypothesis, raw (not normalised) strings."""
    _check_pairs(references, hypotheses)
    metric = sacrebleu.BLEU(tokenize=bleu_tokenizer(target_lang))
    return float(metric.corpus_score(list(hypotheses), [list(references)]).score)


def corpus_chrf(references: list[str], hypotheses: list[str]) -> float:
    """Corpus chrF (sacreBLEU defaults: character 6-grams, beta 2, no word n-grams) on raw strings."""
    _check_pairs(references, hypotheses)
    return float(sacrebleu.CHRF().corpus_score(list(hypotheses), [list(references)]).score)


def accuracy(labels: Sequence[Any], predictions: Sequence[Any]) -> float:
    """Percentage of predictions equal to their label."""
    _check_pairs(labels, predictions)
    return 100.0 * sum(int(label == pred) for label, pred in zip(labels, predictions, strict=True)) / len(labels)


def score(name: str, references: list[str], hypotheses: list[str], target_lang: str | None = None) -> float:
    """One metric by name ("wer", "cer", "bleu", "chrf", "accuracy")."""
    if name == "wer":
        return word_error_rate(references, hypotheses)
    if name == "cer":
        return char_error_rate(references, hypotheses)
    if name == "bleu":
        return corpus_bleu(references, hypotheses, target_lang)
    if name == "chrf":
        return corpus_chrf(references, hypotheses)
    if name == "accuracy":
        return accuracy(references, hypotheses)
    raise ValueError(f"Unknown metric {name!r}: use one of {METRIC_ORDER}.")


# ------------------------------------------------------------------------------------- results format


_METRIC_KEYS = ("task", "source_lang", "target_lang", "name", "value", "num_examples")


def metric_entry(
    task: str, source_lang: str, target_lang: str, name: str, value: float, num_examples: int
) -> dict[str, Any]:
    """One item of the evaluation JSON's ``metrics`` list."""
    if task not in TASK_ORDER:
        raise ValueError(f"Unknown task {task!r}: use one of {TASK_ORDER}.")
    if name not in METRIC_ORDER:
        raise ValueError(f"Unknown metric {name!r}: use one of {METRIC_ORDER}.")
    return {
        "task": task,
        "source_lang": source_lang,
        "target_lang": target_lang,
        "name": name,
        "value": round(float(value), 4),
        "num_examples": int(num_examples),
    }


def score_predictions(predictions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-(task, source_lang, target_lang) metric entries of prediction records.

    Args:
        predictions: dicts with ``task`` ("asr", "ast", "mt"), ``source_lang``, ``target_lang``, ``reference``
            and ``hypothesis``.
    Returns:
        Metric entries (see the module docstring): WER and CER for ASR, BLEU and chrF for AST and MT.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in predictions:
        groups[(record["task"], record["source_lang"], record["target_lang"])].append(record)
    entries = []
    for (task, src, tgt), records in sorted(groups.items(), key=lambda item: _group_key(item[0])):
        refs, hyps = [r["reference"] for r in records], [r["hypothesis"] for r in records]
        for name in METRICS_BY_TASK[task]:
            entries.append(metric_entry(task, src, tgt, name, score(name, refs, hyps, tgt), len(records)))
    return entries


def _merge_by_group(*entry_lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metric entries of several lists ordered by (task, source, target), then metric."""
    entries = [entry for entries in entry_lists for entry in entries]
    return sorted(
        entries,
        key=lambda e: (*_group_key((e["task"], e["source_lang"], e["target_lang"])), METRIC_ORDER.index(e["name"])),
    )


def _group_key(key: tuple[str, str, str]) -> tuple[int, str, str]:
    task, src, tgt = key
    return TASK_ORDER.index(task), src, tgt


def sacrebleu_signatures(metrics: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """The sacreBLEU signatures of the BLEU and chrF entries of ``metrics``: ``{"bleu": [...], "chrf": [...]}``
    (several BLEU signatures where target languages use different tokenizers), only the metrics present."""
    found: dict[str, set[str]] = defaultdict(set)
    for entry in metrics:
        if entry["name"] == "bleu":
            found["bleu"].add(bleu_signature(entry["target_lang"]))
        elif entry["name"] == "chrf":
            found["chrf"].add(chrf_signature())
    return {name: sorted(found[name]) for name in ("bleu", "chrf") if found[name]}


def make_results(
    model: str, data: str, split: str, metrics: list[dict[str, Any]], predictions: list[dict] | None = None
) -> dict[str, Any]:
    """The evaluation JSON dict, with the sacreBLEU signatures of its BLEU and chrF scores when it has any;
    ``predictions`` only when given."""
    results: dict[str, Any] = {"model": str(model), "data": str(data), "split": str(split), "metrics": metrics}
    signatures = sacrebleu_signatures(metrics)
    if signatures:
        results["sacrebleu_signatures"] = signatures
    if predictions is not None:
        results["predictions"] = predictions
    return results


def averages(results: dict[str, Any], task: str) -> dict[str, float]:
    """Mean of each metric of `task` in an evaluation JSON dict over the languages (ASR) or over the xx-en and
    en-xx directions (AST, MT: keys like ``"bleu xx-en"``)."""
    groups: dict[str, list[float]] = {}
    for metric in results["metrics"]:
        if metric["task"] != task:
            continue
        direction = "" if task == "asr" else (" xx-en" if metric["target_lang"] == "en" else " en-xx")
        groups.setdefault(metric["name"] + direction, []).append(metric["value"])
    return {name: sum(values) / len(values) for name, values in groups.items()}


def row_label(task: str, source_lang: str, target_lang: str) -> str:
    """A table row's name: the language for ASR/classification, ``"src-tgt"`` for AST/MT."""
    return source_lang if task in ("asr", "classification", "lid") else f"{source_lang}-{target_lang}"


def results_tables(results: dict[str, Any]) -> dict[tuple[str, str], list[tuple[str, float, int]]]:
    """Per (task, metric): rows ``(language or direction, value, num_examples)`` sorted by name, then
    ``("average", unweighted mean over the rows, total examples)``."""
    tables: dict[tuple[str, str], list[tuple[str, float, int]]] = defaultdict(list)
    for entry in results["metrics"]:
        label = row_label(entry["task"], entry["source_lang"], entry["target_lang"])
        tables[(entry["task"], entry["name"])].append((label, float(entry["value"]), int(entry["num_examples"])))
    ordered = {}
    for key in sorted(tables, key=lambda k: (TASK_ORDER.index(k[0]), METRIC_ORDER.index(k[1]))):
        rows = sorted(tables[key])
        average = sum(value for _, value, _ in rows) / len(rows)
        ordered[key] = rows + [("average", average, sum(count for _, _, count in rows))]
    return ordered


def results_to_markdown(results: dict[str, Any]) -> str:
    """Markdown: a header naming model, data and split, then one table per task and metric."""
    lines = [f"# Evaluation of `{results['model']}` on `{results['data']}` ({results['split']})", ""]
    for (task, name), rows in results_tables(results).items():
        column = "Language" if task in ("asr", "classification", "lid") else "Direction"
        lines += [f"## {task.upper()} {name.upper() if name != 'chrf' else 'chrF'}", ""]
        lines += [f"| {column} | {name} | examples |", "|---|---:|---:|"]
        for label, value, count in rows:
            shown = f"**{label}**" if label == "average" else label
            lines.append(f"| {shown} | {_format(value)} | {count} |")
        lines.append("")
    if results.get("sacrebleu_signatures"):
        lines += [signature_line(results["sacrebleu_signatures"]), ""]
    if results.get("retrieval_candidates"):
        lines += [f"Retrieval: each clip against {results['retrieval_candidates']} candidate texts.", ""]
    if results.get("language_confusion"):
        lines += [
            "## Language identification: confusion (clips)",
            "",
            confusion_to_markdown(results["language_confusion"]),
            "",
        ]
    return "\n".join(lines)


def signature_line(signatures: dict[str, list[str]]) -> str:
    """Markdown: the sacreBLEU signatures of a results dict's ``sacrebleu_signatures``."""
    shown = {"bleu": "BLEU", "chrf": "chrF"}
    parts = [f"{shown[name]} `{signature}`" for name, values in signatures.items() for signature in values]
    return "sacreBLEU signatures: " + "; ".join(parts) + "."


def confusion_to_markdown(confusion: dict[str, dict[str, int]]) -> str:
    """A confusion table (rows: true language, columns: detected language, cells: clip counts)."""
    detected = sorted({code for row in confusion.values() for code in row})
    lines = ["| true \\ detected | " + " | ".join(detected) + " |", "|---|" + "---:|" * len(detected)]
    for true in sorted(confusion):
        lines.append(f"| {true} | " + " | ".join(str(confusion[true].get(code, 0)) for code in detected) + " |")
    return "\n".join(lines)


def _format(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


# ------------------------------------------------------------------------------------------ inference


def _task_of(example: dict[str, Any]) -> str:
    task = example["task"]
    if task not in GENERATION_TASKS:
        raise ValueError(f"example {example.get('id')!r}: task {task!r} has no generation metric.")
    return task


def _length(example: dict[str, Any]) -> int:
    """Sort key for batching: audio samples (speech) or characters of the source text (MT)."""
    audio = example.get("audio") or {}
    if audio.get("array") is not None:
        return len(audio["array"])
    return len(example.get("source_text") or "")


def _batches(examples: list[dict[str, Any]], batch_size: int) -> Iterable[list[dict[str, Any]]]:
    """Examples sorted by length (longest first, less padding), cut into batches."""
    ordered = sorted(examples, key=_length, reverse=True)
    for start in range(0, len(ordered), batch_size):
        yield ordered[start : start + batch_size]


def _model_inputs(
    processor: Any, batch: list[dict[str, Any]], speech: bool, device: torch.device, dtype: torch.dtype
) -> dict:
    """Encoder inputs (features in the model's dtype, or ids; + mask) and per-example source/target language ids."""
    src = [example["source_lang"] for example in batch]
    tgt = [target_language(example) for example in batch]
    if speech:
        audio = [example["audio"]["array"] for example in batch]
        inputs = processor(audio=audio, sampling_rate=batch[0]["audio"]["sampling_rate"], src_lang=src, tgt_lang=tgt)
    else:
        inputs = processor(text=[example["source_text"] for example in batch], src_lang=src, tgt_lang=tgt)
    return {
        key: value.to(device, dtype) if value.is_floating_point() else value.to(device)
        for key, value in inputs.items()
    }


DECODERS = ("model", "attention", "ctc")


@torch.no_grad()
def generate_predictions(
    model: Any,
    processor: Any,
    examples: Iterable[dict[str, Any]],
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    num_beams: int = 1,
    ctc_weight: float | None = None,
    decoder: str | None = None,
    lm_weight: float | None = None,
    translation: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Generate a hypothesis for every ASR/AST/MT example (data schema; audio decoded here when needed).

    Speech and text examples are batched separately, each sorted by length. ASR examples are decoded by
    ``decoder`` (:func:`asr_generate_options`): by default the model's own ASR decoder, as ``generate`` and
    ``pipeline()`` decode it (the one its fine-tuning run chose on dev); AST and MT examples always by the attention
    decoder: with ``translation`` (`generate` options such as ``num_beams``, ``no_repeat_ngram_size``,
    ``length_penalty``) where given, else with ``num_beams`` where it is not 1, else as the model's own translation
    decoding (``generation_config.translation_decoding``, chosen on dev by its fine-tuning run; greedy for a model
    without one). ``max_new_tokens=None`` leaves the length limit to
    the model's generation config (its ``max_target_positions``), which warns about every output cut there: a
    smaller fixed limit would silently cut long references' hypotheses and count the missing end as errors.
    Returns records with ``id``, ``task``, ``source_lang``, ``target_lang``, ``reference`` (the example's
    ``target_text``) and ``hypothesis``.
    """
    examples = list(examples)
    asr = [example for example in examples if _task_of(example) == "asr"]
    others = [example for example in examples if _task_of(example) != "asr"]
    attention = _with_length_limit(translation_generate_options(translation, num_beams), max_new_tokens)
    asr_options = asr_generate_options(decoder, ctc_weight, lm_weight, num_beams, max_new_tokens)
    return _decode(model, processor, asr, batch_size, asr_options) + _decode(
        model, processor, others, batch_size, attention
    )


def translation_generate_options(translation: dict[str, Any] | None, num_beams: int = 1) -> dict[str, Any]:
    """The `generate` options of AST/MT decoding (see :func:`generate_predictions`): ``translation`` where given,
    ``num_beams`` where it is not 1, else none (the model's own translation decoding)."""
    if translation is not None:
        return dict(translation)
    return {"num_beams": num_beams} if num_beams != 1 else {}


def asr_generate_options(
    decoder: str | None = None,
    ctc_weight: float | None = None,
    lm_weight: float | None = None,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """The `generate` options that decode ASR with ``decoder``:

    - ``"model"`` (the default, unless ``ctc_weight`` is given): the model's own decoder, left to `generate`'s
      defaults (the model's ``asr_decoding``: its CTC weight, the CTC language model's weight and beam), so the
      figures are those users get from ``generate`` and ``pipeline()``; ``num_beams`` > 1 and ``lm_weight`` override
      them.
    - ``"attention"``: the attention decoder, jointly scored with the CTC head at ``ctc_weight`` (default 0) and
      the CTC language model fused in at ``lm_weight``.
    - ``"ctc"``: the CTC head alone (greedy with ``num_beams=1``, prefix beam search otherwise, with the model's
      CTC language model at ``lm_weight``; None: the model's default weight and beam).
    """
    if decoder is None:
        decoder = "model" if ctc_weight is None else "attention"
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}.")
    if ctc_weight is not None and decoder != "attention":
        raise ValueError(
            f"ctc_weight={ctc_weight} chooses joint CTC/attention decoding, not the {decoder!r} decoder: pass "
            "decoder='attention' with it, or leave ctc_weight out."
        )
    if decoder == "model":
        options: dict[str, Any] = _with_length_limit({}, max_new_tokens)
        if num_beams != 1:
            options["num_beams"] = num_beams
        return options if lm_weight is None else {**options, "lm_weight": lm_weight}
    if decoder == "ctc":
        options = {"ctc_weight": 1.0, "num_beams": num_beams, "lm_weight": lm_weight}
        if lm_weight is None and num_beams == 1:
            options.pop("num_beams")  # the model's own CTC beam width when it has a language model
        return options
    options = {"num_beams": num_beams, "ctc_weight": ctc_weight or 0.0, "lm_weight": lm_weight}
    return _with_length_limit(options, max_new_tokens)


def _with_length_limit(options: dict[str, Any], max_new_tokens: int | None) -> dict[str, Any]:
    """``options`` with ``max_new_tokens`` where one is given (None: the model's generation config decides)."""
    return options if max_new_tokens is None else {**options, "max_new_tokens": max_new_tokens}


def _decode(
    model: Any, processor: Any, examples: list[dict[str, Any]], batch_size: int, options: dict[str, Any]
) -> list[dict[str, Any]]:
    """Records of :func:`generate_predictions` with one set of `generate` options."""
    records = []
    for batch, inputs in _eval_batches(model, processor, examples, batch_size):
        ids = model.generate(**inputs, **options, do_sample=False)
        texts = processor.batch_decode(ids, skip_special_tokens=True)
        records += [_record(example, text) for example, text in zip(batch, texts, strict=True)]
    return records


@torch.no_grad()
def target_nll(
    model: Any, processor: Any, examples: Iterable[dict[str, Any]], batch_size: int = 8
) -> list[dict[str, Any]]:
    """Teacher-forced cross-entropy of each example's ``target_text`` given its source, in eval mode.

    Returns one record per example: ``id``, ``task``, ``source_lang``, ``target_lang``, ``nll`` (summed nats over
    the target tokens, eos included) and ``tokens``.
    """
    device, records = next(model.parameters()).device, []
    for batch, inputs in _eval_batches(model, processor, examples, batch_size):
        labels = processor.encode_targets([example["target_text"] for example in batch]).to(device)
        rows = model(**inputs, labels=labels).row_losses.tolist()
        for example, (nll, tokens, _, _) in zip(batch, rows, strict=True):
            records.append({**_identity(example), "nll": nll, "tokens": int(tokens)})
    return records


@torch.no_grad()
def source_and_target_lengths(
    model: Any, processor: Any, examples: Iterable[dict[str, Any]], batch_size: int = 8
) -> list[dict[str, Any]]:
    """Each example's source length in encoder positions (its speech positions, or its text positions) and its
    ``target_text``'s length in tokens (eos not counted): the two sides of a length limit relative to the source.

    Returns one record per example: ``id``, ``task``, ``source_lang``, ``target_lang``, ``speech`` (bool),
    ``source_positions`` and ``target_tokens``.
    """
    from .generation_mu2slam import source_positions

    records = []
    for batch, inputs in _eval_batches(model, processor, examples, batch_size):
        encoder_inputs = {key: inputs.get(key) for key in ("input_features", "attention_mask", "input_ids")}
        encoded = model.model.encoder(**encoder_inputs, src_lang_ids=inputs.get("src_lang_ids"), return_dict=True)
        labels = processor.encode_targets([example["target_text"] for example in batch])
        targets = (labels != IGNORE_INDEX).sum(dim=1) - 1
        positions = source_positions(encoded)
        speech = inputs.get("input_features") is not None
        for example, position, target in zip(batch, positions.tolist(), targets.tolist(), strict=True):
            records.append({**_identity(example), "speech": speech, "source_positions": position,
                            "target_tokens": target})  # fmt: skip
    return records


def _eval_batches(
    model: Any, processor: Any, examples: Iterable[dict[str, Any]], batch_size: int
) -> Iterator[tuple[list[dict[str, Any]], dict]]:
    """(examples, model inputs) batches in eval mode: speech and text separately, each sorted by length.

    Audio is decoded here when needed; the model's training mode is restored at the end.
    """
    was_training = model.training
    model.eval()
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    examples = [decode_example(dict(example)) for example in examples]
    try:
        for speech in (True, False):
            group = [e for e in examples if (_task_of(e) != "mt") == speech]
            for batch in _batches(group, batch_size):
                yield batch, _model_inputs(processor, batch, speech, device, dtype)
    finally:
        model.train(was_training)


def audio_dependence(
    model: Any, processor: Any, examples: Sequence[dict[str, Any]], batch_size: int = 8
) -> dict[str, float]:
    """How much a speech model's predictions depend on the audio, beyond its language.

    The reference NLL (nats per token, as :func:`target_nll`) given each example's own audio, and given the audio of
    the next example of the same source language (rotated within each language). Equal values mean the model
    predicts the text from the language alone, as a language model; the gap is what it takes from the audio.

    Returns:
        ``{"own_audio": nll, "other_audio": nll, "gap": other - own}``.
    """
    speech = [example for example in examples if example["task"] in SPEECH_TEXT_TASKS]
    by_language: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for example in speech:
        by_language[example["source_lang"]].append(example)
    if not speech or any(len(rows) < 2 for rows in by_language.values()):
        raise ValueError("audio_dependence needs ASR/AST examples, at least 2 per source language.")
    rotated = [
        {**example, "audio": rows[(index + 1) % len(rows)]["audio"]}
        for rows in by_language.values()
        for index, example in enumerate(rows)
    ]

    def mean_nll(rows: list[dict[str, Any]]) -> float:
        records = target_nll(model, processor, rows, batch_size)
        return sum(r["nll"] for r in records) / sum(r["tokens"] for r in records)

    own, other = mean_nll([e for rows in by_language.values() for e in rows]), mean_nll(rotated)
    return {"own_audio": own, "other_audio": other, "gap": other - own}


def score_nll(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-(task, source_lang, target_lang) ``nll`` entries: summed nats / summed target tokens."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["task"], record["source_lang"], record["target_lang"])].append(record)
    return [
        metric_entry(*key, "nll", sum(r["nll"] for r in rows) / sum(r["tokens"] for r in rows), len(rows))
        for key, rows in sorted(groups.items(), key=lambda item: _group_key(item[0]))
    ]


def _identity(example: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": example["id"],
        "task": example["task"],
        "source_lang": example["source_lang"],
        "target_lang": target_language(example),
    }


def _record(example: dict[str, Any], hypothesis: str) -> dict[str, Any]:
    return {**_identity(example), "reference": example["target_text"], "hypothesis": hypothesis.strip()}


def evaluate_model(
    model: Any,
    processor: Any,
    examples: Iterable[dict[str, Any]],
    tasks: Sequence[str] = GENERATION_TASKS,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    num_beams: int = 1,
    ctc_weight: float | None = None,
    decoder: str | None = None,
    lm_weight: float | None = None,
    return_predictions: bool = False,
    with_loss: bool = False,
    model_name: str = "",
    data_name: str = "",
    split: str = "",
) -> dict[str, Any]:
    """Run generation over data-schema examples and score them per task and language (direction).

    ASR: speech -> transcript in the source language (WER, CER); AST: speech -> ``target_text`` in
    ``target_lang`` (BLEU, chrF); MT: ``source_text`` -> ``target_text`` (BLEU, chrF). Examples of other tasks
    (or not in ``tasks``) are skipped. Greedy decoding with ``num_beams=1``, beam search otherwise.
    ASR is decoded as ``generate`` and ``pipeline()`` decode the model (the decoder its fine-tuning run chose on
    dev) unless ``decoder`` / ``ctc_weight`` / ``lm_weight`` ask for another (:func:`asr_generate_options`).
    ``with_loss`` adds the teacher-forced ``nll`` of the references (:func:`target_nll`) per language/direction.

    Returns:
        The evaluation JSON dict (module docstring), with ``predictions`` when ``return_predictions``.
    """
    unknown = set(tasks) - set(GENERATION_TASKS)
    if unknown:
        raise ValueError(f"Unknown tasks {sorted(unknown)}: evaluate_model handles {GENERATION_TASKS}.")
    selected = [decode_example(dict(example)) for example in examples if example["task"] in tasks]  # once, for both
    if not selected:
        raise ValueError(f"No examples of the tasks {list(tasks)} to evaluate.")
    predictions = generate_predictions(
        model, processor, selected, batch_size, max_new_tokens, num_beams, ctc_weight, decoder, lm_weight
    )
    metrics = score_predictions(predictions)
    if with_loss:
        metrics = _merge_by_group(metrics, score_nll(target_nll(model, processor, selected, batch_size)))
    return make_results(model_name, data_name, split, metrics, predictions if return_predictions else None)


def evaluate_cascade(
    asr: tuple[Any, Any],
    translation: tuple[Any, Any],
    examples: Iterable[dict[str, Any]],
    batch_size: int = 8,
    model_name: str = "",
    data_name: str = "",
    split: str = "",
    return_predictions: bool = False,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Speech translation by a cascade, the baseline a direct AST model should beat: the ``asr`` (model,
    processor) transcribes each AST example with its own ASR decoder, and the ``translation`` (model, processor)
    translates the transcript as text (its own translation decoding). Scored as AST (BLEU, chrF) against each
    example's ``target_text``; the evaluation JSON dict of :func:`evaluate_model`, whose predictions also carry
    each ``transcript``. ``max_new_tokens``: both steps' length limit (None: each model's own)."""
    speech = [decode_example(dict(example)) for example in examples if example["task"] == "ast"]
    if not speech:
        raise ValueError("evaluate_cascade needs AST examples (speech with a translation).")
    as_asr = [{**example, "task": "asr", "target_lang": example["source_lang"]} for example in speech]
    transcripts = {r["id"]: r["hypothesis"] for r in generate_predictions(*asr, as_asr, batch_size, max_new_tokens)}
    as_mt = [
        {**_identity(example), "task": "mt", "audio": None, "source_text": transcripts[example["id"]],
         "target_text": example["target_text"]}
        for example in speech
    ]  # fmt: skip
    predictions = [
        {**record, "task": "ast", "transcript": transcripts[record["id"]]}
        for record in generate_predictions(*translation, as_mt, batch_size, max_new_tokens)
    ]
    metrics = score_predictions(predictions)
    return make_results(model_name, data_name, split, metrics, predictions if return_predictions else None)


@torch.no_grad()
def predict_languages(
    model: Any, processor: Any, examples: Iterable[dict[str, Any]], batch_size: int = 8
) -> list[dict[str, Any]]:
    """The language-identification head's answer for every ASR/AST example (audio decoded here when needed):
    records with ``id``, ``language`` (the true ``source_lang``), ``detected`` and ``probability`` (of the
    detected language)."""
    speech = [example for example in examples if example["task"] in ("asr", "ast")]
    records = []
    for batch, inputs in _eval_batches(model, processor, speech, batch_size):
        codes, probabilities = model.detect_language(**inputs)
        best = probabilities.max(-1).values.tolist()
        records += [
            {"id": e["id"], "language": e["source_lang"], "detected": code, "probability": round(p, 4)}
            for e, code, p in zip(batch, codes, best, strict=True)
        ]
    return records


def evaluate_language_id(
    model: Any,
    processor: Any,
    examples: Iterable[dict[str, Any]],
    batch_size: int = 8,
    return_predictions: bool = False,
    model_name: str = "",
    data_name: str = "",
    split: str = "",
) -> dict[str, Any]:
    """Spoken language identification of the speech examples: accuracy per true language (task ``lid``) and the
    confusion counts (``language_confusion``: true -> detected -> clips), in the evaluation JSON format."""
    records = predict_languages(model, processor, examples, batch_size)
    if not records:
        raise ValueError("No speech examples to identify the language of.")
    by_language: dict[str, list[dict[str, Any]]] = defaultdict(list)
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in records:
        by_language[record["language"]].append(record)
        confusion[record["language"]][record["detected"]] += 1
    metrics = [
        metric_entry(
            "lid",
            lang,
            lang,
            "accuracy",
            accuracy([r["language"] for r in rows], [r["detected"] for r in rows]),
            len(rows),
        )
        for lang, rows in sorted(by_language.items())
    ]
    results = make_results(model_name, data_name, split, metrics, records if return_predictions else None)
    results["language_confusion"] = {true: dict(sorted(row.items())) for true, row in sorted(confusion.items())}
    return results


# ------------------------------------------------------------------------------------------ retrieval


@torch.no_grad()
def speech_embeddings(
    model: Any, processor: Any, examples: Sequence[dict[str, Any]], batch_size: int = 16
) -> torch.Tensor:
    """(N, E) `Mu2SlamForRetrieval.encode_speech` embeddings of the examples' audio (asr/ast rows), in example order
    (the evaluation batches: decoded here when needed, sorted by length)."""
    indexed = [{**example, "_row": row} for row, example in enumerate(examples)]
    rows: dict[int, torch.Tensor] = {}
    for batch, inputs in _eval_batches(model, processor, indexed, batch_size):
        embeds = model.encode_speech(inputs["input_features"], inputs["attention_mask"], inputs["src_lang_ids"])
        rows.update(zip((example["_row"] for example in batch), embeds.float().cpu(), strict=True))
    return torch.stack([rows[row] for row in range(len(examples))])


@torch.no_grad()
def text_embeddings(
    model: Any, processor: Any, texts: Sequence[str], languages: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """(M, E) `Mu2SlamForRetrieval.encode_text` embeddings of the texts (each in its language), in order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    output = []
    try:
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            encoded = processor.tokenizer(chunk, padding=True, return_tensors="pt")
            embeds = model.encode_text(
                encoded["input_ids"].to(device),
                encoded["attention_mask"].to(device),
                list(languages[start : start + batch_size]),
            )
            output.append(embeds.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(output) if output else torch.zeros(0, model.config.retrieval_embedding_dim)


def recall_at_k(
    similarity: torch.Tensor, correct: torch.Tensor, ks: Sequence[int] = RETRIEVAL_KS
) -> dict[int, torch.Tensor]:
    """k -> (Q,) bool: whether a right candidate is among the k most similar (similarity and correct: (Q, C))."""
    ranked = similarity.argsort(dim=-1, descending=True)
    hits = correct.gather(1, ranked)
    return {k: hits[:, :k].any(-1) for k in ks}


def retrieval_records(
    model: Any,
    processor: Any,
    examples: Sequence[dict[str, Any]],
    distractors: Sequence[tuple[str, str]] = (),
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Per example: whether retrieval found its pair within each k, both ways.

    Speech -> text: the clip against every distinct (text, language) among the examples' target texts plus the
    ``distractors`` ((text, language) pairs, e.g. train sentences); a candidate is right when it is the example's
    target text (so Czech and Dutch clips of one English line share one right candidate). Text -> speech: the
    example's target text against every clip; right are the clips with that target text.
    """
    if not examples:
        raise ValueError("No (speech, text) examples to evaluate retrieval on.")
    targets = [(example["target_text"], target_language(example)) for example in examples]
    candidates = list(dict.fromkeys([*targets, *distractors]))
    index = {candidate: i for i, candidate in enumerate(candidates)}
    speech = speech_embeddings(model, processor, examples, batch_size)
    texts = text_embeddings(model, processor, [t for t, _ in candidates], [lang for _, lang in candidates])
    target_index = torch.tensor([index[target] for target in targets])
    s2t_correct = target_index.unsqueeze(1) == torch.arange(len(candidates)).unsqueeze(0)
    s2t = recall_at_k(speech @ texts.T, s2t_correct)
    query_texts = texts[target_index]
    t2s = recall_at_k(query_texts @ speech.T, target_index.unsqueeze(1) == target_index.unsqueeze(0))
    records = []
    for row, example in enumerate(examples):
        record = {
            "id": example.get("id"),
            "source_lang": example["source_lang"],
            "target_lang": target_language(example),
        }
        for k in RETRIEVAL_KS:
            record[f"s2t_r{k}"], record[f"t2s_r{k}"] = bool(s2t[k][row]), bool(t2s[k][row])
        records.append(record)
    return records


def evaluate_retrieval(
    model: Any,
    processor: Any,
    examples: Sequence[dict[str, Any]],
    distractors: Sequence[tuple[str, str]] = (),
    batch_size: int = 16,
    return_predictions: bool = False,
    model_name: str = "",
    data_name: str = "",
    split: str = "",
) -> dict[str, Any]:
    """Recall@1/5/10 (percent) of speech -> text and text -> speech retrieval (see `retrieval_records`) per
    (speech language, text language), in the evaluation JSON format; ``retrieval_candidates`` holds the size of
    the text candidate pool."""
    records = retrieval_records(model, processor, examples, distractors, batch_size)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["source_lang"], record["target_lang"])].append(record)
    metrics = [
        metric_entry("retrieval", src, tgt, name, 100.0 * sum(r[name] for r in rows) / len(rows), len(rows))
        for (src, tgt), rows in sorted(groups.items())
        for name in RETRIEVAL_METRICS
    ]
    results = make_results(model_name, data_name, split, metrics, records if return_predictions else None)
    targets = {(e["target_text"], target_language(e)) for e in examples}
    results["retrieval_candidates"] = len(targets | set(distractors))
    return results


# ------------------------------------------------------------------------------------------- files


def load_examples(
    data_dir: str | os.PathLike, split: str, tasks: Sequence[str] = GENERATION_TASKS, max_examples: int | None = None
) -> list[dict[str, Any]]:
    """Examples of ``tasks`` from ``<data_dir>/<split>.jsonl``; at most ``max_examples`` per task, taken round-robin
    over its languages or directions (file order within each), so that a subset covers every language."""
    kept: dict[str, list[dict[str, Any]]] = {task: [] for task in tasks}
    for example in load_manifest(data_dir, split):
        rows = kept.get(example["task"])
        if rows is not None:
            rows.append(example)
    if max_examples is not None:
        kept = {task: spread_over_languages(rows, max_examples) for task, rows in kept.items()}
    return [example for task in tasks for example in kept[task]]


def spread_over_languages(examples: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` examples taken round-robin over the (source, target) languages, in file order within each."""
    by_pair: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for example in examples:
        by_pair[f"{example['source_lang']}-{example.get('target_lang')}"].append(example)
    chosen, queues = [], [list(rows) for _, rows in sorted(by_pair.items())]
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def write_results(results: dict[str, Any], output: str | os.PathLike) -> tuple[str, str]:
    """Write the evaluation JSON to ``output`` and its Markdown beside it (``.md``); return both paths."""
    json_path = os.fspath(output)
    markdown_path = os.path.splitext(json_path)[0] + ".md"
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, ensure_ascii=False, indent=2)
        handle.write("\n")
    with open(markdown_path, "w", encoding="utf-8") as handle:
        handle.write(results_to_markdown(results))
    return json_path, markdown_path


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read an evaluation JSON written by :func:`write_results`, checked; return the dict of :func:`make_results`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not an evaluation JSON (the message names the file and what is wrong).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Results file {path!r} not found. Run `python training_scripts/evaluate.py` on the model first: it "
            "writes this JSON."
        )
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        metrics = [metric_entry(*(entry[key] for key in _METRIC_KEYS)) for entry in raw["metrics"]]
        results = make_results(raw["model"], raw["data"], raw["split"], metrics, raw.get("predictions"))
        results.pop("sacrebleu_signatures", None)  # the file's own, not this sacreBLEU's (older files have none)
        for key in OPTIONAL_RESULT_KEYS:
            if key in raw:
                results[key] = raw[key]
        return results
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"Results file {path!r} is not an evaluation JSON ({type(error).__name__}: {error}). Expected "
            '{"model", "data", "split", "metrics": [{"task", "source_lang", "target_lang", "name", "value", '
            '"num_examples"}]} as written by training_scripts/evaluate.py: evaluate the model again.'
        ) from error


__all__ = [
    "accuracy",
    "asr_generate_options",
    "averages",
    "bleu_signature",
    "bleu_tokenizer",
    "chrf_signature",
    "evaluate_cascade",
    "char_error_rate",
    "corpus_bleu",
    "corpus_chrf",
    "evaluate_model",
    "generate_predictions",
    "load_examples",
    "spread_over_languages",
    "make_results",
    "metric_entry",
    "normalize_text",
    "read_results",
    "results_tables",
    "results_to_markdown",
    "row_label",
    "sacrebleu_signatures",
    "score",
    "score_predictions",
    "signature_line",
    "word_error_rate",
    "write_results",
]
