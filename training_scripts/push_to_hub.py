"""Publish a trained Mu2SLAM folder on the Hugging Face Hub (= `mu2slam-push-to-hub`; logic in
:mod:`mu2slam_hf.cli.push_to_hub`, see docs/publishing.md).

    python training_scripts/push_to_hub.py --model runs/ft2 --repo_id me/mu2slam-small-synth \\
        --results runs/ft2/eval_test.json --recipe configuration/recipes/gradual-stage2-asr.yaml [--dry_run preview]
"""

from mu2slam_hf.cli.push_to_hub import main

if __name__ == "__main__":
    raise SystemExit(main())
