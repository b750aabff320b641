#!/usr/bin/env bash
# Run clip-unlearn in its Docker image: GPUs, caches and data mounted, arguments passed through.
set -euo pipefail

usage() {
  cat <<USAGE
Usage: ./docker_run.sh [-i IMAGE] [-g GPUS] [-c CACHE_DIR] [-d DATA_DIR] [-w WORK_DIR] [-s SHM] [-n] [-h] [--] [clip-unlearn args...]

Run clip-unlearn inside its image. Everything after the options (or after --) is passed to clip-unlearn.

Options:
  -i IMAGE      image to run                                     (default: clip-unlearn:latest)
  -g GPUS       all, none, or device ids such as 0 or 0,1        (default: all)
  -c CACHE_DIR  host folder for model weights and embeddings,
                mounted at /cache                                (default: \$HOME/.cache/clip-unlearn-docker)
  -d DATA_DIR   host folder with data sets, mounted read-only
                at /data                                         (default: none)
  -w WORK_DIR   host folder for outputs, mounted at /work        (default: current folder)
  -s SHM        shared memory size for data loading              (default: 8g)
  -n            dry run: print the docker command instead of running it
  -h            show this help and exit

Example:
  ./docker_run.sh -g 0 -d ~/datasets -- attack --model ViT-B-32-quickgelu:laion400m_e32 --data /data/facescrub
USAGE
}

image="clip-unlearn:latest"
gpus="all"
cache="${HOME:-/tmp}/.cache/clip-unlearn-docker"
data=""
work="$PWD"
shm="8g"
dry=0
while getopts ":i:g:c:d:w:s:nh" o; do
  case "$o" in
    i) image="$OPTARG" ;;
    g) gpus="$OPTARG" ;;
    c) cache="$OPTARG" ;;
    d) data="$OPTARG" ;;
    w) work="$OPTARG" ;;
    s) shm="$OPTARG" ;;
    n) dry=1 ;;
    h) usage; exit 0 ;;
    :) echo "docker_run.sh: option -$OPTARG needs a value (see -h)" >&2; exit 2 ;;
    *) echo "docker_run.sh: unknown option -$OPTARG (see -h)" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift

case "$gpus" in
  all) gpu_args=(--gpus all) ;;
  none) gpu_args=() ;;
  *[!0-9,]*|,*|*,|*,,*|"") echo "docker_run.sh: -g takes all, none or device ids like 0,1 (got '$gpus')" >&2; exit 2 ;;
  *) gpu_args=(--gpus "\"device=$gpus\"") ;;
esac
if [ -n "$data" ] && [ ! -d "$data" ]; then
  echo "docker_run.sh: data folder '$data' does not exist (-d)" >&2
  exit 2
fi

mounts=(-v "$cache:/cache" -v "$work:/work")
[ -n "$data" ] && mounts+=(-v "$data:/data:ro")
cmd=(docker run --rm -it --shm-size "$shm" --user "$(id -u):$(id -g)" "${gpu_args[@]}" "${mounts[@]}" "$image" "$@")
if [ "$dry" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
else
  mkdir -p "$cache"
  exec "${cmd[@]}"
fi
