"""ArithChain: generator invariants, the exact checker on hand-written solutions, the tokenizer.

Operation results are recomputed here independently of `arith.apply`; expected
check results for wrong solutions are written out by hand.
"""

import re
import zlib

import numpy as np
import pytest

from moe_jax.prm import arith, gsm8k
from moe_jax.prm.arith import ArithTokenizer, Op, Problem

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}

# Tom: 7 + 5 = 12, 12 - 3 = 9, 9 * 2 = 18; Ben's 4 pears are a distractor.
TOM = Problem(
    question=("Tom has 7 apples. Ben has 4 pears. Tom buys 5 more apples. Tom gives away 3 apples. "
              "Tom doubles the number of apples. How many apples does Tom have now?"),
    start=7,
    ops=(Op("+", 5, "Tom buys 5 more apples."), Op("-", 3, "Tom gives away 3 apples."),
         Op("*", 2, "Tom doubles the number of apples.")),
    values=(7, 12, 9, 18), answer=18)
TOM_GOLD = ["Step 1: 7 + 5 = 12", "Step 2: 12 - 3 = 9", "Step 3: 9 * 2 = 18. The answer is: 18"]

# A cancelling pair: 7 + 5 - 5 = 7, then 7 * 2 = 14; skipping the pair still reaches 14.
ANNA = Problem(
    question=("Anna has 7 coins. Anna finds 5 more coins. Anna loses 5 coins. "
              "Anna doubles the number of coins. How many coins does Anna have now?"),
    start=7,
    ops=(Op("+", 5, "Anna finds 5 more coins."), Op("-", 5, "Anna loses 5 coins."),
         Op("*", 2, "Anna doubles the number of coins.")),
    values=(7, 12, 7, 14), answer=14)


def _sentences(question):
  return re.split(r"(?<=[.?]) ", question)


@pytest.fixture(scope="module")
def problems():
  return arith.make_split("sft", 2000, seed=3)


def test_splits_are_deterministic_prefix_stable_and_seeded():
  a = arith.make_split("dev", 60)
  assert a == arith.make_split("dev", 60)
  assert arith.make_split("dev", 25) == a[:25]
  other_seed = arith.make_split("dev", 60, seed=1)
  assert [p.question for p in other_seed] != [p.question for p in a]


def test_split_seeding_and_dedupe():
  # One-operation problems repeat often enough that the raw seed stream has duplicates.
  tag, n = zlib.crc32(b"dupes"), 1500
  raw = []
  for i in range(n):
    rng = np.random.default_rng([0, tag, i])
    raw.append(arith.make_problem(rng, (1,)[rng.integers(1)]))  # make_split draws k from ks first
  split = arith.make_split("dupes", n, ks=(1,))
  questions = [p.question for p in split]
  assert len({p.question for p in raw}) < n and len(set(questions)) == n
  # Problem i is the raw draw unless that question was already taken (here by a raw draw).
  firsts = {}
  for i, p in enumerate(raw):
    firsts.setdefault(p.question, i)
  assert [split[i] == p for i, p in enumerate(raw)] == [firsts[p.question] == i for i, p in enumerate(raw)]


def test_split_names_give_disjoint_unique_questions():
  splits = {name: [p.question for p in arith.make_split(name, 400)] for name in ("sft", "rm_train", "dev", "test")}
  for name, qs in splits.items():
    assert len(set(qs)) == len(qs), name
  names = list(splits)
  for i, x in enumerate(names):
    for y in names[i + 1:]:
      assert not set(splits[x]) & set(splits[y]), (x, y)


def test_values_follow_the_operations(problems):
  kinds = set()
  for p in problems:
    assert 1 <= p.start <= 20 and p.values[0] == p.start
    assert len(p.values) == p.k + 1 and p.answer == p.values[-1]
    for op, a, c in zip(p.ops, p.values, p.values[1:]):
      kinds.add(op.kind)
      if op.kind in "+-":
        assert 1 <= op.operand <= 20
      else:
        assert op.operand in (2, 3, 4, 5)
      if op.kind == "/":
        assert a % op.operand == 0, (p.question, a, op)
      assert _OPS[op.kind](a, op.operand) == c
      assert 0 <= c <= arith.MAX_VALUE
      assert op.text in p.question
  assert kinds == set("+-*/")


