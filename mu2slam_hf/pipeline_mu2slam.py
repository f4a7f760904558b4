"""The ASR pipeline of Mu2SLAM models: word timestamps from the CTC head, and long files in overlapping chunks.

transformers' `AutomaticSpeechRecognitionPipeline` gives non-Whisper seq2seq models no timestamps and concatenates
the outputs of overlapping chunks (repeating the words of the overlaps). `Mu2SlamSpeechRecognitionPipeline`
subclasses it and changes what it does for Mu2SLAM models only; any other model runs exactly as in the parent.
`register_asr_pipeline` (run by `import mu2slam_hf`, and by a saved folder's remote code) makes it the class that
`pipeline("automatic-speech-recognition", ...)` builds.

Transcription (target language = source language) of a long file, in two passes. The chunks only find the pauses:
the CTC head's frames of each chunk outside its strides are joined (the kept parts of successive chunks tile the
file), and every run of at least `pause_s` (a call option, `PAUSE_S` by default) of blank frames is a pause
(`pause_segments`). The stretches between pauses (sentences, as the models were trained on) are then transcribed one
by one, whatever the decoder (greedy, beam, joint CTC/attention, the CTC head with its LM), from the file's
features. Decoded inside a chunk, next to the end of one sentence and the start of another, speech is transcribed
worse than the same sentences decoded one by one; stretch by stretch it comes close to them (docs/results.md).
A transcript is aligned to its CTC log-probabilities (`Mu2SlamForConditionalGeneration.ctc_align`, Viterbi), which
gives every word its frames, hence its seconds (`FrameClock`). A stretch longer than the chunk length is cut in its longest pause between words.
Translation has no pauses to cut on: its chunk outputs are merged on their longest common token run.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import soundfile
import torch
from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline
from transformers.utils import logging

from .ctc_decoding import FrameClock, pause_segments, word_spans
from .feature_extraction_mu2slam import read_audio
from .vocabulary import SAMPLING_RATE, language_indices

logger = logging.get_logger(__name__)

TASK = "automatic-speech-recognition"
TIMESTAMP_KINDS = ("word",)
# Keys of a chunk's model output that are this pipeline's own; any other key came with the input and is returned.
OUTPUT_KEYS = (
    "tokens", "token_frames", "feature_frames", "stride", "is_last", "logits", "token_timestamps", "language",
    "ctc_log_probs", "ctc_frames", "src_lang_ids", "chunk_features",
)  # fmt: skip
# A run of blank frames of the CTC head at least this long is a pause between two stretches of a long file that are
# transcribed on their own: the pauses between sentences, not the shorter ones between words. The head counts as
# blank where it gives blank at least PAUSE_BLANK_PROBABILITY. Recordings whose sentences are parted by longer pauses
# than the pauses inside them can raise it per call (`pause_s`): some voices pause inside a sentence for longer than
# PAUSE_S, and cuts there cost words (docs/results.md).
PAUSE_S, PAUSE_BLANK_PROBABILITY = 0.4, 0.9
SEGMENT_BATCH_SIZE = 8  # stretches transcribed together
# An input longer than LONG_INPUT_S without `chunk_length_s` is cut into chunks of LONG_INPUT_CHUNK_S: decoded as one
# input, a long file loses the pauses' sentence-by-sentence decoding (a much higher WER than in chunks;
# docs/results.md), and the attention decoder would stop at its
# `max_target_positions` tokens, cutting the transcript short without a word.
LONG_INPUT_S, LONG_INPUT_CHUNK_S = 30.0, 8.0


def timed_words(
    alignment: list[tuple[int, int, int]], tokenizer: Any, clock: FrameClock, duration_s: float | None = None
) -> list[dict[str, Any]]:
    """Words of an aligned transcript with their seconds: `[{"text": word, "timestamp": (start_s, end_s)}, ...]`.

    Args:
        alignment: `(token, start frame, end frame)` per token (`model.ctc_align`).
        tokenizer: the model's text tokenizer (its `▁` pieces mark word starts and spaces).
        clock: the model's `FrameClock`.
        duration_s: the clip's length; times are kept inside it.
    """
    tokens = [token for token, _, _ in alignment]
    pieces = tokenizer.convert_ids_to_tokens(tokens)
    words = []
    for members, start, end in word_spans(pieces, [(start, end) for _, start, end in alignment]):
        text = tokenizer.decode([tokens[index] for index in members], skip_special_tokens=True).strip()
        words.append({"text": text, "timestamp": clock.seconds(start, end, duration_s)})
    return words


def feature_frames(features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B,) real feature frames of a (B, T, F) batch."""
    return mask.sum(-1) if mask is not None else torch.full((len(features),), features.shape[1])


