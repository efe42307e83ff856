"""What a trainer checkpoint's model card says about the run (``students.card.CardContext``).

Kept out of the loop: the card reads the recipe, the teacher cache's meta record, the manifests'
sizes and the progress counters, and the loop only hands itself over.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from students.card import CardContext

if TYPE_CHECKING:
    from distill.train.loop import Trainer


def run_card_context(trainer: Trainer) -> CardContext:
    recipe = trainer.recipe
    data = []
    for split, specs, dataset in (("train", recipe.data.train, trainer.train_set),
                                  ("valid", recipe.data.valid, trainer.valid_set)):
        if dataset is None:
            continue
        for spec, manifest in zip(specs, dataset.manifests, strict=True):
            data.append({"split": split, "path": spec.path, "records": len(manifest),
                         "weight": spec.weight if split == "train" else None})
    cache = trainer.cache
    return CardContext(
        recipe=recipe.model_dump(mode="json"),
        cache_meta=dataclasses.asdict(cache.meta) if cache is not None else None,
        data=data,
        training={"steps": trainer.progress.step, "examples": trainer.stats.examples,
                  "ce_only": trainer.stats.ce_only},
    )
