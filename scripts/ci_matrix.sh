#!/usr/bin/env bash
# Host matrix: rope_behavior on the TransformerLens versions researchers use besides the main
# environment's 4.x (.venv, scripts/setup.sh). Each host gets its own virtual environment
# (CPU PyTorch first, so pip does not pull a multi-GB CUDA build) and runs the tests marked
# for it (pytest marker `hooked`: tests/model/test_hooked_transformer.py).
#
#   bash scripts/ci_matrix.sh              # all hosts: tl39 tl2 sae
#   bash scripts/ci_matrix.sh tl39 sae     # some of them
#   KEEP_VENVS=1 bash scripts/ci_matrix.sh # reuse existing environments (no reinstall)
#
# Hosts:
#   tl39  TransformerLens 3.9: HookedTransformer and the Bridge side by side (same weights
#         decomposed both ways)
#   tl2   TransformerLens 2.x (no Bridge) with the transformers 4.x and numpy 1.x it needs
#         (pyarrow<23: newer ones, pulled in by datasets, need numpy 2)
#   sae   SAE-Lens (which requires transformer-lens<4) and its HookedSAETransformer
#
# Prints one timing line per host and exits non-zero if any host's tests fail.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TEST_DEPS=(pytest hypothesis jaxtyping beartype)
HOSTS=("$@")
[ ${#HOSTS[@]} -gt 0 ] || HOSTS=(tl39 tl2 sae)

host_requirements() {
  case "$1" in
    tl39) echo "transformer-lens>=3.9,<4" ;;
    tl2) echo "transformer-lens>=2.16,<3 transformers>=4.57,<5 numpy<2 pyarrow>=21,<23" ;;
    sae) echo "sae-lens transformer-lens>=2.16.1,<4" ;;
    *) echo "unknown host '$1'; expected tl39, tl2 or sae" >&2; return 2 ;;
  esac
}

failed=()
summary=()
for host in "${HOSTS[@]}"; do
  reqs=$(host_requirements "$host")
  venv=".venv-$host"
  start=$(date +%s)
  if [ -z "${KEEP_VENVS:-}" ] || [ ! -x "$venv/bin/python" ]; then
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "$TORCH_SPEC"
    # shellcheck disable=SC2086  # $reqs is a list of requirement specifiers
    "$venv/bin/python" -m pip install -q -e . $reqs "${TEST_DEPS[@]}"
  fi
  installed=$(date +%s)
  "$venv/bin/python" -c "import transformer_lens, transformers, torch; from importlib.metadata import version as v; print('[$host] transformer-lens', v('transformer-lens'), '| transformers', transformers.__version__, '| torch', torch.__version__)"
  # --noconftest: tests/conftest.py builds Bridge models (TransformerLens 3.9+ only);
  # the hooked tests bring their own fixtures.
  # TransformerLens 2.x pins beartype<0.15, which cannot check some of rope_behavior's
  # annotations (weakref.ReferenceType[...]): there the jaxtyping import hook is left off.
  checks=()
  [ "$host" != tl2 ] || checks=(-o "addopts=-q")
  set +e
  "$venv/bin/python" -m pytest tests/model/test_hooked_transformer.py -m hooked -p no:cacheprovider \
    --noconftest -rs "${checks[@]}"
  rc=$?
  set -e
  done_at=$(date +%s)
  size=$(du -sh "$venv" | cut -f1)
  line="[$host] install $((installed - start)) s, tests $((done_at - installed)) s, venv $size, pytest exit $rc"
  echo "$line"
  summary+=("$line")
  [ "$rc" -eq 0 ] || failed+=("$host")
done
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "host tests failed: ${failed[*]}" >&2
  exit 1
fi
