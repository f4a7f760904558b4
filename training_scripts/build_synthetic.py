"""Thin wrapper of `mu2slam-build-synthetic` (command in :mod:`mu2slam_hf.cli.build_data`, corpus built by
:mod:`mu2slam_hf.data.synthetic`); see `--help`."""

from mu2slam_hf.cli.build_data import build_synthetic_main

if __name__ == "__main__":
    build_synthetic_main()
