"""The command lines: argument parsing and printing for the console scripts of pyproject.toml and the thin scripts in
training_scripts/; the work itself is done by the library they call.

    mu2slam-pretrain, mu2slam-finetune       train.py            (training_scripts/pretrain.py, finetune.py)
    mu2slam-evaluate                         evaluate.py         (training_scripts/evaluate.py)
    mu2slam-push-to-hub                      push_to_hub.py      (training_scripts/push_to_hub.py)
    mu2slam-train-tokenizer                  train_tokenizer.py  (training_scripts/train_tokenizer.py)
    mu2slam-build-synthetic, -fillets, -text,
    -tuxpaint, -parallel-text                build_data.py       (training_scripts/build_synthetic.py, build_fillets.py)

Each module is imported on its own, so one command does not load the others' dependencies.
"""
