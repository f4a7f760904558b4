"""The README's main job, in its quick mode: data -> pre-training -> gradual + noisy fine-tuning -> eval -> report."""

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "training_scripts" / "demo.py"), "--output_dir", str(tmp_path), "--quick"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = (tmp_path / "report.md").read_text()
    for section in (
        "synthetic test",
        "real speech test",
        "pipeline() on test audio",
        "ASR WER",
        "AST BLEU",
        "MT BLEU",
    ):
        assert section in report, section
    assert (tmp_path / "losses.png").stat().st_size > 10_000
    for stage in ("pt", "ft1", "ft2", "ft2-noisy"):
        assert (tmp_path / stage / "model.safetensors").exists()
    noisy = json.loads((tmp_path / "ft2-noisy" / "config.json").read_text())
    assert noisy["decoder_noise_ratio"] == 0.06 and noisy["apply_spec_augment"] is True
    evaluation = json.loads((tmp_path / "ft1" / "eval_synth.json").read_text())
    assert {m["task"] for m in evaluation["metrics"]} == {"asr", "ast", "mt"}
