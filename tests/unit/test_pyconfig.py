"""pyconfig: nanoGPT config files read with ast under limits. What it accepts it evaluates exactly as
Python does (Python's own eval of the same expression is the reference, for inputs small enough to be
safe); what would take unbounded time or memory is refused in one line, quickly, before the work."""

from __future__ import annotations

import random
import time

import pytest

from gptlab import pyconfig
from gptlab.errors import UserError
from gptlab.pyconfig import COMPUTED, read_assignments


def values(text: str) -> dict:
    return {n: a.value for a in read_assignments(text, "c.py") for n in a.names}


def refusal(text: str, limits: pyconfig.Limits = pyconfig.LIMITS) -> str:
    """The one-line UserError for text, which must come within a second (the limits act before the work)."""
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        list(read_assignments(text, "c.py", limits))
    assert time.perf_counter() - t0 < 1.0, "a refusal must come before the work, not after it"
    assert "\n" not in str(e.value)
    return str(e.value)


def test_the_nanogpt_shakespeare_char_config_reads_as_python_runs_it():
    text = ('out_dir = "out-shakespeare-char"\neval_interval = 250 # keep frequent\nwandb_log = False\n'
            "import time\nwandb_run_name = 'ft-' + str(time.time())\ngradient_accumulation_steps = 1\n"
            "batch_size = 64\nblock_size = 256\nn_layer = 6\nlearning_rate = 1e-3\nmax_iters = 5000\n"
            "lr_decay_iters = 5000 # make equal to max_iters usually\nmin_lr = 1e-4\nbeta2 = 0.99\n"
            "warmup_iters = 100\ntokens = 5 * 8 * 1024\nbig = 10**9\nname = 'gpt' + '2'\nt = (1, 2) * 2\n")
    namespace: dict = {}
    exec(text, namespace)  # the reference: what `python train.py config.py` would set (safe text, ours)
    got = values(text)
    assert got.pop("wandb_run_name") is COMPUTED
    assert got == {k: namespace[k] for k in got}


def test_random_arithmetic_matches_python():
    """Random small expressions over ints, floats and names: the same value as Python's eval, or COMPUTED
    exactly where Python raises (division by zero, a complex power)."""
    rng = random.Random(0)
    ops = ["+", "-", "*", "/", "//", "%", "**"]

    def expr(depth):
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(["a", "b", str(rng.randint(-9, 9)), f"{rng.uniform(-4, 4):.3f}"])
        op = rng.choice(ops)
        right = str(rng.randint(0, 3)) if op == "**" else expr(depth - 1)
        return f"({expr(depth - 1)} {op} {right})"

    for _ in range(400):
        e = expr(3)
        text = f"a = 7\nb = -2.5\nx = {e}\n"
        try:
            want = eval(e, {"a": 7, "b": -2.5})  # the reference, on text this test made
        except ArithmeticError:
            want = COMPUTED
        if isinstance(want, complex):
            want = COMPUTED
        got = values(text)["x"]
        assert got == want or (got != got and want != want), (e, got, want)  # NaN equals NaN here


@pytest.mark.parametrize("name,text,words", [
    ("x = x*x forty times", "x = 2\n" + "x = x * x\n" * 40, ["integer", "bits"]),
    ("x = x**64 repeated", "x = 3\n" + "x = x ** 64\n" * 20, ["integer", "bits"]),
    ("s = s + s 36 times (6.5 GB)", "s = 'abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz01234567890ab'\n"
     + "s = s + s\n" * 36, ["text", "characters"]),
    ("list doubling", "s = [1, 2]\n" + "s = s + s\n" * 40, ["list", "items"]),
    ("repetition s * n", "s = 'a' * 10**12\n", ["text"]),
    ("repetition n * list", "s = 10**12 * [0]\n", ["list"]),
    ("power tower", "x = 10**10**10\n", ["integer"]),
    ("power with a name", "n = 10**6\nx = 7 ** n\n", ["integer"]),
    ("200,000 nested operators", "x = " + "-" * 200_000 + "1\n", ["tokens"]),
    ("200,000 chained additions", "x = 1" + "+1" * 200_000 + "\n", []),
    ("nested 10,000 deep", "x = " + "1+" * 8_000 + "1\n", ["nested"]),
    ("calls nested 100 deep", "x = " + "f(" * 100 + ")" * 100 + "\n", ["nested"]),
    ("a number of 4,300+ digits", "x = " + "7" * 4400 + "\n", ["digits"]),
    ("an integer of 4,400 bits in hex", "x = 0x" + "f" * 1100 + "\n", ["bits"]),
    ("a string literal of 1 MB", "x = '" + "a" * 200_000 + "'\n", ["text"]),
    ("source of 10 MB", "x = 1\n" * 2_000_000, ["bytes"]),
    ("a decorated function", "@decorator\ndef f():\n    pass\n", ["c.py:1", "@decorator", "key = value"]),
    ("an if block", "if True:\n    batch_size = 1\nelse:\n    batch_size = 2\n", ["c.py:1", "if True:"]),
    ("a for loop", "for i in range(10**9):\n    x = i\n", ["c.py:1", "for i in"]),
    ("unreadable syntax", "x = (1,\n", ["not a readable"]),
])
def test_hostile_files_are_refused_in_one_line_before_the_work(name, text, words):
    line = refusal(text)
    assert line.startswith("c.py")
    for w in words:
        assert w in line, line


def test_total_work_has_a_ceiling():
    """Values each within the size limits, but many of them: the work ceiling stops the file."""
    text = "s = 'a' * 60000\n" + "t = s + 'b'\n" * 100
    assert "steps" in refusal(text)
    small = pyconfig.Limits(work=1000)
    assert "steps" in refusal("x = 1\n" * 600, small)
    assert values("x = 1\n" * 600)["x"] == 1  # the default ceiling is far above a real config


def test_limits_are_exact_at_their_edges():
    lim = pyconfig.LIMITS
    assert values(f"s = 'a' * {lim.text_length}\n")["s"] == "a" * lim.text_length
    assert "text" in refusal(f"s = 'a' * {lim.text_length + 1}\n")
    assert values(f"x = 2 ** {lim.int_bits - 1}\n")["x"] == 2 ** (lim.int_bits - 1)
    assert "bits" in refusal(f"x = 2 ** {lim.int_bits}\n")
    assert len(values(f"s = [0] * {lim.list_length}\n")["s"]) == lim.list_length
    assert "list" in refusal(f"s = [0] * {lim.list_length + 1}\n")
    deep = lim.depth // 2 - 2  # a list level is two tree levels (List, then its element)
    assert values("x = " + "[" * deep + "]" * deep + "\n")["x"] is not None


def test_names_only_from_earlier_literals():
    got = values("a = 4\nb = a * 2\nc = open('x')\nd = c\n")
    assert got["a"] == 4 and got["b"] == 8 and got["c"] is COMPUTED and got["d"] is COMPUTED
