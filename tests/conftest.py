import copy
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tests run under xdist with one worker per core

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS = REPO_ROOT / "configuration" / "models"
# The environment of `accelerate launch --config_file configuration/accelerate/cpu_ddp.yaml` in a subprocess.
# Accelerate's multi-process launcher does not pass the config's `use_cpu` to its workers: on a machine with a GPU
# they pick NCCL, and a barrier names GPU <local rank> ("invalid device ordinal" with fewer GPUs than processes).
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}
# Whether the tests' training runs (in-process or in a benchmark's subprocess) are on a GPU: accelerate's default.
ON_CUDA = torch.cuda.is_available()


@pytest.fixture
def tiny_config():
    from mu2slam_hf import Mu2SlamConfig

    return Mu2SlamConfig.from_pretrained(PRESETS / "tiny")


def make_model(config, attn_implementation: str = "sdpa", seed: int = 0):
    from mu2slam_hf import Mu2SlamForConditionalGeneration

    torch.manual_seed(seed)
    # A model keeps (and `_from_config` sets the attention implementation on) the config it is given: a copy, so
    # two models made from one config can differ (eager vs sdpa) and later changes to the config reach neither.
    config = copy.deepcopy(config)
    return Mu2SlamForConditionalGeneration._from_config(config, attn_implementation=attn_implementation).eval()


def random_batch(config, lengths=(120, 87), seed: int = 0):
    """Random log-mel features (B, T, F) with a padded mask for the given frame counts."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(lengths), max(lengths), config.num_mel_bins, generator=generator)
    mask = (torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(-1)).long()
    return features * mask.unsqueeze(-1), mask


def free_port() -> str:
    """A TCP port nothing listens on now, for a test's own process group (a fixed port can meet another run's)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])
