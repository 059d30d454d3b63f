"""Refactors keep behaviour: the first steps' losses (total and every term) of each shipped digits preset
and of each tiny-pipeline family are bit-identical to the ones recorded in tests/data/preset_losses.json
(recorded with ``python -m tests.golden_losses`` before the graph became data; re-recorded on 2026-11-30 for two
deliberate changes: ReflexFlow's FC became the flow-matching loss itself, and the digits presets moved to 8×8).
``family:sd+prior_preservation`` was added when prior preservation became its own graph branch (no other case changed)."""

from __future__ import annotations

import json

import pytest

from tests.golden_losses import FAMILIES, GOLDEN, PRESETS, family_losses, preset_losses, prior_preservation
from tests.tiny_pipelines import pipeline_folder, write_images

RECORDED = json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_losses_are_bit_identical_to_the_recorded_ones(preset, tmp_path):
    got = preset_losses(preset, tmp_path)
    assert len(got) == 4 and ("loss/fm" in got[0] or "loss/fc" in got[0])  # ReflexFlow's FC loss replaces loss/fm
    assert got == RECORDED[f"preset:{preset}"]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_losses_are_bit_identical_to_the_recorded_ones(family, tmp_path, tmp_path_factory):
    images = write_images(tmp_path / "images", 4)
    got = family_losses(family, tmp_path, pipeline_folder(tmp_path_factory, family), images)
    assert len(got) == 2
    assert got == RECORDED[f"family:{family}"]


def test_prior_preservation_losses_are_bit_identical_to_the_recorded_ones(tmp_path, tmp_path_factory):
    images = write_images(tmp_path / "images", 4)
    classes = write_images(tmp_path / "class", 3, captions=True, seed=1)
    got = family_losses("sd", tmp_path, pipeline_folder(tmp_path_factory, "sd"), images, **prior_preservation(classes))
    assert len(got) == 2 and "loss/prior" in got[0]
    assert got == RECORDED["family:sd+prior_preservation"]
