"""Benchmarks: the learning-curve instrument's --quick mode end to end on a tiny espeak-ng corpus, how it places
the demo job's stages on the minutes axis, the data-path benchmark on a tiny corpus it scales up, the split of
a training step into its phases, and the fine-tuning benchmark (a trained model against the same steps from scratch
on a left-out source) on a tiny model and corpus."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ON_CUDA, REPO_ROOT

LEARNING_CURVE = REPO_ROOT / "benchmarks" / "bench_learning_curve.py"
STREAMING = REPO_ROOT / "benchmarks" / "bench_streaming.py"


def load_learning_curve():
    spec = importlib.util.spec_from_file_location("bench_learning_curve", LEARNING_CURVE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_learning_curve_has_points_of_both_models_and_a_plot(tmp_path):
    from mu2slam_hf.data.synthetic import build_synthetic

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    build_synthetic(str(corpus), ("en",), num_numbers=24, use_fillets=False, num_workers=2)
    (corpus / "test.jsonl").write_text((corpus / "dev.jsonl").read_text())  # this small build has no ASR test clips
    command = [sys.executable, str(LEARNING_CURVE), "--data", str(corpus), "--quick", "--minutes", "0.1",
               "--eval_interval", "5", "--output_dir", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "learning_curve.json").read_text())
    ours, peer = summary["points"]["ours"], summary["points"]["peer"]
    assert ours and peer
    # ctc+lm: the final model's CTC head with the n-gram LM its run fitted (when dev chose the CTC head)
    fitted = (out / "ours" / "ctc_language_model_fit.json").exists()
    assert set(ours[-1]["cer"]) == {"attention", "ctc", "joint"} | ({"ctc+lm"} if fitted else set())
    assert set(peer[-1]["cer"]) == {"ctc"}
    assert ours[-1]["minutes"] >= 0.1 and peer[-1]["minutes"] >= 0.1  # each ran its training minutes
    assert all(value >= 0 for point in ours + peer for value in point["cer"].values())
    assert summary["params"]["ours"] > 0 and summary["params"]["peer"] > 0
    assert (out / "learning_curve.png").stat().st_size > 0
    assert "ours (best decoder: " in done.stdout and "/ peer CER at " in done.stdout
    # the final models on the corpus's held-out test clips, scored once at the end
    test_clips = sum(1 for line in (corpus / "test.jsonl").open() if json.loads(line)["task"] == "asr")
    assert summary["test"]["clips"] == test_clips > 0
    assert summary["test"]["ours"] >= 0 and summary["test"]["peer"] >= 0
    assert f"held-out test ({test_clips} clips" in done.stdout


def test_demo_stages_are_placed_after_the_stages_they_start_from(tmp_path):
    bench = load_learning_curve()
    stages = {"pt": [(100, 60.0, None)], "ft1": [(50, 30.0, 80.0), (100, 90.0, 40.0)], "ft2-noisy": [(20, 6.0, 30.0)]}
    for stage, evaluations in stages.items():
        folder = tmp_path / stage
        folder.mkdir()
        history = [{"step": step, "train_seconds": seconds} | ({"dev/asr_cer_ctc": cer} if cer else {})
                   for step, seconds, cer in evaluations]  # fmt: skip
        (folder / "dev_results.json").write_text(json.dumps(history))
        (folder / "train_log.jsonl").write_text(json.dumps({"step": evaluations[-1][0], "train_seconds": 120.0}))
    points = bench.demo_points(tmp_path)
    assert list(points) == ["demo/ft1", "demo/ft2-noisy"]  # pre-training had no ASR CER
    assert [p["minutes"] for p in points["demo/ft1"]] == [2.5, 3.5]  # after pre-training's 120 s
    assert points["demo/ft2-noisy"] == [{"step": 20, "minutes": pytest.approx(4.1), "cer": {"ctc": 30.0}}]  # after ft1


def test_learning_curve_recipe_variants_reach_both_runs():
    bench = load_learning_curve()
    args = bench.parse_args(["--data", "corpus", "--set", "ctc_loss_weight=0.5", "--set", "optimizer.decay=constant"])
    recipe = bench.load_benchmark_recipe(args)
    assert recipe.ctc_loss_weight == 0.5 and recipe.optimizer.decay == "constant"
    command = bench.child_command(args, "peer")  # each child process reads the same variant
    assert bench.recipe_overrides(bench.parse_args(command[2:])) == bench.recipe_overrides(args)


def test_peer_plays_each_clip_at_a_speed_drawn_as_ours():
    import numpy as np

    from mu2slam_hf.tokenization_mu2slam import train_tokenizer

    bench = load_learning_curve()
    tone = np.sin(np.arange(16_000) * 2 * np.pi * 440 / 16_000).astype(np.float32)
    rows = [{"id": "tone", "audio": {"array": tone, "sampling_rate": 16_000}, "target_text": "ab"}]
    tokenizer = train_tokenizer("char", ["ab"], 64)
    as_recorded = bench.PeerBatches(rows, tokenizer)([0])["input_features"].shape[1]
    faster = bench.PeerBatches(rows, tokenizer, (1.25,))([0])["input_features"].shape[1]
    assert faster == pytest.approx(as_recorded / 1.25, abs=2)  # 1.25x faster: a fifth fewer frames
    draws = bench.PeerBatches(rows, tokenizer, (0.9, 1.1), seed=3).factors(16)
    assert draws == bench.PeerBatches(rows, tokenizer, (0.9, 1.1), seed=3).factors(16)  # the recipe's seed
    assert set(draws) == {0.9, 1.1}


def test_peer_batches_are_padded_as_ours_and_masked():
    import numpy as np

    from mu2slam_hf.tokenization_mu2slam import train_tokenizer

    bench = load_learning_curve()
    noise = np.random.default_rng(0).standard_normal(16_000).astype(np.float32)
    rows = [{"id": str(n), "audio": {"array": noise[:n], "sampling_rate": 16_000}, "target_text": "ab"}
            for n in (8_000, 11_000)]  # fmt: skip
    tokenizer = train_tokenizer("char", ["ab"], 64)
    longest = bench.PeerBatches(rows, tokenizer)([0, 1])
    padded = bench.PeerBatches(rows, tokenizer, pad_to_multiple_of=32)([0, 1])
    assert padded["input_features"].shape[1] % 32 == 0 and padded["input_features"].shape[1] >= 32
    assert padded["input_features"].shape[1] > longest["input_features"].shape[1]
    assert padded["attention_mask"].sum(-1).tolist() == longest["attention_mask"].sum(-1).tolist()
    frames = longest["input_features"].shape[1]
    assert torch.equal(padded["input_features"][:, :frames], longest["input_features"])
    assert not padded["input_features"][:, frames:].any()


@pytest.mark.slow
def test_streaming_benchmark_scales_a_corpus_and_measures_each_worker_count(tmp_path):
    from mu2slam_hf.data import load_manifest
    from mu2slam_hf.data.synthetic import build_synthetic

    corpus, scaled, output = tmp_path / "corpus", tmp_path / "scaled", tmp_path / "streaming.json"
    build_synthetic(str(corpus), ("en",), num_numbers=24, use_fillets=False, num_workers=2)
    command = [sys.executable, str(STREAMING), "--corpus", str(corpus), "--hours", "0.02", "--scaled_dir",
               str(scaled), "--throughput_draws", "3", "--output", str(output)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["corpus"]["hours"] >= 0.02
    rows = load_manifest(str(scaled), "train")
    assert len(set(rows["id"])) == len(rows)  # every copy is a row and a file of its own
    assert [r["workers"] for r in results["throughput"]] == [0, 1, 2]
    for run in results["throughput"] + results["one_epoch"]:
        assert run["audio_seconds_per_second"] > 0 and run["peak_pss_mib"] > 0
    cached, workers, streamed = results["one_epoch"]
    assert cached["feature_cache"] and not workers["feature_cache"] and streamed["streaming"]
    # the same epoch each way: the corpus fits one window of the stream, so even its batches are the same
    assert cached["audio_hours"] == workers["audio_hours"] == streamed["audio_hours"] > 0
    assert cached["draws"] == streamed["draws"]


def quick_translation_curve(task: str, corpus, out) -> tuple[subprocess.CompletedProcess, dict]:
    """bench_learning_curve.py --quick for an MT or AST corpus folder: the finished process and its summary."""
    command = [sys.executable, str(LEARNING_CURVE), "--task", task, "--data", str(corpus), "--quick", "--minutes",
               "0.05", "--eval_interval", "5", "--output_dir", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads((out / "learning_curve.json").read_text())


@pytest.mark.slow
def test_quick_mt_learning_curve_has_bleu_and_nll_points_and_a_test_score(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    words = [("eins", "one"), ("zwei", "two"), ("drei", "three"), ("vier", "four"), ("fünf", "five")]
    for split, count in (("train", 40), ("dev", 8), ("test", 6)):
        with (corpus / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for i in range(count):
                pair = [words[(i + k) % 5] for k in range(1 + i % 4)]
                row = {"id": f"{split}-{i}", "task": "mt", "audio": None, "source_lang": "de", "target_lang": "en",
                       "source_text": " ".join(de for de, _ in pair), "target_text": " ".join(en for _, en in pair),
                       "duration": None, "speaker": None}  # fmt: skip
                handle.write(json.dumps(row) + "\n")
    done, summary = quick_translation_curve("mt", corpus, out)
    points = summary["points"]["ours"]
    assert points and points[-1]["minutes"] >= 0.05 and all(p["nll"] > 0 and p["bleu"] >= 0 for p in points)
    assert summary["test"]["test_pairs"] == 6 and summary["test"]["test_bleu"] >= 0
    assert (out / "learning_curve.png").stat().st_size > 0
    assert "test (6 pairs, the final model, greedy): BLEU" in done.stdout


@pytest.mark.slow
def test_quick_ast_learning_curve_has_bleu_points_and_a_test_score(tmp_path):
    from mu2slam_hf.data.synthetic import build_synthetic

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    build_synthetic(str(corpus), ("de", "en"), num_numbers=24, use_fillets=False, num_workers=2)
    (corpus / "test.jsonl").write_text((corpus / "dev.jsonl").read_text())  # this small build has no AST test clips
    _, summary = quick_translation_curve("ast", corpus, out)
    points = summary["points"]["ours"]
    assert summary["task"] == "ast" and points and all(p["nll"] > 0 and p["bleu"] >= 0 for p in points)
    test_clips = sum(1 for line in (corpus / "test.jsonl").open() if json.loads(line)["task"] == "ast")
    assert summary["test"]["test_pairs"] == test_clips > 0 and summary["test"]["test_bleu"] >= 0
    assert (out / "learning_curve.png").stat().st_size > 0


@pytest.mark.slow
def test_step_phases_benchmark_splits_our_step_and_times_the_peer(tmp_path):
    """Every phase of the real training step is timed (the profiler ranges of `loop.phase`), and the peer too."""
    from mu2slam_hf.data.synthetic import build_synthetic
    from mu2slam_hf.training.loop import STEP_PHASES

    corpus, out, temp = tmp_path / "corpus", tmp_path / "phases.json", tmp_path / "temp"
    build_synthetic(str(corpus), ("en",), num_numbers=24, use_fillets=False, num_workers=2)
    temp.mkdir()
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_step_phases.py"), "--data", str(corpus),
               "--quick", "--steps", "2", "--warmup", "1", "--threads", "1", "--output", str(out)]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(temp)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [p.name for p in temp.iterdir() if p.name.startswith("bench-train-")] == []  # its run folder is removed
    figures = json.loads(out.read_text())
    ours, peer = figures["ours"], figures["peer"]
    # the quick recipe keeps the weight average; master weights exist where `auto` chose bf16 weights, which it
    # times on the machine at hand
    expected = set(STEP_PHASES) - (set() if ours["bf16_weights"] else {"master_weights"})
    assert set(ours["phases"]) == expected
    # On a GPU the profiler books a phase's kernels as device time, and some phases (the forward) have no host time.
    assert all(times["host_ms"] + times["device_ms"] > 0 for times in ours["phases"].values())
    assert ours["seconds_per_step"] > 0 and peer["seconds_per_step"] > 0
    assert ours["seconds_per_step_sdpa_kernel"] > 0 and "with SDPA's own kernel" in done.stdout
    assert (ours["host_syncs_per_step"] is not None) == ON_CUDA  # counted on CUDA only
    assert "| forward |" in done.stdout and "ours / peer = " in done.stdout


FINETUNE_REAL = REPO_ROOT / "benchmarks" / "bench_finetune_real.py"


def tiny_model_folder(folder) -> None:
    """A tiny Mu2SLAM model (random weights) and its processor, whose tokenizer lacks the corpus's "é"."""
    from conftest import PRESETS

    from mu2slam_hf import Mu2SlamConfig, Mu2SlamFeatureExtractor, Mu2SlamForConditionalGeneration, Mu2SlamProcessor
    from mu2slam_hf.speech_codebook import build_best_rq
    from mu2slam_hf.tokenization_mu2slam import train_tokenizer

    tokenizer = train_tokenizer("char", ["one two three", "un deux trois"], 64)
    processor = Mu2SlamProcessor(Mu2SlamFeatureExtractor(), tokenizer, build_best_rq(seed=0, codebook_size=64),
                                 languages=["en", "fr"])  # fmt: skip
    config = Mu2SlamConfig.from_pretrained(PRESETS / "tiny", languages=["en", "fr"], text_vocab_size=len(tokenizer))
    torch.manual_seed(0)
    Mu2SlamForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def tiny_real_corpus(root) -> None:
    """Tones with en/fr transcripts (one with a character the model cannot write), ASR train/dev/test, and an MT
    row the benchmark leaves out."""
    import numpy as np

    from mu2slam_hf.data import make_example, write_flac, write_manifest

    texts = {"en": ["one two", "two three", "three one"], "fr": ["un deux", "deux trois été", "trois un"]}
    for split, count in (("train", 3), ("dev", 2), ("test", 2)):
        rows = []
        for lang, sentences in texts.items():
            for i in range(count):
                path = f"audio/{split}-{lang}-{i}.flac"
                t = np.arange(int(16_000 * (0.4 + 0.1 * i))) / 16_000
                seconds = write_flac(root / path, 0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t))
                rows.append(make_example(f"{split}-{lang}-{i}", "asr", lang, audio=path, target_text=sentences[i],
                                         duration=seconds))  # fmt: skip
        rows.append(make_example(f"{split}-mt", "mt", "en", source_text="one", target_text="un", target_lang="fr"))
        write_manifest(root / f"{split}.jsonl", rows)


