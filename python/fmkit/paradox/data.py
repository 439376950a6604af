"""A small bundled dataset for the paradox demo and tests, written for fmkit (see PROVENANCE).

Two selective-evaluation task types, each item with a reference, 3 distractors and a human output:
- `qa`: short factual questions; distractors are 'easy' (wrong type of answer) or 'hard'
  (same type, plausible);
- `completion`: sentence completions; 'easy' distractors are off-topic, 'hard' ones are on-topic
  but contradict the sentence.
Plus `STORY_PROMPTS` for interrogative evaluation (slot-filled prompts whose questions are made
from the slots), `output_questions` for self-interrogation about each selective item's own output,
and the QA set reused for the Oh et al. variant.
"""
from __future__ import annotations

from fmkit.paradox.protocol import ParadoxItem

PROVENANCE = {
    "references": "written by the fmkit author for this library (2026-12-02); facts are common knowledge",
    "distractors": "written by the same author; 'hard' = same answer type / on-topic, 'easy' = off-type / off-topic",
    "human_gen_output": "the same author's own answer written before seeing the reference wording (one person, "
                        "not a crowd study)",
    "human_discrimination": "the same author's answer key (one person, not a crowd study): D_h = 1.0 by "
                            "construction, an upper bound rather than a measured crowd accuracy",
}

_QA = [  # (question, reference, distractors, difficulty, human output)
    ("What is the capital of France?", "Paris", ["Lyon", "Marseille", "Nice"], "hard", "Paris"),
    ("What is the capital of Japan?", "Tokyo", ["a river", "green", "seven"], "easy", "Tokyo"),
    ("How many legs does a spider have?", "eight", ["six", "ten", "four"], "hard", "8"),
    ("Which planet is known as the Red Planet?", "Mars", ["a banana", "Tuesday", "copper"], "easy", "Mars"),
    ("What gas do plants take in from the air to make food?", "carbon dioxide", ["oxygen", "nitrogen", "helium"],
     "hard", "carbon dioxide"),
    ("What is the largest ocean on Earth?", "the Pacific Ocean", ["the Atlantic Ocean", "the Indian Ocean",
                                                                  "the Arctic Ocean"], "hard", "The Pacific"),
    ("Who wrote the play Romeo and Juliet?", "William Shakespeare", ["a bicycle", "the moon", "blue cheese"],
     "easy", "Shakespeare"),
    ("At what temperature in Celsius does water freeze?", "0 degrees", ["100 degrees", "50 degrees", "-40 degrees"],
     "hard", "zero degrees Celsius"),
    ("What is the chemical symbol for gold?", "Au", ["Ag", "Fe", "Gd"], "hard", "Au"),
    ("How many days are there in a week?", "seven", ["a kitchen", "purple", "the ocean"], "easy", "7"),
    ("What is the tallest mountain in the world?", "Mount Everest", ["K2", "Mont Blanc", "Kilimanjaro"], "hard",
     "Everest"),
    ("Which animal is known as the king of the jungle?", "the lion", ["a spoon", "Friday", "a cloud"], "easy",
     "The lion"),
    ("What is the main language spoken in Brazil?", "Portuguese", ["Spanish", "French", "Italian"], "hard",
     "Portuguese"),
    ("How many continents are there?", "seven", ["five", "six", "eight"], "hard", "Seven"),
    ("What colour is a ripe banana?", "yellow", ["a violin", "Monday", "gravel"], "easy", "Yellow"),
    ("Which organ pumps blood around the body?", "the heart", ["the liver", "the lungs", "the kidneys"], "hard",
     "The heart"),
]

