"""The training stage: task types (endpoints), registered methods, and the shared fit / evaluate / report loop.

Layout by concern: `config` (hyperparameters, torch-free defaults), `registry` (methods and task types by name,
torch-free), `tasks` (endpoint types: targets, loss, metrics, tables), `data` (slide bags from explicit feature
files), `loop` (fit with early stopping, evaluation), `checkpoints`, `reports` (tables and plots), `run` (one method
over every fold), `predict` (new slides from trained checkpoints), and `methods/` (one module per method).
"""
