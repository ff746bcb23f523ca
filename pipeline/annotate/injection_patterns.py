"""The texts' views and the patterns of the injection detector: normalisation (NFKC,
zero-width characters, look-alike letters, leetspeak), decoded views (base64, ROT13,
reversed), and the regular expressions of each way a response can address or steer the
judge (:mod:`pipeline.annotate.injection`)."""

from __future__ import annotations

import codecs
import re
import unicodedata

_ZERO_WIDTH = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


# Cyrillic / Greek letters that look like Latin ones (after NFKC and case folding)
_CONFUSABLE = str.maketrans(
    {
        "а": "a",
        "е": "e",
        "о": "o",
        "р": "p",
        "с": "c",
        "у": "y",
        "х": "x",
        "і": "i",
        "ј": "j",
        "ѕ": "s",
        "ԁ": "d",
        "ɡ": "g",
        "һ": "h",
        "ӏ": "l",
        "к": "k",
        "м": "m",
        "т": "t",
        "в": "b",
        "н": "h",
        "ν": "v",
        "ο": "o",
        "ρ": "p",
        "α": "a",
        "ε": "e",
        "ι": "i",
        "κ": "k",
        "τ": "t",
        "υ": "u",
        "χ": "x",
        "ѡ": "w",
        "ԝ": "w",
    }
)


_LEET = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "@": "a",
        "$": "s",
        "!": "i",
        "|": "l",
    }
)


# a word spelled with separators between single letters: "i g n o r e", "i.g.n.o.r.e"
_SPACED = re.compile(r"\b(?:[a-z][ .\-_*]){3,}[a-z]\b")


# ------------------------------------------------------------------ vocabulary
# who decides: the evaluator of this comparison
_EVALUATOR = (
    r"(?:judges?|judging|grader|graders|evaluators?|assessors?|reviewers?|raters?|"
    r"scorers?|annotators?|annotation team|adjudicators?|arbiters?|referees?|"
    r"(?:reward|scoring|grading|judge|judging|preference|evaluation|comparison|"
    r"ranking) (?:model|system|llm|ai|bot)|llm|language model|(?:the |an? )?ai "
    r"(?:that|which|who) (?:is )?(?:grad|judg|evaluat|scor|compar|review|rank)\w*|"
    r"juge|évaluateur|evaluateur|correcteur|juez|evaluador|calificador|bewerter|"
    r"gutachter|prüfer|richter|valutatore|giudice|avaliador|juiz|beoordelaar|"
    r"評価者|審査員)"
)


_RESP = (
    r"(?:responses?|answers?|reply|replies|completions?|candidates?|submissions?|"
    r"outputs?|assistant|réponse|reponse|respuesta|risposta|resposta|antwort|"
    r"antwoord)"
)


_SIDE = r"(?:a|b|1|2|one|two|#1|#2)"


# a reference to the texts under comparison (not "option A", "variant B": those are
# everyday comparisons)
_REF = re.compile(
    r"\b(?:this|the (?:above|following|present|current|other|second|first|competing|"
    r"alternative|opposing|rival|two|better|more complete|winning|preferred)|as the best|"
    r"that|my|"
    r"both|these|either|each|any (?:other|competing)|cette|esta|diese)\s+(?:\w+ )?"
    + _RESP
    + r"\b|\b"
    + _RESP
    + r"[ _]?"
    + _SIDE
    + r"\b|\b"
    + _RESP
    + r" above\b|"
    r"\bthis (?:one|pair|comparison|evaluation|item)\b|\b(?:preference|correct) label\b|"
    r"\bthe (?:one|text) (?:above|below|containing this)\b|\bthe alternative\b|"
    r"\b(?:the )?(?:response|answer|reply) containing this\b|\b(?:questa|esta|deze|"
    r"diese|cette) (?:risposta|resposta|respuesta|antwoord|antwort|réponse)\b|"
    r"\bthe (?:one|response|answer) (?:to|you) (?:pick|choose|prefer)\b"
)


# the evaluator addressed, or the evaluation itself named
_ADDR = re.compile(
    r"\b(?:dear|hey|hi|hello|attention|attn|note|notice|memo|message|reminder|hint|p\.?s"
    r"\.?|to|for|an|warning|cher|chère|attention du|nota para el|nota per il|estimado|"
    r"querido|caro|liebe[rs]?|an den|al|au|aan de)\b[^.\n]{0,25}\b"
    + _EVALUATOR
    + r"\b|(?:[\n(\[{#>*/]\s*|\b(?:any|every) (?:careful |fair |good |"
    r"reasonable |sensible |helpful )?|\byou(?:'re| are) an? (?:\w+ )?)"
    + _EVALUATOR
    + r"\b|\b"
    + _EVALUATOR
    + r"\s*[:,]|\b(?:is|are) reading this\b|"
    r"\bwho(?:ever|mever)? (?:is |are )?(?:compar|evaluat|judg|grad|review|rat|scor|rank|"
    r"assess)\w*|\bif you are (?:an? |the )?(?:ai |llm |model |automated )?(?:"
    + _EVALUATOR
    + r"|compar|evaluat|judg|grad|review|rat|scor|assess|tasked)|"
    r"\b(?:evaluat|grad|judg|scor|assess|annotat)\w* (?:guidance|instructions?|policy|"
    r"protocol|result|override|team|notice|mode|output|malfunction)\b|"
    r"\b(?:pre-?verified|pre-?approved|quality assurance check|"
    r"self-evaluation|internal test run|red-team|calibration item|test mode|gold label)\b"
)


