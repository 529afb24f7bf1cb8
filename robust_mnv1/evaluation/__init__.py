"""The robustness protocol (:mod:`.protocol`), its statistics, and the study that runs it over a
grid of models and writes one record per (model, regime, attack)."""