def test_finetune_real_benchmark_reports_each_model_per_language_and_refuses_bad_inputs(tmp_path, capsys):
    model, corpus, out = tmp_path / "model", tmp_path / "corpus", tmp_path / "out"
    tiny_model_folder(model)
    tiny_real_corpus(corpus)
    argv = ["--model", str(model), "--data", str(corpus), "--steps", "2", "--output_dir", str(out),
            "--set", "dev_examples_per_task=2", "--set", "eval_max_new_tokens=4"]  # fmt: skip
    bench = load_finetune_real()
    bench.main(argv)
    printed = capsys.readouterr().out
    summary = json.loads((out / "bench_finetune_real.json").read_text())
    assert summary["languages"] == ["en", "fr"] and summary["steps"] == 2
    assert summary["train_clips"] == {"en": 3, "fr": 3, "total": 6} and summary["test_clips"]["total"] == 4
    assert summary["train_audio_minutes"]["total"] == pytest.approx((0.4 + 0.5 + 0.6) * 2 / 60, abs=1e-3)
    for run in ("zero-shot", "fine-tuned", "scratch"):
        figures = summary["runs"][run]
        assert set(figures["cer"]) == set(figures["wer"]) == {"en", "fr"}
        assert figures["cer_average"] >= 0 and figures["decoder"]
    for run in ("fine-tuned", "scratch"):
        assert summary["runs"][run]["steps"] == 2 and summary["runs"][run]["run_minutes"] > 0
    # the two runs differ in their starting weights and, as the demo's scratch runs, scratch's one CTC slot a frame
    overrides = summary["recipe_overrides"]
    scratch = dict(overrides["scratch"])
    assert scratch.pop("model_overrides.ctc_upsampling") == 1
    assert {**overrides["fine-tuned"], "init_checkpoint": None} == {**scratch, "init_checkpoint": None}
    assert overrides["fine-tuned"]["extend_vocabulary"] is True
    assert json.loads((out / "scratch-init" / "config.json").read_text()) | {"_name_or_path": None} == (
        json.loads((model / "config.json").read_text()) | {"_name_or_path": None}
    )
    assert "é" in (out / "finetuned" / "tokenizer.json").read_text()  # the vocabulary grew for the new character
    ratio = summary["cer_ratio_finetuned_over_scratch"]
    assert ratio is None or ratio == pytest.approx(summary["runs"]["fine-tuned"]["cer_average"]
                                                   / summary["runs"]["scratch"]["cer_average"])  # fmt: skip
    table = printed[printed.index("language ") :]
    assert "zero-shot CER" in table and "\nen " in table and "\nfr " in table and "\naverage " in table
    assert "fine-tuned / scratch test CER (average over languages): " in printed
    # the folder now holds a run: a second run there is refused, as are bad inputs, each with a clear message
    with pytest.raises(SystemExit, match="already holds a run"):
        bench.main(argv)
    for bad, message in (
        (["--model", str(tmp_path / "nothing"), "--data", str(corpus)], "no such folder"),
        (["--model", str(corpus), "--data", str(corpus)], "not a model folder"),
        (["--model", str(model), "--data", str(model)], "no ASR rows in train.jsonl"),
        (["--model", str(model), "--data", str(corpus), "--languages", "en,de"], "no ASR rows of train: de"),
    ):
        with pytest.raises(SystemExit, match=message):
            bench.main([*bad, "--output_dir", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


def load_finetune_real():
    spec = importlib.util.spec_from_file_location("bench_finetune_real", FINETUNE_REAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
