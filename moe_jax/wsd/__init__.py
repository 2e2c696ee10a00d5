"""FormBERT: Chinese word-sense disambiguation with word-formation knowledge (Zheng et al., 2021).

  formations  the 18 word-formation tags, in the official code's id order, with meanings
  data        the FiCLS TSV columns (context, definition, label, formation): reader,
              writer, the "[CLS] context [SEP] gloss [SEP]" pair rows, context groups
  lexicon     a lexical-sample set built offline from the Xinhua dictionary, jieba and
              CC-CEDICT (not FiCLS, which is unreleased)
  vocab       the CJK characters an English BERT lacks: [UNK] rate, vocabulary extension
  model       the FormBERT head: formation embedding on the pooled output, the formation
              predictor on the embedding layer, the joint loss
  task        the "wsd" task (`train.py --config=configs/wsd_formbert.py`) and its metrics
  configs     the `wsd` config section

Modules are imported by name (`from moe_jax.wsd import model`); this file
imports nothing, so `import moe_jax.wsd` stays light.
"""
