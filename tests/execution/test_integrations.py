"""The Lightning and Hugging Face adapters, driving the real libraries on tiny real models.

Each study compares Adam (a learning rate that trains) with SGD at 1e-7 (one that cannot)
head to head (grid sampler): the median pruner stops the SGD trial after its first epoch,
through the framework's own loop. Lightning trains the Lightning example (a CNN on digits);
the Trainer a tiny BERT built from a config: nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from tests.execution.test_user_code import project, run_here, unique
from tuner.spec import load_spec

HEAD_TO_HEAD = """
    name = "{name}"
    metric = "{metric}"
    direction = "{direction}"
    [workload]
    name = "{module}:train"
    search_path = {search_path}
    [search]
    optimizers = ["adam", "sgd"]
    weight_decay = "off"
    schedules = ["cosine"]
    batch_sizes = [16]
    [optimizers.adam]
    learning_rate = 0.01
    [optimizers.sgd]
    learning_rate = 1e-7
    [sampler]
    name = "grid"
    [pruner]
    name = "median"
    n_startup_trials = 1
    n_warmup_steps = 0
    [budget]
    trials = 2
    epochs = 2
    """

TRANSFORMERS_TRAIN = """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from tuner.integrations.transformers import TunerCallback, optimizers, training_arguments


    def examples(count, seed):
        # The label is the parity of the first token: a tiny BERT learns it in an epoch.
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(2, 20, (count, 6), generator=generator)
        return [{"input_ids": row, "labels": int(row[0] % 2)} for row in ids]


    def train(trial):
        model = BertForSequenceClassification(
            BertConfig(
                vocab_size=20,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                max_position_embeddings=8,
                num_labels=2,
            )
        )
        train_set = examples(256, 0)
        steps_per_epoch = len(train_set) // trial.config.batch_size
        args = TrainingArguments(
            output_dir=trial.options["output_dir"],
            num_train_epochs=trial.epochs,
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=trial.seed,
            **training_arguments(trial.config),
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=examples(64, 1),
            optimizers=optimizers(trial.config, model, steps_per_epoch, trial.epochs),
            callbacks=[TunerCallback(trial)],
        )
        trainer.train()
    """


LIGHTNING_EXAMPLE = Path(__file__).parents[2] / "examples" / "lightning"


@pytest.mark.parametrize(
    "files, workload, metric, direction",
    [
        (
            {},
            # The example's CNN reads its width from the study's [params].
            {"module": "train", "search_path": [str(LIGHTNING_EXAMPLE)], "params": "channels = 8"},
            "val_accuracy",
            "maximize",
        ),
        ({"{module}.py": TRANSFORMERS_TRAIN}, {"search_path": []}, "eval_loss", "minimize"),
    ],
    ids=["lightning", "transformers"],
)
def test_an_adapter_reports_each_epoch_and_stops_a_pruned_trial(
    tmp_path: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str],
    workload: dict[str, Any],
    metric: str,
    direction: str,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # whatever a framework writes lands here
    module = workload.get("module", unique("framework"))
    study = HEAD_TO_HEAD.format(
        name="adapter",
        metric=metric,
        direction=direction,
        module=module,
        search_path=json.dumps(workload["search_path"]),
    )
    study += f"[workload.options]\noutput_dir = '{tmp_path}/out'\n"
    if "params" in workload:
        study += f"[params]\n{workload['params']}\n"
    files = {name.format(module=module): text for name, text in files.items()}
    trained, pruned = run_here(load_spec(project(tmp_path / "project", files, study)), sqlite_url)

    assert trained.state == TrialState.COMPLETE, trained.user_attrs.get("fail_reason")
    assert trained.params["optimizer"] == "adam"
    assert sorted(trained.intermediate_values) == [1, 2]
    assert (
        trained.value == trained.intermediate_values[2] == trained.user_attrs["curve"][-1][metric]
    )
    assert pruned.params["optimizer"] == "sgd"
    assert pruned.state == TrialState.PRUNED, pruned.user_attrs.get("fail_reason")
    # Stopped after its first epoch, worse than the trained trial there.
    assert list(pruned.intermediate_values) == [1]
    better = (max if direction == "maximize" else min)(
        pruned.intermediate_values[1], trained.intermediate_values[1]
    )
    assert better == trained.intermediate_values[1] != pruned.intermediate_values[1]
