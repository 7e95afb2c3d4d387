"""Runnable recipes built from the package's presets (``ModelConfig.paper``,
``TrainConfig.preset``), each validating its inputs once before the expensive work:

- :mod:`~belief_lens.experiments.paper`: the paper demo (train the paper's architecture, then
  analyse it) and the analysis of a checkpoint;
- :mod:`~belief_lens.experiments.factored`: factored belief geometry on Mess3 x Mess3 over
  training (arXiv 2602.02385);
- :mod:`~belief_lens.experiments.discovery`: a belief simplex found in a checkpoint's
  activations without labels;
- :mod:`~belief_lens.experiments.attention`: attention as constrained belief updating, and the
  head-count experiment (arXiv 2502.01954).

The command line (:mod:`belief_lens.cli`) parses arguments and calls these; import the module you
need (this package imports none of them, so each command pays only for its own).
"""
