"""The house rules: imports flow one way (config -> model -> sampling -> runtime -> decoder -> cli), the runtime
never loads the build-time packages, and each folder holds what its name says."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["pid_sdk.config", "pid_sdk.model", "pid_sdk.sampling", "pid_sdk.runtime", "pid_sdk.decoder", "pid_sdk.cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def layer(name: str) -> int | None:
    return next((i for i, top in enumerate(LAYERS) if name == top or name.startswith(top + ".")), None)


SOURCES = sorted((ROOT / "pid_sdk").rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_one_way(path):
    own = layer(module_name(path))
    names = imported(path)
    assert not {n for n in names if n.split(".")[0] in ("export", "training")}, "pid_sdk imports a build-time package"
    if own is not None:
        later = sorted(n for n in names if (layer(n) or -1) > own)
        assert not later, f"{module_name(path)} imports a later layer: {later}"


def test_decoding_never_loads_the_build_time_packages(tmp_path):
    code = ("import sys, pid_sdk\n"
            "from pid_sdk.cli import main\n"
            f"assert main(['decode', {str(ROOT / 'samples' / 'sample_latent_flux1.safetensors')!r}, '--model', "
            f"str(pid_sdk.DEMO_MODEL), '-o', {str(tmp_path / 'out.png')!r}, '--quiet']) == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('export', 'training')))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out.png").exists()


def test_scripts_holds_set_up_demo_tests_the_gpu_check_and_mutation_testing_only():
    assert sorted(p.name for p in (ROOT / "scripts").iterdir()) == ["demo.sh", "gpu_check.sh", "mutation.py",
                                                                     "setup.sh", "test.sh"]


def test_the_cli_declares_each_shared_option_once():
    """No add_argument call in the CLI names a flag OPTIONS declares (found in the syntax tree, whatever the quoting
    or line breaks), except --preset, which info, convert and train use for other things."""
    import ast

    from pid_sdk.cli import OPTIONS

    shared = {flag for flags, _ in OPTIONS.values() for flag in flags} - {"--preset"}
    calls = [node for node in ast.walk(ast.parse((ROOT / "pid_sdk" / "cli.py").read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"]
    named = [arg.value for call in calls for arg in call.args if isinstance(arg, ast.Constant)]
    assert len(calls) > 20 and "--output" in named  # the walk sees the parser's declarations
    assert sorted(set(named) & shared) == []
