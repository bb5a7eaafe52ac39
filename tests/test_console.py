"""The ``jaxmm`` console command (``experiments.cli``), run as a child process.

``python -m experiments.cli`` is the command the ``jaxmm`` entry point runs (``[project.scripts]``
in pyproject.toml, checked here); the executable itself is tested when the package is installed
in this interpreter's environment.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_code, run_module

SUBCOMMANDS = {  # subcommand -> the usage line its --help must show (the module it runs)
    "train": "python -m train.ppo",
    "evaluate": "python -m train.evaluate",
    "benchmark": "python -m experiments.benchmark",
    "backtest": "python -m experiments.backtest",
}


def jaxmm(*args: str, **kwargs):
    return run_module("experiments.cli", *args, timeout=600, **kwargs)


def options_without_help(text: str) -> list[str]:
    """The options of an argparse ``--help`` text that have no help string of their own (none,
    or only the ``(default: ...)`` that ``ArgumentDefaultsHelpFormatter`` appends)."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("options:"))
    entries: list[tuple[str, str]] = []
    for line in lines[start + 1 :]:
        if re.match(r"^  -", line):
            invocation, _, help_text = line.strip().partition("  ")
            entries.append((invocation, help_text))
        elif line.startswith("    ") and entries:
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
        elif line and not line.startswith(" "):
            break  # the epilog
    bare = []
    for invocation, help_text in entries:
        words = re.sub(r"\(default: [^)]*\)", "", help_text).strip()
        if not words and not invocation.startswith("-h"):
            bare.append(invocation)
    return bare


def test_top_level_help_lists_every_command():
    out = jaxmm("--help")
    for command in (*SUBCOMMANDS, "study"):
        assert re.search(rf"^  {command} ", out.stdout, re.M), command
    assert jaxmm(check=False).returncode == 2  # no command: the help, and a usage error


def test_unknown_commands_are_usage_errors():
    out = jaxmm("trian", check=False)
    assert out.returncode == 2 and "unknown command 'trian'" in out.stderr
    out = jaxmm("study", "monte_carl", check=False)
    assert out.returncode == 2 and "unknown study 'monte_carl'" in out.stderr


@pytest.mark.parametrize("command", [*SUBCOMMANDS, "study monte_carlo"])
def test_subcommand_help_is_the_module_help_with_every_option_explained(command):
    out = jaxmm(*command.split(), "--help")
    usage = SUBCOMMANDS.get(command, "python -m experiments.monte_carlo")
    assert out.stdout.startswith(f"usage: {usage}"), out.stdout[:200]
    assert options_without_help(out.stdout) == []


def test_every_study_help_explains_every_option():
    """All the studies' parsers at once (one child process, so the test stays fast)."""
    from experiments import cli

    code = (
        "import contextlib, importlib, io, json\n"
        f"names = {list(cli.STUDIES)!r}\n"
        "texts = {}\n"
        "for name in names:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
        "        importlib.import_module('experiments.' + name).main(['--help'])\n"
        "    texts[name] = buf.getvalue()\n"
        "print(json.dumps(texts))\n"
    )
    texts = json.loads(run_code(code, timeout=600).stdout)
    for name, text in texts.items():
        assert text.startswith(f"usage: python -m experiments.{name}"), name
        assert options_without_help(text) == [], name


def test_study_list_names_every_study_with_its_summary():
    from experiments import cli

    out = jaxmm("study", "--list")
    listed = [line.split()[0] for line in out.stdout.strip().split("\n")]
    assert listed == list(cli.STUDIES)
    assert "Monte Carlo study of Avellaneda-Stoikov" in out.stdout
    # every runnable experiments module is a study, except the benchmark (its own subcommand)
    runnable = {
        path.stem
        for path in (ROOT / "experiments").glob("*.py")
        if re.search(r"^def main\(", path.read_text(), re.M)
    }
    assert runnable - {"benchmark", "cli"} == set(cli.STUDIES)


def test_host_device_split_matches_the_modules():
    """The modules whose ``python -m`` run splits the CPU into host devices are exactly the
    ones the command splits for, and the split happens before the module starts JAX."""
    from experiments import cli

    splitting = set()
    for module in (*(f"experiments.{s}" for s in cli.STUDIES), *(m for m, _ in _commands())):
        path = ROOT / (module.replace(".", "/") + ".py")
        guards = [node for node in ast.parse(path.read_text()).body if isinstance(node, ast.If)]
        if any("request_host_devices()" in ast.unparse(guard) for guard in guards):
            splitting.add(module)
    assert splitting == set(cli.HOST_DEVICE_MODULES)
    code = (
        "import contextlib, jax\n"
        "from experiments import cli\n"
        "from jaxmm.devices import cpu_cores\n"
        "with contextlib.suppress(SystemExit):\n"
        "    cli.main(['benchmark', '--help'])\n"
        "print(jax.device_count('cpu'), cpu_cores())\n"
    )
    out = run_code(code, env={"XLA_FLAGS": ""}).stdout.strip().split("\n")[-1]
    count, cores = out.split()
    assert count == cores


def _commands():
    from experiments import cli

    return [(module, text) for module, text in cli.COMMANDS.values() if module is not None]


def test_a_study_runs_through_the_command(tmp_path):
    """``jaxmm study monte_carlo ...`` runs ``experiments.monte_carlo`` with those options: its
    episodes are the direct simulation's, and its parser's errors are the command's."""
    import jax
    import numpy as np

    import jaxmm as mm

    out = jaxmm(
        "study", "monte_carlo", "--n-episodes", "40", "--seed", "2", "--gamma", "0.2",
        "--n-paths", "3", "--out", str(tmp_path),
    )  # fmt: skip
    assert "Sharpe" in out.stdout
    episodes = np.loadtxt(tmp_path / "episodes.csv", delimiter=",", skiprows=1)
    policy = mm.policies.avellaneda_stoikov(0.2, k=1.5)
    direct = mm.simulate(mm.presets.homework(), policy, jax.random.key(2), 40)
    np.testing.assert_allclose(episodes[:, 0], np.asarray(direct.pnl), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(episodes[:, 1], np.asarray(direct.inventory))
    bad = jaxmm("study", "monte_carlo", "--n-episodes", "1", check=False)
    assert bad.returncode == 2 and "--n-episodes must be >= 2" in bad.stderr


def test_entry_point_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["jaxmm"] == "experiments.cli:main"
    from experiments import cli

    assert callable(cli.main)


def test_installed_executable():
    """After ``pip install -e .`` the ``jaxmm`` executable sits beside this interpreter."""
    executable = Path(sys.executable).parent / "jaxmm"
    if not executable.is_file():
        pytest.skip(f"jaxmm is not installed beside {sys.executable} (pip install -e .)")
    out = subprocess.run(
        [str(executable), "study", "--list"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("monte_carlo ")
