# Sourced by the launch scripts (not run): the repository's .venv, made by `make demo` or
# `make test`, goes first on PATH where it exists and no other virtual environment is active, so
# python3, torchrun and ray are those ffpipe was installed with, without activating it first.
# Then `need_ray` stops a script that runs the `ray` command with what to install where it is missing.
ffpipe_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$ffpipe_repo/.venv/bin/python3" ]; then
  export PATH="$ffpipe_repo/.venv/bin:$PATH"
fi

need_ray() {
  command -v ray >/dev/null 2>&1 && return 0
  echo "$(basename "$0"): the ray command is not installed: pip install 'ffpipe[ray]' (or make demo," \
    "then source $ffpipe_repo/.venv/bin/activate)" >&2
  exit 2
}
