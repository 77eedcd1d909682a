"""What a prompt looks like to a tokenizer: words it cannot represent, and vocabularies without capital letters.

A word-level or small-vocabulary tokenizer (the translation demo model's, many older seq2seq models') turns every
word it does not know into one ``<unk>`` token, silently: the model then translates or continues a different
sentence and its output degenerates. :func:`unknown_words` names those words; :func:`lowercase_vocabulary` tells
whether lowercasing the prompt can only help (no token of the vocabulary has a capital letter).
"""

from __future__ import annotations

from typing import Any


def _tokenizer(tokenizer: Any) -> Any:
    return getattr(tokenizer, "tokenizer", tokenizer)  # an inseq AttributionModel carries one


def lowercase_vocabulary(tokenizer: Any) -> bool:
    """True when the vocabulary has cased letters and none of its ordinary tokens contains a capital letter.

    Byte-level BPE vocabularies (GPT-2, Llama 3, ...) contain capitals and are never lowercase; a vocabulary without
    any cased letter (e.g. only digits or CJK) is not called lowercase either, since lowercasing cannot help there.
    """
    tokenizer = _tokenizer(tokenizer)
    special = set(tokenizer.all_special_tokens)
    tokens = [token for token in tokenizer.get_vocab() if token not in special]
    has_cased = any(token != token.upper() for token in tokens)
    return has_cased and all(token == token.lower() for token in tokens)


def unknown_words(tokenizer: Any, text: str) -> list[str]:
    """The pieces of ``text`` that the tokenizer reads as its unknown token, in order (each once).

    With a fast tokenizer the pieces are exact (character offsets of each ``<unk>`` token); otherwise each
    whitespace-separated word is encoded alone and reported when it yields an unknown token.
    """
    tokenizer = _tokenizer(tokenizer)
    unk_id = tokenizer.unk_token_id
    if unk_id is None:
        return []
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        pieces = [
            text[start:end]
            for token_id, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True)
            if token_id == unk_id
        ]
    except NotImplementedError:  # slow tokenizers have no offsets
        pieces = [word for word in text.split() if unk_id in tokenizer(word, add_special_tokens=False)["input_ids"]]
    return list(dict.fromkeys(piece for piece in pieces if piece))
