"""Mu2SLAM fine-tuning with Accelerate (gradual stage 1, then stage 2 on one task; optional LoRA and noise).

    accelerate launch --config_file configuration/accelerate/cpu.yaml training_scripts/finetune.py \\
        --recipe configuration/recipes/gradual-stage1.yaml --init runs/pt --data data/synth --output_dir runs/ft1
"""

from mu2slam_hf.cli.train import finetune_main

if __name__ == "__main__":
    finetune_main()
