"""Tiny random BERT checkpoints for tests.

Real checkpoints are slow to export and to run; tests of the export stage, the engine and the
plugins need a *real-shaped* BERT (same graph, same tokenizer files) that exports in a second.
:func:`build_tiny_model` writes one in Hugging Face format: a randomly initialised
``BertModel`` plus a working WordPiece fast tokenizer whose vocabulary (special tokens, letters,
digits, punctuation, ``##`` continuation pieces and a few hundred common words) lets arbitrary
English text tokenize without ``[UNK]`` storms. Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

#: Common words so that catalog-like text maps to whole-word tokens (varied token ids give the
#: random model varied outputs, which the ranking-overlap checks need).
_WORDS_TEXT = """
    the a an and or of to in on for with by from at as is are was were be been it its this
    that these those there here who what when where why how which while after before under
    over into about than then also only just more most less very much many some any all each
    every other new old good great best small large big little long short high low young
    early late first last one two three four five six seven eight nine ten hundred thousand
    year years day days time man woman men women child children family friend friends life
    love war world city town home house school team game games music song songs film films
    movie movies story stories book books series show shows season drama comedy action
    adventure thriller horror romance mystery crime fantasy science fiction documentary
    animation animated musical western history historical sport sports travel food cooking
    recipe kitchen garden health fitness yoga running shoes shirt jacket dress bag watch
    phone camera laptop computer screen sound light dark red blue green black white gold
    silver wood water fire earth air sea ocean river mountain forest island desert space
    star stars planet moon sun night morning evening summer winter spring autumn rain snow
    storm king queen prince princess hero heroes villain detective police agent spy soldier
    doctor teacher student artist writer singer dancer chef driver pilot captain journey
    quest secret mission escape return rise fall battle fight love lost found dream dreams
    heart mind soul power magic dragon robot robots alien aliens monster ghost zombie
    vampire wolf dog cat horse bird fish car cars train plane ship road street park beach
    hotel office lab hospital prison castle guide review reviews classic modern vintage
    premium simple easy fast slow quiet loud warm cold soft hard bright deep fresh clean
    wild strange funny sad happy dark true real free open make makes made find finds take
    takes give gives keep keeps help helps learn learns play plays live lives work works
    build builds tell tells meet meets change changes save saves set sets features feature
    includes include based edition collection volume part chapter
"""
DEFAULT_WORDS: tuple[str, ...] = tuple(_WORDS_TEXT.split())

PUNCTUATION = tuple("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def tiny_vocab(words: Sequence[str] | None = None) -> list[str]:
    """Specials, then characters and ``##`` pieces, then ``words`` (deduplicated, in order)."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    chars = letters + digits
    vocab: list[str] = list(SPECIAL_TOKENS)
    vocab += chars + list(PUNCTUATION) + [f"##{c}" for c in chars]
    seen = set(vocab)
    for w in DEFAULT_WORDS if words is None else words:
        w = w.strip().lower()
        if w and w not in seen:
            seen.add(w)
            vocab.append(w)
    return vocab


