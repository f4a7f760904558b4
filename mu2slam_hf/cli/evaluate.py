"""Evaluate a Mu2SLAM model on a corpus manifest: WER/CER (ASR), BLEU/chrF (AST, MT) per language or direction,
spoken language identification accuracy with its confusion table (``lid``, on the ASR clips; needs the head), or
speech-text retrieval Recall@1/5/10 (``retrieval``, a `Mu2SlamForRetrieval` folder: every ASR and AST clip against
the split's target texts, plus train-split texts up to ``--retrieval_candidates``).

Example::

    python training_scripts/evaluate.py --model runs/ft2 --data data/fillets --split test --tasks asr,ast,mt \\
        --max_examples 200 --output runs/ft2/eval_test.json
    python training_scripts/evaluate.py --model runs/retrieval --data data/synth --split test --tasks retrieval \\
        --retrieval_candidates 500

ASR is decoded as ``generate`` and ``pipeline()`` decode the model (the decoder its fine-tuning run chose on dev)
unless ``--decoder`` or ``--ctc_weight`` asks for another. Writes the evaluation JSON (format in
``mu2slam_hf.evaluation``) and a Markdown rendering next to it (``.md``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch

from .. import Mu2SlamForConditionalGeneration, Mu2SlamForRetrieval, Mu2SlamProcessor
from ..asr_decoding import AsrDecodingOptions
from ..data.validation import CorpusError, check_corpus
from ..evaluation import (
    GENERATION_TASKS,
    audio_dependence,
    evaluate_language_id,
    evaluate_model,
    evaluate_retrieval,
    load_examples,
    make_results,
    results_to_markdown,
    spread_over_languages,
    write_results,
)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="folder (or Hub id) with the model and its processor")
    parser.add_argument("--data", required=True, help="corpus folder holding <split>.jsonl")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--tasks",
        default=",".join(GENERATION_TASKS),
        help="comma-separated subset of asr,ast,mt,lid, or retrieval alone",
    )
    parser.add_argument(
        "--retrieval_pairs",
        default="asr",
        help="retrieval: the rows (asr, ast) whose (clip, target text) pairs are scored",
    )
    parser.add_argument(
        "--retrieval_candidates", type=positive_int, default=None,
        help="retrieval: add train-split target texts (not among the split's) until the pool has this many texts",
    )  # fmt: skip
    parser.add_argument("--max_examples", type=positive_int, default=None, help="at most this many examples per task")
    parser.add_argument("--output", default=None, help="JSON path (default <model>/eval_<split>.json)")
    parser.add_argument("--batch_size", type=positive_int, default=16)
    parser.add_argument(
        "--max_new_tokens", type=positive_int, default=None,
        help="length limit of attention decoding (default: the model's own, max_target_positions; it warns about "
        "every output cut there)",
    )  # fmt: skip
    parser.add_argument("--num_beams", type=positive_int, default=1, help="1: greedy decoding")
    parser.add_argument(
        "--ctc_weight", type=float, default=None,
        help="ASR: joint CTC/attention decoding with this CTC weight (0.3); implies --decoder attention",
    )  # fmt: skip
    parser.add_argument(
        "--decoder", choices=("model", "attention", "ctc"), default=None,
        help="ASR: model (the default) = the decoder the model's fine-tuning chose on dev, as generate() and "
        "pipeline() decode; attention = the decoder alone (joint with --ctc_weight); ctc = the CTC head alone "
        "(greedy, or a prefix beam search with --num_beams > 1; with the model's n-gram LM when it has one)",
    )  # fmt: skip
    parser.add_argument(
        "--lm_weight", type=float, default=None,
        help="ASR: weight of the model's CTC language model, with --decoder ctc (default: the model's; 0: without "
        "it) or fused into joint decoding with --ctc_weight between 0 and 1 (default 0)",
    )  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save_predictions", action="store_true", help="add every hypothesis to the JSON")
    parser.add_argument(
        "--with_loss", action="store_true", help="add the teacher-forced NLL of the references (nats per token)"
    )
    parser.add_argument(
        "--audio_dependence",
        action="store_true",
        help="add the reference NLL given each clip's own audio vs another clip of its language (ASR/AST)",
    )
    args = parser.parse_args(argv)
    if args.decoder == "model" and args.ctc_weight is not None:
        parser.error(
            "--ctc_weight chooses joint CTC/attention decoding, not the model's own decoder: pass --decoder "
            "attention with it, or leave both out to decode as the model does."
        )
    return args


def asr_decoding_options(args: argparse.Namespace) -> dict:
    """`evaluate_model`'s ASR options (`decoder`, `ctc_weight`, `lm_weight`); without `--decoder` or `--ctc_weight`
    the model's own decoder, as `generate` and `pipeline()` decode it, so the figures are those users get."""
    decoder = None if args.decoder == "model" else args.decoder
    return {"decoder": decoder, "ctc_weight": args.ctc_weight, "lm_weight": args.lm_weight}


