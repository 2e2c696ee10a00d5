"""Reading jaxprs in tests: what a traced program computes, before XLA rewrites it."""

import collections

import jax


def eqns(jaxpr):
  """Every equation of a jaxpr and of its sub-jaxprs (jit, remat, scan, custom_vjp, ...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from eqns(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from eqns(sub)


def dot_shapes(jaxpr) -> collections.Counter:
  """Output shapes of every dot_general in a jaxpr, its sub-jaxprs included."""
  return collections.Counter(tuple(e.outvars[0].aval.shape) for e in eqns(jaxpr)
                             if e.primitive.name == "dot_general")


def primitives(jaxpr) -> collections.Counter:
  """How often each primitive occurs in a jaxpr, its sub-jaxprs included."""
  return collections.Counter(e.primitive.name for e in eqns(jaxpr))