def test_ks_are_respected(problems):
  assert {p.k for p in problems} == {2, 3, 4, 5, 6}
  ood = arith.make_split("ood", 200, ks=(7, 8))
  assert {p.k for p in ood} == {7, 8}
  with pytest.raises(ValueError):
    arith.make_split("bad", 3, ks=())


def test_question_layout_and_distractors(problems):
  with_distractors = 0
  for p in problems:
    sentences = _sentences(p.question)
    name = sentences[0].split()[0]
    item = sentences[0].split()[-1].rstrip(".")
    assert re.fullmatch(rf"{name} has {p.start} \w+\.", sentences[0])
    assert sentences[-1] == f"How many {item}{'' if item.endswith('s') else 's'} does {name} have now?"
    body = sentences[1:-1]
    extra = [s for s in body if s not in {op.text for op in p.ops}]
    # The op sentences appear in order; the rest are about someone else's other item.
    assert [s for s in body if s not in extra] == [op.text for op in p.ops]
    assert len(extra) in (0, 1, 2)
    for s in extra:
      assert not s.startswith(name) and item.rstrip("s") not in s
    with_distractors += bool(extra)
  assert 0.25 < with_distractors / len(problems) < 0.35


def test_cancelling_pairs_occur_at_about_the_configured_rate(problems):
  pairs = sum(any(a.kind == "+" and b.kind == "-" and a.operand == b.operand for a, b in zip(p.ops, p.ops[1:]))
              for p in problems)
  assert 0.12 < pairs / len(problems) < 0.22


def test_gold_steps_text():
  assert TOM.k == 3
  assert TOM.gold_steps() == TOM_GOLD
  assert arith.chat_example(TOM) == [{"role": "user", "content": TOM.question},
                                     {"role": "assistant", "content": "\n".join(TOM_GOLD)}]
  assert gsm8k.answers_equal(arith.extract_answer("\n".join(TOM_GOLD)), "18")


def test_gold_solutions_are_process_correct(problems):
  for p in problems[:500]:
    steps = p.gold_steps()
    c = arith.check(p, steps)
    assert c.first_error == -1 and all(c.process_correct) and all(c.locally_valid)
    assert c.error_types == (None,) * p.k and c.answer == p.answer and c.answer_correct
    assert arith.oracle_labels(p, steps) == [1.0] * p.k
    # Without the "Step n:" prefix, and with loose spacing, a step still parses.
    loose = [re.sub(r"^Step \d+: ", "", s).replace(" ", "  ") for s in steps]
    assert arith.check(p, loose).first_error == -1


def test_a_slip_marks_the_step_and_every_later_one(problems):
  # Changing step j's result makes step j the first error, whatever follows.
  for n, p in enumerate(problems[:300]):
    j = n % p.k
    steps = p.gold_steps()
    steps[j] = re.sub(r"= (\d+)", lambda m: f"= {int(m[1]) + 1}", steps[j], count=1)
    c = arith.check(p, steps)
    assert c.first_error == j and c.error_types[j] == "arithmetic" and not c.locally_valid[j]
    assert arith.oracle_labels(p, steps) == [1.0] * j + [0.0] * (p.k - j)


def _expect(steps, first_error, error_types, locally_valid, answer, answer_correct=False, problem=TOM):
  c = arith.check(problem, steps)
  assert (c.first_error, c.error_types, c.locally_valid, c.answer, c.answer_correct) == \
         (first_error, error_types, locally_valid, answer, answer_correct)
  assert c.process_correct == tuple(t is None for t in error_types)
  labels = [1.0 if first_error == -1 or i < first_error else 0.0 for i in range(len(steps))]
  assert arith.oracle_labels(problem, steps) == labels


