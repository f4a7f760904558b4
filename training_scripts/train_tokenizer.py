"""Train a Mu2SLAM text tokenizer on text files (= `mu2slam-train-tokenizer`; logic in
:mod:`mu2slam_hf.cli.train_tokenizer`).

    python training_scripts/train_tokenizer.py --kind char --vocab_size 4096 --input corpus.en.txt corpus.de.txt \\
        --output_dir tokenizers/char
"""

from mu2slam_hf.cli.train_tokenizer import main

if __name__ == "__main__":
    raise SystemExit(main())
