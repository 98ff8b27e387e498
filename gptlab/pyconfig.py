"""nanoGPT-style config files (`key = value` lines of Python) read with ast under limits, never executed.

Each limit is checked before the work it bounds: the source's size and token count before it is parsed,
the syntax tree's node count and nesting depth before anything is evaluated, and the size of every value
an operation would make (string and bytes lengths, list lengths, integer bits, a power, a repetition)
before it is computed; a ceiling on the whole file's work covers the rest. Whatever passes the limits
costs milliseconds; whatever does not is one UserError line naming the line, the limit and the fix.
"""

from __future__ import annotations

import ast
import io
import operator
import tokenize
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

from gptlab.errors import UserError


@dataclass(frozen=True)
class Limits:
    """Ceilings for one config file: far above any real nanoGPT config (a few hundred bytes)."""

    source_bytes: int = 256 * 1024
    tokens: int = 20_000
    nodes: int = 50_000
    depth: int = 64  # nesting of the syntax tree
    text_length: int = 1 << 16  # characters of a string, bytes of a bytes value
    list_length: int = 10_000  # items of a list or tuple
    int_bits: int = 4096  # ~1,233 digits: far below Python's 4,300-digit conversion limit
    work: int = 1_000_000  # one unit per node evaluated plus the size of every value made


LIMITS = Limits()
# the value of an assignment that is not a literal (a call, an attribute, an unknown name)
COMPUTED = object()


class Assignment(NamedTuple):
    line: int
    names: tuple[str, ...]
    value: Any  # COMPUTED when not a literal
    text: str  # the statement's first source line, cut short, for messages


class _NotLiteral(Exception):
    pass


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
               ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
               ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_SEQUENCES = (str, bytes, list, tuple)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _first_line(lines: list[str], line: int) -> str:
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    return text if len(text) <= 60 else text[:57] + "..."


