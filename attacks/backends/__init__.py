"""Adapters that run an attack through a peer library (foolbox, ART).

Each module exposes ``run(attack, model, x, y, num_classes) -> x_adv``: it wraps the model and the data
for its library, asks the attack which of the library's attacks to run (``attack._foolbox_attack()`` or
``attack._art_attack(classifier, batch_size)``, written next to the native attack), runs it and returns
plain adversarial images. An attack class lists the peers it maps onto in ``peers`` (usually
:data:`PEERS`). The modules import nothing else from ``attacks``, and their library only when called,
so ``import attacks`` stays fast and works without them.
"""

from types import MappingProxyType

from attacks.backends import art, foolbox

# Every peer library, for the attacks that map onto all of them (read-only: the classes share it).
PEERS = MappingProxyType({"foolbox": foolbox.run, "art": art.run})
