"""moe_jax: DeepSeekMoE models, ESFT and process reward models in JAX/Flax.

Load a Hugging Face checkpoint, run it, sample from it and save it:

    import jax.numpy as jnp
    import moe_jax
    model = moe_jax.from_pretrained("path/to/hf_dir", dtype=jnp.float32)
    logits = model(input_ids)                       # int32 [B, T] -> [B, T, V]
    tokens = moe_jax.generate(model, input_ids, max_new_tokens=32)
    moe_jax.save_pretrained(model, "out_dir")

A BERT-style directory loads the same way as an `Encoder`; `model(input_ids)`
then returns the final hidden states [B, T, D] (task heads: `moe_jax.heads`).
"""

from moe_jax.config import ConfigError, ModelConfig
from moe_jax.encoder import Encoder
from moe_jax.generate import generate
from moe_jax.hf import CheckpointError, from_pretrained, save_pretrained
from moe_jax.model import Model, Output, Transformer, init_model

__all__ = [
    "CheckpointError", "ConfigError", "Encoder", "Model", "ModelConfig", "Output", "Transformer",
    "from_pretrained", "generate", "init_model", "save_pretrained",
]
__version__ = "0.1.0"
