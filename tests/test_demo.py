"""The README's main job, in its quick mode: data -> pre-training -> gradual + noisy fine-tuning -> eval -> report."""

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "training_scripts" / "demo.py"),
            "--output_dir",
            str(tmp_path),
            "--quick",
            "--libreoffice_help_dir",
            eight_language_help(tmp_path / "help"),
            "--tuxpaint_dir",
            tuxpaint_stamps(tmp_path / "stamps"),
            "--drascula_dir",
            drascula_game(tmp_path / "drascula-game"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = (tmp_path / "report.md").read_text()
    assert report.split("\n")[2].startswith("Measured by `python training_scripts/demo.py --output_dir")  # the plan
    assert "--quick" in report.split("\n")[2]
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
    assert "ASR decoders" in report and "| CTC" in report
    assert "Machine: " in report and "training precision" in report
    # the quick plan's stage 2 has a time budget too, which its 6 steps fit in: the table shows the steps trained
    assert "| stage 2 ASR noisy | " in report and report.split("| stage 2 ASR noisy | ")[1].split("\n")[0].endswith(
        "| 6 |"
    )
    for stage in ("pt", "ft1", "ft2-noisy"):
        assert (tmp_path / stage / "model.safetensors").exists()
    noisy = json.loads((tmp_path / "ft2-noisy" / "config.json").read_text())
    assert noisy["decoder_noise_ratio"] == 0.06 and noisy["apply_spec_augment"] is True
    assert noisy["ctc_loss_weight"] == 0.5
    # the stage 2 recipe's own model override stays beside the noisy ones; stage 1's head has one slot
    assert noisy["ctc_upsampling"] == 2
    assert json.loads((tmp_path / "ft1" / "config.json").read_text())["ctc_upsampling"] == 1
    evaluation = json.loads((tmp_path / "ft1" / "eval_synth.json").read_text())
    assert {m["task"] for m in evaluation["metrics"]} == {"asr", "ast", "mt"}
    # the decoder chosen on dev (eval_synth.json) and the others (attention alone, CTC head alone, joint; the CTC
    # head with the n-gram LM when the run fitted one, which it does when dev chose the CTC head)
    evaluations = {path.name for path in (tmp_path / "ft2-noisy").glob("eval_synth*.json")}
    fitted = (tmp_path / "ft2-noisy" / "ctc_language_model_fit.json").exists()
    assert len(evaluations) == 3 + fitted and "eval_synth.json" in evaluations, evaluations
    assert "(chosen on dev)" in report
    # stage 2 for translation: AST and MT into English only, its decoding chosen on dev, the cascade beside it
    translation = tmp_path / "ft2-translation"
    assert (translation / "model.safetensors").exists() and (translation / "translation_decoding_fit.json").exists()
    chosen = json.loads((translation / "generation_config.json").read_text())["translation_decoding"]
    assert chosen == json.loads((translation / "translation_decoding_fit.json").read_text())["chosen"]
    direct = json.loads((translation / "eval_synth_into_en.json").read_text())
    assert {m["task"] for m in direct["metrics"]} == {"ast", "mt"} and {
        m["target_lang"] for m in direct["metrics"]
    } == {"en"}
    assert (translation / "eval_fillets_into_en_cascade.json").exists()
    assert "Translation into English" in report and "cascade BLEU" in report and "| libreoffice-text | MT |" in report
    translation = report.split("## Translation into English")[1].split("\n## ")[0]
    assert translation.count("sacreBLEU signatures: BLEU `nrefs:1|case:mixed|eff:no|tok:13a") == 1  # not per table
    assert "| tuxpaint | AST |" in report and "real read speech test (Tux Paint stamps)" in report
    assert "real dialogue test (Drascula en/es voice acting)" in report
    # stage 2 ASR heard the real train clips of both corpora (none of their test clips); the report says how long
    asr_ids = {json.loads(line)["id"] for line in (tmp_path / "data" / "synth+real-asr" / "train.jsonl").open()}
    for corpus in ("fillets", "tuxpaint", "drascula"):
        rows = [json.loads(line) for line in (tmp_path / "data" / corpus / "train.jsonl").open()]
        assert {r["id"] for r in rows if r["task"] == "asr"} & asr_ids, corpus
        tests = [json.loads(line) for line in (tmp_path / "data" / corpus / "test.jsonl").open()]
        assert not {r["id"] for r in tests} & asr_ids, corpus
    real = report.split("## Real speech: minutes heard in training and test CER")[1].split("\n## ")[0]
    assert "| **average** |" in real and "| fr |" in real and "| cs |" in real
    assert "CER drascula (clips)" in real


@pytest.mark.slow
def test_quick_comparison_runs_in_parallel_jobs(tmp_path):
    """--compare --jobs 2: every (a)-(d) configuration is trained for ASR and AST with two seeds (in dependency
    order) and evaluated; every claim is set against the seed spread."""
    command = [sys.executable, str(REPO_ROOT / "training_scripts" / "demo.py"), "--output_dir", str(tmp_path)]
    command += ["--quick", "--compare", "--jobs", "2", "--seeds", "2"]
    command += ["--libreoffice_help_dir", eight_language_help(tmp_path / "help")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    demo = load_demo()
    for configuration in demo.CONFIGURATIONS:
        for task in ("asr", "ast"):
            for seed in (0, 1):
                folder = demo.compared_folder(tmp_path, configuration, task, seed)
                assert (folder / "model.safetensors").exists(), folder
                (state,) = folder.glob("checkpoint-*/trainer_state.json")
                assert json.loads(state.read_text())["recipe"]["seed"] == seed
    assert (tmp_path / "ft1-seed1" / "model.safetensors").exists()
    values = json.loads((tmp_path / "comparison.json").read_text())
    # the AST models also on the LibreOffice sentences, and on MT (text in) on both text corpora
    assert set(values) == {"asr, synth", "asr, fillets", "ast, synth", "ast, fillets", "ast, libreoffice",
                           "mt, synth", "mt, libreoffice"}  # fmt: skip
    assert {"bleu xx-en", "chrf xx-en"} <= set(values["mt, libreoffice"]["(d) gradual + noisy"])
    assert all(
        len(seeds) == 2 for table in values.values() for metrics in table.values() for seeds in metrics.values()
    )
    comparison = (tmp_path / "comparison.md").read_text()
    claims = [line for line in comparison.splitlines() if line.startswith(("| pre-training", "| gradual", "| noisy"))]
    assert {line.split(" | ")[0].removeprefix("| ") for line in claims} == set(demo.CLAIMS)
    assert all(
        line.split(" | ")[-1].removesuffix(" |") in ("holds", "reversed", "within seed noise") for line in claims
    )
    assert any(" | cer | " in line for line in claims) and any(" | nll" in line for line in claims)


def eight_language_help(root) -> str:
    """The LibreOffice fixture help tree (en, de, fr) with the demo's other languages as copies of the French pages
    (the comparison only needs every language's folder to exist)."""
    from test_data_libreoffice import write_help

    from mu2slam_hf.data.libreoffice import help_dir_name

    folder = Path(write_help(root))
    demo = load_demo()
    for lang in demo.LANGUAGES:
        if not (folder / help_dir_name(lang)).exists():
            shutil.copytree(folder / help_dir_name("fr"), folder / help_dir_name(lang))
    return str(folder)


def tuxpaint_stamps(root) -> str:
    """An extracted Tux Paint package of 24 stamps read in French, Spanish and Russian (every split gets some)."""
    from test_data_tuxpaint import TRANSLATIONS, _description, _ogg

    from mu2slam_hf.data.tuxpaint import STAMPS_DIR

    animals = Path(root) / STAMPS_DIR / "animals"
    animals.mkdir(parents=True)
    for i in range(24):
        texts = {lang: text.format(i=i) for lang, text in TRANSLATIONS.items()}
        (animals / f"cat{i}.txt").write_text(_description(f"A cat {i}.", texts), encoding="utf-8")
        for j, lang in enumerate(("fr", "es", "ru")):
            _ogg(animals / f"cat{i}_desc_{lang}.ogg", seconds=0.8, rate=16_000, channels=1, seed=3 * i + j)
    return str(root)


def drascula_game(root) -> str:
    """An extraction root of the Drascula packages with 17 hero lines and one of Igor's in en and es."""
    from test_data_drascula import fake_game

    return str(fake_game(Path(root)))


def load_demo():
    spec = importlib.util.spec_from_file_location("demo", REPO_ROOT / "training_scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


def test_the_main_jobs_stage_2_trains_until_the_plans_minute_and_compare_runs_fixed_steps(tmp_path):
    from mu2slam_hf.training import load_recipe

    demo = load_demo()
    plan = demo.PLANS["demo"]
    stage2 = _asr_stage2(demo.main_stages(tmp_path, plan, quick=False, train_until=time.monotonic() + 600))
    overrides = stage2.resolved_overrides()
    assert 9.9 < overrides["max_train_minutes"] <= 10.0
    assert stage2.data == tmp_path / "data" / "synth+real-asr" and overrides["extend_vocabulary"] is True
    recipe = load_recipe(demo.RECIPES / stage2.recipe_file, overrides)
    assert recipe.max_steps == demo.STAGE2_MAX_STEPS and recipe.max_train_minutes == overrides["max_train_minutes"]
    assert recipe.optimizer.warmup_for(recipe.max_steps) == 150 and recipe.spec_augment_from_step == 450
    # past the deadline, stage 2 still trains a minute rather than not at all
    late = _asr_stage2(demo.main_stages(tmp_path, plan, quick=False, train_until=time.monotonic() - 60))
    assert late.resolved_overrides()["max_train_minutes"] == 1.0
    # --compare: a fixed number of steps, warmup and SpecAugment at 10% / 30% of them (the same 150 / 450)
    fixed = _asr_stage2(demo.main_stages(tmp_path, plan, quick=False))
    assert "max_train_minutes" not in fixed.resolved_overrides()
    recipe = load_recipe(demo.RECIPES / fixed.recipe_file, fixed.resolved_overrides())
    assert recipe.max_steps == plan["stage2"] == 1500
    assert recipe.optimizer.warmup_for(recipe.max_steps) == 150 and recipe.spec_augment_from_step == 450
    # the hour plan: a later deadline and a higher step cap, the same warmup and SpecAugment start
    hour = demo.PLANS["hour"]
    longer = _asr_stage2(demo.main_stages(tmp_path, hour, quick=False, train_until=time.monotonic() + 600))
    recipe = load_recipe(demo.RECIPES / longer.recipe_file, longer.resolved_overrides())
    assert recipe.max_steps == hour["stage2_max_steps"] > demo.STAGE2_MAX_STEPS
    assert recipe.optimizer.warmup_for(recipe.max_steps) == 150 and recipe.spec_augment_from_step == 450
    assert hour["stage2_until_minute"] < hour["translation_until_minute"]


def test_a_slower_machine_stops_the_timed_stages_earlier_to_end_by_the_finish_minute(tmp_path, monkeypatch):
    """Once stage 1 has run, the work after stage 2 ASR is estimated from stage 1's time; where the plan's deadlines
    would end the job after its finish minute, both timed stages stop earlier by the overrun, before they start."""
    demo = load_demo()
    plan = demo.PLANS["demo"]
    assert plan["stage2_until_minute"] < plan["translation_until_minute"] < plan["finish_minute"] <= 29
    assert demo.PLANS["hour"]["translation_until_minute"] < demo.PLANS["hour"]["finish_minute"] <= 59
    started, seconds = {}, {}

    def fake_training(stage, data, threads):
        started[stage.name] = stage.resolved_overrides().get("max_train_minutes")
        return seconds.get(stage.name, 1.0)

    monkeypatch.setattr(demo, "_train_stage", fake_training)
    for stage1_minutes, shift in ((1.8, 23.0 - (28.5 - demo.TAIL_PER_STAGE1 * 1.8)), (1.0, 0.0)):
        seconds["stage 1"] = 60 * stage1_minutes
        start = time.monotonic()
        stages = demo.main_stages(tmp_path, plan, False, start + 60 * 23.0, start + 60 * 23.5)
        finish = demo.FinishLine(start, plan["finish_minute"])
        demo.run_stages(stages, tmp_path, jobs=1, finish=finish)
        assert finish.shift_seconds == pytest.approx(60 * shift)
        assert started["stage 2 ASR noisy"] == pytest.approx(23.0 - shift, abs=0.01)
        assert started["stage 2 translation"] == pytest.approx(23.5 - shift, abs=0.01)
        summary = finish.summary(plan["stage2_until_minute"])
        assert f"until minute {23.0 - shift:.1f} of the job at the latest" in summary
        assert ("earlier" in summary) == (shift > 0)
    # --compare trains stage 2 ASR for fixed steps: nothing to move
    stages = demo.main_stages(tmp_path, plan, False, None, time.monotonic() + 60)
    untimed = demo.FinishLine(time.monotonic(), plan["finish_minute"])
    untimed.stage_done("stage 1", 600.0, stages)
    assert untimed.shift_seconds == 0.0 and untimed.summary(23.0) == ""


def _asr_stage2(stages):
    (stage,) = [stage for stage in stages if stage.name == "stage 2 ASR noisy"]
    return stage


def test_the_translation_stage_follows_asr_and_trains_until_its_own_minute(tmp_path):
    """Stage 2 for translation starts from stage 1 after stage 2 ASR, on the data into English, and trains until
    the plan's minute (at least one), its steps bounded only by that time; the recipe chooses its decoding on dev."""
    from mu2slam_hf.training import load_recipe

    demo = load_demo()
    plan = demo.PLANS["demo"]
    stages = demo.main_stages(tmp_path, plan, False, time.monotonic() + 600, time.monotonic() + 900)
    translation = stages[-1]
    assert translation.name == "stage 2 translation" and translation.after == ("stage 2 ASR noisy",)
    assert translation.data == tmp_path / "data" / "translation-into-en"
    overrides = translation.resolved_overrides()
    assert 14.9 < overrides["max_train_minutes"] <= 15.0 and overrides["init_checkpoint"] == str(tmp_path / "ft1")
    recipe = load_recipe(demo.RECIPES / translation.recipe_file, overrides)
    assert recipe.max_steps == 10 * plan["translation"] and recipe.choose_translation_decoding
    assert recipe.ctc_ast_source and recipe.mt_source_mlm == 0.15 and recipe.dev_examples_per_task == 64


def test_compared_asr_from_scratch_keeps_one_ctc_slot(tmp_path):
    """(a) scratch trains the stage 2 ASR recipe from random weights with the CTC head at one slot a frame (two
    slots from random weights stay on the blank plateau); the pre-trained configurations grow theirs to two."""
    from mu2slam_hf.training import load_recipe

    demo = load_demo()
    slots = {}
    for stage in demo.compare_stages(tmp_path, demo.PLANS["long"], quick=False, seeds=1):
        if stage.name.endswith("ASR"):
            recipe = load_recipe(demo.RECIPES / stage.recipe_file, stage.resolved_overrides())
            slots[stage.name] = recipe.model_overrides.get("ctc_upsampling")
    assert slots == {"(a) scratch ASR": 1, "(b) pre-trained + direct ASR": 2, "(c) pre-trained + gradual ASR": 2}


def test_decoder_comparison_reuses_the_reports_results_for_the_chosen_decoder(tmp_path, monkeypatch):
    demo = load_demo()
    model_dir = tmp_path / "ft2-noisy"
    model_dir.mkdir()
    (model_dir / "generation_config.json").write_text(json.dumps({"asr_ctc_weight": 1.0}))  # the CTC head, no LM
    dev = {"dev/asr_cer": 80.0, "dev/asr_cer_ctc": 30.0, "dev/asr_cer_joint": 50.0}
    (model_dir / "dev_results.json").write_text(json.dumps([dev]))

    def results(cer: float) -> dict:
        return {"metrics": [{"task": "asr", "source_lang": "en", "target_lang": "en", "name": "cer", "value": cer}]}

    evaluated = []

    def fake_evaluate(model, data, tasks, count, name, asr_decoder=None):
        evaluated.append((data.name, asr_decoder.tag))
        return results({"attention": 70.0, "joint": 40.0}[asr_decoder.tag])

    monkeypatch.setattr(demo, "evaluate", fake_evaluate)
    rows = demo.decoder_comparison(model_dir, {tmp_path / "synth": results(25.0)}, 8)
    assert sorted(evaluated) == [("synth", "attention"), ("synth", "joint")]  # the chosen one is not decoded again
    assert "| CTC, greedy (chosen on dev) | 30.0 | 25.0 |" in rows
    assert "| attention | 80.0 | 70.0 |" in rows and "| joint (0.3) | 50.0 | 40.0 |" in rows
