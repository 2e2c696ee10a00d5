"""Reading jaxprs in tests: what a traced program computes, before XLA rewrites it."""

import collections

import jax


def dot_shapes(jaxpr) -> collections.Counter:
  """Output shapes of every dot_general in a jaxpr, its sub-jaxprs included."""
  shapes = collections.Counter()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      shapes[tuple(eqn.outvars[0].aval.shape)] += 1
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          shapes += dot_shapes(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          shapes += dot_shapes(sub)
  return shapes
