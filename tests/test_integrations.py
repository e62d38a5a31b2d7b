"""The Lightning and Hugging Face adapters, driving the real libraries on tiny real models.

Each study compares Adam (a learning rate that trains) with SGD at 1e-7 (one that cannot)
head to head (grid sampler): the median pruner stops the SGD trial after its first epoch,
through the framework's own loop. Models are built from a config: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.test_user_code import project, run_here, unique
from tuner.spec import load_spec

HEAD_TO_HEAD = """
    name = "{name}"
    metric = "{metric}"
    direction = "minimize"
    [workload]
    name = "{module}:train"
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
    epochs = 3
    """

LIGHTNING_TRAIN = """
    import lightning
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from tuner.integrations.lightning import TunerCallback, configure_optimizers, trainer_options


    class Regressor(lightning.LightningModule):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.net = torch.nn.Sequential(
                torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
            )

        def training_step(self, batch, index):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x).squeeze(1), y)
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch, index):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x).squeeze(1), y))

        def configure_optimizers(self):
            return configure_optimizers(self, self.config, monitor="val_loss")


    def train(trial):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(256, 3, generator=generator)
        y = x @ torch.tensor([1.0, -2.0, 0.5])
        batch = trial.config.batch_size
        trainer = lightning.Trainer(
            max_epochs=trial.epochs,
            callbacks=[TunerCallback(trial)],
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            **trainer_options(trial.config),
        )
        trainer.fit(
            Regressor(trial.config),
            DataLoader(TensorDataset(x[:192], y[:192]), batch_size=batch, shuffle=True),
            DataLoader(TensorDataset(x[192:], y[192:]), batch_size=64),
        )
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


@pytest.mark.parametrize(
    "code, metric, options",
    [
        (LIGHTNING_TRAIN, "val_loss", ""),
        (TRANSFORMERS_TRAIN, "eval_loss", "[workload.options]\noutput_dir = '{folder}/out'\n"),
    ],
    ids=["lightning", "transformers"],
)
def test_an_adapter_reports_each_epoch_and_stops_a_pruned_trial(
    tmp_path: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    metric: str,
    options: str,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # whatever a framework writes lands here
    module = unique("framework")
    study = HEAD_TO_HEAD.format(name="adapter", metric=metric, module=module)
    study += options.format(folder=tmp_path)
    study_file = project(tmp_path / "project", {f"{module}.py": code}, study)
    trained, pruned = run_here(load_spec(study_file), sqlite_url)

    assert trained.state == TrialState.COMPLETE, trained.user_attrs.get("fail_reason")
    assert trained.params["optimizer"] == "adam"
    assert sorted(trained.intermediate_values) == [1, 2, 3]
    assert (
        trained.value == trained.intermediate_values[3] == trained.user_attrs["curve"][-1][metric]
    )
    assert pruned.params["optimizer"] == "sgd"
    assert pruned.state == TrialState.PRUNED, pruned.user_attrs.get("fail_reason")
    # Stopped after its first epoch, worse than the trained trial there.
    assert list(pruned.intermediate_values) == [1]
    assert pruned.intermediate_values[1] > trained.intermediate_values[1]
