#!/usr/bin/env bash
# Sets up JoyGen Lip Sync on a fresh machine (Linux or macOS, Python 3.10+): a virtual environment holding
# torch, the pack's requirements and the test requirements, plus espeak-ng (speech for the demo and the tests).
#
#   bash setup.sh                          # creates ./.venv and installs into it (safe on PEP 668 systems)
#   JOYGEN_VENV=/some/venv bash setup.sh   # another virtual environment (created when missing)
#   bash setup.sh --here                   # into the Python that is active (e.g. ComfyUI's): torch left alone
#
# Environment: JOYGEN_PYTHON (the Python that creates the venv; default python3), TORCH_SPEC (default
# "torch==2.14.1 torchvision==0.29.1"), TORCH_INDEX_URL (where torch comes from, e.g. PyTorch's CPU-only
# wheel index), JOYGEN_CONSTRAINTS=1 (install the exact versions of the last green CI run, constraints.txt).
# Re-running it is cheap: nothing is reinstalled while the requirement files are unchanged.
set -euo pipefail
cd "$(dirname "$0")"

here=0
for arg in "$@"; do
  case "$arg" in
    --here) here=1 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (see bash setup.sh --help)" >&2; exit 2 ;;
  esac
done

say() { printf 'setup: %s\n' "$*" >&2; }

if [ "$here" = 1 ]; then
  py=${JOYGEN_PYTHON:-python3}
  say "installing into the active Python: $("$py" -c 'import sys; print(sys.prefix)')"
else
  venv=${JOYGEN_VENV:-.venv}
  if [ ! -x "$venv/bin/python" ]; then
    say "creating the virtual environment $venv"
    "${JOYGEN_PYTHON:-python3}" -m venv "$venv" || {
      say "could not create a virtual environment: install python3-venv (apt-get install python3-venv)"; exit 1; }
  fi
  py="$venv/bin/python"
fi

pip_install() { "$py" -m pip install --disable-pip-version-check -q "$@"; }

# Skip the installs when our venv already holds exactly these requirements (never stamps a shared Python).
stamp=/dev/null
[ "$here" = 1 ] || stamp="$venv/.joygen-setup-stamp"
want=$(cat requirements.txt requirements-test.txt; echo "${TORCH_SPEC:-}|${TORCH_INDEX_URL:-}|${JOYGEN_CONSTRAINTS:-}";
       [ "${JOYGEN_CONSTRAINTS:-}" = 1 ] && cat constraints.txt; true)
want=$(printf '%s' "$want" | cksum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$py" -c 'import torch, av, diffusers' 2>/dev/null; then
  say "requirements already installed in $venv"
else
  if [ -z "${TORCH_SPEC:-}" ] && "$py" -c 'import torch, torchvision' 2>/dev/null; then
    say "keeping the installed torch $("$py" -c 'import torch; print(torch.__version__)')"
  else
    # A CUDA build of torch from PyPI is several GB; TORCH_INDEX_URL points pip at a CPU-only index instead.
    # shellcheck disable=SC2086
    say "installing ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
    # shellcheck disable=SC2086
    pip_install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
  fi
  cons=()
  [ "${JOYGEN_CONSTRAINTS:-}" = 1 ] && cons=(-c constraints.txt)
  say "installing requirements.txt and requirements-test.txt${cons:+ (constrained to constraints.txt)}"
  pip_install -r requirements.txt -r requirements-test.txt "${cons[@]}"
  [ "$here" = 1 ] || printf '%s\n' "$want" > "$stamp"
fi

if ! command -v espeak-ng >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && sudo="sudo -n"; }
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
    say "installing espeak-ng (system-wide, with apt)"
    ($sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq espeak-ng >/dev/null) \
      || say "could not install espeak-ng"
  fi
  command -v espeak-ng >/dev/null 2>&1 || say "espeak-ng is missing (needs root: sudo apt-get install espeak-ng;" \
    "macOS: brew install espeak-ng). Without it the demo cannot speak its sentence (edit your own audio with" \
    "python -m joygen_core edit) and the tests that need speech are skipped, each saying why."
fi
say "ready: $py"