def parse(text: str, where: str, limits: Limits = LIMITS) -> ast.Module:
    """The syntax tree of a config file's text, within the size, token, node and depth limits."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.source_bytes:
        raise UserError(f"{where} is {size:,} bytes, more than a config file may be "
                        f"({limits.source_bytes:,}): a nanoGPT config is a few lines of `key = value`")
    _check_tokens(text, where, limits)
    try:
        tree = ast.parse(text, filename=where)
    except SyntaxError as e:
        line = f":{e.lineno}" if e.lineno else ""
        raise UserError(f"{where}{line}: not a readable Python config file ({e.__class__.__name__}: "
                        f"{str(e.msg).splitlines()[0].split(';')[0][:100]}): fix that line") from None
    except (RecursionError, MemoryError):
        raise UserError(f"{where}: nested too deeply to read: write each value itself") from None
    _check_shape(tree, where, limits)
    return tree


def _check_tokens(text: str, where: str, limits: Limits) -> None:
    """Token count, and each number's digits and each string's length, before the text is parsed."""
    digits = int(limits.int_bits * 0.30103)  # decimal digits of the largest integer allowed
    try:
        for count, token in enumerate(tokenize.generate_tokens(io.StringIO(text).readline), 1):
            if count > limits.tokens:
                raise UserError(f"{where} holds more than {limits.tokens:,} tokens, more than a config "
                                "file may: write each value itself")
            if token.type == tokenize.NUMBER and len(token.string) > digits:
                raise UserError(f"{where}:{token.start[0]}: a number of {len(token.string):,} digits, "
                                f"more than a config file may hold ({digits:,}): write a smaller value")
            if token.type == tokenize.STRING and len(token.string) > limits.text_length + 8:
                raise UserError(f"{where}:{token.start[0]}: a text of {len(token.string):,} characters, "
                                f"more than a config file may hold ({limits.text_length:,}): write a "
                                "shorter value")
    except (tokenize.TokenError, SyntaxError):
        pass  # ast.parse names the line


def _check_shape(tree: ast.AST, where: str, limits: Limits) -> None:
    """Node count and nesting depth, walked without recursion."""
    stack, nodes = [(tree, 0)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > limits.depth or nodes > limits.nodes:
            line = getattr(node, "lineno", 0)
            what = f"nested more than {limits.depth} deep" if depth > limits.depth else \
                f"more than {limits.nodes:,} syntax nodes"
            raise UserError(f"{where}:{line}: {what}, more than a config file may be: write each value "
                            "itself")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


class Evaluator:
    """Literal values of config expressions (numbers, strings, bytes, booleans, None, lists, tuples, + -
    * / // % ** and names assigned earlier), every result's size checked before it is made."""

    def __init__(self, where: str, limits: Limits = LIMITS):
        self.where, self.limits, self.work, self.line = where, limits, 0, 0

    def refuse(self, what: str) -> UserError:
        return UserError(f"{self.where}:{self.line}: {what}, beyond gptlab's limit for a config file: "
                         "write the value itself")

    def charge(self, units: int) -> None:
        self.work += units
        if self.work > self.limits.work:
            raise self.refuse(f"evaluating the file takes more than {self.limits.work:,} steps")

    def check_size(self, value: Any) -> Any:
        """value, if within the limits of its kind; the work of making it is charged."""
        lim = self.limits
        if isinstance(value, int) and value.bit_length() > lim.int_bits:
            raise self.refuse(f"an integer of {value.bit_length():,} bits (more than {lim.int_bits:,})")
        if isinstance(value, (str, bytes)) and len(value) > lim.text_length:
            raise self.refuse(f"a text of {len(value):,} characters (more than {lim.text_length:,})")
        if isinstance(value, (list, tuple)) and len(value) > lim.list_length:
            raise self.refuse(f"a list of {len(value):,} items (more than {lim.list_length:,})")
        self.charge(1 + (len(value) if isinstance(value, _SEQUENCES) else
                         value.bit_length() // 64 if isinstance(value, int) else 0))
        return value

    def value(self, node: ast.AST, known: dict[str, Any]) -> Any:
        """The value of an expression node; _NotLiteral for anything else (nothing is called or run)."""
        self.line = getattr(node, "lineno", self.line)
        self.charge(1)
        if (isinstance(node, ast.Constant)
                and isinstance(node.value, (int, float, str, bytes, bool, type(None)))):
            return self.check_size(node.value)
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, (ast.List, ast.Tuple)) and isinstance(node.ctx, ast.Load):
            if len(node.elts) > self.limits.list_length:
                raise self.refuse(f"a list of {len(node.elts):,} items (more than "
                                  f"{self.limits.list_length:,})")
            items = [self.value(e, known) for e in node.elts]
            return self.check_size(items if isinstance(node, ast.List) else tuple(items))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            operand = self.value(node.operand, known)
            if _number(operand):
                return _UNARY[type(node.op)](operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            left, right = self.value(node.left, known), self.value(node.right, known)
            return self.binary(type(node.op), left, right)
        raise _NotLiteral

    def binary(self, op: type, left: Any, right: Any) -> Any:
        """left op right, after its result's size is known to be within the limits."""
        if _number(left) and _number(right):
            self.predict_number(op, left, right)
        elif op is ast.Add and type(left) is type(right) and isinstance(left, _SEQUENCES):
            self.predict_length(left, len(left) + len(right))
        elif op is ast.Mult and isinstance(left, _SEQUENCES) and isinstance(right, int) \
                and not isinstance(right, bool):
            self.predict_length(left, len(left) * max(right, 0))
        elif op is ast.Mult and isinstance(right, _SEQUENCES) and isinstance(left, int) \
                and not isinstance(left, bool):
            self.predict_length(right, len(right) * max(left, 0))
        else:
            raise _NotLiteral
        try:
            result = _ARITHMETIC[op](left, right)
        except (ArithmeticError, ValueError):  # division by zero, a float overflow
            raise _NotLiteral from None
        if isinstance(result, complex):  # (-8) ** 0.5
            raise _NotLiteral
        return self.check_size(result)

    def predict_length(self, sample: Any, length: int) -> None:
        limit = self.limits.text_length if isinstance(sample, (str, bytes)) else self.limits.list_length
        if length > limit:
            raise self.refuse(
                f"a {'text' if limit == self.limits.text_length else 'list'} of {length:,} "
                f"{'characters' if isinstance(sample, (str, bytes)) else 'items'} (more than {limit:,})")

    def predict_number(self, op: type, left: Any, right: Any) -> None:
        """Integer results are sized from their operands' bits before they are computed."""
        if not (isinstance(left, int) and isinstance(right, int)):
            return  # a float result is fixed-size (an overflow is caught)
        bits = max(left.bit_length(), right.bit_length())
        if op is ast.Pow and right > 0 and abs(left) > 1:
            bits = (left.bit_length() - 1) * right + 1  # at least this many bits
        elif op is ast.Mult:
            bits = left.bit_length() + right.bit_length() - 1
        if bits > self.limits.int_bits:
            raise self.refuse(f"an integer of at least {bits:,} bits (more than "
                              f"{self.limits.int_bits:,})")


def read_assignments(text: str, where: str, limits: Limits = LIMITS) -> Iterator[Assignment]:
    """The `name = value` statements of a config file in order (imports and docstrings skipped), each
    value evaluated within the limits (COMPUTED when it is not a literal); any other statement: one
    UserError line."""
    tree, lines = parse(text, where, limits), text.splitlines()
    evaluator, known = Evaluator(where, limits), {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) or \
                (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            continue  # imports and docstrings do nothing without code that uses them
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if \
            isinstance(stmt, ast.AnnAssign) and stmt.value is not None else []
        if not targets or not all(isinstance(t, ast.Name) for t in targets):
            first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
            raise UserError(f"{where}:{first}: only `key = value` lines are read, got "
                            f"`{_first_line(lines, first)}`: gptlab reads config files without running "
                            "them")
        names = tuple(t.id for t in targets)
        try:
            value = evaluator.value(stmt.value, known)
        except _NotLiteral:
            value = COMPUTED
        for name in names:
            if value is COMPUTED:
                known.pop(name, None)
            else:
                known[name] = value
        yield Assignment(stmt.lineno, names, value, _first_line(lines, stmt.lineno))
