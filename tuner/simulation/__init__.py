"""Learning curves replayed without training, to plan a search and to load its driver.

- `curves`: the curves: a parametric family, and the ones an experiment recorded;
- `engine`: the replay through the search's real scheduler, chance-level rule and
  searcher on a simulated clock, no Ray cluster (the command: ``reid-tune simulate``,
  ``tuner.simulate``);
- `trainable`: a Ray trainable reporting a curve step by step, so that a real Ray
  search measures its driver alone (``benchmarks/driver_rate.py``).
"""
