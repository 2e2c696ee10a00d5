"""Builds the PRM demo data shipped in moe_jax/assets from the GSM8K sample.

    python scripts/make_prm_samples.py

* gsm8k_chat_sample.jsonl: GSM8K reference solutions as chat examples, one step
  per line ("Step k: ..."), ending "The answer is: N" (the format the PRM tools parse), for
  pretraining a tiny generator/PRM base.
* prm_gsm8k_sample.jsonl: Math-Shepherd-format step labels. Each problem gives
  its reference solution (every step +) and one corrupted solution: a number in
  step k is changed, the solution then ends with a wrong answer; steps before k
  are +, step k and the answer step are -. Synthetic, exact labels: a test bed
  for the PRM code, not a substitute for Math-Shepherd's data.
"""

import json
import os
import re

import numpy as np

from moe_jax.prm import data, gsm8k

ASSETS = os.path.join(os.path.dirname(__file__), "..", "moe_jax", "assets")


def corrupt(steps, answer, rng):
  k = int(rng.integers(0, len(steps) - 1))  # an intermediate step, not the answer step
  numbers = list(re.finditer(r"\d+", steps[k]))
  if not numbers:
    return None
  m = numbers[int(rng.integers(0, len(numbers)))]
  bad = steps[k][:m.start()] + str(int(m.group()) + int(rng.integers(1, 10))) + steps[k][m.end():]
  wrong = gsm8k.normalize(answer)
  try:
    wrong = str(int(float(wrong)) + int(rng.integers(1, 20)))
  except (TypeError, ValueError):
    return None
  new = steps[:k] + [bad, f"Step {k + 2}: The answer is: {wrong}"]
  return data.Example("", new, [1.0] * k + [0.0, 0.0])


def main():
  rng = np.random.default_rng(0)
  problems = gsm8k.load(os.path.join(ASSETS, "gsm8k_train_sample.jsonl"))
  for p in problems:  # Math-Shepherd writes "Step k: ..." lines
    p["steps"] = [f"Step {i + 1}: {s}" for i, s in enumerate(p["steps"])]
  with open(os.path.join(ASSETS, "gsm8k_chat_sample.jsonl"), "w", encoding="utf-8") as f:
    for p in problems:
      f.write(json.dumps({"messages": [{"role": "user", "content": p["question"]},
                                       {"role": "assistant", "content": "\n".join(p["steps"])}]},
                         ensure_ascii=False) + "\n")
  examples = []
  for p in problems:
    examples.append(data.Example(p["question"], p["steps"], [1.0] * len(p["steps"])))
    bad = corrupt(p["steps"], p["answer"], rng)
    if bad is not None:
      examples.append(data.Example(p["question"], bad.steps, bad.labels))
  data.write_math_shepherd(examples, os.path.join(ASSETS, "prm_gsm8k_sample.jsonl"))
  print(f"{len(problems)} chat examples, {len(examples)} labelled solutions")


if __name__ == "__main__":
  main()
