"""Known-answer inputs for tests, benchmarks and the offline demo: not part of the labelling library.

`synthetic` draws seeded scenes of coloured shapes with their exact instance masks.
"""
