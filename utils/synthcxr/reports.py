"""Template reports and VQA pairs.

A report has 3 to 8 sentences: one positive sentence per finding (several phrasings for each
finding type), negations of absent finding types, normal statements that never contradict a
finding, and sometimes a comparison statement consistent with the patient's previous study;
the order is shuffled. Each finding's phrase is a verbatim span of its sentence, unique in the
report; a report holds each finding type at most once and every type has its own nouns, so the
phrases of one report are told apart by their words. A multifocal nodule or consolidation
is one phrase for all its lesions ("two nodules in the right lung", "bilateral multifocal
consolidation").
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from utils.synthcxr.findings import Lesion

LOCATIONS = {  # zone -> ways to name the place; "{side}" is filled in
    "upper": ("{side} upper zone", "{side} upper lobe", "{side} upper lung"),
    "middle": ("{side} mid zone", "{side} mid lung", "{side} midlung field"),
    "lower": ("{side} lower zone", "{side} lower lobe", "{side} lung base"),
}
# (template, countable): countable phrases take "a"/"an" inside "There is ..." sentences.
PHRASES = {
    "nodule": (("{cm} cm nodule in the {loc}", True), ("{grade} nodule in the {loc}", True),
               ("{loc} pulmonary nodule", True), ("nodular opacity in the {loc}", True)),
    "mass": (("{cm} cm mass in the {loc}", True), ("{grade} mass in the {loc}", True),
             ("{loc} mass", True), ("mass-like opacity in the {loc}", True)),
    "consolidation": (("consolidation in the {loc}", False),
                      ("{grade} consolidation in the {loc}", False),
                      ("{loc} airspace consolidation", False),
                      ("{grade} airspace opacity in the {loc}", True)),
    "atelectasis": (("{grade} atelectasis in the {loc}", False), ("{loc} atelectasis", False),
                    ("{grade} opacity in the {loc} consistent with atelectasis", True)),
    "pleural effusion": (("{grade} {side} pleural effusion", True),
                         ("{side} pleural effusion", True), ("{grade} {side} effusion", True)),
    "pneumothorax": (("{grade} {side} apical pneumothorax", True), ("{side} pneumothorax", True),
                     ("{grade} pneumothorax at the {side} apex", True),
                     ("{side}-sided pneumothorax", True)),
    "cardiomegaly": (("{grade} cardiomegaly", False), ("enlarged cardiac silhouette", True),
                     ("cardiomegaly", False), ("{grade} enlargement of the heart", True)),
}
BILATERAL_EFFUSION = (("{grade} bilateral pleural effusions", False),
                      ("bilateral pleural effusions", False),
                      ("{grade} pleural effusions on both sides", False))
# (type, lesions in one lung or both) -> (template, plural) of a multifocal finding
MULTIFOCAL = {
    ("nodule", "one"): (("{count} nodules in the {side} lung", True),
                        ("multiple {side} lung nodules", True),
                        ("{count} {side} pulmonary nodules", True)),
    ("nodule", "both"): (("bilateral pulmonary nodules", True),
                         ("multiple bilateral lung nodules", True),
                         ("{count} bilateral pulmonary nodules", True)),
    ("consolidation", "one"): (("multifocal consolidation in the {side} lung", False),
                               ("{count} areas of consolidation in the {side} lung", True),
                               ("multifocal {side} airspace opacities", True)),
    ("consolidation", "both"): (("bilateral multifocal consolidation", False),
                                ("{count} areas of bilateral consolidation", True),
                                ("multifocal bilateral airspace opacities", True)),
}
COUNT_WORDS = {2: "two", 3: "three"}
WRAPPERS = ("{P}.", "There {is} {a}{p}.", "Findings are notable for {a}{p}.", "{P} {is} noted.",
            "{P} {is} present.")
NEGATIONS = {
    "nodule": ("No suspicious pulmonary nodule.", "No pulmonary nodules are seen."),
    "mass": ("No lung mass.", "No mass is identified."),
    "consolidation": ("No focal consolidation.", "There is no consolidation."),
    "pleural effusion": ("No pleural effusion.", "There is no pleural effusion."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
    "atelectasis": ("No atelectasis.", "No evidence of atelectasis."),
    "cardiomegaly": ("Heart size is normal.", "The cardiac silhouette is normal in size.",
                     "The cardiomediastinal silhouette is normal."),
}
NORMALS = ("The visualized osseous structures are intact.", "No acute osseous abnormality.",
           "Pulmonary vasculature is within normal limits.", "The trachea is midline.",
           "The hila are unremarkable.")
CLEAR_LUNGS = "The lungs are clear."  # only when no lung finding
NO_ACUTE = "No acute cardiopulmonary process."  # only for normal studies
FIRST_STUDY = "No prior studies are available for comparison."
UNCHANGED = ("Compared to the prior study, there is no significant interval change.",
             "Stable appearance compared to the radiograph from {n} months ago.")
CHANGED = ("Compared to the prior study, there has been interval change.",
           "Comparison is made to the radiograph from {n} months ago.")
QUESTIONS = {"nodule": ("Is there a pulmonary nodule?", "Where is the nodule?"),
             "mass": ("Is there a lung mass?", "Where is the mass?"),
             "consolidation": ("Is there any consolidation?", "Where is the consolidation?"),
             "pleural effusion": ("Is there a pleural effusion?", "Where is the effusion?"),
             "pneumothorax": ("Is there a pneumothorax?", "Where is the pneumothorax?"),
             "cardiomegaly": ("Is the heart enlarged?", "What is abnormal about the heart?"),
             "atelectasis": ("Is there atelectasis?", "Where is the atelectasis?")}


class Wording(NamedTuple):
    """A lower-case phrasing of a finding, whether it takes "a"/"an" and whether it takes
    "are"."""

    phrase: str
    countable: bool
    plural: bool = False


def phrase_for(lesion: Lesion, rng: np.random.Generator) -> Wording:
    """A random phrasing of the lesion."""
    if lesion.part_sides:
        spread = "both" if lesion.side == "bilateral" else "one"
        template, plural = MULTIFOCAL[lesion.type, spread][
            int(rng.integers(len(MULTIFOCAL[lesion.type, spread])))]
        text = template.format(count=COUNT_WORDS[len(lesion.boxes)], side=lesion.side)
        return Wording(text, False, plural)
    templates = BILATERAL_EFFUSION if lesion.side == "bilateral" else PHRASES[lesion.type]
    template, countable = templates[int(rng.integers(len(templates)))]
    location = ""
    if lesion.zone and lesion.side in ("left", "right"):
        names = LOCATIONS[lesion.zone]
        location = names[int(rng.integers(len(names)))].format(side=lesion.side)
    text = template.format(grade=lesion.grade, side=lesion.side, loc=location, cm=lesion.size_cm)
    return Wording(" ".join(text.split()), countable)


def finding_sentence(wording: Wording, rng: np.random.Generator) -> tuple[str, str]:
    """(sentence, the phrase exactly as it appears in the sentence)."""
    phrase = wording.phrase
    verb = "are" if wording.plural or phrase.endswith(("effusions", "sides")) else "is"
    wrapper = WRAPPERS[int(rng.integers(len(WRAPPERS)))].replace("{is}", verb)
    if wrapper.startswith("{P}"):
        shown = phrase[0].upper() + phrase[1:]
        return wrapper.format(P=shown), shown
    article = ("an " if phrase[0] in "aeiou" else "a ") if wording.countable else ""
    return wrapper.format(a=article, p=phrase), phrase


def _comparison(index: int, previous: set[str] | None, present: set[str],
                rng: np.random.Generator) -> list[str]:
    """Zero or one comparison sentence, consistent with the previous study's findings."""
    if rng.random() >= 0.6:
        return []
    if previous is None:
        return [FIRST_STUDY]
    choices = UNCHANGED if previous == present else CHANGED
    months = int(rng.integers(2, 13)) * index
    return [choices[int(rng.integers(len(choices)))].format(n=months)]


