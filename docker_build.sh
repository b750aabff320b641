#!/usr/bin/env bash
# Build the clip-unlearn Docker image.
set -euo pipefail

usage() {
  cat <<USAGE
Usage: ./docker_build.sh [-t IMAGE] [-b BASE_IMAGE] [-n] [-h]

Build the clip-unlearn image from the Dockerfile in this folder.

Options:
  -t IMAGE       image name and tag            (default: clip-unlearn:latest)
  -b BASE_IMAGE  CUDA-enabled PyTorch base     (default: pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime)
  -n             dry run: print the docker command instead of running it
  -h             show this help and exit
USAGE
}

image="clip-unlearn:latest"
base="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
dry=0
while getopts ":t:b:nh" o; do
  case "$o" in
    t) image="$OPTARG" ;;
    b) base="$OPTARG" ;;
    n) dry=1 ;;
    h) usage; exit 0 ;;
    :) echo "docker_build.sh: option -$OPTARG needs a value (see -h)" >&2; exit 2 ;;
    *) echo "docker_build.sh: unknown option -$OPTARG (see -h)" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ $# -gt 0 ]; then
  echo "docker_build.sh: unexpected argument '$1' (see -h)" >&2
  exit 2
fi

cd "$(dirname "$0")"
cmd=(docker build --build-arg "BASE_IMAGE=$base" -t "$image" .)
if [ "$dry" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
else
  exec "${cmd[@]}"
fi