def _build_tokenizer(vocab: list[str]):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    tok = Tokenizer(
        WordPiece(
            {t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100
        )
    )
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def build_tiny_model(
    out_dir: str | Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    vocab_words: Sequence[str] | None = None,
    seed: int = 0,
    max_position_embeddings: int = 512,
    initializer_range: float = 0.2,
) -> Path:
    """Write a random BERT checkpoint + fast tokenizer to ``out_dir`` and return the path.

    The directory loads with ``transformers.AutoModel``/``AutoTokenizer.from_pretrained`` and
    ``tokenizers.Tokenizer.from_file(out_dir / "tokenizer.json")``, like a real checkpoint.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import BertConfig, BertModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab(vocab_words)

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=2,
        hidden_act="gelu",
        pad_token_id=0,
        initializer_range=initializer_range,
    )
    # Seed both the global and a forked RNG so the weights do not depend on what ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
        # BERT's default init (std 0.02) leaves a tiny model's layers nearly inert (the output is
        # about LayerNorm(token embedding)); std 0.2 for the layers and 1.0 for the token
        # embeddings makes attention and FFN matter and texts discriminable, so parity and
        # ranking checks on the tiny model exercise the real computation.
        with torch.no_grad():
            model.embeddings.word_embeddings.weight.normal_(0.0, 1.0)
    model.eval()
    model.save_pretrained(out)

    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    _build_tokenizer(vocab).save(str(out / "tokenizer.json"))
    tok_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "model_max_length": max_position_embeddings,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    special = {k: v for k, v in tok_config.items() if k.endswith("_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out


# --- small real-ish catalogs ------------------------------------------------------------------

# fmt: off
_DOMAINS: dict[str, dict[str, tuple[str, ...]]] = {
    'film': {
        'kind': (
            'thriller', 'comedy', 'drama', 'documentary', 'animated film', 'western', 'horror film',
            'science fiction film', 'romantic comedy', 'crime drama', 'war film', 'musical',
        ),
        'subject': (
            'a retired detective hunting a serial poisoner', 'two sisters running a failing bakery',
            'the first crewed mission to Mars', 'a jazz pianist losing his hearing',
            'a small town flooded by a broken dam', 'an orphaned dragon raised by monks',
            'a chess prodigy in Cold War Moscow', 'a heist at the national gold reserve',
            'a family road trip across the desert', 'a haunted lighthouse on a northern island',
            'high school rivals at a robotics contest', 'a nurse on the front line of a pandemic',
        ),
        'tail': (
            'Shot on location with a mostly unknown cast.', 'A slow burn with a surprising ending.',
            'Funny, warm and a little too long.', 'Based on a true story.',
            'Winner of several festival awards.', 'Features a memorable orchestral score.', '',
        ),
    },
    'book': {
        'kind': (
            'novel', 'memoir', 'cookbook', 'history book', 'travel guide', 'poetry collection',
            "children's picture book", 'fantasy saga', 'popular science book', 'biography',
        ),
        'subject': (
            'the rise and fall of the Roman republic', 'growing up on a sheep farm in Wales',
            'quick vegetarian dinners for busy weeknights', 'the hidden lives of octopuses',
            'a map maker who discovers a forgotten kingdom', 'walking the Camino de Santiago',
            'the mathematics of everyday decisions', 'a cat who learns to read',
            'the invention of the printing press', "a violinist's life in exile",
        ),
        'tail': (
            'Illustrated throughout.', 'Includes maps and a glossary.', 'Written for young readers.',
            'A bestseller in twelve countries.', 'Second edition, revised and expanded.', '',
        ),
    },
    'product': {
        'kind': (
            'running shoe', 'waterproof jacket', 'espresso machine', 'noise cancelling headphones',
            'mechanical keyboard', 'yoga mat', 'cast iron skillet', 'camping tent', 'smart watch',
            'electric toothbrush', 'backpack', 'desk lamp',
        ),
        'subject': (
            'with a breathable mesh upper and cushioned sole', 'for four people with a rain fly',
            'with a built-in grinder and milk frother', 'with thirty hours of battery life',
            'with hot swappable switches and white backlight', 'made from natural cork and rubber',
            'pre-seasoned and oven safe', 'with heart rate and sleep tracking',
            'with a padded laptop sleeve', 'with adjustable brightness and warm light',
        ),
        'tail': (
            'Available in black, blue and grey.', 'Two year warranty.',
            'Lightweight and easy to clean.', 'Ships in recyclable packaging.', '',
        ),
    },
    'recipe': {
        'kind': (
            'recipe', 'slow cooker recipe', 'one pan dinner', 'dessert', 'breakfast', 'salad',
        ),
        'subject': (
            'lemon chicken with roasted potatoes', 'spicy black bean soup',
            'chocolate olive oil cake', 'overnight oats with berries',
            'grilled halloumi with watermelon', 'mushroom risotto', 'Thai green curry with tofu',
            'apple crumble with oat topping',
        ),
        'tail': (
            'Ready in thirty minutes.', 'Serves four.', 'Gluten free.', 'Freezes well.', '',
        ),
    },
    'travel': {
        'kind': (
            'city break', 'hiking trip', 'beach holiday', 'ski weekend', 'river cruise', 'food tour',
        ),
        'subject': (
            'in the old town of Lisbon', 'through the Scottish highlands', 'on the coast of Crete',
            'in the Alps above Chamonix', 'along the Danube from Vienna to Budapest',
            'of the night markets of Taipei',
        ),
        'tail': (
            'Hotel and breakfast included.', 'Guided by local experts.', 'Best in late spring.', '',
        ),
    },
}
# fmt: on


def tiny_catalog_items(n: int = 60, *, seed: int = 0) -> list[dict[str, str]]:
    """``n`` catalog items ``{"id", "text"}`` with descriptive, varied-length English text.

    Texts combine a domain (film, book, product, recipe, travel), a kind, a subject and an
    optional tail, so they range from a handful of words to a few sentences and carry real
    semantic structure (items of the same kind/subject are near each other) for ranking checks.
    """
    import random

    rng = random.Random(seed)
    domains = sorted(_DOMAINS)
    items: list[dict[str, str]] = []
    seen: set[str] = set()
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > 100 * n:
            raise ValueError(f"n={n} is more than the generator can produce distinct texts for")
        d = _DOMAINS[domains[rng.randrange(len(domains))]]
        kind, subject, tail = rng.choice(d["kind"]), rng.choice(d["subject"]), rng.choice(d["tail"])
        form = rng.randrange(4)
        if form == 0:
            text = f"{kind.capitalize()}: {subject}"
        elif form == 1:
            text = f"A {kind} about {subject}. {tail}".strip()
        elif form == 2:
            text = f"{subject.capitalize()} — {kind}. {tail} {rng.choice(d['tail'])}".strip()
        else:
            other = rng.choice(d["subject"])
            text = (
                f"This {kind} follows {subject}, and later {other}. {tail} "
                f"Reviewers call it {rng.choice(('gripping', 'charming', 'essential', 'uneven', 'quiet'))}."
            )
        if text in seen:
            continue
        seen.add(text)
        items.append({"id": f"item-{len(items):05d}", "text": text})
    return items
