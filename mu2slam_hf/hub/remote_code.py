"""The smoke run, with the installed package and with the folder's remote code alone.

`remote_code_transcription` is the check that a seq2seq folder loads without mu2slam_hf: a fresh `python -I` process
that cannot import the package loads it with `trust_remote_code=True` and runs the ASR pipeline.
`remote_code_speech_embedding` is the same check for a retrieval folder: AutoModel + `encode_speech` of the clip.
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
# The largest |remote code - installed package| a retrieval model's smoke speech embedding may differ by.
EMBEDDING_TOLERANCE = 1e-5


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


def local_speech_embedding(model: Any, processor: Any, audio: np.ndarray, src_lang: str) -> np.ndarray:
    """(E,) `Mu2SlamForRetrieval.encode_speech` embedding of `audio` with the installed package's classes."""
    import torch

    inputs = processor.feature_extractor(audio.copy(), sampling_rate=SMOKE_SAMPLING_RATE, return_tensors="pt")
    with torch.no_grad():
        embedding = model.encode_speech(inputs["input_features"], inputs["attention_mask"], src_lang=src_lang)
    return embedding[0].float().numpy()


# Runs in `python -I` (no PYTHONPATH, no user site, no cwd on sys.path); the finder hides mu2slam_hf however it
# is installed (editable hook, site-packages or a checkout), so only the folder's remote code can be used.
# Modes: "asr" (AutoModelForSpeechSeq2Seq + the ASR pipeline: the transcription) and "retrieval" (AutoModel +
# encode_speech: the speech embedding).
_REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class _HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mu2slam_hf" or name.startswith("mu2slam_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden to test the remote code)")
            return None

    sys.meta_path.insert(0, _HidePackage())
    folder, audio_file, src_lang, mode = sys.argv[1:5]

    def stage(name):
        print("STAGE", name, flush=True)

    import numpy as np
    import torch
    import transformers
    from transformers import AutoConfig, AutoProcessor, pipeline

    auto_class, model_class = {
        "asr": ("AutoModelForSpeechSeq2Seq", "Mu2SlamForConditionalGeneration"),
        "retrieval": ("AutoModel", "Mu2SlamForRetrieval"),
    }[mode]
    stage("config (config.json auto_map -> configuration_mu2slam.py)")
    AutoConfig.from_pretrained(folder, trust_remote_code=True)
    stage("model (auto_map -> modeling_mu2slam.py, model.safetensors)")
    model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == model_class, f"{auto_class} loads {type(model)}, not {model_class}"
    stage("processor (processor_config.json auto_map -> processing_mu2slam.py, speech codebook)")
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert processor.speech_codebook is not None, "speech codebook not loaded"
    audio = np.load(audio_file)
    if mode == "asr":
        stage("pipeline('automatic-speech-recognition') smoke run")
        asr = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
        result = {"text": asr(audio, generate_kwargs={"src_lang": src_lang})["text"]}
    else:
        stage("encode_speech smoke run (feature extractor -> model.encode_speech)")
        inputs = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            embedding = model.encode_speech(inputs["input_features"], inputs["attention_mask"], src_lang=src_lang)
        result = {"embedding": embedding[0].float().tolist()}
    assert "mu2slam_hf" not in sys.modules
    print("RESULT", json.dumps(result), flush=True)
    """
)


def remote_code_transcription(folder: str | os.PathLike, audio: np.ndarray, src_lang: str) -> str:
    """Load `folder` with trust_remote_code=True in a fresh process that cannot import mu2slam_hf, and run the ASR
    pipeline on `audio`. A PublishError names the part that failed."""
    return _run_remote_code(folder, audio, src_lang, "asr")["text"]


def remote_code_speech_embedding(folder: str | os.PathLike, audio: np.ndarray, src_lang: str) -> np.ndarray:
    """Load the retrieval model `folder` with trust_remote_code=True (AutoModel, AutoProcessor) in a fresh process
    that cannot import mu2slam_hf; return its (E,) `encode_speech` embedding of `audio`. A PublishError names the
    part that failed."""
    return np.asarray(_run_remote_code(folder, audio, src_lang, "retrieval")["embedding"], dtype=np.float32)


def _run_remote_code(folder: str | os.PathLike, audio: np.ndarray, src_lang: str, mode: str) -> dict[str, Any]:
    """Run `_REMOTE_CODE_SCRIPT` in `mode` on `folder` and `audio`; return its RESULT, or raise a PublishError
    naming the last stage it reached."""
    with tempfile.TemporaryDirectory(prefix="mu2slam-remote-code-") as scratch:
        audio_file = Path(scratch) / "audio.npy"
        np.save(audio_file, audio)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        # A private modules cache: remote code cached from an earlier folder with the same file names is never used.
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(Path(scratch) / "modules"), TOKENIZERS_PARALLELISM="false")
        command = [sys.executable, "-I", "-c", _REMOTE_CODE_SCRIPT, str(Path(folder).resolve()), str(audio_file)]
        try:
            result = subprocess.run(
                [*command, src_lang, mode],
                capture_output=True,
                text=True,
                env=env,
                cwd=scratch,
                timeout=SMOKE_TIMEOUT_S,
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
    return json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT ") :])
