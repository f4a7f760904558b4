"""Evaluate a Mu2SLAM model on a corpus manifest (= `mu2slam-evaluate`; logic in :mod:`mu2slam_hf.cli.evaluate`).

    python training_scripts/evaluate.py --model runs/ft2 --data data/fillets --split test --tasks asr,ast,mt \\
        --max_examples 200 --output runs/ft2/eval_test.json
"""

from mu2slam_hf.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
