"""Thin wrapper of `mu2slam-build-synthetic` (logic in :mod:`mu2slam_hf.data.synthetic`); see `--help`."""

from mu2slam_hf.data.synthetic import main

if __name__ == "__main__":
    main()
