#!/usr/bin/env bash
# Build .devbundle/: what the GPU checks need on a bare GPU machine that has its own Python, CUDA torch and Triton but
# no network and no `make setup` (as the lent H200 of 2026-12-04: Python 3.12, torch 2.11, Triton 3.6).
#   bash scripts/gpu/bare_machine_bundle.sh [PYVER]        # here, after `make setup`; PYVER: the GPU machine's, 3.12
# It copies this venv's patched fairseq 0.12.2 (without its compiled modules), fairseq_cli, hydra, omegaconf, antlr4 and
# fairscale (FSDP) (pure Python), rebuilds fairseq's Cython/C++ modules for PYVER from the fairseq sdist, and downloads
# bitarray's wheel for PYVER. Downloads go through pip and the package index it is configured with (pip config list);
# FAIRSEQ_SDIST=FILE uses a fairseq-0.12.2.tar.gz you already have instead. There, from the repository root:
#   source .devbundle/env.sh && python scripts/gpu/check_sage_gpu.py --out runs/gpu_check
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=${1:-3.12}
PYBIN=${PYBIN:-python$PYVER}
command -v "$PYBIN" >/dev/null || { echo "bare_machine_bundle: $PYBIN not found (set PYBIN)" >&2; exit 1; }
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -f "$SITE/fairseq/version.py" ] || { echo "bare_machine_bundle: no fairseq in .venv: run make setup first" >&2; exit 1; }
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT

# fairseq's sdist first, before anything is built or an earlier bundle removed. pip prepares its metadata in an
# isolated build environment (as `make setup` does when it installs fairseq), so this Python's pip does it.
if [ -n "${FAIRSEQ_SDIST:-}" ]; then
  SDIST=$FAIRSEQ_SDIST
  [ -f "$SDIST" ] || { echo "bare_machine_bundle: FAIRSEQ_SDIST=$SDIST is not a file" >&2; exit 1; }
else
  SDIST=$BUILD/sdist/fairseq-0.12.2.tar.gz
  if ! .venv/bin/python -m pip download -q --no-deps --no-binary fairseq fairseq==0.12.2 -d "$BUILD/sdist" \
      || [ ! -f "$SDIST" ]; then
    echo "bare_machine_bundle: pip could not download fairseq 0.12.2's source distribution (fairseq-0.12.2.tar.gz;" \
      "pip's messages are above): check the package index pip uses (.venv/bin/python -m pip config list), or" \
      "download the file yourself and give it as FAIRSEQ_SDIST=/path/to/fairseq-0.12.2.tar.gz" >&2
    exit 1
  fi
fi

OUT=.devbundle
rm -rf "$OUT" && mkdir -p "$OUT/site" "$OUT/whl"
for name in fairseq fairseq_cli hydra omegaconf antlr4 fairscale; do cp -r "$SITE/$name" "$OUT/site/"; done
cp -r "$SITE"/fairseq-0.12.2.dist-info "$SITE"/hydra_core-*.dist-info "$SITE"/omegaconf-*.dist-info \
  "$SITE"/fairscale-*.dist-info "$OUT/site/"
find "$OUT/site" -name __pycache__ -prune -exec rm -rf {} +
find "$OUT/site" -name '*.so' -delete  # built for this Python: rebuilt for PYVER below

"$PYBIN" -m venv "$BUILD/venv"
"$BUILD/venv/bin/python" -m pip -q install "cython==$(.venv/bin/python -c 'import Cython; print(Cython.__version__)')" \
  "numpy==$(.venv/bin/python -c 'import numpy; print(numpy.__version__)')" setuptools
tar xzf "$SDIST" -C "$BUILD"
(cd "$BUILD/fairseq-0.12.2" && "$BUILD/venv/bin/python" - <<'PY'
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

cpp = dict(language="c++", extra_compile_args=["-std=c++11"])
cython_modules = [Extension(f"fairseq.data.{m}", [f"fairseq/data/{m}.pyx"], include_dirs=[numpy.get_include()], **cpp)
                  for m in ("data_utils_fast", "token_block_utils_fast")]
libbleu = Extension("fairseq.libbleu", ["fairseq/clib/libbleu/libbleu.cpp", "fairseq/clib/libbleu/module.cpp"], **cpp)
setup(name="fairseq_ext", ext_modules=cythonize(cython_modules, language_level=3) + [libbleu],
      script_args=["build_ext", "--inplace", "-q"])
PY
)
cp "$BUILD"/fairseq-0.12.2/fairseq/libbleu.*.so "$OUT/site/fairseq/"
cp "$BUILD"/fairseq-0.12.2/fairseq/data/*_fast.*.so "$OUT/site/fairseq/data/"
.venv/bin/python -m pip -q download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  "bitarray==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("bitarray"))')" -d "$OUT/whl"
cat > "$OUT/env.sh" <<'SH'
# source from the repository root on the GPU machine: bitarray into /tmp/site, then the bundle and the checkout on the path
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devbundle/whl/*.whl
export PYTHONPATH=$PWD:$PWD/.devbundle/site:/tmp/site PYTHONUNBUFFERED=1
SH
echo '*' > "$OUT/.gitignore"  # git (and ruff) ignore the bundle, in a worktree too (its .git is a file)
echo "wrote $OUT ($(du -sh "$OUT" | cut -f1)): on the GPU machine, source $OUT/env.sh"
