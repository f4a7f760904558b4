"""Thin wrapper of `mu2slam-build-fillets` (command in :mod:`mu2slam_hf.cli.build_data`, corpus built by
:mod:`mu2slam_hf.data.fillets`); see `--help`."""

from mu2slam_hf.cli.build_data import build_fillets_main

if __name__ == "__main__":
    build_fillets_main()
