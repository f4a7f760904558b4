"""The smoke transcription, with the installed package and with the folder's remote code alone.

`remote_code_transcription` is the check that the folder loads without mu2slam_hf: a fresh `python -I` process that
cannot import the package loads it with `trust_remote_code=True` and runs the ASR pipeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from ..vocabulary import SAMPLING_RATE
from .errors import PublishError

SMOKE_SAMPLING_RATE = SAMPLING_RATE
SMOKE_TIMEOUT_S = 600


def smoke_audio(audio_path: str | os.PathLike | None = None) -> np.ndarray:
    """The smoke-test utterance: a 16 kHz mono file, or a synthetic 1-second two-tone clip."""
    if audio_path is None:
        time = np.arange(SMOKE_SAMPLING_RATE) / SMOKE_SAMPLING_RATE
        return (0.3 * np.sin(2 * np.pi * 220 * time) + 0.2 * np.sin(2 * np.pi * 1320 * time)).astype(np.float32)
    import soundfile

    audio, rate = soundfile.read(str(audio_path), dtype="float32", always_2d=True)
    if rate != SMOKE_SAMPLING_RATE:
        raise PublishError(f"Smoke-test audio {str(audio_path)!r} is {rate} Hz: give a 16 kHz file.")
    return audio.mean(axis=1)


def local_transcription(model: Any, processor: Any, audio: np.ndarray, src_lang: str) -> str:
    """What the ASR pipeline says for `audio` with the installed package's classes."""
    from transformers import pipeline

    asr = pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
    )
    return asr(audio.copy(), generate_kwargs={"src_lang": src_lang})["text"]


# Runs in `python -I` (no PYTHONPATH, no user site, no cwd on sys.path); the finder hides mu2slam_hf however it
# is installed (editable hook, site-packages or a checkout), so only the folder's remote code can be used.
_REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class _HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mu2slam_hf" or name.startswith("mu2slam_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden to test the remote code)")
            return None

    sys.meta_path.insert(0, _HidePackage())
    folder, audio_file, src_lang = sys.argv[1:4]

    def stage(name):
        print("STAGE", name, flush=True)

    import numpy as np
    from transformers import AutoConfig, AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline

    stage("config (config.json auto_map -> configuration_mu2slam.py)")
    AutoConfig.from_pretrained(folder, trust_remote_code=True)
    stage("model (auto_map -> modeling_mu2slam.py, model.safetensors)")
    model = AutoModelForSpeechSeq2Seq.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "Mu2SlamForConditionalGeneration", type(model)
    stage("processor (processor_config.json auto_map -> processing_mu2slam.py, speech codebook)")
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert processor.speech_codebook is not None, "speech codebook not loaded"
    stage("pipeline('automatic-speech-recognition') smoke run")
    asr = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
    text = asr(np.load(audio_file), generate_kwargs={"src_lang": src_lang})["text"]
    assert "mu2slam_hf" not in sys.modules
    print("RESULT", json.dumps({"text": text}), flush=True)
    """
)


def remote_code_transcription(folder: str | os.PathLike, audio: np.ndarray, src_lang: str) -> str:
    """Load `folder` with trust_remote_code=True in a fresh process that cannot import mu2slam_hf, and run the ASR
    pipeline on `audio`. A PublishError names the part that failed."""
    with tempfile.TemporaryDirectory(prefix="mu2slam-remote-code-") as scratch:
        audio_file = Path(scratch) / "audio.npy"
        np.save(audio_file, audio)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        # A private modules cache: remote code cached from an earlier folder with the same file names is never used.
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(Path(scratch) / "modules"), TOKENIZERS_PARALLELISM="false")
        command = [sys.executable, "-I", "-c", _REMOTE_CODE_SCRIPT, str(Path(folder).resolve()), str(audio_file)]
        try:
            result = subprocess.run(
                [*command, src_lang], capture_output=True, text=True, env=env, cwd=scratch, timeout=SMOKE_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as error:
            raise PublishError(f"Loading the remote code timed out after {SMOKE_TIMEOUT_S} s.") from error
    lines = result.stdout.splitlines()
    if result.returncode != 0 or not any(line.startswith("RESULT ") for line in lines):
        stages = [line.removeprefix("STAGE ") for line in lines if line.startswith("STAGE ")]
        failed = stages[-1] if stages else "starting Python with transformers"
        raise PublishError(
            f"The folder does not load with trust_remote_code=True in a fresh process without mu2slam_hf: "
            f"{failed} failed.\n{result.stderr[-3000:]}\nSave the model and processor again with the current "
            "mu2slam_hf (`model.save_pretrained`, `processor.save_pretrained`), which writes the remote-code files."
        )
    return json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT ") :])["text"]
