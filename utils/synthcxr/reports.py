"""Template reports: positive findings (several phrasings each), negations, normal and
comparison statements, shuffled. Each finding's phrase is a verbatim span of its report."""
from __future__ import annotations

import numpy as np

from utils.synthcxr.findings import Lesion

ZONE_WORDS = {"upper": "upper", "middle": "mid", "lower": "lower"}
PHRASES = {
    "nodule": ("{size} nodule in the {side} {zone} zone", "{side} {zone} zone pulmonary nodule",
               "nodular opacity in the {zone} {side} lung"),
    "mass": ("{size} mass in the {side} {zone} zone", "{side} {zone} lung mass",
             "mass-like opacity in the {side} {zone} zone"),
    "consolidation": ("consolidation in the {side} {zone} zone", "{side} {zone} zone consolidation",
                      "{size} airspace opacity in the {side} {zone} lung"),
    "pleural effusion": ("{size} {side} pleural effusion", "{side} pleural effusion",
                         "{size} {side} effusion"),
    "pneumothorax": ("{size} {side} apical pneumothorax", "{side} pneumothorax",
                     "{size} pneumothorax at the {side} apex"),
    "cardiomegaly": ("{size} cardiomegaly", "enlarged cardiac silhouette", "cardiomegaly"),
    "atelectasis": ("{size} atelectasis in the {side} {zone} zone", "{side} {zone} zone atelectasis",
                    "plate-like atelectasis in the {zone} {side} lung"),
}
BILATERAL_EFFUSION = ("{size} bilateral pleural effusions", "bilateral pleural effusions",
                      "{size} bilateral effusions")
WRAPPERS = ("{P}.", "There is {a} {p}.", "Findings are notable for {a} {p}.", "{P} is noted.",
            "Again seen is {a} {p}.")
NEGATIONS = {
    "nodule": "No suspicious pulmonary nodule.", "mass": "No lung mass.",
    "consolidation": "No focal consolidation.", "pleural effusion": "No pleural effusion.",
    "pneumothorax": "No pneumothorax.", "atelectasis": "No atelectasis.",
    "cardiomegaly": "Heart size is normal.",
}
NORMALS = ("The visualized osseous structures are intact.", "No acute osseous abnormality.",
           "Pulmonary vasculature is within normal limits.", "The trachea is midline.",
           "The hila are unremarkable.")
HEART_NORMAL = "The cardiomediastinal silhouette is within normal limits."
COMPARISONS = ("Compared to the prior study, there is no significant interval change.",
               "No prior studies are available for comparison.",
               "Comparison is made to the radiograph from {n} months ago.",
               "Since the prior examination, the findings are new.")


def phrase_for(lesion: Lesion, rng: np.random.Generator) -> str:
    """A phrasing of the lesion (lower case, no final period)."""
    templates = BILATERAL_EFFUSION if lesion.side == "bilateral" else PHRASES[lesion.type]
    return str(rng.choice(templates)).format(size=lesion.size_word, side=lesion.side,
                                             zone=ZONE_WORDS.get(lesion.zone, "")).strip()


def finding_sentence(phrase: str, rng: np.random.Generator) -> tuple[str, str]:
    """(sentence, the phrase as it appears in the sentence)."""
    wrapper = str(rng.choice(WRAPPERS))
    if "{P}" in wrapper:
        shown = phrase[0].upper() + phrase[1:]
        return wrapper.format(P=shown), shown
    article = "an" if phrase[0] in "aeiou" else "a"
    if phrase.startswith(("bilateral", "consolidation", "cardiomegaly", "enlarged")) or \
            phrase.endswith(("effusions", "atelectasis")):
        article = ""
    return " ".join(wrapper.format(a=article, p=phrase).split()), phrase


def write_report(lesions: list[Lesion], rng: np.random.Generator) -> tuple[str, list[str]]:
    """(report text of 3 to 8 sentences, one phrase per lesion in the given order)."""
    sentences, phrases = [], []
    for lesion in lesions:
        sentence, phrase = finding_sentence(phrase_for(lesion, rng), rng)
        sentences.append(sentence)
        phrases.append(phrase)
    present = {lesion.type for lesion in lesions}
    negations = [text for kind, text in NEGATIONS.items() if kind not in present]
    extras = [str(s) for s in rng.permutation(negations)[: rng.integers(1, 4)]]
    if "cardiomegaly" not in present and rng.random() < 0.4:
        extras.append(HEART_NORMAL)
    extras += [str(s) for s in rng.permutation(NORMALS)[: rng.integers(0, 3)]]
    comparison = rng.random() < 0.6
    fillers = [text for text in NORMALS if text not in extras]
    while len(sentences) + len(extras) + int(comparison) < 3:
        extras.append(fillers.pop())
    room = 8 - len(sentences) - int(comparison)
    body = sentences + extras[:room]
    body = [str(s) for s in rng.permutation(body)]
    if comparison:
        text = str(rng.choice(COMPARISONS)).format(n=int(rng.integers(2, 13)))
        body.insert(0 if rng.random() < 0.5 else len(body), text)
    return " ".join(body), phrases
