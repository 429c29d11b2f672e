#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine, safe to run again:
#   1. installs the Debian packages electra-mpi needs (only the missing ones),
#   2. creates .venv (Debian's python3 + system site packages + pinned PyPI packages for reference tests),
#   3. configures and builds into build/.
# Options: --no-build (packages and venv only), --no-venv, --build-dir DIR, --cuda ON|OFF, --jobs N.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir="$root/build"
do_build=1
do_venv=1
cuda_flag=()
jobs=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir | --cuda | --jobs)
      [ $# -ge 2 ] && [ -n "$2" ] || { echo "setup.sh: $1 needs a value" >&2; exit 2; } ;;
  esac
  case "$1" in
    --no-build) do_build=0 ;;
    --no-venv) do_venv=0 ;;
    --build-dir) build_dir=$2; shift ;;
    --cuda)
      case "$2" in ON | OFF) ;; *) echo "setup.sh: --cuda takes ON or OFF, got '$2'" >&2; exit 2 ;; esac
      cuda_flag=(-DELECTRA_CUDA="$2"); shift ;;
    --jobs)
      case "$2" in *[!0-9]* | 0*) echo "setup.sh: --jobs takes a positive integer, got '$2'" >&2; exit 2 ;; esac
      jobs=$2; shift ;;
    *) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

packages=(
  build-essential cmake pkg-config git
  libopenmpi-dev openmpi-bin
  libhdf5-dev
  libboost-log-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenblas-dev
  libdnnl-dev
  libutf8proc-dev
  libcli11-dev
  nlohmann-json3-dev
  python3 python3-venv python3-pip python3-torch python3-h5py python3-numpy python3-matplotlib
  python3-doc
  iproute2  # ip netns, tc: the hosts of tests/jobs/netns_hosts.sh (multihost test, bandwidth bench)
)
# A one-node Slurm cluster for tests/jobs/slurm_test.sh; a site's own Slurm is left alone.
command -v sbatch >/dev/null || packages+=(slurmctld slurmd slurm-client munge)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ $do_venv -eq 1 ]; then
  venv="$root/.venv"
  req="$root/tests/reference/requirements.txt"
  stamp="$venv/.requirements.sha256"
  if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$venv"
  fi
  if [ -f "$req" ] && ! sha256sum --status -c "$stamp" 2>/dev/null; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
    sha256sum "$req" > "$stamp"
  fi
fi

if [ $do_build -eq 1 ]; then
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "${cuda_flag[@]}"
  cmake --build "$build_dir" -j "$jobs"
fi
