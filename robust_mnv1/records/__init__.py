"""Run records, the contract between evaluation and reporting: their format (:mod:`.schema`), its
validation (:mod:`.validate`), their storage (:mod:`.store`) and the intervals they state
(:mod:`.intervals`)."""
