"""Benchmark of the data-class detectors: MB/s of Lantern's scanner and of presidio, same text.

Run ``.venv/bin/python bench/detect.py [--mb 10] [--presidio-mb N]``. It builds deterministic
mixed text (prose, code, JSON-ish lines, CSV rows, numbers, and a sprinkling of e-mails, phones,
cards, IBANs, SSNs, keys and markings), scans it with `Detectors` in 64 KiB chunks, then runs
presidio's `AnalyzerEngine` (blank spaCy pipeline: no model can be downloaded here, and the
recognizers compared are pattern-based anyway) restricted to the entity types both detect,
and prints both rates, their ratio, and what each counted. presidio reads the same text (some
two minutes for 10 MB); ``--presidio-mb`` gives it only a prefix, its rate is per MB read.
"""

from __future__ import annotations

import argparse
import random
import string
import time
import types

CHUNK = 64 * 1024
# presidio entity -> Lantern label, for the side-by-side counts.
PRESIDIO_ENTITIES = {
    "EMAIL_ADDRESS": "pii.email",
    "PHONE_NUMBER": "pii.phone",
    "CREDIT_CARD": "finance.payment_card",
    "IBAN_CODE": "finance.iban",
    "US_SSN": "id.us_ssn",
    "UK_NINO": "id.uk_nino",
    "ES_NIF": "id.es_dni",
    "ES_NIE": "id.es_nie",
    "IN_AADHAAR": "id.in_aadhaar",
}
# presidio's default spaCy max_length; text is analysed in slices below it, at line ends.
PRESIDIO_SLICE = 100_000

_WORDS_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there would their we him been has when who will "
    "more no if out so said what up its about into than them can only other new some could "
    "time these two may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while "
    "last might us great old year off come since against go came right used take three "
    "customer invoice report deploy model prompt budget quarterly revenue summary contract "
    "meeting schedule"
)
_WORDS = _WORDS_TEXT.split()
_SENSITIVE = (
    "alice.smith@example.com",
    "+1 415-555-2671",
    "(415) 555-2672",
    "020 7946 0958",
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    "SSN 219-09-9998",
    "AB 12 34 56 C",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "CONFIDENTIAL",
    "INTERNAL ONLY",
)


def mixed_text(n_bytes: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_bytes:
        roll = rng.random()
        if roll < 0.55:
            line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 18))).capitalize()
            line += "."
        elif roll < 0.70:
            name = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 10)))
            limit, step = rng.randint(1, 5000), rng.randint(1, 99)
            line = f"    {name} = compute({name}_id, limit={limit})  # step {step}"
        elif roll < 0.80:
            ident, month, day = rng.randint(1, 10**9), rng.randint(1, 9), rng.randint(10, 19)
            note = f"{rng.choice(_WORDS)} {rng.choice(_WORDS)}"
            line = (
                f'{{"id": {ident}, "ts": "2024-0{month}-{day}", '
                f'"amount": {rng.random() * 1000:.2f}, "note": "{note}"}}'
            )
        elif roll < 0.90:
            line = ",".join(str(rng.randint(0, 99999)) for _ in range(rng.randint(4, 10)))
        elif roll < 0.97:
            order, month, n = rng.randint(10**5, 10**7), rng.randint(1, 9), rng.randint(1, 40)
            line = f"Order {order} shipped on 12.0{month}.2024, {n} items"
        else:
            line = f"Please use {rng.choice(_SENSITIVE)} for the {rng.choice(_WORDS)} request."
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)[:n_bytes]


def bench_lantern(body: bytes) -> tuple[float, dict[str, int]]:
    from agent.metering.detect import Detectors

    detectors = Detectors(max_scan_bytes=len(body))  # the default 4 MiB limit would cut it
    best = float("inf")
    counts: dict[str, int] = {}
    for _ in range(3):
        t0 = time.perf_counter()
        scanner = detectors.scanner("text/plain")
        for i in range(0, len(body), CHUNK):
            scanner.feed(body[i : i + CHUNK])
        counts = scanner.finish().as_dict()
        best = min(best, time.perf_counter() - t0)
    return len(body) / best / 1e6, counts


def _slices(text: str) -> list[str]:
    out = []
    start = 0
    while start < len(text):
        end = text.rfind("\n", start, start + PRESIDIO_SLICE)
        end = start + PRESIDIO_SLICE if end <= start else end
        out.append(text[start:end])
        start = end
    return out


def bench_presidio(text: str) -> tuple[float, dict[str, int]]:
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import UkNinoRecognizer
    from presidio_analyzer.predefined_recognizers.generic import email_recognizer

    # Offline: tldextract would otherwise try to download the public suffix list.
    offline = tldextract.TLDExtract(suffix_list_urls=())
    email_recognizer.tldextract = types.SimpleNamespace(extract=offline)  # type: ignore[assignment]

    class BlankSpacy(SpacyNlpEngine):
        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}

    engine = BlankSpacy(models=[{"lang_code": "en", "model_name": "blank"}])
    engine.load()
    analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    # Disabled in presidio's default registry; Lantern reads NINOs, so presidio should too.
    analyzer.registry.add_recognizer(UkNinoRecognizer())
    counts: dict[str, int] = {}
    t0 = time.perf_counter()
    for piece in _slices(text):
        for r in analyzer.analyze(piece, language="en", entities=list(PRESIDIO_ENTITIES)):
            if r.score >= 0.4:
                counts[r.entity_type] = counts.get(r.entity_type, 0) + 1
    elapsed = time.perf_counter() - t0
    return len(text.encode()) / elapsed / 1e6, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0, help="MB of text for Lantern")
    parser.add_argument(
        "--presidio-mb", type=float, default=None, help="MB of it for presidio (default: all)"
    )
    args = parser.parse_args()
    text = mixed_text(int(args.mb * 1e6))
    ours, our_counts = bench_lantern(text.encode())
    print(f"lantern   {ours:8.2f} MB/s on {args.mb:g} MB (64 KiB chunks, best of 3)")
    print(f"          {our_counts}")
    presidio_mb = args.mb if args.presidio_mb is None else min(args.presidio_mb, args.mb)
    sample = text[: int(presidio_mb * 1e6)]
    try:
        theirs, their_counts = bench_presidio(sample)
    except ImportError as exc:
        print(f"presidio  not installed ({exc}); no ratio")
        return
    print(f"presidio  {theirs:8.2f} MB/s on {presidio_mb:g} MB (AnalyzerEngine, blank spaCy)")
    print(f"ratio     {ours / theirs:8.1f}x")
    _, sample_counts = bench_lantern(sample.encode())
    print(f"counts on the {presidio_mb:g} MB both read (presidio: score >= 0.4):")
    print(f"    {'entity':15s} {'lantern':>8s} {'presidio':>8s}")
    for entity, label in PRESIDIO_ENTITIES.items():
        print(f"    {entity:15s} {sample_counts.get(label, 0):8d} {their_counts.get(entity, 0):8d}")


if __name__ == "__main__":
    main()
