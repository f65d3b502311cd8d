"""Training a model: optimizers and clipping (``optim``), the ``Trainer`` with truncated BPTT
(``training``), atomic checkpoints (``checkpoint``), data sources (``data``) and initialisers
(``init``). Users import them as ``rnnkit.optim``, ``rnnkit.Trainer``, ``rnnkit.data`` ...
(rnnkit/__init__.py)."""