def describe_asr_decoding(options: dict, generation_config: dict) -> str:
    """One line naming the ASR decoder `options` resolve to for this model (printed before decoding)."""
    if options["decoder"] is not None or options["ctc_weight"] is not None:
        return str({key: value for key, value in options.items() if value is not None})
    decoder = AsrDecodingOptions.from_generation_config(generation_config).describe(options["lm_weight"])
    return f"the model's own, {decoder} (generation_config.json)"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tasks = tuple(task.strip() for task in args.tasks.split(",") if task.strip())
    unknown = sorted(set(tasks) - {*GENERATION_TASKS, "lid", "retrieval"})
    if unknown:
        raise SystemExit(f"Unknown task(s) {unknown}: choose from {','.join(GENERATION_TASKS)},lid,retrieval.")
    if "retrieval" in tasks:
        if len(tasks) > 1:
            raise SystemExit(
                "--tasks retrieval goes alone: a retrieval model neither generates nor identifies languages."
            )
        return evaluate_retrieval_main(args)
    generation = tuple(task for task in tasks if task != "lid")
    read = tuple(dict.fromkeys([*generation, *(["asr"] if "lid" in tasks else [])]))  # lid reads the ASR clips
    processor = Mu2SlamProcessor.from_pretrained(args.model)
    try:  # every problem of the split at once, before anything is decoded
        check_corpus(args.data, {args.split: read}, processor.languages)
    except CorpusError as error:
        raise SystemExit(f"CorpusError: {error}") from None
    model = Mu2SlamForConditionalGeneration.from_pretrained(args.model).to(args.device).eval()
    if "lid" in tasks and model.language_id_head is None:
        raise SystemExit(f"{args.model} has no language-identification head: train one (recipe language-id.yaml).")
    examples = load_examples(args.data, args.split, read, args.max_examples)
    if not examples:
        raise SystemExit(f"No {','.join(read)} examples in {args.data}/{args.split}.jsonl.")
    names = {"model_name": str(args.model), "data_name": str(args.data), "split": args.split}
    asr_decoding = asr_decoding_options(args)
    if "asr" in generation:
        print(f"ASR decoding: {describe_asr_decoding(asr_decoding, model.generation_config.to_dict())}")
    results = evaluate_model(
        model,
        processor,
        examples,
        tasks=generation,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        **asr_decoding,
        return_predictions=args.save_predictions,
        with_loss=args.with_loss,
        **names,
    ) if generation else make_results(names["model_name"], names["data_name"], args.split, [])  # fmt: skip
    if "lid" in tasks:
        speech = [example for example in examples if example["task"] == "asr"]
        identified = evaluate_language_id(model, processor, speech, args.batch_size, args.save_predictions, **names)
        results["metrics"] += identified["metrics"]
        results["language_confusion"] = identified["language_confusion"]
        if args.save_predictions:
            results["language_predictions"] = identified["predictions"]
    if args.audio_dependence:
        results["audio_dependence"] = audio_dependence(model, processor, examples, args.batch_size)
        print("audio dependence (nats per token):", results["audio_dependence"])
    output = args.output or os.path.join(args.model, f"eval_{args.split}.json")
    json_path, markdown_path = write_results(results, output)
    print(results_to_markdown(results))
    print(f"Wrote {json_path} and {markdown_path}.")
    return 0


def evaluate_retrieval_main(args: argparse.Namespace) -> int:
    """``--tasks retrieval``: Recall@k of a `Mu2SlamForRetrieval` folder, written like the other evaluations."""
    pair_tasks = tuple(task.strip() for task in args.retrieval_pairs.split(",") if task.strip())
    if not set(pair_tasks) <= {"asr", "ast"}:
        raise SystemExit(f"--retrieval_pairs: (speech, text) pairs come from asr and ast rows, not {pair_tasks}.")
    processor = Mu2SlamProcessor.from_pretrained(args.model)
    try:
        check_corpus(args.data, {args.split: pair_tasks}, processor.languages)
    except CorpusError as error:
        raise SystemExit(f"CorpusError: {error}") from None
    model = Mu2SlamForRetrieval.from_pretrained(args.model).to(args.device).eval()
    examples = load_examples(args.data, args.split, pair_tasks, args.max_examples)
    if not examples:
        raise SystemExit(f"No {','.join(pair_tasks)} examples in {args.data}/{args.split}.jsonl.")
    distractors = []
    if args.retrieval_candidates:
        distractors = train_distractors(args.data, pair_tasks, examples, args.retrieval_candidates)
    results = evaluate_retrieval(
        model, processor, examples, distractors, args.batch_size, args.save_predictions,
        model_name=str(args.model), data_name=str(args.data), split=args.split,
    )  # fmt: skip
    output = args.output or os.path.join(args.model, f"eval_{args.split}_retrieval.json")
    json_path, markdown_path = write_results(results, output)
    print(results_to_markdown(results))
    print(f"Wrote {json_path} and {markdown_path}.")
    return 0


def train_distractors(data: str, tasks: Sequence[str], examples: list[dict], pool_size: int) -> list[tuple[str, str]]:
    """Train-split (target text, language) pairs that are not among the examples' targets, in file order spread over
    the target languages, enough to make a candidate pool of ``pool_size`` texts."""
    targets = {(e["target_text"], e["target_lang"]) for e in examples}
    if pool_size < len(targets):
        raise SystemExit(
            f"--retrieval_candidates {pool_size} is below the {len(targets)} texts the split already has."
        )
    train = [e for e in load_examples(data, "train", tasks) if (e["target_text"], e["target_lang"]) not in targets]
    unique = list({(e["target_text"], e["target_lang"]): e for e in train}.values())
    chosen = spread_over_languages(unique, pool_size - len(targets))
    if len(chosen) < pool_size - len(targets):
        raise SystemExit(f"--retrieval_candidates {pool_size}: the train split has only {len(chosen)} other texts.")
    return [(e["target_text"], e["target_lang"]) for e in chosen]
