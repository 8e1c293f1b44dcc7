"""Recipes: which modifiers run, in which order, with which parameters. The YAML layout is LLM Compressor's,
so its recipes read here and ours read there:

    quant_stage:                      # stage (any name), run in file order
      quant_modifiers:                # group (any name ending in _modifiers)
        SmoothQuantModifier: {smoothing_strength: 0.8}
        GPTQModifier: {scheme: W8A8, targets: [Linear], ignore: [lm_head]}

In Python a recipe is also a modifier or a list of them. `oneshot` builds one with `Recipe.parse` and saves
it next to the checkpoint as recipe.yaml. Stages are flattened: every layer gets every modifier in order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from tachyon.compress.modifiers import Modifier, create_modifier

__all__ = ["RECIPE_FILE", "Recipe"]

RECIPE_FILE = "recipe.yaml"
_GROUP_SUFFIX = "_modifiers"


@dataclass(frozen=True)
class Recipe:
    stages: tuple[tuple[str, tuple[Modifier, ...]], ...]

    @property
    def modifiers(self) -> list[Modifier]:
        return [m for _, modifiers in self.stages for m in modifiers]

    @property
    def needs_data(self) -> bool:
        return any(m.needs_data for m in self.modifiers)

    @classmethod
    def parse(cls, recipe: Recipe | Modifier | list[Modifier] | str) -> Recipe:
        """A Recipe from a Recipe, a modifier, a list of them, a YAML file path or YAML text."""
        if isinstance(recipe, Recipe):
            return recipe
        if isinstance(recipe, Modifier):
            recipe = [recipe]
        if isinstance(recipe, list | tuple):
            if not recipe or not all(isinstance(m, Modifier) for m in recipe):
                raise ValueError("a recipe list must hold at least one Modifier instance")
            return cls((("default_stage", tuple(recipe)),))
        if isinstance(recipe, str):
            return cls.from_yaml(recipe)
        raise TypeError(
            f"a recipe is a Recipe, Modifier, list of Modifiers, YAML path or YAML text, not {type(recipe).__name__}"
        )

    @classmethod
    def from_yaml(cls, text_or_path: str) -> Recipe:
        source = text_or_path
        if os.path.isfile(os.path.expanduser(text_or_path)):
            with open(os.path.expanduser(text_or_path), encoding="utf-8") as f:
                source = f.read()
        try:
            data = yaml.safe_load(source)
        except yaml.YAMLError as e:
            raise ValueError(f"recipe is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"recipe {text_or_path[:60]!r}: no such file, and not a YAML mapping of stages")
        stages = tuple((name, _stage_modifiers(name, stage)) for name, stage in data.items())
        if not any(modifiers for _, modifiers in stages):
            raise ValueError("recipe has no modifiers")
        return cls(stages)

    def to_yaml(self) -> str:
        """LLM Compressor's layout; a modifier class repeated within a stage opens a new stage (YAML
        mappings cannot hold a key twice)."""
        data: dict[str, dict] = {}
        for stage, modifiers in self.stages:
            groups: list[dict] = [{}]
            for m in modifiers:
                if type(m).__name__ in groups[-1]:
                    groups.append({})
                groups[-1][type(m).__name__] = m.to_dict()
            for i, group in enumerate(groups):
                name = stage if i == 0 else f"{stage}_{i}"
                data[name] = {f"{name.removesuffix('_stage')}{_GROUP_SUFFIX}": group}
        return yaml.safe_dump(data, sort_keys=False)


def _stage_modifiers(stage_name: str, stage: object) -> tuple[Modifier, ...]:
    if not isinstance(stage, dict):
        raise ValueError(f"recipe stage {stage_name!r} must map group names (e.g. quant_modifiers) to modifiers")
    modifiers = []
    for group_name, group in stage.items():
        if not group_name.endswith(_GROUP_SUFFIX) or not isinstance(group, dict):
            raise ValueError(
                f"recipe stage {stage_name!r}: {group_name!r} is not a '<name>{_GROUP_SUFFIX}' mapping of modifiers"
            )
        for name, params in group.items():
            if params is not None and not isinstance(params, dict):
                raise ValueError(f"recipe {stage_name}.{group_name}.{name}: parameters must be a mapping")
            modifiers.append(create_modifier(name, params))
    return tuple(modifiers)