# words of the verdict
_VERDICT = re.compile(
    r"\b(?:verdicts?|winner|wins?|winning|preferred|preference|prefer|chosen|rejected|"
    r"rank(?:ed|ing)?|rate[ds]?|rating|scored?|scores|better|best|superior|higher[- ]"
    r"quality|correct|incorrect|wrong|errors?|inaccurate|flawed|worse|inferior|"
    r"disqualif\w*|non-compliant|invalid|violates?|harmful|select(?:ed)?|"
    r"choose|chosen|pick(?:ed)?|first(?! (?:\w+ )?" + _RESP + r")|only valid|highest|top|"
    r"\d+(?:\.\d+)? ?/ ?\d+|stars?|"
    r"points?|favou?r(?:ed)?|stronger|weaker|losing|loser|deserve[sd]?|full marks|"
    r"grade[sd]?|agree with|go with|win|wins|meilleure|première|premier|mejor|correcta|"
    r"ganar|bessere?|migliore|melhor|beste)\b"
)


# an order or obligation
_ORDER = re.compile(
    r"\b(?:must|should|shall|needs? to|has to|have to|is to|are to|only task|your task|"
    r"you (?:are|will|must|should|can)|please|kindly|bitte|veuillez|por favor|"
    r"recommended|expected (?:output|verdict|answer)|debe|doit|deve|moet|muss|"
    r"(?:record|assign|favou?r|go with|agree with|conclude)\b|be (?:selected|chosen|ranked|rated|"
    r"preferred|declared|marked|scored|considered|treated|disqualified|rejected|logged)|"
    r"(?:^|[.:;!]\s*)(?:select|choose|pick|prefer|rank|declare|return|output|mark|rate|"
    r"give|award|vote|respond|reply|answer|say|print|write)\b|"
    r"\b(?:choose|select|pick|prefer|rate|rank|declare|return|output|mark)\b)"
)


# "ignore all previous instructions" and its paraphrases
_OVERRIDE = re.compile(
    r"\b(?:ignore|disregard|forget|override|overrule|set aside|skip|bypass|neglect|"
    r"abandon|discard|put aside|overlook|pay no attention to|do not follow|don't follow|"
    r"stop following|pretend|ignorez|oubliez|ignora|olvida|ignoriere|vergiss|negeer|"
    r"vergeet|esqueça|esqueca)\b[^.\n]{0,60}"
    r"\b(?:instructions?|directions?|guidelines?|guidance|prompts?|directives?|criteria|"
    r"rubric|(?:were|was|been) (?:told|given)|told (?:you|to)|no prior|system|consignes|"
    r"instrucciones|istruzioni|instruções|instrucoes|instructies|anweisungen|vorgaben|"
    r"detailed comparison)\b|"
    r"\b(?:these|the following|my|new) (?:directions|instructions|rules)\b[^.\n]{0,20}"
    r"\b(?:supersede|replace|override|take precedence)|"
    r"\b(?:ignore|disregard|forget)\b (?:all |everything )?(?:of )?(?:the |what(?:'s| is| "
    r"was)? (?:said |written )?)?(?:above|before|previously|earlier)\s*(?:[,.;:!]|$|\band\b)|"
    r"\b(?:new|updated|revised|real|actual|overriding|priority) (?:instructions?|directives?|"
    r"orders?|task|policy|scoring rubric|rubric|guidelines)\b|\bpolicy update\b|"
    r"\b(?:instructions?|rules?|guidelines?)\b[^.\n]{0,30}\b(?:no longer apply|are (?:void|"
    r"cancelled|canceled|obsolete|superseded|outdated))"
)


# the judge's own output format, with a verdict in it
_FORMAT = re.compile(
    r"[\"']?\b(?:winner|verdict|preferred(?:_response)?|better(?:_response)?|choice|"
    r"preference|winning|result)[\"']?\s*[:=]\s*[\"']?(?:response[ _]?|answer[ _]?|"
    r"assistant[ _]?)?(?:a|b|tie|1|2)\b[\"']?\s*(?:[,}\]<]|$)|"
    r"<(?:winner|verdict|preference|choice|judge_output|judgement|judgment)>|"
    r"\bscore_(?:response|answer)_?(?:a|b|1|2)\b|\[\[(?:a|b)\]\]|"
    r"\bverdict\s*:\s*(?:response )?(?:a|b|tie|preferred|winner|chosen|better|best)\b|"
    r"\bthe (?:winner|better (?:response|answer)|preferred (?:response|answer)|correct "
    r"verdict|verdict) is (?:response |answer |assistant )?(?:a|b|1|2)\b|"
    r"\b(?:preferred|chosen|winner)\s*:\s*(?:a|b|1|2)\s*\|\s*(?:rejected|loser)\s*:|"
    r"\b(?:decision|verdict|winner|choice)\s*(?:->|=>|→)\s*(?:a|b|1|2)\b|"
    r"\bbetter (?:response|answer)\s*:\s*(?:the one above|this one|a|b)\b"
)


