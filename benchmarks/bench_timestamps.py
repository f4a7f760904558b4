"""Word timestamps and long files of a trained model, measured on synthetic speech; printed, never asserted.

Timestamps: each clip is 2-6 words of a test sentence, every word synthesized alone by espeak-ng (one voice per
clip), trimmed to its audible part and joined to the others with random silences of 0.2-0.8 s, so the true word
boundaries are known. The true transcript is aligned with the CTC head (`ctc_word_timestamps(..., texts=)`), and
the pipeline's own words (`return_timestamps="word"`) are scored on the clips where it wrote as many words.

Long form (`--long_form_s`): test utterances concatenated into one file with 0.5 s pauses, transcribed by the
pipeline in overlapping chunks, against the same utterances transcribed one by one (WER of each against the
references), and the words repeated at chunk borders.

usage: python benchmarks/bench_timestamps.py --model runs/ft2 --manifest data/synth/test.jsonl --lang en
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import pipeline

from mu2slam_hf import Mu2SlamForConditionalGeneration, Mu2SlamProcessor, ctc_word_timestamps
from mu2slam_hf.data.synthetic import synthesize, voice_settings
from mu2slam_hf.evaluation import word_error_rate

RATE = 16000


def audible(audio: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > 0.05 * np.abs(audio).max())
    return audio[loud[0] : loud[-1] + 1]


def word_clip(words: list[str], lang: str, key: str, rng) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The words said one by one with known silences between them, and each word's true (start, end)."""
    settings = voice_settings(0, key, lang)
    parts, truth, samples = [], [], 0
    for word in words:
        gap, audio = int(rng.uniform(0.2, 0.8) * RATE), audible(synthesize(word, settings))
        parts += [np.zeros(gap, np.float32), audio]
        truth.append(((samples + gap) / RATE, (samples + gap + len(audio)) / RATE))
        samples += gap + len(audio)
    return np.concatenate([*parts, np.zeros(int(0.3 * RATE), np.float32)]), truth


def errors(words: list[dict], truth: list[tuple[float, float]]) -> np.ndarray:
    return np.abs(np.array([word["timestamp"] for word in words]) - np.array(truth)).reshape(-1)


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: no clip to score"
    values = np.array(values) * 1000
    return (f"{name}: {len(values)} boundaries, median |error| {np.median(values):.0f} ms, "
            f"within 100 ms {np.mean(values <= 100) * 100:.0f}%, p90 {np.percentile(values, 90):.0f} ms")  # fmt: skip


def timestamps(args, model, processor, asr, sentences: list[str]) -> None:
    rng = np.random.default_rng(0)
    forced, own = [], []
    for index in range(args.clips):
        words = re.sub(r"[^\w' ]", " ", sentences[index % len(sentences)]).split()[:6]
        if len(words) < 2:
            continue
        clip, truth = word_clip(words, args.lang, f"timestamps{index}", rng)
        (aligned,) = ctc_word_timestamps(model, processor, [clip], args.lang, texts=[" ".join(words)])
        forced += errors(aligned, truth).tolist()
        out = asr(clip, return_timestamps="word", generate_kwargs={"src_lang": args.lang, **args.generate})
        if len(out["chunks"]) == len(words):
            own += errors(out["chunks"], truth).tolist()
    print(summary("forced alignment of the true words", forced))
    print(summary("the pipeline's own words (clips with the right word count)", own))


def plain_words(text: str) -> list[str]:
    return re.sub(r"[^\w' ]", " ", text.lower()).split()


def border_repeats(words: list[dict], seconds: float, chunk_length_s: float, reference: str) -> int:
    """Word chunks said twice in a row within a second of a chunk border, where the reference does not say that
    word twice in a row itself (Czech "co se se mnou děje" is a sentence, not a merging error)."""
    borders = np.arange(1, seconds / chunk_length_s + 1) * chunk_length_s
    ref = plain_words(reference)
    doubled_in_reference = {a for a, b in zip(ref, ref[1:], strict=False) if a == b}
    return sum(
        a["text"] == b["text"]
        and not set(plain_words(a["text"])) <= doubled_in_reference
        and any(a["timestamp"][0] - 1 <= border <= b["timestamp"][1] + 1 for border in borders)
        for a, b in zip(words, words[1:], strict=False)
    )


def long_form(args, asr, examples: list[dict], folder: Path) -> None:
    clips, references, total = [], [], 0.0
    for example in examples:
        audio, rate = sf.read(folder / example["audio"]["path"], dtype="float32")
        assert rate == RATE, rate
        clips.append(audio)
        references.append(example["source_text"])
        total += len(audio) / RATE + 0.5
        if total >= args.long_form_s:
            break
    pause = np.zeros(int(0.5 * RATE), np.float32)
    long = np.concatenate([part for clip in clips for part in (clip, pause)])
    options = {"generate_kwargs": {"src_lang": args.lang, **args.generate}}
    one_by_one = [out["text"] for out in asr(clips, batch_size=8, **options)]
    chunks = {"chunk_length_s": args.chunk_length_s, "stride_length_s": args.stride_length_s}
    if args.pause_s is not None:
        chunks["pause_s"] = args.pause_s
    chunked = asr(long, return_timestamps="word", **chunks, **options)
    reference = " ".join(references)
    words = [chunk["text"] for chunk in chunked["chunks"]]
    repeats = border_repeats(chunked["chunks"], len(long) / RATE, args.chunk_length_s, reference)
    print(f"long form: {len(long) / RATE:.0f} s file of {len(clips)} utterances, {len(words)} words; "
          f"WER one by one {word_error_rate([reference], [' '.join(one_by_one)]):.1f}, "
          f"chunked ({args.chunk_length_s} s chunks, stride {args.stride_length_s}) {word_error_rate([reference], [chunked['text']]):.1f}; "
          f"same word twice in a row near a chunk border (not so in the reference): {repeats}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved model + processor folder")
    parser.add_argument("--manifest", required=True, help="a test manifest (.jsonl) of the synthetic corpus")
    parser.add_argument("--lang", default="en")
    parser.add_argument("--clips", type=int, default=40, help="word clips for the timestamp figures")
    parser.add_argument("--long_form_s", type=float, default=0.0, help="length of the long file (0: skip)")
    parser.add_argument("--chunk_length_s", type=float, default=20.0)
    parser.add_argument("--stride_length_s", type=float, default=None, help="default: a sixth of the chunk")
    parser.add_argument("--ctc_weight", type=float, default=None, help="decoding (default: the model's)")
    parser.add_argument("--lm_weight", type=float, default=None, help="CTC decoding: its n-gram LM's weight (0: off)")
    parser.add_argument(
        "--pause_s", type=float, default=None, help="long form: the shortest pause cut at (default: the pipeline's)"
    )
    args = parser.parse_args()
    args.generate = {} if args.ctc_weight is None else {"ctc_weight": args.ctc_weight}
    if args.lm_weight is not None:
        args.generate["lm_weight"] = args.lm_weight
    torch.set_num_threads(2)
    model = Mu2SlamForConditionalGeneration.from_pretrained(args.model).eval()
    processor = Mu2SlamProcessor.from_pretrained(args.model)
    asr = pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
    )
    lines = [json.loads(line) for line in Path(args.manifest).read_text().splitlines() if line.strip()]
    examples = [line for line in lines if line["task"] == "asr" and line["source_lang"] == args.lang]
    timestamps(args, model, processor, asr, [example["source_text"] for example in examples])
    if args.long_form_s:
        long_form(args, asr, examples, Path(args.manifest).parent)


if __name__ == "__main__":
    main()
