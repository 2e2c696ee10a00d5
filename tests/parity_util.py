"""Helpers the Hugging Face parity tests share."""

import moe_jax


def checkpoint_cache(tmp_path_factory, build):
  """name -> (torch model, its saved directory, moe_jax's load of it), each built once.

  build(name) returns a transformers model; it is written with save_pretrained
  and read back with moe_jax.from_pretrained.
  """
  cache = {}

  def get(name):
    if name not in cache:
      ref = build(name)
      path = tmp_path_factory.mktemp(name)
      ref.save_pretrained(path)
      cache[name] = (ref, path, moe_jax.from_pretrained(path))
    return cache[name]

  return get