def test_arithmetic_slip_propagates_as_operand_errors():
  # Step 3 is locally valid but builds on the wrong 8: still label 0.
  _expect(["Step 1: 7 + 5 = 12", "Step 2: 12 - 3 = 8", "Step 3: 8 * 2 = 16. The answer is: 16"],
          1, (None, "arithmetic", "operand"), (True, False, True), 16)


def test_skipped_operation():
  _expect(["Step 1: 7 + 5 = 12", "Step 2: 12 * 2 = 24. The answer is: 24"],
          1, (None, "skipped"), (True, True), 24)


def test_distractor_number_is_an_operand_error():
  _expect(["Step 1: 4 + 5 = 9", "Step 2: 9 - 3 = 6", "Step 3: 6 * 2 = 12. The answer is: 12"],
          0, ("operand", "operand", "operand"), (True, True, True), 12)
  # Right running value, an operand from nowhere in the problem.
  _expect(["Step 1: 7 + 4 = 11"], 0, ("operand",), (True,), None)


def test_garbage_is_a_format_error():
  _expect(["I think Tom has lots of apples", "Step 2: 12 minus 3 is 9", "The answer is: 18"],
          0, ("format", "format", "format"), (False, False, False), 18, answer_correct=True)
  _expect(["", "Step 1: 7 + 5 = 12"], 0, ("format", "skipped"), (False, True), None)


def test_right_answer_wrong_process_via_cancelling_pair():
  _expect(["Step 1: 7 * 2 = 14. The answer is: 14"], 0, ("skipped",), (True,), 14, answer_correct=True,
          problem=ANNA)
  _expect(["Step 1: 7 + 5 = 12", "Step 2: 12 - 5 = 7", "Step 3: 7 * 2 = 14. The answer is: 14"],
          -1, (None, None, None), (True, True, True), 14, answer_correct=True, problem=ANNA)


def test_too_short_extra_and_answer_statement_errors():
  # Stops after two of three operations, with or without claiming an answer.
  _expect(TOM_GOLD[:2], 1, (None, "skipped"), (True, True), None)
  _expect(["Step 1: 7 + 5 = 12", "Step 2: 12 - 3 = 9. The answer is: 9"], 1, (None, "skipped"), (True, True), 9)
  # An early answer claim mid-solution is wrong even though the solution goes on correctly.
  _expect(["Step 1: 7 + 5 = 12. The answer is: 12"] + TOM_GOLD[1:], 0, ("skipped", None, None),
          (True, True, True), 18, answer_correct=True)
  # A step past the last operation.
  _expect(TOM_GOLD + ["Step 4: 18 * 1 = 18. The answer is: 18"], 3, (None, None, None, "extra"),
          (True,) * 4, 18, answer_correct=True)
  # The last operation without the answer statement, and an answer that contradicts the step.
  _expect(TOM_GOLD[:2] + ["Step 3: 9 * 2 = 18"], 2, (None, None, "format"), (True,) * 3, None)
  _expect(TOM_GOLD[:2] + ["Step 3: 9 * 2 = 18. The answer is: 19"], 2, (None, None, "arithmetic"), (True,) * 3, 19)
  c = arith.check(TOM, [])
  assert c.first_error == 0 and c.answer is None and not c.answer_correct
  assert arith.oracle_labels(TOM, []) == []


def test_inexact_division_is_locally_invalid():
  p = Problem("Mia has 12 pears. Mia splits the pears equally into 3 groups and keeps one group. "
              "How many pears does Mia have now?", 12,
              (Op("/", 3, "Mia splits the pears equally into 3 groups and keeps one group."),), (12, 4), 4)
  _expect(["Step 1: 12 / 3 = 4. The answer is: 4"], -1, (None,), (True,), 4, answer_correct=True, problem=p)
  _expect(["Step 1: 12 / 5 = 2. The answer is: 2"], 0, ("arithmetic",), (False,), 2, problem=p)
  _expect(["Step 1: 12 / 0 = 0. The answer is: 0"], 0, ("arithmetic",), (False,), 0, problem=p)


