#!/usr/bin/env bash
# Make sure Fashion-MNIST is on this machine: Debian's package where apt-get can install it.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
for place in "$dir" "$HOME/.cache/ffpipe/fashion_mnist" "data/fashion_mnist"; do
  if [ -f "$place/train-images-idx3-ubyte.gz" ]; then exit 0; fi
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
if command -v apt-get >/dev/null 2>&1; then
  echo "Fashion-MNIST not found: installing Debian's dataset-fashion-mnist" >&2
  $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
    && [ -f "$dir/train-images-idx3-ubyte.gz" ] && exit 0
fi
cat >&2 <<MSG
Fashion-MNIST is not on this machine and could not be installed with apt-get.
Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and
t10k-labels-idx1-ubyte.gz (from https://github.com/zalandoresearch/fashion-mnist) into
~/.cache/ffpipe/fashion_mnist/ and run the command again.
MSG
exit 1
