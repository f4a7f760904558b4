"""The frozen speech tokenizer of Mu2SLAM (paper eq. 1): ``z = argmin_i ||G_i - s||``.

The paper reuses mSLAM's learned tokenizer, which is not public. :class:`Mu2SlamSpeechCodebook` is our frozen,
reproducible stand-in. It yields exactly one code per position of the model's speech front-end output: code ``t``
is computed from the log-mel frames that front-end output ``t`` sees, i.e. frames
``[t * stride ** num_layers, t * stride ** num_layers + receptive_field)`` (``[4t, 4t + 7)`` with the default two
stride-2, kernel-3 convolutions), stacked to one ``receptive_field * num_mel_bins`` (560) vector. A batch of ``T``
frames gives ``subsampled_lengths(T)`` codes, the front end's own length formula; positions past an utterance's own
``subsampled_lengths(length)`` get :data:`CODE_PAD_VALUE` (-100, the cross-entropy ``ignore_index``).

Each vector is normalised per dimension (``(s - mean) / std``), optionally projected (``s @ projection``) and
L2-normalised, then assigned its nearest codeword. Distances are computed in float64 so that a vector gets the same
code whatever batch it sits in.

Two builders:

* :func:`build_best_rq` (BEST-RQ, Chiu et al. 2022): a seeded random projection and a seeded random unit-norm
  codebook; no training, identical when rebuilt from the same seed (and the same normalisation data, if any).
* :func:`fit_kmeans`: k-means (k-means++ init, Lloyd iterations, deterministic given the seed) on stacked log-mel
  frames of a corpus, or on any ``(N, D)`` vectors, e.g. hidden states of a trained encoder layer (HuBERT-style
  second iteration; such a codebook has ``input_type="vectors"`` and quantises hidden states position by position).

Codes are in ``[0, codebook_size)``; :meth:`VocabularyLayout.code_to_id` maps them to vocabulary ids.
Saved as ``speech_codebook.safetensors`` (tensors) + ``speech_codebook.json`` (settings, build report); no pickle.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import logging

from .configuration_mu2slam import receptive_field, subsampled_lengths
from .input_checks import record_checksums
from .vocabulary import IGNORE_INDEX

logger = logging.get_logger(__name__)

CODE_PAD_VALUE = IGNORE_INDEX
"""Code at positions that are not real front-end outputs (the cross-entropy ``ignore_index``)."""

CODEBOOK_WEIGHTS_NAME = "speech_codebook.safetensors"
CODEBOOK_CONFIG_NAME = "speech_codebook.json"
_FORMAT_VERSION = 1

InputType = Literal["stacked_log_mel", "vectors"]
FeatureData = torch.Tensor | np.ndarray | Iterable[Any]


@dataclass(frozen=True)
class CodebookUsage:
    """How a corpus uses a codebook.

    Args:
        num_vectors: vectors quantised.
        codebook_size: number of codes.
        perplexity: ``exp(entropy)`` of the code distribution; ``codebook_size`` when usage is uniform.
        dead_codes: codes never chosen.
        distortion: mean squared distance to the chosen codeword, in the codebook's (normalised) space.
    """

    num_vectors: int
    codebook_size: int
    perplexity: float
    dead_codes: int
    distortion: float

    def __str__(self) -> str:
        return (
            f"{self.num_vectors} vectors, perplexity {self.perplexity:.1f} / {self.codebook_size}, "
            f"{self.dead_codes} dead codes, distortion {self.distortion:.4g}"
        )


class Mu2SlamSpeechCodebook(nn.Module):
    r"""
    Frozen nearest-codeword quantiser producing one speech code per speech front-end output position.

    Args:
        codebook (`torch.Tensor` of shape `(codebook_size, code_dim)`): the codewords G.
        input_type (`str`): ``"stacked_log_mel"``: inputs are log-mel features ``(batch, frames, num_mel_bins)``,
            stacked over the front end's receptive field; ``"vectors"``: inputs are already one vector per
            front-end position ``(batch, positions, input_dim)`` (e.g. encoder hidden states).
        mean / std (`torch.Tensor` of shape `(input_dim,)`, *optional*): per-dimension normalisation (default 0 / 1).
        projection (`torch.Tensor` of shape `(input_dim, code_dim)`, *optional*): applied after normalisation.
        l2_normalize (`bool`): L2-normalise the (projected) vector before the nearest-codeword search.
        num_mel_bins (`int`): mel bins of the log-mel input (``"stacked_log_mel"`` only).
        frontend_num_layers / frontend_kernel_size / frontend_stride (`int`): geometry of the speech front end
            whose output positions the codes align with (``Mu2SlamConfig``: 2, ``frontend_kernel_size``,
            ``frontend_stride``).
        method (`str`): how the codebook was built (``"best_rq"``, ``"kmeans"``, ...); informative.
        seed (`int`, *optional*): the builder's seed; informative.
        usage (`CodebookUsage`, *optional*): the build-time usage report.
    """

    def __init__(
        self,
        codebook: torch.Tensor,
        *,
        input_type: InputType = "stacked_log_mel",
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        projection: torch.Tensor | None = None,
        l2_normalize: bool = False,
        num_mel_bins: int = 80,
        frontend_num_layers: int = 2,
        frontend_kernel_size: int = 3,
        frontend_stride: int = 2,
        method: str = "custom",
        seed: int | None = None,
        usage: CodebookUsage | None = None,
    ):
        super().__init__()
        if input_type not in ("stacked_log_mel", "vectors"):
            raise ValueError(f"input_type must be 'stacked_log_mel' or 'vectors', got {input_type!r}.")
        if codebook.ndim != 2 or codebook.shape[0] < 1:
            raise ValueError(f"codebook must have shape (codebook_size, code_dim), got {tuple(codebook.shape)}.")
        self.input_type = input_type
        self.num_mel_bins = num_mel_bins
        self.frontend_num_layers = frontend_num_layers
        self.frontend_kernel_size = frontend_kernel_size
        self.frontend_stride = frontend_stride
        self.l2_normalize = l2_normalize
        self.method = method
        self.seed = seed
        self.usage = usage
        input_dim = projection.shape[0] if projection is not None else codebook.shape[1]
        if input_type == "stacked_log_mel" and input_dim != self.window_frames * num_mel_bins:
            raise ValueError(
                f"A stacked log-mel codebook takes {self.window_frames} frames x {num_mel_bins} bins = "
                f"{self.window_frames * num_mel_bins} dims, but its projection/codebook takes {input_dim}."
            )
        if projection is not None and projection.shape[1] != codebook.shape[1]:
            raise ValueError(f"projection {tuple(projection.shape)} does not map to code_dim={codebook.shape[1]}.")
        mean = torch.zeros(input_dim) if mean is None else mean
        std = torch.ones(input_dim) if std is None else std
        if mean.shape != (input_dim,) or std.shape != (input_dim,):
            raise ValueError(
                f"mean and std must have shape ({input_dim},), got {tuple(mean.shape)}, {tuple(std.shape)}."
            )
        self.register_buffer("codebook", codebook.detach().clone().float())
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())
        self.register_buffer("projection", None if projection is None else projection.detach().clone().float())
        self.requires_grad_(False)

    # ------------------------------------------------------------------ geometry

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    @property
    def input_dim(self) -> int:
        return self.mean.shape[0]

    @property
    def window_frames(self) -> int:
        """Log-mel frames behind one code: the front end's receptive field (7)."""
        return receptive_field(self.frontend_num_layers, self.frontend_kernel_size, self.frontend_stride)

    @property
    def window_hop(self) -> int:
        """Log-mel frames between consecutive codes: the front end's total stride (4)."""
        return self.frontend_stride**self.frontend_num_layers

    def output_lengths(self, num_frames: torch.Tensor | int) -> torch.Tensor | int:
        """Codes for ``num_frames`` log-mel frames: ``subsampled_lengths`` clamped at 0 (int or tensor)."""
        lengths = subsampled_lengths(
            num_frames, self.frontend_num_layers, self.frontend_kernel_size, self.frontend_stride
        )
        return lengths.clamp_min(0) if isinstance(lengths, torch.Tensor) else max(lengths, 0)

    def check_compatible(self, config: Any) -> None:
        """Raise a ValueError if this codebook does not match a ``Mu2SlamConfig`` (size, mel bins, front end)."""
        expected = {
            "codebook_size": (self.codebook_size, config.codebook_size),
            "frontend_kernel_size": (self.frontend_kernel_size, config.frontend_kernel_size),
            "frontend_stride": (self.frontend_stride, config.frontend_stride),
        }
        if self.input_type == "stacked_log_mel":
            expected["num_mel_bins"] = (self.num_mel_bins, config.num_mel_bins)
        mismatches = [
            f"{name}: codebook {ours} vs config {theirs}"
            for name, (ours, theirs) in expected.items()
            if ours != theirs
        ]
        if mismatches:
            raise ValueError("Speech codebook and model config disagree: " + "; ".join(mismatches))

    # ------------------------------------------------------------------ encoding

    def stack_frames(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`stack_log_mel_frames` with this codebook's mel bins and front-end geometry."""
        return stack_log_mel_frames(input_features, attention_mask, **self._geometry())

    def _geometry(self) -> dict[str, int]:
        return {
            "num_mel_bins": self.num_mel_bins,
            "frontend_num_layers": self.frontend_num_layers,
            "frontend_kernel_size": self.frontend_kernel_size,
            "frontend_stride": self.frontend_stride,
        }

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``(..., input_dim)`` -> ``(..., code_dim)`` float64: normalise, project, L2-normalise as configured."""
        x = (vectors.double() - self.mean.double()) / self.std.double()
        if self.projection is not None:
            x = x @ self.projection.double()
        if self.l2_normalize:
            x = nn.functional.normalize(x, dim=-1)
        return x

    def quantize(
        self, vectors: torch.Tensor, mask: torch.Tensor | None = None, chunk_size: int = 8192
    ) -> torch.Tensor:
        """Nearest codeword of each vector.

        Args:
            vectors: ``(..., input_dim)`` vectors in the codebook's input space.
            mask: ``(...)`` bool/int, nonzero = real; other positions get ``CODE_PAD_VALUE``.
            chunk_size: vectors per distance computation (bounds memory to ``chunk_size * codebook_size``).

        Returns:
            ``(...)`` int64 codes in ``[0, codebook_size)``.
        """
        if vectors.shape[-1] != self.input_dim:
            raise ValueError(f"Expected vectors of dimension {self.input_dim}, got {vectors.shape[-1]}.")
        flat = vectors.reshape(-1, self.input_dim)
        codebook = self.codebook.double()
        codes = torch.cat(
            [_nearest(self.project(chunk), codebook)[0] for chunk in flat.split(chunk_size)]
            or [flat.new_zeros(0, dtype=torch.long)]
        ).reshape(vectors.shape[:-1])
        if mask is not None:
            codes = codes.masked_fill(~mask.bool(), CODE_PAD_VALUE)
        return codes

    @torch.no_grad()
    def forward(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Speech codes aligned with the speech front-end output.

        Args:
            input_features: ``"stacked_log_mel"``: log-mel ``(batch, frames, num_mel_bins)``; ``"vectors"``:
                ``(batch, positions, input_dim)`` (e.g. hidden states, already one per front-end position).
            attention_mask: ``(batch, frames)`` (resp. ``(batch, positions)``), 1 = real, right padding.

        Returns:
            ``(batch, subsampled_lengths(frames))`` int64 codes (resp. ``(batch, positions)``), with
            ``CODE_PAD_VALUE`` (-100) at padded positions.
        """
        if self.input_type == "vectors":
            return self.quantize(input_features, attention_mask)
        stacked, real = self.stack_frames(input_features, attention_mask)
        return self.quantize(stacked, real)

    # ------------------------------------------------------------------ diagnostics

    @torch.no_grad()
    def measure_usage(self, data: FeatureData) -> CodebookUsage:
        """Usage of this codebook on ``data``: an ``(N, input_dim)`` tensor of vectors, or (stacked log-mel
        codebooks) an iterable of utterances / batches as accepted by :func:`fit_kmeans`."""
        vectors = _input_vectors(data, self)
        codes, distances = _nearest(self.project(vectors), self.codebook.double())
        return _usage(codes, distances, self.codebook_size)

    def distortion(self, data: FeatureData) -> float:
        """Mean squared distance of the data to their nearest codewords, in the codebook's space."""
        return self.measure_usage(data).distortion

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable settings (tensors live in the safetensors file)."""
        return {
            "format_version": _FORMAT_VERSION,
            "input_type": self.input_type,
            "codebook_size": self.codebook_size,
            "input_dim": self.input_dim,
            "code_dim": self.codebook.shape[1],
            "num_mel_bins": self.num_mel_bins,
            "frontend_num_layers": self.frontend_num_layers,
            "frontend_kernel_size": self.frontend_kernel_size,
            "frontend_stride": self.frontend_stride,
            "l2_normalize": self.l2_normalize,
            "method": self.method,
            "seed": self.seed,
            "pad_value": CODE_PAD_VALUE,
            "usage": None if self.usage is None else asdict(self.usage),
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write ``speech_codebook.safetensors`` and ``speech_codebook.json``; returns their paths."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"codebook": self.codebook, "mean": self.mean, "std": self.std}
        if self.projection is not None:
            tensors["projection"] = self.projection
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, directory / CODEBOOK_WEIGHTS_NAME)
        (directory / CODEBOOK_CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        record_checksums(directory, (CODEBOOK_WEIGHTS_NAME,))
        return [str(directory / CODEBOOK_WEIGHTS_NAME), str(directory / CODEBOOK_CONFIG_NAME)]

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Mu2SlamSpeechCodebook:
        """Load a codebook written by :meth:`save_pretrained`."""
        directory = Path(directory)
        config_path, weights_path = directory / CODEBOOK_CONFIG_NAME, directory / CODEBOOK_WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: save a codebook there with `save_pretrained` first.")
        config = json.loads(config_path.read_text())
        if config.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"{config_path} has format_version {config.get('format_version')}, expected {_FORMAT_VERSION}."
            )
        tensors = load_file(weights_path)
        usage = config.get("usage")
        return cls(
            tensors["codebook"],
            input_type=config["input_type"],
            mean=tensors["mean"],
            std=tensors["std"],
            projection=tensors.get("projection"),
            l2_normalize=config["l2_normalize"],
            num_mel_bins=config["num_mel_bins"],
            frontend_num_layers=config["frontend_num_layers"],
            frontend_kernel_size=config["frontend_kernel_size"],
            frontend_stride=config["frontend_stride"],
            method=config["method"],
            seed=config["seed"],
            usage=None if usage is None else CodebookUsage(**usage),
        )

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, input_type={self.input_type}, codebook_size={self.codebook_size}, "
            f"input_dim={self.input_dim}, code_dim={self.codebook.shape[1]}"
        )


def stack_log_mel_frames(
    input_features: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    num_mel_bins: int = 80,
    frontend_num_layers: int = 2,
    frontend_kernel_size: int = 3,
    frontend_stride: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack log-mel frames over each speech front-end output's receptive field.

    Output position ``t`` stacks frames ``[t * hop, t * hop + window)`` with ``window = receptive_field(...)``
    (7) and ``hop = frontend_stride ** frontend_num_layers`` (4): exactly the frames front-end output ``t`` sees.

    Args:
        input_features: ``(batch, frames, num_mel_bins)``.
        attention_mask: ``(batch, frames)``, 1 = real frame (right padding); default all real.

    Returns:
        ``(batch, positions, window * num_mel_bins)`` stacked frames (time-major within a window) and the
        ``(batch, positions)`` bool mask of real positions, with ``positions = max(subsampled_lengths(frames), 0)``.
    """
    if input_features.ndim != 3 or input_features.shape[-1] != num_mel_bins:
        raise ValueError(
            f"input_features must have shape (batch, frames, {num_mel_bins}), got {tuple(input_features.shape)}."
        )
    geometry = (frontend_num_layers, frontend_kernel_size, frontend_stride)
    window, hop = receptive_field(*geometry), frontend_stride**frontend_num_layers
    batch, frames, _ = input_features.shape
    positions = max(subsampled_lengths(frames, *geometry), 0)
    if positions == 0:
        stacked = input_features.new_zeros(batch, 0, window * num_mel_bins)
    else:  # (batch, positions, bins, window) -> (batch, positions, window * bins)
        windows = input_features.unfold(1, window, hop)
        stacked = windows.transpose(2, 3).reshape(batch, positions, window * num_mel_bins)
    if attention_mask is None:
        lengths = torch.full((batch,), frames, device=input_features.device)
    else:
        lengths = attention_mask.long().sum(-1)
    real = (
        torch.arange(positions, device=input_features.device)[None, :]
        < subsampled_lengths(lengths, *geometry)[:, None]
    )
    return stacked, real


# ---------------------------------------------------------------------- builders


def build_best_rq(
    seed: int = 0,
    codebook_size: int = 1024,
    *,
    code_dim: int = 16,
    num_mel_bins: int = 80,
    frontend_num_layers: int = 2,
    frontend_kernel_size: int = 3,
    frontend_stride: int = 2,
    normalization_data: FeatureData | None = None,
) -> Mu2SlamSpeechCodebook:
    """A BEST-RQ codebook: seeded Xavier-normal projection of normalised stacked log-mel frames to ``code_dim``
    dims, and a seeded random unit-norm codebook; the projected vector is L2-normalised before the search.

    Args:
        seed: everything random comes from ``torch.Generator().manual_seed(seed)`` on the CPU.
        codebook_size: number of codes.
        code_dim: dimension of the projection and the codewords (BEST-RQ: 16).
        num_mel_bins / frontend_*: the log-mel input and the front end whose positions the codes align with.
        normalization_data: optional log-mel corpus (see :func:`fit_kmeans`) for the per-dimension mean/std of
            the stacked frames and a usage report. Without it mean 0 / std 1 are used, which assumes features
            already normalised per mel bin (``Mu2SlamFeatureExtractor(do_normalize=True)``).

    Returns:
        The codebook; identical when rebuilt with the same arguments.
    """
    generator = torch.Generator().manual_seed(seed)
    window = receptive_field(frontend_num_layers, frontend_kernel_size, frontend_stride)
    input_dim = window * num_mel_bins
    projection = torch.randn(input_dim, code_dim, generator=generator) * math.sqrt(2.0 / (input_dim + code_dim))
    codewords = nn.functional.normalize(torch.randn(codebook_size, code_dim, generator=generator), dim=-1)
    geometry = dict(
        num_mel_bins=num_mel_bins,
        frontend_num_layers=frontend_num_layers,
        frontend_kernel_size=frontend_kernel_size,
        frontend_stride=frontend_stride,
    )
    mean = std = vectors = None
    if normalization_data is not None:
        vectors = _stacked_log_mel_vectors(normalization_data, geometry)
        mean, std = _mean_std(vectors)
    codebook = Mu2SlamSpeechCodebook(
        codewords,
        mean=mean,
        std=std,
        projection=projection,
        l2_normalize=True,
        method="best_rq",
        seed=seed,
        **geometry,
    )
    if vectors is not None:
        codebook.usage = codebook.measure_usage(vectors)
        logger.info(f"BEST-RQ codebook (seed {seed}) usage: {codebook.usage}")
    return codebook


def fit_kmeans(
    data: FeatureData,
    codebook_size: int = 1024,
    *,
    num_iters: int = 10,
    seed: int = 0,
    normalize: bool = True,
    init_sample_size: int | None = None,
    num_mel_bins: int = 80,
    frontend_num_layers: int = 2,
    frontend_kernel_size: int = 3,
    frontend_stride: int = 2,
) -> Mu2SlamSpeechCodebook:
    """Fit a codebook with k-means (k-means++ init, then ``num_iters`` Lloyd iterations) on the CPU.

    Args:
        data: either an ``(N, D)`` tensor/array of vectors (e.g. encoder hidden states at real positions): the
            codebook then has ``input_type="vectors"``; or log-mel features: an iterable whose items are one
            utterance ``(frames, num_mel_bins)``, a batch ``(batch, frames, num_mel_bins)``, a
            ``(features, attention_mask)`` pair or a mapping with ``input_features`` (and ``attention_mask``), or
            a 3-D tensor (one batch). Log-mel frames are stacked like the front end's receptive field.
        codebook_size: number of codes; ``data`` must hold at least this many vectors.
        num_iters: Lloyd iterations (stops early when assignments no longer change).
        seed: seed of the k-means++ sampling; the result is deterministic given data and seed.
        normalize: fit on per-dimension standardised vectors (the statistics are stored in the codebook).
        init_sample_size: vectors the k-means++ init samples from (default ``min(N, 32 * codebook_size)``).

    Returns:
        The fitted codebook, with its usage report on ``data`` in ``.usage`` (also logged).
    """
    geometry = dict(
        num_mel_bins=num_mel_bins,
        frontend_num_layers=frontend_num_layers,
        frontend_kernel_size=frontend_kernel_size,
        frontend_stride=frontend_stride,
    )
    if isinstance(data, (torch.Tensor, np.ndarray)) and data.ndim == 2:
        input_type: InputType = "vectors"
        vectors = torch.as_tensor(data).float()
    else:
        input_type = "stacked_log_mel"
        vectors = _stacked_log_mel_vectors(data, geometry)
    if vectors.shape[0] < codebook_size:
        raise ValueError(
            f"k-means with codebook_size={codebook_size} needs at least that many vectors, got {vectors.shape[0]}: "
            "give more data or a smaller codebook."
        )
    mean, std = _mean_std(vectors) if normalize else (None, None)
    normalized = vectors if mean is None else (vectors - mean) / std
    centroids = kmeans(normalized, codebook_size, num_iters=num_iters, seed=seed, init_sample_size=init_sample_size)
    codebook = Mu2SlamSpeechCodebook(
        centroids, input_type=input_type, mean=mean, std=std, method="kmeans", seed=seed, **geometry
    )
    codebook.usage = codebook.measure_usage(vectors)
    logger.info(f"k-means codebook ({num_iters} iterations, seed {seed}) usage: {codebook.usage}")
    return codebook


def kmeans(
    vectors: torch.Tensor,
    num_clusters: int,
    *,
    num_iters: int = 10,
    seed: int = 0,
    init_sample_size: int | None = None,
    chunk_size: int = 8192,
) -> torch.Tensor:
    """k-means on ``(N, D)`` float vectors: k-means++ init on a seeded subsample, then Lloyd iterations.

    Empty clusters are re-seeded with the vectors farthest from their centroids. Deterministic given ``seed``.

    Returns:
        ``(num_clusters, D)`` float32 centroids.
    """
    vectors = vectors.float()
    generator = torch.Generator().manual_seed(seed)
    sample_size = min(vectors.shape[0], init_sample_size or 32 * num_clusters)
    sample = vectors[torch.randperm(vectors.shape[0], generator=generator)[:sample_size]]
    centroids = _kmeans_plus_plus(sample, num_clusters, generator)
    assignment = None
    for _ in range(num_iters):
        new_assignment, distances = _nearest_chunked(vectors, centroids, chunk_size)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        centroids = _update_centroids(vectors, assignment, distances, centroids)
    return centroids


# ---------------------------------------------------------------------- internals


def _nearest(vectors: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, D)``, ``(K, D)`` -> nearest code ``(N,)`` and its squared distance ``(N,)``."""
    distances = vectors.square().sum(-1, keepdim=True) - 2 * vectors @ codebook.T + codebook.square().sum(-1)[None, :]
    best, codes = distances.min(-1)
    return codes, best.clamp_min(0)


def _nearest_chunked(
    vectors: torch.Tensor, codebook: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [_nearest(chunk, codebook) for chunk in vectors.split(chunk_size)]
    return torch.cat([codes for codes, _ in pairs]), torch.cat([dist for _, dist in pairs])


def _kmeans_plus_plus(vectors: torch.Tensor, num_clusters: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centroid sampled with probability proportional to its squared distance."""
    first = torch.randint(vectors.shape[0], (1,), generator=generator)
    centroids = [vectors[first[0]]]
    closest = (vectors - centroids[0]).square().sum(-1)
    for _ in range(1, num_clusters):
        total = closest.sum()
        if total > 0:
            index = torch.multinomial(closest / total, 1, generator=generator)[0]
        else:  # fewer distinct vectors than clusters: duplicates are all that is left
            index = torch.randint(vectors.shape[0], (1,), generator=generator)[0]
        centroids.append(vectors[index])
        closest = torch.minimum(closest, (vectors - vectors[index]).square().sum(-1))
    return torch.stack(centroids)


def _update_centroids(
    vectors: torch.Tensor, assignment: torch.Tensor, distances: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """Lloyd update; an empty cluster takes the vector currently worst served by its own centroid."""
    num_clusters = centroids.shape[0]
    sums = torch.zeros_like(centroids, dtype=torch.float64).index_add_(0, assignment, vectors.double())
    counts = torch.bincount(assignment, minlength=num_clusters)
    updated = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids.double()).float()
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        farthest = distances.topk(min(empty.numel(), distances.numel())).indices
        updated[empty[: farthest.numel()]] = vectors[farthest]
    return updated


def _mean_std(vectors: torch.Tensor, min_std: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    vectors = vectors.double()
    return vectors.mean(0).float(), vectors.std(0, unbiased=False).clamp_min(min_std).float()


def _usage(codes: torch.Tensor, distances: torch.Tensor, codebook_size: int) -> CodebookUsage:
    counts = torch.bincount(codes, minlength=codebook_size).double()
    probabilities = counts / counts.sum().clamp_min(1)
    entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
    return CodebookUsage(
        num_vectors=int(codes.numel()),
        codebook_size=codebook_size,
        perplexity=float(entropy.exp()),
        dead_codes=int((counts == 0).sum()),
        distortion=float(distances.mean()) if distances.numel() else 0.0,
    )


def _input_vectors(data: FeatureData, codebook: Mu2SlamSpeechCodebook) -> torch.Tensor:
    """``(N, input_dim)`` vectors in the codebook's input space from an ``(N, D)`` tensor or a log-mel corpus."""
    if isinstance(data, (torch.Tensor, np.ndarray)) and data.ndim == 2:
        vectors = torch.as_tensor(data)
        if vectors.shape[1] != codebook.input_dim:
            raise ValueError(f"Expected (N, {codebook.input_dim}) vectors, got {tuple(vectors.shape)}.")
        return vectors
    if codebook.input_type != "stacked_log_mel":
        raise ValueError("A 'vectors' codebook measures usage on an (N, input_dim) tensor of vectors.")
    return _stacked_log_mel_vectors(data, codebook._geometry())


def _stacked_log_mel_vectors(data: FeatureData, geometry: dict[str, int]) -> torch.Tensor:
    """All real stacked windows of a log-mel corpus, ``(N, window * num_mel_bins)`` float32."""
    chunks = []
    for features, mask in _feature_batches(data):
        stacked, real = stack_log_mel_frames(features.float(), mask, **geometry)
        chunks.append(stacked[real])
    if not chunks:
        raise ValueError("Got no log-mel features: pass a non-empty iterable of utterances or batches.")
    return torch.cat(chunks)


def _feature_batches(data: FeatureData) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    """Normalise the accepted log-mel corpus forms to ``(features (B, T, F), mask (B, T) or None)`` batches."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        if data.ndim != 3:
            raise ValueError(f"A log-mel tensor must be a (batch, frames, bins) batch, got shape {tuple(data.shape)}.")
        yield torch.as_tensor(data), None
        return
    for item in data:
        if isinstance(item, Mapping):
            features, mask = item["input_features"], item.get("attention_mask")
        elif isinstance(item, (tuple, list)):
            features, mask = item
        else:
            features, mask = item, None
        features = torch.as_tensor(features)
        mask = None if mask is None else torch.as_tensor(mask)
        if features.ndim == 2:
            features, mask = features[None], None if mask is None else mask[None]
        yield features, mask


__all__ = [
    "CODE_PAD_VALUE",
    "CodebookUsage",
    "Mu2SlamSpeechCodebook",
    "build_best_rq",
    "fit_kmeans",
    "kmeans",
    "stack_log_mel_frames",
]
