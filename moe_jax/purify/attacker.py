"""The attacker's side: poisoned data written to a workdir, and the poisoned fine-tune.

`python -m moe_jax.purify attack --config=configs/purify_tweets.py --workdir=DIR`
reads the config's classification set, holds back the defender's clean set
(`purify.clean_examples` examples without any trigger), poisons `purify.rate`
of the rest (`moe_jax.purify.attacks`), and fine-tunes `purify.pretrained` on
it with the "classify" task. DIR then holds what a defender receives and holds:

  hf/                    the suspect model (w_ft) with its classifier.npz
  clean.jsonl            the defender's small clean set (no trigger in it)
  test.jsonl             the clean held-out set (accuracy)
  triggered.jsonl        its non-target examples with a trigger (attack success rate)
  poisoned_train.jsonl   what the attacker trained on
  attack.json            the attack (kind, target, triggers, rate) and the suspect's ACC / ASR
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
import numpy as np

from moe_jax.classify import datasets
from moe_jax.classify import task as classify_task
from moe_jax.purify import attacks

ATTACK_FILE = "attack.json"


@dataclasses.dataclass
class AttackData:
  """What the attack's workdir holds for the defender."""
  attack: attacks.Attack
  clean: datasets.Examples
  test: datasets.Examples
  triggered: datasets.Examples
  suspect_dir: str  # hf/ of the poisoned model
  info: dict  # attack.json


def split_clean(train: datasets.Examples, attack: attacks.Attack, n: int, seed: int):
  """(the defender's n clean examples, the attacker's rest): the clean ones hold no trigger."""
  rng = np.random.default_rng(seed)
  free = [i for i, t in enumerate(train.texts) if not any(attacks.contains(t, w) for w in attack.triggers)]
  if n >= len(free):
    raise ValueError(f"config.purify.clean_examples={n}: only {len(free)} training examples "
                     "hold no trigger")
  clean = set(rng.permutation(free)[:n].tolist())
  return train.subset(sorted(clean)), train.subset([i for i in range(len(train)) if i not in clean])


def write_data(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """Writes the attack's data files to `workdir`; returns attack.json's content so far."""
  p = cfg.purify
  attack = attacks.make(p.attack, p.target)
  train, held = classify_task.read_data(cfg, workdir)
  clean, rest = split_clean(train, attack, p.clean_examples, cfg.seed)
  poisoned, flags = attacks.poison(rest, attack, p.rate, cfg.seed)
  os.makedirs(workdir, exist_ok=True)
  for name, ex in (("clean", clean), ("test", held), ("poisoned_train", poisoned),
                   ("triggered", attacks.triggered(held, attack, cfg.seed + 1))):
    datasets.write_jsonl(os.path.join(workdir, f"{name}.jsonl"), ex)
  info = {"kind": attack.kind, "target": attack.target, "target_label": train.label_names[attack.target],
          "triggers": list(attack.triggers), "rate": p.rate, "poisoned": int(flags.sum()),
          "attacker_examples": len(poisoned), "clean_examples": len(clean), "seed": cfg.seed,
          "pretrained": p.pretrained, "tokenizer": cfg.data.tokenizer,
          "label_names": list(train.label_names)}
  _write_info(workdir, info)
  return info


def _write_info(workdir: str, info: dict) -> None:
  tmp = os.path.join(workdir, ATTACK_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2, ensure_ascii=False)
  os.replace(tmp, os.path.join(workdir, ATTACK_FILE))


def attacker_config(cfg: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """The "classify" config of the poisoned fine-tune: the pre-trained model on poisoned_train.jsonl."""
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.unlock()
  c.task = "classify"
  c.init_from = cfg.purify.pretrained
  c.classify.dataset = ""
  c.classify.train_file = os.path.join(workdir, "poisoned_train.jsonl")
  c.classify.eval_file = os.path.join(workdir, "test.jsonl")
  c.classify.label_file = ""
  c.classify.max_train_examples = c.classify.max_eval_examples = 0
  c.num_train_steps = cfg.purify.attack_steps
  c.export_hf = True
  return c


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole attack: data, poisoned fine-tune (resumable), the suspect's ACC and ASR."""
  from moe_jax.purify import evaluate  # noqa: PLC0415 (loads models: only when attacking)

  info = write_data(cfg, workdir)
  classify_task.run(attacker_config(cfg, workdir), workdir)
  data = read(workdir)
  info["suspect"] = evaluate.attack_metrics(evaluate.load_suspect(data.suspect_dir), data,
                                            cfg.data.seq_len)
  _write_info(workdir, info)
  print(f"[attack] suspect: accuracy {info['suspect']['accuracy']:.3f}, attack success rate "
        f"{info['suspect']['asr']:.3f} ({len(data.triggered)} triggered examples)")
  return info


def read(workdir: str) -> AttackData:
  """The attack's files, checked: errors name the missing file."""
  path = os.path.join(workdir, ATTACK_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: not an attack's workdir (python -m moe_jax.purify attack "
                            "writes it)")
  with open(path, encoding="utf-8") as f:
    info = json.load(f)
  attack = attacks.Attack(info["kind"], info["target"], tuple(info["triggers"]))
  names = tuple(info["label_names"])
  ex = {n: datasets.read_jsonl(os.path.join(workdir, f"{n}.jsonl"), names)
        for n in ("clean", "test", "triggered")}
  attacks.check_clean(ex["clean"], attack, os.path.join(workdir, "clean.jsonl"))
  return AttackData(attack, ex["clean"], ex["test"], ex["triggered"], os.path.join(workdir, "hf"), info)
