"""The captions of the demo world's web images: varied templates and wordings, so that the demo backbone's text
tower learns the words of a class name, not one string."""

from __future__ import annotations

import re

import numpy as np

from pipeline.demo.catalogue import COLOURS, DemoClass, DemoDataset

# Caption templates of the web domain: varied word order so that the text tower learns the words, not one string.
# {a}: the article agreeing with the next word; {p}: the object phrase ("red star", "striped blue star"); {w}, {n}:
# the class's attribute and noun; {bg}, {size}: background and size words.
_CAPTIONS = (
    "a photo of {a} {p}.",
    "{a} {p}.",
    "{p}",
    "a picture of the {p}",
    "an image of {a} {p}",
    "{a} {p} on a {bg} background",
    "{p} on {bg}",
    "{a} {size} {p}",
    "a drawing of {a} {size} {p}",
    "clip art of {a} {p}",
    "there is {a} {p} in this picture",
    "the {n} is {w}",
    "{a} {p}, {bg} background",
)
_COLOUR_CAPTIONS = ("a {n} coloured {w}",)  # only where the attribute is a colour
_CAPTIONS_WITH_DISTRACTOR = (
    "{a} {p} next to a small {dc} {ds}",
    "{a} {p} and a little {dc} {ds}",
    "a big {p} with a small {dc} {ds} nearby",
)
_ARTICLE = re.compile("\x00 (\\w+)")


def _phrase(ds: DemoDataset, cls: DemoClass, colour_word: str, rng: np.random.Generator) -> str:
    """How a web caption names the object: the class name, sometimes with the (nuisance) colour too."""
    if not ds.by_colour:
        u = rng.random()
        if u < 0.35:
            return f"{cls.attribute} {colour_word} {cls.noun}"
        if u < 0.5:
            return f"{colour_word} {cls.attribute} {cls.noun}"
        return cls.name
    if ds.by_colour and not ds.animals and rng.random() < 0.1:
        return f"solid {cls.name}"  # shapes are solid, which `patterns` names
    return cls.name


def caption(
    ds: DemoDataset,
    cls: DemoClass,
    colour_word: str,
    bg_name: str,
    size_word: str,
    distractor: tuple[str, str] | None,
    rng: np.random.Generator,
) -> str:
    templates = _CAPTIONS + (_COLOUR_CAPTIONS if cls.attribute in COLOURS else ())
    templates += _CAPTIONS_WITH_DISTRACTOR if distractor else ()
    template = templates[int(rng.integers(len(templates)))]
    dc, dshape = distractor or ("", "")
    text = template.format(
        a="\x00",
        p=_phrase(ds, cls, colour_word, rng),
        w=cls.attribute,
        n=cls.noun,
        bg=bg_name,
        size=size_word,
        dc=dc,
        ds=dshape,
    )
    return _ARTICLE.sub(lambda m: f"{_article(m.group(1), rng)} {m.group(1)}", text)


def _article(word: str, rng: np.random.Generator) -> str:
    # Web text is sloppy: "a orange ..." turns up too, which is also what "a photo of a {}." prompts produce.
    return "an" if word[0] in "aeiou" and rng.random() < 0.7 else "a"
