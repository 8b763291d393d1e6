"""The package layout: layers import one way, no import cycle, models declare their needs."""

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import torch

from dglrec.models.base import Capabilities
from dglrec.models.cf.bprmf import BPRMF
from dglrec.models.registry import get_model, model_names, register_model
from dglrec.runs import tracking

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dglrec", "data_prep")


def _strongly_connected(graph) -> list[set[str]]:
    """Tarjan's components of the module import graph with more than one module."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.find_modules_directly_imported_by(node):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return out


def test_no_import_cycle_anywhere():
    graph = grimp.build_graph(*PACKAGES)
    assert _strongly_connected(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    class Graph:  # a -> b -> c -> a, c -> d
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

    assert _strongly_connected(Graph()) == [{"a", "b", "c"}]


def test_layer_contract_holds():
    """The import-linter contract of setup.cfg (also run by .ci/run)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "0 broken" in result.stdout


def _late_imports(path: Path) -> list[str]:
    """``dglrec``/``data_prep`` imports inside functions (allowed in the CLI only)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                names = []
                if isinstance(inner, ast.ImportFrom) and inner.module:
                    names = [inner.module]
                elif isinstance(inner, ast.Import):
                    names = [a.name for a in inner.names]
                if any(n.split(".")[0] in PACKAGES for n in names):
                    found.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    return found


def test_function_local_imports_only_in_the_cli():
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    late = [hit for p in files if p.name != "cli.py" for hit in _late_imports(p)]
    assert late == []


def test_no_attribute_probes_of_models():
    """Trainers and builders read declared capabilities; they never probe a model."""
    probes = []
    for path in (ROOT / "dglrec").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("hasattr", "getattr")
                and node.args
                and "model" in ast.unparse(node.args[0])
            ):
                probes.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert probes == []


@pytest.mark.parametrize("name", model_names())
def test_every_model_declares_consistent_capabilities(name):
    cls = get_model(name)
    assert isinstance(cls.capabilities, Capabilities)
    cls.capabilities.check(cls)  # what the registry checked, still true


def test_a_declaration_the_class_does_not_implement_fails_at_registration():
    with pytest.raises(TypeError, match="missing bind_training_data, load_kge_embeddings"):

        @register_model("_broken", inputs="ids", binds="training_data", kge_init=True)
        class Broken:
            pass

    with pytest.raises(TypeError, match="missing n_blocks"):

        @register_model("_no_blocks")
        class NoBlocks:
            pass

    with pytest.raises(TypeError, match="a ctr model is trained by one of"):

        @register_model("_wrong_objective", inputs="ids", objective="mse")
        class WrongObjective:
            pass

    assert not {"_broken", "_no_blocks", "_wrong_objective"} & set(model_names())


def test_a_model_pickled_under_the_old_flat_layout_still_loads(tmp_path, monkeypatch):
    """Runs logged before the layered layout pickled ``dglrec.models.bprmf.BPRMF``."""
    model = BPRMF(n_users=3, n_items=4)
    monkeypatch.setattr(BPRMF, "__module__", "dglrec.models.bprmf")
    monkeypatch.setitem(sys.modules, "dglrec.models.bprmf", sys.modules["dglrec.models.cf.bprmf"])
    torch.save(model, tmp_path / "model.pth")
    monkeypatch.undo()
    assert "dglrec.models.bprmf" not in sys.modules
    with pytest.raises(ModuleNotFoundError, match="dglrec.models.bprmf"):
        torch.load(tmp_path / "model.pth")
    with tracking.legacy_module_names():
        loaded = torch.load(tmp_path / "model.pth")
    assert type(loaded) is BPRMF
    assert torch.equal(loaded.user_emb.weight, model.user_emb.weight)
    assert "dglrec.models.bprmf" not in sys.modules  # the alias is only for the load
