"""Adapters that run the same attack through a peer library (foolbox, ART).

Each module exposes ``run(attack, model, x, y, num_classes) -> x_adv`` and imports its library only
when called, so ``import attacks`` stays fast and works without them.
"""