_COMPLETION = [  # (sentence start, reference ending, distractors, difficulty, human ending)
    ("She forgot her umbrella, so when the rain started she", "got soaked on the way home.",
     ["stayed completely dry on the way home.", "bought a bigger umbrella for her other umbrella.",
      "was perfectly dry because it was raining."], "hard", "got wet walking home."),
    ("He put the milk back in the fridge because", "he wanted it to stay cold.",
     ["the moon is made of rock.", "triangles have three sides.", "trains run on rails."], "easy",
     "it needs to be kept cold."),
    ("The baby was tired after a long day, so her parents", "put her to bed early.",
     ["woke her up to play loudly.", "gave her a strong coffee to sleep.", "kept her awake until midnight."],
     "hard", "put her to bed."),
    ("The ice cream was left in the sun, and soon it", "melted into a puddle.",
     ["the stock market closed higher.", "penguins live in the south.", "my phone needs a charger."], "easy",
     "melted."),
    ("After running the marathon, the athlete was", "exhausted and very thirsty.",
     ["full of energy and not tired at all.", "rested because she had not moved.",
      "cold because the race was indoors."], "hard", "worn out and thirsty."),
    ("The shop was closed on Sunday, so we", "came back on Monday.",
     ["the river flows to the sea.", "seven is an odd number.", "owls hunt at night."], "easy",
     "returned the next day."),
    ("The plant had not been watered for weeks, so its leaves", "turned brown and dry.",
     ["grew greener and wetter than ever.", "were full of fresh water.", "doubled in size overnight."],
     "hard", "dried out and died."),
    ("The alarm clock rang at six, and Tom", "got out of bed.",
     ["paris is in france.", "bread is made from flour.", "the sea is salty."], "easy", "woke up."),
    ("Because the road was icy, the driver", "drove slowly and carefully.",
     ["drove as fast as possible to save time.", "took his hands off the wheel to relax.",
      "closed his eyes to concentrate."], "hard", "slowed down."),
    ("The kettle boiled, so she", "made a cup of tea.",
     ["giraffes have long necks.", "the train left at noon.", "winter is cold."], "easy", "poured the tea."),
    ("The children were hungry after school, so their father", "made them a snack.",
     ["told them to skip dinner.", "sent them to run another mile first.", "hid all the food."], "hard",
     "gave them something to eat."),
    ("The glass fell off the table and", "broke into pieces on the floor.",
     ["my cousin likes jazz.", "mountains are tall.", "the library opens at nine."], "easy", "shattered."),
    ("He studied every night for a month, so on the exam he", "did very well.",
     ["forgot how to read.", "failed because he had studied.", "could not remember his name."], "hard",
     "got a good mark."),
    ("The phone battery was at one percent, so she", "plugged it in to charge.",
     ["cows eat grass.", "the bus is red.", "sand is found on beaches."], "easy", "charged it."),
    ("The room was dark, so he", "switched on the light.",
     ["put on sunglasses to see better.", "closed the curtains to let light in.",
      "turned off the lamp to read."], "hard", "turned on the lamp."),
    ("It was her friend's birthday, so she", "bought her a present.",
     ["the ocean is deep.", "spiders spin webs.", "rice grows in water."], "easy", "gave her a gift."),
]


def qa_items() -> list[ParadoxItem]:
    return [ParadoxItem(input=q, reference=r, distractors=list(d), difficulty=lvl, human_gen_output=h,
                        id=f"qa{k}") for k, (q, r, d, lvl, h) in enumerate(_QA)]


def completion_items() -> list[ParadoxItem]:
    return [ParadoxItem(input=f"Complete the sentence: {s} ...", reference=r, distractors=list(d), difficulty=lvl,
                        human_gen_output=h, id=f"completion{k}") for k, (s, r, d, lvl, h) in enumerate(_COMPLETION)]


DATASETS = {"qa": qa_items, "completion": completion_items}

# Interrogative evaluation: each prompt names a character, an animal and a place; the questions ask
# for those slots, so the answer is known, and a question is valid only if its answer appears in
# the generated content (the content must support it).
_ANIMALS = ["cat", "dog", "horse", "rabbit", "fox", "owl"]
_PLACES = ["a farm", "a city", "a forest", "a boat", "a castle", "a desert"]
_NAMES = ["Milo", "Luna", "Oscar", "Ruby", "Felix", "Daisy"]
STORY_PROMPTS = [(f"Write a two-sentence story about a {a} named {n} who lives on {p}." if p == "a boat" or
                  p == "a farm" else f"Write a two-sentence story about a {a} named {n} who lives in {p}.",
                  {"name": n, "animal": a, "place": p})
                 for n, a, p in zip(_NAMES, _ANIMALS, _PLACES)]


