#!/usr/bin/env bash
# Make sure Fashion-MNIST is on this machine (`make data`), in a folder ffpipe reads:
#   1. already there: /usr/share/datasets/fashion-mnist ($FASHION_MNIST_DIR), the download cache
#      ($FFPIPE_CACHE, default ~/.cache/ffpipe: fashion_mnist/), or ./data/fashion_mnist;
#   2. Debian's package dataset-fashion-mnist, where apt-get can run (root, or sudo without a password);
#   3. else torchvision's download into the cache (python -m ffpipe.data.fetch), which needs the internet.
set -euo pipefail
source "$(dirname "$0")/venv.sh"   # python3: the repository's .venv where there is one
dir=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
cache="${FFPIPE_CACHE:-$HOME/.cache/ffpipe}/fashion_mnist"
for place in "$dir" "$cache" "$cache/FashionMNIST/raw" "data/fashion_mnist"; do
  if [ -f "$place/train-images-idx3-ubyte.gz" ] || [ -f "$place/train-images-idx3-ubyte" ]; then exit 0; fi
done

# apt-get only where it can run: as root, or with sudo that asks no password (-n)
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then sudo="sudo -n"; else sudo="none"; fi
fi
if [ "$sudo" != none ] && command -v apt-get >/dev/null 2>&1; then
  echo "Fashion-MNIST not found: installing Debian's dataset-fashion-mnist" >&2
  if $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
     || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; }; then
    [ -f "$dir/train-images-idx3-ubyte.gz" ] && exit 0
  fi
fi

echo "Fashion-MNIST not found: downloading it with torchvision into $cache" >&2
if "${PYTHON:-python3}" -m ffpipe.data.fetch fashion_mnist; then exit 0; fi
cat >&2 <<MSG
Fashion-MNIST is not on this machine: apt-get could not install it and the download failed.
Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and
t10k-labels-idx1-ubyte.gz (from https://github.com/zalandoresearch/fashion-mnist) into
$cache/ and run the command again (or, with root: apt-get install dataset-fashion-mnist).
MSG
exit 1
