"""Mu2SLAM pre-training with Accelerate.

    accelerate launch --config_file configuration/accelerate/cpu.yaml training_scripts/pretrain.py \\
        --recipe configuration/recipes/pretrain-small.yaml --data data/synth --output_dir runs/pt [--resume]
"""

from mu2slam_hf.cli.train import pretrain_main

if __name__ == "__main__":
    pretrain_main()
