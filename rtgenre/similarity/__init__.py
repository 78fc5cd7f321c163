"""'Sounds like': similarity codes of tracks, a library of them, and search by Hamming distance.

``codes`` (packing, distances, top-k), ``library`` (the SQLite library file),
``indexer`` (files → codes), ``live`` (the ``listen --index`` hook),
``commands`` (``index``, ``similar``, ``eval-similar``).  numpy and ONNX
Runtime only; the hash layer is trained in :mod:`rtgenre.training.hashing`.
"""
