"""The thin CURE trainer: models, data, the methods' training steps, evaluation and the `cure-train` /
`cure-eval` / `cure-compare` command-line tools (see cli.py). It builds on the core (cure_ext): the attacks,
losses, selection rules, presets and ranks live there."""
