"""Fixtures of the family tests: the test module's family (its NAME) and its tiny model, saved once per module."""

import json

import pytest
from family_checks import TEXTS

from productlens.families import family_for, get_family


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory):
    """-> (family, processor, model, folder): the test module's family (its NAME), tiny model saved once."""
    family = get_family(request.module.NAME)
    folder = family.save_tiny(tmp_path_factory.mktemp(family.name) / "tiny", TEXTS, seed=0)
    with open(folder / "config.json") as f:
        assert family_for(json.load(f)) is family  # found by the checkpoint's own model_type
    return family, family.load_processor(folder), family.load_model(folder), folder


@pytest.fixture
def fresh(tiny):
    """-> (family, processor, model): a model of its own, for tests that change the weights."""
    family, processor, _, folder = tiny
    return family, processor, family.load_model(folder)