def test_tokenizer_round_trips_every_generated_text(problems):
  tok = ArithTokenizer()
  for p in problems[:400] + arith.make_split("ood", 50, ks=(7, 8)):
    steps = p.gold_steps()
    texts = [p.question, "\n".join(steps), f"User: {p.question}\n\nAssistant: " + "\n".join(steps),
             f"{p.question} " + "\n".join(s + " ки" for s in steps)]
    for t in texts[:3]:
      assert tok.decode(tok.encode(t)) == t
    assert tok.decode(tok.encode(texts[3])) == texts[3]
  chat = "User: Tom has 7 apples.\n\nAssistant: Step 1: 7 + 5 = 12"
  ids = tok.encode(chat)
  nl = tok.encode("\n")
  assert len(nl) == 1 and ids.count(nl[0]) == 2
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == chat


def test_tokenizer_single_tokens_and_canonical_spacing():
  tok = ArithTokenizer()
  tag, plus, minus = tok.encode(" ки"), tok.encode("+"), tok.encode("-")
  assert len(tag) == len(plus) == len(minus) == 1 and len({tag[0], plus[0], minus[0]}) == 3
  assert tok.tokens[tag[0]] == "ки"
  assert tok.encode("\n\n") == tok.encode("\n") * 2
  assert tok.encode("120") == [tok.ids["1"], tok.ids["2"], tok.ids["0"]]
  assert tok.encode("  Step\t1 :") == tok.encode("Step 1:")
  assert tok.decode(tok.encode("7+5=12.The answer is:12ки")) == "7 + 5 = 12. The answer is: 12 ки"
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert 90 <= tok.vocab_size <= 200 and len(set(tok.tokens)) == tok.vocab_size
  assert ArithTokenizer().tokens == tok.tokens


def test_tokenizer_rejects_unknown_words_and_ids():
  tok = ArithTokenizer()
  with pytest.raises(ValueError, match=r"'zebra' at position 8"):
    tok.encode("Tom has zebra")
  with pytest.raises(ValueError, match=r"'%'"):
    tok.encode("7 % 2")
  with pytest.raises(ValueError):
    tok.decode([tok.vocab_size])


def test_extra_words_are_appended_without_shifting_ids():
  base = ArithTokenizer()
  extra = ArithTokenizer(extra_words=("good", "bad", "good", "Tom"))
  assert extra.tokens == base.tokens + ["good", "bad"]
  assert extra.decode(extra.encode("good bad")) == "good bad"
  with pytest.raises(ValueError):
    base.encode("good")
  with pytest.raises(ValueError):
    ArithTokenizer(extra_words=("two words",))


def test_hard_negatives_slip_once_or_stop_early():
  """The checker sees a slipped gold fail at the slip and a stopped-early gold fail at its last step."""
  made = 0
  for q in arith.make_split("slips", 60):
    for step in range(q.k):
      for delta in (1, -2):
        steps = arith.slipped(q, step, delta)
        if steps is None:
          continue
        made += 1
        c = arith.check(q, steps)
        assert len(steps) == q.k and c.first_error == step and c.error_types[step] == "arithmetic"
        assert all(t is not None for t in c.error_types[step + 1:]) and not c.answer_correct
        assert arith.oracle_labels(q, steps) == [1.0] * step + [0.0] * (q.k - step)
    for j in range(1, q.k):
      steps = arith.stopped_early(q, j)
      c = arith.check(q, steps)
      assert steps == q.gold_steps()[:j - 1] + [steps[-1]] and c.first_error == j - 1
      assert c.error_types[j - 1] == "skipped" and c.answer == q.values[j]
      assert c.answer_correct == (q.values[j] == q.answer)  # a cancelling pair can land on it
  assert made > 100
  q = arith.make_split("slips", 1)[0]
  with pytest.raises(ValueError, match="delta != 0"):
    arith.slipped(q, 0, 0)
  with pytest.raises(ValueError, match="1 <= steps"):
    arith.stopped_early(q, q.k)
