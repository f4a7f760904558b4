"""Publish a trained Mu2SLAM folder on the Hugging Face Hub with a model card, in one commit.

Example::

    python training_scripts/push_to_hub.py --model runs/ft2 --repo_id me/mu2slam-small-synth \\
        --results runs/ft2/eval_test.json --recipe configuration/recipes/gradual-stage2-asr.yaml
    python training_scripts/push_to_hub.py ... --dry_run upload_preview   # write the folder, upload nothing

Before uploading it checks that the folder loads (config, safetensors weights, processor), that it loads with
``trust_remote_code=True`` in a fresh Python that cannot import mu2slam_hf, and that the ASR pipeline transcribes a
smoke clip there exactly as with the installed package. A retrieval folder (``Mu2SlamForRetrieval``, model_type
``mu2slam_retrieval``) publishes the same way: there ``AutoModel`` + ``encode_speech`` must embed the smoke clip as
the installed package does (within 1e-5). See docs/publishing.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..hub import PublishError, publish


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="folder saved with model + processor save_pretrained"
    )
    parser.add_argument("--repo_id", required=True, help="namespace/name of the Hub repository")
    parser.add_argument("--results", type=Path, required=True, help="evaluation JSON of training_scripts/evaluate.py")
    parser.add_argument(
        "--recipe",
        type=Path,
        nargs="+",
        default=None,
        help="training recipe YAML(s) (default: MODEL/training_recipe.yaml)",
    )
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry_run", type=Path, metavar="OUT_DIR", help="write the upload folder here, upload nothing")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved `hf auth login`)")
    parser.add_argument("--base_model", help="Hub id of the model this one was fine-tuned from (card metadata)")
    parser.add_argument("--dataset", nargs="+", default=[], help="Hub dataset ids used for training (card metadata)")
    parser.add_argument("--language", nargs="+", help="card languages (default: the evaluated ones)")
    parser.add_argument("--license", default="apache-2.0", help="card license (default apache-2.0)")
    synthetic = parser.add_mutually_exclusive_group()
    synthetic.add_argument("--synthetic_data", dest="synthetic_data", action="store_true", default=None)
    synthetic.add_argument("--real_data", dest="synthetic_data", action="store_false", help="no synthetic warning")
    parser.add_argument("--audio", type=Path, help="16 kHz file for the smoke run (default: synthetic 1 s clip)")
    parser.add_argument("--src_lang", help="language of the smoke run and the card snippet")
    parser.add_argument("--template", type=Path, help="Jinja2 model card template (default: the packaged one)")
    parser.add_argument("--commit_message", help="commit message of the upload")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = publish(
            args.model,
            args.repo_id,
            args.results,
            args.recipe,
            private=args.private,
            dry_run=args.dry_run,
            token=args.token,
            base_model=args.base_model,
            datasets=args.dataset,
            languages=args.language,
            license=args.license,
            synthetic_data=args.synthetic_data,
            audio=args.audio,
            src_lang=args.src_lang,
            template=args.template,
            commit_message=args.commit_message,
        )
    except PublishError as error:
        raise SystemExit(f"error: {error}") from None
    if report.transcription is None:
        difference = report.embedding_difference
        smoke = f"smoke speech embedding as with the installed package (max abs difference {difference:.2g})"
    else:
        smoke = f"smoke transcription {report.transcription!r}"
    print(f"Checked: loads with trust_remote_code=True; {smoke}")
    print(f"Files ({len(report.files)}): {', '.join(report.files)}")
    if report.url is None:
        print(f"Dry run: the upload folder is {report.folder} (nothing uploaded)")
    else:
        print(f"Uploaded in one commit: {report.commit_url}")
        print(report.url)
    return 0
