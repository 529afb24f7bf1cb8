"""The boundary: composing the Hydra config (:mod:`.compose`), checking every key before any work
(:mod:`.check`), and turning it into the typed specs the code below takes."""
