"""Ray Train trials: one training run of one configuration.

`launch.fit` / `launch.build_trainer` run `classification.train_classifier` or
`barlow_twins.train_barlow_twins` as a TorchTrainer; `config.TrialConfig` checks the settings,
`data` loads datasets, `augment` + `batches` feed workers, `models` builds networks.
"""
