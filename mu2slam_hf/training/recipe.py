"""Training recipes: one YAML file, validated into dataclasses (an unknown key is an error that names it).

A recipe holds everything a run needs besides the data and output folders: the model preset (or a checkpoint to
start from), the tokenizer and speech codebook to build, the task mixture, the loss weights, the optimizer and
its schedule, and the intervals of evaluation and checkpointing. See ``docs/training.md`` for the reference.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..configuration_mu2slam import Mu2SlamConfig, check_config_field
from ..data.augmentation import AudioAugmentation
from ..data.mixing import PAPER_EXAMPLES_PER_STEP, PAPER_LANGUAGE_TEMPERATURE
from ..data.schema import SPEECH_TASKS, TASKS, TEXT_TASKS
from ..instances.builder import SILENCE_WITH_CLIP_NORMALIZATION
from .schedule import DECAYS

STAGES = ("pretrain", "finetune")
MIXED_PRECISION = ("no", "bf16", "fp16", "auto")
MAX_SILENCE_PADDING_S = 5.0  # silence_padding_s: beyond this a clip is mostly silence
MIN_SPEED, MAX_SPEED = 0.5, 2.0  # speed_perturbation factors: beyond these, speech stops sounding like speech
FINETUNE_CTC_WEIGHT = 0.3  # ESPnet's joint CTC/attention weight; attention-only small models stall for long
# Recipe keys that were renamed: the old key still loads, with a message naming the new one. `ctc_weight` means the
# CTC/attention mixing weight of decoding everywhere else (`generate(ctc_weight=...)`), not this loss weight.
RENAMED_KEYS = {"ctc_weight": "ctc_loss_weight"}

logger = logging.getLogger(__name__)


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the offending key."""


@dataclass
class TokenizerRecipe:
    """``path``: a saved tokenizer folder; without it a tokenizer of ``kind`` is trained on the train texts.

    A run from a preset builds this tokenizer; a run from ``init_checkpoint`` keeps the checkpoint's unless
    ``replace``: then it moves to this one, each new token's embedding (tied to the output and CTC rows) starting at
    the mean of the checkpoint's embeddings of its characters (a character model fine-tuned into a subword one).
    """

    path: str | None = None
    kind: str = "char"
    vocab_size: int = 4096
    replace: bool = False


@dataclass
class CodebookRecipe:
    """BEST-RQ codebook (size = the model's ``codebook_size``); ``path``: a saved codebook folder instead.

    ``normalization_examples``: train clips for the feature extractor's per-bin statistics.
    """

    path: str | None = None
    seed: int = 0
    code_dim: int = 16
    normalization_examples: int = 256


