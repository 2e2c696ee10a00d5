"""Studies: the papers' claims reproduced at small scale, each one command, cached and resumable.

    python -m moe_jax.studies.esft --out DIR [--quick]   # DeepSeekMoE and ESFT (docs/esft_reproduction)
    python -m moe_jax.studies.prm --out DIR [--quick]    # Math-Shepherd (docs/prm_reproduction)
    python -m moe_jax.studies.classification --out DIR [--quick]  # (docs/classification)
    python -m moe_jax.studies.icl_anchors --out DIR [--quick]     # label words as anchors (docs/icl_anchors)
    python -m moe_jax.studies.cascade --out DIR [--quick]         # CascadeBERT (docs/cascade)
    python -m moe_jax.studies.purify --out DIR [--quick]          # Fine-purifying (docs/purify)
    python -m moe_jax.studies.purify_moe --out DIR [--quick]      # ... on an MoE encoder (docs/purify_moe)

Each writes RESULTS.md (every table with 95% intervals, and a held / failed /
inconclusive verdict per claim), results.json and its plots into DIR. The
studies sit above the library they study: nothing in moe_jax imports them.
"""
