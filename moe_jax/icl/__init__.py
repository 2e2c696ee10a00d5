"""Label words are anchors (Wang et al., EMNLP 2023): the information flow of in-context learning.

Modules, one concern each:
  prompts   templates, label words, demonstrations, anchor positions (the trigram match)
  runner    the shared passes: context prefill, queries against it, compressed contexts, probes
  flows     saliency I_l = |sum_h A * dL/dA| and the flows S_wp, S_pq, S_ww
  isolation isolating label words (or random tokens) in the first / last k layers; loyalty
  deep      A(q, p_i) as a classifier of the model's own prediction: AUCROC_l and R_l
  reweight  anchor re-weighting: exp(beta) on A(q, p_i), beta trained with the engine's step
  compress  Hidden_anchor context compression, its baselines and the speed-up
  diagnose  predicted confusion from the anchors' keys against the real confusion
  episodes  synthetic ICL episodes to train a small MoE model on (the study's MoE part)

`python -m moe_jax.icl {flows,isolate,deep,reweight,compress,diagnose} ...` runs each.
"""