def merge_on_longest_common_run(sequences: list[list[int]], min_run: int = 2) -> list[int]:
    """Token sequences of overlapping chunks merged into one: each next sequence joins the merged one at their
    longest common run of tokens (searched in the merged tail as long as the next sequence); sequences sharing no
    run of `min_run` tokens are concatenated."""
    merged = list(sequences[0]) if sequences else []
    for sequence in sequences[1:]:
        tail_start = max(0, len(merged) - len(sequence))
        tail = merged[tail_start:]
        best = (0, 0, 0)  # run length, end in tail, end in sequence
        previous = [0] * (len(sequence) + 1)
        for i, token in enumerate(tail, start=1):
            current = [0] * (len(sequence) + 1)
            for j, other in enumerate(sequence, start=1):
                if token == other:
                    current[j] = previous[j - 1] + 1
                    best = max(best, (current[j], i, j))
            previous = current
        run, tail_end, sequence_end = best
        if run >= min_run:
            merged = merged[: tail_start + tail_end] + list(sequence[sequence_end:])
        else:
            merged += list(sequence)
    return merged


class Mu2SlamSpeechRecognitionPipeline(AutomaticSpeechRecognitionPipeline):
    """`AutomaticSpeechRecognitionPipeline` with word timestamps (`return_timestamps="word"`) and overlapping chunks
    (`chunk_length_s`, `stride_length_s`) for Mu2SLAM models; other models run as in the parent class.

    Returns `{"text": ...}`, plus `"chunks": [{"text": word, "timestamp": (start_s, end_s)}, ...]` with
    `return_timestamps="word"` (transcription only: the CTC head transcribes, it cannot time a translation), and
    `"language"` (the source language's code) with `return_language=True`. Without `src_lang` in `generate_kwargs`,
    a model with a language-identification head detects it (each chunk on its own); a clip it cannot identify with
    `language_detection_threshold` is a ValueError. `pause_s` (seconds, default `PAUSE_S`): the shortest run of the
    CTC head's blanks at which a long file is cut into the stretches transcribed one by one.
    """

    def __init__(self, model, *args, **kwargs):
        # Before the parent's __init__, which already sanitizes the call parameters.
        self.is_mu2slam = getattr(model.config, "model_type", None) == "mu2slam"
        super().__init__(model, *args, **kwargs)

    def _sanitize_parameters(
        self, ignore_warning=None, return_timestamps=None, return_language=None, pause_s=None, **kwargs
    ):
        if not self.is_mu2slam:
            if pause_s is not None:
                raise ValueError("pause_s is an option of Mu2SLAM models' long-file transcription only.")
            return super()._sanitize_parameters(
                ignore_warning=ignore_warning, return_timestamps=return_timestamps, return_language=return_language,
                **kwargs,
            )  # fmt: skip
        if return_timestamps not in (None, False, *TIMESTAMP_KINDS):
            raise ValueError(
                f"return_timestamps={return_timestamps!r} is not supported by Mu2SLAM models: use "
                f"{' or '.join(repr(kind) for kind in TIMESTAMP_KINDS)} (word timestamps from the CTC head), or "
                "leave it unset."
            )
        # Overlapping chunks are merged correctly here: the parent's "experimental" warning does not apply.
        preprocess, forward, postprocess = super()._sanitize_parameters(ignore_warning=True, **kwargs)
        if return_timestamps:
            forward["return_timestamps"] = postprocess["return_timestamps"] = return_timestamps
        if return_language is not None:
            postprocess["return_language"] = return_language
        postprocess["generate_kwargs"] = {k: v for k, v in forward.items() if k != "return_timestamps"}
        postprocess["chunk_length_s"] = kwargs.get("chunk_length_s")
        if pause_s is not None:
            if isinstance(pause_s, bool) or not isinstance(pause_s, (int, float)) or not pause_s > 0:
                raise ValueError(
                    f"pause_s={pause_s!r}: give the shortest pause to cut a long file at, in seconds (> 0)."
                )
            postprocess["pause_s"] = float(pause_s)
        return preprocess, forward, postprocess

    @property
    def _align_to(self) -> int:
        """Samples per encoder frame for Mu2SLAM models: chunk lengths and strides are rounded to them, so every
        chunk starts on the file's grid of feature and encoder frames and the frames of successive chunks join."""
        if not self.is_mu2slam:
            return super()._align_to
        return self.feature_extractor.hop_length * self.model.config.frontend_stride**2

    def preprocess(self, inputs, chunk_length_s=0, stride_length_s=None):
        if self.is_mu2slam:
            inputs = self._read_audio(inputs)
        if self.is_mu2slam and not chunk_length_s:
            if isinstance(inputs, np.ndarray) and len(inputs) > LONG_INPUT_S * self.feature_extractor.sampling_rate:
                seconds = len(inputs) / self.feature_extractor.sampling_rate
                logger.info(
                    f"A {seconds:.0f} s input without chunk_length_s: transcribed in {LONG_INPUT_CHUNK_S:g} s chunks "
                    "(pass chunk_length_s to choose)."
                )
                chunk_length_s = LONG_INPUT_CHUNK_S
        yield from super().preprocess(inputs, chunk_length_s=chunk_length_s, stride_length_s=stride_length_s)

    def _read_audio(self, inputs: Any) -> Any:
        """A local file or encoded bytes as a (N,) float32 mono array at the feature extractor's rate
        (:func:`read_audio`: no FFmpeg needed for WAV, FLAC, OGG or MP3); other formats (AAC, M4A, ...) go to FFmpeg
        as in the parent class. Anything else as it is."""
        local_file = isinstance(inputs, str) and not inputs.startswith(("http://", "https://"))
        if not (local_file or isinstance(inputs, bytes)):
            return inputs
        try:
            return read_audio(inputs, self.feature_extractor.sampling_rate)
        except soundfile.SoundFileError:
            from transformers.pipelines.audio_utils import ffmpeg_read

            if local_file:
                with open(inputs, "rb") as handle:
                    inputs = handle.read()
            return ffmpeg_read(inputs, self.feature_extractor.sampling_rate)

    def _forward(self, model_inputs, return_timestamps=False, **generate_kwargs):
        if not self.is_mu2slam:
            return super()._forward(model_inputs, return_timestamps=return_timestamps, **generate_kwargs)
        stride = model_inputs.pop("stride", None)
        features, mask = model_inputs["input_features"], model_inputs.get("attention_mask")
        generate_kwargs, spoken = self._with_source_language(features, mask, generate_kwargs)
        transcribing = self._transcribes({**getattr(self, "_generate_kwargs", {}), **generate_kwargs}, len(features))
        if return_timestamps and not transcribing:
            raise ValueError(
                "Word timestamps come from the CTC head, which transcribes the audio: they exist for speech "
                "recognition only (tgt_lang == src_lang), not for translation."
            )
        if stride is not None and transcribing:
            return self._pause_finding_pass(model_inputs, stride, spoken)
        aligning = transcribing and bool(return_timestamps or stride is not None)
        languages = {key: generate_kwargs[key] for key in ("src_lang", "src_lang_ids") if key in generate_kwargs}
        encoder_outputs = None
        if aligning:  # one encoder pass for both decoding and alignment
            encoder_outputs = self.model._encode_speech(
                features, mask, languages.get("src_lang"), languages.get("src_lang_ids")
            )
            generate_kwargs = {**generate_kwargs, "encoder_outputs": encoder_outputs}
        out = super()._forward(model_inputs, **generate_kwargs)
        out["language"] = spoken
        if stride is not None:
            out["stride"] = stride
        if aligning:
            out["tokens"], out["token_frames"] = self._align(features, mask, out["tokens"], languages, encoder_outputs)
            out["feature_frames"] = feature_frames(features, mask)
        return out

    def _pause_finding_pass(self, model_inputs: dict, stride, spoken: list[str]) -> dict[str, Any]:
        """A chunk of a long file to transcribe: its CTC log-probabilities `(B, S, V)` with their lengths `(B,)`, its
        features `(B, T, F)` and language ids `(B,)`, which postprocess joins with the other chunks' to find the
        pauses and transcribe the stretches between them."""
        features, mask = model_inputs.pop("input_features"), model_inputs.pop("attention_mask", None)
        model_inputs.pop("num_frames", None)
        is_last = model_inputs.pop("is_last")
        ids = torch.tensor([self.model.config.languages.index(code) for code in spoken], device=features.device)
        log_probs, lengths = self.model.ctc_log_probs(self.model._encode_speech(features, mask, None, ids))
        return {
            "is_last": is_last, "ctc_log_probs": log_probs, "ctc_frames": lengths, "chunk_features": features,
            "feature_frames": feature_frames(features, mask), "src_lang_ids": ids, "stride": stride,
            "language": spoken, **model_inputs,
        }  # fmt: skip

    def _with_source_language(self, features, mask, generate_kwargs: dict) -> tuple[dict, list[str]]:
        """`generate_kwargs` with the clips' source language ids (detected by the model's language-identification
        head when neither `src_lang` nor `src_lang_ids` is given), and each clip's language code."""
        languages = self.model.config.languages
        given = generate_kwargs.get("src_lang_ids", generate_kwargs.get("src_lang"))
        if given is None and len(languages) == 1:
            given = languages[0]
        if given is not None:
            return generate_kwargs, [languages[i] for i in self._language_ids(given, len(features))]
        threshold = generate_kwargs.pop("language_detection_threshold", None)
        ids = self.model._detected_language_ids(features, mask, threshold)
        return {**generate_kwargs, "src_lang_ids": ids}, [languages[i] for i in ids.tolist()]

    def _transcribes(self, generate_kwargs: dict, batch: int) -> bool:
        """Whether `generate` transcribes (no target language, or the source language) rather than translates."""
        target = generate_kwargs.get("tgt_lang_ids", generate_kwargs.get("tgt_lang"))
        if target is None:
            return True
        source = generate_kwargs.get("src_lang_ids", generate_kwargs.get("src_lang"))
        return source is not None and self._language_ids(source, batch) == self._language_ids(target, batch)

    def _language_ids(self, languages: Any, batch: int) -> list[int]:
        if isinstance(languages, (str, list, tuple)):
            return language_indices(self.model.config.languages, languages, batch)
        return torch.as_tensor(languages).reshape(-1).expand(batch).tolist()

    def _align(
        self, features: torch.Tensor, mask: torch.Tensor | None, tokens: torch.Tensor, languages: dict, encoder_outputs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The transcript's text tokens `(B, L)` (pad-filled) and each token's frames `(B, L, 2)` (-1 on padding)."""
        try:
            alignments = self.model.ctc_align(features, mask, labels=tokens, encoder_outputs=encoder_outputs)
        except ValueError:  # a transcript longer than its clip's frames: align the rows one by one
            rows = range(len(features))
            alignments = [self._align_row(features[row : row + 1], mask, tokens, row, languages) for row in rows]
        width = max([1, *(len(alignment) for alignment in alignments)])
        ids = torch.full((len(alignments), width), self.model.config.pad_token_id, dtype=torch.long)
        frames = torch.full((len(alignments), width, 2), -1, dtype=torch.long)
        for row, alignment in enumerate(alignments):
            if alignment:
                ids[row, : len(alignment)] = torch.tensor([token for token, _, _ in alignment])
                frames[row, : len(alignment)] = torch.tensor([[start, end] for _, start, end in alignment])
        return ids, frames

    def _align_row(self, features, mask, tokens, row: int, languages: dict) -> list[tuple[int, int, int]]:
        """One row's alignment; when its transcript cannot fit the frames, the CTC head's own transcript."""
        row_mask = None if mask is None else mask[row : row + 1]
        source = languages.get("src_lang_ids", languages.get("src_lang"))
        ids = None if source is None else self._language_ids(source, len(tokens))[row : row + 1]
        ids = None if ids is None else torch.tensor(ids, device=features.device)
        try:
            return self.model.ctc_align(features, row_mask, src_lang_ids=ids, labels=tokens[row : row + 1])[0]
        except ValueError as error:
            logger.warning(f"{error} Timing the CTC head's own transcript of this clip instead of the decoder's.")
            return self.model.ctc_align(features, row_mask, src_lang_ids=ids)[0]

    def postprocess(
        self,
        model_outputs,
        decoder_kwargs=None,
        return_timestamps=None,
        return_language=None,
        generate_kwargs=None,
        chunk_length_s=None,
        pause_s=PAUSE_S,
    ):
        if not self.is_mu2slam:
            return super().postprocess(model_outputs, decoder_kwargs, return_timestamps, return_language)
        if "ctc_log_probs" in model_outputs[0]:
            with torch.inference_mode():
                result = self._transcribe_between_pauses(
                    model_outputs, return_timestamps, generate_kwargs or {}, chunk_length_s, pause_s
                )
        else:
            result = self._text_and_words(model_outputs, return_timestamps)
        if return_language:
            # A long file's chunks are identified one by one; the file gets the language most of them were given.
            # Unbatched outputs carry one code, a batch of one a list of one.
            spoken = Counter(_single(output["language"]) for output in model_outputs)
            result["language"] = spoken.most_common(1)[0][0]
        return {**result, **self._extra(model_outputs)}

    def _text_and_words(self, model_outputs: list[dict], return_timestamps) -> dict[str, Any]:
        if "token_frames" in model_outputs[0]:
            text = self.tokenizer.decode(model_outputs[0]["tokens"][0], skip_special_tokens=True)
            if not return_timestamps:
                return {"text": text}
            return {"text": text, "chunks": self._timed_words(model_outputs[0], 0, 0.0)}
        special = set(self.tokenizer.all_special_ids)
        sequences = [[t for t in output["tokens"][0].tolist() if t not in special] for output in model_outputs]
        merged = merge_on_longest_common_run(sequences) if len(sequences) > 1 else sequences[0]
        return {"text": self.tokenizer.decode(merged, skip_special_tokens=True)}

    def _timed_words(self, output: dict, row: int, offset_s: float) -> list[dict[str, Any]]:
        """Row ``row`` of a decoded batch as timed words, ``offset_s`` seconds into the file."""
        clock = FrameClock.for_model(self.model.config, self.feature_extractor)
        duration_s = self._covered_samples(int(output["feature_frames"][row])) / self.feature_extractor.sampling_rate
        valid = output["token_frames"][row][:, 0] >= 0
        alignment = [
            (int(token), int(start), int(end))
            for token, (start, end) in zip(
                output["tokens"][row][valid], output["token_frames"][row][valid], strict=True
            )
        ]
        return [
            {"text": word["text"], "timestamp": tuple(round(t + offset_s, 3) for t in word["timestamp"])}
            for word in timed_words(alignment, self.tokenizer, clock, duration_s)
            if word["text"]
        ]

    def _covered_samples(self, feature_frames: int) -> int:
        return (feature_frames - 1) * self.feature_extractor.hop_length + self.feature_extractor.n_fft

    def _transcribe_between_pauses(
        self,
        model_outputs: list[dict],
        return_timestamps,
        generate_kwargs: dict,
        chunk_length_s: float | None,
        pause_s: float,
    ) -> dict[str, Any]:
        """A long file's chunks joined; the stretches between its pauses transcribed one by one (module docstring)."""
        generate_kwargs = dict(generate_kwargs)
        log_probs, frame_starts, features, feature_starts, duration_s = self._joined_chunks(model_outputs)
        pieces = self._stretches_between_pauses(
            log_probs, frame_starts, feature_starts, duration_s, chunk_length_s, pause_s
        )
        # Without a given language: the one most chunks were identified as.
        given = "src_lang" in generate_kwargs or "src_lang_ids" in generate_kwargs
        language = Counter(int(output["src_lang_ids"][0]) for output in model_outputs).most_common(1)[0][0]
        texts, words = [], []
        for index in range(0, len(pieces), SEGMENT_BATCH_SIZE):
            batch = pieces[index : index + SEGMENT_BATCH_SIZE]
            if not given:
                generate_kwargs["src_lang_ids"] = torch.full((len(batch),), language, device=self.device)
            padded = torch.nn.utils.rnn.pad_sequence([features[a:b] for a, b in batch], batch_first=True)
            mask = (torch.arange(padded.shape[1]) < torch.tensor([b - a for a, b in batch]).unsqueeze(1)).long()
            inputs = {
                "input_features": padded.to(self.device),
                "attention_mask": mask.to(self.device),
                "is_last": True,
            }
            output = self._forward(inputs, return_timestamps=return_timestamps, **generate_kwargs)
            for row, (first, _) in enumerate(batch):
                texts.append(self.tokenizer.decode(output["tokens"][row], skip_special_tokens=True).strip())
                if return_timestamps:
                    words += self._timed_words(output, row, float(feature_starts[first]))
        result = {"text": " ".join(text for text in texts if text)}
        return {**result, "chunks": words} if return_timestamps else result

    def _stretches_between_pauses(
        self,
        log_probs: torch.Tensor,
        frame_starts: torch.Tensor,
        feature_starts: torch.Tensor,
        duration_s: float,
        chunk_length_s: float | None,
        pause_s: float,
    ) -> list[tuple[int, int]]:
        """`[first, last)` feature frames of each stretch between the joined CTC frames' pauses (blank runs of at
        least `pause_s`), none longer than the chunk; stretches too short for the front end are dropped."""
        clock = FrameClock.for_model(self.model.config, self.feature_extractor)
        longest = max(1, round(chunk_length_s / clock.seconds_per_frame)) if chunk_length_s else None
        segments = pause_segments(
            log_probs, round(pause_s / clock.seconds_per_frame), self.model.config.pad_token_id,
            PAUSE_BLANK_PROBABILITY, max_frames=longest,
        )  # fmt: skip
        ends = [float(frame_starts[start]) for start, _ in segments[1:]] + [duration_s]
        pieces = []
        for start_s, end_s in zip([0.0, *ends[:-1]], ends, strict=True):
            first, last = (int(torch.searchsorted(feature_starts, t)) for t in (start_s, end_s))
            if last - first >= self.model.config.min_input_frames:
                pieces.append((first, last))
        return pieces

    def _joined_chunks(
        self, model_outputs: list[dict]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """The chunks' CTC log-probabilities `(S, V)` and features `(T, F)` outside their strides, joined in order (a
        frame belongs to the chunk whose kept part holds its centre), with each frame's start in the file `(S,)` and
        `(T,)` in seconds, and the file's length in seconds."""
        clock = FrameClock.for_model(self.model.config, self.feature_extractor)
        rate, hop = self.feature_extractor.sampling_rate, self.feature_extractor.hop_length
        feature_centre_s = self.feature_extractor.n_fft / 2 / rate

        def first_from(seconds: float, centre_s: float, step_s: float) -> int:
            """The first frame (centres at ``centre_s + k * step_s``) whose centre lies at or after ``seconds``."""
            return max(0, math.ceil((seconds - centre_s) / step_s - 1e-6))

        parts = {"log_probs": [], "frame_starts": [], "features": [], "feature_starts": []}
        chunk_start, previous = 0, None
        for output in model_outputs:
            samples, left, right = output["stride"]
            if previous is not None:
                chunk_start += previous[0] - previous[2] - left
            previous = (samples, left, right)
            kept = (left / rate, (samples - right) / rate if right else math.inf)
            offset_s = chunk_start / rate
            for name, values, centre_s, step_s in (
                ("log_probs", output["ctc_log_probs"][0][: int(output["ctc_frames"][0])],
                 clock.offset_s + clock.seconds_per_frame / 2, clock.seconds_per_frame),
                ("features", output["chunk_features"][0][: int(output["feature_frames"][0])], feature_centre_s, hop / rate),
            ):  # fmt: skip
                first = min(first_from(kept[0], centre_s, step_s), len(values))
                last = len(values) if right == 0 else min(first_from(kept[1], centre_s, step_s), len(values))
                last = max(first, last)
                starts = "frame_starts" if name == "log_probs" else "feature_starts"
                parts[name].append(values[first:last])
                parts[starts].append(offset_s + (centre_s - step_s / 2) + torch.arange(first, last) * step_s)
        joined = {name: torch.cat(values) for name, values in parts.items()}
        duration_s = (chunk_start + previous[0]) / rate
        return (joined["log_probs"], joined["frame_starts"].float(), joined["features"],
                joined["feature_starts"].float(), duration_s)  # fmt: skip

    @staticmethod
    def _extra(model_outputs: list[dict]) -> dict[str, list]:
        """What came with the inputs (keys of dict inputs besides the audio), as the parent class returns it."""
        extra = defaultdict(list)
        for output in model_outputs:
            for key, value in output.items():
                if key not in OUTPUT_KEYS:
                    extra[key].append(value)
        return dict(extra)


def _single(value: Any) -> Any:
    return value[0] if isinstance(value, list | tuple) else value


def register_asr_pipeline() -> None:
    """Make `pipeline("automatic-speech-recognition")` build `Mu2SlamSpeechRecognitionPipeline`, for every model
    (it runs models other than Mu2SLAM exactly as transformers' own class), and run Mu2SLAM models in it as the
    sequence-to-sequence models they are. Run by `import mu2slam_hf`, and by a saved folder's remote code."""
    from transformers.models.auto import modeling_auto
    from transformers.pipelines import PIPELINE_REGISTRY

    # The ASR pipeline treats a model as seq2seq only when its class name is in this mapping; any other model is run
    # as a CTC model (logits argmax), which ours is not.
    modeling_auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES.setdefault("mu2slam", "Mu2SlamForConditionalGeneration")
    PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] = Mu2SlamSpeechRecognitionPipeline


def transcribe(
    model: Any,
    processor: Any,
    audio: Any,
    src_lang: str,
    tgt_lang: str | None = None,
    chunk_length_s: float | None = None,
    stride_length_s: float | None = None,
    return_timestamps: str | None = None,
    batch_size: int = 1,
    pause_s: float | None = None,
    **generate_kwargs,
) -> dict[str, Any] | list[dict[str, Any]]:
    """The ASR pipeline on a loaded model and processor: long files in overlapping chunks (`chunk_length_s`, the
    stride defaulting to a sixth of it) and word timestamps, for users outside `pipeline()`.

    Args:
        audio: a 16 kHz clip (array or file), or a list of them.
        pause_s: long files: the shortest run of the CTC head's blanks cut at (default `PAUSE_S`).
        generate_kwargs: `generate`'s options (`num_beams`, `ctc_weight`, ...).
    Returns:
        What the pipeline returns: `{"text", ["chunks"]}` per clip.
    """
    asr = Mu2SlamSpeechRecognitionPipeline(
        model=model, tokenizer=processor.tokenizer, feature_extractor=processor.feature_extractor, device=model.device
    )
    options = {"chunk_length_s": chunk_length_s, "stride_length_s": stride_length_s, "pause_s": pause_s}
    options = {key: value for key, value in options.items() if value is not None}
    if return_timestamps:
        options["return_timestamps"] = return_timestamps
    generate_kwargs = {"src_lang": src_lang, "tgt_lang": tgt_lang or src_lang, **generate_kwargs}
    return asr(audio, batch_size=batch_size, generate_kwargs=generate_kwargs, **options)


def ctc_word_timestamps(
    model: Any,
    processor: Any,
    audio: list[np.ndarray],
    src_lang: str | list[str],
    texts: list[str] | None = None,
    sampling_rate: int = SAMPLING_RATE,
) -> list[list[dict[str, Any]]]:
    """Word timestamps of clips from the CTC head: of its own transcript, or of given `texts` (forced alignment).

    Args:
        audio: mono clips at `sampling_rate` (or one clip).
        src_lang: the clips' language code (one, or one per clip).
        texts: a transcript per clip to align; None transcribes with the CTC head.
    Returns:
        Per clip, `[{"text": word, "timestamp": (start_s, end_s)}, ...]`.
    """
    if isinstance(audio, np.ndarray) and audio.ndim == 1:
        audio = [audio]
    batch = processor(audio=audio, sampling_rate=sampling_rate, src_lang=src_lang).to(model.device)
    labels = None
    if texts is not None:
        if len(texts) != len(audio):
            raise ValueError(f"Got {len(texts)} texts for {len(audio)} clips: pass one transcript per clip.")
        labels = processor.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")["input_ids"]
    alignments = model.ctc_align(**batch, labels=None if labels is None else labels.to(model.device))
    clock = FrameClock.for_model(model.config, processor.feature_extractor)
    return [
        timed_words(alignment, processor.tokenizer, clock, len(clip) / sampling_rate)
        for alignment, clip in zip(alignments, audio, strict=True)
    ]


__all__ = [
    "Mu2SlamSpeechRecognitionPipeline",
    "ctc_word_timestamps",
    "merge_on_longest_common_run",
    "register_asr_pipeline",
    "timed_words",
    "transcribe",
]
