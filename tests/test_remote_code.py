"""A saved folder loads with trust_remote_code=True in a fresh virtual environment without mu2slam_hf."""

import json
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest
import torch
from conftest import make_model, random_batch

import mu2slam_hf  # noqa: F401


def venv_with_dependencies(root: Path) -> Path:
    """A new venv at `root` that sees the installed dependencies (torch, transformers, pip) but not mu2slam_hf.

    Its .pth file adds our site-packages to sys.path without running the .pth files there, so the editable
    install's import hook for mu2slam_hf is absent: exactly a machine with the dependencies and no package.
    Returns its python.
    """
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    site = subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(site.decode().strip()) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory):
    """A venv with the dependencies and without the mu2slam_hf package (`venv_with_dependencies`)."""
    root = tmp_path_factory.mktemp("fresh-venv")
    python = venv_with_dependencies(root)
    probe = subprocess.run([python, "-c", "import mu2slam_hf"], capture_output=True, text=True, cwd=root)
    assert probe.returncode != 0 and "No module named 'mu2slam_hf'" in probe.stderr
    return python


@pytest.mark.slow
def test_remote_code_load_without_the_package(tiny_config, tmp_path, fresh_python):
    model = make_model(tiny_config)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModel", "AutoModelForSpeechSeq2Seq", "AutoModelForSeq2SeqLM"} <= set(auto_map)

    features, mask = random_batch(tiny_config)
    torch.save({"features": features, "mask": mask}, tmp_path / "inputs.pt")
    expected = model.generate(
        input_features=features, attention_mask=mask, src_lang="fr", tgt_lang="en", max_new_tokens=8
    )

    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForSpeechSeq2Seq, AutoModelForSeq2SeqLM, AutoModel
        assert "mu2slam_hf" not in sys.modules
        model = AutoModelForSpeechSeq2Seq.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "Mu2SlamForConditionalGeneration", type(model)
        AutoModelForSeq2SeqLM.from_pretrained({str(folder)!r}, trust_remote_code=True)
        AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        ids = model.generate(input_features=inputs["features"], attention_mask=inputs["mask"], src_lang="fr",
                             tgt_lang="en", max_new_tokens=8)
        print("IDS", ids.tolist())
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [fresh_python, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ids_line = next(line for line in result.stdout.splitlines() if line.startswith("IDS"))
    assert ids_line == f"IDS {expected.tolist()}"
    assert sys.modules["mu2slam_hf"]  # the package stayed loaded here, not there
