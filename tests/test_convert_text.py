"""Shared helpers (MIMIC sections, verbatim sentences, templates, box positions) and the CLI."""
from __future__ import annotations

import pytest

from utils.convert.__main__ import main
from utils.convert.geometry import box_problem, position_words
from utils.convert.paths import mimic_ids, mimic_report_path, patient_from_path
from utils.convert.text import mimic_findings_impression, render_phrase, sentence_with


def test_mimic_sections_inline_headers_and_fallback():
    report = ("                FINAL REPORT\n INDICATION: Cough.\n FINDINGS: Lungs are clear.\n"
              " No effusion.\n IMPRESSION:\n No acute process.\n")
    assert mimic_findings_impression(report) == (
        "Lungs are clear. No effusion. No acute process.", True)
    assert mimic_findings_impression("  FINAL REPORT\n  Mild\n edema.\n") == ("Mild edema.", False)


@pytest.mark.parametrize("header", ["FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION",
                                    "IMPRESSON", "CONCLUSION", "FINDING", "CHEST, TWO VIEWS"])
def test_mimic_section_variants_are_kept(header):
    report = (f"  FINAL REPORT\n HISTORY: Fever.\n {header}: Small left effusion.\n"
              " NOTIFICATION: Called.\n")
    assert mimic_findings_impression(report) == ("Small left effusion.", True)


def test_sentence_with_skips_negations_and_returns_a_verbatim_span():
    report = "No pneumothorax. Small right pneumothorax is now seen! Heart normal."
    assert sentence_with(report, ["pneumothora"]) == "Small right pneumothorax is now seen"
    assert sentence_with(report, ["effusion"]) is None


def test_positions_follow_the_patient_side():
    assert position_words([10, 10, 50, 50], 200, 300) == {"side": "right", "zone": "upper"}
    assert position_words([150, 250, 190, 290], 200, 300) == {"side": "left", "zone": "lower"}
    assert render_phrase("Nodule in the {side} {zone} lung zone",
                         position_words([90, 140, 110, 160], 200, 300)) == \
        "Nodule in the middle lung zone"
    assert render_phrase("{side} pneumothorax", {"side": "left"}) == "Left pneumothorax"
    assert box_problem([0, 0, 200.4, 10], 200, 300) is None
    assert "beyond" in box_problem([0, 0, 201, 10], 200, 300)
    assert "zero or negative" in box_problem([5, 0, 5, 10], 200, 300)


def test_mimic_and_nih_paths():
    path = "files/p10/p10000032/s50414267/02aa804e.jpg"
    assert mimic_ids(path) == ("p10000032", "s50414267", "02aa804e")
    assert mimic_report_path(path) == "files/p10/p10000032/s50414267.txt"
    assert patient_from_path(path) == "p10000032"
    assert patient_from_path("images/00027426_000.png") == "27426"
    assert patient_from_path("elsewhere/x.png") == ""


@pytest.mark.parametrize("source", ["mscxr", "chestxray8", "diffvqa", "msclass", "coco",
                                    "reference", "split", "stats"])
def test_every_subcommand_has_help(source, capsys):
    with pytest.raises(SystemExit) as exited:
        main([source, "--help"])
    assert exited.value.code == 0 and "usage:" in capsys.readouterr().out
