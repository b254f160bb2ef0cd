"""A newcomer's first commands: --help and --version answer at once (nothing heavy imported), every option says
its default, and a stopped command (Ctrl-C or SIGTERM) leaves nothing behind."""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pid_sdk.cli import SPEED_NAMES, _parser, main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("info", "convert", "decode", "export", "build", "train", "distill", "serve", "compare", "verify")


def test_help_and_version_import_neither_torch_nor_onnxruntime():
    script = ("import contextlib, io, sys\n"
              "from pid_sdk.cli import main\n"
              f"for argv in [['--version'], ['--help'], *[[c, '--help'] for c in {COMMANDS!r}]]:\n"
              "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
              "        main(argv)\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'numpy')))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_version_names_the_package(capsys):
    import pid_sdk

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"pid-sdk {pid_sdk.__version__}\n"


def test_every_option_with_a_default_shows_it():
    commands = _parser()._subparsers._group_actions[0].choices
    decode = commands["decode"].format_help()
    for shown in ("--seed SEED           default: 0", "default: sde", "(default: 1)", "(default: auto)"):
        assert shown in decode, shown
    for name in COMMANDS:
        for action in commands[name]._actions:
            if not any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)):
                assert "default" in (action.help or ""), (name, action.dest)


def test_the_speed_choices_are_the_speed_settings():
    from pid_sdk.runtime.speed import SPEEDS

    assert SPEED_NAMES == tuple(SPEEDS)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_export_leaves_no_folder_behind(tmp_path, stop):
    pytest.importorskip("onnxscript")
    folder = tmp_path / "engines"
    from conftest import default_sigint

    proc = subprocess.Popen([sys.executable, "-m", "pid_sdk.cli", "export", str(folder), "--preset", "tiny",
                             "--size", "64x64", "--size", "64x96", "--size", "96x64"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".engines-export-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".engines-export-*")), "the export did not start its work folder"
    os.kill(proc.pid, stop)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err.strip().endswith("interrupted"), err
    assert list(tmp_path.iterdir()) == []


def test_counts_read_as_english():
    from pid_sdk.errors import counted

    assert [counted(1, "entry"), counted(3, "entry"), counted(0, "check"), counted(1, "engine set")] == [
        "1 entry", "3 entries", "0 checks", "1 engine set"]


def test_info_lists_an_engine_folders_entries_as_a_table(tiny_bf16_engine_folder, capsys):
    assert main(["info", str(tiny_bf16_engine_folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    table = out[out.index("2 entries:") + 1:]
    assert table == [
        "  entry                 backend  size   batch  precision  attention     built for",
        "  onnx:-:64x96:b1:fp32  onnx     64x96  1      fp32       as the graph  any ONNX Runtime",
        "  onnx:-:64x96:b1:bf16  onnx     64x96  1      bf16       as the graph  any ONNX Runtime"]


def test_build_help_names_every_target():
    from pid_sdk.runtime.selection import TARGETS

    build = _parser()._subparsers._group_actions[0].choices["build"].format_help()
    assert all(target in build for target in TARGETS)


def test_a_warning_reads_as_one_line_without_source(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"latent": torch.zeros(16, 2, 2)}, str(tmp_path / "z.safetensors"))
    done = subprocess.run([sys.executable, "-m", "pid_sdk.cli", "decode", str(tmp_path / "z.safetensors"), "--preset",
                           "tiny", "-o", str(tmp_path / "a.png"), "--latent-space", "sd3", "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["warning: Decoding sd3 latents with a model trained for flux1."]


def test_an_onnx_runtime_call_stops_at_ctrl_c_between_its_nodes(ctrl_c):
    """A real session over 1200 chained 512x512 MatMuls (seconds of work): interrupted a fifth of the way in, the
    call ends before half its time, told to stop (RunOptions.terminate) rather than run to its end."""
    import _thread
    import threading

    import numpy as np

    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from pid_sdk.runtime.onnxruntime_backend import run_interruptibly

    w = numpy_helper.from_array(np.eye(512, dtype=np.float32) * 0.5, "w")
    nodes = [helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(1200)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [512, 512])],
                              [helper.make_tensor_value_info("h1200", TensorProto.FLOAT, [512, 512])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"h0": np.ones((512, 512), np.float32)}
    started = time.monotonic()
    run_interruptibly(session, feeds)
    whole = time.monotonic() - started
    assert whole > 0.5, f"the chain ran in {whole:.2f} s: too fast to interrupt"
    threading.Timer(whole / 5, _thread.interrupt_main).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_interruptibly(session, feeds)
    assert time.monotonic() - started < whole / 2


def test_creating_an_onnx_runtime_session_is_left_at_ctrl_c(tmp_path, ctrl_c):
    """ONNX Runtime cannot stop a session being made, so the caller leaves it: a graph whose 600 chained MatMuls of
    constants are folded while the session is made (seconds), interrupted a fifth of the way in, gives
    KeyboardInterrupt before half that time."""
    import _thread
    import threading

    import numpy as np

    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from pid_sdk.runtime.onnxruntime_backend import open_session

    constants = [numpy_helper.from_array(np.eye(512, dtype=np.float32) * 0.5, "w"),
                 numpy_helper.from_array(np.ones((512, 512), np.float32), "h0")]
    nodes = [helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(600)]
    nodes.append(helper.make_node("Add", ["h600", "x"], ["y"]))
    graph = helper.make_graph(nodes, "folded", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [512, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512, 512])], constants)
    path = tmp_path / "folded.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    options = ort.SessionOptions()
    started = time.monotonic()
    open_session(path, options, ["CPUExecutionProvider"])
    whole = time.monotonic() - started
    assert whole > 0.5, f"the session was made in {whole:.2f} s: too fast to interrupt"
    threading.Timer(whole / 5, _thread.interrupt_main).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        open_session(path, options, ["CPUExecutionProvider"])
    assert time.monotonic() - started < whole / 2
