"""Run records, the contract between evaluation and reporting: their format (:mod:`.schema`), its
validation (:mod:`.validate`) and their storage (:mod:`.store`)."""
