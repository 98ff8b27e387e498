"""The idea loader (gptlab/ideas.py): specs, loading one file without running anything else, one-line
errors for every bad spec, the source's sha256, declared options and their coercion."""

from __future__ import annotations

import hashlib
import sys
import textwrap
from pathlib import Path

import pytest

from gptlab.config import ModelConfig
from gptlab.errors import UserError
from gptlab.ideas import idea_config, load_idea, parse_spec, resolve_options
from gptlab.model import GPT

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "ideas" / "tiny_gpt.py"
MODERN = REPO / "examples" / "ideas" / "modern_block.py"
BUILTINS = {"gpt": GPT}

GOOD = """
import torch.nn as nn

class Good(nn.Module):
    config_defaults = {"width": 3, "rate": 0.5, "gated": False, "act": "relu"}

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, idx, return_hidden=False):
        return idx
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def one_line_error(spec: str) -> str:
    with pytest.raises(UserError) as info:
        load_idea(spec, BUILTINS)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    "text, kind, target, class_name",
    [
        ("gpt", "builtin", "gpt", ""),
        ("GPT", "builtin", "gpt", ""),
        (
            "examples/ideas/modern_block.py:ModernGPT",
            "file",
            "examples/ideas/modern_block.py",
            "ModernGPT",
        ),
        ("idea.py:Model", "file", "idea.py", "Model"),
        (
            "C:\\ideas\\x.py:Model",
            "file",
            "C:\\ideas\\x.py",
            "Model",
        ),  # the last ':' separates the class
        ("my_pkg.models:Model", "module", "my_pkg.models", "Model"),
    ],
)
def test_spec_forms(text, kind, target, class_name):
    spec = parse_spec(text, BUILTINS)
    assert (spec.kind, spec.target, spec.class_name) == (kind, target, class_name)


@pytest.mark.parametrize(
    "text, says",
    [
        ("gtp", "did you mean --model gpt?"),
        ("idea.py", "idea.py:ClassName"),
        ("idea.py:2Bad", "not a Python name"),
        ("my pkg:Model", "neither a .py file nor a module name"),
    ],
)
def test_malformed_specs_are_one_line(text, says):
    with pytest.raises(UserError, match=says.replace("?", r"\?")):
        parse_spec(text, BUILTINS)


def test_file_idea_loads_with_sha256_and_options(tmp_path):
    path = write(tmp_path, "good.py", GOOD)
    idea = load_idea(f"{path}:Good", BUILTINS)
    assert idea.cls.__name__ == "Good" and idea.name == "good.Good"
    assert idea.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert idea.defaults == {"width": 3, "rate": 0.5, "gated": False, "act": "relu"}
    path.write_text(path.read_text() + "\n# edited\n")
    assert (
        load_idea(f"{path}:Good", BUILTINS).sha256
        == hashlib.sha256(path.read_bytes()).hexdigest()
        != idea.sha256
    )


def test_loading_a_file_runs_nothing_else(tmp_path):
    """The idea's folder is a package whose __init__ and sibling would leave markers: neither runs, no
    bytecode is written, sys.path is unchanged, and the same bytes loaded twice run once."""
    pkg = tmp_path / "pkg"
    write(pkg, "__init__.py", f"open({str(tmp_path / 'init_ran')!r}, 'w').close()\n")
    write(pkg, "sibling.py", f"open({str(tmp_path / 'sibling_ran')!r}, 'w').close()\n")
    path = write(pkg, "idea.py", GOOD + f"\nopen({str(tmp_path / 'idea_runs')!r}, 'a').write('x')\n")
    before = list(sys.path)
    load_idea(f"{path}:Good", BUILTINS)
    load_idea(f"{path}:Good", BUILTINS)
    assert (tmp_path / "idea_runs").read_text() == "x"
    assert not (tmp_path / "init_ran").exists() and not (tmp_path / "sibling_ran").exists()
    assert not (pkg / "__pycache__").exists() and sys.path == before


def test_bad_files_are_one_line_with_file_and_line(tmp_path):
    missing = one_line_error(f"{tmp_path / 'goood.py'}:Good")
    assert "not found" in missing
    write(tmp_path, "good.py", GOOD)
    assert "did you mean" in one_line_error(f"{tmp_path / 'goood.py'}:Good")
    assert "is a folder" in one_line_error(f"{tmp_path}/:Good")
    syntax = write(tmp_path, "syntax.py", "import torch\n\ndef f(:\n    pass\n")
    assert one_line_error(f"{syntax}:Good").startswith(f"{syntax}:3: SyntaxError")
    dep = write(tmp_path, "dep.py", "import torch\nimport flash_attn_not_installed_here\n")
    message = one_line_error(f"{dep}:Good")
    assert message.startswith(f"{dep}:2:") and "'flash_attn_not_installed_here'" in message
    assert "pip install flash_attn_not_installed_here" in message
    raises = write(tmp_path, "raises.py", "X = 1\nY = 1 / 0\n")
    assert one_line_error(f"{raises}:Good").startswith(f"{raises}:2: ZeroDivisionError")
    binary = tmp_path / "binary.py"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "UTF-8" in one_line_error(f"{binary}:Good")


def test_wrong_classes_are_one_line(tmp_path):
    path = write(
        tmp_path,
        "good.py",
        GOOD
        + textwrap.dedent("""
        class NotAModule:
            pass

        class NoConfig(Good):
            def __init__(self):
                super().__init__(None)

        class NoHidden(Good):
            def forward(self, idx):
                return idx

        class BadOption(Good):
            config_defaults = {"n_layer": 3}

        class BadDefault(Good):
            config_defaults = {"sizes": [1, 2]}
        """),
    )
    assert "did you mean" in one_line_error(f"{path}:good") and "Good" in one_line_error(f"{path}:good")
    assert "not a torch.nn.Module" in one_line_error(f"{path}:NotAModule")
    assert "one argument" in one_line_error(f"{path}:NoConfig")
    assert "return_hidden" in one_line_error(f"{path}:NoHidden")
    assert "already a gptlab config key" in one_line_error(f"{path}:BadOption")
    assert "bool, int, float or str" in one_line_error(f"{path}:BadDefault")


def test_module_ideas(tmp_path, monkeypatch):
    write(tmp_path, "labpkg/__init__.py", "")
    write(tmp_path, "labpkg/models.py", GOOD)
    write(tmp_path, "labpkg/broken.py", "import torch\nimport not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    idea = load_idea("labpkg.models:Good", BUILTINS)
    assert idea.name == "models.Good" and idea.source == tmp_path / "labpkg" / "models.py"
    assert idea.sha256 == hashlib.sha256(idea.source.read_bytes()).hexdigest()
    assert "no module named 'labpkg.nothing'" in one_line_error("labpkg.nothing:Good")
    message = one_line_error("labpkg.broken:Good")
    assert "broken.py:2" in message and "'not_installed_dependency'" in message


def test_options_are_read_as_their_defaults_type(tmp_path):
    idea = load_idea(f"{write(tmp_path, 'good.py', GOOD)}:Good", BUILTINS)
    got = resolve_options(idea, {"width": "7", "rate": "2e-1", "gated": "true", "act": "gelu"})
    assert got == {"width": 7, "rate": 0.2, "gated": True, "act": "gelu"}
    assert type(got["rate"]) is float and type(got["width"]) is int
    assert resolve_options(idea, {"rate": 1}) == dict(idea.defaults, rate=1.0)  # a JSON int for a float
    assert resolve_options(idea, {}) == idea.defaults
    with pytest.raises(UserError, match="--width: expected int"):
        resolve_options(idea, {"width": "wide"})
    with pytest.raises(UserError, match="--gated: expected bool"):
        resolve_options(idea, {"gated": "maybe"})
    with pytest.raises(UserError, match=r"unknown config key 'widht': did you mean --width\?"):
        resolve_options(idea, {"widht": "3"})


def test_the_idea_receives_the_resolved_model_config():
    m = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=100)
    c = idea_config(m, {"rope_base": 5.0})
    assert (c.head_dim, c.mlp_dim, c.padded_vocab, c.rope_base) == (16, 256, 128, 5.0)
    assert c.options == {"rope_base": 5.0} and c.n_layer == 2 and c.bias is True


def test_a_run_records_the_bytes_that_ran_and_never_writes_through_a_link(tmp_path):
    from gptlab.runs import record_idea

    path = write(tmp_path, "good.py", GOOD)
    idea = load_idea(f"{path}:Good", BUILTINS)
    path.write_text("# edited after loading\n")  # the copy is what was hashed and executed
    run = tmp_path / "run"
    run.mkdir()
    record_idea(run, idea)
    assert hashlib.sha256((run / "idea" / "good.py").read_bytes()).hexdigest() == idea.sha256
    elsewhere, linked = tmp_path / "elsewhere", tmp_path / "linked"
    elsewhere.mkdir()
    linked.mkdir()
    (linked / "idea").symlink_to(elsewhere)
    with pytest.raises(UserError, match="not a folder gptlab made"):
        record_idea(linked, idea)
    assert not list(elsewhere.iterdir())


def test_the_loader_serves_other_ideas_too(tmp_path):
    """--optimizer FILE.py:function loads the same way: a function, its flag in every message."""
    from gptlab.ideas import load_object

    path = write(tmp_path, "opt.py", "import torch\n\ndef make(model, config):\n    return None\n")
    loaded = load_object(f"{path}:make", {"adamw": None}, "--optimizer", "function")
    assert loaded.obj.__name__ == "make" and loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(UserError, match=r"^--optimizer .*did you mean .*:make\?"):
        load_object(f"{path}:mak", {"adamw": None}, "--optimizer", "function")
    with pytest.raises(UserError, match=r"^--optimizer opt.py: name the function too"):
        load_object("opt.py", {"adamw": None}, "--optimizer", "function")
