"""Thin wrapper of `mu2slam-build-fillets` (logic in :mod:`mu2slam_hf.data.fillets`); see `--help`."""

from mu2slam_hf.data.fillets import main

if __name__ == "__main__":
    main()
