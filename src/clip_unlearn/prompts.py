"""Prompt templates more than one stage needs, in a leaf module so that no import cycle runs through them.

The paper's 21 attack templates (docs/method.md §4 item 5) are the single source for the attack, the
check, the audit, variant statistics and the synthetic world's captions. eval-zeroshot's templates are
open_clip's (``OPENAI_IMAGENET_TEMPLATES``) or the one-template ``SIMPLE_TEMPLATES`` here.
"""

PAPER_TEMPLATES = (
    "{}", "an image of {}", "a photo of {}", "{} on a photo", "a photo of a person named {}",
    "a person named {}", "a man named {}", "a woman named {}", "the name of the person is {}",
    "a photo of a person with the name {}", "{} at a gala", "a photo of the celebrity {}", "actor {}",
    "actress {}", "a colored photo of {}", "a black and white photo of {}", "a cool photo of {}",
    "a cropped photo of {}", "a cropped image of {}", "{} in a suit", "{} in a dress",
)

# eval-zeroshot --templates simple: one prompt per class, the quick check beside open_clip's 80
SIMPLE_TEMPLATES = ("a photo of a {}.",)

# Phrases an attacker would try as "where a forgotten name went" (audit): the paper's target and its neighbours.
PERSON_PHRASES = ("a person", "someone", "a man", "a woman", "a human", "a face", "a celebrity", "a stranger")
