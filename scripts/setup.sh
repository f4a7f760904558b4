#!/usr/bin/env bash
# Creates .venv and installs the package with its test and training extras.
# - System packages (as root with apt-get): espeak-ng + sox build the synthetic corpus, libsndfile1 decodes audio,
#   ffmpeg lets pipeline("automatic-speech-recognition") read the audio files libsndfile cannot (AAC, M4A, ...),
#   tcmalloc makes CPU training faster. Festival and its English, Italian and Czech voices (56 MB to download), which
#   speak the synthetic corpus's --festival-fraction lines, only when asked for (the main job does not use them):
#   `MU2SLAM_FESTIVAL=1 scripts/setup.sh`; the Russian voice, 179 MB more, with `MU2SLAM_FESTIVAL_RU=1` as well.
# - torch is installed first and pinned: on a machine without CUDA, `pip install torch==2.13.0` takes the CPU build
#   (never several GB of CUDA wheels); with torch already installed in .venv, nothing is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
FESTIVAL_PACKAGES=""
if [ -n "${MU2SLAM_FESTIVAL:-}" ]; then
  FESTIVAL_PACKAGES="festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festvox-itapc16k festvox-italp16k
    festvox-czech-dita festvox-czech-krb festvox-czech-machac festvox-czech-ph ${MU2SLAM_FESTIVAL_RU:+festvox-ru}"
fi
SYSTEM_PACKAGES="espeak-ng sox libsndfile1 ffmpeg $FESTIVAL_PACKAGES"
missing=$(for p in $SYSTEM_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
# tcmalloc, which the training scripts preload: CPU training steps about a fifth faster than with glibc's malloc.
# Its package is libtcmalloc-minimal4t64 since Debian 13 / Ubuntu 24.04, libtcmalloc-minimal4 before.
need_tcmalloc=yes  # (grep without -q reads all its input: with -q it can exit first, and pipefail sees a SIGPIPE)
if PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null | grep libtcmalloc_minimal >/dev/null; then need_tcmalloc=; fi
if [ -n "$missing$need_tcmalloc" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if [ -n "$need_tcmalloc" ]; then
      for candidate in libtcmalloc-minimal4t64 libtcmalloc-minimal4; do
        if apt-cache policy "$candidate" 2>/dev/null | grep "Candidate: [0-9]" >/dev/null; then missing="$missing $candidate"; break; fi
      done
    fi
    [ -z "$missing" ] || apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "Please install the system packages: $missing${need_tcmalloc:+ libtcmalloc-minimal4 (optional, faster CPU training)}" \
      "(e.g. sudo apt-get install ...)" >&2
  fi
fi
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,train]"
echo "mu2slam-hf installed in $(pwd)/.venv"
