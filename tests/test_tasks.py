"""The benchmark table of tasks (``experiments.tasks``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import tasks
from train.config import PPOConfig, market_env


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_every_task_is_a_valid_training_configuration(name):
    task = tasks.TASKS[name]
    config = PPOConfig(**task.fields).validate()
    _, env_params = market_env(config)
    for field, value in task.fields.items():
        assert getattr(config, field) == value
    if config.task == "market_making":
        assert env_params.phi == config.phi and env_params.reward == config.reward
    else:  # the execution task's own parameters
        assert env_params.n_steps == config.execution_steps


@pytest.mark.slow
def test_quick_task_table(tmp_path):
    """One task at a tiny budget, end to end: the table, CSV and figure are written, and every
    rule that reads (t, q) only has a Monte Carlo gap equal to its exact gap within 4 SE."""
    payload = tasks.main(
        out=tmp_path / "tasks",
        agents_dir=tmp_path / "agents",
        **{**tasks.QUICK, "tasks": ["homework_phi0.01"], "eval_episodes": 2_000},
    )
    (result,) = payload["tasks"]
    assert set(result["eval"]) == set(tasks.STRATEGIES)
    assert result["eval"]["optimal"]["optimality_gap"] == 0.0
    value = result["optimal_reward"]
    for name in ("avellaneda_stoikov", "glft", "naive"):
        stats = result["eval"][name]
        exact_gap = 1 - stats["exact_reward"] / value
        assert abs(stats["optimality_gap"] - exact_gap) < 4 * stats["optimality_gap_stderr"]
    written = json.loads((tmp_path / "tasks" / "tasks.json").read_text())
    assert written["config"]["tasks"] == ["homework_phi0.01"]
    assert (tmp_path / "tasks" / "tasks.png").stat().st_size > 10_000
    rows = (tmp_path / "tasks" / "tasks.csv").read_text().splitlines()
    assert len(rows) == 1 + len(tasks.STRATEGIES)
    assert np.isfinite(written["tasks"][0]["eval"]["ppo"]["optimality_gap"])