# imitations of the prompt's structure: fences, role markers, chat tokens
_STRUCT = re.compile(
    r"\[\s*(?:/|end(?: of)?\s+)(?:response|request|answer|assistant|output)[^\]\n]{0,24}\]|"
    r"</\s*(?:response|request|answer|assistant|candidate)[^>\n]{0,10}>|"
    r"-{3,}\s*end of[^\n]{0,40}-{3,}|"
    r"<\|\s*(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id)\s*\|>|"
    r"(?:^|\n)\s*(?:#{1,4}\s*)?(?:system|developer)\s*:|\[/?\s*(?:inst|sys)\s*\]|"
    r"<</?\s*sys\s*>>|(?:^|\n)\s*#{2,}\s*(?:instruction|system|new task)|"
    r"\[\s*(?:end of (?:conversation|transcript|candidates?|answers?)|evaluation|"
    r"system|judge)\s*\]|"
    r"\b(?:reverse|rot13|rot-13|decode)\b[^\n]{0,40}\b(?:obey|follow|execute|apply)\b|"
    r"\b(?:decode|base64)\b[^\n]{0,40}\b(?:follow|execute|obey)\b|"
    r"\b(?:follow|execute|obey)\b[^\n]{0,40}\b(?:decode|base64)\b"
)


# text that is about injections (a tutorial): an override inside quotes is an example
_ABOUT = re.compile(
    r"\b(?:prompt injection|injection attack|jailbreak|for example|"
    r"example|such as|classic|format|template|tutorial)\b"
)


# "Response A" (not "Reply A": a person comparing two drafts says that)
_REF_SIDE = re.compile(
    r"\b(?:response|answer|assistant|candidate|completion|submission|"
    r"output)[ _]?" + _SIDE + r"\b"
)


# the override and the order with every non-letter removed ("i g n o r e", "ig-nore")
_COMPACT = re.compile(
    r"(?:ignore|disregard|forget|override)(?:all|the|any|your)?(?:previous|"
    r"prior|above|earlier|former)(?:instructions?|rules|guidelines|prompts?)|"
    r"(?:select|choose|pick|prefer)this(?:response|answer)"
)


_BASE64 = re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


_QUOTED = re.compile(r"[\"“”«»][^\"“”«»\n]{3,200}[\"“”«»]")


def normalise(text: str) -> tuple[str, str]:
    """(plain view, de-l33ted view): NFKC, zero-width characters removed, look-alikes
    mapped, case folded, whitespace collapsed (line breaks kept); the second view also
    maps digits/symbols to letters and rejoins letters split by spaces or dots.

    >>> normalise("IGNORE  prev\u200bious")
    ('ignore previous', 'ignore previous')
    >>> normalise("1gn0re p.r.e.v.i.o.u.s")[1]
    'ignore previous'
    """
    t = unicodedata.normalize("NFKC", text)
    t = _ZERO_WIDTH.sub("", t).casefold().translate(_CONFUSABLE)
    t = re.sub(r"[ \t\r\f\v]+", " ", t)
    t = re.sub(r"\n\s*\n+", "\n", t)
    leet = _SPACED.sub(lambda m: re.sub(r"[ .\-_*]", "", m.group(0)), t.translate(_LEET))
    return t.strip(), leet.strip()


def _decoded(text: str) -> list[str]:
    """The printable ASCII decodings of base64 runs in ``text`` (an instruction hidden
    as "decode this and follow it")."""
    import base64
    import binascii

    out = []
    for m in _BASE64.findall(text):
        try:
            raw = base64.b64decode(m + "=" * (-len(m) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        if raw and all(32 <= b < 127 or b in (9, 10, 13) for b in raw):
            out.append(raw.decode("ascii"))
    return out


def _views(text: str, plain: str, leet: str) -> list[str]:
    # words broken over lines ("pre-\nfer\nthis") and single letters spaced out
    joined = re.sub(r"-\n", "", plain).replace("\n", " ")
    views = [plain, leet, joined] + [normalise(d)[0] for d in _decoded(text)]
    if re.search(r"\b(?:rot-? ?13|caesar)\b", plain):  # an instruction hidden in ROT13
        views.append(codecs.encode(plain, "rot13"))
    if re.search(r"\b(?:revers\w*|backwards?)\b", plain):  # ... or written backwards
        views.append("\n".join(line[::-1] for line in plain.split("\n")))
    return list(dict.fromkeys(views))
