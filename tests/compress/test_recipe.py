"""Recipes: LLM Compressor's YAML layout in and out, the shipped examples, and clear errors for mistakes."""

from __future__ import annotations

import glob
import os

import pytest

from tachyon.compress import GPTQModifier, Recipe, SmoothQuantModifier, SparseGPTModifier
from tachyon.compress.modifiers import MODIFIERS

EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "recipes", "*.yaml")))

LLMCOMPRESSOR_STYLE = """
sparsity_stage:
  sparsity_modifiers:
    SparseGPTModifier:
      sparsity: 0.5
      mask_structure: "2:4"
quant_stage:
  quant_modifiers:
    SmoothQuantModifier:
      smoothing_strength: 0.8
    GPTQModifier:
      targets: Linear
      scheme: W8A8
      ignore: [lm_head, "re:.*mlp.down_proj$"]
"""


def test_llmcompressor_layout_parses_in_order():
    recipe = Recipe.parse(LLMCOMPRESSOR_STYLE)
    assert [type(m) for m in recipe.modifiers] == [SparseGPTModifier, SmoothQuantModifier, GPTQModifier]
    gptq = recipe.modifiers[2]
    assert gptq.targets == ["Linear"] and gptq.ignore == ["lm_head", "re:.*mlp.down_proj$"]
    assert recipe.modifiers[1].smoothing_strength == 0.8 and recipe.needs_data


def test_yaml_round_trip_keeps_every_parameter():
    recipe = Recipe.parse([SmoothQuantModifier(smoothing_strength=0.7), GPTQModifier(scheme="W4A16", group_size=32)])
    again = Recipe.parse(recipe.to_yaml())
    assert [m.to_dict() for m in again.modifiers] == [m.to_dict() for m in recipe.modifiers]


def test_a_repeated_modifier_survives_the_round_trip():
    recipe = Recipe.parse([SparseGPTModifier(), GPTQModifier(group_size=64), SparseGPTModifier(mask_structure="4:8")])
    again = Recipe.parse(recipe.to_yaml()).modifiers
    assert [(type(m), m.to_dict()) for m in again] == [(type(m), m.to_dict()) for m in recipe.modifiers]


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_shipped_example_recipes_parse(path):
    assert Recipe.parse(path).modifiers


def test_examples_exist():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "s:\n  m_modifiers:\n    FooModifier: {}\n",
            "unknown modifier 'FooModifier'; supported: QuantizationModifier",
        ),
        ("s:\n  m_modifiers:\n    GPTQModifier: {bits: 4}\n", "GPTQModifier: unknown parameter.*bits.*accepted:"),
        ("s:\n  m_modifiers:\n    GPTQModifier: {scheme: W3A3}\n", "unknown quantization scheme 'W3A3'"),
        ("s:\n  m_modifiers:\n    GPTQModifier: {actorder: group}\n", "actorder must be 'static' or null"),
        ("s:\n  m_modifiers:\n    SparseGPTModifier: {mask_structure: '4:2'}\n", "mask_structure"),
        ("s:\n  modifiers:\n    GPTQModifier: {}\n", "is not a '<name>_modifiers' mapping"),
        ("no-such-recipe.yaml", "no such file, and not a YAML mapping"),
        ("s: [unclosed", "not valid YAML"),
    ],
)
def test_mistakes_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        Recipe.parse(text)


def test_every_modifier_is_registered_by_its_class_name():
    assert set(MODIFIERS) == {
        "QuantizationModifier",
        "GPTQModifier",
        "AWQModifier",
        "SmoothQuantModifier",
        "SparseGPTModifier",
        "MagnitudePruningModifier",
    }
