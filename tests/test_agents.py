"""experiments.agents reuses a stored agent only for the same configuration and the same code."""

import json

from experiments import agents


def test_trained_run_reuses_an_agent_only_for_the_same_config_and_source(tmp_path, monkeypatch):
    trainings = []

    def fake_training(config):  # what train.ppo leaves behind: metrics.json with the config
        run = tmp_path / config.name
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.json").write_text(json.dumps({"config": config.to_dict()}))
        trainings.append(config)

    monkeypatch.setattr(agents, "train_in_subprocess", fake_training)
    agents.trained_run("a", out_dir=tmp_path, phi=0.1, devices=1)
    agents.trained_run("a", out_dir=tmp_path, phi=0.1, devices=1)
    assert len(trainings) == 1  # same config, same code: reused
    agents.trained_run("a", out_dir=tmp_path, phi=0.2, devices=1)
    assert len(trainings) == 2  # another config: retrained
    monkeypatch.setattr(agents, "source_digest", lambda: "changed code")
    agents.trained_run("a", out_dir=tmp_path, phi=0.2, devices=1)
    assert len(trainings) == 3  # the code changed: retrained
    (tmp_path / "a" / agents.SOURCE_FILE).unlink()
    agents.trained_run("a", out_dir=tmp_path, phi=0.2, devices=1)
    assert len(trainings) == 4  # no record of the code that trained it: retrained


def test_source_digest_covers_the_library_and_the_trainer():
    digest = agents.source_digest()
    assert len(digest) == 64 and digest == agents.source_digest()