def _background(present: set[str], rng: np.random.Generator) -> list[str]:
    """Negations and normal statements that do not contradict ``present``, shuffled."""
    pool = [options[int(rng.integers(len(options)))]
            for kind, options in NEGATIONS.items() if kind not in present]
    if not present - {"cardiomegaly"}:
        pool.append(CLEAR_LUNGS)
    if not present:
        pool.append(NO_ACUTE)
    negations = [str(s) for s in rng.permutation(pool)]
    normals = [str(s) for s in rng.permutation(NORMALS)]
    return [s for pair in zip(negations, normals) for s in pair] + negations[len(normals):]


def write_report(lesions: list[Lesion], index: int, previous: set[str] | None,
                 rng: np.random.Generator) -> tuple[str, list[str], list[Wording]]:
    """Write a report.

    Arguments:
      lesions: the study's findings, in the order their phrases are returned.
      index: the study's number within its patient (0 for the first).
      previous: the finding types of the patient's previous study, None for the first study.
      rng: the study's generator.

    Returns:
      (report of 3 to 8 sentences, one phrase per lesion as it appears in the report, the
      lesions' wordings).
    """
    sentences, phrases = [], []
    wordings = [phrase_for(lesion, rng) for lesion in lesions]
    for wording in wordings:
        sentence, phrase = finding_sentence(wording, rng)
        sentences.append(sentence)
        phrases.append(phrase)
    present = {lesion.type for lesion in lesions}
    comparison = _comparison(index, previous, present, rng)
    fixed = len(sentences) + len(comparison)
    total = int(rng.integers(max(3, fixed + 1), 9))
    body = sentences + _background(present, rng)[: total - fixed]
    body = [str(s) for s in rng.permutation(np.array(body, dtype=object))]
    if comparison:
        body.insert(0 if rng.random() < 0.5 else len(body), comparison[0])
    return " ".join(body), phrases, wordings


def question_for(lesion: Lesion, wording: Wording, rng: np.random.Generator
                 ) -> tuple[str, str, str]:
    """A VQA pair about one finding: a presence or a location question, answered with a
    sentence that holds the finding's wording.

    Returns:
      (question, answer, the phrase exactly as it appears in the answer).
    """
    presence, where = QUESTIONS[lesion.type]
    sentence, shown = finding_sentence(wording, rng)
    if rng.random() < 0.5:
        return presence, f"Yes. {sentence}", shown
    return where, sentence, shown
