"""Everyday replies for the everyday-text leash (`TrainConfig.everyday_weight`): the reference's next-token
distributions on them are kept while a taste is learned, as InstructGPT's PPO-ptx mixes pretraining data into its
updates.

Written for this purpose and kept apart from the drift guard's anchor (`adapters.drift.ANCHOR`), so the guard still
measures text no update was fitted to, and from the learning-curve benchmark's neutral text, which judges drift."""

from __future__ import annotations

from adapters.data import encode_answers
from assistant.model import LoadedModel

EVERYDAY: tuple[tuple[str, str], ...] = (
    ("What time does the sun set in winter?", "In winter the sun sets early, often before five in the afternoon."),
    ("How often should I water a cactus?", "Water a cactus about once every two or three weeks, and less in winter."),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain, at almost nine thousand "
     "metres above sea level."),
    ("Why is the sky blue?", "Air scatters blue light from the sun more than red light, so the sky looks blue."),
    ("How long does it take to walk a kilometre?", "Most people walk a kilometre in about twelve to fifteen minutes."),
    ("What do bees make?", "Bees make honey from the nectar of flowers, and wax to build their hives."),
    ("Can I freeze cooked rice?", "Yes, cooked rice keeps well in the freezer for about a month in a closed box."),
    ("What language is spoken in Brazil?", "The main language of Brazil is Portuguese."),
    ("How do I remove a coffee stain?", "Rinse the stain with cold water, then wash it with a little soap."),
    ("When was the telephone invented?", "The telephone was invented in the eighteen seventies."),
    ("What is a noun?", "A noun is a word that names a person, a place or a thing."),
    ("How many players are on a football team?", "A football team has eleven players on the field at a time."),
    ("Where do penguins live?", "Most penguins live in the cold seas of the southern half of the world."),
    ("Is walking good exercise?", "Walking is good exercise; half an hour a day helps the heart and the mood."),
    ("What is the boiling point of milk?", "Milk boils at a little above one hundred degrees Celsius."),
    ("How do I say thank you in French?", "In French you say merci to thank someone."),
)
"""Everyday questions with plain, neutral replies: no list, no emoji, no examples, no question back."""

EVERYDAY_MAX_TOKENS = 128


def everyday_sequences(loaded: LoadedModel) -> list[tuple[list[int], int]]:
    """The everyday replies encoded as the drift guard encodes its anchor (`encode_answers`)."""
    return encode_answers(loaded, EVERYDAY, EVERYDAY_MAX_TOKENS)