def story_questions(slots: dict) -> list:
    """Questions about a story generated from a STORY_PROMPTS prompt, with the slot as answer."""
    from fmkit.paradox.protocol import Question

    import random

    rng = random.Random(slots["name"])  # seeded per story: the answer is not always the first option
    out = []
    for text, key, pool in ((f"What kind of animal is {slots['name']}?", "animal", _ANIMALS),
                            (f"Where does {slots['name']} live?", "place", _PLACES)):
        opts = [slots[key]] + [x for x in pool if x != slots[key]][:3]
        rng.shuffle(opts)
        out.append(Question(text, opts, opts.index(slots[key])))
    return out


def story_question_valid(content: str, question) -> bool:
    """A question is answerable from the content when its answer's key word appears in it."""
    key = question.options[question.answer].split()[-1].lower()
    return key in content.lower()


# Self-interrogation about a selective item's OWN generated output (spec 3.2.3 on the same items as
# the selective evaluation, so each item is scored three ways: generation + judge, multiple-choice
# log-likelihood, and questions about what the model itself wrote). Questions are made by rule from
# the output and the item's candidates, not by a strong model:
# - 'stated': which of the item's candidates does the text give? (asked only when exactly one
#   candidate appears in the output, whether or not it is the right one: it tests reading, not knowing);
# - 'word': which of these words appears in the text? (a content word of the output against words of
#   the item's other candidates, and filler words, that do not appear in it).
_STOP = set("the a an and or but of to in on at by for with from into is are was were be been it its this that "
            "these those as so he she they them his her their you your i we our not no yes can will would should "
            "could has have had do does did which what who whom when where why how than then there here also very "
            "just only about answer question complete sentence".split())
_FILLER = ["window", "river", "garden", "engine", "pencil", "mountain", "basket", "candle", "ladder", "violin"]


def _norm_words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9]+", text.lower())


def _has_span(content: str, phrase: str) -> bool:
    c, p = " ".join(_norm_words(content)), " ".join(_norm_words(phrase))
    return bool(p) and f" {p} " in f" {c} "


def output_questions(item: ParadoxItem, content: str) -> list:
    """Multiple-choice questions about `content`, the model's own output for `item` (see above);
    the answer is known from the content itself. Empty when the content gives nothing to ask."""
    import random

    from fmkit.paradox.protocol import Question

    rng = random.Random(f"{item.id}|{content}")
    out = []
    cands = [item.reference] + list(item.distractors)
    stated = [c for c in cands if _has_span(content, c)]
    if len(stated) == 1:
        opts = list(cands)
        rng.shuffle(opts)
        out.append(Question("Which of these does the text above give as the answer?", opts, opts.index(stated[0])))
    words = [w for w in _norm_words(content) if len(w) >= 4 and w not in _STOP and not w.isdigit()]
    if words:
        right = words[0]
        present = set(_norm_words(content))
        pool = [w for c in cands for w in _norm_words(c) if len(w) >= 4 and w not in _STOP and w not in present]
        pool = list(dict.fromkeys(pool)) + [w for w in _FILLER if w not in present]
        wrong = list(dict.fromkeys(pool))[:3]
        opts = [right] + wrong
        rng.shuffle(opts)
        out.append(Question("Which of these words appears in the text above?", opts, opts.index(right)))
    return out


def output_question_valid(content: str, question) -> bool:
    """Answerable from the content: the answer option appears in it as a whole-word span and no other
    option does."""
    return all(_has_span(content, o) == (k == question.answer) for k, o in enumerate(question.options))


# The Oh et al. variant reuses the QA questions with alias lists as references.
QA_ALIASES = {"eight": ["eight", "8"], "seven": ["seven", "7"], "0 degrees": ["0 degrees", "zero", "0"],
              "the Pacific Ocean": ["Pacific"], "William Shakespeare": ["Shakespeare"], "Mount Everest": ["Everest"],
              "the lion": ["lion"], "the heart": ["heart"], "carbon dioxide": ["carbon dioxide", "CO2"]}


def qa_references() -> list[list[str]]:
    return [QA_ALIASES.get(r, [r]) for _, r, _, _, _ in _QA]
