"""Publishing: model card, dry run, one-commit upload to a local stand-in for the Hub, and loading back.

The stand-in (`HubStandIn`) is an in-process HTTP server on 127.0.0.1 that speaks the endpoints huggingface_hub 2.4
calls for `create_repo` + `create_commit` (create repo, validate-yaml, preupload, LFS batch + basic PUT upload,
NDJSON commit) and for downloads (`model_info`, HEAD/GET `resolve`). It stores every repository in a temp dir.
The pushing process gets `HF_ENDPOINT` pointing at it (set before huggingface_hub is imported: a subprocess) and
`HF_HUB_DISABLE_XET=1` (the stand-in speaks the classic LFS protocol, not Xet).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
import yaml
from conftest import PRESETS, REPO_ROOT
from test_remote_code import fresh_python, venv_with_dependencies  # noqa: F401  (fresh_python: module fixture)

from mu2slam_hf import (
    Mu2SlamConfig,
    Mu2SlamFeatureExtractor,
    Mu2SlamForConditionalGeneration,
    Mu2SlamForRetrieval,
    Mu2SlamProcessor,
    Mu2SlamRetrievalConfig,
    build_best_rq,
    train_char_tokenizer,
)
from mu2slam_hf.cli import push_to_hub as push_to_hub_cli
from mu2slam_hf.evaluation import METRIC_ORDER, RETRIEVAL_METRICS, TASK_ORDER, make_results, write_results
from mu2slam_hf.hub import (
    MODEL_CARD_TEMPLATE,
    CardInputs,
    PublishError,
    folder_digest,
    load_locally,
    load_recipes,
    load_results,
    publish,
    render_model_card,
)
from mu2slam_hf.hub.card import HUB_TASKS, METRIC_LABELS

WORDS = ["hello", "good day", "thanks"]
TONES_HZ = (300, 900, 2500)
RATE = 16000
REPO_ID = "me/mu2slam-tiny-synth"
TOKEN = "hf_dummy_token_for_the_stand_in"
PUSH_SCRIPT = REPO_ROOT / "training_scripts" / "push_to_hub.py"

# ------------------------------------------------------------------------------------- Hub stand-in


@dataclass
class StoredRepo:
    files: dict[str, bytes]
    lfs: set[str]
    commits: list[str]
    private: bool


class HubStandIn(ThreadingHTTPServer):
    """State of the stand-in Hub: repositories, LFS objects and a log of every request."""

    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.root = root
        self.repos: dict[str, StoredRepo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.routes_hit: set[str] = set()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def write_out(self, repo_id: str) -> Path:
        """The repository's files under `root/repo_id`, as the Hub would serve them."""
        folder = self.root / repo_id
        shutil.rmtree(folder, ignore_errors=True)
        for path, content in self.repos[repo_id].files.items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(content)
        return folder


ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$"), "lfs_upload"),
    ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(/revision/(?P<rev>[^/]+))?$"), "model_info"),
    ("GET", re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubStandIn

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # ---------------------------------------------------------------------------------------- plumbing

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?")[0]
        self.server.requests.append((method, path))
        for route_method, pattern, name in ROUTES:
            match = pattern.match(path)
            if route_method == method and match:
                self.server.routes_hit.add(f"{method} {name}")
                with self.server.lock:
                    getattr(self, name)(**{k: v for k, v in match.groupdict().items() if v is not None})
                return
        self.server.unknown.append((method, path))
        self._send(404, {"error": f"stand-in Hub: no route for {method} {path}"})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if raw is None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self._body()
        self._send(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def _repo(self, repo: str) -> StoredRepo | None:
        if repo not in self.server.repos:
            self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None
        return self.server.repos[repo]

    # --------------------------------------------------------------------------------------- endpoints

    def create_repo(self) -> None:
        if not self._authorized():
            return
        payload = json.loads(self._body())
        repo_id = f"{payload.get('organization') or 'me'}/{payload['name']}"
        if repo_id in self.server.repos:
            self._send(409, {"error": "You already created this model repo", "url": f"{self.server.url}/{repo_id}"})
            return
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.server.repos[repo_id] = StoredRepo({}, set(), [], private)
        self._send(200, {"url": f"{self.server.url}/{repo_id}", "name": repo_id})

    def validate_yaml(self) -> None:
        content = json.loads(self._body())["content"]
        try:
            yaml.safe_load(content.split("---")[1])
        except (yaml.YAMLError, IndexError) as error:
            self._send(400, {"error": f"Invalid YAML metadata: {error}"})
            return
        self._send(200, {"errors": [], "warnings": []})

    def preupload(self, repo: str, rev: str) -> None:
        if not self._authorized() or self._repo(repo) is None:
            return
        files = json.loads(self._body())["files"]
        # Like the Hub's default .gitattributes: weights go through LFS, small text files are committed inline.
        modes = [
            {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular"}
            for f in files
        ]
        self._send(200, {"files": [{**m, "shouldIgnore": False, "oid": None} for m in modes]})

    def lfs_batch(self, repo: str) -> None:
        if not self._authorized() or self._repo(repo) is None:
            return
        payload = json.loads(self._body())
        assert payload["operation"] == "upload" and "basic" in payload["transfers"], payload
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.server.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.server.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def lfs_upload(self, oid: str) -> None:
        content = self._body()
        if hashlib.sha256(content).hexdigest() != oid:
            self._send(400, {"error": "sha256 mismatch"})
            return
        self.server.lfs_objects[oid] = content
        self._send(200, raw=b"")

    def commit(self, repo: str, rev: str) -> None:
        if not self._authorized() or (stored := self._repo(repo)) is None:
            return
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        assert lines[0]["key"] == "header", lines[0]
        for item in lines[1:]:
            value = item["value"]
            if item["key"] == "file":
                stored.files[value["path"]] = base64.b64decode(value["content"])
                stored.lfs.discard(value["path"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.server.lfs_objects:
                    self._send(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                    return
                stored.files[value["path"]] = self.server.lfs_objects[value["oid"]]
                stored.lfs.add(value["path"])
            else:
                self._send(400, {"error": f"stand-in Hub: unsupported commit operation {item['key']}"})
                return
        sha = hashlib.sha1(json.dumps([lines[0], sorted(stored.files)]).encode() + os.urandom(8)).hexdigest()
        stored.commits.append(sha)
        self._send(200, {"commitUrl": f"{self.server.url}/{repo}/commit/{sha}", "commitOid": sha})

    def model_info(self, repo: str, rev: str = "main") -> None:
        if (stored := self._repo(repo)) is None:
            return
        sha = stored.commits[-1] if stored.commits else None
        siblings = [{"rfilename": path} for path in sorted(stored.files)]
        self._send(200, {"id": repo, "modelId": repo, "sha": sha, "private": stored.private, "siblings": siblings})

    def resolve(self, repo: str, rev: str, path: str) -> None:
        if (stored := self._repo(repo)) is None:
            return
        if path not in stored.files:
            self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            return
        content = stored.files[path]
        headers = {"X-Repo-Commit": stored.commits[-1], "ETag": f'"{_git_blob_sha1(content)}"'}
        if path in stored.lfs:
            headers.update(
                {"X-Linked-Etag": f'"{hashlib.sha256(content).hexdigest()}"', "X-Linked-Size": str(len(content))}
            )
        self._send(200, headers=headers, raw=content)


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@pytest.fixture
def hub(tmp_path):
    server = HubStandIn(tmp_path / "hub")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def hub_env(server: HubStandIn, home: Path, token: str | None = TOKEN) -> dict[str, str]:
    """Environment of a process that talks to the stand-in (and to no real Hub)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
    if token is not None:
        env["HF_TOKEN"] = token
    return env


# ---------------------------------------------------------------------------------------- trained model


def clips() -> list[np.ndarray]:
    time = np.arange(RATE) / RATE
    return [(0.5 * np.sin(2 * np.pi * hz * time)).astype(np.float32) for hz in TONES_HZ]


def train_tiny_model(max_steps: int = 400):
    """A tiny model that says WORDS[i] for tone i: AdamW until greedy decoding returns the words."""
    tokenizer = train_char_tokenizer(WORDS, vocab_size=64)
    config = Mu2SlamConfig.from_pretrained(PRESETS / "tiny", text_vocab_size=len(tokenizer))
    codebook = build_best_rq(seed=0, codebook_size=config.codebook_size)
    processor = Mu2SlamProcessor(Mu2SlamFeatureExtractor(), tokenizer, codebook, languages=config.languages)
    batch = processor(audio=clips(), sampling_rate=RATE, src_lang="en", tgt_lang="en", text_target=WORDS)
    torch.manual_seed(0)
    model = Mu2SlamForConditionalGeneration(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(max_steps):
        model.train()
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 24 and decode(model.eval(), processor, batch) == WORDS:
            return model, processor
    raise AssertionError(
        f"the tiny model did not learn {WORDS} in {max_steps} steps: {decode(model, processor, batch)}"
    )


def decode(model, processor, batch) -> list[str]:
    ids = model.generate(input_features=batch["input_features"], attention_mask=batch["attention_mask"], src_lang="en")
    return processor.batch_decode(ids, skip_special_tokens=True)


EVAL = {
    "model": "runs/tiny-synth",
    "data": "data/synthetic/test",
    "split": "test",
    "metrics": [
        {"task": "asr", "source_lang": "en", "target_lang": "en", "name": "wer", "value": 0.0, "num_examples": 3},
        {"task": "asr", "source_lang": "en", "target_lang": "en", "name": "cer", "value": 1.25, "num_examples": 3},
        {"task": "asr", "source_lang": "de", "target_lang": "de", "name": "wer", "value": 37.5, "num_examples": 2},
    ],
}
RECIPE = {"model": "configuration/models/tiny", "data": {"train": "data/synthetic/train"}, "max_steps": 400}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The trained tiny model saved with its processor, an eval JSON and a recipe; WORDS[0]'s clip as a wav."""
    root = tmp_path_factory.mktemp("trained")
    model, processor = train_tiny_model()
    folder = root / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for leftover in ("training_args.bin", "optimizer.pt"):  # what a Trainer leaves beside the model
        torch.save({}, folder / leftover)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 50, "epoch": 50.0, "log_history": []}))
    (root / "eval.json").write_text(json.dumps(EVAL))
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    soundfile.write(root / "speech.wav", clips()[0], RATE)
    return SimpleNamespace(root=root, folder=folder, results=root / "eval.json", recipe=root / "recipe.yaml")


def run_push(
    *args: str, env: dict[str, str], python: str | Path = sys.executable, script: Path = PUSH_SCRIPT, cwd=None
) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(script), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_push_is_the_dry_run_folder_and_loads_back_with_the_pipeline(trained, hub, tmp_path, fresh_python):  # noqa: F811
    common = ["--model", str(trained.folder), "--repo_id", REPO_ID, "--results", str(trained.results)]
    common += ["--recipe", str(trained.recipe), "--audio", str(trained.root / "speech.wav")]
    env = hub_env(hub, tmp_path / "home")

    dry = run_push(*common, "--dry_run", str(tmp_path / "dry"), env=env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert f"smoke transcription {WORDS[0]!r}" in dry.stdout
    assert hub.requests == [], "a dry run must not talk to the Hub"

    pushed = run_push(*common, "--private", env=env)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert f"{hub.url}/{REPO_ID}" in pushed.stdout.splitlines()[-1]
    assert hub.unknown == [], f"requests the stand-in does not implement: {hub.unknown}"
    upload_routes = {"create_repo", "validate_yaml", "preupload", "lfs_batch", "commit"}
    assert {f"POST {name}" for name in upload_routes} | {"PUT lfs_upload"} == hub.routes_hit
    stored = hub.repos[REPO_ID]
    assert len(stored.commits) == 1 and stored.private
    assert stored.lfs == {"model.safetensors", "speech_codebook.safetensors"}
    assert ("PUT", f"/lfs-upload/{hashlib.sha256(stored.files['model.safetensors']).hexdigest()}") in hub.requests

    uploaded = hub.write_out(REPO_ID)
    assert folder_digest(uploaded) == folder_digest(tmp_path / "dry")
    names = set(stored.files)
    assert {"config.json", "generation_config.json", "model.safetensors", "processor_config.json"} <= names
    assert {"tokenizer.json", "speech_codebook.json", "speech_codebook.safetensors", "README.md"} <= names
    assert {"modeling_mu2slam.py", "processing_mu2slam.py", "feature_extraction_mu2slam.py"} <= names
    assert not {"training_args.bin", "optimizer.pt", "trainer_state.json"} & names

    check_card(uploaded / "README.md")
    check_usage_snippet(uploaded / "README.md", fresh_python, hub, tmp_path, trained)


def check_card(readme: Path) -> None:
    from huggingface_hub import EvalResult, ModelCard

    card = ModelCard.load(readme)
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "automatic-speech-recognition" and data["library_name"] == "transformers"
    assert data["language"] == ["en", "de"] and data["license"] == "apache-2.0"
    assert "synthetic-data" in data["tags"] and "Trained on synthetic data" in card.text
    measured = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert measured == {("en", "wer"): 0.0, ("en", "cer"): 1.25, ("de", "wer"): 37.5}
    assert all(
        isinstance(r, EvalResult) and r.task_type == "automatic-speech-recognition" for r in card.data.eval_results
    )
    assert "| en | 0 | 1.25 | 3 |" in card.text and "| de | 37.5 | – | 2 |" in card.text
    assert "data/synthetic/train" in card.text  # the recipe is rendered
    assert "Trainer state (`trainer_state.json`): 50 steps, 50.00 epochs." in card.text


def run_without_package(python, snippet: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Run a card's code block as a user would, failing if it imported mu2slam_hf (remote code only)."""
    code = "import sys\n" + snippet + "\nassert 'mu2slam_hf' not in sys.modules"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def check_usage_snippet(readme: Path, python: Path, hub: HubStandIn, tmp_path: Path, trained) -> None:
    """The card's first code block, run as written in a venv without mu2slam_hf, against the stand-in Hub."""
    snippet = re.search(r"```python\n(.*?)```", readme.read_text(), re.DOTALL).group(1)
    assert f'from_pretrained("{REPO_ID}", trust_remote_code=True)' in snippet and "model=model" in snippet
    assert '"src_lang": "en"' in snippet
    workdir = tmp_path / "user"
    workdir.mkdir()
    shutil.copyfile(trained.root / "speech.wav", workdir / "speech.wav")
    env = hub_env(hub, tmp_path / "user-home")
    env.update(HF_MODULES_CACHE=str(tmp_path / "user-modules"), PATH="/usr/bin:/bin")
    # the pipeline the card builds is the package's own (word timestamps, chunk merging), not transformers' generic one
    result = run_without_package(python, snippet + "\nprint(type(asr).__name__)", workdir, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-2] == WORDS[0]  # what the local model says for this clip
    assert result.stdout.splitlines()[-1] == "Mu2SlamSpeechRecognitionPipeline"
    commit = hub.repos[REPO_ID].commits[-1]
    assert ("GET", f"/{REPO_ID}/resolve/{commit}/model.safetensors") in hub.requests, hub.requests
    assert {"GET model_info", "HEAD resolve", "GET resolve"} <= hub.routes_hit


def test_missing_token_is_a_clear_error(trained, tmp_path, monkeypatch):
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    argv = ["--model", str(trained.folder), "--repo_id", REPO_ID, "--results", str(trained.results)]
    with pytest.raises(SystemExit, match=r"No Hugging Face token found: run `hf auth login` \(or set the HF_TOKEN"):
        push_to_hub_cli.main(argv)


def test_missing_results_is_a_clear_error(trained, tmp_path):
    with pytest.raises(
        PublishError, match=r"Results file .*missing\.json' not found\. Run `python training_scripts/ev"
    ):
        publish(trained.folder, REPO_ID, tmp_path / "missing.json", dry_run=tmp_path / "out")
    (tmp_path / "bad.json").write_text(json.dumps({"model": "m", "metrics": []}))
    with pytest.raises(PublishError, match="is not an evaluation JSON"):
        load_results(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_weights", r"has no safetensors weights \(model\.safetensors\)"),
        ("pickle", r"no safetensors weights \(model\.safetensors\) \(only pickle files \[.*'pytorch_model\.bin'"),
        ("bad_config", r"does not load: its config \(config\.json\) failed"),
        ("bad_codebook", r"its processor \(processor_config\.json, tokenizer, speech codebook\) failed"),
    ],
)
def test_broken_folder_names_the_part_that_failed(trained, tmp_path, breakage, message):
    folder = _broken_copy(trained.folder, tmp_path / "broken", breakage)
    with pytest.raises(PublishError, match=message):
        publish(folder, REPO_ID, trained.results, [], dry_run=tmp_path / "out")


@pytest.mark.slow
def test_broken_remote_code_names_the_part_that_failed(trained, tmp_path):
    folder = _broken_copy(trained.folder, tmp_path / "broken", "bad_remote_code")
    with pytest.raises(PublishError, match=r"without mu2slam_hf: model \(auto_map -> modeling_mu2slam\.py"):
        publish(folder, REPO_ID, trained.results, [], dry_run=tmp_path / "out")


def _broken_copy(source: Path, target: Path, breakage: str) -> Path:
    shutil.copytree(source, target)
    if breakage == "no_weights":
        (target / "model.safetensors").unlink()
    elif breakage == "pickle":
        (target / "model.safetensors").unlink()
        torch.save({}, target / "pytorch_model.bin")
    elif breakage == "bad_config":
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "text_vocab_size": 3}))
    elif breakage == "bad_codebook":
        (target / "speech_codebook.safetensors").write_bytes(b"not safetensors")
    elif breakage == "bad_remote_code":
        code = (target / "modeling_mu2slam.py").read_text()
        (target / "modeling_mu2slam.py").write_text(
            code.replace("class Mu2SlamForConditionalGeneration", "class _Gone")
        )
    return target


def test_card_from_recipe_real_data_and_base_model(trained, tmp_path):
    recipe = tmp_path / "finetune.yaml"
    recipe.write_text(yaml.safe_dump({"init_from": "someone/mu2slam-base", "data": {"dataset": "facebook/covost2"}}))
    inputs = CardInputs("me/mu2slam-ft", load_results(trained.results), load_recipes([recipe]))
    card = render_model_card(trained.folder, inputs)
    data = card.data.to_dict()
    assert data["base_model"] == "someone/mu2slam-base" and data["base_model_relation"] == "finetune"
    assert data["datasets"] == ["facebook/covost2"]
    assert "synthetic-data" in data["tags"]  # the evaluation data path says synthetic
    inputs.synthetic_data = False
    card = render_model_card(trained.folder, inputs)
    assert "synthetic-data" not in card.data.tags and "Trained on synthetic data" not in card.text
    assert "fine-tuned from `someone/mu2slam-base`" in card.text


def test_card_names_the_sacrebleu_signatures_of_its_translation_scores(trained, tmp_path):
    bleu = {"task": "mt", "source_lang": "de", "target_lang": "en", "name": "bleu", "value": 20.0, "num_examples": 2}
    results = make_results(EVAL["model"], EVAL["data"], "test", [*EVAL["metrics"], bleu])
    write_results(results, tmp_path / "eval.json")
    card = render_model_card(trained.folder, CardInputs("me/mu2slam-mt", load_results(tmp_path / "eval.json")))
    assert f"sacreBLEU signatures: BLEU `{results['sacrebleu_signatures']['bleu'][0]}`." in card.text
    asr_only = render_model_card(trained.folder, CardInputs("me/mu2slam-asr", load_results(trained.results)))
    assert "sacreBLEU" not in asr_only.text


def test_card_describes_the_default_asr_decoding_with_the_ctc_language_model(trained, tmp_path):
    from mu2slam_hf import Mu2SlamForConditionalGeneration
    from mu2slam_hf.ngram_lm import CharNgramLanguageModel

    inputs = CardInputs("me/mu2slam-ft", load_results(trained.results))
    assert "Decoding is greedy by default" in render_model_card(trained.folder, inputs).text
    folder = tmp_path / "with-lm"
    shutil.copytree(trained.folder, folder)
    model = Mu2SlamForConditionalGeneration.from_pretrained(folder)
    processor = Mu2SlamProcessor.from_pretrained(folder)
    lm = CharNgramLanguageModel.from_texts({model.config.languages[0]: ["a few words", "more words"]},
                                           processor.tokenizer, order=3)  # fmt: skip
    model.set_asr_language_model(lm, lm_weight=0.35, length_bonus=0.7)
    model.set_asr_ctc_weight(1.0)
    model.save_pretrained(folder)
    text = render_model_card(folder, inputs).text
    assert "character 3-gram" in text and "LM weight 0.35" in text and '{"lm_weight": 0}' in text


def test_card_names_the_half_rate_encoder_layers(trained, tmp_path):
    inputs = CardInputs("me/mu2slam-ft", load_results(trained.results))
    assert "half the speech frame rate" not in render_model_card(trained.folder, inputs).text
    folder = tmp_path / "half-rate"
    shutil.copytree(trained.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps({**config, "encoder_layers": 6, "encoder_half_rate_layers": [1, 6]})
    )
    assert "layers 2-6 at half the speech frame rate" in render_model_card(folder, inputs).text


def test_card_knows_every_task_and_metric_of_the_results_format():
    assert set(HUB_TASKS) == set(TASK_ORDER) and set(METRIC_LABELS) == set(METRIC_ORDER)


def test_packaged_card_template_is_the_model_cards_copy():
    """The package's template is the source; model_cards/ holds the same file for readers of the repository."""
    readers_copy = REPO_ROOT / "model_cards" / "mu2slam_model_card.md.jinja"
    assert readers_copy.read_text(encoding="utf-8") == MODEL_CARD_TEMPLATE.read_text(encoding="utf-8"), (
        f"Edit {MODEL_CARD_TEMPLATE} and copy it to {readers_copy}: the two must be identical."
    )


@pytest.mark.slow
def test_dry_run_with_a_non_editable_install_outside_the_source_tree(trained, tmp_path):
    """A wheel-style install (no checkout, no model_cards/) writes the card from the template in the package."""
    source = tmp_path / "source"  # built from a copy: pip's in-tree build leaves build/ and *.egg-info behind
    shutil.copytree(REPO_ROOT / "mu2slam_hf", source / "mu2slam_hf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO_ROOT / name, source / name)
    python = venv_with_dependencies(tmp_path / "venv")
    install = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--ignore-installed"]
    installed = subprocess.run([*install, str(source)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    shutil.rmtree(source)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    shutil.copyfile(PUSH_SCRIPT, workdir / "push_to_hub.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.check_output(
        [python, "-c", "import mu2slam_hf; print(mu2slam_hf.__file__)"], cwd=workdir, env=env
    )
    assert Path(where.decode().strip()).is_relative_to(tmp_path / "venv"), where

    args = ["--model", str(trained.folder), "--repo_id", REPO_ID, "--results", str(trained.results)]
    script = workdir / "push_to_hub.py"
    dry = run_push(*args, "--dry_run", str(tmp_path / "dry"), env=env, python=python, script=script, cwd=workdir)
    assert dry.returncode == 0, dry.stderr[-3000:]
    card = (tmp_path / "dry" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n") and "# mu2slam-tiny-synth" in card and "| en | 0 | 1.25 | 3 |" in card


def test_processor_push_to_hub_round_trip(hub, tmp_path):
    """Mu2SlamProcessor.push_to_hub, then from_pretrained(repo id): the same features, codes and token ids."""
    script = textwrap.dedent(
        """
        import numpy as np, torch
        from mu2slam_hf import Mu2SlamFeatureExtractor, Mu2SlamProcessor, build_best_rq, train_char_tokenizer
        tokenizer = train_char_tokenizer(["la mi the my", "Добрый день"], vocab_size=64)
        local = Mu2SlamProcessor(Mu2SlamFeatureExtractor(), tokenizer, build_best_rq(seed=3, codebook_size=32),
                                 languages=["fr", "ru"])
        local.push_to_hub("me/processor")
        remote = Mu2SlamProcessor.from_pretrained("me/processor")
        audio = [np.sin(np.arange(16000) / 7.0).astype(np.float32), np.zeros(9000, dtype=np.float32)]
        a, b = local(audio=audio, sampling_rate=16000), remote(audio=audio, sampling_rate=16000)
        assert torch.equal(a["input_features"], b["input_features"])
        assert torch.equal(local.speech_codes(**a), remote.speech_codes(**b))
        assert torch.equal(local(text=["Добрый день"])["input_ids"], remote(text=["Добрый день"])["input_ids"])
        assert remote.languages == ["fr", "ru"]
        print("ROUND TRIP OK")
        """
    )
    env = hub_env(hub, tmp_path / "home")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ROUND TRIP OK" in result.stdout
    assert {"speech_codebook.safetensors", "tokenizer.json", "processor_config.json"} <= set(
        hub.repos["me/processor"].files
    )


# ------------------------------------------------------------------------------------------ retrieval

RETRIEVAL_REPO_ID = "me/mu2slam-tiny-retrieval-synth"
RETRIEVAL_VALUES = {"en": (50.0, 75.0, 100.0, 25.0, 87.5, 100.0), "cs": (12.5, 37.5, 62.5, 0.0, 50.0, 75.0)}
RETRIEVAL_EVAL = {
    "model": "runs/tiny-retrieval-synth",
    "data": "data/synthetic/test",
    "split": "test",
    "metrics": [
        {
            "task": "retrieval",
            "source_lang": lang,
            "target_lang": "en",
            "name": name,
            "value": value,
            "num_examples": 4,
        }
        for lang, values in RETRIEVAL_VALUES.items()
        for name, value in zip(RETRIEVAL_METRICS, values, strict=True)
    ],
    "retrieval_candidates": 40,
}
# Appended to the folder's modeling_retrieval.py: its encode_speech no longer matches the installed package's.
STALE_ENCODE_SPEECH = """

_encode_speech = Mu2SlamForRetrieval.encode_speech
Mu2SlamForRetrieval.encode_speech = lambda self, *args, **kwargs: -_encode_speech(self, *args, **kwargs)
"""


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
    """A tiny (untrained) `Mu2SlamForRetrieval` saved with its processor, a retrieval eval JSON and a wav clip."""
    root = tmp_path_factory.mktemp("retrieval")
    tokenizer = train_char_tokenizer(WORDS, vocab_size=64)
    config = Mu2SlamRetrievalConfig.from_pretrained(PRESETS / "tiny", text_vocab_size=len(tokenizer))
    codebook = build_best_rq(seed=0, codebook_size=config.codebook_size)
    processor = Mu2SlamProcessor(Mu2SlamFeatureExtractor(), tokenizer, codebook, languages=config.languages)
    torch.manual_seed(0)
    folder = root / "model"
    Mu2SlamForRetrieval(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    (root / "eval.json").write_text(json.dumps(RETRIEVAL_EVAL))
    soundfile.write(root / "speech.wav", clips()[1], RATE)
    return SimpleNamespace(root=root, folder=folder, results=root / "eval.json")


@pytest.fixture(scope="module")
def retrieval_dry_run(retrieval, tmp_path_factory):
    """`push_to_hub.py --dry_run` of the retrieval folder (run in-process): the upload folder and what it printed."""
    dry = tmp_path_factory.mktemp("retrieval-dry") / "upload"
    args = ["--model", str(retrieval.folder), "--repo_id", RETRIEVAL_REPO_ID, "--results", str(retrieval.results)]
    args += ["--audio", str(retrieval.root / "speech.wav"), "--dry_run", str(dry)]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert push_to_hub_cli.main(args) == 0
    return SimpleNamespace(folder=dry, stdout=printed.getvalue())


def test_retrieval_dry_run_passes_the_remote_code_embedding_check(retrieval_dry_run):
    assert "loads with trust_remote_code=True; smoke speech embedding as with the installed package" in (
        retrieval_dry_run.stdout
    )
    names = {p.name for p in retrieval_dry_run.folder.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "speech_codebook.safetensors"} <= names
    assert {"configuration_mu2slam.py", "modeling_mu2slam.py", "processing_mu2slam.py", "README.md"} <= names
    config = json.loads((retrieval_dry_run.folder / "config.json").read_text())
    assert config["model_type"] == "mu2slam_retrieval" and config["auto_map"]["AutoModel"].endswith("ForRetrieval")


def test_retrieval_card_has_the_retrieval_table_and_usage(retrieval_dry_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(retrieval_dry_run.folder / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "feature-extraction" and "speech-text-retrieval" in data["tags"]
    assert {r.task_type for r in card.data.eval_results} == {"feature-extraction"}
    measured = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert measured[("cs-en", "s2t_r5")] == 37.5 and measured[("en", "t2s_r1")] == 25.0 and len(measured) == 12
    text = card.text
    assert "speech-text dual encoder" in text and "bidirectional in-batch contrastive loss" in text
    assert "| speech → text | Speech→Text R@1 ↑ | Speech→Text R@5 ↑ | Speech→Text R@10 ↑ | Text→Speech R@1 ↑ |" in text
    assert "| en → en | 50 | 75 | 100 | 25 | 87.5 | 100 | 4 |" in text and "| cs → en | 12.5 | 37.5 |" in text
    assert "Recall@k" in text and "higher is better" in text and "against 40 candidate texts" in text
    assert "AutoModel.from_pretrained" in text and "model.encode_speech(" in text and "model.encode_text(" in text
    for seq2seq_only in ("| Decoder |", "automatic-speech-recognition", "AutoModelForSpeechSeq2Seq", "CTC", "WER"):
        assert seq2seq_only not in text, seq2seq_only


def test_retrieval_card_usage_snippet_runs_without_the_package(retrieval, retrieval_dry_run, tmp_path):
    """The card's code block, with the dry-run folder for the repo id: it ranks the three candidate texts."""
    readme = (retrieval_dry_run.folder / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.DOTALL).group(1)
    snippet = snippet.replace(f'"{RETRIEVAL_REPO_ID}"', repr(str(retrieval_dry_run.folder)))
    shutil.copyfile(retrieval.root / "speech.wav", tmp_path / "speech.wav")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = run_without_package(sys.executable, snippet, tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranked = [line.split("  ", 1) for line in result.stdout.splitlines()]
    assert len(ranked) == 3 and all("candidate text" in text for _, text in ranked)
    scores = [float(score) for score, _ in ranked]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= score <= 1.0 for score in scores)


def test_stale_retrieval_remote_code_is_refused(retrieval, tmp_path):
    folder = shutil.copytree(retrieval.folder, tmp_path / "stale")
    with (folder / "modeling_retrieval.py").open("a", encoding="utf-8") as code:
        code.write(STALE_ENCODE_SPEECH)
    with pytest.raises(
        PublishError,
        match=r"encode_speech embeds the smoke clip differently .*max abs difference .*\.py files are stale",
    ):
        publish(folder, RETRIEVAL_REPO_ID, retrieval.results, [], dry_run=tmp_path / "out")


def test_load_locally_follows_the_config_model_type(retrieval, tmp_path):
    model, processor = load_locally(retrieval.folder)
    assert type(model) is Mu2SlamForRetrieval and processor.speech_codebook is not None
    folder = shutil.copytree(retrieval.folder, tmp_path / "other")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "wav2vec2"}))
    with pytest.raises(
        PublishError, match=r"its config \(config\.json\) failed with ValueError: model_type 'wav2vec2'"
    ):
        load_locally(folder)


def test_retrieval_card_without_a_candidate_count(retrieval, tmp_path):
    assert load_results(retrieval.results)["retrieval_candidates"] == 40
    results = tmp_path / "eval.json"
    results.write_text(json.dumps({k: v for k, v in RETRIEVAL_EVAL.items() if k != "retrieval_candidates"}))
    inputs = CardInputs(RETRIEVAL_REPO_ID, load_results(results), smoke_lang="cs")
    text = render_model_card(retrieval.folder, inputs).text
    assert "ranks each clip against the split's texts" in text and "candidate texts;" not in text
    assert 'src_lang="cs"' in text and 'text_lang="en"' in text