@dataclass
class FeaturesRecipe:
    """The log-mel features' settings (`Mu2SlamFeatureExtractor`): ``normalize_means`` subtracts each clip's mean
    per mel bin, ``normalize_vars`` also divides by its standard deviation, ``mel_floor`` is the floor on mel energies
    before the log (digital silence sits at ``log(mel_floor)``; a recording's quietest frames at its noise floor). A run
    from a preset builds its feature extractor with them (None: the extractor's default); a run from
    ``init_checkpoint`` keeps its checkpoint's, and a value here that differs from it is refused (the model learned
    from the other features).
    """

    normalize_means: bool | None = None
    normalize_vars: bool | None = None
    mel_floor: float | None = None

    def extractor_kwargs(self) -> dict[str, Any]:
        """The settings given, as `Mu2SlamFeatureExtractor` keyword arguments."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


@dataclass
class OptimizerRecipe:
    """Adam(W) with the Transformer schedule ``lr = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``.

    ``lr`` (optional) sets the peak learning rate (reached at ``warmup_steps``) instead of ``lr_scale``; the shape
    (linear warmup, then inverse square root decay) is the same. ``decay``: "inverse_sqrt" (the paper's), or
    "linear" / "cosine" to zero at ``max_steps`` (for runs whose length is known: the rate anneals before the end),
    or "constant" (the peak rate after the warmup: runs of a time budget, with ``ema_decay`` doing the annealing).
    ``name``: "adam" (pre-training) or "adamw" (fine-tuning, with ``weight_decay``).
    """

    name: str = "adam"
    lr_scale: float = 3.0
    lr: float | None = None
    warmup_steps: int = 40_000
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    warmup_fraction: float | None = None
    decay: str = "inverse_sqrt"

    def warmup_for(self, max_steps: int) -> int:
        """Warmup steps of a run: ``warmup_fraction * max_steps`` when set (a warmup sized to the run), else
        ``warmup_steps``."""
        if self.warmup_fraction is None:
            return self.warmup_steps
        return max(1, round(self.warmup_fraction * max_steps))


@dataclass
class DataloaderRecipe:
    """``num_workers``: DataLoader worker processes that read audio and build the training instances beside the
    training process (0: in it), with the same draws either way; ``cache_features``: keep each clip's log-mel and
    codes in memory (small corpora, in-process building only); ``max_audio_seconds``: longer training clips are
    skipped; ``stream_window``: with ``--streaming``, the rows of a task read and batched together (memory: this
    many rows per task, and per worker process); ``pad_to_multiple_of``: each batch's frames and tokens are padded
    up to a multiple of this (None: to the longest row), so that batches repeat the same few shapes. On a CPU, oneDNN
    compiles a kernel for every new shape of a bf16 matrix product (about 2.5 ms for one that then runs in 0.25):
    the demo's stage 2 compiled 56 a step padded to the longest row, 21 with 32 and a larger kernel cache, and its
    steps took a fifth less time. Padding is masked: the losses are the same."""

    num_workers: int = 0
    cache_features: bool = True
    max_audio_seconds: float | None = 30.0
    stream_window: int = 4096
    pad_to_multiple_of: int | None = 32


@dataclass
class LoraRecipe:
    """PEFT LoRA on the attention and feed-forward linear layers (``--lora``)."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])


@dataclass
class Recipe:
    """A pre-training or fine-tuning run (``stage``: "pretrain" = the masked objectives, "finetune" = plain P(y|x)).

    Model: ``model`` is a preset folder (``configuration/models/small``) or ``init_checkpoint`` a trained folder
    (model + processor); ``model_overrides`` are set on the model config at init (dropout, noise, ...).

    Learning: ``ctc_loss_weight`` is the weight of the encoder's CTC loss (``config.ctc_loss_weight``); fine-tuning puts
    CTC on ASR rows (and, with ``ctc_ast_source``, on AST rows from their source transcript) and defaults to 0.3
    (0 turns it off); pre-training keeps the preset's weight unless set. ``mt_source_mlm`` is the same kind of
    encoder-side loss for MT fine-tuning: that fraction of each source's words (one whole-word span, corrupted as
    pre-training's text MLM) is masked in training and the encoder predicts them (``config.mlm_loss_weight``). Without
    it an MT model trained from scratch collapses its encoder to one vector for every token within a hundred steps
    and its decoder never reads the source. ``seconds_per_step`` (speech tasks) makes
    a task draw one length-bucketed batch of that many seconds of padded audio per step instead of
    ``examples_per_step``, and ``tokens_per_step`` (text tasks) one batch of that many padded tokens (the longer of source and target);
    ``shortest_first`` walks the first epoch of those batches from short to long.
    ``spec_augment_from_step``: SpecAugment (when the model config enables it) acts from this step on.
    ``speed_perturbation``: speed factors (e.g. ``[0.9, 1.0, 1.1]``, Kaldi's); each training clip is played at one
    of them, drawn per clip from the step's seeded generator (dev and decoding hear the audio as it is).
    ``silence_padding_s`` (fine-tuning): each training clip gets silence of a length drawn uniformly from [0, s]
    seconds before it and another after it (the log-mel frame of digital silence, per clip from the step's
    generator). Corpora cut their clips tightly around the speech; recordings, and the stretches `pipeline()` cuts
    from a long file, are not: a model that never heard silence around speech loses words to it.
    ``audio_augmentation`` (fine-tuning): corruptions of training clips for robustness to real recordings, the
    fields of :class:`~mu2slam_hf.data.augmentation.AudioAugmentation` (``reverb_probability``, ``reverb_rt60_s``,
    ``noise_probability``, ``noise_snr_db``, ``babble_fraction``, ``noise_dir``, ``telephone_probability``,
    ``gain_db``); empty: none. Dev and decoding hear the audio as it is.
    ``max_train_minutes``: also stop (evaluate, save the final model) once this much training time has passed,
    evaluation and saving not counted: runs compared at equal minutes (the learning-curve benchmark).
    ``extend_vocabulary``: characters of the train texts the tokenizer cannot write become new tokens (embedding
    rows) and unknown language codes new language embeddings; without it, fine-tuning a trained folder on such
    text is refused (the model would learn to write ``<unk>``) and unknown languages are named before step 1.
    Language identification: ``language_id_weight`` gives the model a language-identification head (when it has
    none) and adds its cross-entropy, with this weight, on every speech batch (the label is the speech's source
    language); ``language_id_only`` trains that loss alone (no decoder pass). ``trainable_modules``: only parameters
    whose names start with one of these prefixes train (``[language_id_head]``: a head on a frozen model).
    ``ctc_language_model``: when the dev set picks the CTC head as the ASR decoder, fit a character n-gram language
    model of this order to the train text at the end (weight and length bonus chosen on dev) and save it with the
    model, as the default of CTC decoding (`training.ctc_language_model`). ``ctc_language_model_text``: corpus
    folders whose train split's text rows and ASR transcripts join the run's train text in a second language model
    (written text of the languages, far more than the transcripts: the LibreOffice help text, say), kept instead of
    the train text's own where its dev CER is lower; a sentence of the run's dev rows or of those folders' dev/test
    splits is left out.
    ``choose_translation_decoding``: at the end, decode the dev AST/MT rows with a small grid of beam widths and
    repetition / length controls and save the best (dev chrF) as the model's translation decoding
    (`training.translation_decoding`; written to translation_decoding_fit.json).
    ``retrieval``: train a speech-text dual encoder (`Mu2SlamForRetrieval`, from ``init_checkpoint`` or a preset)
    with the in-batch contrastive loss on the (speech, target text) pairs of the drawn asr/ast rows, and on the
    (source, target) text pairs of drawn mt rows (translation pairs carry cross-lingual matching over to speech):
    a batch's other rows of its kind are its negatives (every process's rows under DDP), so its size
    (``seconds_per_step`` times the processes) is the number of negatives.
    ``ema_decay``: keep an exponential moving average of the weights (decay warmed up as ``(1 + n) / (10 + n)``),
    evaluate it on dev and save it as the model (`training.averaging`); the raw weights stay in the checkpoints'
    training state for resuming.
    ``mixed_precision: auto`` picks bf16 where it is fast (CUDA with bf16; CPUs with AVX512-BF16 or AMX whose bf16
    matrix products are measured at least 1.5x faster than fp32) and fp32 elsewhere. ``bf16_weights``: run the
    forward and backward passes in a bf16 copy of the model, against the fp32 weights that the optimizer updates
    (`training.bf16_weights`); ``auto``: where bf16 autocast runs on a CPU in one process.
    """

    stage: str = "pretrain"
    model: str | None = None
    init_checkpoint: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    tokenizer: TokenizerRecipe = field(default_factory=TokenizerRecipe)
    speech_codebook: CodebookRecipe = field(default_factory=CodebookRecipe)
    features: FeaturesRecipe = field(default_factory=FeaturesRecipe)
    examples_per_step: dict[str, int] = field(default_factory=lambda: dict(PAPER_EXAMPLES_PER_STEP))
    language_temperature: dict[str, float] = field(default_factory=lambda: dict(PAPER_LANGUAGE_TEMPERATURE))
    loss_weights: dict[str, float] = field(default_factory=dict)
    ctc_loss_weight: float | None = None
    ctc_ast_source: bool = False
    mt_source_mlm: float = 0.0
    seconds_per_step: dict[str, float] = field(default_factory=dict)
    tokens_per_step: dict[str, int] = field(default_factory=dict)
    shortest_first: bool = False
    spec_augment_from_step: int = 0
    speed_perturbation: list[float] = field(default_factory=list)
    silence_padding_s: float = 0.0
    audio_augmentation: dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerRecipe = field(default_factory=OptimizerRecipe)
    gradient_accumulation_steps: int = 1
    mixed_precision: str | None = "no"
    bf16_weights: bool | str = "auto"
    gradient_checkpointing: bool = False
    max_steps: int = 1000
    max_train_minutes: float | None = None
    eval_interval: int = 500
    dev_examples_per_task: int = 16
    eval_batch_size: int = 8
    eval_max_new_tokens: int = 64
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    log_interval: int = 1
    seed: int = 0
    dataloader: DataloaderRecipe = field(default_factory=DataloaderRecipe)
    lora: LoraRecipe = field(default_factory=LoraRecipe)
    extend_vocabulary: bool = False
    language_id_weight: float | None = None
    language_id_only: bool = False
    trainable_modules: list[str] = field(default_factory=list)
    ctc_language_model: int | None = None
    ctc_language_model_text: list[str] = field(default_factory=list)
    choose_translation_decoding: bool = False
    retrieval: bool = False
    ema_decay: float | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a RecipeError naming the first key with a value the loop cannot use."""
        _choice("stage", self.stage, STAGES)
        _choice("mixed_precision", self.mixed_precision, (*MIXED_PRECISION, None))
        if self.bf16_weights not in (True, False, "auto"):
            raise RecipeError(f"bf16_weights must be true, false or auto; got {self.bf16_weights!r}.")
        _choice("tokenizer.kind", self.tokenizer.kind, ("char", "unigram"))
        if self.tokenizer.replace and (self.init_checkpoint is None or self.retrieval):
            raise RecipeError(
                "tokenizer.replace moves a trained seq2seq model (init_checkpoint) to a new tokenizer; a run from a "
                "preset builds its tokenizer anyway, and the retrieval model keeps its checkpoint's."
            )
        _choice("optimizer.name", self.optimizer.name, ("adam", "adamw"))
        if (self.model is None) == (self.init_checkpoint is None):
            raise RecipeError("Set exactly one of `model` (a preset folder) and `init_checkpoint` (a trained folder).")
        unknown = set(self.examples_per_step) - set(TASKS)
        if unknown:
            raise RecipeError(f"examples_per_step: unknown task(s) {sorted(unknown)}; tasks are {list(TASKS)}.")
        if not self.drawn_tasks():
            raise RecipeError("examples_per_step: every task has 0 examples per step.")
        if self.stage == "finetune" and any(task in ("speech", "text") for task in self.drawn_tasks()):
            raise RecipeError("examples_per_step: fine-tuning uses labelled tasks only (asr, ast, mt).")
        self._validate_maps()
        for name in (
            "max_steps",
            "eval_interval",
            "checkpoint_interval",
            "gradient_accumulation_steps",
            "log_interval",
        ):
            if getattr(self, name) < 1:
                raise RecipeError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not 0.0 <= self.mt_source_mlm < 1.0:
            raise RecipeError(
                f"mt_source_mlm is the fraction of source words masked, in [0, 1); got {self.mt_source_mlm}."
            )
        if self.mt_source_mlm and self.stage != "finetune":
            raise RecipeError(
                "mt_source_mlm is for fine-tuning; pre-training's MT objectives mask the source already."
            )
        if self.keep_checkpoints < 1:
            raise RecipeError(f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}.")
        if self.optimizer.warmup_steps < 1:
            raise RecipeError(f"optimizer.warmup_steps must be at least 1, got {self.optimizer.warmup_steps}.")
        fraction = self.optimizer.warmup_fraction
        if fraction is not None and not 0.0 < fraction < 1.0:
            raise RecipeError(f"optimizer.warmup_fraction must be in (0, 1), got {fraction}.")
        if self.optimizer.decay not in DECAYS:
            raise RecipeError(f"optimizer.decay must be one of {DECAYS}, got {self.optimizer.decay!r}.")
        if self.ctc_loss_weight is None and self.stage == "finetune":
            self.ctc_loss_weight = 0.0 if self.retrieval else FINETUNE_CTC_WEIGHT
        if self.ctc_loss_weight is not None and self.ctc_loss_weight < 0:
            raise RecipeError(f"ctc_loss_weight must be >= 0, got {self.ctc_loss_weight}.")
        not_speech = sorted(set(self.seconds_per_step) - set(SPEECH_TASKS))
        if not_speech:
            raise RecipeError(f"seconds_per_step: {not_speech} are not speech tasks (speech, asr, ast).")
        if any(seconds <= 0 for seconds in self.seconds_per_step.values()):
            raise RecipeError(f"seconds_per_step: budgets must be positive, got {self.seconds_per_step}.")
        not_text = sorted(set(self.tokens_per_step) - set(TEXT_TASKS))
        if not_text:
            raise RecipeError(f"tokens_per_step: {not_text} are not text tasks (text, mt).")
        if any(tokens < 1 for tokens in self.tokens_per_step.values()):
            raise RecipeError(f"tokens_per_step: budgets must be positive, got {self.tokens_per_step}.")
        if self.spec_augment_from_step < 0:
            raise RecipeError(f"spec_augment_from_step must be >= 0, got {self.spec_augment_from_step}.")
        self._validate_speed_perturbation()
        self._validate_features()
        self._validate_silence_padding()
        self._validate_audio_augmentation()
        self._validate_dataloader()
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise RecipeError(
                f"ema_decay must be in (0, 1) (e.g. 0.99), or null for no average; got {self.ema_decay}."
            )
        self._validate_language_id()
        self._validate_retrieval()

    def _validate_retrieval(self) -> None:
        if not self.retrieval:
            return
        if self.stage != "finetune":
            raise RecipeError("retrieval: the dual encoder is trained in `stage: finetune`.")
        # Fine-tuning draws asr, ast and mt rows only: each pairs a query (clip or source text) with its target.
        if not set(self.drawn_tasks()) & {"asr", "ast"}:
            raise RecipeError("retrieval: draw asr or ast rows too; the dual encoder is evaluated on speech.")
        clashes = [
            name
            for name in ("language_id_weight", "ctc_language_model", "mt_source_mlm", "choose_translation_decoding")
            if getattr(self, name)
        ]
        if self.ctc_loss_weight:
            clashes.append("ctc_loss_weight")
        if self.extend_vocabulary:
            clashes.append("extend_vocabulary")
        if clashes:
            raise RecipeError(f"retrieval: {clashes} belong to the seq2seq model; set them to 0 / null / false.")

    def _validate_speed_perturbation(self) -> None:
        factors = self.speed_perturbation
        if not isinstance(factors, list | tuple) or not all(isinstance(f, int | float) for f in factors):
            raise RecipeError(f"speed_perturbation is a list of speed factors, e.g. [0.9, 1.0, 1.1]; got {factors!r}.")
        if any(not MIN_SPEED <= f <= MAX_SPEED for f in factors):
            raise RecipeError(
                f"speed_perturbation: factors must be in [{MIN_SPEED}, {MAX_SPEED}] (1.0 is the audio as it is; "
                f"Kaldi uses 0.9, 1.0, 1.1); got {factors}."
            )
        if factors and not set(self.drawn_tasks()) & set(SPEECH_TASKS):
            raise RecipeError("speed_perturbation: the recipe draws no speech task, so there is no audio to perturb.")

    def _validate_features(self) -> None:
        if self.features.normalize_vars and not self.features.normalize_means:
            raise RecipeError(
                "features.normalize_vars divides each clip's features by their spread around the clip's mean: "
                "set features.normalize_means: true as well."
            )
        if self.features.mel_floor is not None and not self.features.mel_floor > 0:
            raise RecipeError(
                f"features.mel_floor must be positive (the log of it is taken), got {self.features.mel_floor}."
            )

    def _validate_silence_padding(self) -> None:
        seconds = self.silence_padding_s
        if not isinstance(seconds, int | float) or not 0 <= seconds <= MAX_SILENCE_PADDING_S:
            raise RecipeError(
                f"silence_padding_s is the longest silence (seconds) added before and after each training clip, "
                f"in [0, {MAX_SILENCE_PADDING_S}]; got {seconds!r}."
            )
        if seconds and self.stage != "finetune":
            raise RecipeError(
                "silence_padding_s is a fine-tuning option: pre-training's speech targets are codes of the clips' "
                "own frames. Set it to 0 in this pre-training recipe."
            )
        if seconds and not set(self.drawn_tasks()) & set(SPEECH_TASKS):
            raise RecipeError("silence_padding_s: the recipe draws no speech task, so there is no audio to pad.")
        if seconds and self.features.normalize_means:
            raise RecipeError(SILENCE_WITH_CLIP_NORMALIZATION)

    def _validate_audio_augmentation(self) -> None:
        try:
            augmentation = AudioAugmentation.from_dict(self.audio_augmentation)
        except (TypeError, ValueError) as error:
            raise RecipeError(str(error)) from error
        if augmentation is None or not augmentation.active:
            return
        if self.stage != "finetune":
            raise RecipeError(
                "audio_augmentation is a fine-tuning option: pre-training's speech targets are codes of the clips' "
                "own frames. Leave it empty in this pre-training recipe."
            )
        if not set(self.drawn_tasks()) & set(SPEECH_TASKS):
            raise RecipeError("audio_augmentation: the recipe draws no speech task, so there is no audio to corrupt.")

    def _validate_dataloader(self) -> None:
        workers = self.dataloader.num_workers
        if workers < 0:
            raise RecipeError(f"dataloader.num_workers must be >= 0, got {workers}.")
        if self.dataloader.pad_to_multiple_of is not None and self.dataloader.pad_to_multiple_of < 1:
            raise RecipeError(
                f"dataloader.pad_to_multiple_of must be a positive number of frames/tokens or null (pad to the longest "
                f"row), got {self.dataloader.pad_to_multiple_of}."
            )
        if self.dataloader.stream_window < 1:
            raise RecipeError(f"dataloader.stream_window must be at least 1 row, got {self.dataloader.stream_window}.")

    def check_language_model_text(self) -> None:
        """Every ``ctc_language_model_text`` folder holds a train manifest (checked before step 1, not at the end of
        the run, when the language model is fitted)."""
        if self.ctc_language_model_text and not self.ctc_language_model:
            raise RecipeError(
                "ctc_language_model_text adds text to the CTC language model: set ctc_language_model (its order, "
                "e.g. 6) too, or leave ctc_language_model_text empty."
            )
        missing = [folder for folder in self.ctc_language_model_text if not (Path(folder) / "train.jsonl").is_file()]
        if missing:
            raise RecipeError(
                f"ctc_language_model_text: {missing} hold no train.jsonl; pass built corpus folders (e.g. the output "
                "folder of mu2slam-build-text)."
            )

    def check_feature_cache(self, streaming: bool) -> None:
        """A run that reads its data in memory keeps each clip's features (``cache_features``); worker processes
        would each keep a copy of that cache. Streaming runs cache nothing (a stream's clips do not come back soon),
        so there the setting is moot. Checked by the training loop, which knows whether it streams."""
        workers = self.dataloader.num_workers
        if workers > 0 and self.dataloader.cache_features and not streaming:
            raise RecipeError(
                f"dataloader.num_workers: {workers} worker processes compute the features, and each would keep "
                "its own copy of the in-memory feature cache. Set dataloader.cache_features: false (features "
                "computed on the fly, for corpora larger than memory) or dataloader.num_workers: 0."
            )

    def _validate_language_id(self) -> None:
        if self.language_id_weight is not None and self.language_id_weight < 0:
            raise RecipeError(f"language_id_weight must be >= 0, got {self.language_id_weight}.")
        if not self.language_id_only:
            return
        if not self.language_id_weight:
            raise RecipeError("language_id_only: set `language_id_weight` (> 0), the weight of the loss it trains.")
        if self.stage != "finetune":
            raise RecipeError("language_id_only: language identification is trained in `stage: finetune`.")
        not_speech = sorted(set(self.drawn_tasks()) - {"asr", "ast"})
        if not_speech:
            raise RecipeError(f"language_id_only: draws speech only (asr, ast rows), not {not_speech}.")

    def drawn_tasks(self) -> list[str]:
        """The tasks each step draws from: a positive ``examples_per_step`` or a length budget per step."""
        counts = {**self.examples_per_step, **dict.fromkeys([*self.seconds_per_step, *self.tokens_per_step], 1)}
        return [task for task, count in counts.items() if count > 0]

    def _validate_maps(self) -> None:
        """The free-form maps: config fields, objective names and task names, each with a usable value."""
        for key, check in (
            ("model_overrides", Mu2SlamConfig.check_overrides),
            ("loss_weights", lambda weights: check_config_field("objective_loss_weights", weights)),
        ):
            try:
                check(getattr(self, key))
            except ValueError as error:
                raise RecipeError(f"{key}: {error}") from None
        unknown = sorted(set(self.language_temperature) - set(TASKS))
        if unknown:
            raise RecipeError(f"language_temperature: unknown task(s) {unknown}; tasks are {list(TASKS)}.")
        for task, temperature in self.language_temperature.items():
            if temperature <= 0:
                raise RecipeError(f"language_temperature.{task} must be positive, got {temperature}.")

    def require_stage(self, stage: str, source: str) -> None:
        """Refuse a recipe of the other stage (``source`` names the recipe file in the message)."""
        if self.stage != stage:
            script = "pretrain.py" if self.stage == "pretrain" else "finetune.py"
            raise RecipeError(
                f"{source} is a `stage: {self.stage}` recipe but this command runs `stage: {stage}`: run it with "
                f"training_scripts/{script}, or pass a {stage} recipe."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise RecipeError(f"{key}: {value!r} is not one of {list(allowed)}.")


def _convert(cls: type, data: Any, path: str) -> Any:
    """``data`` (parsed YAML) as an instance of dataclass ``cls``, every key checked against its fields."""
    if not isinstance(data, dict):
        raise RecipeError(f"{path or 'recipe'}: expected a mapping, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise RecipeError(f"Unknown recipe key `{where}{unknown[0]}`; known keys here: {sorted(names)}.")
    values = {key: _value(hints[key], value, f"{path}.{key}" if path else key) for key, value in data.items()}
    return cls(**values)


def _value(hint: Any, value: Any, path: str) -> Any:
    """Check and convert one value against its type hint (dataclasses, optionals, containers, scalars)."""
    if dataclasses.is_dataclass(hint):
        return _convert(hint, value, path)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _value(option, value, path)
            except RecipeError as error:
                errors.append(str(error))
        raise RecipeError(errors[0])
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {value!r}.")
        key_type, value_type = args
        return {_value(key_type, k, path): _value(value_type, v, f"{path}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{path}: expected a list, got {value!r}.")
        items = [_value(args[0], v, path) for v in value]
        if origin is tuple and len(items) != len(args):
            raise RecipeError(f"{path}: expected {len(args)} values, got {len(items)}.")
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise RecipeError(f"{path}: expected {hint.__name__}, got {value!r}.")
    return value


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """A validated `Recipe` from a mapping (the parsed YAML)."""
    return _convert(Recipe, with_renamed_keys(data), "")


def with_renamed_keys(data: Any, where: str = "recipe") -> Any:
    """`data` with each old key of `RENAMED_KEYS` under its new name (a message names the new one); both at once is a
    RecipeError."""
    if not isinstance(data, dict):
        return data
    renamed = dict(data)
    for old, new in RENAMED_KEYS.items():
        if old not in renamed:
            continue
        if new in renamed:
            raise RecipeError(f"{where}: `{old}` is the old name of `{new}`; give only `{new}`.")
        logger.warning(
            "%s: the key `%s` is now `%s` (the weight of the encoder's CTC loss): rename it.", where, old, new
        )
        renamed[new] = renamed.pop(old)
    return renamed


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a recipe YAML, apply ``overrides`` (dotted keys, e.g. ``{"optimizer.lr": 1e-4}``) and validate it.

    A relative ``model`` / ``init_checkpoint`` / tokenizer / codebook path is first tried as given (from the
    working directory), then relative to the repository root above ``configuration/``.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(data).__name__}.")
    data = with_renamed_keys(data, str(path))
    for dotted, value in with_renamed_keys(dict(overrides or {}), "overrides").items():
        target = data
        *parents, leaf = dotted.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    recipe = recipe_from_dict(data)
    if recipe.model is not None:
        recipe.model = _resolve(recipe.model, path)
    return recipe


def _resolve(location: str, recipe_path: Path) -> str:
    """A preset path as given if it exists, else relative to the folder holding ``configuration/``."""
    if Path(location).exists():
        return location
    for parent in recipe_path.resolve().parents:
        if parent.name == "configuration" and (parent.parent / location).exists():
            return str(parent.parent / location)
    return location
