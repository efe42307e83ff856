"""Importers: corpora in their standard on-disk layouts -> manifest records (docs/architecture.md).

Each importer is a generator of record dicts, so ``write_manifest`` can stream a corpus of
millions of clips to disk without holding it. All take the corpus location (a folder, or for
WavCaps and SALMONN a JSON file) as the first argument and their options as keywords, and report
layout problems as ``CorpusError`` (a ``ManifestError``) naming the corpus file and line or entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from distill.data.importers.audiocaps import import_audiocaps
from distill.data.importers.clotho import import_clotho
from distill.data.importers.common import CorpusError
from distill.data.importers.hf_dataset import import_hf_dataset
from distill.data.importers.librispeech import import_librispeech
from distill.data.importers.salmonn import import_salmonn
from distill.data.importers.wavcaps import import_wavcaps

IMPORTERS: dict[str, Callable[..., Iterator[dict]]] = {
    "librispeech": import_librispeech,
    "clotho": import_clotho,
    "audiocaps": import_audiocaps,
    "wavcaps": import_wavcaps,
    "salmonn": import_salmonn,
    "hf": import_hf_dataset,
}

__all__ = [
    "IMPORTERS",
    "CorpusError",
    "import_audiocaps",
    "import_clotho",
    "import_hf_dataset",
    "import_librispeech",
    "import_salmonn",
    "import_wavcaps",
]
