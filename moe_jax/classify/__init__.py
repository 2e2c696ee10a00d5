"""Text classification: data (`datasets`: the JSONL format, its reader, four real sets).

Modules are imported by name (`from moe_jax.classify import datasets`); this
file imports nothing, so `import moe_jax.classify` stays light.
"""
